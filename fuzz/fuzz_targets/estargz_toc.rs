//! eStargz TOC JSON: framed into a blob of real chunk members (the fuzzer
//! mutates the JSON, the harness writes the TOC member and footer), opened
//! lazily without an anchor, and every chunk it names loaded.
#![no_main]

use std::sync::{Arc, OnceLock};

use lazycrypt::layer::estargz::lazy::{self, Anchor};
use lazycrypt::layer::estargz::reader;
use lazycrypt::layer::source::MemoryRange;
use lazycrypt_fuzz::{estargz, estargz_with_toc, exercise, sample_tar};
use libfuzzer_sys::fuzz_target;

/// A converted sample layer: (its bytes up to the TOC, its TOC JSON).
fn sample() -> &'static (Vec<u8>, Vec<u8>) {
    static S: OnceLock<(Vec<u8>, Vec<u8>)> = OnceLock::new();
    S.get_or_init(|| {
        let blob = estargz(&sample_tar(10_000));
        let at = reader::toc_offset(&blob[blob.len() - 51..]).unwrap() as usize;
        let (json, _) = reader::toc_json(&blob[at..blob.len() - 51]).unwrap();
        (blob[..at].to_vec(), json.to_vec())
    })
}

fuzz_target!(
    init: lazycrypt_fuzz::write_seeds(|| vec![
        sample().1.clone(),
        br#"{"version":1,"entries":[]}"#.to_vec(),
        br#"{"version":1,"entries":[{"name":"a","type":"reg","size":5,"offset":10,"chunkDigest":"sha256:00"}]}"#.to_vec(),
    ]),
    |data: &[u8]| {
        let blob = estargz_with_toc(&sample().0, data);
        if let Ok(l) = lazy::open(Arc::new(MemoryRange::new(blob)), None, &Anchor::Unverified, "L") {
            exercise(&l);
        }
    }
);

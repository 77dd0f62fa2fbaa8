//! The gzip reader the stream index uses, saving its state every 32 KiB of
//! output: each saved state, resumed from its compressed offset, must give
//! the same bytes as the first pass did there.
#![no_main]

use std::io::Read;

use lazycrypt::layer::stream::gzip::GzReader;
use lazycrypt_fuzz::{gzip, sample_tar};
use libfuzzer_sys::fuzz_target;

const EVERY: u64 = 32 << 10;
/// Most output the harness inflates (a bomb is the index's problem, not this target's).
const MAX_OUT: u64 = 8 << 20;

fuzz_target!(
    init: lazycrypt_fuzz::write_seeds(|| {
        let tar = sample_tar(70_000);
        let mut two = gzip(&tar[..20_000]);
        two.extend(gzip(&tar[20_000..]));
        let mut named = flate2::GzBuilder::new()
            .filename("n")
            .comment("c")
            .extra(vec![1, 2, 3])
            .write(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut named, &tar).unwrap();
        vec![gzip(&tar), two, named.finish().unwrap(), gzip(&[0; 300_000])]
    }),
    |data: &[u8]| {
        let mut r = GzReader::new(data, Some(EVERY));
        let mut out = Vec::new();
        let ok = (&mut r).take(MAX_OUT).read_to_end(&mut out).is_ok();
        for s in r.take_saved() {
            let (at, from) = (s.out_pos as usize, s.in_pos as usize);
            assert!(from <= data.len(), "state past the input");
            if !ok || at >= out.len() {
                continue;
            }
            let want = &out[at..out.len().min(at + EVERY as usize)];
            let mut got = vec![0; want.len()];
            GzReader::resume(&data[from..], s)
                .read_exact(&mut got)
                .expect("a resumed state reads what the first pass read");
            assert_eq!(got, want, "state at output offset {at}");
        }
    }
);

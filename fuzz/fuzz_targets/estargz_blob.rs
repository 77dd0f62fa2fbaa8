//! A whole eStargz blob: footer, TOC member (gzip and tar framing), chunk
//! members, opened lazily without an anchor and every chunk loaded.
#![no_main]

use std::sync::Arc;

use lazycrypt::layer::estargz::lazy::{self, Anchor};
use lazycrypt::layer::source::MemoryRange;
use lazycrypt_fuzz::{estargz, exercise, sample_tar};
use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: lazycrypt_fuzz::write_seeds(|| vec![
        estargz(&sample_tar(100)),
        estargz(&sample_tar(9_000)),
        estargz(&[]),
    ]),
    |data: &[u8]| {
        let src = Arc::new(MemoryRange::new(data.to_vec()));
        if lazy::has_footer(&*src, None).unwrap_or(false)
            && let Ok(l) = lazy::open(src, None, &Anchor::Unverified, "L")
        {
            exercise(&l);
        }
    }
);

//! The eStargz footer: the blob's last 51 bytes, decoded to a TOC offset.
#![no_main]

use lazycrypt::layer::estargz::{footer, reader};
use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: lazycrypt_fuzz::write_seeds(|| vec![
        footer::encode(0).to_vec(),
        footer::encode(0x1234_5678_9abc).to_vec(),
        footer::encode(u64::MAX).to_vec(),
    ]),
    |data: &[u8]| {
        if let Ok(at) = reader::toc_offset(data) {
            // A footer that decodes re-encodes to itself up to the fields
            // the decoder does not read.
            assert_eq!(footer::decode(&footer::encode(at)), Ok(at));
        }
    }
);

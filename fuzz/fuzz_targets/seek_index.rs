//! The encrypted seek index's outer format and head payload: a head blob
//! from a registry (before any key) and an opened payload (from a
//! co-recipient of the layer key, who can seal anything).
#![no_main]

use lazycrypt::layer::seekindex::head::{Compression, Expect, Head};
use lazycrypt::layer::seekindex::seal::HeadBlob;
use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: lazycrypt_fuzz::write_seeds(|| {
        let mut head = vec![0u8; 4096];
        head[..32].copy_from_slice(&[4; 32]);
        head[32..40].copy_from_slice(&200_000u64.to_le_bytes());
        head[40] = 1;
        head[41] = 1;
        head[48..56].copy_from_slice(&300_000u64.to_le_bytes());
        head[56..60].copy_from_slice(&65536u32.to_le_bytes());
        head[60..64].copy_from_slice(&65536u32.to_le_bytes());
        head[68..72].copy_from_slice(&1u32.to_le_bytes());
        let mut blob = b"LZSEEK\x01\x00".to_vec();
        blob.extend_from_slice(&[0; 32]);
        blob.extend_from_slice(&[0; 4096 + 16]);
        vec![head, blob]
    }),
    |data: &[u8]| {
        let _ = HeadBlob::parse(data);
        let expect = Expect {
            layer: [4; 32],
            blob_size: 200_000,
            compression: Compression::Gzip,
        };
        if let Err(e) = Head::parse(data, &expect) {
            assert!(!e.to_string().contains('\n'));
        }
    }
);

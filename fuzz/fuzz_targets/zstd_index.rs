//! The stream index over a zstd layer: frames decoded, the tar stream
//! walked and sealed aside, chunks read back from the sealed copy.
#![no_main]

use lazycrypt::layer::stream::Compression;
use lazycrypt_fuzz::{sample_tar, stream_layer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: lazycrypt_fuzz::write_seeds(|| {
        let tar = sample_tar(5000);
        let mut two = zstd::encode_all(&tar[..2048], 1).unwrap();
        two.extend(zstd::encode_all(&tar[2048..], 3).unwrap());
        // A skippable frame between data frames.
        let mut skip = zstd::encode_all(&tar[..1024], 1).unwrap();
        skip.extend_from_slice(&[0x50, 0x2a, 0x4d, 0x18, 4, 0, 0, 0, 1, 2, 3, 4]);
        skip.extend(zstd::encode_all(&tar[1024..], 1).unwrap());
        vec![zstd::encode_all(&tar[..], 3).unwrap(), two, skip]
    }),
    |data: &[u8]| stream_layer(data, Compression::Zstd)
);

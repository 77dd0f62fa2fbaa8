//! The stream index over a gzip layer: tar walk through the checkpointing
//! inflater, then chunks loaded back from their saved states.
#![no_main]

use lazycrypt::layer::stream::Compression;
use lazycrypt_fuzz::{gzip, sample_tar, stream_layer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: lazycrypt_fuzz::write_seeds(|| {
        let mut two = gzip(&sample_tar(5000));
        two.extend(gzip(&[0; 1024]));
        vec![gzip(&sample_tar(10)), two, gzip(&sample_tar(1_500_000))]
    }),
    |data: &[u8]| stream_layer(data, Compression::Gzip)
);

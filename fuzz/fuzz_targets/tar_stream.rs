//! Tar headers as the stream index walks them (an uncompressed tar layer),
//! then every chunk the index recorded loaded back and checked.
#![no_main]

use lazycrypt::layer::stream::Compression;
use lazycrypt_fuzz::{sample_tar, stream_layer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: lazycrypt_fuzz::write_seeds(|| vec![sample_tar(10), sample_tar(3000), vec![0; 1024]]),
    |data: &[u8]| stream_layer(data, Compression::None)
);

//! JWE wrapped keys, unwrapped with a fixed RSA and a fixed P-256 key, so
//! the header, key-management and content paths are all reached.
#![no_main]

use lazycrypt::crypto::jwe;
use lazycrypt_fuzz::{p256_key, private_options_json, public_keys, rsa_key};
use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: lazycrypt_fuzz::write_seeds(|| {
        let (pk, json) = (public_keys(), private_options_json());
        vec![
            jwe::wrap(&pk[..1], &json).unwrap(),
            jwe::wrap(&pk[1..], &json).unwrap(),
            jwe::wrap(&pk, &json).unwrap(),
        ]
    }),
    |data: &[u8]| {
        let _ = jwe::unwrap(data, &[rsa_key(), p256_key()]);
    }
);

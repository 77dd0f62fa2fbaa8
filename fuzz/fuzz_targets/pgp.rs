//! OpenPGP wrapped keys, unwrapped with a fixed secret key.
#![no_main]

use lazycrypt::crypto::pgp;
use lazycrypt_fuzz::{pgp_key, private_options_json};
use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: lazycrypt_fuzz::write_seeds(|| {
        let public = pgp_key().to_public_key();
        vec![
            pgp::wrap(&[&public], &private_options_json()).unwrap(),
            pgp::wrap(&[&public, &public], b"{}").unwrap(),
        ]
    }),
    |data: &[u8]| {
        let _ = pgp::unwrap(data, &[(pgp_key(), "")]);
    }
);

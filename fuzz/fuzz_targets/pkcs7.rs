//! PKCS#7 EnvelopedData wrapped keys, unwrapped with a fixed certificate
//! and RSA key.
#![no_main]

use lazycrypt::crypto::pkcs7;
use lazycrypt_fuzz::{certificate, private_options_json, rsa_key};
use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: lazycrypt_fuzz::write_seeds(|| vec![
        pkcs7::wrap(std::slice::from_ref(certificate()), &private_options_json()).unwrap(),
        pkcs7::wrap(&[certificate().clone(), certificate().clone()], b"{}").unwrap(),
    ]),
    |data: &[u8]| {
        let _ = pkcs7::unwrap(data, &[certificate()], &[rsa_key()]);
    }
);

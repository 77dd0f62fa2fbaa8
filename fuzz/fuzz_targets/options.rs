//! The layer cipher's options: the public ones (a base64 annotation) and
//! the private ones (JSON, once unwrapped).
#![no_main]

use lazycrypt::crypto::options::{CIPHER_AES_CTR_HMAC, PrivateOptions, PublicOptions};
use lazycrypt_fuzz::private_options_json;
use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: lazycrypt_fuzz::write_seeds(|| vec![
        private_options_json(),
        PublicOptions {
            cipher: CIPHER_AES_CTR_HMAC.into(),
            hmac: vec![7; 32],
            cipheroptions: Default::default(),
        }
        .to_annotation()
        .into_bytes(),
        br#"{"symkey":null,"digest":"","cipheroptions":{"nonce":null,"lazycrypt.toc-digest":"c2hhMjU2OjAw"}}"#.to_vec(),
    ]),
    |data: &[u8]| {
        if let Ok(o) = PrivateOptions::from_json(data) {
            assert_eq!(o.key().len(), 32);
            let _ = (o.nonce(), o.toc_digest());
        }
        if let Ok(s) = std::str::from_utf8(data)
            && let Ok(p) = PublicOptions::from_annotation(s)
        {
            assert_eq!(PublicOptions::from_annotation(&p.to_annotation()).unwrap(), p);
        }
    }
);

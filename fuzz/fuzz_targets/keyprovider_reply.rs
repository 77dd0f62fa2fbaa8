//! A keyprovider's reply (to `keywrap` and to `keyunwrap`).
#![no_main]

use lazycrypt::crypto::keyprovider;
use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: lazycrypt_fuzz::write_seeds(|| vec![
        br#"{"keyunwrapresults":{"optsdata":"eyJzeW1rZXkiOiJ4In0="}}"#.to_vec(),
        br#"{"keywrapresults":{"annotation":"YW5ub3RhdGlvbg=="}}"#.to_vec(),
        br#"{"keyunwrapresults":null}"#.to_vec(),
    ]),
    |data: &[u8]| {
        let _ = keyprovider::unwrap_reply(data, "fuzz");
        let _ = keyprovider::wrap_reply(data, "fuzz");
    }
);

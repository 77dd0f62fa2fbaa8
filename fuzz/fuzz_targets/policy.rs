//! containers-policy.json: the signature policy an operator points at.
#![no_main]

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use lazycrypt::oci::policy::Policy;
use lazycrypt::oci::reference::RegistryRef;
use libfuzzer_sys::fuzz_target;
use p256::pkcs8::{EncodePublicKey, LineEnding};

fn seeds() -> Vec<Vec<u8>> {
    let pem = p256::SecretKey::from_slice(&[1; 32])
        .unwrap()
        .public_key()
        .to_public_key_pem(LineEnding::LF)
        .unwrap();
    let key = B64.encode(pem);
    vec![
        br#"{"default":[{"type":"insecureAcceptAnything"}]}"#.to_vec(),
        format!(
            r#"{{"default":[{{"type":"reject"}}],"transports":{{"docker":{{
            "":[{{"type":"insecureAcceptAnything"}}],
            "*.example.com":[{{"type":"reject"}}],
            "reg.io/a":[{{"type":"sigstoreSigned","keyData":"{key}"}}],
            "reg.io/b:v1":[{{"type":"sigstoreSigned","keyDatas":["{key}"],"signedIdentity":{{"type":"matchRepository"}}}}],
            "reg.io/c":[{{"type":"sigstoreSigned","keyData":"{key}","signedIdentity":{{"type":"exactReference","dockerReference":"v.io/c:1"}}}}],
            "reg.io/d":[{{"type":"sigstoreSigned","keyData":"{key}","signedIdentity":{{"type":"exactRepository","dockerRepository":"v.io/d"}}}}],
            "reg.io/e":[{{"type":"sigstoreSigned","keyData":"{key}","signedIdentity":{{"type":"remapIdentity","prefix":"reg.io/e","signedPrefix":"v.io"}}}}]
            }},"docker-daemon":{{"":[{{"type":"insecureAcceptAnything"}}]}}}}}}"#
        )
        .into_bytes(),
    ]
}

fuzz_target!(init: lazycrypt_fuzz::write_seeds(seeds), |data: &[u8]| {
    // Key paths would read this machine's files: only inline keys here
    // (and no \u escape, which could spell "keyPath").
    if data.windows(7).any(|w| w == b"keyPath") || data.windows(2).any(|w| w == b"\\u") {
        return;
    }
    if let Ok(p) = Policy::parse(data, "fuzz") {
        for r in ["reg.io/a:v1", "reg.io/e/x@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", "a.example.com:5000/x"] {
            let reqs = p.requirements_for(&RegistryRef::parse(r).unwrap());
            assert!(!reqs.is_empty());
            for req in reqs {
                if let lazycrypt::oci::policy::Requirement::SigstoreSigned(s) = req {
                    assert!(!s.keys().is_empty());
                    let _ = s.identity().matches(&RegistryRef::parse(r).unwrap(), "v.io/x:1");
                }
            }
        }
    }
});

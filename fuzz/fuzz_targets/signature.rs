//! Untrusted signature material: simple-signing payloads, cosign signature
//! manifests and their layers, and PEM public keys. Every refusal must be
//! one line.
#![no_main]

use lazycrypt::oci::ImageManifest;
use lazycrypt::oci::signature::{Payload, PublicKey, SignatureLayer};
use libfuzzer_sys::fuzz_target;

const PAYLOAD: &str = r#"{"critical":{"identity":{"docker-reference":"registry.example/app"},"image":{"docker-manifest-digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"},"type":"cosign container image signature"},"optional":{"creator":"containers/image 5.24.0","timestamp":1700000000}}"#;
const SIG_MANIFEST: &str = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},
"layers":[{"mediaType":"application/vnd.dev.cosign.simplesigning.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2,
"annotations":{"dev.cosignproject.cosign/signature":"MEUCIQ=="}}]}"#;
const KEY: &str =
    "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n-----END PUBLIC KEY-----\n";

fn one_line(e: impl std::fmt::Display) {
    let s = e.to_string();
    assert!(!s.contains('\n') && !s.contains('\r'), "{s:?}");
}

fuzz_target!(
    init: lazycrypt_fuzz::write_seeds(|| vec![PAYLOAD.into(), SIG_MANIFEST.into(), KEY.into()]),
    |data: &[u8]| {
        match Payload::parse(data) {
            Ok(p) => {
                let _ = (p.docker_reference(), p.creator(), p.timestamp());
            }
            Err(e) => one_line(e),
        }
        if let Err(e) = PublicKey::from_pem(data, "fuzz") {
            one_line(e);
        }
        if let Ok(m) = serde_json::from_slice::<ImageManifest>(data) {
            match SignatureLayer::from_manifest(&m) {
                Ok(layers) => {
                    for l in layers {
                        match l.and_then(|l| l.with_payload(data.to_vec())) {
                            Ok(s) => {
                                if let Err(e) = s.verify(&[], &lazycrypt::oci::digest::of(data)) {
                                    one_line(e);
                                }
                            }
                            Err(e) => one_line(e),
                        }
                    }
                }
                Err(e) => one_line(e),
            }
        }
    }
);

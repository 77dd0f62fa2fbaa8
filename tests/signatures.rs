//! lazycrypt's verdict on an encrypted eStargz image on Debian's registry,
//! signed by real cosign 3.1 in each of its formats: a `sigstoreSigned`
//! policy accepts it with the signing key only; an unsigned image, a
//! `reject` scope are refused; `insecureAcceptAnything` accepts.

mod common;

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use common::signers::{Format, cosign_keys, cosign_sign, encrypted_hello};
use common::*;
use lazycrypt::oci::digest;
use lazycrypt::oci::policy::Policy;
use lazycrypt::oci::reference::RegistryRef;
use lazycrypt::oci::registry::{Registry as Client, RegistryOptions};
use lazycrypt::oci::signature::{Accepted, evaluate};

fn policy(scope: &str, requirements: serde_json::Value) -> Policy {
    let p = serde_json::json!({
        "default": [{"type": "reject"}],
        "transports": {"docker": {scope: requirements}},
    });
    Policy::parse(&serde_json::to_vec(&p).unwrap(), "test policy").unwrap()
}

fn signed_by(scope: &str, public: &Path) -> Policy {
    let pem = std::fs::read(public).unwrap();
    policy(
        scope,
        serde_json::json!([{"type": "sigstoreSigned", "keyData": B64.encode(pem),
                            "signedIdentity": {"type": "matchRepository"}}]),
    )
}

fn signs_and_verifies(repo: &str, format: Format) {
    let d = tmp();
    let reg = Registry::start();
    let (reference, digest) = encrypted_hello(d.path(), &reg, repo);
    let (key, public) = cosign_keys(&d.path().join("signer"));
    let (_, other_public) = cosign_keys(&d.path().join("other"));

    let image = RegistryRef::parse(&format!("{}/{repo}:v1", reg.addr)).unwrap();
    let manifest = digest::parse(&digest).unwrap();
    let opts = RegistryOptions {
        plain_http: true,
        ..Default::default()
    };
    let source = Client::new(image.clone(), &opts).unwrap();
    let scope = format!("{}/{repo}", reg.addr);
    let refusal = |p: &Policy| {
        evaluate(p, &image, &manifest, &source)
            .unwrap_err()
            .to_string()
    };
    let prefix = format!(
        "signature verification failed for {}/{repo}:v1@{digest}: ",
        reg.addr
    );

    // Before cosign signs: both tags answer 404.
    assert_eq!(
        refusal(&signed_by(&scope, &public)),
        format!("{prefix}no signatures found (the image is unsigned)")
    );

    cosign_sign(d.path(), &key, format, &reference);
    let v = evaluate(&signed_by(&scope, &public), &image, &manifest, &source).unwrap();
    assert_eq!(v.accepted, Accepted::Signed { keys: vec![0] });

    let e = refusal(&signed_by(&scope, &other_public));
    let want = match format {
        Format::Bundle => ": bundle is not signed by the trusted key",
        Format::Classic => ": not signed by the trusted key",
    };
    assert!(e.starts_with(&prefix) && e.ends_with(want), "{e}");

    let reject = policy(
        &scope,
        serde_json::json!([{"type": "insecureAcceptAnything"}, {"type": "reject"}]),
    );
    assert_eq!(
        refusal(&reject),
        format!("{prefix}rejected by policy scope {scope:?}")
    );
    let anything = policy(
        &scope,
        serde_json::json!([{"type": "insecureAcceptAnything"}]),
    );
    assert_eq!(
        evaluate(&anything, &image, &manifest, &source)
            .unwrap()
            .accepted,
        Accepted::Unverified
    );
}

#[test]
fn cosign_v3_bundle_satisfies_sigstore_signed_with_its_key_only() {
    signs_and_verifies("verdict-bundle", Format::Bundle);
}

#[test]
fn cosign_classic_signature_satisfies_sigstore_signed_with_its_key_only() {
    signs_and_verifies("verdict-classic", Format::Classic);
}

//! Real signers against Debian's registry on 127.0.0.1, offline: cosign 3.1
//! signs an encrypted eStargz image in its v3 bundle format and in its
//! classic format, and `cosign verify --key` accepts each with the signing
//! key only. What the tests find in the registry is what
//! docs/signatures.md describes; openssl checks which bytes each signature
//! covers.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use common::signers::{
    Format, cosign_keys, cosign_sign, cosign_verify, encrypted_hello, registry_get, registry_json,
};
use common::*;
use serde_json::Value;
use sha2::{Digest, Sha256};

const BUNDLE_TYPE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
const SIMPLESIGNING_TYPE: &str = "application/vnd.dev.cosign.simplesigning.v1+json";

/// An encrypted eStargz image pushed to `REPO:v1` and signed by cosign in
/// one format; a second cosign key that did not sign it.
struct Signed {
    d: Tmp,
    reg: Registry,
    repo: String,
    reference: String,
    digest: String,
    public: PathBuf,
    other_public: PathBuf,
}

impl Signed {
    fn new(repo: &str, format: Format) -> Self {
        let d = tmp();
        let reg = Registry::start();
        let (reference, digest) = encrypted_hello(d.path(), &reg, repo);
        let manifest = registry_json(&reg, repo, &format!("manifests/{digest}"));
        let layer_type = manifest["layers"][0]["mediaType"].as_str().unwrap();
        assert!(layer_type.ends_with("+encrypted"), "{layer_type}");

        let (key, public) = cosign_keys(&d.path().join("signer"));
        let (_, other_public) = cosign_keys(&d.path().join("other"));
        cosign_sign(d.path(), &key, format, &reference);
        Signed {
            d,
            reg,
            repo: repo.to_string(),
            reference,
            digest,
            public,
            other_public,
        }
    }

    fn hex(&self) -> &str {
        self.digest.strip_prefix("sha256:").unwrap()
    }

    fn tags(&self) -> Vec<String> {
        let list = registry_json(&self.reg, &self.repo, "tags/list");
        let mut tags: Vec<String> = list["tags"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap().to_string())
            .collect();
        tags.sort();
        tags
    }

    fn blob(&self, digest: &Value) -> Vec<u8> {
        let digest = digest.as_str().unwrap();
        let bytes = registry_get(&self.reg, &self.repo, &format!("blobs/{digest}"));
        assert_eq!(
            format!("sha256:{}", hex::encode(Sha256::digest(&bytes))),
            digest
        );
        bytes
    }

    /// `cosign verify` in `format` with `public`: whether it accepted, and
    /// what it printed on stdout and stderr.
    fn verify(&self, public: &Path, format: Format) -> (bool, String, String) {
        let out = cosign_verify(self.d.path(), public, format, &self.reference);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

/// openssl's verdict on an ECDSA-SHA256 signature `sig` over `message`.
fn openssl_verifies(dir: &Path, public: &Path, message: &[u8], sig: &[u8]) -> bool {
    let m = dir.join("message");
    let s = dir.join("message.sig");
    std::fs::write(&m, message).unwrap();
    std::fs::write(&s, sig).unwrap();
    run(Command::new("openssl")
        .args(["dgst", "-sha256", "-verify"])
        .arg(public)
        .arg("-signature")
        .arg(&s)
        .arg(&m))
    .status
    .success()
}

/// The DER SubjectPublicKeyInfo inside a `PUBLIC KEY` PEM file.
fn spki_der(public: &Path) -> Vec<u8> {
    let pem = std::fs::read_to_string(public).unwrap();
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\n"), "{pem}");
    B64.decode(body).unwrap()
}

#[test]
fn cosign_keys_are_encrypted_sigstore_p256_pairs() {
    let d = tmp();
    let (key, public) = cosign_keys(d.path());
    let key_pem = std::fs::read_to_string(&key).unwrap();
    assert!(
        key_pem.starts_with("-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\n"),
        "{key_pem}"
    );
    let text = ok(Command::new("openssl")
        .args(["pkey", "-pubin", "-noout", "-text", "-in"])
        .arg(&public));
    assert!(text.contains("ASN1 OID: prime256v1"), "{text}");
}

#[test]
fn cosign_v3_bundle_of_an_encrypted_estargz_image_verifies_with_its_key_only() {
    let s = Signed::new("enc/bundle", Format::Bundle);
    let fallback = format!("sha256-{}", s.hex());
    // No referrers API on Debian's registry: the fallback tag, no `.sig`.
    assert_eq!(s.tags(), [fallback.clone(), "v1".to_string()]);

    let index = registry_json(&s.reg, &s.repo, &format!("manifests/{fallback}"));
    assert_eq!(
        index["mediaType"],
        "application/vnd.oci.image.index.v1+json"
    );
    let entries = index["manifests"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{index}");
    assert_eq!(
        entries[0]["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    let digest = entries[0]["digest"].as_str().unwrap();
    let m = registry_json(&s.reg, &s.repo, &format!("manifests/{digest}"));
    assert_eq!(m["artifactType"], BUNDLE_TYPE, "{m}");
    assert_eq!(m["subject"]["digest"], s.digest.as_str(), "{m}");
    assert_eq!(
        m["config"]["mediaType"],
        "application/vnd.oci.empty.v1+json"
    );
    assert_eq!(
        m["annotations"]["dev.sigstore.bundle.content"],
        "dsse-envelope"
    );
    assert_eq!(
        m["annotations"]["dev.sigstore.bundle.predicateType"],
        "https://sigstore.dev/cosign/sign/v1"
    );
    let layers = m["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1, "{m}");
    assert_eq!(layers[0]["mediaType"], BUNDLE_TYPE);

    let bundle: Value = serde_json::from_slice(&s.blob(&layers[0]["digest"])).unwrap();
    assert_eq!(bundle["mediaType"], BUNDLE_TYPE);
    // The key is named only by a hint: base64 of SHA-256 of its DER SPKI.
    assert_eq!(
        bundle["verificationMaterial"]["publicKey"]["hint"],
        B64.encode(Sha256::digest(spki_der(&s.public))).as_str()
    );
    let env = &bundle["dsseEnvelope"];
    let payload_type = env["payloadType"].as_str().unwrap();
    assert_eq!(payload_type, "application/vnd.in-toto+json");
    let payload = B64.decode(env["payload"].as_str().unwrap()).unwrap();
    let statement: Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(statement["_type"], "https://in-toto.io/Statement/v1");
    assert_eq!(
        statement["predicateType"],
        "https://sigstore.dev/cosign/sign/v1"
    );
    assert_eq!(statement["subject"][0]["digest"]["sha256"], s.hex());
    let sigs = env["signatures"].as_array().unwrap();
    assert_eq!(sigs.len(), 1, "{bundle}");
    let sig = B64.decode(sigs[0]["sig"].as_str().unwrap()).unwrap();
    // The signature covers DSSE's pre-authentication encoding.
    let mut pae = format!(
        "DSSEv1 {} {payload_type} {} ",
        payload_type.len(),
        payload.len()
    )
    .into_bytes();
    pae.extend_from_slice(&payload);
    assert!(openssl_verifies(s.d.path(), &s.public, &pae, &sig));
    assert!(!openssl_verifies(s.d.path(), &s.public, &payload, &sig));

    let (accepted, out, err) = s.verify(&s.public, Format::Bundle);
    assert!(accepted, "{err}");
    assert!(out.contains(&s.digest), "{out}");
    let (accepted, _, err) = s.verify(&s.other_public, Format::Bundle);
    assert!(!accepted);
    assert!(err.contains("no matching attestations"), "{err}");
    // The classic reader finds nothing: what verified was the bundle.
    let (accepted, _, _) = s.verify(&s.public, Format::Classic);
    assert!(!accepted);
}

#[test]
fn cosign_classic_signature_of_an_encrypted_estargz_image_verifies_with_its_key_only() {
    let s = Signed::new("enc/classic", Format::Classic);
    let sig_tag = format!("sha256-{}.sig", s.hex());
    assert_eq!(s.tags(), [sig_tag.clone(), "v1".to_string()]);

    let m = registry_json(&s.reg, &s.repo, &format!("manifests/{sig_tag}"));
    assert_eq!(m["mediaType"], "application/vnd.oci.image.manifest.v1+json");
    assert_eq!(
        m["config"]["mediaType"],
        "application/vnd.oci.image.config.v1+json"
    );
    let layers = m["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1, "{m}");
    assert_eq!(layers[0]["mediaType"], SIMPLESIGNING_TYPE);
    let payload = s.blob(&layers[0]["digest"]);
    let claims: Value = serde_json::from_slice(&payload).unwrap();
    let repo = format!("{}/{}", s.reg.addr, s.repo);
    assert_eq!(
        claims["critical"]["identity"]["docker-reference"],
        repo.as_str()
    );
    assert_eq!(
        claims["critical"]["image"]["docker-manifest-digest"],
        s.digest.as_str()
    );
    assert_eq!(
        claims["critical"]["type"],
        "cosign container image signature"
    );
    // The annotation signs the payload blob's exact bytes.
    let sig = layers[0]["annotations"]["dev.cosignproject.cosign/signature"]
        .as_str()
        .unwrap();
    let sig = B64.decode(sig).unwrap();
    assert!(openssl_verifies(s.d.path(), &s.public, &payload, &sig));
    assert!(!openssl_verifies(
        s.d.path(),
        &s.other_public,
        &payload,
        &sig
    ));

    let (accepted, out, err) = s.verify(&s.public, Format::Classic);
    assert!(accepted, "{err}");
    assert!(out.contains(&s.digest), "{out}");
    let (accepted, _, err) = s.verify(&s.other_public, Format::Classic);
    assert!(!accepted);
    assert!(err.contains("no matching signatures"), "{err}");
    // Without bundles, the default reader falls back to the `.sig` tag.
    let (accepted, _, err) = s.verify(&s.public, Format::Bundle);
    assert!(accepted, "{err}");
}

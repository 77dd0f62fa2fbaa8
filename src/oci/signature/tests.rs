//! Signatures made by real external signers (openssl) and by the RustCrypto
//! signers, and every way a classic signature can be wrong.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use oci_spec::image::{Descriptor, ImageManifest, ImageManifestBuilder, MediaType};
use p256::pkcs8::{EncodePublicKey as _, LineEnding};

use super::*;
use crate::oci::digest::{self, Digest};

const REF: &str = "registry.example/team/app";

fn manifest_digest() -> Digest {
    digest::of(b"the image manifest")
}

fn payload_for(d: &Digest) -> Vec<u8> {
    // Byte for byte what cosign writes (no annotations: `optional` null).
    format!(
        r#"{{"critical":{{"identity":{{"docker-reference":"{REF}"}},"image":{{"docker-manifest-digest":"{d}"}},"type":"cosign container image signature"}},"optional":null}}"#
    )
    .into_bytes()
}

fn descriptor(payload: &[u8], signature_b64: Option<&str>) -> Descriptor {
    let mut d = Descriptor::new(
        MediaType::Other(SIMPLE_SIGNING_MEDIA_TYPE.into()),
        payload.len() as u64,
        digest::of(payload),
    );
    if let Some(s) = signature_b64 {
        d.set_annotations(Some(HashMap::from([(
            SIGNATURE_ANNOTATION.to_string(),
            s.to_string(),
        )])));
    }
    d
}

fn signature(payload: &[u8], sig: &[u8]) -> ClassicSignature {
    SignatureLayer::from_descriptor(&descriptor(payload, Some(&B64.encode(sig))))
        .unwrap()
        .with_payload(payload.to_vec())
        .unwrap()
}

struct P256Signer(p256::ecdsa::SigningKey);

impl P256Signer {
    fn new() -> Self {
        P256Signer(p256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng))
    }

    fn public(&self) -> PublicKey {
        let pem = self
            .0
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap();
        PublicKey::from_pem(pem.as_bytes(), "test").unwrap()
    }

    fn sign(&self, payload: &[u8]) -> ClassicSignature {
        use p256::ecdsa::signature::Signer as _;
        let sig: p256::ecdsa::Signature = self.0.sign(payload);
        signature(payload, sig.to_der().as_bytes())
    }
}

#[test]
fn accepts_a_p256_signature_and_exposes_the_identity() {
    let (other, signer) = (P256Signer::new(), P256Signer::new());
    let payload = payload_for(&manifest_digest());
    let v = signer
        .sign(&payload)
        .verify(&[other.public(), signer.public()], &manifest_digest())
        .unwrap();
    assert_eq!(v.docker_reference(), REF);
    assert_eq!(v.key_index(), 1);
    assert_eq!(v.layer(), &digest::of(&payload));
    assert_eq!(v.payload().manifest_digest(), &manifest_digest());
}

/// Go's crypto/ecdsa, which signs for cosign and skopeo, does not normalise S:
/// both (r, s) and (r, n - s) must verify, as they do there.
#[test]
fn accepts_ecdsa_signatures_with_a_high_or_low_s() {
    use p256::ecdsa::signature::Signer as _;
    let signer = P256Signer::new();
    let payload = payload_for(&manifest_digest());
    let sig: p256::ecdsa::Signature = signer.0.sign(&payload);
    let (r, s) = sig.split_scalars();
    let flipped = p256::ecdsa::Signature::from_scalars(r, -*s).unwrap();
    let high = if sig.normalize_s().is_some() {
        sig
    } else {
        flipped
    };
    assert!(high.normalize_s().is_some(), "a high-S signature");
    for sig in [sig, flipped] {
        signature(&payload, sig.to_der().as_bytes())
            .verify(&[signer.public()], &manifest_digest())
            .unwrap();
    }
}

#[test]
fn accepts_rsa_and_ed25519_signatures_of_the_rustcrypto_signers() {
    use rsa::signature::{SignatureEncoding as _, Signer as _};
    let payload = payload_for(&manifest_digest());

    let rsa = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).unwrap();
    let pem = rsa
        .to_public_key()
        .to_public_key_pem(LineEnding::LF)
        .unwrap();
    let key = PublicKey::from_pem(pem.as_bytes(), "rsa").unwrap();
    assert_eq!(key.kind(), "RSA-2048");
    let sig = rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new(rsa).sign(&payload);
    signature(&payload, &sig.to_bytes())
        .verify(&[key], &manifest_digest())
        .unwrap();

    let ed = ed25519_dalek::SigningKey::from_bytes(&rand::random());
    let pem = spki_pem(
        "1.3.101.112",
        None,
        ed.verifying_key().as_bytes().as_slice(),
    );
    let key = PublicKey::from_pem(pem.as_bytes(), "ed").unwrap();
    assert_eq!(key.kind(), "Ed25519");
    signature(&payload, &ed.sign(&payload).to_bytes())
        .verify(&[key], &manifest_digest())
        .unwrap();
}

/// A PEM SPKI for a raw key, built by hand for algorithms without an encoder here.
fn spki_pem(alg: &str, params: Option<&str>, key: &[u8]) -> String {
    use der::Encode as _;
    use der::asn1::{BitString, ObjectIdentifier};
    let info = spki::SubjectPublicKeyInfoOwned {
        algorithm: spki::AlgorithmIdentifierOwned {
            oid: ObjectIdentifier::new_unwrap(alg),
            parameters: params.map(|p| ObjectIdentifier::new_unwrap(p).into()),
        },
        subject_public_key: BitString::from_bytes(key).unwrap(),
    };
    let der = info.to_der().unwrap();
    der::pem::encode_string("PUBLIC KEY", LineEnding::LF, &der).unwrap()
}

fn openssl(dir: &Path, args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl is installed by install-deps");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Keys made and payloads signed by openssl, as cosign signs: ECDSA and RSA
/// PKCS#1 v1.5 over SHA-256 (`dgst -sha256 -sign`), Ed25519 over the raw payload.
#[test]
fn accepts_signatures_made_by_openssl() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let payload = payload_for(&manifest_digest());
    std::fs::write(d.join("payload.json"), &payload).unwrap();
    let algs: [(&str, &[&str], &[&str], &str); 5] = [
        (
            "p256",
            &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
            &["dgst", "-sha256", "-sign", "p256.key", "payload.json"],
            "ECDSA P-256",
        ),
        (
            "p384",
            &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"],
            &["dgst", "-sha256", "-sign", "p384.key", "payload.json"],
            "ECDSA P-384",
        ),
        (
            "rsa",
            &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:3072"],
            &["dgst", "-sha256", "-sign", "rsa.key", "payload.json"],
            "RSA-3072",
        ),
        (
            "ed25519",
            &["-algorithm", "ED25519"],
            &[
                "pkeyutl",
                "-sign",
                "-rawin",
                "-inkey",
                "ed25519.key",
                "-in",
                "payload.json",
            ],
            "Ed25519",
        ),
        (
            // A second P-256 signature: half of ECDSA signatures have a high S.
            "p256b",
            &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
            &["dgst", "-sha256", "-sign", "p256b.key", "payload.json"],
            "ECDSA P-256",
        ),
    ];
    let mut keys = Vec::new();
    for (name, genargs, signargs, kind) in algs {
        let key = format!("{name}.key");
        let mut args = vec!["genpkey", "-out", &key];
        args.extend_from_slice(genargs);
        openssl(d, &args);
        let pem = openssl(d, &["pkey", "-in", &key, "-pubout"]);
        let public = PublicKey::from_pem(&pem, &format!("{name}.pub")).unwrap();
        assert_eq!(public.kind(), kind);
        let sig = openssl(d, signargs);
        let v = signature(&payload, &sig)
            .verify(std::slice::from_ref(&public), &manifest_digest())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(v.docker_reference(), REF);
        keys.push((public, sig));
    }
    // Each signature verifies under its own key only.
    let publics: Vec<PublicKey> = keys.iter().map(|(k, _)| k.clone()).collect();
    for (i, (_, sig)) in keys.iter().enumerate() {
        let v = signature(&payload, sig)
            .verify(&publics, &manifest_digest())
            .unwrap();
        assert_eq!(v.key_index(), i);
        let others: Vec<PublicKey> = publics
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, k)| k.clone())
            .collect();
        assert_eq!(
            signature(&payload, sig)
                .verify(&others, &manifest_digest())
                .unwrap_err()
                .to_string(),
            format!(
                "signature layer {}: not signed by any of the 4 trusted keys",
                digest::of(&payload)
            )
        );
    }
}

#[test]
fn refuses_keys_it_cannot_use_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    openssl(
        d,
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-521",
            "-out",
            "p521.key",
        ],
    );
    let p521 = openssl(d, &["pkey", "-in", "p521.key", "-pubout"]);
    let private = std::fs::read(d.join("p521.key")).unwrap();
    openssl(d, &["genpkey", "-algorithm", "X25519", "-out", "x.key"]);
    let x25519 = openssl(d, &["pkey", "-in", "x.key", "-pubout"]);
    let short_ed25519 = spki_pem("1.3.101.112", None, &[1; 31]);
    let cases: [(&[u8], &str); 6] = [
        (
            &p521,
            "public key /etc/keys/a.pub: ECDSA curve 1.3.132.0.35 is not supported (P-256 and P-384 are)",
        ),
        (
            &x25519,
            "public key /etc/keys/a.pub: algorithm 1.3.101.110 is not supported (ECDSA P-256/P-384, RSA and Ed25519 are)",
        ),
        (
            &private,
            "public key /etc/keys/a.pub: a PEM \"PRIVATE KEY\" block, not \"PUBLIC KEY\" (SubjectPublicKeyInfo)",
        ),
        (
            b"ssh-ed25519 AAAA",
            "public key /etc/keys/a.pub: no PEM block",
        ),
        (
            b"-----BEGIN PUBLIC KEY-----\nMAA=\n-----END PUBLIC KEY-----\n",
            "public key /etc/keys/a.pub: not a SubjectPublicKeyInfo: ASN.1 error: ASN.1 DER message is incomplete: expected 3, actual 2 at DER byte 2",
        ),
        (
            short_ed25519.as_bytes(),
            "public key /etc/keys/a.pub: malformed Ed25519 key: not 32 bytes",
        ),
    ];
    for (pem, msg) in cases {
        assert_eq!(
            PublicKey::from_pem(pem, "/etc/keys/a.pub")
                .unwrap_err()
                .to_string(),
            msg
        );
    }
    // A comment before the block is fine (Go's pem.Decode skips it too).
    let mut commented = b"# release key\n".to_vec();
    commented.extend_from_slice(&x25519);
    assert!(
        PublicKey::from_pem(&commented, "k")
            .unwrap_err()
            .to_string()
            .contains("algorithm 1.3.101.110")
    );
}

fn err(r: Result<impl std::fmt::Debug, SignatureError>) -> String {
    r.unwrap_err().to_string()
}

#[test]
fn refuses_each_bad_signature_with_its_own_message() {
    let signer = P256Signer::new();
    let keys = [signer.public()];
    let want = manifest_digest();
    let payload = payload_for(&want);
    let layer = digest::of(&payload);

    // Signed by another key.
    assert_eq!(
        err(P256Signer::new().sign(&payload).verify(&keys, &want)),
        format!("signature layer {layer}: not signed by the trusted key")
    );

    // Over another digest.
    let other = digest::of(b"another manifest");
    let p = payload_for(&other);
    assert_eq!(
        err(signer.sign(&p).verify(&keys, &want)),
        format!(
            "signature layer {} signs another manifest, {other}",
            digest::of(&p)
        )
    );

    // Tampered payload: the blob is not the one the descriptor names.
    let sig = B64.encode([1, 2, 3]);
    let mut tampered = payload.clone();
    tampered[20] ^= 1;
    assert_eq!(
        err(
            SignatureLayer::from_descriptor(&descriptor(&payload, Some(&sig)))
                .unwrap()
                .with_payload(tampered.clone())
        ),
        format!(
            "signature layer {layer}: the payload fetched has digest {}, not the layer's (tampered payload)",
            digest::of(&tampered)
        )
    );

    // Tampered annotation: valid base64, another signature.
    let good = signer.sign(&payload);
    let mut bytes = good.signature_bytes().to_vec();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    assert_eq!(
        err(signature(&payload, &bytes).verify(&keys, &want)),
        format!("signature layer {layer}: not signed by the trusted key")
    );

    // Bad base64; a missing annotation.
    assert_eq!(
        err(SignatureLayer::from_descriptor(&descriptor(
            &payload,
            Some("not base64!")
        ))),
        format!(
            "signature layer {layer}: annotation dev.cosignproject.cosign/signature is not valid base64"
        )
    );
    assert_eq!(
        err(SignatureLayer::from_descriptor(&descriptor(&payload, None))),
        format!("signature layer {layer} has no dev.cosignproject.cosign/signature annotation")
    );

    // Malformed payload JSON, signed by the trusted key: parsed only after the
    // signature verified, so the message can say what is wrong.
    let p = br#"{"critical":{}}"#.to_vec();
    assert_eq!(
        err(signer.sign(&p).verify(&keys, &want)),
        format!(
            "signature layer {}: payload is not a simple-signing payload: missing field `identity` at line 1 column 14",
            digest::of(&p)
        )
    );
    // The same bytes not signed by a trusted key are never parsed.
    assert_eq!(
        err(P256Signer::new().sign(&p).verify(&keys, &want)),
        format!(
            "signature layer {}: not signed by the trusted key",
            digest::of(&p)
        )
    );

    // Wrong critical.type.
    let p = String::from_utf8(payload.clone())
        .unwrap()
        .replace("cosign container image", "atomic container image")
        .into_bytes();
    assert_eq!(
        err(signer.sign(&p).verify(&keys, &want)),
        format!(
            "signature layer {}: payload has critical.type \"atomic container image signature\", not \"cosign container image signature\"",
            digest::of(&p)
        )
    );

    // Oversized payload, refused from the descriptor before any fetch.
    let mut big = descriptor(&payload, Some(&sig));
    big.set_size(MAX_PAYLOAD as u64 + 1);
    assert_eq!(
        err(SignatureLayer::from_descriptor(&big)),
        format!(
            "signature layer {layer}: the payload is 65537 bytes, more than the 65536 a signature payload may have"
        )
    );
    // An oversized annotation, before decoding.
    let long = "A".repeat(8 << 10);
    assert_eq!(
        err(SignatureLayer::from_descriptor(&descriptor(
            &payload,
            Some(&long)
        ))),
        format!(
            "signature layer {layer}: annotation dev.cosignproject.cosign/signature is 8192 bytes, more than the 4096 a signature may have"
        )
    );
}

fn signature_manifest(layers: Vec<Descriptor>) -> ImageManifest {
    let config = Descriptor::new(
        MediaType::Other(SIMPLE_SIGNING_MEDIA_TYPE.into()),
        2,
        digest::of(b"{}"),
    );
    ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(config)
        .layers(layers)
        .build()
        .unwrap()
}

#[test]
fn one_accepted_signature_is_enough_and_none_is_refused() {
    let signer = P256Signer::new();
    let keys = [signer.public()];
    let want = manifest_digest();
    let payload = payload_for(&want);
    let good = signer.sign(&payload);
    let stranger = P256Signer::new().sign(&payload);

    // No simple-signing layer at all (other media types are skipped).
    let other = Descriptor::new(MediaType::ImageLayer, 3, digest::of(b"abc"));
    assert_eq!(
        err(SignatureLayer::from_manifest(&signature_manifest(vec![
            other.clone()
        ]))),
        "no signature (the signature manifest has no application/vnd.dev.cosign.simplesigning.v1+json layer)"
    );
    assert_eq!(
        err(verify_any([], &keys, &want)),
        "no signature (the signature manifest has no application/vnd.dev.cosign.simplesigning.v1+json layer)"
    );

    // A broken layer next to a good one: the good one counts.
    let manifest = signature_manifest(vec![
        other,
        descriptor(&payload, Some("%%")),
        descriptor(&payload, Some(&B64.encode(good.signature_bytes()))),
    ]);
    let layers = SignatureLayer::from_manifest(&manifest).unwrap();
    assert_eq!(layers.len(), 2);
    let candidates = layers
        .into_iter()
        .map(|l| l.and_then(|l| l.with_payload(payload.clone())));
    let v = verify_any(candidates, &keys, &want).unwrap();
    assert_eq!(v.docker_reference(), REF);

    // Only strangers' signatures: the one error, or the first of several.
    let layer = digest::of(&payload);
    assert_eq!(
        err(verify_any([Ok(stranger.clone())], &keys, &want)),
        format!("signature layer {layer}: not signed by the trusted key")
    );
    assert_eq!(
        err(verify_any(
            [Ok(stranger), Ok(good.clone())],
            &[P256Signer::new().public()],
            &want
        )),
        format!(
            "none of the 2 signatures is accepted; the first: signature layer {layer}: not signed by the trusted key"
        )
    );
    assert_eq!(
        err(good.verify(&[], &want)),
        format!("signature layer {layer}: not signed by any trusted key (none given)")
    );
}

#[test]
fn the_signature_tag_is_cosigns() {
    let d =
        digest::parse("sha256:4c1c50d0ffc614f90b93b07d778028dc765548e823f676fb027f61d281ac380d")
            .unwrap();
    assert_eq!(
        signature_tag(&d),
        "sha256-4c1c50d0ffc614f90b93b07d778028dc765548e823f676fb027f61d281ac380d.sig"
    );
}

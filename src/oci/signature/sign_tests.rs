//! Signing with keys cosign 3.1.1 generated (tests/fixtures/cosign), and
//! attaching classic signatures to an in-memory repository.

use std::collections::HashMap;
use std::io::Read;
use std::sync::Mutex;

use zeroize::Zeroizing;

use super::*;
use crate::oci::digest::{self, Digest};
use crate::oci::transport::{ImageDest, ImageSource, RawManifest};
use crate::oci::{Descriptor, Error, media};

const COSIGN_KEY: &[u8] = include_bytes!("../../../tests/fixtures/cosign/cosign.key");
const COSIGN_PUB: &[u8] = include_bytes!("../../../tests/fixtures/cosign/cosign.pub");
const SECOND_KEY: &[u8] = include_bytes!("../../../tests/fixtures/cosign/second.key");
const SECOND_PUB: &[u8] = include_bytes!("../../../tests/fixtures/cosign/second.pub");

fn pw(s: &str) -> Passphrase {
    Passphrase::new(Zeroizing::new(s.as_bytes().to_vec()))
}

fn image_digest() -> Digest {
    digest::of(b"the encrypted image's manifest")
}

#[test]
fn opens_a_cosign_key_and_signs_what_its_public_key_verifies() {
    let signer = Signer::from_cosign_pem(COSIGN_KEY, &pw("pw"), "cosign.key").unwrap();
    let public = PublicKey::from_pem(COSIGN_PUB, "cosign.pub").unwrap();
    let sig = signer.sign(b"message");
    public.verify(b"message", &sig).unwrap();
    assert!(public.verify(b"other", &sig).is_err());
    let second = PublicKey::from_pem(SECOND_PUB, "second.pub").unwrap();
    assert!(second.verify(b"message", &sig).is_err());
    // A DER SEQUENCE { r, s }, as cosign writes.
    assert_eq!(sig[0], 0x30);
}

#[test]
fn a_generated_key_seals_as_cosign_does_and_opens_again() {
    let made = Signer::generate();
    let pem = made.to_cosign_pem(&pw("pw"));
    assert!(pem.starts_with("-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\n"));
    let opened = Signer::from_cosign_pem(pem.as_bytes(), &pw("pw"), "made.key").unwrap();
    let public = PublicKey::from_pem(made.public_key_pem().as_bytes(), "made.pub").unwrap();
    public.verify(b"message", &opened.sign(b"message")).unwrap();
    let other = PublicKey::from_pem(COSIGN_PUB, "cosign.pub").unwrap();
    assert!(other.verify(b"message", &opened.sign(b"message")).is_err());
    let e = Signer::from_cosign_pem(pem.as_bytes(), &pw("wrong"), "made.key").unwrap_err();
    assert_eq!(e.problem(), &PrivateKeyProblem::WrongPassphrase);
}

#[test]
fn a_wrong_passphrase_is_one_clear_line() {
    let e = Signer::from_cosign_pem(COSIGN_KEY, &pw("wrong"), "cosign.key").unwrap_err();
    assert_eq!(e.problem(), &PrivateKeyProblem::WrongPassphrase);
    assert_eq!(
        e.to_string(),
        "cosign private key cosign.key: wrong passphrase (the key does not decrypt)"
    );
}

#[test]
fn refuses_what_is_not_a_cosign_private_key() {
    let e = Signer::from_cosign_pem(COSIGN_PUB, &pw("pw"), "cosign.pub").unwrap_err();
    assert_eq!(
        e.problem(),
        &PrivateKeyProblem::WrongType("PUBLIC KEY".into())
    );
    let e = Signer::from_cosign_pem(b"hello", &pw("pw"), "k").unwrap_err();
    assert_eq!(e.problem(), &PrivateKeyProblem::NoPem);
    // scrypt costs are bounded before any memory is spent: N alone, and
    // N·r (memory) and N·r·p (work) within each parameter's own bound.
    let text = std::str::from_utf8(COSIGN_KEY).unwrap();
    let body: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let json = String::from_utf8(b64.decode(body).unwrap()).unwrap();
    for (params, shown) in [
        (r#""N":4294967296,"r":8,"p":1"#, "N=4294967296, r=8, p=1"),
        (r#""N":1048576,"r":32,"p":1"#, "N=1048576, r=32, p=1"),
        (r#""N":262144,"r":8,"p":16"#, "N=262144, r=8, p=16"),
    ] {
        let costly = json.replacen(r#""N":65536,"r":8,"p":1"#, params, 1);
        let encoded = b64.encode(costly);
        let lines: Vec<&str> = encoded
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        let pem = format!(
            "-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\n{}\n-----END ENCRYPTED SIGSTORE PRIVATE KEY-----\n",
            lines.join("\n")
        );
        let e = Signer::from_cosign_pem(pem.as_bytes(), &pw("pw"), "k").unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("cosign private key k: scrypt parameters {shown} are not supported")
        );
    }
}

#[test]
fn reads_a_passphrase_files_first_line() {
    let p = Passphrase::from_file_contents(Zeroizing::new(b"pw\r\nignored\n".to_vec()));
    Signer::from_cosign_pem(COSIGN_KEY, &p, "cosign.key").unwrap();
}

#[test]
fn the_payload_is_cosigns_byte_for_byte() {
    let d = image_digest();
    assert_eq!(
        String::from_utf8(classic_payload("127.0.0.1:5000/team/app", &d)).unwrap(),
        format!(
            r#"{{"critical":{{"identity":{{"docker-reference":"127.0.0.1:5000/team/app"}},"image":{{"docker-manifest-digest":"{d}"}},"type":"cosign container image signature"}},"optional":null}}"#
        )
    );
}

#[derive(Default)]
struct Repo {
    blobs: Mutex<HashMap<String, Vec<u8>>>,
    tags: Mutex<HashMap<String, RawManifest>>,
}

impl ImageSource for Repo {
    fn root(&self) -> Result<RawManifest, Error> {
        unreachable!()
    }
    fn manifest(&self, _: &Descriptor) -> Result<RawManifest, Error> {
        unreachable!()
    }
    fn blob(&self, desc: &Descriptor) -> Result<Box<dyn Read + Send>, Error> {
        let b = self
            .blobs
            .lock()
            .unwrap()
            .get(&desc.digest().to_string())
            .cloned();
        Ok(Box::new(std::io::Cursor::new(b.ok_or_else(|| {
            Error::NotFound(desc.digest().to_string())
        })?)))
    }
    fn blob_range(&self, _: &Descriptor, _: u64, _: u64) -> Result<Vec<u8>, Error> {
        unreachable!()
    }
    fn tagged(&self, tag: &str) -> Result<RawManifest, Error> {
        self.tags
            .lock()
            .unwrap()
            .get(tag)
            .cloned()
            .ok_or_else(|| Error::NotFound(tag.into()))
    }
}

impl ImageDest for Repo {
    fn has_blob(&self, d: &Digest) -> Result<bool, Error> {
        Ok(self.blobs.lock().unwrap().contains_key(&d.to_string()))
    }
    fn put_blob(&self, data: &mut dyn Read, _: &str) -> Result<(Digest, u64), Error> {
        let mut b = Vec::new();
        data.read_to_end(&mut b).unwrap();
        let d = digest::of(&b);
        let n = b.len() as u64;
        self.blobs.lock().unwrap().insert(d.to_string(), b);
        Ok((d, n))
    }
    fn put_manifest(&self, _: &RawManifest) -> Result<(), Error> {
        unreachable!()
    }
    fn commit(&self, _: &RawManifest) -> Result<(), Error> {
        unreachable!()
    }
    fn put_tagged(&self, m: &RawManifest, tag: &str) -> Result<(), Error> {
        self.tags.lock().unwrap().insert(tag.into(), m.clone());
        Ok(())
    }
    fn abort(&self) {}
}

#[test]
fn attaching_appends_to_the_signature_manifest() {
    let repo = Repo::default();
    let d = image_digest();
    let first = Signer::from_cosign_pem(COSIGN_KEY, &pw("pw"), "cosign.key").unwrap();
    let second = Signer::from_cosign_pem(SECOND_KEY, &pw("pw"), "second.key").unwrap();
    let reference = "127.0.0.1:5000/team/app";

    let a = attach_classic(&repo, &repo, &first, reference, &d).unwrap();
    assert_eq!(
        (a.tag.as_str(), a.signatures, a.written),
        (signature_tag(&d).as_str(), 1, true)
    );
    let b = attach_classic(&repo, &repo, &second, reference, &d).unwrap();
    assert_eq!((b.signatures, b.written), (2, true));
    // ECDSA here is deterministic (RFC 6979): the same signature again adds nothing.
    let c = attach_classic(&repo, &repo, &first, reference, &d).unwrap();
    assert_eq!(
        (c.signatures, c.written, &c.manifest),
        (2, false, &b.manifest)
    );

    let raw = repo.tagged(&a.tag).unwrap();
    assert_eq!(raw.media_type, media::OCI_MANIFEST);
    let m: serde_json::Value = serde_json::from_slice(&raw.bytes).unwrap();
    let layers = m["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2);
    for l in layers {
        assert_eq!(l["mediaType"], SIMPLE_SIGNING_MEDIA_TYPE);
        assert!(l["annotations"][SIGNATURE_ANNOTATION].is_string());
    }
    let config_digest = m["config"]["digest"].as_str().unwrap();
    let config: serde_json::Value =
        serde_json::from_slice(&repo.blobs.lock().unwrap()[config_digest]).unwrap();
    assert_eq!(config["rootfs"]["diff_ids"][1], layers[1]["digest"]);
    assert_eq!(config["history"].as_array().unwrap().len(), 2);

    // Each key's signature is found and verifies, and names the image.
    for public in [COSIGN_PUB, SECOND_PUB] {
        let key = PublicKey::from_pem(public, "pub").unwrap();
        let found = fetch(&repo, &d).into_iter().map(|f| match f {
            Ok(Found::Classic(s)) => Ok(s),
            other => panic!("{other:?}"),
        });
        let v = verify_any(found, &[key], &d).unwrap();
        assert_eq!(v.docker_reference(), reference);
    }
}

#[test]
fn attaching_refuses_to_overwrite_what_is_not_a_signature_manifest() {
    let repo = Repo::default();
    let d = image_digest();
    repo.tags.lock().unwrap().insert(
        signature_tag(&d),
        RawManifest {
            media_type: media::OCI_INDEX.into(),
            digest: digest::of(b"{}"),
            bytes: b"{}".to_vec(),
        },
    );
    let signer = Signer::from_cosign_pem(COSIGN_KEY, &pw("pw"), "cosign.key").unwrap();
    let e = attach_classic(&repo, &repo, &signer, "h/r", &d).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "signature manifest {}: a \"{}\", not an image manifest; not overwriting it",
            signature_tag(&d),
            media::OCI_INDEX
        )
    );
}

//! Bundles built here from a P-256 key as cosign builds them, and the
//! policy's verdict over an in-memory repository holding cosign's tags.

use std::collections::HashMap;
use std::io::Read;
use std::sync::Mutex;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use p256::ecdsa::signature::Signer as _;
use p256::pkcs8::{EncodePublicKey as _, LineEnding};
use serde_json::json;

use super::*;
use crate::oci::digest::{self, Digest};
use crate::oci::policy::Policy;
use crate::oci::reference::RegistryRef;
use crate::oci::transport::{ImageSource, RawManifest};
use crate::oci::{Descriptor, Error, media};

fn image_digest() -> Digest {
    digest::of(b"the encrypted image's manifest")
}

struct Key(p256::ecdsa::SigningKey);

impl Key {
    fn new() -> Self {
        Key(p256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng))
    }

    fn pem(&self) -> String {
        self.0
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap()
    }

    fn public(&self) -> PublicKey {
        PublicKey::from_pem(self.pem().as_bytes(), "test").unwrap()
    }

    fn sign(&self, msg: &[u8]) -> Vec<u8> {
        let s: p256::ecdsa::Signature = self.0.sign(msg);
        s.to_der().as_bytes().to_vec()
    }

    /// A bundle as `cosign sign --key` writes it, over `statement`.
    fn bundle_of(&self, statement: &[u8]) -> Vec<u8> {
        let sig = self.sign(&pae(IN_TOTO_PAYLOAD_TYPE, statement));
        bundle_json(statement, &sig)
    }

    fn bundle(&self, d: &Digest) -> Vec<u8> {
        self.bundle_of(&statement(d.digest(), SIGN_PREDICATE_TYPE))
    }
}

fn statement(hex: &str, predicate_type: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "_type": STATEMENT_TYPE,
        "subject": [{"digest": {"sha256": hex}, "annotations": {}}],
        "predicateType": predicate_type,
        "predicate": {},
    }))
    .unwrap()
}

fn bundle_json(statement: &[u8], sig: &[u8]) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "mediaType": BUNDLE_MEDIA_TYPE,
        "verificationMaterial": {"publicKey": {"hint": "aGludA=="}},
        "dsseEnvelope": {
            "payload": B64.encode(statement),
            "payloadType": IN_TOTO_PAYLOAD_TYPE,
            "signatures": [{"sig": B64.encode(sig)}],
        },
    }))
    .unwrap()
}

fn verify_err(bundle: &[u8], keys: &[PublicKey]) -> String {
    Bundle::parse(bundle)
        .and_then(|b| b.verify(keys, &image_digest()))
        .unwrap_err()
        .to_string()
}

#[test]
fn pae_is_dsse_v1() {
    // DSSE's own example.
    assert_eq!(
        pae("http://example.com/HelloWorld", b"hello world"),
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    );
}

#[test]
fn a_bundle_verifies_with_its_key_only() {
    let (k, other) = (Key::new(), Key::new());
    let b = Bundle::parse(&k.bundle(&image_digest())).unwrap();
    let v = b
        .verify(&[other.public(), k.public()], &image_digest())
        .unwrap();
    assert_eq!(v.key_index(), 1);
    assert_eq!(
        b.verify(&[other.public()], &image_digest())
            .unwrap_err()
            .to_string(),
        "is not signed by the trusted key"
    );
}

#[test]
fn bundle_refusals_are_distinct() {
    let k = Key::new();
    let keys = [k.public()];
    let other_digest = digest::of(b"another manifest");
    assert_eq!(
        verify_err(&k.bundle(&other_digest), &keys),
        format!("signs another manifest, {other_digest}")
    );
    // The statement changed after signing.
    let sig = k.sign(&pae(
        IN_TOTO_PAYLOAD_TYPE,
        &statement(other_digest.digest(), SIGN_PREDICATE_TYPE),
    ));
    let tampered = bundle_json(
        &statement(image_digest().digest(), SIGN_PREDICATE_TYPE),
        &sig,
    );
    assert_eq!(
        verify_err(&tampered, &keys),
        "is not signed by the trusted key"
    );
    // A signature over the bare payload, not over PAE, is not DSSE's.
    let st = statement(image_digest().digest(), SIGN_PREDICATE_TYPE);
    let bare = bundle_json(&st, &k.sign(&st));
    assert_eq!(verify_err(&bare, &keys), "is not signed by the trusted key");
    assert_eq!(
        verify_err(
            &k.bundle_of(&statement(
                image_digest().digest(),
                "https://slsa.dev/provenance/v1"
            )),
            &keys
        ),
        "is an attestation of predicateType \"https://slsa.dev/provenance/v1\", \
         not a signature (https://sigstore.dev/cosign/sign/v1)"
    );
    assert_eq!(
        verify_err(&k.bundle_of(b"{\"_type\":1}"), &keys),
        "has a signed statement that is malformed: invalid type: integer `1`, \
         expected a string at line 1 column 10"
    );
}

#[test]
fn malformed_keyless_and_oversized_bundles_are_refused_before_any_key() {
    assert!(
        verify_err(b"not json", &[]).starts_with("is malformed: expected ident at line 1 column 2")
    );
    let keyless = json!({
        "mediaType": BUNDLE_MEDIA_TYPE,
        "verificationMaterial": {"certificate": {"rawBytes": "AAAA"}, "tlogEntries": []},
        "dsseEnvelope": {"payload": "", "payloadType": IN_TOTO_PAYLOAD_TYPE, "signatures": []},
    });
    assert_eq!(
        verify_err(&serde_json::to_vec(&keyless).unwrap(), &[]),
        "is a keyless (certificate) bundle; keyless bundles are not supported yet"
    );
    let mut v: serde_json::Value =
        serde_json::from_slice(&Key::new().bundle(&image_digest())).unwrap();
    v["dsseEnvelope"]["payloadType"] = json!("text/plain");
    assert_eq!(
        verify_err(&serde_json::to_vec(&v).unwrap(), &[]),
        "has DSSE payloadType \"text/plain\", not \"application/vnd.in-toto+json\""
    );
    v["dsseEnvelope"]["extra"] = json!(1);
    assert!(
        verify_err(&serde_json::to_vec(&v).unwrap(), &[])
            .starts_with("is malformed: unknown field `extra`")
    );
    // A field name forging a log line is escaped and cut short.
    let envelope = v["dsseEnvelope"].as_object_mut().unwrap();
    envelope.remove("extra");
    envelope.insert(format!("x\n WARN forged{}", "y".repeat(500)), json!(1));
    let e = verify_err(&serde_json::to_vec(&v).unwrap(), &[]);
    assert!(
        !e.contains('\n') && e.contains("x\\n WARN") && e.len() < 300,
        "{e}"
    );
    let big = vec![b' '; MAX_BUNDLE + 1];
    assert_eq!(
        verify_err(&big, &[]),
        format!(
            "is {} bytes, more than the {MAX_BUNDLE} a bundle may have",
            MAX_BUNDLE + 1
        )
    );
}

/// A repository as Debian's registry holds it: tags, manifests by digest,
/// blobs; counts blob reads.
#[derive(Default)]
struct Repo {
    tags: HashMap<String, RawManifest>,
    manifests: HashMap<String, RawManifest>,
    blobs: HashMap<String, Vec<u8>>,
    /// Tags answered with this error instead.
    failing: HashMap<String, String>,
    /// The referrers API's answer; `None`: the registry has no such API.
    api: Option<RawManifest>,
    reads: Mutex<usize>,
}

impl Repo {
    fn blob(&mut self, bytes: &[u8]) -> Digest {
        let d = digest::of(bytes);
        self.blobs.insert(d.to_string(), bytes.to_vec());
        d
    }

    fn raw(media_type: &str, v: serde_json::Value) -> RawManifest {
        let bytes = serde_json::to_vec(&v).unwrap();
        RawManifest {
            media_type: media_type.into(),
            digest: digest::of(&bytes),
            bytes,
        }
    }

    /// cosign's classic `.sig` manifest with one layer per (payload, signature).
    fn classic(&mut self, sigs: &[(Vec<u8>, Vec<u8>)]) {
        let layers: Vec<_> = sigs
            .iter()
            .map(|(payload, sig)| {
                let d = self.blob(payload);
                json!({"mediaType": SIMPLE_SIGNING_MEDIA_TYPE, "size": payload.len(), "digest": d,
                       "annotations": {SIGNATURE_ANNOTATION: B64.encode(sig)}})
            })
            .collect();
        let config = self.blob(b"{}");
        let m = Repo::raw(
            media::OCI_MANIFEST,
            json!({"schemaVersion": 2, "mediaType": media::OCI_MANIFEST,
                   "config": {"mediaType": media::OCI_CONFIG, "size": 2, "digest": config},
                   "layers": layers}),
        );
        self.tags.insert(signature_tag(&image_digest()), m);
    }

    /// cosign v3's fallback index listing one bundle manifest per bundle.
    fn bundles(&mut self, bundles: &[Vec<u8>]) {
        let empty = self.blob(b"{}");
        let mut entries = Vec::new();
        for b in bundles {
            let d = self.blob(b);
            let m = Repo::raw(
                media::OCI_MANIFEST,
                json!({"schemaVersion": 2, "mediaType": media::OCI_MANIFEST,
                       "artifactType": BUNDLE_MEDIA_TYPE,
                       "config": {"mediaType": "application/vnd.oci.empty.v1+json", "size": 2, "digest": empty},
                       "layers": [{"mediaType": BUNDLE_MEDIA_TYPE, "size": b.len(), "digest": d}],
                       "subject": {"mediaType": media::OCI_MANIFEST, "size": 1000, "digest": image_digest()}}),
            );
            entries.push(json!({"mediaType": media::OCI_MANIFEST, "size": m.bytes.len(),
                                "digest": m.digest, "artifactType": "application/vnd.oci.empty.v1+json"}));
            self.manifests.insert(m.digest.to_string(), m);
        }
        let index = Repo::raw(
            media::OCI_INDEX,
            json!({"schemaVersion": 2, "mediaType": media::OCI_INDEX, "manifests": entries}),
        );
        self.tags.insert(referrers_tag(&image_digest()), index);
    }

    /// The fallback index, served by the referrers API instead (as cosign
    /// attaches bundles on a registry that has it), or by both.
    fn referrers_api(&mut self, keep_tag: bool) {
        let tag = referrers_tag(&image_digest());
        let index = if keep_tag {
            self.tags.get(&tag).cloned()
        } else {
            self.tags.remove(&tag)
        };
        self.api = index;
    }
}

impl ImageSource for Repo {
    fn root(&self) -> Result<RawManifest, Error> {
        unreachable!("signatures are found by tag")
    }

    fn manifest(&self, desc: &Descriptor) -> Result<RawManifest, Error> {
        self.manifests
            .get(&desc.digest().to_string())
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("manifest {}", desc.digest())))
    }

    fn blob(&self, desc: &Descriptor) -> Result<Box<dyn Read + Send>, Error> {
        *self.reads.lock().unwrap() += 1;
        let b = self
            .blobs
            .get(&desc.digest().to_string())
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("blob {}", desc.digest())))?;
        Ok(Box::new(std::io::Cursor::new(b)))
    }

    fn blob_range(&self, _: &Descriptor, _: u64, _: u64) -> Result<Vec<u8>, Error> {
        unreachable!("signature blobs are read whole")
    }

    fn referrers(&self, _: &Digest) -> Result<Option<RawManifest>, Error> {
        Ok(self.api.clone())
    }

    fn tagged(&self, tag: &str) -> Result<RawManifest, Error> {
        if let Some(e) = self.failing.get(tag) {
            return Err(Error::Registry(e.clone()));
        }
        self.tags
            .get(tag)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("tag {tag}")))
    }
}

const IMAGE: &str = "127.0.0.1:5000/team/app:v1";

fn policy(requirements: serde_json::Value) -> Policy {
    let p = json!({"default": [{"type": "reject"}],
                   "transports": {"docker": {"127.0.0.1:5000/team": requirements}}});
    Policy::parse(&serde_json::to_vec(&p).unwrap(), "test").unwrap()
}

fn signed_by(k: &Key, identity: &str) -> Policy {
    policy(
        json!([{"type": "sigstoreSigned", "keyData": B64.encode(k.pem()),
                   "signedIdentity": {"type": identity}}]),
    )
}

fn verdict(p: &Policy, repo: &Repo) -> Result<Verdict, Rejected> {
    evaluate(
        p,
        &RegistryRef::parse(IMAGE).unwrap(),
        &image_digest(),
        repo,
    )
}

fn refusal(p: &Policy, repo: &Repo) -> String {
    let e = verdict(p, repo).unwrap_err().to_string();
    let prefix = format!(
        "signature verification failed for {IMAGE}@{}: ",
        image_digest()
    );
    e.strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("{e}"))
        .to_string()
}

fn classic_payload(d: &Digest) -> Vec<u8> {
    format!(
        r#"{{"critical":{{"identity":{{"docker-reference":"127.0.0.1:5000/team/app"}},"image":{{"docker-manifest-digest":"{d}"}},"type":"cosign container image signature"}},"optional":null}}"#
    )
    .into_bytes()
}

#[test]
fn each_format_satisfies_sigstore_signed_with_its_key_only() {
    let (k, other) = (Key::new(), Key::new());
    let mut bundled = Repo::default();
    bundled.bundles(&[k.bundle(&image_digest())]);
    let mut classic = Repo::default();
    let payload = classic_payload(&image_digest());
    classic.classic(&[(payload.clone(), k.sign(&payload))]);
    for repo in [&bundled, &classic] {
        assert_eq!(
            verdict(&signed_by(&k, "matchRepository"), repo).unwrap(),
            Verdict {
                accepted: Accepted::Signed { keys: vec![0] }
            }
        );
    }
    assert!(
        refusal(&signed_by(&other, "matchRepository"), &bundled)
            .starts_with("bundle manifest sha256:")
            && refusal(&signed_by(&other, "matchRepository"), &bundled)
                .ends_with(": bundle is not signed by the trusted key")
    );
    assert!(
        refusal(&signed_by(&other, "matchRepository"), &classic)
            .ends_with(": not signed by the trusted key")
    );
}

#[test]
fn a_bundle_claims_its_repository_name_only() {
    let k = Key::new();
    let mut repo = Repo::default();
    repo.bundles(&[k.bundle(&image_digest())]);
    // As cosign's classic payload, which names the repository only.
    let e = refusal(&signed_by(&k, "matchRepoDigestOrExact"), &repo);
    assert!(
        e.ends_with(
            "claims identity \"127.0.0.1:5000/team/app\", which the policy's signedIdentity does not accept"
        ),
        "{e}"
    );
    let exact_repo = policy(
        json!([{"type": "sigstoreSigned", "keyData": B64.encode(k.pem()),
        "signedIdentity": {"type": "exactRepository", "dockerRepository": "127.0.0.1:5000/team/app"}}]),
    );
    assert!(verdict(&exact_repo, &repo).is_ok());
}

#[test]
fn unsigned_rejected_and_accept_anything_images() {
    let k = Key::new();
    let empty = Repo::default();
    assert_eq!(
        refusal(&signed_by(&k, "matchRepository"), &empty),
        "no signatures found (the image is unsigned)"
    );
    let mut signed = Repo::default();
    signed.bundles(&[k.bundle(&image_digest())]);
    // The default scope rejects: nothing is fetched.
    let other_image = RegistryRef::parse("127.0.0.1:5000/elsewhere/app:v1").unwrap();
    let e = evaluate(
        &signed_by(&k, "matchRepository"),
        &other_image,
        &image_digest(),
        &signed,
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "signature verification failed for 127.0.0.1:5000/elsewhere/app:v1@{}: \
             rejected by policy scope default",
            image_digest()
        )
    );
    assert_eq!(
        refusal(
            &policy(json!([{"type": "insecureAcceptAnything"}, {"type": "reject"}])),
            &signed
        ),
        "rejected by policy scope \"127.0.0.1:5000/team\""
    );
    assert_eq!(*signed.reads.lock().unwrap(), 0);
    assert_eq!(
        verdict(&policy(json!([{"type": "insecureAcceptAnything"}])), &empty).unwrap(),
        Verdict {
            accepted: Accepted::Unverified
        }
    );
}

#[test]
fn another_digest_tampered_malformed_and_registry_errors_are_distinct() {
    let k = Key::new();
    let p = signed_by(&k, "matchRepository");
    let other = digest::of(b"another manifest");

    let mut repo = Repo::default();
    repo.bundles(&[k.bundle(&other)]);
    assert!(refusal(&p, &repo).ends_with(&format!(": bundle signs another manifest, {other}")));

    let mut repo = Repo::default();
    let payload = classic_payload(&other);
    repo.classic(&[(payload.clone(), k.sign(&payload))]);
    assert!(refusal(&p, &repo).ends_with(&format!(" signs another manifest, {other}")));

    // The registry serves other bytes for the bundle blob.
    let mut repo = Repo::default();
    let bundle = k.bundle(&image_digest());
    repo.bundles(std::slice::from_ref(&bundle));
    let d = digest::of(&bundle).to_string();
    let mut forged = bundle.clone();
    forged[0] = b' ';
    repo.blobs.insert(d.clone(), forged.clone());
    assert_eq!(
        refusal(&p, &repo),
        format!(
            "bundle {d}: the registry sent {} bytes with digest {}, not the blob its descriptor names (tampered)",
            forged.len(),
            digest::of(&forged)
        )
    );

    let mut repo = Repo::default();
    repo.tags.insert(
        signature_tag(&image_digest()),
        Repo::raw(media::OCI_MANIFEST, json!({"garbage": true})),
    );
    let e = refusal(&p, &repo);
    assert!(
        e.starts_with(&format!(
            "signature manifest {}: not an image manifest: ",
            signature_tag(&image_digest())
        )),
        "{e}"
    );

    let mut repo = Repo::default();
    repo.failing.insert(
        referrers_tag(&image_digest()),
        "registry 127.0.0.1:5000: HTTP 500".into(),
    );
    assert_eq!(refusal(&p, &repo), "registry 127.0.0.1:5000: HTTP 500");
    // Only a refusal the registry's failure caused may change on a retry.
    assert!(verdict(&p, &repo).unwrap_err().registry_failed);
    let mut tampered = Repo::default();
    tampered.classic(&[(payload.clone(), k.sign(&payload))]);
    assert!(!verdict(&p, &tampered).unwrap_err().registry_failed);

    // One good signature among bad ones is enough.
    repo.bundles(&[b"garbage".to_vec(), k.bundle(&image_digest())]);
    repo.failing.clear();
    assert!(verdict(&p, &repo).is_ok());
}

/// Bundles attached through the OCI 1.1 referrers API count as those under
/// the fallback tag; one listed in both places is read once; a referrers
/// answer that is not an index is refused with where it came from.
#[test]
fn bundles_listed_by_the_referrers_api_are_found_once() {
    let k = Key::new();
    let p = signed_by(&k, "matchRepository");
    let mut repo = Repo::default();
    repo.bundles(&[k.bundle(&image_digest())]);
    repo.referrers_api(false);
    assert!(verdict(&p, &repo).is_ok());

    // Other referrers (SBOMs) the API names are not counted.
    let mut api: serde_json::Value =
        serde_json::from_slice(&repo.api.as_ref().unwrap().bytes).unwrap();
    for i in 0..MAX_REFERRERS + 5 {
        let d = digest::of(format!("sbom {i}").as_bytes());
        api["manifests"].as_array_mut().unwrap().push(json!({
            "mediaType": media::OCI_MANIFEST, "size": 100, "digest": d,
            "artifactType": "application/spdx+json"}));
    }
    repo.api = Some(Repo::raw(media::OCI_INDEX, api));
    assert!(verdict(&p, &repo).is_ok());

    let mut repo = Repo::default();
    repo.bundles(&[Key::new().bundle(&image_digest())]);
    repo.referrers_api(true);
    let e = refusal(&p, &repo);
    assert!(
        e.ends_with("bundle is not signed by the trusted key"),
        "{e}"
    );
    assert_eq!(*repo.reads.lock().unwrap(), 1, "the bundle read twice");

    let repo = Repo {
        api: Some(Repo::raw(media::OCI_MANIFEST, json!({"schemaVersion": 2}))),
        ..Default::default()
    };
    assert_eq!(
        refusal(&p, &repo),
        format!(
            "referrers of {}: a \"{}\", not an image index",
            image_digest(),
            media::OCI_MANIFEST
        )
    );
}

/// A classic signature manifest listing more signatures than are read is
/// refused before any of them is fetched.
#[test]
fn too_many_classic_signatures_are_refused_unread() {
    let k = Key::new();
    let p = signed_by(&k, "matchRepository");
    let payload = classic_payload(&image_digest());
    let sig = k.sign(&payload);
    let mut repo = Repo::default();
    repo.classic(&vec![(payload, sig); MAX_CLASSIC_SIGNATURES + 1]);
    assert_eq!(
        refusal(&p, &repo),
        format!(
            "signature manifest {}: {} signatures, more than the {MAX_CLASSIC_SIGNATURES} read",
            signature_tag(&image_digest()),
            MAX_CLASSIC_SIGNATURES + 1
        )
    );
    assert_eq!(*repo.reads.lock().unwrap(), 0);
}

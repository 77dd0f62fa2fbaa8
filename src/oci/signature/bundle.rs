//! cosign v3's Sigstore bundles (`application/vnd.dev.sigstore.bundle.v0.3+json`),
//! key-based form only: a DSSE envelope of an in-toto Statement v1 naming the
//! image's manifest digest, signed over DSSE's pre-authentication encoding
//! by a key the verifier already has (the bundle carries only its hint).
//!
//! The statement is parsed only after its signature verified. A bundle
//! names no repository: the caller decides which identity it stands for.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::Deserialize;
use serde::de::IgnoredAny;
use std::collections::BTreeMap;

use crate::oci::digest::Digest;
use crate::oci::policy::key::{PublicKey, clip};

/// The media type of a bundle (its manifest's `artifactType`, its layer's type).
pub const BUNDLE_MEDIA_TYPE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
/// The DSSE payload type of an in-toto statement.
pub const IN_TOTO_PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";
/// The statement type cosign writes.
pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
/// The predicate type of `cosign sign`: what makes a statement a signature
/// and not an attestation (`cosign attest` signs the same digest).
pub const SIGN_PREDICATE_TYPE: &str = "https://sigstore.dev/cosign/sign/v1";
/// Bundles larger than this are refused before parsing (a key-based one is
/// under 1 KiB; one with a certificate chain and log entries a few KiB).
pub const MAX_BUNDLE: usize = 128 << 10;

/// Why a bundle is not accepted; one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    #[error("is {0} bytes, more than the {MAX_BUNDLE} a bundle may have")]
    TooLarge(usize),
    #[error("is malformed: {0}")]
    Malformed(String),
    #[error("is a keyless (certificate) bundle; keyless bundles are not supported yet")]
    Keyless,
    #[error("has DSSE payloadType {0:?}, not {IN_TOTO_PAYLOAD_TYPE:?}")]
    PayloadType(String),
    #[error("is not signed by {}", super::classic::TrustedKeys(*.0))]
    UntrustedKey(usize),
    #[error("has a signed statement that is malformed: {0}")]
    Statement(String),
    #[error("is an attestation of predicateType {0:?}, not a signature ({SIGN_PREDICATE_TYPE})")]
    NotASignature(String),
    /// The manifest being verified is named by the caller's message.
    #[error("signs another manifest, sha256:{0}")]
    OtherDigest(String),
}

/// A parsed key-based bundle, not yet checked against any key.
#[derive(Debug, Clone)]
pub struct Bundle {
    payload: Vec<u8>,
    signatures: Vec<Vec<u8>>,
}

/// A bundle that a trusted key signed for the manifest being verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedBundle {
    key_index: usize,
}

impl VerifiedBundle {
    /// Which of the keys given to [`Bundle::verify`] signed it.
    pub fn key_index(&self) -> usize {
        self.key_index
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawBundle {
    media_type: String,
    verification_material: Material,
    dsse_envelope: Option<Envelope>,
    message_signature: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Material {
    public_key: Option<Hint>,
    certificate: Option<IgnoredAny>,
    x509_certificate_chain: Option<IgnoredAny>,
    // Log and timestamp evidence only add trust; a key-based check needs neither.
    tlog_entries: Option<IgnoredAny>,
    timestamp_verification_data: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Hint {
    #[allow(dead_code)]
    hint: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Envelope {
    payload: String,
    payload_type: String,
    signatures: Vec<EnvelopeSignature>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnvelopeSignature {
    sig: String,
    #[allow(dead_code)]
    keyid: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Statement {
    #[serde(rename = "_type")]
    kind: String,
    subject: Vec<Subject>,
    predicate_type: String,
    #[allow(dead_code)]
    predicate: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Subject {
    #[allow(dead_code)]
    name: Option<String>,
    digest: BTreeMap<String, String>,
    #[allow(dead_code)]
    annotations: Option<IgnoredAny>,
}

/// A DSSE envelope holds few signatures; more is not a real bundle.
const MAX_ENVELOPE_SIGNATURES: usize = 16;

impl Bundle {
    /// Parses bundle bytes; refuses oversized ones before looking at them,
    /// and keyless or message-signature bundles.
    pub fn parse(bytes: &[u8]) -> Result<Self, BundleError> {
        if bytes.len() > MAX_BUNDLE {
            return Err(BundleError::TooLarge(bytes.len()));
        }
        let malformed = |s: String| BundleError::Malformed(s);
        let raw: RawBundle = serde_json::from_slice(bytes)
            .map_err(|e| malformed(crate::oci::policy::key::untrusted(e)))?;
        if raw.media_type != BUNDLE_MEDIA_TYPE {
            return Err(malformed(format!(
                "mediaType {:?}, not {BUNDLE_MEDIA_TYPE:?}",
                clip(&raw.media_type)
            )));
        }
        let m = raw.verification_material;
        if m.certificate.is_some() || m.x509_certificate_chain.is_some() {
            return Err(BundleError::Keyless);
        }
        if m.public_key.is_none() {
            return Err(malformed("verificationMaterial has no publicKey".into()));
        }
        let _ = (m.tlog_entries, m.timestamp_verification_data);
        let env = match (raw.dsse_envelope, raw.message_signature) {
            (Some(env), None) => env,
            (None, Some(_)) => {
                return Err(malformed(
                    "a messageSignature bundle, not a DSSE envelope".into(),
                ));
            }
            _ => {
                return Err(malformed(
                    "exactly one of dsseEnvelope and messageSignature must be given".into(),
                ));
            }
        };
        if env.payload_type != IN_TOTO_PAYLOAD_TYPE {
            return Err(BundleError::PayloadType(clip(&env.payload_type).into()));
        }
        if env.signatures.is_empty() || env.signatures.len() > MAX_ENVELOPE_SIGNATURES {
            return Err(malformed(format!(
                "the envelope has {} signatures (1 to {MAX_ENVELOPE_SIGNATURES} expected)",
                env.signatures.len()
            )));
        }
        let payload = B64
            .decode(&env.payload)
            .map_err(|_| malformed("the envelope's payload is not valid base64".into()))?;
        let signatures = env
            .signatures
            .iter()
            .map(|s| B64.decode(&s.sig))
            .collect::<Result<_, _>>()
            .map_err(|_| malformed("an envelope signature is not valid base64".into()))?;
        Ok(Bundle {
            payload,
            signatures,
        })
    }

    /// Accepts the bundle if one of `keys` signed the envelope, its statement
    /// is a `cosign sign` statement, and one of its subjects is `manifest_digest`.
    pub fn verify(
        &self,
        keys: &[PublicKey],
        manifest_digest: &Digest,
    ) -> Result<VerifiedBundle, BundleError> {
        let pae = pae(IN_TOTO_PAYLOAD_TYPE, &self.payload);
        let key_index = keys
            .iter()
            .position(|k| self.signatures.iter().any(|s| k.verify(&pae, s).is_ok()))
            .ok_or(BundleError::UntrustedKey(keys.len()))?;
        let st: Statement = serde_json::from_slice(&self.payload)
            .map_err(|e| BundleError::Statement(crate::oci::policy::key::untrusted(e)))?;
        if st.kind != STATEMENT_TYPE {
            return Err(BundleError::Statement(format!(
                "_type {:?}, not {STATEMENT_TYPE:?}",
                clip(&st.kind)
            )));
        }
        if st.predicate_type != SIGN_PREDICATE_TYPE {
            return Err(BundleError::NotASignature(clip(&st.predicate_type).into()));
        }
        let want = manifest_digest.digest();
        let mut signed = None;
        for s in &st.subject {
            match s.digest.get("sha256") {
                Some(h) if h == want => return Ok(VerifiedBundle { key_index }),
                Some(h) => {
                    signed.get_or_insert(h);
                }
                None => {}
            }
        }
        match signed {
            Some(h) => Err(BundleError::OtherDigest(clip(h).into())),
            None => Err(BundleError::Statement(
                "no subject has a sha256 digest".into(),
            )),
        }
    }
}

/// DSSE's pre-authentication encoding: what a DSSE signature covers.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "DSSEv1 {} {payload_type} {} ",
        payload_type.len(),
        payload.len()
    )
    .into_bytes();
    out.extend_from_slice(payload);
    out
}

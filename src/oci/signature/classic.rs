//! cosign's classic signature format: a manifest under the tag
//! `sha256-<manifest hex>.sig` whose layers are simple-signing payloads, each
//! with its base64 signature in the layer's `dev.cosignproject.cosign/signature`
//! annotation (what `cosign sign --key` wrote before v3 and what
//! `skopeo copy --sign-by-sigstore-private-key` writes).
//!
//! Untrusted bytes go through three gates, in order, and the types follow
//! them: a [`SignatureLayer`] is what the descriptor claims; a
//! [`ClassicSignature`] has payload bytes that match the descriptor's digest;
//! a [`VerifiedPayload`] was signed by a trusted key and signs the manifest
//! being verified. The payload JSON is parsed only after its signature
//! verified, as containers/image does.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use super::payload::{MAX_PAYLOAD, Payload, PayloadError};
use crate::oci::digest::{self, Digest};
use crate::oci::policy::key::PublicKey;
use crate::oci::{Descriptor, ImageManifest};

/// The media type of a classic signature's layers.
pub const SIMPLE_SIGNING_MEDIA_TYPE: &str = "application/vnd.dev.cosign.simplesigning.v1+json";

/// The layer annotation that holds the base64 signature of the layer's payload.
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";

/// Longer annotations are refused before decoding (an RSA-8192 signature is
/// 1368 base64 characters).
const MAX_SIGNATURE_B64: usize = 4 << 10;

/// The tag cosign stores the classic signatures of `manifest_digest` under.
pub fn signature_tag(manifest_digest: &Digest) -> String {
    format!(
        "{}-{}.sig",
        manifest_digest.algorithm().as_ref(),
        manifest_digest.digest()
    )
}

/// Why an image's classic signatures do not verify; one line, naming the
/// signature layer at fault.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SignatureError {
    #[error("no signature (the signature manifest has no {SIMPLE_SIGNING_MEDIA_TYPE} layer)")]
    NoSignatures,
    #[error("signature layer {layer} has no {SIGNATURE_ANNOTATION} annotation")]
    MissingAnnotation { layer: Digest },
    #[error("signature layer {layer}: annotation {SIGNATURE_ANNOTATION} is not valid base64")]
    BadBase64 { layer: Digest },
    #[error("signature layer {layer}: {reason}")]
    BadLayer { layer: Digest, reason: String },
    #[error(
        "signature layer {layer}: the payload fetched has digest {actual}, not the layer's (tampered payload)"
    )]
    TamperedPayload { layer: Digest, actual: Digest },
    #[error("signature layer {layer}: not signed by {}", TrustedKeys(*keys))]
    UntrustedKey { layer: Digest, keys: usize },
    #[error("signature layer {layer}: payload {source}")]
    Payload { layer: Digest, source: PayloadError },
    /// The manifest being verified is named by the caller's message.
    #[error("signature layer {layer} signs another manifest, {signed}")]
    OtherDigest { layer: Digest, signed: Digest },
    #[error("none of the {count} signatures is accepted; the first: {first}")]
    NoneAccepted {
        count: usize,
        first: Box<SignatureError>,
    },
}

pub(super) struct TrustedKeys(pub(super) usize);

impl fmt::Display for TrustedKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            0 => f.write_str("any trusted key (none given)"),
            1 => f.write_str("the trusted key"),
            n => write!(f, "any of the {n} trusted keys"),
        }
    }
}

/// One layer of a signature manifest, as its descriptor describes it: which
/// blob to fetch (at most [`SignatureLayer::size`] bytes) and its signature.
#[derive(Debug, Clone)]
pub struct SignatureLayer {
    digest: Digest,
    size: u64,
    signature: Vec<u8>,
}

impl SignatureLayer {
    /// The signature layers of a signature manifest, in order. Layers of
    /// other media types are skipped, as containers/image skips them; a
    /// malformed signature layer is an `Err` entry, so the others still count.
    pub fn from_manifest(
        manifest: &ImageManifest,
    ) -> Result<Vec<Result<SignatureLayer, SignatureError>>, SignatureError> {
        let layers: Vec<_> = manifest
            .layers()
            .iter()
            .filter(|d| d.media_type().to_string() == SIMPLE_SIGNING_MEDIA_TYPE)
            .map(SignatureLayer::from_descriptor)
            .collect();
        if layers.is_empty() {
            return Err(SignatureError::NoSignatures);
        }
        Ok(layers)
    }

    /// Reads one simple-signing layer descriptor; refuses what cannot be a
    /// signature before anything is fetched.
    pub fn from_descriptor(d: &Descriptor) -> Result<Self, SignatureError> {
        let layer = d.digest().clone();
        let bad = |reason: String| SignatureError::BadLayer {
            layer: layer.clone(),
            reason,
        };
        if digest::parse(layer.as_ref()).is_err() {
            return Err(bad("the layer digest is not sha256".into()));
        }
        if d.size() > MAX_PAYLOAD as u64 {
            return Err(bad(format!(
                "the payload is {} bytes, more than the {MAX_PAYLOAD} a signature payload may have",
                d.size()
            )));
        }
        let b64 = d
            .annotations()
            .as_ref()
            .and_then(|a| a.get(SIGNATURE_ANNOTATION))
            .ok_or_else(|| SignatureError::MissingAnnotation {
                layer: layer.clone(),
            })?;
        if b64.len() > MAX_SIGNATURE_B64 {
            return Err(bad(format!(
                "annotation {SIGNATURE_ANNOTATION} is {} bytes, more than the {MAX_SIGNATURE_B64} a signature may have",
                b64.len()
            )));
        }
        let signature = B64.decode(b64).map_err(|_| SignatureError::BadBase64 {
            layer: layer.clone(),
        })?;
        Ok(SignatureLayer {
            digest: layer,
            size: d.size(),
            signature,
        })
    }

    /// The payload blob's digest.
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// The payload blob's size as the descriptor gives it (at most [`MAX_PAYLOAD`]).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Pairs the signature with the fetched payload, which must be the blob
    /// the descriptor names.
    pub fn with_payload(self, payload: Vec<u8>) -> Result<ClassicSignature, SignatureError> {
        if payload.len() > MAX_PAYLOAD {
            return Err(SignatureError::Payload {
                layer: self.digest,
                source: PayloadError::TooLarge(payload.len()),
            });
        }
        let actual = digest::of(&payload);
        if actual != self.digest {
            return Err(SignatureError::TamperedPayload {
                layer: self.digest,
                actual,
            });
        }
        Ok(ClassicSignature {
            layer: self,
            payload,
        })
    }
}

/// A signature and the payload bytes its layer's digest anchors; not yet
/// checked against any key.
#[derive(Debug, Clone)]
pub struct ClassicSignature {
    layer: SignatureLayer,
    payload: Vec<u8>,
}

impl ClassicSignature {
    /// The payload bytes, as signed.
    pub fn payload_bytes(&self) -> &[u8] {
        &self.payload
    }

    /// The signature bytes, as the annotation carries them (base64-decoded).
    pub fn signature_bytes(&self) -> &[u8] {
        &self.layer.signature
    }

    /// The signature layer's digest.
    pub fn layer(&self) -> &Digest {
        &self.layer.digest
    }

    /// Accepts the signature if one of `keys` signed the payload, the payload
    /// is a cosign simple-signing payload, and it signs `manifest_digest`.
    pub fn verify(
        &self,
        keys: &[PublicKey],
        manifest_digest: &Digest,
    ) -> Result<VerifiedPayload, SignatureError> {
        let layer = || self.layer.digest.clone();
        let key_index = keys
            .iter()
            .position(|k| k.verify(&self.payload, &self.layer.signature).is_ok())
            .ok_or_else(|| SignatureError::UntrustedKey {
                layer: layer(),
                keys: keys.len(),
            })?;
        let payload = Payload::parse(&self.payload).map_err(|source| SignatureError::Payload {
            layer: layer(),
            source,
        })?;
        payload
            .check(manifest_digest)
            .map_err(|e| SignatureError::OtherDigest {
                layer: layer(),
                signed: e.signed,
            })?;
        Ok(VerifiedPayload {
            payload,
            layer: layer(),
            key_index,
        })
    }
}

/// Accepts an image if at least one of its signatures verifies (as
/// containers/image's `sigstoreSigned` does); `candidates` are the layers of
/// its signature manifest, each paired with its payload or the error that
/// stopped it. Fails with the only error, or the first of several.
pub fn verify_any(
    candidates: impl IntoIterator<Item = Result<ClassicSignature, SignatureError>>,
    keys: &[PublicKey],
    manifest_digest: &Digest,
) -> Result<VerifiedPayload, SignatureError> {
    let mut first = None;
    let mut count = 0;
    for c in candidates {
        count += 1;
        match c.and_then(|s| s.verify(keys, manifest_digest)) {
            Ok(v) => return Ok(v),
            Err(e) => {
                first.get_or_insert(e);
            }
        }
    }
    match (first, count) {
        (None, _) => Err(SignatureError::NoSignatures),
        (Some(e), 1) => Err(e),
        (Some(e), count) => Err(SignatureError::NoneAccepted {
            count,
            first: Box::new(e),
        }),
    }
}

/// A payload that a trusted key signed for the manifest being verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedPayload {
    payload: Payload,
    layer: Digest,
    key_index: usize,
}

impl VerifiedPayload {
    /// The signed `docker-reference`, for the policy's `signedIdentity` check.
    pub fn docker_reference(&self) -> &str {
        self.payload.docker_reference()
    }

    /// The whole payload (creator, timestamp).
    pub fn payload(&self) -> &Payload {
        &self.payload
    }

    /// The signature layer whose signature verified.
    pub fn layer(&self) -> &Digest {
        &self.layer
    }

    /// Which of the keys given to `verify` signed it.
    pub fn key_index(&self) -> usize {
        self.key_index
    }
}

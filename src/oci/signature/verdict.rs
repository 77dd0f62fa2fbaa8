//! The policy's verdict on an image: every requirement of the most specific
//! scope must hold, as in containers/image. `reject` refuses before anything
//! is fetched; `sigstoreSigned` needs one signature, by one of its keys, for
//! the image's manifest digest, whose identity its `signedIdentity` accepts.
//!
//! A Sigstore bundle names a manifest digest but no repository. lazycrypt
//! reads a bundle as claiming the repository it was found in, name only —
//! what cosign's classic payload claims — so a bundle meets the identity
//! rules a cosign classic signature meets (`matchRepository`,
//! `exactRepository` of that repository) and not those that need a signed
//! tag or another name (`matchExact`, `matchRepoDigestOrExact`,
//! `exactReference`, `remapIdentity`).

use std::borrow::Cow;

use sha2::{Digest as _, Sha256};

use super::bundle::BundleError;
use super::classic::SignatureError;
use super::fetch::{FetchError, Found, fetch};

use crate::oci::digest::Digest;
use crate::oci::policy::{Policy, Requirement, Scope, SigstoreSigned};
use crate::oci::reference::RegistryRef;
use crate::oci::transport::ImageSource;

/// Which requirement accepted the image, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accepted {
    /// `insecureAcceptAnything` was the only kind of requirement.
    Unverified,
    /// Signatures satisfied every `sigstoreSigned` requirement; for each,
    /// which key (its index in the requirement's keys) signed.
    Signed { keys: Vec<usize> },
}

/// The policy accepted the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub accepted: Accepted,
}

/// The policy refused the image; one line.
#[derive(Debug, thiserror::Error)]
#[error("signature verification failed for {image}@{digest}: {reason}")]
pub struct Rejected {
    pub image: String,
    pub digest: Digest,
    pub reason: Reason,
    /// The registry failed to answer for one of the signatures (an error,
    /// not a missing tag): the verdict may differ once it answers, so it is
    /// not worth keeping.
    pub registry_failed: bool,
}

/// Why an image was refused.
#[derive(Debug, thiserror::Error)]
pub enum Reason {
    #[error("rejected by policy scope {0}")]
    PolicyReject(String),
    #[error("no signatures found (the image is unsigned)")]
    Unsigned,
    #[error("{0}")]
    Refused(Box<Refusal>),
    #[error("none of the {count} signatures is accepted; the first: {first}")]
    NoneAccepted { count: usize, first: Box<Refusal> },
}

/// Why one signature does not satisfy a requirement.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("{0}")]
    Fetch(FetchError),
    #[error("{0}")]
    Classic(SignatureError),
    #[error("bundle manifest {manifest}: bundle {source}")]
    Bundle {
        manifest: Digest,
        source: BundleError,
    },
    #[error("{what} claims identity {signed:?}, which the policy's signedIdentity does not accept")]
    Identity { what: String, signed: String },
}

impl Refusal {
    /// A refusal of a signature that verified but could not be used is
    /// worth more than an unreadable or another key's one when several fail.
    fn rank(&self) -> u8 {
        match self {
            Refusal::Identity { .. } => 3,
            Refusal::Classic(SignatureError::OtherDigest { .. })
            | Refusal::Bundle {
                source: BundleError::OtherDigest(_),
                ..
            } => 2,
            Refusal::Classic(_) | Refusal::Bundle { .. } => 1,
            Refusal::Fetch(_) => 0,
        }
    }
}

/// The policy's verdict on the image `image` names, whose manifest digest is
/// `manifest_digest`; `source` reads `image`'s repository. Signatures are
/// fetched only if a requirement needs them.
pub fn evaluate(
    policy: &Policy,
    image: &RegistryRef,
    manifest_digest: &Digest,
    source: &dyn ImageSource,
) -> Result<Verdict, Rejected> {
    judge(policy, image, manifest_digest, || {
        Cow::Owned(fetch(source, manifest_digest))
    })
}

/// [`evaluate`] over signatures already fetched (by [`fetch`]).
pub fn evaluate_found(
    policy: &Policy,
    image: &RegistryRef,
    manifest_digest: &Digest,
    found: &[Result<Found, FetchError>],
) -> Result<Verdict, Rejected> {
    judge(policy, image, manifest_digest, || Cow::Borrowed(found))
}

fn judge<'a>(
    policy: &Policy,
    image: &RegistryRef,
    manifest_digest: &Digest,
    found: impl FnOnce() -> Cow<'a, [Result<Found, FetchError>]>,
) -> Result<Verdict, Rejected> {
    let reject = |reason| Rejected {
        image: display_image(image),
        digest: manifest_digest.clone(),
        reason,
        registry_failed: false,
    };
    let (scope, requirements) = policy.lookup(image);
    if requirements.contains(&Requirement::Reject) {
        return Err(reject(Reason::PolicyReject(match scope {
            Scope::Docker(s) => format!("{s:?}"),
            Scope::Default => "default".into(),
        })));
    }
    let signed = sigstore_signed(requirements);
    if signed.is_empty() {
        return Ok(Verdict {
            accepted: Accepted::Unverified,
        });
    }
    let found = found();
    if found.is_empty() {
        return Err(reject(Reason::Unsigned));
    }
    let registry_failed = found
        .iter()
        .any(|f| matches!(f, Err(FetchError::Registry(_))));
    let mut keys = Vec::with_capacity(signed.len());
    for req in signed {
        keys.push(
            satisfy(req, image, manifest_digest, &found).map_err(|reason| Rejected {
                registry_failed,
                ..reject(reason)
            })?,
        );
    }
    Ok(Verdict {
        accepted: Accepted::Signed { keys },
    })
}

fn sigstore_signed(requirements: &[Requirement]) -> Vec<&SigstoreSigned> {
    requirements
        .iter()
        .filter_map(|r| match r {
            Requirement::SigstoreSigned(s) => Some(s),
            _ => None,
        })
        .collect()
}

/// One signature found, as the policy's keys see it (`lazycrypt verify`).
#[derive(Debug)]
pub struct Inspected {
    /// Which signature: `classic signature layer sha256:…`, `bundle
    /// manifest sha256:…`, or `unreadable signature`.
    pub what: String,
    pub outcome: Outcome,
}

/// What the policy's keys say of one signature.
#[derive(Debug)]
pub enum Outcome {
    /// A key of a `sigstoreSigned` requirement signed it, for the manifest
    /// being verified, under an identity the requirement accepts.
    SignedBy {
        /// The requirement's index among the scope's `sigstoreSigned` ones.
        requirement: usize,
        /// The key's index among that requirement's keys.
        key: usize,
        /// SHA-256 of the key's DER SubjectPublicKeyInfo, hex.
        fingerprint: String,
        /// The identity the signature claims.
        identity: String,
    },
    /// No requirement accepts it (the most telling reason).
    Refused(Refusal),
    /// The scope has no `sigstoreSigned` requirement to check it against.
    NotChecked,
}

/// Each signature in `found`, checked against the keys of the
/// `sigstoreSigned` requirements the policy has for `image`.
pub fn inspect(
    policy: &Policy,
    image: &RegistryRef,
    manifest_digest: &Digest,
    found: &[Result<Found, FetchError>],
) -> Vec<Inspected> {
    let (_, requirements) = policy.lookup(image);
    let signed = sigstore_signed(requirements);
    found
        .iter()
        .map(|f| {
            let what = match f {
                Ok(Found::Classic(sig)) => format!("classic signature layer {}", sig.layer()),
                Ok(Found::Bundle { manifest, .. }) => format!("bundle manifest {manifest}"),
                Err(_) => "unreadable signature".to_string(),
            };
            let mut best: Option<Refusal> = None;
            let mut outcome = None;
            for (requirement, req) in signed.iter().enumerate() {
                match check(req, image, manifest_digest, f) {
                    Ok((key, identity)) => {
                        let fingerprint = hex::encode(Sha256::digest(req.keys()[key].spki_der()));
                        outcome = Some(Outcome::SignedBy {
                            requirement,
                            key,
                            fingerprint,
                            identity,
                        });
                        break;
                    }
                    Err(r) => {
                        if best.as_ref().is_none_or(|b| r.rank() > b.rank()) {
                            best = Some(r);
                        }
                    }
                }
            }
            let outcome = outcome.unwrap_or(match best {
                Some(r) => Outcome::Refused(r),
                None => match f {
                    Err(e) => Outcome::Refused(Refusal::Fetch(e.clone())),
                    Ok(_) => Outcome::NotChecked,
                },
            });
            Inspected { what, outcome }
        })
        .collect()
}

/// Which key satisfied `req`, or why none did.
fn satisfy(
    req: &SigstoreSigned,
    image: &RegistryRef,
    manifest_digest: &Digest,
    found: &[Result<Found, FetchError>],
) -> Result<usize, Reason> {
    let mut best: Option<Refusal> = None;
    for f in found {
        match check(req, image, manifest_digest, f) {
            Ok((key, _)) => return Ok(key),
            Err(r) => {
                if best.as_ref().is_none_or(|b| r.rank() > b.rank()) {
                    best = Some(r);
                }
            }
        }
    }
    let first = Box::new(best.expect("found is not empty"));
    Err(if found.len() == 1 {
        Reason::Refused(first)
    } else {
        Reason::NoneAccepted {
            count: found.len(),
            first,
        }
    })
}

fn check(
    req: &SigstoreSigned,
    image: &RegistryRef,
    manifest_digest: &Digest,
    found: &Result<Found, FetchError>,
) -> Result<(usize, String), Refusal> {
    let keys = req.keys();
    let (key, what, signed) = match found {
        Err(e) => return Err(Refusal::Fetch(e.clone())),
        Ok(Found::Classic(sig)) => {
            let v = sig
                .verify(keys, manifest_digest)
                .map_err(Refusal::Classic)?;
            (
                v.key_index(),
                format!("signature layer {}", sig.layer()),
                v.docker_reference().to_string(),
            )
        }
        Ok(Found::Bundle { manifest, bundle }) => {
            let v = bundle
                .verify(keys, manifest_digest)
                .map_err(|source| Refusal::Bundle {
                    manifest: manifest.clone(),
                    source,
                })?;
            (
                v.key_index(),
                format!("bundle manifest {manifest}"),
                format!("{}/{}", image.host, image.repo),
            )
        }
    };
    if req.identity().matches(image, &signed) {
        Ok((key, signed))
    } else {
        // Only a trusted key's signature gets here, but its name is still
        // the signer's text.
        let signed = crate::oci::policy::key::clip(&signed).to_string();
        Err(Refusal::Identity { what, signed })
    }
}

fn display_image(image: &RegistryRef) -> String {
    if image.is_digest() {
        format!("{}/{}", image.host, image.repo)
    } else {
        format!("{}/{}:{}", image.host, image.repo, image.reference)
    }
}

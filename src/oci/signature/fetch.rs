//! Finds an image's signatures in its own repository, where cosign stores
//! them: the classic `sha256-<hex>.sig` manifest, and Sigstore bundle
//! manifests among the image's referrers (SBOMs, attestations, skipped by
//! their own `artifactType`), listed by the OCI 1.1 referrers API where the
//! registry has one and under the `sha256-<hex>` fallback tag where not.
//!
//! Every byte fetched is bounded before it is read and checked against the
//! digest its descriptor names before it is parsed. A signature that cannot
//! be read is an `Err` entry, so the others still count.

use std::io::Read as _;
use std::sync::Arc;

use super::bundle::{BUNDLE_MEDIA_TYPE, Bundle, BundleError, MAX_BUNDLE};
use super::classic::{
    ClassicSignature, SIMPLE_SIGNING_MEDIA_TYPE, SignatureError, SignatureLayer, signature_tag,
};
use crate::oci::digest::{self, Digest};
use crate::oci::transport::{ImageSource, RawManifest};
use crate::oci::{Descriptor, Error, ImageIndex, ImageManifest, media};

/// A fallback index listing more referrers than this is refused.
pub const MAX_REFERRERS: usize = 64;

/// OCI's empty descriptor type, cosign's artifact type for fallback entries.
const EMPTY_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";

/// A classic signature manifest with more signatures than this is refused
/// (each is a request and up to 64 KiB read before any is verified).
pub const MAX_CLASSIC_SIGNATURES: usize = 64;

pub use crate::oci::referrers::referrers_tag;

/// One signature found, not yet verified.
#[derive(Debug, Clone)]
pub enum Found {
    Classic(ClassicSignature),
    /// A bundle, and the digest of the manifest that carried it.
    Bundle {
        manifest: Digest,
        bundle: Bundle,
    },
}

/// Why a signature (or a place signatures are kept) could not be read; one line.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FetchError {
    #[error("{0}")]
    Classic(SignatureError),
    #[error("bundle manifest {manifest}: bundle {source}")]
    Bundle {
        manifest: Digest,
        source: BundleError,
    },
    #[error("{what}: the registry sent {actual}, not the blob its descriptor names (tampered)")]
    Tampered { what: String, actual: String },
    #[error("{what}: {reason}")]
    Malformed { what: String, reason: String },
    #[error("{0}")]
    Registry(Arc<Error>),
}

/// The signatures of `manifest_digest` in `source`'s repository, each
/// read and digest-checked or the error that stopped it. Empty if neither
/// tag exists.
pub fn fetch(source: &dyn ImageSource, manifest_digest: &Digest) -> Vec<Result<Found, FetchError>> {
    let mut found = Vec::new();
    classic(source, manifest_digest, &mut found);
    bundles(source, manifest_digest, &mut found);
    found
}

/// The manifest under `tag`; `None` if the registry has none.
fn tagged(source: &dyn ImageSource, tag: &str) -> Result<Option<RawManifest>, FetchError> {
    match source.tagged(tag) {
        Ok(m) => Ok(Some(m)),
        Err(Error::NotFound(_)) => Ok(None),
        Err(e) => Err(FetchError::Registry(Arc::new(e))),
    }
}

fn classic(
    source: &dyn ImageSource,
    manifest_digest: &Digest,
    found: &mut Vec<Result<Found, FetchError>>,
) {
    let tag = signature_tag(manifest_digest);
    let raw = match tagged(source, &tag) {
        Ok(Some(raw)) => raw,
        Ok(None) => return,
        Err(e) => return found.push(Err(e)),
    };
    let what = format!("signature manifest {tag}");
    let manifest = match parse_manifest(&raw, &what) {
        Ok(m) => m,
        Err(e) => return found.push(Err(e)),
    };
    let layers: Vec<&Descriptor> = manifest
        .layers()
        .iter()
        .filter(|d| d.media_type().to_string() == SIMPLE_SIGNING_MEDIA_TYPE)
        .collect();
    if layers.is_empty() {
        return found.push(Err(FetchError::Classic(SignatureError::NoSignatures)));
    }
    if layers.len() > MAX_CLASSIC_SIGNATURES {
        return found.push(Err(FetchError::Malformed {
            what,
            reason: format!(
                "{} signatures, more than the {MAX_CLASSIC_SIGNATURES} read",
                layers.len()
            ),
        }));
    }
    for d in layers {
        found.push(classic_layer(source, d).map(Found::Classic));
    }
}

fn classic_layer(source: &dyn ImageSource, d: &Descriptor) -> Result<ClassicSignature, FetchError> {
    let layer = SignatureLayer::from_descriptor(d).map_err(FetchError::Classic)?;
    let what = format!("signature layer {}", d.digest());
    let payload = read_bounded(source, d, layer.size(), &what)?;
    layer.with_payload(payload).map_err(FetchError::Classic)
}

/// The bundles among `manifest_digest`'s referrers: those the referrers
/// API lists, where the registry has one, and those cosign listed under
/// the fallback tag, each manifest read once.
fn bundles(
    source: &dyn ImageSource,
    manifest_digest: &Digest,
    found: &mut Vec<Result<Found, FetchError>>,
) {
    let mut entries: Vec<Descriptor> = Vec::new();
    let api = source
        .referrers(manifest_digest)
        .map_err(|e| FetchError::Registry(Arc::new(e)))
        .and_then(|raw| {
            raw.map(|raw| index_entries(&raw, &format!("referrers of {manifest_digest}")))
                .transpose()
        });
    let tag = referrers_tag(manifest_digest);
    let fallback = tagged(source, &tag).and_then(|raw| {
        raw.map(|raw| index_entries(&raw, &format!("referrers index {tag}")))
            .transpose()
    });
    // The referrers API tells each entry's artifact type (the bundle's, as
    // the spec has registries copy it; cosign's fallback index says the
    // empty type): SBOMs and attestations are not even counted.
    let api = api.map(|listed| {
        listed.map(|l| {
            l.into_iter()
                .filter(|e| {
                    e.artifact_type().as_ref().is_none_or(|t| {
                        let t = t.to_string();
                        t == BUNDLE_MEDIA_TYPE || t == EMPTY_MEDIA_TYPE
                    })
                })
                .collect::<Vec<_>>()
        })
    });
    for listed in [api, fallback] {
        match listed {
            Ok(Some(listed)) => {
                for e in listed {
                    if !entries.iter().any(|d| d.digest() == e.digest()) {
                        entries.push(e);
                    }
                }
            }
            Ok(None) => {}
            Err(e) => found.push(Err(e)),
        }
    }
    if entries.len() > MAX_REFERRERS {
        return found.push(Err(FetchError::Malformed {
            what: format!("referrers of {manifest_digest}"),
            reason: format!(
                "{} manifests, more than the {MAX_REFERRERS} read",
                entries.len()
            ),
        }));
    }
    for entry in &entries {
        match bundle_manifest(source, entry, manifest_digest) {
            Ok(Some(f)) => found.push(Ok(f)),
            Ok(None) => {}
            Err(e) => found.push(Err(e)),
        }
    }
}

/// The manifests an index of referrers (`what`) lists.
fn index_entries(raw: &RawManifest, what: &str) -> Result<Vec<Descriptor>, FetchError> {
    let malformed = |reason: String| FetchError::Malformed {
        what: what.to_string(),
        reason,
    };
    if !media::is_index(&raw.media_type) {
        return Err(malformed(format!(
            "a {:?}, not an image index",
            crate::oci::policy::key::clip(&raw.media_type)
        )));
    }
    // Bounded by the manifest size; the bundles among them are counted.
    let index: ImageIndex = serde_json::from_slice(&raw.bytes).map_err(|e| {
        malformed(format!(
            "not an image index: {}",
            crate::oci::policy::key::untrusted(e)
        ))
    })?;
    Ok(index.manifests().clone())
}

/// The bundle a referrers entry carries; `None` for other referrers.
fn bundle_manifest(
    source: &dyn ImageSource,
    entry: &Descriptor,
    manifest_digest: &Digest,
) -> Result<Option<Found>, FetchError> {
    let id = entry.digest().clone();
    let what = format!("bundle manifest {id}");
    let malformed = |reason: String| FetchError::Malformed {
        what: what.clone(),
        reason,
    };
    if digest::parse(id.as_ref()).is_err() {
        return Err(malformed("the digest is not sha256".into()));
    }
    if entry.size() > crate::oci::MAX_MANIFEST {
        return Err(malformed(format!("{} bytes is too large", entry.size())));
    }
    let raw = source
        .manifest(entry)
        .map_err(|e| FetchError::Registry(Arc::new(e)))?;
    // The registry checked the digest; the size must agree too.
    if raw.bytes.len() as u64 != entry.size() {
        return Err(malformed(format!(
            "{} bytes, not the {} the index names",
            raw.bytes.len(),
            entry.size()
        )));
    }
    let manifest = parse_manifest(&raw, &what)?;
    let artifact = manifest.artifact_type().as_ref().map(|t| t.to_string());
    if artifact.as_deref() != Some(BUNDLE_MEDIA_TYPE) {
        return Ok(None);
    }
    match manifest.subject() {
        Some(s) if s.digest() == manifest_digest => {}
        Some(s) => {
            return Err(malformed(format!(
                "its subject is another manifest, {}",
                s.digest()
            )));
        }
        None => return Err(malformed("it has no subject".into())),
    }
    let [layer] = manifest.layers().as_slice() else {
        return Err(malformed(format!(
            "{} layers, not the one bundle",
            manifest.layers().len()
        )));
    };
    if layer.media_type().to_string() != BUNDLE_MEDIA_TYPE {
        return Err(malformed(format!(
            "its layer is a {:?}, not a bundle",
            crate::oci::policy::key::clip(layer.media_type().as_ref())
        )));
    }
    if digest::parse(layer.digest().as_ref()).is_err() {
        return Err(malformed("the bundle's digest is not sha256".into()));
    }
    if layer.size() > MAX_BUNDLE as u64 {
        return Err(FetchError::Bundle {
            manifest: id,
            source: BundleError::TooLarge(layer.size() as usize),
        });
    }
    let bytes = read_bounded(
        source,
        layer,
        layer.size(),
        &format!("bundle {}", layer.digest()),
    )?;
    let actual = digest::of(&bytes);
    if &actual != layer.digest() {
        return Err(FetchError::Tampered {
            what: format!("bundle {}", layer.digest()),
            actual: format!("{} bytes with digest {actual}", bytes.len()),
        });
    }
    let bundle = Bundle::parse(&bytes).map_err(|source| FetchError::Bundle {
        manifest: id.clone(),
        source,
    })?;
    Ok(Some(Found::Bundle {
        manifest: id,
        bundle,
    }))
}

fn parse_manifest(raw: &RawManifest, what: &str) -> Result<ImageManifest, FetchError> {
    let malformed = |reason: String| FetchError::Malformed {
        what: what.to_string(),
        reason,
    };
    if !media::is_manifest(&raw.media_type) {
        return Err(malformed(format!(
            "a {:?}, not an image manifest",
            crate::oci::policy::key::clip(&raw.media_type)
        )));
    }
    serde_json::from_slice(&raw.bytes).map_err(|e| {
        malformed(format!(
            "not an image manifest: {}",
            crate::oci::policy::key::untrusted(e)
        ))
    })
}

/// The blob `d` names, at most `size` bytes (already bounded by the caller).
fn read_bounded(
    source: &dyn ImageSource,
    d: &Descriptor,
    size: u64,
    what: &str,
) -> Result<Vec<u8>, FetchError> {
    let mut bytes = Vec::with_capacity(size as usize);
    source
        .blob(d)
        .map_err(|e| FetchError::Registry(Arc::new(e)))?
        .take(size + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| FetchError::Registry(Arc::new(Error::io(what, e))))?;
    if bytes.len() as u64 > size {
        return Err(FetchError::Tampered {
            what: what.to_string(),
            actual: format!("more than the {size} bytes"),
        });
    }
    Ok(bytes)
}

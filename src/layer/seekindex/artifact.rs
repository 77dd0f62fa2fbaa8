//! The OCI artifact that carries an image's seek indexes (docs/seek-index.md
//! §3): one manifest per image manifest, its `subject`, with a head blob and
//! maybe a windows blob per indexed layer; written, found and read back.

use std::collections::HashMap;

use serde_json::{Value, json};

use crate::oci::digest::{self, Digest};
use crate::oci::transport::{ImageSource, RawManifest};
use crate::oci::{Descriptor, Error, ImageManifest, MAX_MANIFEST, media, referrers};

/// The artifact's `artifactType`.
pub const ARTIFACT_TYPE: &str = "application/vnd.lazycrypt.seek-index.v1";
/// A layer's head blob.
pub const HEAD_MEDIA_TYPE: &str = "application/vnd.lazycrypt.seek-index.head.v1";
/// A layer's windows blob.
pub const WINDOWS_MEDIA_TYPE: &str = "application/vnd.lazycrypt.seek-index.windows.v1";
/// The annotation naming the image layer a blob indexes.
pub const LAYER_ANNOTATION: &str = "vnd.lazycrypt.seek-index.layer";
/// When an artifact was made: nodes take the newest first.
const CREATED: &str = "org.opencontainers.image.created";
/// OCI's empty config.
pub const EMPTY_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";
pub const EMPTY_CONFIG: &[u8] = b"{}";
/// Artifacts of one image opened at most.
pub const MAX_CANDIDATES: usize = 8;
/// Layer descriptors one artifact may list.
pub const MAX_BLOBS: usize = 2 * 4096;

/// What one artifact holds for one image layer.
#[derive(Debug, Clone)]
pub struct LayerBlobs {
    pub head: Descriptor,
    pub windows: Option<Descriptor>,
}

/// An artifact, checked: for its subject, by layer digest.
#[derive(Debug, Clone)]
pub struct Artifact {
    pub digest: Digest,
    pub layers: HashMap<String, LayerBlobs>,
    /// Its `org.opencontainers.image.created` (RFC 3339), or empty.
    pub created: String,
}

/// One blob to list in a new artifact.
pub struct Blob {
    pub media_type: &'static str,
    pub digest: Digest,
    pub size: u64,
    /// The image layer it indexes.
    pub layer: Digest,
    /// Its bytes (sealed), to push.
    pub bytes: Vec<u8>,
}

/// The artifact manifest for `subject` (the image manifest's descriptor)
/// listing `blobs`, heads before their windows, in image layer order.
pub fn write(subject: &RawManifest, blobs: &[Blob], created: &str) -> RawManifest {
    let layers: Vec<Value> = blobs
        .iter()
        .map(|b| {
            json!({
                "mediaType": b.media_type,
                "digest": b.digest.to_string(),
                "size": b.size,
                "annotations": { LAYER_ANNOTATION: b.layer.to_string() },
            })
        })
        .collect();
    let m = json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_MANIFEST,
        "artifactType": ARTIFACT_TYPE,
        "config": {
            "mediaType": EMPTY_MEDIA_TYPE,
            "digest": digest::of(EMPTY_CONFIG).to_string(),
            "size": EMPTY_CONFIG.len(),
        },
        "layers": layers,
        "subject": {
            "mediaType": subject.media_type,
            "digest": subject.digest.to_string(),
            "size": subject.bytes.len(),
        },
        "annotations": { CREATED: created },
    });
    let bytes = serde_json::to_vec(&m).expect("json");
    RawManifest {
        media_type: media::OCI_MANIFEST.to_string(),
        digest: digest::of(&bytes),
        bytes,
    }
}

/// Why an artifact is not used; one line.
#[derive(Debug, Clone, thiserror::Error)]
#[error("seek index artifact {digest}: {reason}")]
pub struct ArtifactError {
    pub digest: String,
    pub reason: String,
}

/// Checks an artifact manifest's bytes (already matched to the digest
/// that listed it) for `subject`.
pub fn parse(raw: &RawManifest, subject: &Digest) -> Result<Artifact, ArtifactError> {
    let fail = |reason: String| ArtifactError {
        digest: raw.digest.to_string(),
        reason,
    };
    let m: ImageManifest = serde_json::from_slice(&raw.bytes).map_err(|e| {
        fail(format!(
            "not an image manifest: {}",
            crate::oci::policy::key::untrusted(e)
        ))
    })?;
    if m.artifact_type().as_ref().map(|t| t.to_string()).as_deref() != Some(ARTIFACT_TYPE) {
        return Err(fail("its artifactType is not a seek index's".into()));
    }
    if m.subject().as_ref().map(|s| s.digest()) != Some(subject) {
        return Err(fail(format!("it was not made for {subject}")));
    }
    if m.config().media_type().to_string() != EMPTY_MEDIA_TYPE {
        return Err(fail("its config is not the empty descriptor".into()));
    }
    if m.layers().len() > MAX_BLOBS {
        return Err(fail(format!(
            "{} blobs, more than {MAX_BLOBS}",
            m.layers().len()
        )));
    }
    let mut layers: HashMap<String, LayerBlobs> = HashMap::new();
    for (i, d) in m.layers().iter().enumerate() {
        let mt = d.media_type().to_string();
        let Some(layer) = d
            .annotations()
            .as_ref()
            .and_then(|a| a.get(LAYER_ANNOTATION))
            .filter(|l| digest::parse(l).is_ok())
        else {
            if mt == HEAD_MEDIA_TYPE || mt == WINDOWS_MEDIA_TYPE {
                return Err(fail(format!("blob {i} names no layer")));
            }
            continue;
        };
        if digest::parse(d.digest().as_ref()).is_err() {
            return Err(fail(format!("blob {i}: its digest is not sha256")));
        }
        if mt == HEAD_MEDIA_TYPE {
            if layers.contains_key(layer) {
                return Err(fail(format!("blob {i}: a second head for one layer")));
            }
            layers.insert(
                layer.clone(),
                LayerBlobs {
                    head: d.clone(),
                    windows: None,
                },
            );
        } else if mt == WINDOWS_MEDIA_TYPE {
            match layers.get_mut(layer) {
                Some(l) if l.windows.is_none() => l.windows = Some(d.clone()),
                _ => return Err(fail(format!("blob {i}: windows without a head before it"))),
            }
        }
    }
    let created = m
        .annotations()
        .as_ref()
        .and_then(|a| a.get(CREATED))
        .cloned()
        .unwrap_or_default();
    Ok(Artifact {
        digest: raw.digest.clone(),
        layers,
        created,
    })
}

/// The seek index artifacts `source` lists for `subject`, at most
/// [`MAX_CANDIDATES`], newest first (by their creation time, then the one
/// listed later: an index made again with `--force` takes the place of the
/// one before); and why each of the others listed was not taken.
pub fn find(
    source: &dyn ImageSource,
    subject: &Digest,
) -> Result<(Vec<Artifact>, Vec<String>), Error> {
    let listed = referrers::list(source, subject, ARTIFACT_TYPE)?;
    let mut found = Vec::new();
    let mut refused = Vec::new();
    for d in listed.iter().take(MAX_CANDIDATES) {
        if digest::parse(d.digest().as_ref()).is_err() || d.size() > MAX_MANIFEST {
            refused.push(format!(
                "seek index artifact {}: not a sha256 manifest of at most {MAX_MANIFEST} bytes",
                d.digest()
            ));
            continue;
        }
        let raw = match source.manifest(d) {
            Ok(raw) => raw,
            Err(e) => {
                refused.push(format!("seek index artifact {}: {e}", d.digest()));
                continue;
            }
        };
        if digest::of(&raw.bytes) != *d.digest() {
            refused.push(format!(
                "seek index artifact {}: the source sent other bytes (tampered)",
                d.digest()
            ));
            continue;
        }
        match parse(&raw, subject) {
            Ok(a) => found.push(a),
            Err(e) => refused.push(e.to_string()),
        }
    }
    // RFC 3339 times in UTC, as `write` is given them, sort as text; in
    // the same second, the one listed later (an index's fallback tag lists
    // a new artifact after the others) first.
    found.reverse();
    found.sort_by(|a, b| b.created.cmp(&a.created));
    if listed.len() > MAX_CANDIDATES {
        refused.push(format!(
            "{} seek index artifacts listed; only the first {MAX_CANDIDATES} were read",
            listed.len()
        ));
    }
    Ok((found, refused))
}

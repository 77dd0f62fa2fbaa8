//! Serving a layer that has no TOC through a seek index published beside
//! its image (docs/seek-index.md §7): the image's artifacts are found once
//! and shared by its layers; a layer opens through the first one whose head
//! unseals under its key, and otherwise falls back to the whole blob.

use std::io;
use std::sync::Arc;

use crate::cache::blobs::DiskRange;
use crate::cache::chunks::Reservation;
use crate::layer::index::Layer;
use crate::layer::seekindex::artifact::{self, Artifact};
use crate::layer::seekindex::head::{self, Expect};
use crate::layer::seekindex::seal::{Binding, HeadBlob};
use crate::layer::seekindex::serve::{self, Sources};
use crate::layer::source::{BlobRange, RangeSource};
use crate::layer::stream::Compression;
use crate::oci::digest::{self, Digest};
use crate::oci::transport::ImageSource;

/// The seek index artifacts of one image manifest.
pub struct Found {
    manifest: Digest,
    artifacts: Vec<Artifact>,
    /// Why listed artifacts (or the listing) were not taken.
    refused: Vec<String>,
}

impl Found {
    /// Nothing found: layers open as they would without seek indexes.
    pub fn none(manifest: Digest) -> Self {
        Found {
            manifest,
            artifacts: Vec::new(),
            refused: Vec::new(),
        }
    }

    /// One artifact found, listing layer `what` with a head of no bytes.
    #[cfg(test)]
    pub(crate) fn listing(manifest: Digest, what: &str) -> Self {
        let head = crate::oci::Descriptor::new(
            oci_spec::image::MediaType::Other(artifact::HEAD_MEDIA_TYPE.into()),
            0,
            digest::of(b""),
        );
        let layers = [(
            what.to_string(),
            artifact::LayerBlobs {
                head,
                windows: None,
            },
        )];
        Found {
            manifest,
            artifacts: vec![Artifact {
                digest: digest::of(b"artifact"),
                layers: layers.into_iter().collect(),
                created: String::new(),
            }],
            refused: Vec::new(),
        }
    }

    /// Whether an artifact found indexes layer `what` (its digest).
    pub fn lists(&self, what: &str) -> bool {
        self.artifacts.iter().any(|a| a.layers.contains_key(what))
    }

    /// Lists and reads the artifacts `src` has for `manifest`. A failure
    /// is kept as a reason, never an error: the layers fall back.
    pub fn find(src: &dyn ImageSource, manifest: &Digest) -> Self {
        match artifact::find(src, manifest) {
            Ok((artifacts, refused)) => Found {
                manifest: manifest.clone(),
                artifacts,
                refused,
            },
            Err(e) => Found {
                manifest: manifest.clone(),
                artifacts: Vec::new(),
                refused: vec![format!("seek index artifacts of {manifest}: {e}")],
            },
        }
    }
}

/// What [`open`] needs of the layer blob.
pub(super) struct LayerBlob<'a> {
    pub src: &'a Arc<dyn ImageSource>,
    pub desc: &'a crate::oci::Descriptor,
    pub what: &'a str,
    pub compression: Compression,
    pub symkey: &'a [u8],
    pub key: &'a crate::crypto::cipher::LayerKey,
    pub disk: &'a Arc<DiskRange>,
}

/// The layer served through the first artifact in `found` that indexes it
/// and opens; `Ok(None)` if none lists it; `Err` with every reason if some
/// did and none opened.
pub(super) fn open(
    b: &LayerBlob<'_>,
    found: &Found,
    cache_dir: &std::path::Path,
    reserved: &Reservation,
) -> Result<Option<Layer>, String> {
    let compression = match b.compression {
        Compression::Gzip => head::Compression::Gzip,
        Compression::None => head::Compression::None,
        Compression::Zstd => return Ok(None),
    };
    let mut reasons = found.refused.clone();
    let mut listed = false;
    for a in &found.artifacts {
        let Some(blobs) = a.layers.get(b.what) else {
            continue;
        };
        listed = true;
        match open_with(b, found, blobs, compression, cache_dir, reserved) {
            Ok(layer) => return Ok(Some(layer)),
            Err(e) => {
                // What the failed attempt took goes back before the next.
                let _ = reserved.set(0, b.what);
                reasons.push(format!("seek index artifact {}: {e}", a.digest));
            }
        }
    }
    if !listed && found.refused.is_empty() {
        tracing::info!(
            "layer {}: no seek index lists it ({} artifacts found); fetching the whole blob",
            b.what,
            found.artifacts.len()
        );
        return Ok(None);
    }
    if !listed {
        reasons.push("no artifact indexes this layer".into());
    }
    Err(reasons.join("; "))
}

fn open_with(
    b: &LayerBlob<'_>,
    found: &Found,
    blobs: &artifact::LayerBlobs,
    compression: head::Compression,
    cache_dir: &std::path::Path,
    reserved: &Reservation,
) -> io::Result<Layer> {
    let head_desc = &blobs.head;
    HeadBlob::check_size(head_desc.size()).map_err(io::Error::other)?;
    // Anyone who can push to the repository can list heads: they are
    // fetched only up to what a real one could need for this layer.
    let most = (4 << 20) + 4 * b.desc.size();
    if head_desc.size() > most {
        return Err(io::Error::other(format!(
            "head blob {} is {} bytes, more than an index of this layer needs",
            head_desc.digest(),
            head_desc.size()
        )));
    }
    let head_disk = cached(b.src, head_desc, cache_dir)?;
    let size = head_desc.size();
    head_disk.prepare(0, size)?;
    let bytes = head_disk.read_range(0, size)?;
    // The cache file may have changed since it was fetched: checked on
    // every read, before a byte of it is parsed.
    if digest::of(&bytes) != *head_desc.digest() {
        let _ = head_disk.forget();
        return Err(io::Error::other(format!(
            "head blob {} does not match its digest",
            head_desc.digest()
        )));
    }
    let layer_digest = b.desc.digest();
    let mut raw = [0u8; 32];
    hex::decode_to_slice(layer_digest.digest(), &mut raw)
        .map_err(|_| io::Error::other("the layer digest is not sha256"))?;
    let expect = Expect {
        layer: raw,
        blob_size: b.desc.size(),
        compression,
    };
    let binding = Binding {
        manifest: &found.manifest,
        layer: layer_digest,
    };
    let u =
        serve::unseal(&bytes, b.symkey, binding, &expect, reserved).map_err(io::Error::other)?;
    let windows = match (&blobs.windows, u.windows_size()) {
        (_, 0) => None,
        (Some(w), n) if w.size() == n => Some(cached(b.src, w, cache_dir)? as Arc<dyn RangeSource>),
        _ => {
            return Err(io::Error::other(
                "the artifact's windows blob is not the one the head names",
            ));
        }
    };
    let sources = Sources {
        blob: b.disk.clone(),
        windows,
        layer_key: b.key.clone(),
        manifest: found.manifest.clone(),
        layer: layer_digest.clone(),
    };
    serve::layer(u, sources, b.what)
}

/// A blob of the artifact, read through the ciphertext disk cache.
fn cached(
    src: &Arc<dyn ImageSource>,
    desc: &crate::oci::Descriptor,
    cache_dir: &std::path::Path,
) -> io::Result<Arc<DiskRange>> {
    let remote = Arc::new(BlobRange::new(src.clone(), desc.clone()));
    Ok(Arc::new(DiskRange::open(cache_dir, desc.digest(), remote)?))
}

//! An image as a tree: the root (manifest or index) and its platform manifests.

use super::platform::Platform;
use super::transport::{ImageSource, RawManifest};
use super::{Descriptor, Error, ImageIndex, ImageManifest, media};

/// One platform's manifest, with where it sits in the index.
#[derive(Debug, Clone)]
pub struct PlatformImage {
    /// The index entry (None when the root is a plain manifest).
    pub entry: Option<Descriptor>,
    /// `os/arch[/variant]` from the index entry or config, for display.
    pub platform: String,
    pub raw: RawManifest,
    pub manifest: ImageManifest,
}

/// A resolved image.
#[derive(Debug, Clone)]
pub struct Image {
    pub root: RawManifest,
    /// The parsed index when the root is one.
    pub index: Option<ImageIndex>,
    pub manifests: Vec<PlatformImage>,
}

/// Parses a manifest; `where_` names it in errors.
pub fn parse_manifest(raw: &RawManifest, where_: &str) -> Result<ImageManifest, Error> {
    serde_json::from_slice(&raw.bytes)
        .map_err(|e| Error::Malformed(format!("{where_}: manifest {}: {e}", raw.digest)))
}

impl Image {
    /// Reads the root and every platform manifest under it.
    pub fn load(src: &dyn ImageSource, where_: &str) -> Result<Self, Error> {
        let root = src.root()?;
        if media::is_index(&root.media_type) {
            let index: ImageIndex = serde_json::from_slice(&root.bytes)
                .map_err(|e| Error::Malformed(format!("{where_}: index {}: {e}", root.digest)))?;
            let mut manifests = Vec::new();
            for entry in index.manifests() {
                let mt = entry.media_type().to_string();
                if !media::is_manifest(&mt) {
                    // Nested indexes and artifacts are carried over untouched.
                    continue;
                }
                let raw = src.manifest(entry)?;
                let manifest = parse_manifest(&raw, where_)?;
                let platform = entry
                    .platform()
                    .as_ref()
                    .map(Platform::describe)
                    .unwrap_or_else(|| "-".into());
                manifests.push(PlatformImage {
                    entry: Some(entry.clone()),
                    platform,
                    raw,
                    manifest,
                });
            }
            return Ok(Image {
                root,
                index: Some(index),
                manifests,
            });
        }
        let manifest = parse_manifest(&root, where_)?;
        let platform = config_platform(src, &manifest).unwrap_or_else(|| "-".into());
        Ok(Image {
            root: root.clone(),
            index: None,
            manifests: vec![PlatformImage {
                entry: None,
                platform,
                raw: root,
                manifest,
            }],
        })
    }

    /// Whether `p` is selected by the `--platform` filter (none selects all).
    pub fn selected(p: &PlatformImage, filter: Option<&Platform>) -> bool {
        match (filter, &p.entry) {
            (None, _) => true,
            (Some(f), Some(e)) => e.platform().as_ref().is_some_and(|pl| f.matches(pl)),
            (Some(f), None) => p.platform == f.to_string() || p.platform == "-",
        }
    }
}

/// `os/arch` from the image config, for single-manifest images.
fn config_platform(src: &dyn ImageSource, m: &ImageManifest) -> Option<String> {
    let bytes = src
        .blob_range(m.config(), 0, m.config().size().min(super::MAX_MANIFEST))
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let (os, arch) = (v["os"].as_str()?, v["architecture"].as_str()?);
    Some(match v["variant"].as_str() {
        Some(var) => format!("{os}/{arch}/{var}"),
        None => format!("{os}/{arch}"),
    })
}

/// The chain ID of a layer with diff ID `diff_id` on the layers whose chain
/// ID is `parent` (none: `""`), as the OCI image spec defines it:
/// `sha256(parent + " " + diff_id)`, the first layer's being its diff ID.
/// containerd names the snapshot of each layer by it.
pub fn chain_id(parent: &str, diff_id: &str) -> String {
    use sha2::Digest as _;
    if parent.is_empty() {
        return diff_id.to_string();
    }
    let h = sha2::Sha256::digest(format!("{parent} {diff_id}").as_bytes());
    format!("sha256:{}", hex::encode(h))
}

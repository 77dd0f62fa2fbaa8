//! Copying an image between transports, with a hook that may rewrite layers.
//!
//! Nothing is tagged at the destination until every blob and manifest is
//! written; on any error the destination is told to abort.

use std::io::Read;

use serde_json::Value;

use super::image::{Image, PlatformImage};
use super::platform::Platform;
use super::transport::{ImageDest, ImageSource, RawManifest};
use super::{Descriptor, Error, digest, media};

/// Wraps blob streams for progress display; the default shows nothing.
pub trait Progress: Sync {
    fn wrap(&self, _label: &str, _size: u64, r: Box<dyn Read + Send>) -> Box<dyn Read + Send> {
        r
    }
}

/// No progress display.
pub struct NoProgress;
impl Progress for NoProgress {}

/// One layer offered to the hook.
pub struct LayerCtx<'a> {
    pub image: &'a PlatformImage,
    pub index: usize,
    pub desc: &'a Descriptor,
    pub src: &'a dyn ImageSource,
    pub dst: &'a dyn ImageDest,
    pub progress: &'a dyn Progress,
}

impl LayerCtx<'_> {
    /// Is this layer picked by `--layer` indexes (negative counts from the top)?
    pub fn picked(&self, layers: &[i64]) -> bool {
        let n = self.image.manifest.layers().len() as i64;
        let i = self.index as i64;
        layers.is_empty() || layers.iter().any(|&l| l == i || l + n == i)
    }

    /// The source blob as a progress-wrapped stream.
    pub fn open(&self) -> Result<Box<dyn Read + Send>, Error> {
        let r = self.src.blob(self.desc)?;
        Ok(self.progress.wrap(&short(self.desc), self.desc.size(), r))
    }
}

/// A layer's short name for progress lines.
pub fn short(d: &Descriptor) -> String {
    d.digest().digest().chars().take(12).collect()
}

/// The hook: `Ok(Some(desc))` when it wrote a replacement layer, `Ok(None)` to copy as is.
pub type LayerHook<'a, E> = dyn FnMut(&LayerCtx<'_>) -> Result<Option<Descriptor>, E> + 'a;

/// Copies `src` to `dst`, offering every layer of the platforms `filter`
/// selects to `hook`. Returns the new root.
pub fn copy_image<E: From<Error>>(
    src: &dyn ImageSource,
    dst: &dyn ImageDest,
    filter: Option<&Platform>,
    progress: &dyn Progress,
    hook: &mut LayerHook<'_, E>,
    where_: &str,
) -> Result<RawManifest, E> {
    let result = copy_inner(src, dst, filter, progress, hook, where_);
    if result.is_err() {
        dst.abort();
    }
    result
}

fn copy_inner<E: From<Error>>(
    src: &dyn ImageSource,
    dst: &dyn ImageDest,
    filter: Option<&Platform>,
    progress: &dyn Progress,
    hook: &mut LayerHook<'_, E>,
    where_: &str,
) -> Result<RawManifest, E> {
    let image = Image::load(src, where_)?;
    if let Some(f) = filter
        && !image.manifests.iter().any(|m| Image::selected(m, Some(f)))
    {
        return Err(Error::NotFound(format!("{where_}: no manifest for platform {f}")).into());
    }
    let mut new_manifests = Vec::new();
    for pi in &image.manifests {
        let selected = Image::selected(pi, filter);
        let mut changed = false;
        let mut layers = Vec::new();
        for (index, desc) in pi.manifest.layers().iter().enumerate() {
            let ctx = LayerCtx {
                image: pi,
                index,
                desc,
                src,
                dst,
                progress,
            };
            let replaced = if selected { hook(&ctx)? } else { None };
            match replaced {
                Some(d) => {
                    changed |= d != *desc;
                    layers.push(d);
                }
                None => {
                    copy_blob(src, dst, desc, progress)?;
                    layers.push(desc.clone());
                }
            }
        }
        copy_blob(src, dst, pi.manifest.config(), &NoProgress)?;
        let raw = if changed {
            rewrite_manifest(pi, &layers)?
        } else {
            pi.raw.clone()
        };
        dst.put_manifest(&raw)?;
        new_manifests.push(raw);
    }
    let root = match &image.index {
        None => new_manifests
            .pop()
            .ok_or_else(|| Error::Malformed(format!("{where_}: empty image")))?,
        Some(_) => rewrite_index(&image, &new_manifests, src, dst)?,
    };
    dst.commit(&root)?;
    Ok(root)
}

/// Copies a blob unchanged, verifying its digest, unless the destination has it.
pub fn copy_blob(
    src: &dyn ImageSource,
    dst: &dyn ImageDest,
    d: &Descriptor,
    progress: &dyn Progress,
) -> Result<(), Error> {
    if dst.has_blob(d.digest())? {
        return Ok(());
    }
    let r = progress.wrap(&short(d), d.size(), src.blob(d)?);
    let mut r = digest::VerifyingReader::new(
        r,
        d.digest().clone(),
        Some(d.size()),
        format!("blob {}", d.digest()),
    );
    dst.put_blob(&mut r, d.media_type().as_ref())?;
    Ok(())
}

/// The manifest with new layer descriptors. Docker manifests become OCI
/// ones, as ocicrypt's output is OCI.
fn rewrite_manifest(pi: &PlatformImage, layers: &[Descriptor]) -> Result<RawManifest, Error> {
    let mut v: Value = serde_json::from_slice(&pi.raw.bytes)
        .map_err(|e| Error::Malformed(format!("manifest {}: {e}", pi.raw.digest)))?;
    let mut layers_json =
        serde_json::to_value(layers).map_err(|e| Error::Malformed(e.to_string()))?;
    let docker = pi.raw.media_type == media::DOCKER_MANIFEST;
    if docker {
        if let Some(list) = layers_json.as_array_mut() {
            for l in list {
                if let Some(mt) = l["mediaType"].as_str().and_then(media::to_oci_layer) {
                    l["mediaType"] = Value::String(mt);
                }
            }
        }
        v["config"]["mediaType"] = Value::String(media::OCI_CONFIG.into());
        v["mediaType"] = Value::String(media::OCI_MANIFEST.into());
    }
    v["layers"] = layers_json;
    let bytes = serde_json::to_vec(&v).map_err(|e| Error::Malformed(e.to_string()))?;
    let media_type = if docker {
        media::OCI_MANIFEST.to_string()
    } else {
        pi.raw.media_type.clone()
    };
    Ok(RawManifest {
        media_type,
        digest: digest::of(&bytes),
        bytes,
    })
}

/// The index with entries pointing at the new manifests; entries that are not
/// platform manifests are copied over as they are.
fn rewrite_index(
    image: &Image,
    new: &[RawManifest],
    src: &dyn ImageSource,
    dst: &dyn ImageDest,
) -> Result<RawManifest, Error> {
    let mut v: Value = serde_json::from_slice(&image.root.bytes)
        .map_err(|e| Error::Malformed(format!("index {}: {e}", image.root.digest)))?;
    let mut changed = false;
    if let Some(list) = v["manifests"].as_array_mut() {
        for entry in list.iter_mut() {
            let old = entry["digest"].as_str().unwrap_or_default().to_string();
            match image
                .manifests
                .iter()
                .position(|m| m.raw.digest.to_string() == old)
            {
                Some(i) => {
                    let m = &new[i];
                    if m.digest.to_string() != old {
                        changed = true;
                        entry["digest"] = Value::String(m.digest.to_string());
                        entry["size"] = Value::from(m.bytes.len());
                        entry["mediaType"] = Value::String(m.media_type.clone());
                    }
                }
                None => {
                    let d: Descriptor = serde_json::from_value(entry.clone()).map_err(|e| {
                        Error::Malformed(format!("index {}: {e}", image.root.digest))
                    })?;
                    dst.put_manifest(&src.manifest(&d)?)?;
                }
            }
        }
    }
    if !changed {
        return Ok(image.root.clone());
    }
    if image.root.media_type == media::DOCKER_LIST {
        v["mediaType"] = Value::String(media::OCI_INDEX.into());
    }
    let bytes = serde_json::to_vec(&v).map_err(|e| Error::Malformed(e.to_string()))?;
    let media_type = if image.root.media_type == media::DOCKER_LIST {
        media::OCI_INDEX.into()
    } else {
        image.root.media_type.clone()
    };
    Ok(RawManifest {
        media_type,
        digest: digest::of(&bytes),
        bytes,
    })
}

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

/// A layer the hook wrote in place of the source's.
#[derive(Debug, Clone)]
pub struct Replaced {
    pub desc: Descriptor,
    /// The new uncompressed digest when the layer's tar changed (eStargz
    /// conversion); the config's `rootfs.diff_ids` is rewritten to match.
    pub diff_id: Option<String>,
}

impl From<Descriptor> for Replaced {
    fn from(desc: Descriptor) -> Self {
        Replaced {
            desc,
            diff_id: None,
        }
    }
}

/// The hook: `Ok(Some(_))` when it wrote a replacement layer, `Ok(None)` to copy as is.
pub type LayerHook<'a, E> = dyn FnMut(&LayerCtx<'_>) -> Result<Option<Replaced>, E> + 'a;

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
        let mut diff_ids = Vec::new();
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
                Some(r) => {
                    changed |= r.desc != *desc;
                    if let Some(d) = r.diff_id {
                        diff_ids.push((index, d));
                    }
                    layers.push(r.desc);
                }
                None => {
                    copy_blob(src, dst, desc, progress)?;
                    layers.push(desc.clone());
                }
            }
        }
        let config = if diff_ids.is_empty() {
            copy_blob(src, dst, pi.manifest.config(), &NoProgress)?;
            pi.manifest.config().clone()
        } else {
            rewrite_config(src, dst, pi.manifest.config(), &diff_ids)?
        };
        let raw = if changed {
            rewrite_manifest(pi, &config, &layers)?
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

/// The config with new diff IDs, stored at the destination.
fn rewrite_config(
    src: &dyn ImageSource,
    dst: &dyn ImageDest,
    config: &Descriptor,
    diff_ids: &[(usize, String)],
) -> Result<Descriptor, Error> {
    let what = format!("config {}", config.digest());
    if config.size() > super::MAX_MANIFEST {
        return Err(Error::Malformed(format!("{what} is too large")));
    }
    let mut bytes = Vec::new();
    digest::VerifyingReader::new(
        src.blob(config)?,
        config.digest().clone(),
        Some(config.size()),
        what.clone(),
    )
    .read_to_end(&mut bytes)
    .map_err(|e| Error::io(what.clone(), e))?;
    let mut v: Value =
        serde_json::from_slice(&bytes).map_err(|e| Error::Malformed(format!("{what}: {e}")))?;
    for (i, d) in diff_ids {
        let slot = v["rootfs"]["diff_ids"]
            .get_mut(*i)
            .ok_or_else(|| Error::Malformed(format!("{what}: no diff ID for layer {i}")))?;
        *slot = Value::String(d.clone());
    }
    let bytes = serde_json::to_vec(&v).map_err(|e| Error::Malformed(e.to_string()))?;
    let mt = config.media_type().to_string();
    let (d, size) = dst.put_blob(&mut &bytes[..], &mt)?;
    Ok(Descriptor::new(config.media_type().clone(), size, d))
}

/// The manifest with a new config and layer descriptors. Docker manifests
/// become OCI ones, as ocicrypt's output is OCI.
fn rewrite_manifest(
    pi: &PlatformImage,
    config: &Descriptor,
    layers: &[Descriptor],
) -> Result<RawManifest, Error> {
    let mut v: Value = serde_json::from_slice(&pi.raw.bytes)
        .map_err(|e| Error::Malformed(format!("manifest {}: {e}", pi.raw.digest)))?;
    v["config"]["digest"] = Value::String(config.digest().to_string());
    v["config"]["size"] = Value::from(config.size());
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

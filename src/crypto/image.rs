//! Encrypting and decrypting whole images, layer by layer, as ocicrypt does.

use std::collections::HashMap;

use oci_spec::image::MediaType;

use super::Error;
use super::cipher::LayerKey;
use super::envelope::{self, PUBOPTS};
use super::options::PublicOptions;
use super::recipient::{KeyRing, Recipient};
use crate::oci::copy::{LayerCtx, Progress, copy_image};
use crate::oci::platform::Platform;
use crate::oci::transport::{ImageDest, ImageSource, RawManifest};
use crate::oci::{Descriptor, digest, media};

/// Which layers of which platforms to touch.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// `--layer` indexes; empty means all. Negative counts from the top.
    pub layers: Vec<i64>,
    /// `--platform`; None means all.
    pub platform: Option<Platform>,
}

/// What a run did to one layer.
#[derive(Debug, Clone)]
pub struct LayerChange {
    pub platform: String,
    pub index: usize,
    pub from: String,
    pub to: String,
    pub action: &'static str,
}

/// Encrypts the selected layers to `recipients`. Layers that are already
/// encrypted get the new recipients added, which needs a key in `ring`.
pub fn encrypt(
    src: &dyn ImageSource,
    dst: &dyn ImageDest,
    recipients: &[Recipient],
    ring: &KeyRing,
    sel: &Selection,
    progress: &dyn Progress,
    where_: &str,
) -> Result<(RawManifest, Vec<LayerChange>), Error> {
    if recipients.is_empty() {
        return Err(Error::BadKey("encrypt: no --recipient given".into()));
    }
    let mut changes = Vec::new();
    let mut hook = |ctx: &LayerCtx<'_>| -> Result<Option<Descriptor>, Error> {
        let d = ctx.desc;
        let mt = d.media_type().to_string();
        if !ctx.picked(&sel.layers) || !media::is_layer(&mt) {
            return Ok(None);
        }
        let mut annotations = d.annotations().clone().unwrap_or_default();
        let (new, action) = if media::is_encrypted(&mt) {
            let opts =
                envelope::unwrap(&annotations, ring, d.digest().as_ref()).map_err(|e| match e {
                    Error::MissingKey(m) => Error::MissingKey(format!(
                        "{m}; layer {} is already encrypted: give --key to add recipients",
                        d.digest()
                    )),
                    other => other,
                })?;
            envelope::merge(&mut annotations, envelope::wrap(recipients, &opts, ring)?);
            crate::oci::copy::copy_blob(ctx.src, ctx.dst, d, ctx.progress)?;
            let mut nd = d.clone();
            nd.set_annotations(Some(annotations));
            (nd, "recipients added")
        } else {
            let key = LayerKey::generate();
            let plain = digest::VerifyingReader::new(
                ctx.open()?,
                d.digest().clone(),
                Some(d.size()),
                format!("layer {}", d.digest()),
            );
            let (mut enc, result) = key.encrypt_reader(plain);
            let (ct_digest, size) = ctx.dst.put_blob(&mut enc, &mt)?;
            drop(enc);
            let plain_digest = result
                .plain_digest()
                .ok_or_else(|| Error::Malformed("encryption ended early".into()))?;
            let pubopts: PublicOptions = result
                .public_options()
                .ok_or_else(|| Error::Malformed("encryption ended early".into()))?;
            let opts = key.to_options(plain_digest);
            envelope::merge(&mut annotations, envelope::wrap(recipients, &opts, ring)?);
            annotations.insert(PUBOPTS.to_string(), pubopts.to_annotation());
            let enc_mt = media::encrypted(&mt).unwrap_or(mt);
            let mut nd = Descriptor::new(MediaType::from(enc_mt.as_str()), size, ct_digest);
            nd.set_annotations(Some(annotations));
            (nd, "encrypted")
        };
        changes.push(LayerChange {
            platform: ctx.image.platform.clone(),
            index: ctx.index,
            from: d.digest().to_string(),
            to: new.digest().to_string(),
            action,
        });
        Ok(Some(new))
    };
    let root = copy_image(src, dst, sel.platform.as_ref(), progress, &mut hook, where_)?;
    Ok((root, changes))
}

/// Decrypts the selected encrypted layers with keys from `ring`.
pub fn decrypt(
    src: &dyn ImageSource,
    dst: &dyn ImageDest,
    ring: &KeyRing,
    sel: &Selection,
    progress: &dyn Progress,
    where_: &str,
) -> Result<(RawManifest, Vec<LayerChange>), Error> {
    let mut changes = Vec::new();
    let mut hook = |ctx: &LayerCtx<'_>| -> Result<Option<Descriptor>, Error> {
        let d = ctx.desc;
        let mt = d.media_type().to_string();
        if !ctx.picked(&sel.layers) || !media::is_encrypted(&mt) {
            return Ok(None);
        }
        let layer = d.digest().to_string();
        let annotations = d.annotations().clone().unwrap_or_default();
        let (opts, pubopts) = layer_keys(&annotations, ring, &layer)?;
        let key = LayerKey::from_options(&opts);
        let mut plain = key.decrypt_reader(ctx.open()?, &pubopts.hmac, None, &layer);
        let (got, size) = ctx.dst.put_blob(&mut plain, &media::decrypted(&mt))?;
        drop(plain);
        note_digest(&layer, got.as_ref(), &opts.digest);
        let mut kept: HashMap<String, String> = annotations;
        kept.retain(|k, _| !k.starts_with(envelope::KEYS_PREFIX) && k != PUBOPTS);
        let mut nd = Descriptor::new(MediaType::from(media::decrypted(&mt).as_str()), size, got);
        if !kept.is_empty() {
            nd.set_annotations(Some(kept));
        }
        changes.push(LayerChange {
            platform: ctx.image.platform.clone(),
            index: ctx.index,
            from: layer,
            to: nd.digest().to_string(),
            action: "decrypted",
        });
        Ok(Some(nd))
    };
    let root = copy_image(src, dst, sel.platform.as_ref(), progress, &mut hook, where_)?;
    Ok((root, changes))
}

/// The HMAC, checked at EOF, is what authenticates a layer. The private
/// options' digest is not a reliable plaintext digest: when containers/image
/// compresses a layer on the fly while encrypting it (skopeo does, for
/// uncompressed layers), ocicrypt records the digest of the uncompressed
/// source. So a mismatch is noted, not fatal, as in ocicrypt's own users.
pub fn note_digest(layer: &str, got: &str, recorded: &str) {
    if !got.eq_ignore_ascii_case(recorded) {
        tracing::debug!(
            "layer {layer}: decrypted blob is {got}; the private options record {recorded}"
        );
    }
}

/// Unwraps a layer's private options and reads its public options.
pub fn layer_keys(
    annotations: &HashMap<String, String>,
    ring: &KeyRing,
    layer: &str,
) -> Result<(super::options::PrivateOptions, PublicOptions), Error> {
    let pub_raw = annotations.get(PUBOPTS).ok_or_else(|| {
        Error::Malformed(format!(
            "layer {layer}: encrypted, but has no {PUBOPTS} annotation"
        ))
    })?;
    let pubopts = PublicOptions::from_annotation(pub_raw)
        .map_err(|e| Error::Malformed(format!("layer {layer}: {e}")))?;
    let opts = envelope::unwrap(annotations, ring, layer)?;
    Ok((opts, pubopts))
}

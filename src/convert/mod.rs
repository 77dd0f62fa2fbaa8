//! Whole-image conversions: encrypting (optionally to eStargz) and decrypting
//! images layer by layer, as ocicrypt does. Sits above `crypto` and `layer`,
//! which it combines.

mod estargz;

use std::collections::{HashMap, HashSet};
use std::io::Read;

use oci_spec::image::MediaType;

use crate::crypto::Error;
use crate::crypto::cipher::LayerKey;
use crate::crypto::envelope::{self, PUBOPTS, layer_keys, note_digest};
use crate::crypto::options::{PublicOptions, TOC_DIGEST_OPTION};
use crate::crypto::recipient::{KeyRing, Recipient};
use crate::layer::estargz::{TOC_DIGEST_ANNOTATION, UNCOMPRESSED_SIZE_ANNOTATION};
use crate::oci::copy::{LayerCtx, Progress, Replaced, copy_image};
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

/// What `encrypt` does to each selected layer.
pub struct EncryptOptions<'a> {
    /// Who may decrypt. Empty only with `estargz`: then layers become plain eStargz.
    pub recipients: &'a [Recipient],
    /// Keys that open already encrypted layers, to add recipients to them.
    pub ring: &'a KeyRing,
    /// Convert layers to eStargz before encrypting them.
    pub estargz: bool,
    /// With `estargz`: files (TOC names) to put first in each layer that
    /// has them, for prefetch.
    pub prioritized: &'a HashSet<String>,
    /// With `estargz`: bytes of a file per chunk.
    pub chunk_size: u64,
}

/// Encrypts the selected layers. Layers that are already encrypted get the
/// new recipients added, which needs a key in `opts.ring`.
pub fn encrypt(
    src: &dyn ImageSource,
    dst: &dyn ImageDest,
    opts: &EncryptOptions<'_>,
    sel: &Selection,
    progress: &dyn Progress,
    where_: &str,
) -> Result<(RawManifest, Vec<LayerChange>), Error> {
    if opts.recipients.is_empty() && !opts.estargz {
        return Err(Error::BadKey(
            "encrypt: no --recipient given (or --estargz for plain eStargz)".into(),
        ));
    }
    let mut changes = Vec::new();
    let mut hook = |ctx: &LayerCtx<'_>| -> Result<Option<Replaced>, Error> {
        let d = ctx.desc;
        let mt = d.media_type().to_string();
        if !ctx.picked(&sel.layers) || !media::is_layer(&mt) {
            return Ok(None);
        }
        let (new, action) = if media::is_encrypted(&mt) {
            if opts.estargz {
                return Err(Error::Malformed(format!(
                    "layer {} is already encrypted: decrypt the image before converting it to eStargz",
                    d.digest()
                )));
            }
            (add_recipients(ctx, opts)?, "recipients added")
        } else if opts.estargz {
            let r = to_estargz(ctx, opts)?;
            (
                r,
                if opts.recipients.is_empty() {
                    "converted to eStargz"
                } else {
                    "encrypted (eStargz)"
                },
            )
        } else {
            (encrypt_layer(ctx, opts)?.into(), "encrypted")
        };
        changes.push(LayerChange {
            platform: ctx.image.platform.clone(),
            index: ctx.index,
            from: d.digest().to_string(),
            to: new.desc.digest().to_string(),
            action,
        });
        Ok(Some(new))
    };
    let root = copy_image(src, dst, sel.platform.as_ref(), progress, &mut hook, where_)?;
    Ok((root, changes))
}

/// Wraps an encrypted layer's existing key to more recipients; the blob is copied as is.
fn add_recipients(ctx: &LayerCtx<'_>, opts: &EncryptOptions<'_>) -> Result<Replaced, Error> {
    let d = ctx.desc;
    let mut annotations = d.annotations().clone().unwrap_or_default();
    let private =
        envelope::unwrap(&annotations, opts.ring, d.digest().as_ref()).map_err(|e| match e {
            Error::MissingKey(m) => Error::MissingKey(format!(
                "{m}; layer {} is already encrypted: give --key to add recipients",
                d.digest()
            )),
            other => other,
        })?;
    envelope::merge(
        &mut annotations,
        envelope::wrap(opts.recipients, &private, opts.ring)?,
    );
    crate::oci::copy::copy_blob(ctx.src, ctx.dst, d, ctx.progress)?;
    let mut nd = d.clone();
    nd.set_annotations(Some(annotations));
    Ok(nd.into())
}

/// The source blob, checked against its descriptor as it streams.
fn verified_source(ctx: &LayerCtx<'_>) -> Result<Box<dyn Read + Send>, Error> {
    let d = ctx.desc;
    Ok(Box::new(digest::VerifyingReader::new(
        ctx.open()?,
        d.digest().clone(),
        Some(d.size()),
        format!("layer {}", d.digest()),
    )))
}

/// A layer encrypted and stored at the destination, not yet described.
struct Sealed {
    key: LayerKey,
    digest: digest::Digest,
    size: u64,
    plain_digest: String,
    pubopts: PublicOptions,
}

/// Encrypts `plain` and stores it as a blob of (plain) media type `mt`.
/// `plain_digest`: the plaintext's digest when `plain` already verifies it.
fn seal(
    ctx: &LayerCtx<'_>,
    plain: Box<dyn Read + Send>,
    mt: &str,
    plain_digest: Option<&str>,
) -> Result<Sealed, Error> {
    let key = LayerKey::generate();
    let (mut enc, result) = key.encrypt_reader(plain, plain_digest);
    let (digest, size) = ctx.dst.put_blob(&mut enc, mt)?;
    drop(enc);
    let ended = || {
        Error::Malformed(format!(
            "layer {}: encryption ended early",
            ctx.desc.digest()
        ))
    };
    let plain_digest = result.plain_digest().ok_or_else(ended)?;
    let pubopts = result.public_options().ok_or_else(ended)?;
    Ok(Sealed {
        key,
        digest,
        size,
        plain_digest,
        pubopts,
    })
}

/// The descriptor of a sealed layer: wrapped keys and public options added,
/// and the TOC anchor hidden in the private options when there is one.
fn describe(
    ctx: &LayerCtx<'_>,
    opts: &EncryptOptions<'_>,
    sealed: Sealed,
    mt: &str,
    toc_digest: Option<String>,
) -> Result<Descriptor, Error> {
    let mut private = sealed.key.to_options(sealed.plain_digest);
    if let Some(toc) = toc_digest {
        private
            .cipheroptions
            .insert(TOC_DIGEST_OPTION.to_string(), toc.into_bytes());
    }
    let mut annotations = ctx.desc.annotations().clone().unwrap_or_default();
    // A converted layer's old public eStargz anchor must not survive encryption.
    annotations.remove(TOC_DIGEST_ANNOTATION);
    annotations.remove(UNCOMPRESSED_SIZE_ANNOTATION);
    envelope::merge(
        &mut annotations,
        envelope::wrap(opts.recipients, &private, opts.ring)?,
    );
    annotations.insert(PUBOPTS.to_string(), sealed.pubopts.to_annotation());
    let enc_mt = media::encrypted(mt).unwrap_or_else(|| mt.to_string());
    let mut nd = Descriptor::new(MediaType::from(enc_mt.as_str()), sealed.size, sealed.digest);
    nd.set_annotations(Some(annotations));
    Ok(nd)
}

fn encrypt_layer(ctx: &LayerCtx<'_>, opts: &EncryptOptions<'_>) -> Result<Descriptor, Error> {
    let mt = ctx.desc.media_type().to_string();
    // The verifying source already hashes the plaintext: its digest is the descriptor's.
    let sealed = seal(
        ctx,
        verified_source(ctx)?,
        &mt,
        Some(ctx.desc.digest().as_ref()),
    )?;
    describe(ctx, opts, sealed, &mt, None)
}

/// Converts a layer to eStargz; encrypts it when there are recipients, with
/// the TOC digest hidden in the private options (a public TOC digest would
/// leak a hash of the file list); otherwise anchors it with the standard
/// annotation.
fn to_estargz(ctx: &LayerCtx<'_>, opts: &EncryptOptions<'_>) -> Result<Replaced, Error> {
    if opts.recipients.is_empty() {
        let (stored, c) =
            estargz::convert_layer(ctx, opts.prioritized, opts.chunk_size, |mut reader| {
                ctx.dst.put_blob(&mut reader, media::OCI_LAYER_GZIP)
            })?;
        // The converter's error, if any, says more than the upload's: it
        // came first.
        let (d, size) = stored?;
        let mut annotations = ctx.desc.annotations().clone().unwrap_or_default();
        annotations.insert(TOC_DIGEST_ANNOTATION.to_string(), c.toc_digest);
        annotations.insert(
            UNCOMPRESSED_SIZE_ANNOTATION.to_string(),
            c.uncompressed_size.to_string(),
        );
        let mut nd = Descriptor::new(MediaType::from(media::OCI_LAYER_GZIP), size, d);
        nd.set_annotations(Some(annotations));
        return Ok(Replaced {
            desc: nd,
            diff_id: Some(c.diff_id),
        });
    }
    let (sealed, c) = estargz::convert_layer(ctx, opts.prioritized, opts.chunk_size, |reader| {
        seal(ctx, Box::new(reader), media::OCI_LAYER_GZIP, None)
    })?;
    let desc = describe(
        ctx,
        opts,
        sealed?,
        media::OCI_LAYER_GZIP,
        Some(c.toc_digest),
    )?;
    Ok(Replaced {
        desc,
        diff_id: Some(c.diff_id),
    })
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
    let mut hook = |ctx: &LayerCtx<'_>| -> Result<Option<Replaced>, Error> {
        let d = ctx.desc;
        let mt = d.media_type().to_string();
        if !ctx.picked(&sel.layers) || !media::is_encrypted(&mt) {
            return Ok(None);
        }
        let layer = d.digest().to_string();
        let annotations = d.annotations().clone().unwrap_or_default();
        let (opts, pubopts) = layer_keys(&annotations, ring, &layer)?;
        let key = LayerKey::from_options(&opts);
        // The HMAC alone does not pin the content: every recipient holds its
        // key. The manifest's digest does.
        let mut plain = key.decrypt_reader(verified_source(ctx)?, &pubopts.hmac, None, &layer);
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
        Ok(Some(nd.into()))
    };
    let root = copy_image(src, dst, sel.platform.as_ref(), progress, &mut hook, where_)?;
    Ok((root, changes))
}

//! `lazycrypt index`: builds a seek index for each encrypted tar or tar+gzip
//! layer the given keys open, seals it under that layer's key and publishes
//! it beside the image as an OCI referrer (docs/seek-index.md). The image
//! itself is not changed.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result, bail};

use super::common::{DecryptionKeyArgs, TransportArgs, image_ref};
use crate::crypto::Error as CryptoError;
use crate::crypto::cipher::LayerKey;
use crate::crypto::envelope::layer_keys;
use crate::layer::index::Unmetered;
use crate::layer::seekindex::artifact::{self, ARTIFACT_TYPE, Blob};
use crate::layer::seekindex::build;
use crate::layer::seekindex::head::{Compression, Expect};
use crate::layer::seekindex::seal::Binding;
use crate::layer::seekindex::serve;
use crate::oci::chain::Chain;
use crate::oci::digest::{Digest, VerifyingReader};
use crate::oci::image::Image;
use crate::oci::platform::Platform;
use crate::oci::transport::{ImageDest, ImageSource, RawManifest, open_dest, open_source};
use crate::oci::{Descriptor, media};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub keys: DecryptionKeyArgs,
    /// Only this platform, OS/ARCH[/VARIANT]. Default: all platforms.
    #[arg(long)]
    pub platform: Option<String>,
    #[command(flatten)]
    pub transport: TransportArgs,
    /// Publish even when an artifact already lists every layer indexed.
    #[arg(long)]
    pub force: bool,
    /// A file listing the paths a workload reads first, one per line (as
    /// `encrypt --estargz --prioritize` takes): the checkpoints the index
    /// can afford go just before their data first, and nodes fetch them as
    /// they mount the layer. The image is not changed.
    #[arg(long, value_name = "FILE")]
    pub prioritize: Option<std::path::PathBuf>,
    /// The image: docker://HOST/REPO[:TAG|@DIGEST] or oci:DIR[:TAG].
    pub image: String,
}

/// What became of one layer.
enum Outcome {
    Indexed {
        blobs: Vec<Blob>,
        line: String,
    },
    /// No key given opens it.
    NoKey,
    Skipped(String),
}

pub fn run(a: Args) -> Result<()> {
    let ring = a.keys.ring()?;
    let first = match &a.prioritize {
        Some(f) => super::common::prioritized(f)?,
        None => Default::default(),
    };
    let r = image_ref(&a.image)?;
    let transport = a.transport.options();
    let src: Arc<dyn ImageSource> = Arc::from(open_source(&r, &transport)?);
    let image = Image::load(src.as_ref(), &a.image)?;
    let want = a.platform.as_deref().map(Platform::parse).transpose()?;
    let mut dest: Option<Box<dyn ImageDest>> = None;
    let (mut indexed, mut encrypted, mut keyless) = (0, 0, 0);
    for p in image
        .manifests
        .iter()
        .filter(|p| Image::selected(p, want.as_ref()))
    {
        let mut blobs = Vec::new();
        for (i, d) in p.manifest.layers().iter().enumerate() {
            let mt = d.media_type().to_string();
            if media::is_encrypted(&mt) {
                encrypted += 1;
            }
            match layer(src.as_ref(), d, &ring, &p.raw.digest, &first)? {
                Outcome::Indexed { blobs: b, line } => {
                    println!("{} layer {i} {}: {line}", p.platform, d.digest());
                    let dest = match &dest {
                        Some(d) => d,
                        None => dest.insert(open_dest(&r, &transport)?),
                    };
                    push(dest.as_ref(), &b)?;
                    blobs.extend(b);
                    indexed += 1;
                }
                Outcome::NoKey => {
                    keyless += 1;
                    println!(
                        "{} layer {i} {}: not indexed: no key given opens it (missing private key \
                         needed for decryption)",
                        p.platform,
                        d.digest()
                    );
                }
                Outcome::Skipped(why) => {
                    println!(
                        "{} layer {i} {}: not indexed: {why}",
                        p.platform,
                        d.digest()
                    );
                }
            }
        }
        if blobs.is_empty() {
            continue;
        }
        let dest = dest.as_ref().expect("opened for the blobs");
        if !a.force && already_listed(src.as_ref(), &p.raw, &blobs) {
            println!(
                "{}: a seek index artifact for {} already lists these layers (--force publishes anyway)",
                p.platform, p.raw.digest
            );
            continue;
        }
        let artifact = artifact::write(&p.raw, &blobs, &now());
        dest.put_referrer(&artifact, &p.raw.digest, ARTIFACT_TYPE)
            .with_context(|| format!("publishing the seek index of {}", p.raw.digest))?;
        println!(
            "{}: published seek index {} for manifest {} ({} bytes in {} blobs)",
            p.platform,
            artifact.digest,
            p.raw.digest,
            blobs.iter().map(|b| b.size).sum::<u64>(),
            blobs.len()
        );
    }
    if indexed == 0 {
        if encrypted == 0 {
            bail!("{}: no encrypted layers to index", a.image);
        }
        if keyless == encrypted {
            bail!(
                "{}: missing private key needed for decryption: no key given opens its encrypted layers",
                a.image
            );
        }
        bail!(
            "{}: none of its encrypted layers can be indexed (tar and tar+gzip layers without a TOC can)",
            a.image
        );
    }
    Ok(())
}

/// Whether an artifact `src` already has for `manifest` lists every layer
/// in `blobs`.
fn already_listed(src: &dyn ImageSource, manifest: &RawManifest, blobs: &[Blob]) -> bool {
    let Ok((found, _)) = artifact::find(src, &manifest.digest) else {
        return false;
    };
    found.iter().any(|a| {
        blobs
            .iter()
            .all(|b| a.layers.contains_key(&b.layer.to_string()))
    })
}

/// Indexes one layer, if it is an encrypted tar or tar+gzip layer a key
/// opens and has no TOC.
fn layer(
    src: &dyn ImageSource,
    d: &Descriptor,
    ring: &crate::crypto::recipient::KeyRing,
    manifest: &Digest,
    first: &std::collections::HashSet<String>,
) -> Result<Outcome> {
    let mt = d.media_type().to_string();
    if !media::is_encrypted(&mt) {
        return Ok(Outcome::Skipped("not encrypted".into()));
    }
    let plain = media::decrypted(&mt);
    let compression = if plain.ends_with("tar+gzip") || plain.ends_with("tar.gzip") {
        Compression::Gzip
    } else if plain.ends_with(".tar") || plain.ends_with("tar") {
        Compression::None
    } else {
        return Ok(Outcome::Skipped(format!(
            "{plain}: only tar and tar+gzip layers have cheap checkpoints"
        )));
    };
    let what = d.digest().to_string();
    let annotations = d.annotations().clone().unwrap_or_default();
    let (private, _) = match layer_keys(&annotations, ring, &what) {
        Ok(k) => k,
        Err(CryptoError::MissingKey(_)) => {
            return Ok(Outcome::NoKey);
        }
        Err(e) => return Err(e.into()),
    };
    if private.toc_digest().is_some() {
        return Ok(Outcome::Skipped(
            "it is encrypted eStargz, already served lazily by its TOC".into(),
        ));
    }
    let started = Instant::now();
    let spans = Arc::new(Mutex::new(Chain::new(build::SPAN)));
    let raw = src
        .blob(d)
        .with_context(|| format!("fetching layer {what}"))?;
    // The blob's digest pins its bytes (checked at its end, before
    // anything built from them is sealed): ocicrypt's HMAC, another
    // SHA-256 pass, adds nothing here. The span digests are the digest's
    // own chaining values: one pass for both.
    let verified = VerifyingReader::chained(
        raw,
        d.digest().clone(),
        Some(d.size()),
        &what,
        spans.clone(),
    );
    let key = LayerKey::from_options(&private);
    let plain = key.decrypt_reader_pinned(verified, Vec::new());
    let built = build::build(plain, compression, d.digest(), &spans, &Unmetered, first)?;
    let sealed = build::seal(&built, &private.key()[..], manifest, d.digest());
    // What readers would refuse is not published: the head is opened and
    // checked here as a node will.
    let mut raw = [0u8; 32];
    hex::decode_to_slice(d.digest().digest(), &mut raw)?;
    let expect = Expect {
        layer: raw,
        blob_size: d.size(),
        compression,
    };
    let binding = Binding {
        manifest,
        layer: d.digest(),
    };
    if let Err(e) = serve::unseal(
        &sealed.head,
        &private.key()[..],
        binding,
        &expect,
        &Unmetered,
    ) {
        return Ok(Outcome::Skipped(format!(
            "its index would not be usable: {e}"
        )));
    }
    let secs = started.elapsed().as_secs_f64();
    let mut blobs = vec![Blob {
        media_type: artifact::HEAD_MEDIA_TYPE,
        digest: crate::oci::digest::of(&sealed.head),
        size: sealed.head.len() as u64,
        layer: d.digest().clone(),
        bytes: sealed.head,
    }];
    if let Some(w) = sealed.windows {
        blobs.push(Blob {
            media_type: artifact::WINDOWS_MEDIA_TYPE,
            digest: crate::oci::digest::of(&w),
            size: w.len() as u64,
            layer: d.digest().clone(),
            bytes: w,
        });
    }
    let size: u64 = blobs.iter().map(|b| b.size).sum();
    let spacing = built.uncompressed() / (built.checkpoint_count().max(1) as u64);
    if compression == Compression::Gzip && spacing > 4 * build::SPACING {
        eprintln!(
            "lazycrypt index: layer {what}: its deflate blocks are long (a checkpoint every {} MiB              on average): a read fetches and inflates up to that much; gzip writers that end              blocks more often (Go's, zlib's levels 2 and up) give finer ones",
            spacing >> 20
        );
    }
    let line = format!(
        "indexed {} entries ({} prioritized), {} checkpoints; artifact blobs {size} bytes ({:.2}% of the layer); {:.2}s, {:.2} GB/s of layer",
        built.entry_count(),
        built.prioritized_count(),
        built.checkpoint_count(),
        100.0 * size as f64 / d.size().max(1) as f64,
        secs,
        d.size() as f64 / secs.max(1e-9) / 1e9,
    );
    Ok(Outcome::Indexed { blobs, line })
}

/// Pushes the blobs (and the empty config, if missing) to `dest`.
fn push(dest: &dyn ImageDest, blobs: &[Blob]) -> Result<()> {
    let empty = crate::oci::digest::of(artifact::EMPTY_CONFIG);
    if !dest.has_blob(&empty)? {
        dest.put_blob(&mut &artifact::EMPTY_CONFIG[..], artifact::EMPTY_MEDIA_TYPE)?;
    }
    for b in blobs {
        if !dest.has_blob(&b.digest)? {
            dest.put_blob(&mut &b.bytes[..], b.media_type)?;
        }
    }
    Ok(())
}

/// Now, as RFC 3339 UTC.
fn now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    crate::layer::estargz::toc::rfc3339(secs)
}

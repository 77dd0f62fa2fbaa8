//! `lazycrypt encrypt` and `lazycrypt decrypt`.

use std::collections::HashSet;
use std::io::Read as _;
use std::path::Path;

use anyhow::{Context, Result};
use clap::Args;
use zeroize::Zeroizing;

use super::common::{
    Bars, DecryptionKeyArgs, KeyFileArgs, PolicyArgs, TransportArgs, image_ref, key_ring,
    verify_ref,
};
use crate::convert::{self, LayerChange, Selection};
use crate::crypto::{KeyRing, Recipient};
use crate::layer::estargz::CHUNK_SIZE;
use crate::layer::index::MAX_CHUNK;
use crate::oci::platform::Platform;
use crate::oci::reference::ImageRef;
use crate::oci::registry::Registry;
use crate::oci::signature::{MAX_KEY_PEM, Passphrase, Signer, attach_classic};
use crate::oci::transport::{
    ImageDest, ImageSource, PinnedRoot, RawManifest, open_dest, open_source,
};
use crate::oci::{ImageIndex, media};

/// Layer and platform selection, as imgcrypt's `--layer` and `--platform`.
#[derive(Args, Clone)]
pub struct SelectArgs {
    /// Only this layer index (repeatable; -1 is the top layer). Default: all layers.
    #[arg(long = "layer", value_name = "N", allow_negative_numbers = true)]
    pub layers: Vec<i64>,
    /// Only this platform, OS/ARCH[/VARIANT]. Default: all platforms.
    #[arg(long)]
    pub platform: Option<String>,
}

impl SelectArgs {
    fn selection(&self) -> Result<Selection> {
        let platform = self.platform.as_deref().map(Platform::parse).transpose()?;
        Ok(Selection {
            layers: self.layers.clone(),
            platform,
        })
    }
}

#[derive(Args)]
pub struct EncryptArgs {
    /// jwe:PUBKEY, pkcs7:CERT, pgp:KEYFILE or provider:NAME[:ARG] (repeatable).
    #[arg(
        long = "recipient",
        short = 'r',
        value_name = "SCHEME:VALUE",
        required_unless_present = "estargz"
    )]
    pub recipients: Vec<String>,
    /// Convert layers to eStargz (1 MiB chunks by default) so they can be mounted lazily;
    /// the TOC digest goes into the encrypted private options. Without
    /// recipients, writes plain eStargz anchored by its TOC digest annotation.
    #[arg(long)]
    pub estargz: bool,
    /// With --estargz: a file listing the paths a workload reads first, one
    /// per line. They go first in their layer, before the prefetch landmark,
    /// and are fetched together when the layer is mounted.
    #[arg(long, value_name = "FILE", requires = "estargz")]
    pub prioritize: Option<std::path::PathBuf>,
    /// With --estargz: the chunk size, the unit a lazy read fetches and
    /// verifies (4K to 64M).
    #[arg(long, value_name = "SIZE", requires = "estargz", value_parser = parse_chunk_size)]
    pub chunk_size: Option<u64>,
    #[arg(long = "key", value_name = "FILE", help = super::common::KEY_HELP)]
    pub keys: Vec<String>,
    #[command(flatten)]
    pub key_files: KeyFileArgs,
    #[command(flatten)]
    pub select: SelectArgs,
    #[command(flatten)]
    pub transport: TransportArgs,
    /// Sign the pushed image with this cosign private key (PEM "ENCRYPTED
    /// SIGSTORE PRIVATE KEY"), in cosign's classic format, as `skopeo copy
    /// --sign-by-sigstore-private-key` does. docker:// destinations only.
    #[arg(long, value_name = "KEY")]
    pub sign_by_sigstore_private_key: Option<std::path::PathBuf>,
    /// The signing key's passphrase: this file's first line (default: $COSIGN_PASSWORD).
    #[arg(long, value_name = "FILE", requires = "sign_by_sigstore_private_key")]
    pub sign_passphrase_file: Option<std::path::PathBuf>,
    /// Print a JSON summary.
    #[arg(long)]
    pub json: bool,
    /// Source image: oci:DIR[:TAG] or docker://HOST/REPO[:TAG|@DIGEST].
    pub src: String,
    /// Destination image.
    pub dst: String,
}

#[derive(Args)]
pub struct DecryptArgs {
    #[command(flatten)]
    pub keys: DecryptionKeyArgs,
    #[command(flatten)]
    pub select: SelectArgs,
    #[command(flatten)]
    pub transport: TransportArgs,
    /// The policy the source image's signatures must satisfy; checked on
    /// the digest of its top-level manifest (or index), as skopeo does.
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// Print a JSON summary.
    #[arg(long)]
    pub json: bool,
    pub src: String,
    pub dst: String,
}

pub fn encrypt(a: EncryptArgs) -> Result<()> {
    // The key opens before anything is pushed: a wrong passphrase leaves no
    // unsigned image behind.
    let signer = match &a.sign_by_sigstore_private_key {
        Some(key) => Some(signer(key, a.sign_passphrase_file.as_deref(), &a.dst)?),
        None => None,
    };
    let mut recipients = Vec::new();
    for r in &a.recipients {
        recipients.extend(Recipient::parse(r)?);
    }
    let ring = key_ring(&a.keys, None, a.key_files)?;
    let prioritized = match &a.prioritize {
        Some(f) => super::common::prioritized(f)?,
        None => HashSet::new(),
    };
    let opts = convert::EncryptOptions {
        recipients: &recipients,
        ring: &ring,
        estargz: a.estargz,
        prioritized: &prioritized,
        chunk_size: a.chunk_size.unwrap_or(CHUNK_SIZE),
    };
    run(
        &a.src,
        &a.dst,
        &a.transport,
        a.json,
        signer.as_ref(),
        "encrypting",
        |src, dst, bars, where_| {
            Ok(convert::encrypt(
                src,
                dst,
                &opts,
                &a.select.selection()?,
                bars,
                where_,
            )?)
        },
    )
}

fn parse_chunk_size(s: &str) -> Result<u64, String> {
    let n = super::mount::parse_size_at_least(s, 4 << 10, "4K")?;
    if n > MAX_CHUNK {
        return Err(format!("chunk size {s:?} is over 64M"));
    }
    Ok(n)
}

pub fn decrypt(a: DecryptArgs) -> Result<()> {
    let ring: KeyRing = a.keys.ring()?;
    let policy = a.policy.load()?;
    let image = image_ref(&a.src)?;
    run(
        &a.src,
        &a.dst,
        &a.transport,
        a.json,
        None,
        "decrypting",
        |src, dst, bars, where_| {
            // Before any layer is fetched or key unwrapped; the copy reads
            // the very manifest verified, not the tag again.
            let root = src.root()?;
            verify_ref(policy.as_ref(), &image, &root.digest, src)?;
            let src = PinnedRoot::new(src, root);
            Ok(convert::decrypt(
                &src,
                dst,
                &ring,
                &a.select.selection()?,
                bars,
                where_,
            )?)
        },
    )
}

/// The cosign key `key`, opened with the passphrase from `passphrase_file`
/// or `$COSIGN_PASSWORD` (as cosign reads it); `dst` must be a registry.
fn signer(key: &Path, passphrase_file: Option<&Path>, dst: &str) -> Result<Signer> {
    const FLAG: &str = "--sign-by-sigstore-private-key";
    if !matches!(image_ref(dst)?, ImageRef::Registry(_)) {
        anyhow::bail!(
            "{FLAG}: {dst} is not a docker:// destination; signatures are stored in a registry repository"
        );
    }
    let passphrase = match passphrase_file {
        Some(f) => Passphrase::from_file_contents(Zeroizing::new(
            std::fs::read(f).with_context(|| format!("--sign-passphrase-file {}", f.display()))?,
        )),
        None => match std::env::var_os("COSIGN_PASSWORD") {
            Some(p) => Passphrase::new(Zeroizing::new(p.into_encoded_bytes())),
            None => anyhow::bail!(
                "{FLAG} {}: no passphrase (give --sign-passphrase-file FILE or set COSIGN_PASSWORD)",
                key.display()
            ),
        },
    };
    let mut pem = Zeroizing::new(Vec::new());
    std::fs::File::open(key)
        .and_then(|f| f.take(MAX_KEY_PEM as u64 + 1).read_to_end(&mut pem))
        .with_context(|| format!("{FLAG} {}", key.display()))?;
    Ok(Signer::from_cosign_pem(
        &pem,
        &passphrase,
        &key.display().to_string(),
    )?)
}

#[allow(clippy::too_many_arguments)]
fn run<F>(
    src: &str,
    dst: &str,
    t: &TransportArgs,
    json: bool,
    signer: Option<&Signer>,
    verb: &str,
    op: F,
) -> Result<()>
where
    F: FnOnce(
        &dyn ImageSource,
        &dyn ImageDest,
        &Bars,
        &str,
    ) -> Result<(RawManifest, Vec<LayerChange>)>,
{
    let (sref, dref) = (image_ref(src)?, image_ref(dst)?);
    let opts = t.options();
    let source = open_source(&sref, &opts)?;
    let dest = open_dest(&dref, &opts)?;
    let bars = Bars::new();
    let (root, changes) =
        op(source.as_ref(), dest.as_ref(), &bars, src).with_context(|| format!("{verb} {src}"))?;
    let signed = match (signer, &dref) {
        (Some(signer), ImageRef::Registry(r)) => {
            let repo = Registry::new(r.clone(), &opts.registry)?;
            // The name as pushed, tag included, as skopeo signs it: the
            // policies podman and CRI-O ship by default (no signedIdentity,
            // so matchRepoDigestOrExact) accept it; a repository-only name,
            // cosign's, only matchRepository does.
            let identity = if r.is_digest() {
                format!("{}/{}", r.host, r.repo)
            } else {
                format!("{}/{}:{}", r.host, r.repo, r.reference)
            };
            // A multi-platform image's platform manifests too, as `cosign
            // sign --recursive` does: a node verifies the one it runs.
            let mut digests = vec![root.digest.clone()];
            if media::is_index(&root.media_type) {
                let index: ImageIndex = serde_json::from_slice(&root.bytes)
                    .with_context(|| format!("signing {dst}: its index"))?;
                digests.extend(index.manifests().iter().map(|m| m.digest().clone()));
            }
            let mut attached = Vec::with_capacity(digests.len());
            for d in digests {
                let a = attach_classic(&repo, &repo, signer, &identity, &d)
                    .with_context(|| format!("signing {dst} ({d})"))?;
                attached.push((d, a));
            }
            attached
        }
        _ => Vec::new(),
    };
    if json {
        let layers: Vec<_> = changes
            .iter()
            .map(|c| serde_json::json!({"platform": c.platform, "index": c.index, "from": c.from, "to": c.to, "action": c.action}))
            .collect();
        let mut summary =
            serde_json::json!({"image": dst, "digest": root.digest.to_string(), "layers": layers});
        if let Some((_, s)) = signed.first() {
            summary["signature"] = serde_json::json!({"tag": s.tag, "manifest": s.manifest.to_string(), "signatures": s.signatures});
        }
        if signed.len() > 1 {
            summary["platform_signatures"] = signed[1..]
                .iter()
                .map(|(d, s)| serde_json::json!({"digest": d.to_string(), "tag": s.tag, "manifest": s.manifest.to_string(), "signatures": s.signatures}))
                .collect();
        }
        println!("{summary}");
    } else {
        for c in &changes {
            println!(
                "{} layer {} ({}) {} -> {}",
                c.action, c.index, c.platform, c.from, c.to
            );
        }
        println!("wrote {dst} ({})", root.digest);
        for (d, s) in &signed {
            println!(
                "signed {} in cosign's classic format: tag {} ({}, {} signature{})",
                d,
                s.tag,
                s.manifest,
                s.signatures,
                if s.signatures == 1 { "" } else { "s" }
            );
        }
    }
    Ok(())
}

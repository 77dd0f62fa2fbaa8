//! `lazycrypt mount` and `lazycrypt umount`: an encrypted image as a
//! read-only (or tmpfs-backed writable) overlay, served lazily over FUSE.

use crate::layer::stream::sealed::Scratch;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args as ClapArgs;
use sha2::{Digest, Sha256};

use super::common::{DecryptionKeyArgs, PolicyArgs, TransportArgs, image_ref, verify_ref};
use crate::fs::ReadAhead;
use crate::mount::open::OpenOptions;
use crate::mount::seek::Found;
use crate::mount::session::{MountSpec, clean_stale, mount};
use crate::oci::image::Image;
use crate::oci::platform::Platform;
use crate::oci::retry::Timeouts;
use crate::oci::transport::{ImageSource, open_source};

#[derive(ClapArgs)]
pub struct Args {
    #[command(flatten)]
    pub keys: DecryptionKeyArgs,
    /// Plaintext chunk cache budget in memory (K, M, G suffixes).
    #[arg(long, default_value = "256M", value_parser = parse_size)]
    pub cache_size: u64,
    /// Disk the sealed (encrypted) copies of zstd layers' tar streams may
    /// take together (K, M, G suffixes).
    #[arg(long, default_value = "16G", value_parser = parse_size)]
    pub sealed_size: u64,
    /// State directory; ciphertext blobs are cached under `<root>/blobs`.
    #[arg(long, default_value = "/var/lib/lazycrypt")]
    pub root: PathBuf,
    /// Where the per-layer FUSE mounts live while mounted.
    #[arg(long, default_value = "/run/lazycrypt")]
    pub run_dir: PathBuf,
    /// Give the overlay a writable upper layer on a tmpfs.
    #[arg(long)]
    pub writable: bool,
    /// Honour set-user-ID/set-group-ID bits and device files in the image.
    /// By default the overlay is mounted `nosuid,nodev`: an image must not
    /// hand a local user a root shell or a raw device.
    #[arg(long)]
    pub allow_suid_dev: bool,
    /// Print bytes fetched, chunks decrypted and cache hits at unmount.
    #[arg(long)]
    pub stats: bool,
    /// Serve eStargz layers that have no TOC anchor before their whole blob
    /// is verified.
    #[arg(long)]
    pub allow_unverified_lazy: bool,
    /// Do not look for seek indexes published beside the image (`lazycrypt
    /// index`): layers without a TOC are then fetched whole before use.
    #[arg(long)]
    pub no_seek_index: bool,
    /// Platform to mount from a multi-platform image (default: this host's).
    #[arg(long)]
    pub platform: Option<String>,
    #[command(flatten)]
    pub transport: TransportArgs,
    #[command(flatten)]
    pub timeouts: TimeoutArgs,
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// The image: oci:DIR[:TAG] or docker://HOST/REPO[:TAG|@DIGEST].
    pub image: String,
    /// An existing empty directory.
    pub mountpoint: PathBuf,
}

/// How long registries may take (`mount` and `serve`).
#[derive(ClapArgs, Clone, Copy, Default)]
pub struct TimeoutArgs {
    /// Seconds a registry request whose answer has a bounded size (a
    /// manifest, a token, a range of a blob) may take, retries included. A
    /// file read waiting on the registry fails with EIO after this long
    /// [default: 30].
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub registry_timeout: Option<u64>,
    /// Seconds a registry may stay silent in the middle of a request before
    /// the try fails (and another follows while the request has time); a
    /// whole-blob download must also bring 64 KiB in each such stretch
    /// [default: 15].
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub registry_read_timeout: Option<u64>,
    /// Seconds connecting to a registry may take, TLS included [default: 10].
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub registry_connect_timeout: Option<u64>,
}

impl TimeoutArgs {
    /// These flags where given, else `fallback`'s (a configuration file's
    /// fields), else the defaults. A field of 0 is refused, naming it.
    pub fn timeouts(self, fallback: TimeoutArgs) -> Result<Timeouts> {
        let d = Timeouts::default();
        let pick = |name: &str, flag: Option<u64>, file: Option<u64>, default: Duration| match flag
            .or(file)
        {
            Some(0) => bail!("{name} must be at least 1 second"),
            Some(s) => Ok(Duration::from_secs(s)),
            None => Ok(default),
        };
        Ok(Timeouts {
            request: pick(
                "registry_timeout",
                self.registry_timeout,
                fallback.registry_timeout,
                d.request,
            )?,
            read: pick(
                "registry_read_timeout",
                self.registry_read_timeout,
                fallback.registry_read_timeout,
                d.read,
            )?,
            connect: pick(
                "registry_connect_timeout",
                self.registry_connect_timeout,
                fallback.registry_connect_timeout,
                d.connect,
            )?,
        })
    }
}

#[derive(ClapArgs)]
pub struct UmountArgs {
    /// Where the state of mounts lives (as given to `mount`).
    #[arg(long, default_value = "/run/lazycrypt")]
    pub run_dir: PathBuf,
    /// The mount point given to `lazycrypt mount`.
    pub mountpoint: PathBuf,
}

/// `256M` → bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    parse_size_at_least(s, 1 << 20, "1M")
}

/// A read-ahead: `auto`, or a size from 4K to 1G.
pub fn parse_read_ahead(s: &str) -> Result<ReadAhead, String> {
    if s.trim().eq_ignore_ascii_case("auto") {
        return Ok(ReadAhead::Auto);
    }
    let n = parse_size_at_least(s, 4 << 10, "4K")?;
    if n > 1 << 30 {
        return Err(format!("read-ahead {s:?} is over 1G"));
    }
    Ok(ReadAhead::Kib((n >> 10) as u32))
}

pub fn parse_size_at_least(s: &str, least: u64, named: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                _ => return Err(format!("unknown size suffix in {s:?} (use K, M or G)")),
            };
            (&t[..i], m)
        }
        _ => (t, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .filter(|&n| n >= least)
        .ok_or_else(|| format!("invalid size {s:?} (at least {named})"))
}

/// This mount's runtime directory: named by a hash of the mount point, so
/// `umount` finds it again.
pub(super) fn run_dir_for(run_root: &Path, target: &Path) -> PathBuf {
    let h = Sha256::digest(target.as_os_str().as_encoded_bytes());
    run_root.join("mounts").join(&hex::encode(h)[..16])
}

fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

pub fn run(a: Args) -> Result<()> {
    let target = a
        .mountpoint
        .canonicalize()
        .with_context(|| format!("mount point {}", a.mountpoint.display()))?;
    if !target.is_dir() {
        bail!("mount point {} is not a directory", target.display());
    }
    // What goes in them only root may reach (ciphertext, layer mounts):
    // the directories the operator named are made 0700 if missing, and the
    // ones lazycrypt keeps inside them are made or tightened to 0700.
    for (d, ours) in [(&a.root, "blobs"), (&a.run_dir, "mounts")] {
        crate::private::ensure_dir(d)
            .and_then(|()| crate::private::dir(&d.join(ours)))
            .with_context(|| format!("state directory {}", d.display()))?;
    }
    let run_dir = run_dir_for(&a.run_dir, &target);
    if let Ok(pid) = std::fs::read_to_string(run_dir.join("pid")) {
        match pid.trim().parse::<i32>() {
            Ok(p) if alive(p) => bail!("{} is already mounted by process {p}", target.display()),
            _ => clean_stale(&run_dir, &target).context("cleaning up after an earlier mount")?,
        }
    }
    let policy = a.policy.load()?;
    let r = image_ref(&a.image)?;
    let mut transport = a.transport.options();
    transport.registry.timeouts = a.timeouts.timeouts(TimeoutArgs::default())?;
    let src: Arc<dyn ImageSource> = Arc::from(open_source(&r, &transport)?);
    let image = Image::load(src.as_ref(), &a.image)?;
    let want = match &a.platform {
        Some(p) => Platform::parse(p)?,
        None => Platform::host(),
    };
    let chosen = match image.manifests.as_slice() {
        [one] => one,
        many => many
            .iter()
            .find(|p| Image::selected(p, Some(&want)))
            .with_context(|| format!("{}: no manifest for platform {want}", a.image))?,
    };
    // Before any key is read or any layer fetched.
    verify_ref(policy.as_ref(), &r, &chosen.raw.digest, src.as_ref())?;
    let ring = a.keys.ring()?;
    let layers = chosen.manifest.layers().clone();
    let n = layers.len();
    let encrypted = layers
        .iter()
        .any(|d| crate::oci::media::is_encrypted(d.media_type().as_ref()));
    let seek =
        (encrypted && !a.no_seek_index).then(|| Found::find(src.as_ref(), &chosen.raw.digest));
    let spec = MountSpec {
        layers,
        ring,
        open: OpenOptions {
            cache_dir: a.root.join("blobs"),
            scratch: Scratch::new(a.root.join("blobs").join("sealed"), a.sealed_size),
            allow_unverified_lazy: a.allow_unverified_lazy,
        },
        cache_bytes: a.cache_size,
        writable: a.writable,
        allow_suid_dev: a.allow_suid_dev,
        run_dir: run_dir.clone(),
        target: target.clone(),
        seek,
    };
    let started = Instant::now();
    let mounted = mount(src, spec).with_context(|| format!("mounting {}", a.image))?;
    {
        use std::io::Write;
        crate::private::open(
            &run_dir.join("pid"),
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true),
        )?
        .write_all(std::process::id().to_string().as_bytes())?;
    }
    println!(
        "mounted {} at {} ({n} layers, {} ms)",
        a.image,
        target.display(),
        started.elapsed().as_millis()
    );
    wait_for_signal()?;
    let stats = mounted.stats();
    mounted
        .unmount()
        .with_context(|| format!("unmounting {}", target.display()))?;
    if a.stats {
        println!("{stats}");
    }
    println!("unmounted {}", target.display());
    Ok(())
}

fn wait_for_signal() -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        Ok(())
    })
}

pub fn umount(a: UmountArgs) -> Result<()> {
    let target = a
        .mountpoint
        .canonicalize()
        .with_context(|| format!("mount point {}", a.mountpoint.display()))?;
    let run_dir = run_dir_for(&a.run_dir, &target);
    let pid = std::fs::read_to_string(run_dir.join("pid"))
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok())
        .filter(|&p| alive(p));
    let Some(pid) = pid else {
        if run_dir.exists() {
            clean_stale(&run_dir, &target)?;
            return Ok(());
        }
        bail!("{} is not mounted by lazycrypt", target.display());
    };
    // SAFETY: plain kill(2) of a process we found by its pid file.
    if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
        bail!(
            "signalling process {pid}: {}",
            std::io::Error::last_os_error()
        );
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while alive(pid) && run_dir.exists() {
        if Instant::now() > deadline {
            bail!("process {pid} did not unmount {} in 60 s", target.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

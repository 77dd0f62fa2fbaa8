//! An image mounted: every layer opened and served by its own FUSE file
//! system under a private runtime directory, and an overlay of them at the
//! target. Dropping it (or [`Mounted::unmount`]) takes everything down in
//! reverse order and zeroizes the chunk cache.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::layer::LayerMount;
use super::open::{Mode, OpenOptions, open_layer};
use super::seek::Found;
use super::sys;
use crate::cache::chunks::{ChunkCache, Reservation, Stats};
use crate::crypto::recipient::KeyRing;
use crate::fs::ReadAhead;
use crate::layer::index::Layer;
use crate::oci::Descriptor;
use crate::oci::transport::ImageSource;
use crate::private;

/// What to mount and how.
pub struct MountSpec {
    pub layers: Vec<Descriptor>,
    pub ring: KeyRing,
    pub open: OpenOptions,
    /// Plaintext cache budget in bytes.
    pub cache_bytes: u64,
    /// Give the overlay a writable upper layer on a tmpfs.
    pub writable: bool,
    /// Honour set-user-ID bits and device files in the image (off: the
    /// overlay is mounted `nosuid,nodev`, so an image cannot hand a local
    /// user a root shell or a raw disk).
    pub allow_suid_dev: bool,
    /// A private directory for the layer mounts; made, and removed at unmount.
    pub run_dir: PathBuf,
    pub target: PathBuf,
    /// The seek indexes found for the image's manifest, if looked for.
    pub seek: Option<Found>,
}

/// A mounted image.
pub struct Mounted {
    target: PathBuf,
    run_dir: PathBuf,
    sessions: Vec<LayerMount>,
    layers: Vec<(Arc<Layer>, Mode)>,
    cache: Arc<ChunkCache>,
    tmpfs: Option<PathBuf>,
    overlay: bool,
}

/// What `--stats` reports.
#[derive(Debug, Clone)]
pub struct MountStats {
    /// Bytes fetched from the image source (registry or layout).
    pub fetched: u64,
    pub cache: Stats,
    pub modes: Vec<Mode>,
}

impl std::fmt::Display for MountStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let count = |m: Mode| self.modes.iter().filter(|&&x| x == m).count();
        write!(
            f,
            "fetched {} bytes; {} chunks decrypted and verified ({} read ahead); {} cache hits; \
             {} chunks evicted; {} bytes cached; layers: {} lazy, {} indexed, {} seek-indexed, {} verified whole, {} unverified",
            self.fetched,
            self.cache.loaded,
            self.cache.read_ahead,
            self.cache.hits,
            self.cache.evicted,
            self.cache.held,
            count(Mode::Lazy),
            count(Mode::Indexed),
            count(Mode::Seek),
            count(Mode::VerifiedEstargz),
            count(Mode::Unverified),
        )
    }
}

/// Opens every layer (in parallel) and mounts them.
pub fn mount(src: Arc<dyn ImageSource>, spec: MountSpec) -> io::Result<Mounted> {
    if spec.layers.is_empty() {
        return Err(io::Error::other("the image has no layers"));
    }
    let cache = Arc::new(ChunkCache::new(spec.cache_bytes, 2));
    type Opened = (Layer, Mode, Arc<Reservation>);
    let opened: Vec<io::Result<Opened>> = std::thread::scope(|s| {
        let jobs: Vec<_> = spec
            .layers
            .iter()
            .map(|d| {
                s.spawn(|| {
                    let reserved = Arc::new(cache.reservation());
                    open_layer(
                        src.clone(),
                        d,
                        &spec.ring,
                        &spec.open,
                        &reserved,
                        spec.seek.as_ref(),
                    )
                    .map(|(l, m)| (l, m, reserved))
                })
            })
            .collect();
        jobs.into_iter()
            .map(|j| {
                j.join()
                    .unwrap_or_else(|_| Err(io::Error::other("layer opener panicked")))
            })
            .collect()
    });
    let mut layers = Vec::new();
    let mut reservations = Vec::new();
    for (i, r) in opened.into_iter().enumerate() {
        let (l, m, r) = r.map_err(|e| io::Error::new(e.kind(), format!("layer {i}: {e}")))?;
        layers.push((Arc::new(l), m));
        reservations.push(r);
    }
    private::dir(&spec.run_dir)?;
    let mut m = Mounted {
        target: spec.target.clone(),
        run_dir: spec.run_dir.clone(),
        sessions: Vec::new(),
        layers,
        cache,
        tmpfs: None,
        overlay: false,
    };
    // On any failure below, dropping `m` undoes what was done.
    let mut lowers = Vec::new();
    for (i, ((layer, _), reserved)) in m.layers.iter().zip(reservations).enumerate() {
        let dir = spec.run_dir.join(format!("layer-{i}"));
        private::dir(&dir)?;
        m.sessions.push(LayerMount::new(
            layer.clone(),
            reserved,
            m.cache.clone(),
            &dir,
            ReadAhead::Auto,
        )?);
        lowers.push(dir);
    }
    lowers.reverse();
    let upper = if spec.writable {
        let rw = spec.run_dir.join("rw");
        private::dir(&rw)?;
        sys::tmpfs(&rw)?;
        m.tmpfs = Some(rw.clone());
        let u = sys::Upper {
            upper: rw.join("upper"),
            work: rw.join("work"),
        };
        // The upper directory's mode is the mounted root's: 0755 as an
        // image's root; the work directory is overlayfs's alone.
        private::new_dir(&u.upper, 0o755)?;
        private::new_dir(&u.work, private::DIR)?;
        Some(u)
    } else {
        if lowers.len() == 1 {
            // A read-only overlay needs two lower layers.
            let empty = spec.run_dir.join("empty");
            private::dir(&empty)?;
            lowers.push(empty);
        }
        None
    };
    let flags = if spec.allow_suid_dev {
        0
    } else {
        libc::MS_NOSUID | libc::MS_NODEV
    };
    sys::overlay(&lowers, upper.as_ref(), &spec.target, flags)?;
    m.overlay = true;
    Ok(m)
}

impl Mounted {
    pub fn target(&self) -> &Path {
        &self.target
    }

    pub fn stats(&self) -> MountStats {
        MountStats {
            fetched: self.layers.iter().map(|(l, _)| l.fetched()).sum(),
            cache: self.cache.stats(),
            modes: self.layers.iter().map(|(_, m)| *m).collect(),
        }
    }

    /// Unmounts the overlay, then every layer, and removes the runtime dir.
    pub fn unmount(mut self) -> io::Result<()> {
        self.teardown()
    }

    fn teardown(&mut self) -> io::Result<()> {
        let mut first_err = None;
        if std::mem::take(&mut self.overlay)
            && let Err(e) = sys::unmount(&self.target)
        {
            first_err.get_or_insert(e);
        }
        if let Some(t) = self.tmpfs.take()
            && let Err(e) = sys::unmount(&t)
        {
            first_err.get_or_insert(e);
        }
        for s in self.sessions.drain(..).rev() {
            if let Err(e) = s.unmount() {
                first_err.get_or_insert(e);
            }
        }
        self.cache.clear();
        match first_err {
            // Only an empty tree of plain directories is left: nothing mounted under it.
            None => remove_tree(&self.run_dir),
            Some(e) => Err(e),
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            tracing::warn!("unmounting {}: {e}", self.target.display());
        }
    }
}

/// Removes the runtime dir without crossing into anything still mounted.
fn remove_tree(dir: &Path) -> io::Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    for e in fs::read_dir(dir)? {
        let p = e?.path();
        if sys::is_mount_point(&p) {
            return Err(io::Error::other(format!(
                "{} is still mounted",
                p.display()
            )));
        }
    }
    fs::remove_dir_all(dir)
}

/// Cleans up after a mount whose process died: detaches the overlay it left
/// at `target` (recognised by its layers under `run_dir`) and whatever is
/// still mounted under `run_dir`, dead FUSE mounts included, then removes
/// `run_dir`.
pub fn clean_stale(run_dir: &Path, target: &Path) -> io::Result<()> {
    if !run_dir.exists() {
        return Ok(());
    }
    if sys::mounted_with(target, &run_dir.display().to_string()) {
        sys::unmount(target)?;
    }
    sys::unmount_under(run_dir)?;
    remove_tree(run_dir)
}

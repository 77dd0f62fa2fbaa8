//! One layer served as a read-only FUSE file system at a directory.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fuser::{BackgroundSession, Config, MountOption, SessionACL};

use super::sys;
use crate::cache::chunks::ChunkCache;
use crate::fs::{LayerFs, MAX_READ, READ_AHEAD_KB};
use crate::layer::index::Layer;

/// A layer's FUSE mount; unmounted by [`LayerMount::unmount`] or on drop.
pub struct LayerMount {
    dir: PathBuf,
    session: Option<BackgroundSession>,
    layer: Arc<Layer>,
}

impl LayerMount {
    /// Mounts `layer` at the existing directory `dir`, reading through `cache`.
    pub fn new(layer: Arc<Layer>, cache: Arc<ChunkCache>, dir: &Path) -> io::Result<Self> {
        let session = fuser::spawn_mount(LayerFs::new(layer.clone(), cache), dir, &fuse_config())
            .map_err(|e| {
            io::Error::new(e.kind(), format!("FUSE mount at {}: {e}", dir.display()))
        })?;
        if let Err(e) = sys::set_read_ahead(dir, READ_AHEAD_KB) {
            tracing::debug!("could not set read-ahead for {}: {e}", dir.display());
        }
        Ok(LayerMount {
            dir: dir.to_path_buf(),
            session: Some(session),
            layer,
        })
    }

    /// Where the layer is mounted.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The layer served.
    pub fn layer(&self) -> &Arc<Layer> {
        &self.layer
    }

    /// Unmounts and waits for the FUSE threads to end.
    pub fn unmount(mut self) -> io::Result<()> {
        self.take_down()
    }

    fn take_down(&mut self) -> io::Result<()> {
        match self.session.take() {
            Some(s) => s.umount_and_join(),
            None => Ok(()),
        }
    }
}

impl Drop for LayerMount {
    fn drop(&mut self) {
        if let Err(e) = self.take_down() {
            tracing::warn!("unmounting {}: {e}", self.dir.display());
        }
    }
}

fn fuse_config() -> Config {
    let mut c = Config::default();
    c.mount_options = vec![
        MountOption::RO,
        MountOption::FSName("lazycrypt".into()),
        MountOption::Subtype("lazycrypt".into()),
        MountOption::DefaultPermissions,
        MountOption::Dev,
        MountOption::Suid,
        MountOption::CUSTOM(format!("max_read={MAX_READ}")),
    ];
    // Containers run as other users; the kernel checks modes (default_permissions).
    c.acl = SessionACL::All;
    // Kernel read-ahead keeps several requests in flight; a thread per
    // request lets both cores verify chunks while others wait on the cache.
    c.n_threads = Some(4);
    c.clone_fd = true;
    c
}

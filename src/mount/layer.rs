//! One layer served as a read-only FUSE file system at a directory.

use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fuser::{BackgroundSession, Config, MountOption, Session, SessionACL};

use super::sys;
use super::warm::Names;
use crate::cache::chunks::{ChunkCache, Reservation};
use crate::fs::{LayerFs, MAX_READ, ReadAhead};
use crate::layer::index::Layer;

/// Fetches the layer's prioritized files in the background: the workload
/// is about to read them, and one range costs one round trip where reading
/// them file by file costs one each.
fn start_prefetch(layer: &Arc<Layer>, cache: &Arc<ChunkCache>) {
    let (l, cache) = (layer.clone(), cache.clone());
    let spawned = std::thread::Builder::new()
        .name("prefetch".into())
        .spawn(move || {
            // Fetched in as few ranges as may be, then decrypted, verified
            // and inflated into memory while the container starts.
            let r = l
                .prefetch(cache.budget() / 2)
                .and_then(|c| cache.warm(&l, &c).map(|_| c.len()));
            match r {
                Ok(0) => {}
                Ok(n) => tracing::debug!("layer {}: prefetched {n} chunks", l.what()),
                Err(e) => tracing::warn!("layer {}: prefetching prioritized files: {e}", l.what()),
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("layer {}: no prefetch: {e}", layer.what());
    }
}

/// How long an unmount waits for the layer's FUSE session to end.
const SESSION_END: std::time::Duration = std::time::Duration::from_secs(10);

/// A layer's FUSE mount; unmounted by [`LayerMount::unmount`] or on drop.
pub struct LayerMount {
    dir: PathBuf,
    session: Option<BackgroundSession>,
    layer: Arc<Layer>,
    /// The kernel connection (a duplicate), for the FUSE keeper.
    conn: OwnedFd,
    /// Taken over from an earlier process: fuser did not mount it, so
    /// fuser will not unmount it.
    resumed: bool,
    /// The layer's own memory, counted against the chunk cache's budget.
    _reserved: Arc<Reservation>,
    /// Inodes of the mounted tree, numbered from 1.
    inodes: u64,
    /// Its directories' names, for warming lookups.
    names: Arc<Names>,
}

impl LayerMount {
    /// Mounts `layer` at the existing directory `dir`, reading through
    /// `cache`, with the kernel reading ahead as `read_ahead` says;
    /// `reserved` holds the layer's memory in the cache's budget.
    pub fn new(
        layer: Arc<Layer>,
        reserved: Arc<Reservation>,
        cache: Arc<ChunkCache>,
        dir: &Path,
        read_ahead: ReadAhead,
    ) -> io::Result<Self> {
        let fail = |e: io::Error| {
            io::Error::new(e.kind(), format!("FUSE mount at {}: {e}", dir.display()))
        };
        cache.adopt(&layer, &reserved);
        let fs = LayerFs::new(layer.clone(), cache.clone());
        let inodes = fs.inode_count();
        let names = Arc::new(Names::of(fs.tree()));
        let session = Session::new(fs, dir, &fuse_config()).map_err(fail)?;
        let conn = session.as_fd().try_clone_to_owned().map_err(fail)?;
        let session = session.spawn().map_err(fail)?;
        if let Err(e) = sys::set_read_ahead(dir, read_ahead.for_layer(&layer)) {
            tracing::debug!("could not set read-ahead for {}: {e}", dir.display());
        }
        start_prefetch(&layer, &cache);
        Ok(LayerMount {
            dir: dir.to_path_buf(),
            session: Some(session),
            _reserved: reserved,
            layer,
            conn,
            resumed: false,
            inodes,
            names,
        })
    }

    /// Serves `layer` again on `conn`, the connection of the mount at `dir`
    /// that an earlier daemon served (kept open by the FUSE keeper). The
    /// kernel queued the reads made meanwhile; those the earlier daemon had
    /// taken and not answered are asked for again. The layer must be the
    /// same, so that its inode numbers are the ones the kernel knows.
    pub fn resume(
        layer: Arc<Layer>,
        reserved: Arc<Reservation>,
        cache: Arc<ChunkCache>,
        dir: &Path,
        conn: OwnedFd,
    ) -> io::Result<Self> {
        let fail = |e: io::Error| {
            io::Error::new(
                e.kind(),
                format!("resuming the FUSE mount at {}: {e}", dir.display()),
            )
        };
        // fuser starts a session with the INIT handshake, which the kernel
        // sends once per connection and sent long ago. So the session is
        // started on a socket that delivers a stand-in INIT, and the kernel
        // connection then takes that socket's descriptor number.
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().map_err(fail)?;
        (&theirs).write_all(&stand_in_init()).map_err(fail)?;
        let mut config = fuse_config();
        config.mount_options.clear();
        cache.adopt(&layer, &reserved);
        let fs = LayerFs::new(layer.clone(), cache);
        let inodes = fs.inode_count();
        let names = Arc::new(Names::of(fs.tree()));
        let session =
            Session::from_fd(fs, OwnedFd::from(ours), SessionACL::All, config).map_err(fail)?;
        let slot = session.as_fd().as_raw_fd();
        // SAFETY: both are open descriptors; `slot` belongs to the session,
        // which has not read from it since the handshake and keeps the
        // number, now naming the kernel connection.
        if unsafe { libc::dup3(conn.as_raw_fd(), slot, libc::O_CLOEXEC) } < 0 {
            return Err(fail(io::Error::last_os_error()));
        }
        drop(theirs);
        if let Err(e) = resend_pending(conn.as_fd()) {
            tracing::debug!("FUSE resend at {}: {e}", dir.display());
        }
        let session = session.spawn().map_err(fail)?;
        Ok(LayerMount {
            dir: dir.to_path_buf(),
            session: Some(session),
            _reserved: reserved,
            layer,
            conn,
            resumed: true,
            inodes,
            names,
        })
    }

    /// The kernel connection, for the FUSE keeper to hold.
    pub fn connection(&self) -> BorrowedFd<'_> {
        self.conn.as_fd()
    }

    /// Where the layer is mounted.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// How many inodes the mounted tree has.
    pub fn inodes(&self) -> u64 {
        self.inodes
    }

    /// Its directories' names, for warming lookups ([`super::warm`]).
    pub fn names(&self) -> &Arc<Names> {
        &self.names
    }

    /// The layer served.
    pub fn layer(&self) -> &Arc<Layer> {
        &self.layer
    }

    /// Stops serving the layer: every request gets EIO from now on, and the
    /// kernel drops what it cached of its files, so open files cannot keep
    /// reading pages served before.
    pub fn poison(&self) {
        self.layer.poison();
        if let Some(s) = &self.session {
            let n = s.notifier();
            for ino in 1..=self.inodes {
                let _ = n.inval_inode(fuser::INodeNo(ino), 0, -1);
            }
        }
    }

    /// Unmounts and waits for the FUSE threads to end. A layer in use by a
    /// container stays mounted and served until the process ends (its
    /// connection is the caller's to hand to the keeper).
    pub fn unmount(mut self) -> io::Result<()> {
        let r = self.take_down();
        if r.is_err() {
            self.leave_serving();
        }
        r
    }

    /// Lets the session's threads go on serving the mount for the rest of
    /// the process: dropping the session would unmount it under the
    /// container using it, and the next daemon could not take it over.
    fn leave_serving(&mut self) {
        if let Some(s) = self.session.take() {
            std::mem::forget(s);
        }
    }

    fn take_down(&mut self) -> io::Result<()> {
        if self.session.is_none() {
            return Ok(());
        }
        // A container's overlay holds the layer: unmounting would succeed,
        // yet its FUSE connection would live on, served by no one once this
        // process ends. It stays mounted and served, and the caller hands
        // the connection to the keeper for the next daemon.
        if sys::lower_of_an_overlay(&self.dir) {
            return Err(io::Error::new(
                io::ErrorKind::ResourceBusy,
                format!("{} is in use by a container's overlay", self.dir.display()),
            ));
        }
        let Some(s) = self.session.take() else {
            return Ok(());
        };
        if self.resumed {
            // Like fuser's own unmount: a mount in use stays, and its
            // threads are left to serve it until the process ends.
            sys::unmount_idle(&self.dir)?;
        }
        // The session ends when the kernel drops the connection; should
        // anything else still hold it, its threads go on serving it and
        // this returns, rather than wait forever.
        let (done, ended) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = done.send(s.umount_and_join());
        });
        match ended.recv_timeout(SESSION_END) {
            Ok(r) => r,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "{} is unmounted but its FUSE session did not end in {} s; it is left serving",
                    self.dir.display(),
                    SESSION_END.as_secs()
                ),
            )),
        }
    }
}

impl Drop for LayerMount {
    fn drop(&mut self) {
        if let Err(e) = self.take_down() {
            tracing::warn!("unmounting {}: {e}", self.dir.display());
            self.leave_serving();
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
    // One shared descriptor, not one per thread: requests a thread had
    // taken when the daemon died stay on the descriptor the keeper holds,
    // where a resumed daemon can ask for them again. (A cloned descriptor's
    // requests fail with ECONNABORTED when it closes.)
    c.clone_fd = false;
    c
}

/// FUSE_INIT as the kernel sends it: `fuse_in_header` then `fuse_init_in`
/// (protocol 7.40, no capability flags). Only fuser reads it.
fn stand_in_init() -> Vec<u8> {
    const FUSE_INIT: u32 = 26;
    let mut m = Vec::with_capacity(104);
    m.extend_from_slice(&104u32.to_ne_bytes()); // len
    m.extend_from_slice(&FUSE_INIT.to_ne_bytes()); // opcode
    m.extend_from_slice(&[0; 8 + 8 + 4 + 4 + 4 + 4]); // unique, nodeid, uid, gid, pid, pad
    m.extend_from_slice(&7u32.to_ne_bytes()); // major
    m.extend_from_slice(&40u32.to_ne_bytes()); // minor
    m.extend_from_slice(&MAX_READ.to_ne_bytes()); // max_readahead
    m.extend_from_slice(&[0; 4 + 4 + 44]); // flags, flags2, unused
    m
}

/// Asks the kernel (Linux 6.9 and later) to queue again the requests that
/// were taken from `conn` and never answered: FUSE_NOTIFY_RESEND, a bare
/// `fuse_out_header` with unique 0.
fn resend_pending(conn: BorrowedFd<'_>) -> io::Result<()> {
    const FUSE_NOTIFY_RESEND: i32 = 7;
    let mut m = Vec::with_capacity(16);
    m.extend_from_slice(&16u32.to_ne_bytes());
    m.extend_from_slice(&FUSE_NOTIFY_RESEND.to_ne_bytes());
    m.extend_from_slice(&0u64.to_ne_bytes());
    let n = nix::unistd::write(conn, &m)?;
    if n != m.len() {
        return Err(io::Error::other("short write"));
    }
    Ok(())
}

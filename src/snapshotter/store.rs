//! Snapshot semantics, as containerd's overlayfs snapshotter has them: each
//! snapshot owns `snapshots/<id>/fs` (and `work`), active snapshots mount as
//! an overlay over their committed parents, and containerd applies layer
//! diffs into the mounts it is given.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use super::checks::{DiffIdConfig, Job, Queue};
use super::error::{Error, Result};
use super::filter::Filter;
use super::meta::{DiffId, Kind, Meta, Record, Remote, Txn};
use super::metrics;
use super::remote::{
    IMAGE_LAYERS_LABELS, REF_LABEL, RemoteConfig, RemoteStats, Remotes, named_layer, shown_labels,
    unnamed_layer,
};
use crate::mount::sys;
use crate::oci::image::chain_id;
use crate::private;

/// A snapshot's `fs` directory: the root of what containers see, so 0755 as
/// containerd's overlayfs snapshotter makes it, inside a 0700 parent.
const FS_MODE: u32 = 0o755;

/// When a diff-ID check that could not run (registry down, key gone) is
/// tried again.
const RETRY_CHECK: Duration = Duration::from_secs(60);

/// The most a label key and value may hold together (containerd's limit).
const MAX_LABEL: usize = 4096;

/// One mount a snapshot is used through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub kind: String,
    pub source: String,
    pub options: Vec<String>,
}

/// What `Stat` and `List` tell of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    pub name: String,
    pub parent: String,
    pub kind: Kind,
    pub created: SystemTime,
    pub updated: SystemTime,
    pub labels: BTreeMap<String, String>,
}

/// Where active snapshots over lazily served layers keep their changes.
#[derive(Debug, Clone, Copy)]
pub struct UpperConfig {
    /// On a tmpfs per snapshot (the default), or on disk.
    pub tmpfs: bool,
    /// Size limit of each such tmpfs, in bytes.
    pub size: Option<u64>,
}

/// The snapshot store under one root directory.
pub struct Store {
    root: PathBuf,
    meta: Meta,
    remotes: Arc<Remotes>,
    upper: UpperConfig,
    diff_id: DiffIdConfig,
    checks: Queue,
    /// Whether a layer's `Prepare` without layer labels was warned of.
    warned_unnamed: std::sync::atomic::AtomicBool,
    /// Snapshots whose `Prepare` may have made their directory but not yet
    /// committed their record (a remote layer's takes seconds to open):
    /// `cleanup` leaves their directories alone.
    preparing: std::sync::Mutex<std::collections::HashSet<u64>>,
}

/// Holds a snapshot id in [`Store::preparing`] until dropped.
struct Preparing<'a> {
    set: &'a std::sync::Mutex<std::collections::HashSet<u64>>,
    id: std::cell::Cell<Option<u64>>,
}

impl<'a> Preparing<'a> {
    fn new(set: &'a std::sync::Mutex<std::collections::HashSet<u64>>) -> Self {
        Preparing {
            set,
            id: std::cell::Cell::new(None),
        }
    }

    fn hold(&self, id: u64) {
        crate::sync::lock(self.set).insert(id);
        if let Some(old) = self.id.replace(Some(id)) {
            crate::sync::lock(self.set).remove(&old);
        }
    }
}

impl Drop for Preparing<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            crate::sync::lock(self.set).remove(&id);
        }
    }
}

/// Logged once a daemon at the first `Prepare` of a layer that names no
/// image layer: the config mistake that makes containerd unpack every layer
/// (decrypting encrypted ones to disk) instead of lazycrypt serving them.
/// Whether `key` is one containerd's unpacker gives the snapshot it
/// extracts a layer into (`extract-<nonce> <chain ID>`, after the
/// namespace's prefix): containerd 1.6's client-side unpack (`ctr images
/// pull`) labels it with nothing else.
fn unpack_key(key: &str) -> bool {
    key.split_once(' ').is_some_and(|(name, chain)| {
        name.rsplit('/')
            .next()
            .is_some_and(|n| n.starts_with("extract-"))
            && chain.starts_with("sha256:")
    })
}

/// Why a layer's Prepare without an image's labels is refused under a
/// signature policy.
const UNVERIFIABLE_LAYER: &str = "a signature policy is set, but no labels name this layer's \
    image (CRI's or lazycrypt's), so its signatures cannot be checked: refused rather than \
    unpacked by containerd unverified. Pull with `lazycrypt pull` or through CRI with snapshot \
    annotations enabled (see README, \"Layer labels\")";

const UNNAMED_LAYER: &str = "no labels name the image layer (CRI's or lazycrypt's), so lazycrypt \
    cannot serve it lazily: layers will be unpacked by containerd into plain snapshots (an \
    encrypted image's decrypted onto disk). Expected for a plain image pulled with `ctr images \
    pull` (pull encrypted ones with `lazycrypt pull`); for Kubernetes, set \
    enable_remote_snapshot_annotations = \"true\" in [proxy_plugins.lazycrypt.exports] \
    (containerd 2.x), or disable_snapshot_annotations = false (containerd 1.6/1.7: in \
    [plugins.\"io.containerd.grpc.v1.cri\".containerd]; 2.x with use_local_image_pull: in \
    [plugins.'io.containerd.cri.v1.images']); see README, \"Layer labels\". Logged once";

impl Store {
    /// Opens the store under `root` (metadata in `root/metadata.db`).
    pub fn open(
        root: &Path,
        remote: RemoteConfig,
        upper: UpperConfig,
        diff_id: DiffIdConfig,
    ) -> Result<Self> {
        tighten(root).map_err(|e| Error::io(&format!("cannot create {}", root.display()), e))?;
        let meta = Meta::open(&root.join("metadata.db"))?;
        Ok(Store {
            root: root.to_path_buf(),
            meta,
            remotes: Arc::new(Remotes::new(remote)),
            upper,
            diff_id,
            checks: Queue::default(),
            warned_unnamed: std::sync::atomic::AtomicBool::new(false),
            preparing: Default::default(),
        })
    }

    /// Runs the diff-ID checks of lazily mounted layers on a thread of low
    /// CPU priority, for as long as the store lives. A layer containerd
    /// names by a chain ID is bound to the diff ID its image config claims
    /// only by hashing the whole layer, which a lazy mount never does by
    /// itself: until then the layer is served to its own image but not
    /// reused for another's; if it hashes to anything else, it is poisoned.
    pub fn check_diff_ids(self: &Arc<Self>) {
        let store = Arc::downgrade(self);
        let spawned = std::thread::Builder::new()
            .name("diff-id-checks".into())
            .spawn(move || {
                // SAFETY: setpriority on this thread's own id (Linux threads
                // have their own nice value); failure leaves it as it was.
                unsafe {
                    libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 19);
                }
                loop {
                    let Some(s) = store.upgrade() else { break };
                    if let Some(job) = s.checks.next(Duration::from_secs(1)) {
                        s.check_one(&job);
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::error!("diff-ID checks cannot run: {e}");
        }
    }

    /// Checks one layer and records the verdict; a mismatch poisons it.
    fn check_one(&self, job: &Job) {
        let rec = match self.meta.get(&job.key) {
            Ok(Some(r)) if r.id == job.id => r,
            _ => return self.checks.ended(job.id, Ok(())),
        };
        let Some(remote) = rec.remote.as_ref().filter(|r| r.diff_id == DiffId::Pending) else {
            return self.checks.ended(job.id, Ok(()));
        };
        let rate = if job.urgent { None } else { self.diff_id.rate };
        let verdict = match self.remotes.check_diff_id(rec.id, remote, rate) {
            // Its name must be the chain its content makes on its parent:
            // layer labels can come from the image itself (containerd
            // passes its layers' `containerd.io/snapshot/` annotations on),
            // naming another image's layer to be committed under this name.
            Ok(DiffId::Verified(actual)) if chain_id(&rec.parent, &actual) != job.key => {
                DiffId::Misnamed {
                    chain: chain_id(&rec.parent, &actual),
                }
            }
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(
                    "layer {}: diff ID not checked yet: {}",
                    remote.layer,
                    e.message
                );
                metrics::DIFF_ID_ERRORS.fetch_add(1, Ordering::Relaxed);
                // Tried again later; a Prepare waiting for it hears why.
                self.checks
                    .push(&job.key, job.id, Instant::now() + RETRY_CHECK, false);
                return self.checks.ended(job.id, Err(e.message));
            }
        };
        let recorded = self.meta.update(|t| match t.get(&job.key)? {
            Some(mut r) if r.id == job.id => {
                if let Some(x) = r.remote.as_mut() {
                    x.diff_id = verdict.clone();
                }
                t.put(&job.key, &r)
            }
            _ => Ok(()),
        });
        if let Err(e) = recorded {
            tracing::warn!(
                "layer {}: recording its diff ID: {}",
                remote.layer,
                e.message
            );
        }
        match &verdict {
            DiffId::Mismatch { claimed, actual } => {
                metrics::DIFF_ID_MISMATCHES.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    "layer {} of {}: its content has diff ID {actual}, but the image config \
                     claims {claimed}: snapshot {} is poisoned (its reads fail with EIO) and \
                     is replaced when an image needs that layer",
                    remote.layer,
                    remote.image,
                    job.key
                );
                self.remotes.poison(rec.id);
            }
            DiffId::IndexMismatch { why } => {
                metrics::DIFF_ID_MISMATCHES.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    "layer {} of {}: it was served through a seek index that does not match \
                     its blob ({why}): snapshot {} is poisoned (its reads fail with EIO) and is \
                     replaced when an image needs that layer",
                    remote.layer,
                    remote.image,
                    job.key
                );
                self.remotes.poison(rec.id);
            }
            DiffId::Misnamed { chain } => {
                metrics::DIFF_ID_MISMATCHES.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    "layer {} of {}: on its parent it makes chain ID {chain}, not the name it \
                     was committed under: snapshot {} is poisoned (its reads fail with EIO) and \
                     is replaced when an image needs that layer",
                    remote.layer,
                    remote.image,
                    job.key
                );
                self.remotes.poison(rec.id);
            }
            _ => {
                metrics::DIFF_ID_VERIFIED.fetch_add(1, Ordering::Relaxed);
                tracing::info!("layer {}: diff ID verified", remote.layer);
            }
        }
        self.checks.ended(job.id, Ok(()));
    }

    /// Waits (at most the configured time) for the verdict on snapshot
    /// `key` (id `id`), checking it now if it is still queued.
    fn wait_diff_id(&self, key: &str, id: u64) -> Result<DiffId> {
        let until = Instant::now() + self.diff_id.wait;
        let mut seen = self.checks.seen();
        self.checks.push(key, id, Instant::now(), true);
        loop {
            match self.meta.get(key)? {
                Some(r) if r.id == id => match r.remote.map(|x| x.diff_id) {
                    Some(DiffId::Pending) => {}
                    Some(v) => return Ok(v),
                    None => return Ok(DiffId::Pending),
                },
                // Removed meanwhile: nothing stands in the way.
                _ => {
                    return Ok(DiffId::Mismatch {
                        claimed: String::new(),
                        actual: String::new(),
                    });
                }
            }
            if let Some(e) = self.checks.failure(id) {
                return Err(Error::new(
                    tonic::Code::Unavailable,
                    format!("snapshot {key}: its layer's diff ID cannot be checked: {e}"),
                ));
            }
            if !self.checks.wait_news(&mut seen, until) {
                return Err(Error::new(
                    tonic::Code::Unavailable,
                    format!(
                        "snapshot {key}: another image's layer with this name is still being \
                         checked against its diff ID; try again"
                    ),
                ));
            }
        }
    }

    /// At start: mounts every committed remote layer again. Mounts a killed
    /// daemon left behind are detached first; a layer that cannot be mounted
    /// (registry down, key gone) is logged and left for a later start.
    pub fn restore(&self) -> Result<usize> {
        let mut n = 0;
        let mut claimed = std::collections::HashSet::new();
        for (key, rec) in self.meta.all()? {
            let Some(remote) = &rec.remote else { continue };
            match remote.diff_id {
                // Poisoned: never served again.
                DiffId::Mismatch { .. }
                | DiffId::Misnamed { .. }
                | DiffId::IndexMismatch { .. } => {
                    continue;
                }
                DiffId::Pending => {
                    self.checks
                        .push(&key, rec.id, Instant::now() + self.diff_id.delay, false)
                }
                DiffId::Verified(_) => {}
            }
            let fs_dir = self.dir(rec.id).join("fs");
            claimed.insert(fs_dir.clone());
            if let Err(e) = layer_dir(&self.dir(rec.id)) {
                tracing::error!("snapshot {key}: {}: {e}", fs_dir.display());
                continue;
            }
            match self.remotes.ensure_mounted(rec.id, remote, &fs_dir) {
                Ok(()) => n += 1,
                Err(e) => tracing::error!("snapshot {key}: {e}"),
            }
        }
        self.remotes.release_unclaimed(&claimed);
        Ok(n)
    }

    /// Counts for the metrics endpoint: remote layers, and snapshots by kind.
    pub fn stats(&self) -> Result<(RemoteStats, [usize; 3])> {
        let mut kinds = [0; 3];
        for r in self.meta.all()?.values() {
            kinds[match r.kind {
                Kind::View => 0,
                Kind::Active => 1,
                Kind::Committed => 2,
            }] += 1;
        }
        Ok((self.remotes.stats(), kinds))
    }

    /// At shutdown: unmounts every remote layer and wipes the chunk cache.
    pub fn shutdown(&self) {
        self.remotes.unmount_all();
    }

    /// The directory of snapshot `id`.
    pub fn dir(&self, id: u64) -> PathBuf {
        self.root.join("snapshots").join(id.to_string())
    }

    /// Creates an active snapshot or a view of `parent`. An active prepare
    /// whose labels name an image layer mounts that layer lazily instead,
    /// commits it under its target name and answers AlreadyExists (the
    /// remote-snapshotter contract), so containerd skips the download.
    pub fn prepare(
        &self,
        key: &str,
        parent: &str,
        labels: BTreeMap<String, String>,
        kind: Kind,
    ) -> Result<Vec<Mount>> {
        check_labels(&labels)?;
        if key.is_empty() {
            return Err(Error::invalid("snapshot key must not be empty"));
        }
        tracing::debug!(
            "{kind:?} snapshot {key} on {parent:?}: labels {}",
            shown_labels(&labels)
        );
        if kind == Kind::Active {
            if let Some(remote) = named_layer(&labels) {
                return Err(self.prepare_remote(parent, &labels, remote));
            }
            // containerd would unpack the layer itself, unverified.
            if self.remotes.has_policy() && (unnamed_layer(&labels) || unpack_key(key)) {
                return Err(Error::failed_precondition(format!(
                    "snapshot {key}: {UNVERIFIABLE_LAYER}"
                )));
            }
            if unnamed_layer(&labels) && !self.warned_unnamed.swap(true, Ordering::Relaxed) {
                tracing::warn!("snapshot {key}: a layer's Prepare, but {UNNAMED_LAYER}");
            }
        }
        // Over lazily served layers, the upper directory goes on a tmpfs
        // (copy-up would put plaintext on disk), and only while a key on this
        // node still unwraps every encrypted layer below.
        let chain = self.chain(parent)?;
        refuse_poisoned(&chain)?;
        let remotes: Vec<&Remote> = chain.iter().filter_map(|r| r.remote.as_ref()).collect();
        // A view is read by a container too (`ctr run --read-only`).
        self.remotes.authorize(&remotes)?;
        self.ensure_mounted(&chain)?;
        let tmpfs = kind == Kind::Active && !remotes.is_empty() && self.upper.tmpfs;
        let now = SystemTime::now();
        let made = std::cell::Cell::new(None);
        // Dropped after the record is committed or the directory removed.
        let held = Preparing::new(&self.preparing);
        let result = self.meta.update(|t| {
            if t.get(key)?.is_some() {
                return Err(Error::already_exists(format!(
                    "snapshot {key}: already exists"
                )));
            }
            check_parent(t, parent)?;
            let id = t.next_id()?;
            let rec = Record {
                id,
                kind,
                parent: parent.to_string(),
                labels: labels.clone(),
                created: now,
                updated: now,
                usage: None,
                remote: None,
                tmpfs,
            };
            // The directory is made inside the transaction: if anything
            // fails, it is removed below and nothing is recorded. A crash
            // leaves an orphan directory, which cleanup removes.
            let dir = self.dir(id);
            held.hold(id);
            made.set(Some(dir.clone()));
            self.make_dir(&dir, tmpfs)?;
            t.put(key, &rec)?;
            Ok(rec)
        });
        match result {
            Ok(rec) => Ok(self.mounts_of(&rec, &chain)),
            Err(e) => {
                if let Some(dir) = made.take() {
                    remove_tree(&dir);
                }
                Err(e)
            }
        }
    }

    /// Makes a snapshot's directory, with `fs` and `work` inside it, on a
    /// tmpfs of its own when asked.
    fn make_dir(&self, dir: &Path, tmpfs: bool) -> Result<()> {
        let io = |e| Error::io(&format!("cannot create {}", dir.display()), e);
        private::new_dir(dir, private::DIR).map_err(io)?;
        if tmpfs {
            sys::tmpfs_sized(dir, self.upper.size).map_err(io)?;
        }
        private::new_dir(&dir.join("fs"), FS_MODE).map_err(io)?;
        private::new_dir(&dir.join("work"), private::DIR).map_err(io)
    }

    /// Mounts the layer `remote` names and commits it under the `Prepare`'s
    /// target; returns the error to answer with (AlreadyExists on success).
    fn prepare_remote(
        &self,
        parent: &str,
        labels: &BTreeMap<String, String>,
        mut remote: Remote,
    ) -> Error {
        let target = labels.get(REF_LABEL).cloned().unwrap_or_default();
        let exists = || Error::already_exists(format!("target snapshot {target}: already exists"));
        // A snapshot of that name is reused only once its layer is known to
        // be what the name says, or when it is the very same blob.
        let replacing = match self.meta.get(&target) {
            Ok(Some(existing)) => match self.reusable(&target, &existing, &remote) {
                Ok(None) => return exists(),
                Ok(Some(old)) => Some(old),
                Err(e) => return e,
            },
            Ok(None) => None,
            Err(e) => return e,
        };
        let id = match self.meta.update(|t| {
            check_parent(t, parent)?;
            t.next_id()
        }) {
            Ok(id) => id,
            Err(e) => return e,
        };
        let held = Preparing::new(&self.preparing);
        held.hold(id);
        let dir = self.dir(id);
        let done = (|| {
            layer_dir(&dir).map_err(|e| Error::io("cannot create snapshot directory", e))?;
            self.prefetch_above(&remote, labels);
            let mode = self.remotes.mount(id, &mut remote, &dir.join("fs"))?;
            // Kept for Usage while the layer is not mounted (after a
            // restart, until a container needs it); its bytes are counted
            // as they are asked for.
            let inodes = self.remotes.usage(id, &remote).1.unwrap_or(0);
            let now = SystemTime::now();
            self.meta.update(|t| {
                if t.get(&target)?.is_some_and(|cur| Some(cur.id) != replacing) {
                    return Err(exists());
                }
                t.put(
                    &target,
                    &Record {
                        id,
                        kind: Kind::Committed,
                        parent: parent.to_string(),
                        labels: labels.clone(),
                        created: now,
                        updated: now,
                        usage: Some((0, to_i64(inodes))),
                        remote: Some(remote.clone()),
                        tmpfs: false,
                    },
                )
            })?;
            Ok(mode)
        })();
        match done {
            Ok(mode) => {
                tracing::info!(
                    "layer {} mounted ({mode:?}) as snapshot {target}",
                    remote.layer
                );
                if let Some(old) = replacing {
                    // Poisoned already; a container still holding it keeps
                    // getting EIO from it.
                    self.remotes.poison(old);
                    remove_tree(&self.dir(old));
                    tracing::warn!(
                        "snapshot {target}: its poisoned layer was replaced by layer {}",
                        remote.layer
                    );
                }
                self.checks
                    .push(&target, id, Instant::now() + self.diff_id.delay, false);
                if let Ok(chain) = self.chain(parent) {
                    let lowers: Vec<u64> = chain
                        .iter()
                        .filter(|r| r.remote.is_some())
                        .map(|r| r.id)
                        .collect();
                    self.remotes.warm_lookups(id, &lowers);
                }
                exists()
            }
            Err(e) => {
                if let Err(u) = self.remotes.unmount(id) {
                    tracing::warn!("{u}");
                }
                remove_tree(&dir);
                tracing::warn!("layer {} of {}: {e}", remote.layer, remote.image);
                e
            }
        }
    }

    /// Whether the existing snapshot `target` may answer a `Prepare` of
    /// `remote`'s layer: `Ok(None)` if so, `Ok(Some(id))` if it is poisoned
    /// and is to be replaced (snapshot `id`), an error if it cannot be
    /// either. A layer not yet checked is reused as it is only for the same
    /// blob; for another image's blob its check is waited for.
    fn reusable(&self, target: &str, existing: &Record, remote: &Remote) -> Result<Option<u64>> {
        let Some(theirs) = &existing.remote else {
            return Ok(None);
        };
        let verdict = match &theirs.diff_id {
            // A blob served through another image's seek index is that
            // image's until its check: the index is vouched for only by a
            // key holder, not by the blob's digest.
            DiffId::Pending
                if theirs.layer != remote.layer
                    || (theirs.seek && theirs.manifest != remote.manifest) =>
            {
                self.wait_diff_id(target, existing.id)?
            }
            v => v.clone(),
        };
        match verdict {
            v if v.is_poisoned() && theirs.layer == remote.layer => Err(poisoned(target, theirs)),
            v if v.is_poisoned() => Ok(Some(existing.id)),
            _ => Ok(None),
        }
    }

    /// Starts opening the image's layers above `remote` that no snapshot
    /// holds yet, as CRI's (or lazycrypt's) image-layers label lists them.
    fn prefetch_above(&self, remote: &Remote, labels: &BTreeMap<String, String>) {
        let Some(list) = IMAGE_LAYERS_LABELS.iter().find_map(|l| labels.get(*l)) else {
            return;
        };
        let held: std::collections::HashSet<String> = match self.meta.all() {
            Ok(all) => all
                .values()
                .filter_map(|r| r.remote.as_ref().map(|x| x.layer.clone()))
                .collect(),
            Err(_) => return,
        };
        let above: Vec<String> = list
            .split(',')
            .map(str::trim)
            .filter(|d| !d.is_empty() && *d != remote.layer && !held.contains(*d))
            .map(String::from)
            .collect();
        self.remotes
            .prefetch(&remote.image, &remote.manifest, &above);
    }

    /// Records of `parent` and its ancestors, nearest first.
    fn chain(&self, parent: &str) -> Result<Vec<Record>> {
        let mut out = Vec::new();
        let mut next = parent.to_string();
        while !next.is_empty() {
            let rec = self.meta.get(&next)?.ok_or_else(|| {
                Error::not_found(format!("parent snapshot {next} does not exist"))
            })?;
            next = rec.parent.clone();
            out.push(rec);
            if out.len() > 500 {
                return Err(Error::failed_precondition(format!(
                    "snapshot chain through {parent} is too deep or loops"
                )));
            }
        }
        Ok(out)
    }

    /// The mounts of an active snapshot or view.
    pub fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        let rec = self.get(key)?;
        if rec.kind == Kind::Committed {
            return Err(Error::failed_precondition(format!(
                "snapshot {key} is committed; only active snapshots and views have mounts"
            )));
        }
        let chain = self.chain(&rec.parent)?;
        refuse_poisoned(&chain)?;
        self.ensure_mounted(&chain)?;
        Ok(self.mounts_of(&rec, &chain))
    }

    /// Every remote layer in `chain` must be mounted before its directory is
    /// handed out: an unmounted one is an empty directory, which a container
    /// would read as a layer with no files. One that failed to mount at
    /// start is tried again here; if it still fails, so does the call.
    fn ensure_mounted(&self, chain: &[Record]) -> Result<()> {
        for rec in chain {
            if let Some(remote) = &rec.remote {
                self.remotes
                    .ensure_mounted(rec.id, remote, &self.dir(rec.id).join("fs"))?;
            }
        }
        Ok(())
    }

    /// The mounts of `rec`, whose parent chain (nearest first) is `chain`.
    fn mounts_of(&self, rec: &Record, chain: &[Record]) -> Vec<Mount> {
        let lowers: Vec<PathBuf> = chain.iter().map(|r| self.dir(r.id).join("fs")).collect();
        let fs_dir = self.dir(rec.id).join("fs");
        let path = |p: &Path| p.display().to_string();
        let bind = |source: PathBuf, mode: &str| Mount {
            kind: "bind".into(),
            source: path(&source),
            options: vec![mode.into(), "rbind".into()],
        };
        match (rec.kind, lowers.as_slice()) {
            (Kind::Active, []) => vec![bind(fs_dir, "rw")],
            (Kind::View, []) => vec![bind(fs_dir, "ro")],
            (Kind::View, [one]) => vec![bind(one.clone(), "ro")],
            (Kind::View, _) => vec![Mount {
                kind: "overlay".into(),
                source: "overlay".into(),
                options: vec![lowerdir(&lowers)],
            }],
            (_, _) => vec![Mount {
                kind: "overlay".into(),
                source: "overlay".into(),
                options: vec![
                    "index=off".into(),
                    format!("workdir={}", path(&self.dir(rec.id).join("work"))),
                    format!("upperdir={}", path(&fs_dir)),
                    lowerdir(&lowers),
                ],
            }],
        }
    }

    /// Commits active snapshot `key` as `name`.
    pub fn commit(&self, name: &str, key: &str, labels: BTreeMap<String, String>) -> Result<()> {
        check_labels(&labels)?;
        let rec = self.get(key)?;
        if rec.kind != Kind::Active {
            return Err(Error::failed_precondition(format!(
                "snapshot {key} is not active"
            )));
        }
        let usage = disk_usage(&self.dir(rec.id).join("fs"))?;
        // A committed snapshot is a new one: containerd's snapshotters (and
        // its test suite) give it Created = Updated = the commit's time.
        let now = SystemTime::now();
        self.meta.update(|t| {
            // Checked again inside the transaction: another commit may have won.
            let Some(rec) = t.get(key)? else {
                return Err(Error::not_found(format!("snapshot {key} does not exist")));
            };
            if rec.kind != Kind::Active {
                return Err(Error::failed_precondition(format!(
                    "snapshot {key} is not active"
                )));
            }
            if t.get(name)?.is_some() {
                return Err(Error::already_exists(format!(
                    "snapshot {name}: already exists"
                )));
            }
            t.delete(key)?;
            t.put(
                name,
                &Record {
                    kind: Kind::Committed,
                    labels: labels.clone(),
                    created: now,
                    updated: now,
                    usage: Some(usage),
                    ..rec
                },
            )
        })
    }

    /// Removes a snapshot that has no children.
    pub fn remove(&self, key: &str) -> Result<()> {
        let rec = self.meta.update(|t| {
            let Some(rec) = t.get(key)? else {
                return Err(Error::not_found(format!("snapshot {key} does not exist")));
            };
            if let Some(child) = t.children(key)?.first() {
                return Err(Error::failed_precondition(format!(
                    "cannot remove snapshot {key}: snapshot {child} is its child"
                )));
            }
            t.delete(key)?;
            Ok(rec)
        })?;
        // After the commit: a crash here leaves an orphan directory for cleanup.
        if let Some(remote) = &rec.remote {
            if let Err(e) = self.remotes.unmount(rec.id) {
                tracing::warn!("{e}");
            }
            self.forget_blob_unless_used(&remote.layer)?;
        }
        remove_tree(&self.dir(rec.id));
        Ok(())
    }

    /// Deletes layer `digest`'s ciphertext from the blob cache once no
    /// snapshot names it: the cache would otherwise keep every layer the
    /// node ever pulled.
    fn forget_blob_unless_used(&self, digest: &str) -> Result<()> {
        let used = self
            .meta
            .all()?
            .values()
            .any(|r| r.remote.as_ref().is_some_and(|x| x.layer == digest));
        if !used && let Err(e) = crate::cache::blobs::remove(self.remotes.cache_dir(), digest) {
            tracing::warn!("removing the cached blob of layer {digest}: {e}");
        }
        Ok(())
    }

    /// The info of `key`. A poisoned layer answers with why: containerd's
    /// unpacker, finding its name taken, would otherwise skip the layer and
    /// build an image on it.
    pub fn stat(&self, key: &str) -> Result<Info> {
        let rec = self.get(key)?;
        if let Some(x) = rec.remote.as_ref().filter(|x| x.diff_id.is_poisoned()) {
            return Err(poisoned(key, x));
        }
        Ok(info(key, &rec))
    }

    /// Updates labels (the only mutable field). `paths` as in containerd's
    /// update mask: empty, "labels", or "labels.<key>".
    pub fn update(
        &self,
        key: &str,
        labels: BTreeMap<String, String>,
        paths: &[String],
    ) -> Result<Info> {
        check_labels(&labels)?;
        self.meta.update(|t| {
            let Some(mut rec) = t.get(key)? else {
                return Err(Error::not_found(format!("snapshot {key} does not exist")));
            };
            if paths.is_empty() || paths.iter().any(|p| p == "labels") {
                rec.labels = labels.clone();
            }
            for p in paths.iter().filter(|p| p.as_str() != "labels") {
                let Some(label) = p.strip_prefix("labels.") else {
                    return Err(Error::invalid(format!(
                        "cannot update field {p} of snapshot {key}: only labels are mutable"
                    )));
                };
                match labels.get(label) {
                    Some(v) => rec.labels.insert(label.to_string(), v.clone()),
                    None => rec.labels.remove(label),
                };
            }
            check_labels(&rec.labels)?;
            rec.updated = SystemTime::now();
            t.put(key, &rec)?;
            Ok(info(key, &rec))
        })
    }

    /// Snapshots matching any of `filters` (all when there are none).
    pub fn list(&self, filters: &[String]) -> Result<Vec<Info>> {
        let filters = filters
            .iter()
            .map(|f| Filter::parse(f))
            .collect::<Result<Vec<_>>>()?;
        Ok(self
            .meta
            .all()?
            .iter()
            .map(|(k, r)| info(k, r))
            .filter(|i| filters.is_empty() || filters.iter().any(|f| f.matches(i)))
            .collect())
    }

    /// Bytes and inodes used by `key`: those of its own directory, as
    /// containerd's overlayfs snapshotter counts them (measured at commit
    /// for a committed snapshot). A lazily mounted layer has nothing in its
    /// directory; it answers with what it holds on this node instead, its
    /// ciphertext cached so far and its sealed copy, and the inodes of its
    /// tree, so CRI's image file system stats and the kubelet's image
    /// garbage collection see it.
    pub fn usage(&self, key: &str) -> Result<(i64, i64)> {
        let rec = self.get(key)?;
        match (&rec.remote, rec.usage) {
            (Some(remote), stored) => {
                let (bytes, inodes) = self.remotes.usage(rec.id, remote);
                let inodes = inodes.map_or(stored.map_or(0, |u| u.1), to_i64);
                Ok((to_i64(bytes), inodes))
            }
            (None, Some(u)) => Ok(u),
            (None, None) => disk_usage(&self.dir(rec.id).join("fs")),
        }
    }

    /// Removes directories no record owns (left by a crash or a failed call).
    pub fn cleanup(&self) -> Result<()> {
        let dir = self.root.join("snapshots");
        // Listed first, then the Prepares under way, then the records: a
        // Prepare that commits in between is in one of the two.
        let entries: Vec<fs::DirEntry> = fs::read_dir(&dir)
            .map_err(|e| Error::io(&format!("{}", dir.display()), e))?
            .flatten()
            .collect();
        let mut keep: std::collections::HashSet<String> = crate::sync::lock(&self.preparing)
            .iter()
            .map(|i| i.to_string())
            .collect();
        keep.extend(self.meta.ids()?.iter().map(|i| i.to_string()));
        for e in entries {
            let name = e.file_name().to_string_lossy().into_owned();
            if !keep.contains(&name) {
                remove_tree(&e.path());
            }
        }
        // Blobs of layers removed while no daemon ran, or before removal
        // deleted them.
        let layers = self
            .meta
            .all()?
            .into_values()
            .filter_map(|r| r.remote.map(|x| x.layer))
            .collect();
        if let Err(e) = crate::cache::blobs::remove_unlisted(self.remotes.cache_dir(), &layers) {
            tracing::warn!("removing cached blobs no snapshot uses: {e}");
        }
        Ok(())
    }

    fn get(&self, key: &str) -> Result<Record> {
        self.meta
            .get(key)?
            .ok_or_else(|| Error::not_found(format!("snapshot {key} does not exist")))
    }
}

fn info(key: &str, r: &Record) -> Info {
    Info {
        name: key.to_string(),
        parent: r.parent.clone(),
        kind: r.kind,
        created: r.created,
        updated: r.updated,
        labels: r.labels.clone(),
    }
}

/// A parent must exist and be committed.
fn check_parent(t: &Txn<'_>, parent: &str) -> Result<()> {
    if parent.is_empty() {
        return Ok(());
    }
    match t.get(parent)? {
        None => Err(Error::not_found(format!(
            "parent snapshot {parent} does not exist"
        ))),
        Some(p) if p.kind != Kind::Committed => Err(Error::invalid(format!(
            "parent {parent} is not a committed snapshot"
        ))),
        Some(_) => Ok(()),
    }
}

fn lowerdir(lowers: &[PathBuf]) -> String {
    let dirs: Vec<String> = lowers.iter().map(|p| p.display().to_string()).collect();
    format!("lowerdir={}", dirs.join(":"))
}

fn check_labels(labels: &BTreeMap<String, String>) -> Result<()> {
    match labels.iter().find(|(k, v)| k.len() + v.len() > MAX_LABEL) {
        Some((k, _)) => Err(Error::invalid(format!(
            "label {k} is longer than {MAX_LABEL} bytes with its value"
        ))),
        None => Ok(()),
    }
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Bytes (allocated) and inodes under `dir`, not following mounts.
fn disk_usage(dir: &Path) -> Result<(i64, i64)> {
    let top = fs::symlink_metadata(dir).map_err(|e| Error::io("usage", e))?;
    let (mut bytes, mut inodes) = (0i64, 0i64);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let Ok(m) = e.metadata() else { continue };
            inodes += 1;
            bytes += (m.blocks() * 512) as i64;
            if m.is_dir() && m.dev() == top.dev() {
                stack.push(e.path());
            }
        }
    }
    Ok((bytes, inodes))
}

/// Removes a snapshot directory, unmounting what is mounted in it first;
/// failures are logged, not fatal: cleanup retries them.
fn remove_tree(p: &Path) {
    if let Err(e) = sys::unmount_under(p) {
        tracing::warn!("{e}");
    }
    if let Err(e) = fs::remove_dir_all(p)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!("cannot remove {}: {e}", p.display());
    }
}

/// Makes the root, its `snapshots` directory and each snapshot directory
/// root's alone, tightening what an older version made from the umask.
fn tighten(root: &Path) -> std::io::Result<()> {
    private::dir(root)?;
    let snapshots = root.join("snapshots");
    private::dir(&snapshots)?;
    for e in fs::read_dir(&snapshots)? {
        let p = e?.path();
        if p.is_dir() {
            private::set_mode(&p, private::DIR)?;
        }
    }
    Ok(())
}

/// A remote layer's snapshot directory (0700) and its `fs` mount point
/// (0755), made or put right.
fn layer_dir(dir: &Path) -> std::io::Result<()> {
    private::dir(dir)?;
    let fs_dir = dir.join("fs");
    // A layer mount there (live, or kept for takeover while no daemon
    // serves it) shows the layer's root: leave it alone, and do not stat
    // into it.
    if sys::is_layer_mount(&fs_dir) {
        return Ok(());
    }
    private::dir_mode(&fs_dir, FS_MODE)
}

/// Fails if a layer in `chain` is poisoned.
fn refuse_poisoned(chain: &[Record]) -> Result<()> {
    match chain.iter().find_map(|r| {
        r.remote
            .as_ref()
            .filter(|x| x.diff_id.is_poisoned())
            .map(|x| (r, x))
    }) {
        Some((r, x)) => Err(poisoned(&format!("with id {}", r.id), x)),
        None => Ok(()),
    }
}

/// Why a poisoned layer is refused, and what the operator does about it.
fn poisoned(snapshot: &str, remote: &Remote) -> Error {
    let why = match &remote.diff_id {
        DiffId::Misnamed { chain } => {
            format!("makes chain ID {chain} on its parent, not the name it was committed under")
        }
        DiffId::Mismatch { claimed, actual } => {
            format!("has diff ID {actual}, not the {claimed} its image config claims")
        }
        _ => "is poisoned".to_string(),
    };
    Error::failed_precondition(format!(
        "snapshot {snapshot}: layer {} of {} {why}; it is not served. Remove the images that \
         use this layer and pull them again",
        remote.layer, remote.image
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(root: &Path) -> Store {
        let remote = RemoteConfig::for_tests(root);
        let upper = UpperConfig {
            tmpfs: false,
            size: None,
        };
        Store::open(root, remote, upper, DiffIdConfig::default()).unwrap()
    }

    /// A remote layer's Prepare makes its directory and then opens and
    /// mounts the layer, for seconds, before its record is committed: a
    /// Cleanup in between (containerd's garbage collection) removed the
    /// directory, and the mount failed with ENOENT. Cleanup now leaves the
    /// directories of Prepares under way, and only those.
    #[test]
    fn cleanup_leaves_the_directory_of_a_prepare_under_way() {
        let d = tempfile::tempdir().unwrap();
        let s = store(&d.path().join("root"));
        let (busy, orphan) = (s.dir(1000), s.dir(1001));
        layer_dir(&busy).unwrap();
        layer_dir(&orphan).unwrap();
        let held = Preparing::new(&s.preparing);
        held.hold(1000);
        s.cleanup().unwrap();
        assert!(busy.join("fs").is_dir(), "the Prepare's directory went");
        assert!(!orphan.exists(), "an orphan stayed");
        drop(held);
        s.cleanup().unwrap();
        assert!(!busy.exists(), "once given up, its directory is an orphan");
    }

    #[test]
    fn unpack_keys_are_containerds_extraction_snapshots() {
        assert!(unpack_key("ns/1/extract-184606894-SyLk sha256:9234"));
        assert!(unpack_key("extract-1-a sha256:9234"));
        assert!(!unpack_key("ns/2/c1"));
        assert!(!unpack_key("ns/2/extract-1-a"));
        assert!(!unpack_key("ns/2/my extract-1 sha256:1"));
    }

    #[test]
    fn a_commit_is_created_and_updated_at_its_own_time() {
        let d = tempfile::tempdir().unwrap();
        let s = store(&d.path().join("root"));
        s.prepare("active", "", BTreeMap::new(), Kind::Active)
            .unwrap();
        let prepared = s.stat("active").unwrap();
        // The clock moves on between the prepare and the commit.
        while SystemTime::now() <= prepared.created {
            std::thread::yield_now();
        }
        let before = SystemTime::now();
        s.commit("committed", "active", BTreeMap::new()).unwrap();
        let c = s.stat("committed").unwrap();
        assert_eq!(c.kind, Kind::Committed);
        assert_eq!(c.created, c.updated);
        assert!(
            c.created >= before,
            "{c:?} keeps the active snapshot's time"
        );

        // An update moves Updated, never Created.
        let labels = BTreeMap::from([("l".to_string(), "v".to_string())]);
        let u = s.update("committed", labels.clone(), &[]).unwrap();
        assert_eq!(u.created, c.created);
        assert!(u.updated >= c.updated);
        assert_eq!(u.labels, labels);
    }
}

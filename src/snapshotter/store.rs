//! Snapshot semantics, as containerd's overlayfs snapshotter has them: each
//! snapshot owns `snapshots/<id>/fs` (and `work`), active snapshots mount as
//! an overlay over their committed parents, and containerd applies layer
//! diffs into the mounts it is given.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use super::error::{Error, Result};
use super::filter::Filter;
use super::meta::{Kind, Meta, Record, Remote, Txn};
use super::remote::{
    IMAGE_LAYERS_LABELS, REF_LABEL, RemoteConfig, RemoteStats, Remotes, named_layer,
};
use crate::mount::sys;
use crate::private;

/// A snapshot's `fs` directory: the root of what containers see, so 0755 as
/// containerd's overlayfs snapshotter makes it, inside a 0700 parent.
const FS_MODE: u32 = 0o755;

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
}

impl Store {
    /// Opens the store under `root` (metadata in `root/metadata.db`).
    pub fn open(root: &Path, remote: RemoteConfig, upper: UpperConfig) -> Result<Self> {
        tighten(root).map_err(|e| Error::io(&format!("cannot create {}", root.display()), e))?;
        let meta = Meta::open(&root.join("metadata.db"))?;
        Ok(Store {
            root: root.to_path_buf(),
            meta,
            remotes: Arc::new(Remotes::new(remote)),
            upper,
        })
    }

    /// At start: mounts every committed remote layer again. Mounts a killed
    /// daemon left behind are detached first; a layer that cannot be mounted
    /// (registry down, key gone) is logged and left for a later start.
    pub fn restore(&self) -> Result<usize> {
        let mut n = 0;
        let mut claimed = std::collections::HashSet::new();
        for (key, rec) in self.meta.all()? {
            let Some(remote) = &rec.remote else { continue };
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
        if kind == Kind::Active
            && let Some(remote) = named_layer(&labels)
        {
            return Err(self.prepare_remote(parent, &labels, remote));
        }
        // Over lazily served layers, the upper directory goes on a tmpfs
        // (copy-up would put plaintext on disk), and only while a key on this
        // node still unwraps every encrypted layer below.
        let chain = self.chain(parent)?;
        let remotes: Vec<&Remote> = chain.iter().filter_map(|r| r.remote.as_ref()).collect();
        if kind == Kind::Active {
            for r in &remotes {
                self.remotes.authorize(r)?;
            }
        }
        self.ensure_mounted(&chain)?;
        let tmpfs = kind == Kind::Active && !remotes.is_empty() && self.upper.tmpfs;
        let now = SystemTime::now();
        let made = std::cell::Cell::new(None);
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
        match self.meta.get(&target) {
            Ok(Some(_)) => return exists(),
            Ok(None) => {}
            Err(e) => return e,
        }
        let id = match self.meta.update(|t| {
            check_parent(t, parent)?;
            t.next_id()
        }) {
            Ok(id) => id,
            Err(e) => return e,
        };
        let dir = self.dir(id);
        let done = (|| {
            layer_dir(&dir).map_err(|e| Error::io("cannot create snapshot directory", e))?;
            self.prefetch_above(&remote, labels);
            let mode = self.remotes.mount(id, &mut remote, &dir.join("fs"))?;
            let now = SystemTime::now();
            self.meta.update(|t| {
                if t.get(&target)?.is_some() {
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
                        usage: Some((0, 0)),
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
                    updated: SystemTime::now(),
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
        if rec.remote.is_some()
            && let Err(e) = self.remotes.unmount(rec.id)
        {
            tracing::warn!("{e}");
        }
        remove_tree(&self.dir(rec.id));
        Ok(())
    }

    /// The info of `key`.
    pub fn stat(&self, key: &str) -> Result<Info> {
        Ok(info(key, &self.get(key)?))
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

    /// Bytes and inodes used by `key`'s own directory.
    pub fn usage(&self, key: &str) -> Result<(i64, i64)> {
        let rec = self.get(key)?;
        match rec.usage {
            Some(u) => Ok(u),
            None => disk_usage(&self.dir(rec.id).join("fs")),
        }
    }

    /// Removes directories no record owns (left by a crash or a failed call).
    pub fn cleanup(&self) -> Result<()> {
        let keep: std::collections::HashSet<String> =
            self.meta.ids()?.iter().map(|i| i.to_string()).collect();
        let dir = self.root.join("snapshots");
        let entries =
            fs::read_dir(&dir).map_err(|e| Error::io(&format!("{}", dir.display()), e))?;
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !keep.contains(&name) {
                remove_tree(&e.path());
            }
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

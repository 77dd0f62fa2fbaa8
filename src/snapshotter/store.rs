//! Snapshot semantics, as containerd's overlayfs snapshotter has them: each
//! snapshot owns `snapshots/<id>/fs` (and `work`), active snapshots mount as
//! an overlay over their committed parents, and containerd applies layer
//! diffs into the mounts it is given.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::error::{Error, Result};
use super::filter::Filter;
use super::meta::{Kind, Meta, Record};

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

/// The snapshot store under one root directory.
pub struct Store {
    root: PathBuf,
    meta: Meta,
}

impl Store {
    /// Opens the store under `root` (metadata in `root/metadata.db`).
    pub fn open(root: &Path) -> Result<Self> {
        fs::create_dir_all(root.join("snapshots"))
            .map_err(|e| Error::io(&format!("cannot create {}", root.display()), e))?;
        let meta = Meta::open(&root.join("metadata.db"))?;
        Ok(Store {
            root: root.to_path_buf(),
            meta,
        })
    }

    /// The directory of snapshot `id`.
    pub fn dir(&self, id: u64) -> PathBuf {
        self.root.join("snapshots").join(id.to_string())
    }

    /// Creates an active snapshot or a view of `parent`.
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
        // The directories come first: a crash before the transaction commits
        // leaves only an orphan directory, which cleanup removes.
        let staged = self
            .root
            .join("snapshots")
            .join(format!("new-{}", unique()));
        fs::create_dir_all(staged.join("fs"))
            .and_then(|()| fs::create_dir_all(staged.join("work")))
            .map_err(|e| Error::io("cannot create snapshot directory", e))?;
        let now = SystemTime::now();
        let made = self.meta.update(|t| {
            if t.get(key)?.is_some() {
                return Err(Error::already_exists(format!(
                    "snapshot {key}: already exists"
                )));
            }
            if !parent.is_empty() {
                match t.get(parent)? {
                    None => {
                        return Err(Error::not_found(format!(
                            "parent snapshot {parent} does not exist"
                        )));
                    }
                    Some(p) if p.kind != Kind::Committed => {
                        return Err(Error::invalid(format!(
                            "parent {parent} is not a committed snapshot"
                        )));
                    }
                    Some(_) => {}
                }
            }
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
                tmpfs: false,
            };
            // Rename inside the transaction: if it fails, nothing is recorded.
            fs::rename(&staged, self.dir(id))
                .map_err(|e| Error::io("cannot place snapshot directory", e))?;
            t.put(key, &rec)?;
            Ok(rec)
        });
        let rec = match made {
            Ok(r) => r,
            Err(e) => {
                let _ = fs::remove_dir_all(&staged);
                return Err(e);
            }
        };
        self.mounts_of(&rec)
    }

    /// The mounts of an active snapshot or view.
    pub fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        let rec = self.get(key)?;
        if rec.kind == Kind::Committed {
            return Err(Error::failed_precondition(format!(
                "snapshot {key} is committed; only active snapshots and views have mounts"
            )));
        }
        self.mounts_of(&rec)
    }

    fn mounts_of(&self, rec: &Record) -> Result<Vec<Mount>> {
        let lowers = self.lowers(&rec.parent)?;
        let fs_dir = self.dir(rec.id).join("fs");
        let path = |p: &Path| p.display().to_string();
        let bind = |source: PathBuf, mode: &str| Mount {
            kind: "bind".into(),
            source: path(&source),
            options: vec![mode.into(), "rbind".into()],
        };
        Ok(match (rec.kind, lowers.as_slice()) {
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
        })
    }

    /// The `fs` directories of `parent` and its ancestors, nearest first.
    fn lowers(&self, parent: &str) -> Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        let mut next = parent.to_string();
        while !next.is_empty() {
            let rec = self
                .meta
                .get(&next)?
                .ok_or_else(|| Error::not_found(format!("parent snapshot {next} is missing")))?;
            out.push(self.dir(rec.id).join("fs"));
            next = rec.parent;
            if out.len() > 500 {
                return Err(Error::failed_precondition(format!(
                    "snapshot chain through {parent} is too deep or loops"
                )));
            }
        }
        Ok(out)
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

/// A name no other staging directory has.
fn unique() -> String {
    let mut b = [0u8; 8];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut b);
    hex::encode(b)
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

/// Removes a snapshot directory; failures are logged, not fatal: cleanup
/// retries them.
fn remove_tree(p: &Path) {
    if let Err(e) = fs::remove_dir_all(p)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!("cannot remove {}: {e}", p.display());
    }
}

//! Snapshot metadata in an embedded database (redb). Every RPC that changes
//! state does so in one write transaction, so a daemon killed at any point
//! leaves either the old metadata or the new, never a mix. Directories are
//! created before and removed after their transaction; [`Meta::ids`] lets
//! cleanup find the ones a crash orphaned.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::SystemTime;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::error::{Error, Result};

const SNAPSHOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshots");
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");

/// What kind of snapshot a record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    View,
    Active,
    Committed,
}

/// Where a lazily served layer comes from: enough to mount it again after a
/// restart. Holds no key and nothing decrypted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Remote {
    /// Image reference the layer was resolved through.
    pub image: String,
    /// Manifest digest the layer descriptor was read from.
    pub manifest: String,
    /// The layer's (compressed, maybe encrypted) blob digest.
    pub layer: String,
    /// The layer descriptor as the manifest has it (JSON; its ocicrypt
    /// annotations carry only wrapped keys), to re-mount and re-authorize
    /// without asking the registry again.
    pub descriptor: String,
    /// Whether the layer's content was checked against the diff ID its
    /// image config claims (the name containerd gives the snapshot).
    #[serde(default)]
    pub diff_id: DiffId,
    /// Served through a seek index: until its check, not reused for
    /// another image's manifest even with the same blob.
    #[serde(default)]
    pub seek: bool,
}

/// Where a remote layer stands against the diff ID its image claims.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum DiffId {
    /// Not checked yet: served, but not reused for another image's layer.
    #[default]
    Pending,
    /// The whole layer hashed to the claimed diff ID.
    Verified(String),
    /// It hashed to something else: the layer is poisoned, nothing of it
    /// is served, and it is replaced when an image needs that chain.
    Mismatch { claimed: String, actual: String },
    /// It hashed to the claimed diff ID, but on its parent that makes chain
    /// ID `chain`, not the name it was committed under (labels an image
    /// set itself named another image's layer): poisoned, as a mismatch.
    Misnamed { chain: String },
    /// It was served through a seek index that does not match the blob
    /// (a co-recipient's lie, or another blob's index): poisoned.
    IndexMismatch { why: String },
}

impl DiffId {
    /// Not to be served, nor reused: its content is not what its name says.
    pub fn is_poisoned(&self) -> bool {
        matches!(
            self,
            DiffId::Mismatch { .. } | DiffId::Misnamed { .. } | DiffId::IndexMismatch { .. }
        )
    }
}

/// One snapshot's metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Names the snapshot's directory; stays the same through commit.
    pub id: u64,
    pub kind: Kind,
    pub parent: String,
    pub labels: BTreeMap<String, String>,
    pub created: SystemTime,
    pub updated: SystemTime,
    /// Disk usage captured at commit: (bytes, inodes).
    pub usage: Option<(i64, i64)>,
    /// Set for layers served lazily by lazycrypt.
    pub remote: Option<Remote>,
    /// Upper and work directories live on a tmpfs (active snapshots over
    /// lazily served layers: overlay copy-up would otherwise put plaintext
    /// on disk).
    pub tmpfs: bool,
}

/// The metadata database.
pub struct Meta {
    db: Database,
}

fn db_err(e: impl std::fmt::Display) -> Error {
    Error::internal(format!("metadata: {e}"))
}

impl Meta {
    /// Opens (or creates) the database at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let open_err = |e: &dyn std::fmt::Display| {
            Error::internal(format!("cannot open metadata {}: {e}", path.display()))
        };
        // Created 0600 (or tightened to it), not from the umask: the labels
        // name images and layers.
        crate::private::open(
            path,
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true),
        )
        .map_err(|e| open_err(&e))?;
        let db = Database::create(path).map_err(|e| open_err(&e))?;
        let w = db.begin_write().map_err(db_err)?;
        w.open_table(SNAPSHOTS).map_err(db_err)?;
        w.open_table(COUNTERS).map_err(db_err)?;
        w.commit().map_err(db_err)?;
        Ok(Meta { db })
    }

    /// The record of `key`, if any.
    pub fn get(&self, key: &str) -> Result<Option<Record>> {
        let r = self.db.begin_read().map_err(db_err)?;
        let t = r.open_table(SNAPSHOTS).map_err(db_err)?;
        let v = t.get(key).map_err(db_err)?;
        v.map(|v| decode(key, v.value())).transpose()
    }

    /// All records, by key.
    pub fn all(&self) -> Result<BTreeMap<String, Record>> {
        let r = self.db.begin_read().map_err(db_err)?;
        let t = r.open_table(SNAPSHOTS).map_err(db_err)?;
        let mut out = BTreeMap::new();
        for item in t.iter().map_err(db_err)? {
            let (k, v) = item.map_err(db_err)?;
            out.insert(k.value().to_string(), decode(k.value(), v.value())?);
        }
        Ok(out)
    }

    /// Ids of all records (their directories must be kept).
    pub fn ids(&self) -> Result<Vec<u64>> {
        Ok(self.all()?.values().map(|r| r.id).collect())
    }

    /// Runs `f` in one write transaction over the snapshot table; nothing
    /// is written unless `f` succeeds.
    pub fn update<T>(&self, f: impl FnOnce(&mut Txn<'_>) -> Result<T>) -> Result<T> {
        let w = self.db.begin_write().map_err(db_err)?;
        let out = {
            let mut txn = Txn {
                snapshots: w.open_table(SNAPSHOTS).map_err(db_err)?,
                counters: w.open_table(COUNTERS).map_err(db_err)?,
            };
            f(&mut txn)?
        };
        w.commit().map_err(db_err)?;
        Ok(out)
    }
}

/// One write transaction.
pub struct Txn<'a> {
    snapshots: redb::Table<'a, &'static str, &'static [u8]>,
    counters: redb::Table<'a, &'static str, u64>,
}

impl Txn<'_> {
    pub fn get(&self, key: &str) -> Result<Option<Record>> {
        let v = self.snapshots.get(key).map_err(db_err)?;
        v.map(|v| decode(key, v.value())).transpose()
    }

    pub fn put(&mut self, key: &str, rec: &Record) -> Result<()> {
        let bytes = serde_json::to_vec(rec).map_err(db_err)?;
        self.snapshots
            .insert(key, bytes.as_slice())
            .map_err(db_err)?;
        Ok(())
    }

    pub fn delete(&mut self, key: &str) -> Result<()> {
        self.snapshots.remove(key).map_err(db_err)?;
        Ok(())
    }

    /// Keys whose parent is `key`.
    pub fn children(&self, key: &str) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for item in self.snapshots.iter().map_err(db_err)? {
            let (k, v) = item.map_err(db_err)?;
            if decode(k.value(), v.value())?.parent == key {
                out.push(k.value().to_string());
            }
        }
        Ok(out)
    }

    /// A fresh snapshot id.
    pub fn next_id(&mut self) -> Result<u64> {
        let id = self
            .counters
            .get("id")
            .map_err(db_err)?
            .map(|v| v.value())
            .unwrap_or(0)
            + 1;
        self.counters.insert("id", id).map_err(db_err)?;
        Ok(id)
    }
}

fn decode(key: &str, bytes: &[u8]) -> Result<Record> {
    serde_json::from_slice(bytes)
        .map_err(|e| Error::internal(format!("metadata of snapshot {key} is damaged: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: u64, parent: &str) -> Record {
        Record {
            id,
            kind: Kind::Committed,
            parent: parent.into(),
            labels: BTreeMap::new(),
            created: SystemTime::now(),
            updated: SystemTime::now(),
            usage: None,
            remote: None,
            tmpfs: false,
        }
    }

    #[test]
    fn a_failed_transaction_writes_nothing_and_records_survive_reopening() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("meta.db");
        {
            let m = Meta::open(&path).unwrap();
            m.update(|t| {
                let id = t.next_id()?;
                t.put("a", &rec(id, ""))
            })
            .unwrap();
            let e = m
                .update(|t| {
                    let id = t.next_id()?;
                    t.put("b", &rec(id, "a"))?;
                    Err::<(), _>(Error::failed_precondition("no"))
                })
                .unwrap_err();
            assert_eq!(e.to_string(), "no");
            assert!(m.get("b").unwrap().is_none());
        }
        let m = Meta::open(&path).unwrap();
        assert_eq!(m.get("a").unwrap().unwrap().id, 1);
        // The failed transaction did not consume an id either.
        m.update(|t| {
            assert_eq!(t.next_id()?, 2);
            assert!(t.children("a")?.is_empty());
            Ok(())
        })
        .unwrap();
    }
}

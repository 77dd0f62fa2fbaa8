//! OCI image layout directories (`oci:DIR[:TAG]`), read and write.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::{Value, json};

use super::digest::{self, Digest, HashingWriter};
use super::transport::{ImageDest, ImageSource, RawManifest};
use super::{Descriptor, Error, media};

const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// An OCI layout directory and the tag this copy reads or writes.
pub struct Layout {
    dir: PathBuf,
    tag: Option<String>,
    /// Set when this run created the directory, so abort can remove it.
    created_dir: bool,
    /// Blobs this run added, for abort.
    added: Mutex<Vec<PathBuf>>,
}

impl Layout {
    /// Opens an existing layout for reading.
    pub fn open(dir: &Path, tag: Option<String>) -> Result<Self, Error> {
        if !dir.join("index.json").is_file() {
            return Err(Error::NotFound(format!(
                "{}: not an OCI image layout (no index.json)",
                dir.display()
            )));
        }
        Ok(Layout {
            dir: dir.to_path_buf(),
            tag,
            created_dir: false,
            added: Mutex::new(Vec::new()),
        })
    }

    /// Opens a layout for writing, creating it if needed.
    pub fn create(dir: &Path, tag: Option<String>) -> Result<Self, Error> {
        let created_dir = !dir.exists();
        let io = |e: io::Error| Error::io(format!("creating OCI layout {}", dir.display()), e);
        fs::create_dir_all(dir.join("blobs").join("sha256")).map_err(io)?;
        let marker = dir.join("oci-layout");
        if !marker.exists() {
            fs::write(&marker, br#"{"imageLayoutVersion":"1.0.0"}"#).map_err(io)?;
        }
        Ok(Layout {
            dir: dir.to_path_buf(),
            tag,
            created_dir,
            added: Mutex::new(Vec::new()),
        })
    }

    fn blob_path(&self, d: &Digest) -> PathBuf {
        self.dir
            .join("blobs")
            .join(d.algorithm().as_ref())
            .join(d.digest())
    }

    fn read_index(&self) -> Result<Value, Error> {
        let p = self.dir.join("index.json");
        let raw = fs::read(&p).map_err(|e| Error::io(format!("reading {}", p.display()), e))?;
        serde_json::from_slice(&raw).map_err(|e| Error::Malformed(format!("{}: {e}", p.display())))
    }

    fn write_index(&self, index: &Value) -> Result<(), Error> {
        let tmp = self.dir.join(".index.json.tmp");
        let body = serde_json::to_vec(index).expect("json");
        fs::write(&tmp, body)
            .and_then(|_| fs::rename(&tmp, self.dir.join("index.json")))
            .map_err(|e| Error::io(format!("writing {}/index.json", self.dir.display()), e))
    }

    fn read_manifest(
        &self,
        media_type: &str,
        d: &Digest,
        size: Option<u64>,
    ) -> Result<RawManifest, Error> {
        let bytes = self.read_blob_bytes(d, size)?;
        Ok(RawManifest {
            media_type: media_type.to_string(),
            digest: d.clone(),
            bytes,
        })
    }

    fn read_blob_bytes(&self, d: &Digest, size: Option<u64>) -> Result<Vec<u8>, Error> {
        let p = self.blob_path(d);
        if size.is_some_and(|s| s > super::MAX_MANIFEST) {
            return Err(Error::Malformed(format!(
                "{d} in {}: manifest too large",
                self.dir.display()
            )));
        }
        let bytes = fs::read(&p).map_err(|e| self.not_found_or(d, e))?;
        if digest::of(&bytes) != *d {
            return Err(Error::Malformed(format!(
                "blob {d} in {} does not match its digest",
                self.dir.display()
            )));
        }
        Ok(bytes)
    }

    fn not_found_or(&self, d: &Digest, e: io::Error) -> Error {
        if e.kind() == io::ErrorKind::NotFound {
            Error::NotFound(format!(
                "blob {d} not found in OCI layout {}",
                self.dir.display()
            ))
        } else {
            Error::io(format!("reading blob {d} in {}", self.dir.display()), e)
        }
    }
}

impl ImageSource for Layout {
    fn root(&self) -> Result<RawManifest, Error> {
        let index = self.read_index()?;
        // Referrers (seek indexes, signatures) are listed untagged beside
        // the images they refer to, with their artifactType: not images.
        let entries: Vec<Value> = index["manifests"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|e| !is_referrer(e))
            .collect();
        let name_of = |e: &Value| e["annotations"][REF_NAME].as_str().map(str::to_string);
        let chosen = match &self.tag {
            Some(t) => entries
                .iter()
                .find(|e| name_of(e).as_deref() == Some(t.as_str())),
            None if entries.len() == 1 => entries.first(),
            None => {
                let tags: Vec<String> = entries.iter().filter_map(name_of).collect();
                return Err(Error::NotFound(format!(
                    "{} holds {} images; name one as oci:DIR:TAG (tags: {})",
                    self.dir.display(),
                    entries.len(),
                    tags.join(", ")
                )));
            }
        };
        let Some(entry) = chosen else {
            return Err(Error::NotFound(format!(
                "no image tagged {:?} in OCI layout {}",
                self.tag.as_deref().unwrap_or(""),
                self.dir.display()
            )));
        };
        let desc: Descriptor = serde_json::from_value(entry.clone()).map_err(|e| {
            Error::Malformed(format!(
                "{}/index.json: bad descriptor: {e}",
                self.dir.display()
            ))
        })?;
        self.manifest(&desc)
    }

    fn manifest(&self, desc: &Descriptor) -> Result<RawManifest, Error> {
        self.read_manifest(desc.media_type().as_ref(), desc.digest(), Some(desc.size()))
    }

    fn blob(&self, desc: &Descriptor) -> Result<Box<dyn Read + Send>, Error> {
        let f = File::open(self.blob_path(desc.digest()))
            .map_err(|e| self.not_found_or(desc.digest(), e))?;
        Ok(Box::new(f))
    }

    fn blob_range(&self, desc: &Descriptor, offset: u64, len: u64) -> Result<Vec<u8>, Error> {
        let mut f = File::open(self.blob_path(desc.digest()))
            .map_err(|e| self.not_found_or(desc.digest(), e))?;
        let mut buf = vec![0u8; len as usize];
        f.seek(SeekFrom::Start(offset))
            .and_then(|_| f.read_exact(&mut buf))
            .map_err(|e| {
                Error::io(
                    format!("reading {len} bytes at {offset} of blob {}", desc.digest()),
                    e,
                )
            })?;
        Ok(buf)
    }

    /// The image-layout spec has no referrers mechanism; referrers are the
    /// untagged `index.json` entries with an `artifactType` (as oras keeps
    /// them) whose manifest names `digest` as its subject.
    fn referrers(&self, digest: &Digest) -> Result<Option<RawManifest>, Error> {
        let index = self.read_index()?;
        let mut listed = Vec::new();
        for e in index["manifests"].as_array().into_iter().flatten() {
            if !is_referrer(e) {
                continue;
            }
            let Ok(desc) = serde_json::from_value::<Descriptor>(e.clone()) else {
                continue;
            };
            let Ok(m) = self.manifest(&desc) else {
                continue;
            };
            let subject = serde_json::from_slice::<Value>(&m.bytes)
                .ok()
                .and_then(|v| v["subject"]["digest"].as_str().map(str::to_string));
            if subject.as_deref() == Some(digest.to_string().as_str()) {
                listed.push(e.clone());
            }
        }
        let bytes = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": media::OCI_INDEX,
            "manifests": listed,
        }))
        .expect("json");
        Ok(Some(RawManifest {
            media_type: media::OCI_INDEX.to_string(),
            digest: digest::of(&bytes),
            bytes,
        }))
    }
}

/// An untagged `index.json` entry with an `artifactType`: a referrer
/// (tagged entries are images, whatever their descriptor says).
fn is_referrer(e: &Value) -> bool {
    e.get("artifactType").is_some() && e["annotations"][REF_NAME].as_str().is_none()
}

impl ImageDest for Layout {
    fn has_blob(&self, d: &Digest) -> Result<bool, Error> {
        Ok(self.blob_path(d).is_file())
    }

    fn put_blob(&self, data: &mut dyn Read, _media_type: &str) -> Result<(Digest, u64), Error> {
        let dir = self.dir.join("blobs").join("sha256");
        let tmp = dir.join(format!(".tmp-{}", hex::encode(rand::random::<[u8; 8]>())));
        let result = (|| {
            let f = File::create(&tmp)?;
            let mut w = HashingWriter::new(io::BufWriter::with_capacity(1 << 20, f));
            io::copy(data, &mut w)?;
            let (d, n, mut inner) = w.finish();
            inner.flush()?;
            Ok::<_, io::Error>((d, n))
        })();
        let (d, n) = match result {
            Ok(v) => v,
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(Error::io(
                    format!("writing blob to {}", self.dir.display()),
                    e,
                ));
            }
        };
        let dst = self.blob_path(&d);
        if dst.exists() {
            let _ = fs::remove_file(&tmp);
        } else {
            fs::rename(&tmp, &dst).map_err(|e| Error::io(format!("storing blob {d}"), e))?;
            self.added.lock().expect("lock").push(dst);
        }
        Ok((d, n))
    }

    fn put_manifest(&self, m: &RawManifest) -> Result<(), Error> {
        let (d, _) = self.put_blob(&mut &m.bytes[..], &m.media_type)?;
        debug_assert_eq!(d, m.digest);
        Ok(())
    }

    fn commit(&self, root: &RawManifest) -> Result<(), Error> {
        self.put_manifest(root)?;
        let mut index = if self.dir.join("index.json").exists() {
            self.read_index()?
        } else {
            json!({"schemaVersion": 2, "manifests": []})
        };
        let mut entry = json!({
            "mediaType": root.media_type,
            "digest": root.digest.to_string(),
            "size": root.bytes.len(),
        });
        if let Some(t) = &self.tag {
            entry["annotations"] = json!({ REF_NAME: t });
        }
        let tag = self.tag.clone();
        let manifests = index["manifests"].as_array_mut().ok_or_else(|| {
            Error::Malformed(format!(
                "{}/index.json has no manifests list",
                self.dir.display()
            ))
        })?;
        // Like skopeo: the tag moves to the new image; an untagged write replaces untagged entries.
        // Referrers stay: they name their subject by digest.
        manifests.retain(|e| {
            is_referrer(e) || e["annotations"][REF_NAME].as_str().map(str::to_string) != tag
        });
        manifests.push(entry);
        if index.get("mediaType").is_none() {
            index["mediaType"] = json!(media::OCI_INDEX);
        }
        self.write_index(&index)
    }

    fn put_referrer(
        &self,
        m: &RawManifest,
        _subject: &Digest,
        artifact_type: &str,
    ) -> Result<(), Error> {
        self.put_manifest(m)?;
        let mut index = self.read_index()?;
        let manifests = index["manifests"].as_array_mut().ok_or_else(|| {
            Error::Malformed(format!(
                "{}/index.json has no manifests list",
                self.dir.display()
            ))
        })?;
        let digest = m.digest.to_string();
        if manifests
            .iter()
            .any(|e| e["digest"].as_str() == Some(&digest))
        {
            return Ok(());
        }
        manifests.push(json!({
            "mediaType": m.media_type,
            "digest": digest,
            "size": m.bytes.len(),
            "artifactType": artifact_type,
        }));
        self.write_index(&index)
    }

    fn abort(&self) {
        if self.created_dir {
            let _ = fs::remove_dir_all(&self.dir);
            return;
        }
        for p in self.added.lock().expect("lock").drain(..) {
            let _ = fs::remove_file(p);
        }
    }
}

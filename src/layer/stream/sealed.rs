//! A scratch copy of a decompressed stream, kept on disk only as ciphertext
//! under a key that lives in memory for as long as the copy is used.
//!
//! zstd decoders cannot be checkpointed cheaply (their window is megabytes,
//! not gzip's 32 KiB), so a zstd layer is decompressed once while it is
//! verified and its tar stream is written here, sealed. Reads decrypt from it
//! at any offset. The file has no name (`O_TMPFILE`, or unlinked at once), so
//! it disappears with the process, and its key is zeroized on drop: nothing
//! readable is left at rest even after a crash.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use zeroize::Zeroizing;

use crate::crypto::cipher::LayerKey;
use crate::layer::source::range_end;

/// Disk the sealed copies of one daemon may take together, unless set.
pub const DEFAULT_SEALED_SIZE: u64 = 16 << 30;

/// Where sealed copies go, and the disk they may take together: a zstd
/// layer's copy grows with its *uncompressed* size, which the image decides
/// (a few MiB of blob can claim terabytes).
#[derive(Debug, Clone)]
pub struct Scratch {
    dir: PathBuf,
    budget: Arc<DiskBudget>,
}

#[derive(Debug)]
struct DiskBudget {
    limit: u64,
    used: AtomicU64,
}

impl Scratch {
    /// Sealed copies in `dir`, at most `limit` bytes of them at a time.
    pub fn new(dir: PathBuf, limit: u64) -> Self {
        Scratch {
            dir,
            budget: Arc::new(DiskBudget {
                limit,
                used: AtomicU64::new(0),
            }),
        }
    }

    /// Bytes the live sealed copies take.
    pub fn used(&self) -> u64 {
        self.budget.used.load(Ordering::Relaxed)
    }
}

/// A nameless file of ciphertext under a fresh in-memory key.
pub struct Sealed {
    file: File,
    key: LayerKey,
    len: u64,
    budget: Arc<DiskBudget>,
}

impl Drop for Sealed {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.len, Ordering::Relaxed);
    }
}

impl Sealed {
    /// Creates an empty sealed file in `scratch`.
    pub fn create(scratch: &Scratch) -> io::Result<Self> {
        let dir: &Path = &scratch.dir;
        crate::private::dir(dir)?;
        let file = match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_TMPFILE)
            .open(dir)
        {
            Ok(f) => f,
            // File systems without O_TMPFILE: a random name, unlinked at once.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EISDIR)) => {
                let mut name = [0u8; 12];
                rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut name);
                let path = dir.join(format!(".sealed-{}", hex::encode(name)));
                let f = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)?;
                std::fs::remove_file(&path)?;
                f
            }
            Err(e) => return Err(e),
        };
        Ok(Sealed {
            file,
            key: LayerKey::generate(),
            len: 0,
            budget: scratch.budget.clone(),
        })
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Seals and appends `plain`; fails, writing nothing, if the sealed
    /// copies would pass their disk budget.
    pub fn append(&mut self, plain: &[u8]) -> io::Result<()> {
        let n = plain.len() as u64;
        let b = &self.budget;
        let taken = b
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                u.checked_add(n).filter(|&t| t <= b.limit)
            });
        if taken.is_err() {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                format!(
                    "its sealed copy passes what the sealed-copy disk budget leaves \
                     ({} MiB in all; --sealed-size, sealed_size)",
                    b.limit >> 20
                ),
            ));
        }
        let mut buf = Zeroizing::new(plain.to_vec());
        self.key.apply_at(self.len, &mut buf);
        let written = self.file.write_all_at(&buf, self.len);
        if let Err(e) = written {
            b.used.fetch_sub(n, Ordering::Relaxed);
            return Err(e);
        }
        self.len += n;
        Ok(())
    }

    /// Fills `buf` with the plaintext from `offset`.
    pub fn read_into(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        range_end(offset, buf.len() as u64, self.len)?;
        self.file.read_exact_at(buf, offset)?;
        self.key.apply_at(offset, buf);
        Ok(())
    }
}

/// Passes a stream through while sealing a copy of every byte read.
pub struct Tee<R> {
    pub inner: R,
    pub sealed: Sealed,
}

impl<R: io::Read> io::Read for Tee<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.sealed.append(&buf[..n])?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_back_what_was_written_and_stores_no_plaintext() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Sealed::create(&Scratch::new(dir.path().into(), u64::MAX)).unwrap();
        let text = b"the quick brown fox ".repeat(5000);
        s.append(&text[..777]).unwrap();
        s.append(&text[777..]).unwrap();
        assert_eq!(s.len(), text.len() as u64);
        let mut buf = vec![0u8; 50_000];
        s.read_into(1000, &mut buf).unwrap();
        assert_eq!(buf, &text[1000..51_000]);
        s.read_into(0, &mut buf[..10]).unwrap();
        assert_eq!(buf[..10], text[..10]);
        assert!(s.read_into(text.len() as u64 - 1, &mut buf[..2]).is_err());
        // Nameless, and what is stored is not the text.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let mut raw = vec![0u8; text.len()];
        s.file.read_exact_at(&mut raw, 0).unwrap();
        assert!(!raw.windows(9).any(|w| w == b"quick bro"));
    }

    #[test]
    fn sealed_copies_keep_to_their_disk_budget_together() {
        let dir = tempfile::tempdir().unwrap();
        let scratch = Scratch::new(dir.path().into(), 3 << 20);
        let mut a = Sealed::create(&scratch).unwrap();
        a.append(&[7u8; 2 << 20]).unwrap();
        let mut b = Sealed::create(&scratch).unwrap();
        let e = b.append(&[7u8; (1 << 20) + 1]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::StorageFull);
        assert!(
            e.to_string()
                .contains("(3 MiB in all; --sealed-size, sealed_size)"),
            "{e}"
        );
        assert_eq!((b.len(), scratch.used()), (0, 2 << 20));
        drop(a);
        b.append(&[7u8; 3 << 20]).unwrap();
        assert_eq!(scratch.used(), 3 << 20);
        drop(b);
        assert_eq!(scratch.used(), 0);
    }
}

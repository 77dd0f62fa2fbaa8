//! Range reads of one layer blob, counted, from any image source.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::oci::Descriptor;
use crate::oci::transport::ImageSource;

/// Bytes `[offset, offset + len)` of one blob.
pub trait RangeSource: Send + Sync {
    /// The blob's size.
    fn size(&self) -> u64;
    /// Reads a range; fails rather than return fewer bytes.
    fn read_range(&self, offset: u64, len: u64) -> io::Result<Vec<u8>>;
    /// Bytes fetched from the underlying source so far.
    fn fetched(&self) -> u64;
}

/// A layer blob in an OCI layout or registry.
pub struct BlobRange {
    src: Arc<dyn ImageSource>,
    desc: Descriptor,
    fetched: AtomicU64,
}

impl BlobRange {
    pub fn new(src: Arc<dyn ImageSource>, desc: Descriptor) -> Self {
        BlobRange {
            src,
            desc,
            fetched: AtomicU64::new(0),
        }
    }
}

impl BlobRange {
    /// Counts bytes of this blob fetched outside `read_range` (a whole-blob
    /// stream), so `fetched` tells all that came from the source.
    pub fn note_fetched(&self, n: u64) {
        self.fetched.fetch_add(n, Ordering::Relaxed);
    }
}

impl RangeSource for BlobRange {
    fn size(&self) -> u64 {
        self.desc.size()
    }

    fn read_range(&self, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        if offset
            .checked_add(len)
            .is_none_or(|end| end > self.desc.size())
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "range {offset}+{len} is past the end of blob {} ({} bytes)",
                    self.desc.digest(),
                    self.desc.size()
                ),
            ));
        }
        let bytes = self
            .src
            .blob_range(&self.desc, offset, len)
            .map_err(io::Error::other)?;
        self.fetched
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        Ok(bytes)
    }

    fn fetched(&self) -> u64 {
        self.fetched.load(Ordering::Relaxed)
    }
}

/// An in-memory blob, for tests and benchmarks.
pub struct MemoryRange {
    pub data: Vec<u8>,
    pub fetched: AtomicU64,
}

impl MemoryRange {
    pub fn new(data: Vec<u8>) -> Self {
        MemoryRange {
            data,
            fetched: AtomicU64::new(0),
        }
    }
}

impl RangeSource for MemoryRange {
    fn size(&self) -> u64 {
        self.data.len() as u64
    }

    fn read_range(&self, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        let end = offset
            .checked_add(len)
            .filter(|&e| e <= self.data.len() as u64)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("range {offset}+{len} is past the end of the blob"),
                )
            })?;
        self.fetched.fetch_add(len, Ordering::Relaxed);
        Ok(self.data[offset as usize..end as usize].to_vec())
    }

    fn fetched(&self) -> u64 {
        self.fetched.load(Ordering::Relaxed)
    }
}

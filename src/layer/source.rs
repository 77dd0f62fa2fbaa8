//! Range reads of one layer blob, counted, from any image source.

use std::io::{self, BufRead, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use zeroize::Zeroizing;

use crate::crypto::cipher::LayerKey;
use crate::oci::Descriptor;
use crate::oci::transport::ImageSource;

/// Bytes `[offset, offset + len)` of one blob.
pub trait RangeSource: Send + Sync {
    /// The blob's size.
    fn size(&self) -> u64;
    /// Fills `buf` from `offset`; fails rather than return fewer bytes.
    fn read_into(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Reads a range; fails rather than return fewer bytes.
    fn read_range(&self, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        let len = usize::try_from(len).map_err(|_| past_end(offset, len, self.size()))?;
        let mut v = vec![0u8; len];
        self.read_into(offset, &mut v)?;
        Ok(v)
    }
    /// Makes a range cheap to read piecewise (a cache fetches it in one go).
    fn prepare(&self, _offset: u64, _len: u64) -> io::Result<()> {
        Ok(())
    }
    /// Whether reading the range needs no fetch (it is cached locally).
    fn has(&self, _offset: u64, _len: u64) -> bool {
        false
    }
    /// Bytes fetched from the underlying source so far.
    fn fetched(&self) -> u64;
    /// Drops a range from a local cache: bytes read from it failed their
    /// check, so the next read must fetch them again rather than fail
    /// forever on a bad copy.
    fn forget_range(&self, _offset: u64, _len: u64) -> io::Result<()> {
        Ok(())
    }
}

/// Prefetched ranges are fetched in requests of at most this size, so that
/// a read waiting on the prefetch waits for one piece, not the whole region,
/// and no request's body is larger.
pub const PREFETCH_PIECE: u64 = 4 << 20;

/// Brings `[lo, hi)` of `src` into its cache in requests of at most
/// [`PREFETCH_PIECE`].
pub fn prepare_in_pieces(src: &dyn RangeSource, lo: u64, hi: u64) -> io::Result<()> {
    let mut at = lo;
    while at < hi {
        let n = PREFETCH_PIECE.min(hi - at);
        src.prepare(at, n)?;
        at += n;
    }
    Ok(())
}

/// The end of `[offset, offset + len)` if it lies within `size` bytes.
pub fn range_end(offset: u64, len: u64, size: u64) -> io::Result<u64> {
    offset
        .checked_add(len)
        .filter(|&e| e <= size)
        .ok_or_else(|| past_end(offset, len, size))
}

fn past_end(offset: u64, len: u64, size: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("range {offset}+{len} is past the end of the blob ({size} bytes)"),
    )
}

/// Bytes read per piece by [`RangeReader`]: small enough to stay in the
/// core's cache between decrypting and inflating.
const PIECE: usize = 64 << 10;

/// Reads `[at, end)` of a blob in pieces, decrypting each with the layer key.
pub struct RangeReader<'a> {
    src: &'a dyn RangeSource,
    key: Option<&'a LayerKey>,
    at: u64,
    end: u64,
    buf: Zeroizing<Vec<u8>>,
    pos: usize,
    filled: usize,
}

impl<'a> RangeReader<'a> {
    pub fn new(src: &'a dyn RangeSource, key: Option<&'a LayerKey>, at: u64, end: u64) -> Self {
        RangeReader {
            src,
            key,
            at,
            end: end.min(src.size()),
            buf: Zeroizing::new(vec![0u8; PIECE]),
            pos: 0,
            filled: 0,
        }
    }
}

impl BufRead for RangeReader<'_> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.pos == self.filled && self.at < self.end {
            let n = (self.end - self.at).min(PIECE as u64) as usize;
            self.src.read_into(self.at, &mut self.buf[..n])?;
            if let Some(k) = self.key {
                k.apply_at(self.at, &mut self.buf[..n]);
            }
            self.at += n as u64;
            self.pos = 0;
            self.filled = n;
        }
        Ok(&self.buf[self.pos..self.filled])
    }

    fn consume(&mut self, amt: usize) {
        self.pos = (self.pos + amt).min(self.filled);
    }
}

impl Read for RangeReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = {
            let have = self.fill_buf()?;
            let n = have.len().min(out.len());
            out[..n].copy_from_slice(&have[..n]);
            n
        };
        self.consume(n);
        Ok(n)
    }
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

    fn read_into(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let got = self.read_range(offset, buf.len() as u64)?;
        buf.copy_from_slice(&got);
        Ok(())
    }

    fn read_range(&self, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        range_end(offset, len, self.desc.size())
            .map_err(|e| io::Error::new(e.kind(), format!("{e}: {}", self.desc.digest())))?;
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

    fn read_into(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let end = range_end(offset, buf.len() as u64, self.size())?;
        self.fetched.fetch_add(buf.len() as u64, Ordering::Relaxed);
        buf.copy_from_slice(&self.data[offset as usize..end as usize]);
        Ok(())
    }

    fn fetched(&self) -> u64 {
        self.fetched.load(Ordering::Relaxed)
    }
}

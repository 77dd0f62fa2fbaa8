//! What every layer format is served through: its entries, each regular
//! file's bytes laid out as extents of numbered chunks, and a source that
//! loads one chunk as verified plaintext.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

use zeroize::Zeroizing;

use super::estargz::toc::TocEntry;
use super::verified::Verified;

/// Part of a regular file that lies in one chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Where in the file this part starts.
    pub file_offset: u64,
    /// The chunk that holds it.
    pub chunk: u32,
    /// Where in the chunk's plaintext it starts.
    pub chunk_offset: u32,
    pub len: u32,
}

/// One entry of the layer: its TOC-style metadata and, for a regular file
/// with content, its extents in file order.
#[derive(Debug, Clone)]
pub struct Node {
    pub entry: TocEntry,
    pub extents: Vec<Extent>,
}

/// Loads one chunk as plaintext that has been checked against an anchored
/// digest. Blocking: called from FUSE and read-ahead threads, never from
/// async code.
pub trait ChunkSource: Send + Sync {
    /// The chunk's plaintext, exactly as long as its extents need, checked
    /// against the digest an anchor vouches for.
    fn load(&self, chunk: u32) -> io::Result<Verified>;
    /// Bytes fetched from the blob's source so far.
    fn fetched(&self) -> u64;
    /// Brings the blob ranges the image marks for prefetch (eStargz
    /// prioritized files, a seek index's prioritized entries) into the
    /// ciphertext cache, ahead of any read, in requests of at most
    /// [`super::source::PREFETCH_PIECE`] and no further than about `most`
    /// bytes; returns
    /// the chunks they hold, in the order to load them.
    fn prefetch(&self, _most: u64) -> io::Result<Vec<u32>> {
        Ok(Vec::new())
    }
    /// Chunks already loaded, checked, that the source holds for the cache
    /// to take (the whole-blob path keeps those its verified pass read),
    /// and the bytes of the layer's meter they held, which the taker gives
    /// back. Empty after the first call.
    fn take_kept(&self) -> (Vec<(u32, Verified)>, u64) {
        (Vec::new(), 0)
    }
    /// Memory the source keeps for serving (checkpoints, digests), which
    /// the chunk cache counts against its budget.
    fn resident(&self) -> u64 {
        0
    }
    /// Whether the whole blob is on this node.
    fn is_local(&self) -> bool {
        true
    }
    /// Whether loading `chunks` (adjacent, in order) needs no fetch.
    fn is_local_chunks(&self, _chunks: &[u32]) -> bool {
        true
    }
    /// Disk the source keeps beside the ciphertext cache (a sealed copy of
    /// the layer's stream), in bytes.
    fn on_disk(&self) -> u64 {
        0
    }
    /// Makes `chunks` cheap to load if one of them needs a fetch: fetches
    /// them, and `then` (the chunks a reader is heading into), in one range
    /// where loading them one by one would make a fetch each. All must be
    /// adjacent, in order.
    fn prepare(&self, _chunks: &[u32], _then: &[u32]) -> io::Result<()> {
        Ok(())
    }
    /// What a published index (a seek index) vouched for, which the
    /// background check compares with the blob; `None` for layers whose
    /// index was built here from the blob itself, or anchored by it.
    fn vouched(&self) -> Option<Vouched> {
        None
    }
}

/// What a seek index vouched for and a reader trusted: the digests of the
/// blob's ciphertext spans and of the tar stream's pieces, and its length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vouched {
    pub span: u32,
    pub spans: Vec<[u8; 32]>,
    pub piece: u32,
    pub pieces: Vec<[u8; 32]>,
    pub uncompressed: u64,
    /// SHA-256 of the entries section the served entries were read from.
    pub entries: [u8; 32],
}

/// Counts the memory a layer's index takes as it is built, against a budget
/// it shares with the chunk cache: an image decides how much an index holds
/// (entries, chunk digests, inflater checkpoints), so it must be able to run
/// out of room, never to grow the daemon without bound.
pub trait Meter: Send + Sync {
    /// Takes `bytes` more; false (and nothing taken) if there is no room.
    fn take(&self, bytes: u64) -> bool;
    /// Gives back `bytes` taken before.
    fn give(&self, bytes: u64);
    /// The whole budget, for sizing what may be made sparser.
    fn budget(&self) -> u64;
    /// What the budget has left to take, for what is only worth taking
    /// while room is plenty.
    fn spare(&self) -> u64 {
        u64::MAX
    }
}

/// No budget: for one-shot tools that index a layer and exit.
pub struct Unmetered;

impl Meter for Unmetered {
    fn take(&self, _: u64) -> bool {
        true
    }
    fn give(&self, _: u64) {}
    fn budget(&self) -> u64 {
        u64::MAX
    }
}

/// The error for an index that does not fit its budget.
pub fn no_room(what: &str, held: &str) -> io::Error {
    bad(
        what,
        format!(
            "its index ({held}) does not fit in what the cache budget leaves; \
             a larger cache budget (--cache-size, cache_size) would take it"
        ),
    )
}

/// Most entries one layer may have (tar entries or TOC entries).
pub const MAX_ENTRIES: usize = 1 << 20;

/// Memory a node holds, for [`Meter`]: the node, its strings, xattrs and
/// extents, and the inode the file system will make of it.
pub fn node_bytes(n: &Node) -> u64 {
    let e = &n.entry;
    let strings = e.name.len()
        + e.kind.len()
        + e.mod_time.len()
        + e.link_name.len()
        + e.user_name.len()
        + e.group_name.len()
        + e.digest.len();
    let xattrs: usize = e.xattrs.iter().map(|(k, v)| k.len() + v.len() + 64).sum();
    // The file system may make a directory inode for each component of
    // the path, not only one for the entry.
    let components = e.name.bytes().filter(|&b| b == b'/').count() + 1;
    (std::mem::size_of::<Node>()
        + strings
        + xattrs
        + n.extents.len() * std::mem::size_of::<Extent>()
        + components * INODE_BYTES) as u64
}

/// What one inode of the file system costs, its name included.
const INODE_BYTES: usize = 256;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A layer ready to serve.
pub struct Layer {
    id: u64,
    what: String,
    nodes: Vec<Node>,
    chunks: Box<dyn ChunkSource>,
    chunk_count: u32,
    /// Memory the nodes hold ([`node_bytes`]).
    nodes_bytes: u64,
    /// Set when the layer turned out not to be what its image claimed: from
    /// then on nothing of it is served.
    poisoned: std::sync::atomic::AtomicBool,
}

/// Most plaintext a single chunk may hold: a TOC that claims more is refused
/// rather than trusted with memory.
pub const MAX_CHUNK: u64 = 64 << 20;

/// A zeroed buffer for one chunk's plaintext, its pages already mapped: a
/// chunk is written once, start to end, and taking 256 page faults on the
/// way costs as much as decrypting it.
pub fn chunk_buffer(len: usize) -> Zeroizing<Vec<u8>> {
    let mut v = Zeroizing::new(vec![0u8; len]);
    let page = 4096;
    let start = v.as_mut_ptr() as usize;
    let aligned = start.next_multiple_of(page);
    let end = (start + len) & !(page - 1);
    if end > aligned {
        // SAFETY: the range lies inside `v`'s allocation; populating pages
        // changes no contents. Failure only means the faults come later.
        unsafe {
            libc::madvise(
                aligned as *mut libc::c_void,
                end - aligned,
                libc::MADV_POPULATE_WRITE,
            );
        }
    }
    v
}

impl Layer {
    /// Checks that every regular file's extents cover it exactly, in order,
    /// with chunk numbers below `chunk_count`.
    pub fn new(
        what: &str,
        nodes: Vec<Node>,
        chunks: Box<dyn ChunkSource>,
        chunk_count: u32,
    ) -> io::Result<Self> {
        for (i, n) in nodes.iter().enumerate() {
            let mut at = 0u64;
            for x in &n.extents {
                if x.file_offset != at || x.chunk >= chunk_count || u64::from(x.len) > MAX_CHUNK {
                    return Err(bad(what, format!("entry {i} has inconsistent chunks")));
                }
                at += u64::from(x.len);
            }
            let want = if n.entry.kind == "reg" {
                n.entry.size
            } else {
                0
            };
            if at != want {
                return Err(bad(
                    what,
                    format!("entry {i} has chunks for {at} of its {want} bytes"),
                ));
            }
        }
        Ok(Layer {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            what: what.to_string(),
            nodes_bytes: nodes.iter().map(node_bytes).sum(),
            nodes,
            chunks,
            chunk_count,
            poisoned: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Stops serving the layer: every later load fails with EIO.
    pub fn poison(&self) {
        self.poisoned.store(true, Ordering::SeqCst);
    }

    /// Whether [`Layer::poison`] was called.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::SeqCst)
    }

    /// A number unique to this layer in this process, for cache keys.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// How errors name the layer (a digest, never a file name).
    pub fn what(&self) -> &str {
        &self.what
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    pub fn chunk_count(&self) -> u32 {
        self.chunk_count
    }

    /// Loads one chunk, uncached.
    pub fn load_chunk(&self, chunk: u32) -> io::Result<Verified> {
        if self.is_poisoned() {
            return Err(bad(
                &self.what,
                "the layer does not match its image's diff ID".into(),
            ));
        }
        self.chunks.load(chunk)
    }

    /// Bytes fetched from the blob's source so far.
    pub fn fetched(&self) -> u64 {
        self.chunks.fetched()
    }

    /// Memory the layer holds while it is served: its entries and what its
    /// chunk source keeps ([`ChunkSource::resident`]).
    pub fn resident(&self) -> u64 {
        self.nodes_bytes + self.chunks.resident()
    }

    /// Disk the layer keeps beside the ciphertext cache while it is
    /// served; see [`ChunkSource::on_disk`].
    pub fn on_disk(&self) -> u64 {
        self.chunks.on_disk()
    }

    /// Whether the layer's whole blob is on this node.
    pub fn is_local(&self) -> bool {
        self.chunks.is_local()
    }

    /// Whether loading `chunks` (adjacent, in order) needs no fetch.
    pub fn is_local_chunks(&self, chunks: &[u32]) -> bool {
        self.chunks.is_local_chunks(chunks)
    }

    /// See [`ChunkSource::vouched`].
    pub fn vouched(&self) -> Option<Vouched> {
        self.chunks.vouched()
    }

    /// See [`ChunkSource::prepare`].
    pub fn prepare(&self, chunks: &[u32], then: &[u32]) -> io::Result<()> {
        self.chunks.prepare(chunks, then)
    }

    /// Chunks loaded already, for the cache; see [`ChunkSource::take_kept`].
    pub fn take_kept(&self) -> (Vec<(u32, Verified)>, u64) {
        self.chunks.take_kept()
    }

    /// Fetches what the image marks for prefetch; see [`ChunkSource::prefetch`].
    pub fn prefetch(&self, most: u64) -> io::Result<Vec<u32>> {
        self.chunks.prefetch(most)
    }

    /// Reads up to `len` bytes of the regular file `name` from `offset`,
    /// uncached: for tools and tests (the file system reads through the
    /// chunk cache instead).
    pub fn read_file(&self, name: &str, offset: u64, len: u64) -> io::Result<Zeroizing<Vec<u8>>> {
        let node = self
            .nodes
            .iter()
            .rev()
            .find(|n| n.entry.name == name && n.entry.kind == "reg")
            .ok_or_else(|| {
                bad(
                    &self.what,
                    "no regular file at the requested path".to_string(),
                )
            })?;
        let end = offset.saturating_add(len).min(node.entry.size);
        let mut out = Zeroizing::new(Vec::with_capacity(end.saturating_sub(offset) as usize));
        for x in overlapping(&node.extents, offset, end) {
            let data = self.load_chunk(x.chunk)?;
            let (from, to) = x.slice(offset, end);
            out.extend_from_slice(&data[from..to]);
        }
        Ok(out)
    }
}

impl Extent {
    /// The byte range of this extent's chunk that `[offset, end)` of the
    /// file covers.
    pub fn slice(&self, offset: u64, end: u64) -> (usize, usize) {
        let start = offset.max(self.file_offset) - self.file_offset;
        let stop = end.min(self.file_offset + u64::from(self.len)) - self.file_offset;
        let base = self.chunk_offset as usize;
        (base + start as usize, base + stop as usize)
    }
}

/// The extents that overlap `[offset, end)` of a file.
pub fn overlapping(extents: &[Extent], offset: u64, end: u64) -> impl Iterator<Item = &Extent> {
    let first = extents.partition_point(|x| x.file_offset + u64::from(x.len) <= offset);
    extents[first..]
        .iter()
        .take_while(move |x| x.file_offset < end)
}

/// Splits a file stored contiguously at `stream_offset` of a layer's
/// uncompressed stream into extents of fixed-size chunks.
pub fn stream_extents(stream_offset: u64, size: u64, chunk_size: u64) -> Vec<Extent> {
    let mut out = Vec::with_capacity((size / chunk_size + 2) as usize);
    let mut at = 0;
    while at < size {
        let pos = stream_offset + at;
        let in_chunk = pos % chunk_size;
        let len = (chunk_size - in_chunk).min(size - at);
        out.push(Extent {
            file_offset: at,
            chunk: (pos / chunk_size) as u32,
            chunk_offset: in_chunk as u32,
            len: len as u32,
        });
        at += len;
    }
    out
}

/// Names of the last entry for each path: later tar entries replace earlier ones.
pub fn last_by_name(nodes: &[Node]) -> HashMap<&str, usize> {
    nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.entry.name.as_str(), i))
        .collect()
}

pub(crate) fn bad(what: &str, msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("layer {what}: {msg}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_files_split_at_chunk_boundaries() {
        let x = stream_extents(1000, 2500, 1024);
        let got: Vec<_> = x
            .iter()
            .map(|x| (x.file_offset, x.chunk, x.chunk_offset, x.len))
            .collect();
        assert_eq!(
            got,
            vec![
                (0, 0, 1000, 24),
                (24, 1, 0, 1024),
                (1048, 2, 0, 1024),
                (2072, 3, 0, 428)
            ]
        );
        let hits: Vec<_> = overlapping(&x, 30, 1050).map(|x| x.chunk).collect();
        assert_eq!(hits, vec![1, 2]);
        assert_eq!(x[1].slice(30, 1050), (6, 1024));
    }
}

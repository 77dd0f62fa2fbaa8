//! Serving a layer through its seek index (docs/seek-index.md §7): a read
//! fetches the ciphertext spans from the nearest checkpoint to the end of
//! its pieces, checks each span against its digest before decrypting it,
//! inflates from the checkpoint's window and checks each piece it keeps.

use std::io::{self, Read};
use std::sync::Arc;

use zeroize::Zeroizing;

use super::entries::{self, EntriesError};
use super::head::{Checkpoint, Compression, Expect, Head, HeadError, Header, Piece, Window};
use super::seal::{Binding, HeadBlob, IndexKey, Kind, SealError};
use super::windows::{self, WindowError};
use crate::crypto::cipher::LayerKey;
use crate::layer::index::{ChunkSource, Extent, Layer, Meter, Node, Vouched, bad, chunk_buffer};
use crate::layer::source::{RangeSource, prepare_in_pieces};
use crate::layer::stream::gzip::{GzReader, State};
use crate::layer::stream::memo::{MEMO_BYTES, Memo};
use crate::layer::verified::{Sha256Digest, Verified};
use crate::oci::chain;
use crate::oci::digest::Digest;

/// Why a seek index cannot serve a layer; one line that names no file.
#[derive(Debug, thiserror::Error)]
pub enum SeekError {
    #[error("{0}")]
    Seal(#[from] SealError),
    #[error("{0}")]
    Head(#[from] HeadError),
    #[error("{0}")]
    Entries(#[from] EntriesError),
    #[error("{0}")]
    Window(#[from] WindowError),
    #[error("its index does not fit in what the cache budget leaves")]
    NoRoom,
    #[error("seek index head: prioritized entry {0} holds no data")]
    Prioritized(u32),
}

/// Most tar-stream bytes per chunk a layer served through a seek index is
/// read in (at least one piece), cut from each file's own start as
/// eStargz's chunks are: a read of a file's first 256 KiB loads one chunk,
/// a small file's chunk is the file. (On the stream's grid, 128 KiB had
/// fetched the least; cut per file, 256 KiB does: docs/benchmarks.md.)
/// The indexer places checkpoints before the pieces they begin in.
pub const SEEK_CHUNK: u64 = 256 << 10;

/// Each chunk's tar-stream range `[start, end)`, by chunk number.
type Grid = Vec<(u64, u64)>;

/// A head opened and checked, ready to serve its layer.
pub struct Unsealed {
    key: IndexKey,
    chunk: u64,
    /// Each chunk's tar-stream range: every file's data cut from its own
    /// start (as eStargz's chunks are), so a read of a file's first bytes
    /// loads no bytes of the file before it.
    grid: Grid,
    /// SHA-256 of the entries section, for the background check.
    entries: [u8; 32],
    header: Header,
    spans: Vec<[u8; 32]>,
    pieces: Vec<Piece>,
    checkpoints: Vec<Checkpoint>,
    nodes: Vec<Node>,
    /// The chunks holding the prioritized entries' data, ascending.
    prefetch: Vec<u32>,
    /// Memory taken from the meter for the sections kept.
    held: u64,
}

impl Unsealed {
    /// The windows blob's size the head names (0: none).
    pub fn windows_size(&self) -> u64 {
        self.header.windows_size
    }

    /// Memory the index keeps while served.
    pub fn resident(&self) -> u64 {
        self.held
    }
}

/// Opens a head blob (already checked against its descriptor's digest)
/// under the layer's symmetric key, for the image and layer `binding`
/// names, and decodes it against what the manifest says of the layer.
pub fn unseal(
    head_blob: &[u8],
    symkey: &[u8],
    binding: Binding<'_>,
    expect: &Expect,
    meter: &dyn Meter,
) -> Result<Unsealed, SeekError> {
    let blob = HeadBlob::parse(head_blob)?;
    let key = IndexKey::derive(symkey, &blob.salt, binding.layer);
    let payload = key.open(Kind::Head, 0, binding, blob.record)?;
    let head = Head::parse(&payload, expect)?;
    let held = head.spans.len() as u64 * 32
        + head.pieces.len() as u64 * std::mem::size_of::<Piece>() as u64
        + head.checkpoints.len() as u64 * std::mem::size_of::<Checkpoint>() as u64;
    if !meter.take(held) {
        return Err(SeekError::NoRoom);
    }
    let chunk = SEEK_CHUNK.max(u64::from(head.header.piece));
    let plain_entries = match entries_bytes(&head) {
        Ok(e) => e,
        Err(e) => {
            meter.give(held);
            return Err(e);
        }
    };
    let nodes = entries::decode(
        &plain_entries,
        head.header.entry_count,
        head.header.uncompressed,
        chunk,
        meter,
    );
    let nodes = match nodes {
        Ok(n) => n,
        Err(e) => {
            meter.give(held);
            return Err(e.into());
        }
    };
    // The file grid never has more chunks than the stream's grid had
    // extents: its table is taken from the meter before it is made.
    let most: usize = nodes.iter().map(|n| n.extents.len()).sum();
    let table = most as u64 * std::mem::size_of::<(u64, u64)>() as u64;
    if !meter.take(table) {
        meter.give(held);
        return Err(SeekError::NoRoom);
    }
    let held = held + table;
    let Some((nodes, grid)) = file_grid(nodes, chunk, most) else {
        meter.give(held);
        return Err(SeekError::Entries(EntriesError::Malformed(
            "more chunks than a layer may have".into(),
        )));
    };
    let entries_digest: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(&plain_entries).into();
    drop(plain_entries);
    let prefetch = prefetch_chunks(&head.prioritized, &nodes).and_then(|p| {
        let room = meter.take(p.len() as u64 * 4);
        room.then_some(p).ok_or(SeekError::NoRoom)
    });
    let prefetch = match prefetch {
        Ok(p) => p,
        Err(e) => {
            meter.give(held);
            return Err(e);
        }
    };
    let held = held + prefetch.len() as u64 * 4;
    Ok(Unsealed {
        key,
        chunk,
        grid,
        entries: entries_digest,
        header: head.header,
        spans: head.spans,
        pieces: head.pieces,
        checkpoints: head.checkpoints,
        nodes,
        prefetch,
        held,
    })
}

/// Most bytes a deflated entries section may inflate to (§5.1 byte 42):
/// 64 times what it takes in the head, and 64 MiB in all.
const MAX_ENTRIES_INFLATED: usize = 64 << 20;

/// The entries section's §5.5 bytes: as stored, or inflated within
/// [`MAX_ENTRIES_INFLATED`] (a bomb is refused, not allocated). Plaintext
/// names: wiped on drop.
fn entries_bytes(head: &Head<'_>) -> Result<Zeroizing<Vec<u8>>, SeekError> {
    if !head.header.entries_deflated {
        return Ok(Zeroizing::new(head.entries.to_vec()));
    }
    let limit = head
        .entries
        .len()
        .saturating_mul(64)
        .saturating_add(64 << 10)
        .min(MAX_ENTRIES_INFLATED);
    miniz_oxide::inflate::decompress_to_vec_with_limit(head.entries, limit)
        .map(Zeroizing::new)
        .map_err(|_| {
            SeekError::Entries(EntriesError::Malformed(format!(
                "the deflated entries section does not inflate to at most {limit} bytes"
            )))
        })
}

/// `nodes` (their extents cut on the stream's grid of `chunk`) with each
/// file's data cut in chunks of `chunk` from its own start instead, and
/// every chunk's tar-stream range, numbered in stream order. `None` if
/// there would be more than `u32` numbers.
fn file_grid(mut nodes: Vec<Node>, chunk: u64, most: usize) -> Option<(Vec<Node>, Grid)> {
    let mut grid: Grid = Vec::with_capacity(most);
    for n in &mut nodes {
        let Some(first) = n.extents.first() else {
            continue;
        };
        let offset = u64::from(first.chunk) * chunk + u64::from(first.chunk_offset);
        let size = n.entry.size;
        let mut extents = Vec::with_capacity(size.div_ceil(chunk) as usize);
        let mut at = 0;
        while at < size {
            let len = chunk.min(size - at);
            extents.push(Extent {
                file_offset: at,
                chunk: u32::try_from(grid.len()).ok()?,
                chunk_offset: 0,
                len: len as u32,
            });
            grid.push((offset + at, offset + at + len));
            at += len;
        }
        // Never more than the stream's grid gave: the meter took those.
        n.extents = extents;
    }
    Some((nodes, grid))
}

/// The chunks the `prioritized` entries' data lies in, each once, in
/// stream order; every entry named must hold data (§5.6).
fn prefetch_chunks(prioritized: &[u32], nodes: &[Node]) -> Result<Vec<u32>, SeekError> {
    let mut chunks: Vec<u32> = Vec::new();
    for &i in prioritized {
        let extents = nodes
            .get(i as usize)
            .map(|n| &n.extents)
            .filter(|e| !e.is_empty())
            .ok_or(SeekError::Prioritized(i))?;
        for e in extents {
            // Entries ascend, so their chunks do.
            if chunks.last().is_none_or(|&c| c < e.chunk) {
                chunks.push(e.chunk);
            }
        }
    }
    Ok(chunks)
}

/// Where a layer served by its seek index reads from.
pub struct Sources {
    /// The layer blob (ciphertext), through the disk cache.
    pub blob: Arc<dyn RangeSource>,
    /// The windows blob, if the head names one.
    pub windows: Option<Arc<dyn RangeSource>>,
    pub layer_key: LayerKey,
    pub manifest: Digest,
    pub layer: Digest,
}

/// The layer `u` indexes, served from `src`.
pub fn layer(u: Unsealed, src: Sources, what: &str) -> io::Result<Layer> {
    if (u.header.windows_size > 0) != src.windows.is_some()
        || src
            .windows
            .as_ref()
            .is_some_and(|w| w.size() != u.header.windows_size)
    {
        return Err(bad(
            what,
            "the windows blob is not the one its head names".into(),
        ));
    }
    let count =
        u32::try_from(u.grid.len()).map_err(|_| bad(what, "layer has too many chunks".into()))?;
    let chunks = SeekChunks {
        what: what.to_string(),
        chunk: u.chunk,
        grid: u.grid,
        entries: u.entries,
        memo: std::sync::Mutex::new(Memo::default()),
        last_span: std::sync::Mutex::new(None),
        key: u.key,
        header: u.header,
        spans: u.spans,
        pieces: u.pieces,
        checkpoints: u.checkpoints,
        prefetch: u.prefetch,
        held: u.held,
        src,
    };
    Layer::new(what, u.nodes, Box::new(chunks), count)
}

struct SeekChunks {
    what: String,
    chunk: u64,
    /// Each chunk's tar-stream range ([`Unsealed::grid`]).
    grid: Grid,
    entries: [u8; 32],
    /// Inflater states at chunk starts reached by earlier loads: a load
    /// goes on from the nearest one rather than from its checkpoint.
    memo: std::sync::Mutex<Memo>,
    /// The last span read (its blob offset), checked and decrypted.
    last_span: std::sync::Mutex<Option<(u64, Zeroizing<Vec<u8>>)>>,
    key: IndexKey,
    header: Header,
    spans: Vec<[u8; 32]>,
    pieces: Vec<Piece>,
    checkpoints: Vec<Checkpoint>,
    /// Chunks of the prioritized entries, ascending.
    prefetch: Vec<u32>,
    held: u64,
    src: Sources,
}

/// Most spans kept, decrypted, for the next load ([`SeekChunks::keep_spans`]).
const KEPT_SPANS: u64 = 4;

/// Prefetched ranges closer than this are fetched as one: a request costs
/// a round trip, 256 KiB about 2 ms at 1 Gbit/s.
const PREFETCH_GAP: u64 = 256 << 10;

/// Appends `[lo, hi)` to `ranges` (ascending by `lo`), joined to the last
/// one where they overlap or lie within [`PREFETCH_GAP`].
fn join(ranges: &mut Vec<(u64, u64)>, lo: u64, hi: u64) {
    match ranges.last_mut() {
        Some(last) if lo <= last.1.saturating_add(PREFETCH_GAP) => last.1 = last.1.max(hi),
        _ => ranges.push((lo, hi)),
    }
}

/// A range's plaintext, and the inflater where it ended (gzip).
type Loaded = (Zeroizing<Vec<u8>>, Option<State>);

/// What loading a range of the tar stream needs.
struct Plan {
    /// The checkpoint to inflate from (gzip).
    checkpoint: Option<usize>,
    /// Compressed (= ciphertext) bytes `[from, to)` that hold it.
    from: u64,
    to: u64,
}

impl SeekChunks {
    fn span(&self) -> u64 {
        u64::from(self.header.span)
    }

    fn piece(&self) -> u64 {
        u64::from(self.header.piece)
    }

    /// The stream range chunk `c` covers (empty if there is none).
    fn chunk_range(&self, c: u32) -> (u64, u64) {
        self.grid.get(c as usize).copied().unwrap_or((0, 0))
    }

    /// `[start, end)` widened to the pieces that verify it.
    fn pieces_of(&self, start: u64, end: u64) -> (u64, u64) {
        let p = self.piece();
        (
            start / p * p,
            end.div_ceil(p)
                .saturating_mul(p)
                .min(self.header.uncompressed),
        )
    }

    /// The ciphertext needed for stream bytes `[start, end)`.
    fn plan(&self, start: u64, end: u64) -> Plan {
        let last = ((end.max(1) - 1) / self.piece()) as usize;
        match self.header.compression {
            Compression::None => Plan {
                checkpoint: None,
                from: start,
                to: end,
            },
            Compression::Gzip => {
                let j = self.checkpoints.partition_point(|c| c.out <= start).max(1) - 1;
                Plan {
                    checkpoint: Some(j),
                    from: self.checkpoints[j].in_bit / 8,
                    to: self.pieces[last.min(self.pieces.len() - 1)].in_end,
                }
            }
        }
    }

    /// `[from, to)` widened to whole spans.
    fn spans_of(&self, from: u64, to: u64) -> (u64, u64) {
        let s = self.span();
        let lo = from / s * s;
        let hi = (to.div_ceil(s) * s).min(self.header.blob_size);
        (lo, hi.max(lo))
    }

    /// Compressed plaintext `[lo, hi)` (whole spans). The last span read is
    /// kept, decrypted: a load in order begins inside the span where the
    /// one before it ended, which would otherwise be read, checked and
    /// decrypted once per chunk.
    fn read_spans(&self, lo: u64, hi: u64) -> io::Result<Zeroizing<Vec<u8>>> {
        let kept = match &*crate::sync::lock(&self.last_span) {
            Some((at, bytes)) if *at == lo && bytes.len() as u64 <= hi - lo => Some(bytes.clone()),
            _ => None,
        };
        let out = match kept {
            Some(first) if first.len() as u64 == hi - lo => return Ok(first),
            Some(first) => {
                let rest = self.read_fresh(lo + first.len() as u64, hi)?;
                let mut out = Zeroizing::new(Vec::with_capacity((hi - lo) as usize));
                out.extend_from_slice(&first);
                out.extend_from_slice(&rest);
                out
            }
            None => self.read_fresh(lo, hi)?,
        };
        if hi > lo {
            self.keep_spans(lo, &out, hi - 1);
        }
        Ok(out)
    }

    /// Keeps the spans of `buf` (read from blob offset `lo`, checked and
    /// decrypted) from the one holding blob offset `from` on, if there are
    /// at most [`KEPT_SPANS`]: the next load in order goes on from the
    /// inflater state at `from`, inside the last piece this one read.
    fn keep_spans(&self, lo: u64, buf: &[u8], from: u64) {
        let at = from / self.span() * self.span();
        let tail = at
            .checked_sub(lo)
            .and_then(|skip| buf.get(usize::try_from(skip).ok()?..));
        if let Some(tail) =
            tail.filter(|t| !t.is_empty() && t.len() as u64 <= KEPT_SPANS * self.span())
        {
            *crate::sync::lock(&self.last_span) = Some((at, Zeroizing::new(tail.to_vec())));
        }
    }

    /// Ciphertext `[lo, hi)` (whole spans), each span checked against its
    /// digest before it is decrypted; a bad cached copy is fetched once more.
    fn read_fresh(&self, lo: u64, hi: u64) -> io::Result<Zeroizing<Vec<u8>>> {
        let blob = &self.src.blob;
        let mut tries = 0;
        loop {
            blob.prepare(lo, hi - lo)?;
            let mut buf = Zeroizing::new(blob.read_range(lo, hi - lo)?);
            if buf.len() as u64 != hi - lo {
                return Err(bad(
                    &self.what,
                    format!("blob offset {lo}: {} bytes read of {}", buf.len(), hi - lo),
                ));
            }
            match self.check_spans(lo, &buf) {
                Ok(()) => {
                    self.src.layer_key.apply_at(lo, &mut buf);
                    return Ok(buf);
                }
                Err(i) => {
                    if let Err(e) = blob.forget_range(lo, hi - lo) {
                        tracing::warn!("layer {}: forgetting a bad span: {e}", self.what);
                    }
                    tries += 1;
                    if tries == 2 {
                        return Err(bad(
                            &self.what,
                            format!(
                                "ciphertext span {i} (blob offset {}) does not match its seek index digest",
                                i as u64 * self.span()
                            ),
                        ));
                    }
                }
            }
        }
    }

    /// The first span of `buf` (starting at blob offset `lo`) that does not
    /// match its digest: SHA-256's chaining value after it, run from the
    /// one before it (the last span's is the layer digest, §5.2).
    fn check_spans(&self, lo: u64, buf: &[u8]) -> Result<(), usize> {
        let first = (lo / self.span()) as usize;
        for (n, bytes) in buf.chunks(self.span() as usize).enumerate() {
            let i = first + n;
            let before = i.checked_sub(1).and_then(|j| self.spans.get(j));
            let got = if i + 1 < self.spans.len() {
                chain::step(before, bytes)
            } else {
                Some(chain::last(before, bytes, self.header.blob_size))
            };
            if got.is_none() || self.spans.get(i) != got.as_ref() {
                return Err(i);
            }
        }
        Ok(())
    }

    /// Checkpoint `j`'s history.
    fn window(&self, j: usize, c: &Checkpoint) -> io::Result<Zeroizing<Vec<u8>>> {
        let binding = Binding {
            manifest: &self.src.manifest,
            layer: &self.src.layer,
        };
        match c.window {
            Window::None => Ok(Zeroizing::new(Vec::new())),
            Window::Primed { .. } => Err(bad(
                &self.what,
                format!("checkpoint {j}: primed windows are not read by this lazycrypt"),
            )),
            Window::Stored { offset, len } => {
                let w =
                    self.src.windows.as_ref().ok_or_else(|| {
                        bad(&self.what, format!("checkpoint {j}: no windows blob"))
                    })?;
                let size = self.header.windows_size;
                let at = |e: WindowError| bad(&self.what, e.to_string());
                windows::check_place(j as u64, offset, len, size).map_err(at)?;
                // A record the source got wrong once is fetched once more,
                // as a span is: the cache must not keep it failing.
                let mut tries = 0;
                loop {
                    let sealed = w.read_range(offset, u64::from(len))?;
                    match windows::open(&self.key, j as u64, binding, &sealed, c.window_len) {
                        Ok(window) => return Ok(window),
                        Err(e) => {
                            if let Err(f) = w.forget_range(offset, u64::from(len)) {
                                tracing::warn!("layer {}: forgetting a bad window: {f}", self.what);
                            }
                            tries += 1;
                            if tries == 2 {
                                return Err(at(e));
                            }
                        }
                    }
                }
            }
        }
    }

    /// Loads `[start, end)` going on from `st` (an inflater state at or
    /// before `start`), keeping the states it passes at chunk starts;
    /// returns the state at `mark` (a piece start in `[start, end]`).
    fn load_on(&self, st: State, start: u64, end: u64, mark: u64) -> io::Result<Loaded> {
        let from = st.in_pos;
        let skip = start
            .checked_sub(st.out_pos)
            .ok_or_else(|| io::Error::other("an inflater state past the chunk"))?;
        let last = ((end - 1) / self.piece()) as usize;
        let to = self
            .pieces
            .get(last)
            .map_or(self.header.blob_size, |p| p.in_end)
            .max(from + 1)
            .min(self.header.blob_size);
        let (lo, hi) = self.spans_of(from, to);
        let buf = self.read_spans(lo, hi)?;
        let at = usize::try_from(from - lo)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let mut gz = GzReader::resume(&buf[at..], st).with_stops(self.piece());
        let mut left = skip;
        let mut scratch = Zeroizing::new(vec![0u8; self.piece() as usize]);
        while left > 0 {
            let n = left.min(scratch.len() as u64) as usize;
            gz.read_exact(&mut scratch[..n])?;
            left -= n as u64;
            if let Some(st) = gz.state().filter(|s| s.out_pos.is_multiple_of(self.chunk)) {
                crate::sync::lock(&self.memo).put(st);
            }
        }
        let mark = mark.clamp(start, end);
        let mut out = chunk_buffer((end - start) as usize);
        let (head, tail) = out.split_at_mut((mark - start) as usize);
        gz.read_exact(head)?;
        let at_mark = gz.state();
        gz.read_exact(tail)?;
        let next = if mark < end { at_mark } else { gz.state() };
        if let Some(st) = &next {
            self.keep_spans(lo, &buf, st.in_pos);
        }
        Ok((out, next))
    }

    fn load_range(&self, start: u64, end: u64, mark: u64) -> io::Result<Loaded> {
        let plan = self.plan(start, end);
        let Some(j) = plan.checkpoint else {
            let (lo, hi) = self.spans_of(plan.from, plan.to);
            let buf = self.read_spans(lo, hi)?;
            let mut out = chunk_buffer((end - start) as usize);
            out.copy_from_slice(&buf[(start - lo) as usize..(end - lo) as usize]);
            return Ok((out, None));
        };
        let c = &self.checkpoints[j];
        // Nearer than the checkpoint: a state an earlier load passed. Any
        // trouble with it, and the checkpoint is used (output from either
        // is checked by the pieces).
        let near = crate::sync::lock(&self.memo).nearest(start, c.out);
        if let Some(st) = near
            && let Ok(loaded) = self.load_on(st, start, end, mark)
        {
            return Ok(loaded);
        }
        let at_cp = |e: io::Error| {
            bad(
                &self.what,
                format!(
                    "inflating from checkpoint {j} (blob offset {}): {e}",
                    c.in_bit / 8
                ),
            )
        };
        let window = self.window(j, c)?;
        // The block's first bits may share a byte with the one before.
        let partial = if c.in_bit.is_multiple_of(8) {
            0
        } else {
            let byte = c.in_bit / 8;
            let (lo, hi) = self.spans_of(byte, byte + 1);
            let span = self.read_spans(lo, hi)?;
            span.get((byte - lo) as usize)
                .copied()
                .ok_or_else(|| bad(&self.what, format!("checkpoint {j} lies outside the blob")))?
        };
        let st = State::at_block(c.in_bit, partial, c.out, &window).ok_or_else(|| {
            bad(
                &self.what,
                format!("checkpoint {j}: its window is too long"),
            )
        })?;
        self.load_on(st, start, end, mark).map_err(at_cp)
    }

    fn range_of(&self, chunks: &[u32]) -> Option<(u64, u64)> {
        let (first, last) = (*chunks.first()?, *chunks.last()?);
        let (start, _) = self.chunk_range(first);
        let (_, end) = self.chunk_range(last);
        let (start, end) = self.pieces_of(start, end);
        let plan = self.plan(start, end);
        Some(self.spans_of(plan.from, plan.to))
    }
}

impl ChunkSource for SeekChunks {
    fn load(&self, chunk: u32) -> io::Result<Verified> {
        let (start, end) = self.chunk_range(chunk);
        if start >= end {
            return Err(bad(&self.what, format!("no chunk {chunk}")));
        }
        // Pieces are on the stream's grid, chunks on their files': the
        // pieces around the chunk are loaded and checked, then cut.
        let (from, to) = self.pieces_of(start, end);
        // The next chunk of a file read in order loads from the piece this
        // one ends in: the inflater is kept where that piece begins.
        let (bytes, state) = self.load_range(from, to, end / self.piece() * self.piece())?;
        let (k0, k1) = (from / self.piece(), (to - 1) / self.piece());
        let want: Vec<Sha256Digest> = self.pieces[k0 as usize..=k1 as usize]
            .iter()
            .map(|p| Sha256Digest(p.digest))
            .collect();
        let verified =
            Verified::check_pieces(bytes, self.piece() as usize, &want).map_err(|_| {
                // States reached through it are not to be gone on from.
                crate::sync::lock(&self.memo).clear();
                bad(
                    &self.what,
                    format!("chunk {chunk} does not match its seek index's piece digests"),
                )
            })?;
        // Only an inflater whose output matched goes on to the next chunk.
        if let Some(st) = state {
            crate::sync::lock(&self.memo).put(st);
        }
        verified
            .within((start - from) as usize, (end - from) as usize)
            .ok_or_else(|| bad(&self.what, format!("chunk {chunk} came back short")))
    }

    fn fetched(&self) -> u64 {
        self.src.blob.fetched() + self.src.windows.as_ref().map_or(0, |w| w.fetched())
    }

    fn resident(&self) -> u64 {
        self.held + MEMO_BYTES + KEPT_SPANS * self.span()
    }

    fn vouched(&self) -> Option<Vouched> {
        Some(Vouched {
            span: self.header.span,
            spans: self.spans.clone(),
            piece: self.header.piece,
            pieces: self.pieces.iter().map(|p| p.digest).collect(),
            uncompressed: self.header.uncompressed,
            entries: self.entries,
        })
    }

    fn is_local(&self) -> bool {
        self.src.blob.has(0, self.header.blob_size)
    }

    fn is_local_chunks(&self, chunks: &[u32]) -> bool {
        self.range_of(chunks)
            .is_none_or(|(lo, hi)| self.src.blob.has(lo, hi - lo))
    }

    fn prepare(&self, chunks: &[u32], then: &[u32]) -> io::Result<()> {
        if self.is_local_chunks(chunks) {
            return Ok(());
        }
        let all: Vec<u32> = chunks.iter().chain(then).copied().collect();
        match self.range_of(&all) {
            Some((lo, hi)) => self.src.blob.prepare(lo, hi - lo),
            None => Ok(()),
        }
    }

    /// Fetches the ciphertext, and the windows, that loading the
    /// prioritized entries' chunks needs, in as few ranges as lie near
    /// each other: a run of adjacent chunks needs its spans from the
    /// checkpoint before its first to the end of its last. Runs are taken
    /// in order while the chunks and the ranges they need stay within
    /// `most` bytes (an index lists what it likes; the node decides what
    /// it spends).
    fn prefetch(&self, most: u64) -> io::Result<Vec<u32>> {
        let (mut blob, mut windows) = (Vec::new(), Vec::new());
        let (mut chunks, mut spent) = (Vec::new(), 0u64);
        for run in self.prefetch.chunk_by(|a, b| a + 1 == *b) {
            let Some((lo, hi)) = self.range_of(run) else {
                continue;
            };
            let held: u64 = run
                .iter()
                .map(|&c| {
                    let (a, b) = self.chunk_range(c);
                    b - a
                })
                .sum();
            spent = spent.saturating_add(hi - lo).saturating_add(held);
            if spent > most {
                break;
            }
            join(&mut blob, lo, hi);
            chunks.extend_from_slice(run);
            // A load starts at the piece its first chunk begins in.
            let (start, end) = self.chunk_range(run[0]);
            let (start, _) = self.pieces_of(start, end);
            if let Some(j) = self.plan(start, start + 1).checkpoint
                && let Window::Stored { offset, len } = self.checkpoints[j].window
            {
                windows.push((offset, offset.saturating_add(u64::from(len))));
            }
        }
        for (lo, hi) in blob {
            prepare_in_pieces(&*self.src.blob, lo, hi)?;
        }
        if let Some(w) = &self.src.windows {
            // Checkpoints ascend with the chunks; their records may not.
            windows.sort_unstable();
            let mut joined = Vec::new();
            for (lo, hi) in windows {
                join(&mut joined, lo, hi);
            }
            // A record out of place fails its own load, not the prefetch.
            for (lo, hi) in joined.into_iter().filter(|r| r.0 < w.size()) {
                prepare_in_pieces(&**w, lo, hi.min(w.size()))?;
            }
        }
        Ok(chunks)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;
    use std::sync::Mutex;

    use super::*;
    use crate::layer::index::Unmetered;
    use crate::layer::seekindex::build;
    use crate::layer::source::MemoryRange;
    use crate::layer::testing::tar_of;
    use crate::oci::chain::Chain;
    use crate::oci::digest;

    fn noise(n: usize, mut x: u64) -> Vec<u8> {
        (0..n)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (x >> 56) as u8
            })
            .collect()
    }

    fn text(n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n);
        let mut i = 0u64;
        while v.len() < n {
            writeln!(v, "line {i} of a module, {}", i * 7919 % 1013).unwrap();
            i += 1;
        }
        v.truncate(n);
        v
    }

    fn files() -> Vec<(&'static str, Vec<u8>)> {
        vec![
            ("etc/small.conf", b"hello, seek index\n".to_vec()),
            ("usr/lib/big.txt", text(5 << 20)),
            ("usr/lib/blob.so", noise(3 << 20, 7)),
            ("usr/lib/empty", Vec::new()),
            ("z/tail.txt", text(70_000)),
        ]
    }

    struct Fixture {
        ct: Vec<u8>,
        key: LayerKey,
        symkey: [u8; 32],
        manifest: Digest,
        layer: Digest,
        compression: Compression,
        head: Vec<u8>,
        windows: Option<Vec<u8>>,
    }

    fn fixture(compression: Compression) -> Fixture {
        fixture_with(compression, &files(), &Default::default())
    }

    fn fixture_with<N: AsRef<str>>(
        compression: Compression,
        files: &[(N, Vec<u8>)],
        first: &std::collections::HashSet<String>,
    ) -> Fixture {
        let t = tar_of(files);
        let plain = match compression {
            Compression::None => t,
            Compression::Gzip => {
                let mut e =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                e.write_all(&t).unwrap();
                e.finish().unwrap()
            }
        };
        let key = LayerKey::generate();
        let mut ct = plain.clone();
        key.apply_at(0, &mut ct);
        let layer = digest::of(&ct);
        let manifest = digest::of(b"the image manifest");
        let mut spans = Chain::new(build::SPAN);
        spans.update(&ct);
        let spans = Mutex::new(spans);
        let built =
            build::build(&plain[..], compression, &layer, &spans, &Unmetered, first).unwrap();
        let symkey = [9u8; 32];
        let sealed = build::seal(&built, &symkey, &manifest, &layer);
        Fixture {
            ct,
            key,
            symkey,
            manifest,
            layer,
            compression,
            head: sealed.head,
            windows: sealed.windows,
        }
    }

    impl Fixture {
        fn expect(&self) -> Expect {
            let mut raw = [0u8; 32];
            hex::decode_to_slice(self.layer.digest(), &mut raw).unwrap();
            Expect {
                layer: raw,
                blob_size: self.ct.len() as u64,
                compression: self.compression,
            }
        }

        fn unsealed(&self) -> Result<Unsealed, SeekError> {
            let binding = Binding {
                manifest: &self.manifest,
                layer: &self.layer,
            };
            unseal(
                &self.head,
                &self.symkey,
                binding,
                &self.expect(),
                &Unmetered,
            )
        }

        /// The entries' names, in index order.
        fn names(&self) -> Vec<String> {
            let (l, _) = self.open(self.ct.clone()).unwrap();
            l.nodes().iter().map(|n| n.entry.name.clone()).collect()
        }

        fn open(&self, ct: Vec<u8>) -> Result<(Layer, Arc<MemoryRange>), SeekError> {
            let u = self.unsealed()?;
            let blob = Arc::new(MemoryRange::new(ct));
            let windows = self
                .windows
                .clone()
                .map(|w| Arc::new(MemoryRange::new(w)) as Arc<dyn RangeSource>);
            let src = Sources {
                blob: blob.clone(),
                windows,
                layer_key: self.key.clone(),
                manifest: self.manifest.clone(),
                layer: self.layer.clone(),
            };
            Ok((layer(u, src, "L").unwrap(), blob))
        }
    }

    /// The prioritized files' chunks come in at mount, ciphertext and
    /// windows, in few ranges; reading those files then fetches nothing,
    /// reading another does.
    #[test]
    fn prefetch_brings_the_prioritized_files_and_reading_them_fetches_no_more() {
        use crate::cache::blobs::DiskRange;
        use std::sync::atomic::Ordering::Relaxed;

        let mut files: Vec<(String, Vec<u8>)> = Vec::new();
        for i in 0..12 {
            files.push((format!("lib/m{i:02}.py"), text(40_000 + i * 7)));
            files.push((format!("lib/d{i:02}.txt"), text(700 << 10)));
        }
        let picked = [2usize, 7, 11];
        let first = picked.iter().map(|i| format!("lib/m{i:02}.py")).collect();
        let f = fixture_with(Compression::Gzip, &files, &first);
        let (u, dir) = (f.unsealed().unwrap(), tempfile::tempdir().unwrap());
        let mem = Arc::new(MemoryRange::new(f.ct.clone()));
        let wmem = Arc::new(MemoryRange::new(f.windows.clone().unwrap()));
        let disk = |name: &str, m: &Arc<MemoryRange>| {
            let d = dir.path().join(name);
            std::fs::create_dir(&d).unwrap();
            Arc::new(DiskRange::open(&d, &digest::of(&m.data), m.clone()).unwrap())
                as Arc<dyn RangeSource>
        };
        let src = Sources {
            blob: disk("blob", &mem),
            windows: Some(disk("windows", &wmem)),
            layer_key: f.key.clone(),
            manifest: f.manifest.clone(),
            layer: f.layer.clone(),
        };
        let l = layer(u, src, "L").unwrap();
        // The node's share bounds what an index's list can make it fetch.
        assert!(l.prefetch(1).unwrap().is_empty());
        assert_eq!(
            (mem.fetched.load(Relaxed), wmem.fetched.load(Relaxed)),
            (0, 0)
        );
        let chunks = l.prefetch(u64::MAX).unwrap();
        let want: Vec<u32> = picked
            .iter()
            .flat_map(|&i| {
                let n = l.nodes().iter().find(|n| n.entry.name == files[2 * i].0);
                n.unwrap()
                    .extents
                    .iter()
                    .map(|e| e.chunk)
                    .collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(chunks, want);
        let (blob, windows) = (mem.fetched.load(Relaxed), wmem.fetched.load(Relaxed));
        // Text this repetitive affords few checkpoints (dense windows).
        assert!(
            blob < f.ct.len() as u64 / 2,
            "{blob} of {} for three small files",
            f.ct.len()
        );
        for i in picked {
            let (name, data) = &files[2 * i];
            assert!(l.read_file(name, 0, u64::MAX).unwrap()[..] == data[..]);
        }
        assert_eq!(
            (mem.fetched.load(Relaxed), wmem.fetched.load(Relaxed)),
            (blob, windows),
            "reading the prefetched files fetched more"
        );
        let (name, data) = &files[2 * 4 + 1];
        assert!(l.read_file(name, 0, u64::MAX).unwrap()[..] == data[..]);
        assert!(mem.fetched.load(Relaxed) > blob);
    }

    /// A file read in order reads each span of its blob range once: the
    /// span where one chunk's load ended is where the next one's begins.
    #[test]
    fn a_file_read_in_order_reads_each_span_once() {
        let files = [("data.bin", noise(2 << 20, 3)), ("after", noise(70_000, 4))];
        let f = fixture_with(Compression::Gzip, &files, &Default::default());
        let (l, blob) = f.open(f.ct.clone()).unwrap();
        let all = l.read_file("data.bin", 0, u64::MAX).unwrap();
        assert!(all[..] == files[0].1[..]);
        let read = blob.fetched.load(std::sync::atomic::Ordering::Relaxed);
        assert!(
            read <= f.ct.len() as u64,
            "{read} bytes read from a blob of {}",
            f.ct.len()
        );
    }

    #[test]
    fn every_file_reads_right_at_any_offset_fetching_little() {
        for c in [Compression::Gzip, Compression::None] {
            let f = fixture(c);
            let (l, blob) = f.open(f.ct.clone()).unwrap();
            let small = l.read_file("etc/small.conf", 0, 100).unwrap();
            assert_eq!(&small[..], b"hello, seek index\n");
            // A small file's read fetches its checkpoint's range, not the layer.
            let fetched = blob.fetched.load(std::sync::atomic::Ordering::Relaxed);
            assert!(fetched < 3 << 20, "{c:?}: {fetched} of {}", f.ct.len());
            for (name, data) in files() {
                let all = l.read_file(name, 0, u64::MAX).unwrap();
                assert!(all[..] == data[..], "{c:?} {name}");
                for at in [1u64, 65_535, (1 << 20) + 17, (3 << 20) - 5] {
                    if at < data.len() as u64 {
                        let got = l.read_file(name, at, 9000).unwrap();
                        let end = (at as usize + 9000).min(data.len());
                        assert!(got[..] == data[at as usize..end], "{c:?} {name} @{at}");
                    }
                }
            }
        }
    }

    #[test]
    fn wrong_key_image_or_layer_and_tampering_are_refused() {
        let f = fixture(Compression::Gzip);
        let other = digest::of(b"another image");
        let e = |r: Result<(Layer, Arc<MemoryRange>), SeekError>| r.err().unwrap().to_string();
        let mut g = fixture_like(&f);
        g.symkey = [8; 32];
        assert!(e(g.open(f.ct.clone())).contains("does not open"));
        let mut g = fixture_like(&f);
        g.manifest = other.clone();
        assert!(e(g.open(f.ct.clone())).contains("does not open"));
        let mut g = fixture_like(&f);
        let n = g.head.len();
        g.head[n - 40] ^= 1;
        assert!(e(g.open(f.ct.clone())).contains("does not open"));
        // A span the registry changed: EIO, never other bytes.
        let mut bad = f.ct.clone();
        bad[100] ^= 1;
        let (l, _) = f.open(bad).unwrap();
        let err = l
            .read_file("etc/small.conf", 0, 100)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("span 0") && err.contains("does not match"),
            "{err}"
        );
        // The last span, checked against the layer digest itself.
        let mut bad = f.ct.clone();
        let end = bad.len() - 1;
        bad[end] ^= 1;
        let (l, _) = f.open(bad).unwrap();
        let err = l.read_file("z/tail.txt", 0, 100).unwrap_err().to_string();
        let last = (f.ct.len() - 1) / (build::SPAN as usize);
        assert!(
            err.contains(&format!("span {last} ")) && err.contains("does not match"),
            "{err}"
        );
        // Window records changed: refused where a read needs one.
        let mut g = fixture_like(&f);
        for b in g.windows.as_mut().unwrap().iter_mut() {
            *b ^= 1;
        }
        let refused = reads_of_all(&g, "does not open");
        assert!(refused > 0, "no read needed a window");
    }

    /// Reads 100 bytes of every file every 64 KiB, each from a layer just
    /// opened (so from a checkpoint, not from where an earlier read left
    /// the inflater): each is right or fails with `why`; how many failed.
    fn reads_of_all(f: &Fixture, why: &str) -> usize {
        let mut refused = 0;
        for (name, data) in files() {
            for at in (0..data.len().saturating_sub(100)).step_by(64 << 10) {
                let (l, _) = f.open(f.ct.clone()).unwrap();
                match l.read_file(name, at as u64, 100) {
                    Ok(b) => assert!(b[..] == data[at..at + 100], "wrong bytes at {at}"),
                    Err(e) => {
                        assert!(e.to_string().contains(why), "{e}");
                        refused += 1;
                    }
                }
            }
        }
        refused
    }

    /// A deflated entries section that inflates far past its size (a bomb)
    /// is refused before it is allocated whole.
    #[test]
    fn a_deflated_entries_bomb_is_refused() {
        let f = fixture(Compression::Gzip);
        let bomb = miniz_oxide::deflate::compress_to_vec(&vec![0u8; 16 << 20], 6);
        let g = resealed(&f, |h| {
            h.header.entries_deflated = true;
            h.header.entries_len = bomb.len() as u64;
            h.entries = Box::leak(bomb.clone().into_boxed_slice());
        });
        let e = g.open(f.ct.clone()).err().unwrap().to_string();
        assert!(e.contains("does not inflate to at most"), "{e}");
    }

    /// Checkpoints a co-recipient (or a writer's bug) says need no history
    /// where the data after them does copy from it: reads through them
    /// fail their pieces' check, never give other bytes.
    #[test]
    fn a_checkpoint_without_the_window_it_needs_fails_reads_not_bytes() {
        let f = fixture(Compression::Gzip);
        let g = resealed(&f, |h| {
            for c in &mut h.checkpoints {
                c.window = Window::None;
                c.window_len = 0;
            }
        });
        let refused = reads_of_all(&g, "does not match its seek index's piece digests");
        assert!(refused > 0, "no read needed a window");
    }

    /// The fixture's head, opened, edited as a co-recipient of the layer
    /// key could, and sealed again under the same salt.
    fn resealed(f: &Fixture, edit: impl FnOnce(&mut Head<'_>)) -> Fixture {
        let blob = HeadBlob::parse(&f.head).unwrap();
        let key = IndexKey::derive(&f.symkey, &blob.salt, &f.layer);
        let binding = Binding {
            manifest: &f.manifest,
            layer: &f.layer,
        };
        let payload = key.open(Kind::Head, 0, binding, blob.record).unwrap();
        let mut head = Head::parse(&payload, &f.expect()).unwrap();
        edit(&mut head);
        let mut bytes = head.write();
        bytes.resize(bytes.len().div_ceil(4096) * 4096, 0);
        let record = key.seal(Kind::Head, 0, binding, &bytes);
        let mut g = fixture_like(f);
        g.head = HeadBlob::write(&blob.salt, &record);
        g
    }

    /// A prioritized list a co-recipient made up: entries out of order,
    /// past the table, more than it has, or without data are refused.
    #[test]
    fn a_prioritized_list_that_breaks_its_rules_is_refused() {
        let f = fixture(Compression::Gzip);
        let names = f.names();
        let at = |name: &str| names.iter().position(|n| n == name).unwrap() as u32;
        let cases: [(Vec<u32>, Option<u32>, String); 4] = [
            (
                vec![at("z/tail.txt"), at("etc/small.conf")],
                None,
                format!("prioritized entry {} is out of order", at("etc/small.conf")),
            ),
            (
                vec![names.len() as u32],
                None,
                format!(
                    "prioritized entry {} is out of order or out of range",
                    names.len()
                ),
            ),
            (
                vec![0],
                Some(names.len() as u32 + 1),
                "prioritized entries, more than".into(),
            ),
            (
                vec![at("usr/lib/empty")],
                None,
                format!("prioritized entry {} holds no data", at("usr/lib/empty")),
            ),
        ];
        for (list, count, want) in cases {
            let g = resealed(&f, |h| {
                h.header.prioritized_count = count.unwrap_or(list.len() as u32);
                h.prioritized = list.clone();
            });
            let e = g.open(f.ct.clone()).err().unwrap().to_string();
            assert!(e.contains(&want), "{list:?}: {e}");
        }
        let g = resealed(&f, |h| {
            h.header.prioritized_count = 1;
            h.prioritized = vec![at("etc/small.conf")];
        });
        let (l, _) = g.open(f.ct.clone()).unwrap();
        assert_eq!(l.prefetch(u64::MAX).unwrap(), [0]);
    }

    /// A large prioritized file comes in requests of at most 4 MiB, so no
    /// request's body is held whole and a read waits for one piece at most.
    #[test]
    fn a_large_prioritized_file_is_fetched_in_pieces() {
        use crate::cache::blobs::DiskRange;
        use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

        struct Widest(MemoryRange, AtomicU64);
        impl RangeSource for Widest {
            fn size(&self) -> u64 {
                self.0.size()
            }
            fn read_into(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
                self.1.fetch_max(buf.len() as u64, Relaxed);
                self.0.read_into(offset, buf)
            }
            fn fetched(&self) -> u64 {
                self.0.fetched()
            }
        }
        let files = [("big.bin", noise(11 << 20, 5)), ("after", noise(1000, 6))];
        let first = ["big.bin".to_string()].into();
        let f = fixture_with(Compression::Gzip, &files, &first);
        let u = f.unsealed().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let widest = Arc::new(Widest(MemoryRange::new(f.ct.clone()), AtomicU64::new(0)));
        let src = Sources {
            blob: Arc::new(DiskRange::open(dir.path(), &f.layer, widest.clone()).unwrap()),
            windows: f
                .windows
                .clone()
                .map(|w| Arc::new(MemoryRange::new(w)) as Arc<dyn RangeSource>),
            layer_key: f.key.clone(),
            manifest: f.manifest.clone(),
            layer: f.layer.clone(),
        };
        let l = layer(u, src, "L").unwrap();
        // 11 MiB: 44 chunks of 256 KiB, cut from the file's start.
        assert_eq!(l.prefetch(u64::MAX).unwrap().len(), 44);
        assert!(widest.fetched() >= 11 << 20);
        assert_eq!(widest.1.load(Relaxed), crate::layer::source::PREFETCH_PIECE);
    }

    /// A window record placed at the end of the address space: the
    /// prefetch leaves it to its load, which refuses it; no overflow.
    #[test]
    fn a_window_record_past_any_blob_does_not_upset_the_prefetch() {
        let f = fixture(Compression::Gzip);
        let names = f.names();
        let blob = names.iter().position(|n| n == "usr/lib/blob.so").unwrap() as u32;
        let g = resealed(&f, |h| {
            h.header.prioritized_count = 1;
            h.prioritized = vec![blob];
            for c in &mut h.checkpoints {
                if let Window::Stored { offset, .. } = &mut c.window {
                    *offset = u64::MAX - 10;
                }
            }
        });
        let (l, _) = g.open(f.ct.clone()).unwrap();
        assert!(!l.prefetch(u64::MAX).unwrap().is_empty());
        let refused = reads_of_all(&g, "its record lies outside the windows blob");
        assert!(refused > 0, "no read needed a window");
    }

    /// A piece `in_end` before its checkpoint's byte (non-decreasing, last
    /// = C) once panicked the reader; the head is now refused.
    #[test]
    fn an_in_end_before_its_checkpoint_fails_the_read_without_panicking() {
        let f = fixture(Compression::Gzip);
        let g = resealed(&f, |h| {
            let n = h.pieces.len();
            for p in &mut h.pieces[..n - 1] {
                p.in_end = 0;
            }
        });
        let e = g.open(f.ct.clone()).err().unwrap().to_string();
        assert!(e.contains("end before its checkpoint 0 begins"), "{e}");
    }

    /// A piece `in_end` of C for every piece made each chunk load read (and
    /// buffer, unmetered) from its checkpoint to the blob's end; the head is
    /// now refused.
    #[test]
    fn an_in_end_at_the_blobs_end_does_not_fetch_the_whole_blob() {
        let f = fixture(Compression::Gzip);
        let c = f.ct.len() as u64;
        let g = resealed(&f, |h| {
            for p in &mut h.pieces {
                p.in_end = c;
            }
        });
        let e = g.open(f.ct.clone()).err().unwrap().to_string();
        assert!(e.contains("chunk 0: reading it from checkpoint 0"), "{e}");
    }

    /// Serves other bytes on its first read only (a registry or mirror
    /// that misbehaved once).
    struct FlakyOnce {
        data: Vec<u8>,
        served: std::sync::atomic::AtomicBool,
    }

    impl RangeSource for FlakyOnce {
        fn size(&self) -> u64 {
            self.data.len() as u64
        }
        fn read_into(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
            let at = offset as usize;
            buf.copy_from_slice(&self.data[at..at + buf.len()]);
            if !self.served.swap(true, std::sync::atomic::Ordering::Relaxed) {
                for b in buf.iter_mut() {
                    *b ^= 0x5a;
                }
            }
            Ok(())
        }
        fn fetched(&self) -> u64 {
            0
        }
    }

    /// A window record the source got wrong once is fetched again, as a bad
    /// span is; it once failed every read from the cache.
    #[test]
    fn a_window_the_source_got_wrong_once_is_fetched_again() {
        let f = fixture(Compression::Gzip);
        let dir = tempfile::tempdir().unwrap();
        let w = f.windows.clone().unwrap();
        let wd = digest::of(&w);
        let flaky = Arc::new(FlakyOnce {
            data: w,
            served: false.into(),
        });
        let cached =
            Arc::new(crate::cache::blobs::DiskRange::open(dir.path(), &wd, flaky).unwrap());
        let binding = Binding {
            manifest: &f.manifest,
            layer: &f.layer,
        };
        let u = unseal(&f.head, &f.symkey, binding, &f.expect(), &Unmetered).unwrap();
        let src = Sources {
            blob: Arc::new(MemoryRange::new(f.ct.clone())),
            windows: Some(cached),
            layer_key: f.key.clone(),
            manifest: f.manifest.clone(),
            layer: f.layer.clone(),
        };
        let l = layer(u, src, "L").unwrap();
        let got = l.read_file("z/tail.txt", 0, 100);
        assert!(got.is_ok(), "{:?}", got.err());
    }

    /// The background check finds every way an index that unseals (a
    /// co-recipient's) can differ from the blob it claims to index.
    #[test]
    fn the_background_check_compares_what_the_index_vouched_for_with_the_blob() {
        use crate::layer::seekindex::check::compare;
        use crate::layer::stream::Compression as Stream;
        let f = fixture(Compression::Gzip);
        let (l, _) = f.open(f.ct.clone()).unwrap();
        let vouched = l.vouched().unwrap();
        let mut plain = f.ct.clone();
        f.key.apply_at(0, &mut plain);
        let run = |v: &Vouched| {
            let mut spans = Chain::new(v.span);
            spans.update(&f.ct);
            let spans = Mutex::new(spans);
            compare(&plain[..], Stream::Gzip, &spans, v, "L").unwrap()
        };
        let want = format!(
            "sha256:{}",
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(tar_of(&files())))
        );
        assert_eq!(run(&vouched), (want.clone(), None));
        let mut lying = vouched.clone();
        lying.pieces[3][0] ^= 1;
        let (d, why) = run(&lying);
        assert_eq!(d, want);
        assert_eq!(
            why.unwrap(),
            "tar stream piece 3 is not what the seek index said"
        );
        let mut lying = vouched.clone();
        lying.spans[1][0] ^= 1;
        assert!(run(&lying).1.unwrap().contains("ciphertext span 1"));
        // A blob longer than the index said is stopped at that length.
        let mut short = vouched.clone();
        short.uncompressed -= 1 << 20;
        let (_, why) = run(&short);
        assert!(why.unwrap().contains("longer than"));
        // Entries a co-recipient changed (a setuid bit, say): the section
        // served from is not the one the tar headers make.
        let setuid = resealed(&f, |h| {
            let raw = entries_bytes(h).unwrap();
            let mut nodes = entries::decode(
                &raw,
                h.header.entry_count,
                h.header.uncompressed,
                crate::layer::stream::CHUNK,
                &Unmetered,
            )
            .unwrap();
            nodes[0].entry.mode |= 0o4000;
            let bytes = entries::encode(&nodes, crate::layer::stream::CHUNK).unwrap();
            h.header.entries_len = bytes.len() as u64;
            h.header.entries_deflated = false;
            h.entries = Box::leak(bytes.to_vec().into_boxed_slice());
        });
        let (l, _) = setuid.open(f.ct.clone()).unwrap();
        assert_eq!(l.nodes()[0].entry.mode & 0o4000, 0o4000);
        let why = run(&l.vouched().unwrap()).1.unwrap();
        assert!(why.contains("entries"), "{why}");
    }

    fn fixture_like(f: &Fixture) -> Fixture {
        Fixture {
            ct: f.ct.clone(),
            key: f.key.clone(),
            symkey: f.symkey,
            manifest: f.manifest.clone(),
            layer: f.layer.clone(),
            compression: f.compression,
            head: f.head.clone(),
            windows: f.windows.clone(),
        }
    }
}

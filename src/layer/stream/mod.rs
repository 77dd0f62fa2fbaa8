//! The stream index: serves any tar layer (plain, gzip or zstd, encrypted or
//! not) that has no TOC. The blob is read once, in order, while its caller
//! checks its digest and HMAC; on the way we record every entry's offset in
//! the uncompressed stream, a SHA-256 of each 64 KiB piece of it, and, for
//! gzip, the inflater's state at each 1 MiB of output. A read then decrypts
//! from the local ciphertext copy and inflates from the nearest saved state
//! (or one an earlier read reached) to the end of its 256 KiB chunk; every
//! piece is checked against its recorded digest before use. zstd has no
//! cheap checkpoints, so its tar stream is kept in a [`sealed::Sealed`] copy.

pub mod gzip;
pub mod memo;
pub mod sealed;
pub mod sparse;

use std::io::{self, Read};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use zeroize::Zeroizing;

use self::gzip::{GzReader, State};
use self::memo::{MEMO_BYTES, Memo};
use self::sealed::{Scratch, Sealed, Tee};
use super::index::{
    ChunkSource, Layer, MAX_ENTRIES, Meter, Node, bad, chunk_buffer, no_room, node_bytes,
    stream_extents,
};
use super::source::{RangeReader, RangeSource};
use super::tarmeta::{Pending, Source, is_extension, walk_error};
use super::verified::{Mismatch, Sha256Digest, Verified};
use crate::crypto::cipher::LayerKey;

/// Tar-stream bytes per chunk a layer is served in: a cold read of a small
/// file inflates and checks only up to the end of its chunk, not of the
/// 1 MiB between two saved states (docs/seek-index.md §12).
pub const CHUNK: u64 = 256 << 10;

/// Tar-stream bytes per recorded digest: 32 bytes per 64 KiB is 0.05 % of
/// the stream in memory.
pub const PIECE: u64 = 64 << 10;

/// Output between two saved inflater states: each holds a 32 KiB window,
/// 3 % of the stream at this spacing.
pub const STATE_EVERY: u64 = 1 << 20;

/// How the tar stream inside the blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// What one pass over the stream learned.
pub struct Indexed {
    nodes: Vec<Node>,
    /// One per [`PIECE`].
    digests: Vec<[u8; 32]>,
    stored: Stored,
    total: u64,
    /// Chunks 0, 1, … of the stream as the verified pass read them.
    kept: Kept,
}

/// Where a chunk's bytes come from after indexing.
enum Stored {
    /// The blob holds the tar stream as it is.
    Tar,
    /// The blob is gzip; inflater states at multiples of 1 MiB of output,
    /// every one for most layers, further apart for a stream that inflates
    /// beyond what the memory budget allows checkpoints for.
    Gzip(Vec<State>),
    /// The tar stream was sealed aside while it was decompressed.
    Sealed(Sealed),
}

impl Indexed {
    /// Bytes of the uncompressed tar stream.
    pub fn uncompressed_size(&self) -> u64 {
        self.total
    }

    /// The entries, in tar order, their extents in [`CHUNK`]s.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }
}

/// Farthest apart gzip checkpoints may lie: each read inflates up to this
/// much from the nearest one, so a layer needing more is refused.
pub const MAX_SPACING: u64 = 256 << 20;

/// Share of the memory budget one layer's inflater states may hold.
const STATES_SHARE: u64 = 4;

/// Share of the memory budget one layer may fill, while its blob is
/// verified, with the tar-stream chunks that pass goes through: they are
/// the layer's first cached chunks once it is mounted, instead of being
/// decrypted and inflated again at their first read. Only while half the
/// budget is left for what indexes must take (all layers' together), and
/// counted in the layer's reservation until the cache takes them.
const KEEP_SHARE: u64 = 8;

/// Indexes the plaintext (still compressed) stream `r` to its end. A zstd
/// stream's sealed copy goes in `scratch`. What the index holds is taken
/// from `meter` as it grows; the caller keeps the reservation while the
/// layer is served.
pub fn index<R: Read>(
    r: R,
    compression: Compression,
    scratch: &Scratch,
    what: &str,
    meter: &dyn Meter,
) -> io::Result<Indexed> {
    let wrap = |e: io::Error| bad(what, e.to_string());
    match compression {
        Compression::None => {
            let (nodes, kept, digests, total, _) = walk_keeping(r, meter, what)?;
            Ok(Indexed {
                nodes,
                digests,
                stored: Stored::Tar,
                total,
                kept,
            })
        }
        Compression::Zstd => {
            let sealed = Sealed::create(scratch)
                .map_err(|e| bad(what, format!("cannot create a sealed copy: {e}")))?;
            let decoder = zstd::stream::read::Decoder::new(r).map_err(wrap)?;
            let tee = Tee {
                inner: decoder,
                sealed,
            };
            let (nodes, kept, digests, total, tee) = walk_keeping(tee, meter, what)?;
            Ok(Indexed {
                nodes,
                digests,
                stored: Stored::Sealed(tee.sealed),
                total,
                kept,
            })
        }
        Compression::Gzip => {
            let states_room = (meter.budget() / STATES_SHARE / gzip::STATE_BYTES) as usize;
            let gz = GzReader::new(r, Some(STATE_EVERY)).with_max_saved(states_room);
            let (nodes, kept, digests, total, mut gz) = walk_keeping(gz, meter, what)?;
            if gz.every().is_some_and(|e| e > MAX_SPACING) {
                return Err(bad(
                    what,
                    format!(
                        "it inflates so far that its checkpoints would lie more than {} MiB apart \
                         under this cache budget (--cache-size, cache_size)",
                        MAX_SPACING >> 20
                    ),
                ));
            }
            let mut states = gz.take_saved();
            // A stream ending exactly on a boundary saved a state past its end.
            states.retain(|s| s.out_pos == 0 || s.out_pos < total);
            if states.first().is_none_or(|s| s.out_pos != 0) {
                return Err(wrap(io::Error::other("inflater states are missing")));
            }
            // With the states the memo may keep while served; kept chunks
            // give way to them.
            let need = states.len() as u64 * gzip::STATE_BYTES + MEMO_BYTES;
            let mut kept = kept;
            if !meter.take(need) {
                meter.give(std::mem::take(&mut kept).taken);
                if !meter.take(need) {
                    return Err(no_room(what, &format!("{} checkpoints", states.len())));
                }
            }
            Ok(Indexed {
                nodes,
                digests,
                stored: Stored::Gzip(states),
                total,
                kept,
            })
        }
    }
}

/// What [`walk_keeping`] gives: the entries, the chunks kept, a digest per
/// [`PIECE`], the stream's length, and the stream.
type Walked<R> = (Vec<Node>, Kept, Vec<[u8; 32]>, u64, R);

/// [`walk`] over `r` hashed per piece, keeping the chunks it reads.
fn walk_keeping<R: Read>(r: R, meter: &dyn Meter, what: &str) -> io::Result<Walked<R>> {
    let (nodes, mut hasher) = walk(ChunkHasher::new(r, meter, what).keeping(), what)?;
    let kept = hasher.take_kept();
    let (digests, total, r) = hasher.finish()?;
    Ok((nodes, kept, digests, total, r))
}

/// Walks the tar entries, then drains the stream so every byte is hashed
/// (and the caller's digest and HMAC checks see the end). Files are split
/// into chunks only then, once the stream has shown it holds the bytes
/// their headers claim.
pub(crate) fn walk<'m, R: Read>(
    r: ChunkHasher<'m, R>,
    what: &str,
) -> io::Result<(Vec<Node>, ChunkHasher<'m, R>)> {
    // Names are decrypted data: the tar parser's errors, which quote them,
    // are replaced (`walk_error`).
    let wrap = |e: io::Error| bad(what, walk_error(e).to_string());
    let meter = r.meter;
    let mut archive = tar::Archive::new(Source(r));
    let mut nodes = Vec::new();
    // Where each regular file's bytes start in the stream, by node.
    let mut starts: Vec<(usize, u64)> = Vec::new();
    let mut pending = Pending::default();
    for entry in archive.entries().map_err(wrap)?.raw(true) {
        let mut e = entry.map_err(wrap)?;
        let hdr = e.header().clone();
        let size = hdr.entry_size().map_err(wrap)?;
        let kind = hdr.entry_type();
        if is_extension(kind) {
            pending.absorb(kind, size, &mut e).map_err(wrap)?;
            continue;
        }
        let te = pending.entry(&hdr).map_err(wrap)?;
        if te.name.is_empty() {
            continue;
        }
        if nodes.len() >= MAX_ENTRIES {
            return Err(bad(
                what,
                format!("the layer has more than {MAX_ENTRIES} entries"),
            ));
        }
        if te.kind == "reg" {
            starts.push((nodes.len(), e.raw_file_position()));
        }
        let node = Node {
            entry: te,
            extents: Vec::new(),
        };
        if !meter.take(node_bytes(&node)) {
            return Err(no_room(what, &format!("{} entries", nodes.len() + 1)));
        }
        nodes.push(node);
    }
    let mut r = archive.into_inner().into_inner();
    io::copy(&mut r, &mut io::sink()).map_err(|e| bad(what, e.to_string()))?;
    for (i, at) in starts {
        let n = &mut nodes[i];
        if at.checked_add(n.entry.size).is_none_or(|end| end > r.at) {
            return Err(bad(
                what,
                format!("entry {i} claims more bytes than the layer holds"),
            ));
        }
        n.extents = stream_extents(at, n.entry.size, CHUNK);
        let bytes = (n.extents.len() * std::mem::size_of::<super::index::Extent>()) as u64;
        if !meter.take(bytes) {
            return Err(no_room(what, &format!("{} entries", nodes.len())));
        }
    }
    Ok((nodes, r))
}

/// Hashes a stream in [`PIECE`]s (or another unit) as it is read; the
/// digests' memory is taken from `meter` a batch at a time.
pub(crate) struct ChunkHasher<'m, R> {
    inner: R,
    hasher: Sha256,
    unit: u64,
    at: u64,
    digests: Vec<[u8; 32]>,
    meter: &'m dyn Meter,
    what: &'m str,
    /// Chunks kept as they are read ([`ChunkHasher::keeping`]).
    keep: Option<Keeping>,
}

/// Chunks of a stream kept as it is read, their memory taken from the
/// meter, up to a share of its budget.
struct Keeping {
    kept: Kept,
    /// The chunk being filled: never grown past [`CHUNK`], so no copy of
    /// it is left behind unwiped.
    filling: Zeroizing<Vec<u8>>,
    /// Bytes the kept chunks may take in all.
    room: u64,
    /// Set once a chunk did not fit: the rest of the stream is not kept.
    full: bool,
}

/// Chunks 0, 1, … of a tar stream, read by a pass whose caller verified
/// the blob, and the meter's bytes they hold.
#[derive(Default)]
pub struct Kept {
    chunks: Vec<Zeroizing<Vec<u8>>>,
    taken: u64,
}

/// Chunk digests whose memory is taken from the meter at once.
const DIGEST_BATCH: usize = 1024;

impl<'m, R: Read> ChunkHasher<'m, R> {
    pub(crate) fn new(inner: R, meter: &'m dyn Meter, what: &'m str) -> Self {
        Self::with_unit(inner, PIECE, meter, what)
    }

    /// Hashes every `unit` bytes (a power of two) instead of every piece.
    pub(crate) fn with_unit(inner: R, unit: u64, meter: &'m dyn Meter, what: &'m str) -> Self {
        ChunkHasher {
            inner,
            hasher: Sha256::new(),
            unit,
            at: 0,
            digests: Vec::new(),
            meter,
            what,
            keep: None,
        }
    }

    /// Keeps the stream's chunks as they pass, up to 1/[`KEEP_SHARE`] of
    /// the meter's budget (a chunk the meter refuses ends the keeping).
    pub(crate) fn keeping(mut self) -> Self {
        if self.meter.budget() == u64::MAX {
            // Unmetered (a tool's one-shot index): nothing to cache into.
            return self;
        }
        self.keep = Some(Keeping {
            kept: Kept::default(),
            filling: Zeroizing::new(Vec::with_capacity(CHUNK as usize)),
            room: self.meter.budget() / KEEP_SHARE,
            full: false,
        });
        self
    }

    /// Ends a chunk being kept: kept if it fits, else keeping stops.
    fn keep_chunk(&mut self) {
        let Some(k) = self.keep.as_mut() else { return };
        let chunk = std::mem::replace(
            &mut k.filling,
            Zeroizing::new(Vec::with_capacity(CHUNK as usize)),
        );
        let len = chunk.len() as u64;
        if k.full || len == 0 {
            return;
        }
        let plenty = self.meter.spare() >= self.meter.budget() / 2 + len;
        if k.kept.taken + len > k.room || !plenty || !self.meter.take(len) {
            k.full = true;
            return;
        }
        k.kept.taken += len;
        k.kept.chunks.push(chunk);
    }

    /// The chunks kept, the last one partial if the stream ended in it;
    /// keeping stops.
    pub(crate) fn take_kept(&mut self) -> Kept {
        self.keep_chunk();
        self.keep.take().map(|k| k.kept).unwrap_or_default()
    }

    /// Gives back what kept chunks hold, and keeps no more: what the index
    /// must take comes first.
    fn drop_kept(&mut self) {
        if let Some(k) = self.keep.as_mut() {
            self.meter.give(std::mem::take(&mut k.kept).taken);
            k.full = true;
        }
    }

    fn push(&mut self) -> io::Result<()> {
        let batch = (DIGEST_BATCH * 32) as u64;
        if self.digests.len().is_multiple_of(DIGEST_BATCH)
            && !self.meter.take(batch)
            && !{
                self.drop_kept();
                self.meter.take(batch)
            }
        {
            return Err(no_room(
                self.what,
                &format!(
                    "digests of {} MiB of tar stream",
                    (self.digests.len() as u64 * self.unit) >> 20
                ),
            ));
        }
        self.digests.push(self.hasher.finalize_reset().into());
        Ok(())
    }

    /// The digests, the stream's length and the stream.
    pub(crate) fn finish(mut self) -> io::Result<(Vec<[u8; 32]>, u64, R)> {
        if !self.at.is_multiple_of(self.unit) {
            self.push()?;
        }
        Ok((self.digests, self.at, self.inner))
    }
}

impl<R: Read> Read for ChunkHasher<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut data = &buf[..n];
        let mut rest = data;
        while !rest.is_empty() {
            let Some(k) = self.keep.as_mut().filter(|k| !k.full) else {
                break;
            };
            let take = (CHUNK as usize - k.filling.len()).min(rest.len());
            k.filling.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if k.filling.len() == CHUNK as usize {
                self.keep_chunk();
            }
        }
        while !data.is_empty() {
            let room = (self.unit - self.at % self.unit) as usize;
            let take = room.min(data.len());
            self.hasher.update(&data[..take]);
            self.at += take as u64;
            data = &data[take..];
            if self.at.is_multiple_of(self.unit) {
                self.push()?;
            }
        }
        Ok(n)
    }
}

/// The blob's compressed plaintext at any offset: a local (ciphertext) copy
/// decrypted on the fly.
pub struct Plain {
    src: Arc<dyn RangeSource>,
    key: Option<LayerKey>,
}

impl Plain {
    pub fn new(src: Arc<dyn RangeSource>, key: Option<LayerKey>) -> Self {
        Plain { src, key }
    }

    /// Decrypting reader of `[from, end)`.
    fn reader(&self, from: u64) -> RangeReader<'_> {
        RangeReader::new(&*self.src, self.key.as_ref(), from, self.src.size())
    }
}

struct StreamChunks {
    plain: Plain,
    what: String,
    /// One per [`PIECE`].
    digests: Vec<[u8; 32]>,
    stored: Stored,
    total: u64,
    /// Inflater states at chunk starts that earlier loads reached (gzip).
    memo: Mutex<Memo>,
    /// Chunks the verified pass kept, checked, until the cache takes them;
    /// and the meter's bytes they held.
    kept: Mutex<(Vec<(u32, Verified)>, u64)>,
}

/// The digests of the pieces stream bytes `[start, end)` cover (`start` on
/// a piece's start, `end` > `start`), if there are that many.
fn piece_digests(digests: &[[u8; 32]], start: u64, end: u64) -> Option<Vec<Sha256Digest>> {
    let pieces = digests.get((start / PIECE) as usize..=((end - 1) / PIECE) as usize)?;
    Some(pieces.iter().map(|d| Sha256Digest(*d)).collect())
}

/// The saved state nearest before `offset` of the output (the first is at 0).
fn state_before(states: &[State], offset: u64) -> usize {
    states.partition_point(|s| s.out_pos <= offset).max(1) - 1
}

/// A layer served from its index and a local copy of its blob.
pub fn layer(indexed: Indexed, plain: Plain, what: &str) -> io::Result<Layer> {
    let count = u32::try_from(indexed.total.div_ceil(CHUNK))
        .map_err(|_| bad(what, "layer has too many chunks".into()))?;
    // Bytes the pass read from a blob its caller verified, checked again
    // against the pieces that pass recorded, as every load is.
    let mut kept = Vec::with_capacity(indexed.kept.chunks.len());
    for (c, bytes) in (0u32..).zip(indexed.kept.chunks) {
        let start = u64::from(c) * CHUNK;
        let end = start + bytes.len() as u64;
        let Some(want) = piece_digests(&indexed.digests, start, end) else {
            break;
        };
        match Verified::check_pieces(bytes, PIECE as usize, &want) {
            Ok(v) => kept.push((c, v)),
            Err(_) => break,
        }
    }
    let chunks = StreamChunks {
        plain,
        what: what.to_string(),
        digests: indexed.digests,
        stored: indexed.stored,
        total: indexed.total,
        memo: Mutex::new(Memo::default()),
        kept: Mutex::new((kept, indexed.kept.taken)),
    };
    Layer::new(what, indexed.nodes, Box::new(chunks), count)
}

/// A chunk's plaintext, and the inflater where it ended (gzip).
type Loaded = (Zeroizing<Vec<u8>>, Option<State>);

impl StreamChunks {
    /// Inflates `[start, end)` going on from `st` (at or before `start`),
    /// keeping the states it passes at chunk starts: the output before
    /// them is checked by the chunk that ends there, so they are put in
    /// the memo only as the load that reached them succeeds.
    fn inflate_on(&self, st: State, start: u64, end: u64) -> io::Result<(Loaded, Vec<State>)> {
        let skip = start
            .checked_sub(st.out_pos)
            .ok_or_else(|| io::Error::other("an inflater state past the chunk"))?;
        let mut gz = GzReader::resume(self.plain.reader(st.in_pos), st).with_stops(PIECE);
        let mut passed = Vec::new();
        let mut scratch = Zeroizing::new(vec![0u8; PIECE as usize]);
        let mut left = skip;
        while left > 0 {
            let n = left.min(PIECE) as usize;
            gz.read_exact(&mut scratch[..n])?;
            left -= n as u64;
            if let Some(st) = gz.state().filter(|s| s.out_pos.is_multiple_of(CHUNK)) {
                passed.push(st);
            }
        }
        let mut out = chunk_buffer((end - start) as usize);
        gz.read_exact(&mut out)?;
        Ok(((out, gz.state()), passed))
    }

    /// The chunk `[start, end)` of a gzip stream, checked against `want`,
    /// from the nearest state. A state an earlier load reached is tried
    /// first; if it fails to inflate or its output does not match, the memo
    /// is cleared and the saved state is used (a bad copy of the blob fails
    /// from both, and only then is it the caller's to forget).
    fn inflate(
        &self,
        states: &[State],
        start: u64,
        end: u64,
        want: &[Sha256Digest],
    ) -> io::Result<Result<(Verified, Vec<State>), Mismatch>> {
        let saved = &states[state_before(states, start)];
        let near = crate::sync::lock(&self.memo).nearest(start, saved.out_pos);
        if let Some(st) = near {
            if let Ok(((bytes, state), passed)) = self.inflate_on(st, start, end)
                && let Ok(v) = Verified::check_pieces(bytes, PIECE as usize, want)
            {
                return Ok(Ok((v, passed.into_iter().chain(state).collect())));
            }
            crate::sync::lock(&self.memo).clear();
        }
        let ((bytes, state), passed) = self.inflate_on(saved.clone(), start, end)?;
        Ok(Verified::check_pieces(bytes, PIECE as usize, want)
            .map(|v| (v, passed.into_iter().chain(state).collect())))
    }
}

/// Reads `len` bytes with `fill`, in a buffer wiped after.
fn filled(len: u64, fill: impl FnOnce(&mut [u8]) -> io::Result<()>) -> io::Result<Loaded> {
    let mut out = chunk_buffer(len as usize);
    fill(&mut out)?;
    Ok((out, None))
}

impl ChunkSource for StreamChunks {
    fn take_kept(&self) -> (Vec<(u32, Verified)>, u64) {
        std::mem::take(&mut *crate::sync::lock(&self.kept))
    }

    fn on_disk(&self) -> u64 {
        match &self.stored {
            Stored::Sealed(sealed) => sealed.len(),
            _ => 0,
        }
    }

    fn resident(&self) -> u64 {
        let states = match &self.stored {
            Stored::Gzip(states) => states.len() as u64 * gzip::STATE_BYTES + MEMO_BYTES,
            _ => 0,
        };
        // Kept chunks stay counted until the cache takes them.
        let kept = crate::sync::lock(&self.kept).1;
        states + self.digests.len() as u64 * 32 + kept
    }

    fn load(&self, chunk: u32) -> io::Result<Verified> {
        let start = u64::from(chunk) * CHUNK;
        if start >= self.total {
            return Err(bad(&self.what, format!("no chunk {chunk}")));
        }
        let end = (start + CHUNK).min(self.total);
        let want = piece_digests(&self.digests, start, end)
            .ok_or_else(|| bad(&self.what, format!("no digests for chunk {chunk}")))?;
        // The blob range the chunk comes from: if what the ciphertext cache
        // holds of it fails (to inflate, or its digests), that copy is bad
        // (the blob was verified when it was indexed) and is dropped, so the
        // next read fetches it again.
        let range = match &self.stored {
            Stored::Sealed(_) => None,
            Stored::Tar => Some((start, end - start)),
            Stored::Gzip(states) => {
                let from = states[state_before(states, start)].in_pos;
                let after = states.partition_point(|s| s.out_pos < end);
                let to = states
                    .get(after)
                    .map_or(self.plain.src.size(), |s| s.in_pos);
                Some((from, to.saturating_sub(from)))
            }
        };
        let failed = |e: io::Error| {
            crate::sync::lock(&self.memo).clear();
            if let Some((at, n)) = range
                && let Err(f) = self.plain.src.forget_range(at, n)
            {
                tracing::warn!("layer {}: forgetting a bad chunk: {f}", self.what);
            }
            e
        };
        let at_blob = |e: io::Error| {
            let from = range.map_or(start, |(at, _)| at);
            failed(bad(
                &self.what,
                format!("chunk {chunk} (blob offset {from}): {e}"),
            ))
        };
        let checked = match &self.stored {
            Stored::Sealed(sealed) => {
                let (bytes, _) = filled(end - start, |out| sealed.read_into(start, out))
                    .map_err(|e| bad(&self.what, format!("chunk {chunk}: {e}")))?;
                Verified::check_pieces(bytes, PIECE as usize, &want).map(|v| (v, Vec::new()))
            }
            Stored::Tar => {
                self.plain.src.prepare(start, end - start)?;
                let mut r = self.plain.reader(start);
                let (bytes, _) = filled(end - start, |out| r.read_exact(out)).map_err(at_blob)?;
                Verified::check_pieces(bytes, PIECE as usize, &want).map(|v| (v, Vec::new()))
            }
            Stored::Gzip(states) => self.inflate(states, start, end, &want).map_err(at_blob)?,
        };
        let (verified, reached) = checked.map_err(|_| {
            failed(bad(
                &self.what,
                format!(
                    "chunk {chunk} does not match the digests recorded when the blob was verified"
                ),
            ))
        })?;
        // States passed on the way follow output no piece checked; a wrong
        // one can only fail a later chunk's check (which clears the memo).
        let mut memo = crate::sync::lock(&self.memo);
        for st in reached {
            memo.put(st);
        }
        Ok(verified)
    }

    fn fetched(&self) -> u64 {
        self.plain.src.fetched()
    }
}

#[cfg(test)]
mod tests {
    use crate::layer::testing::Budget;
    use std::io::Write;

    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;
    use crate::layer::index::Unmetered;
    use crate::layer::source::MemoryRange;
    use crate::layer::testing::noise;

    fn nowhere() -> Scratch {
        Scratch::new("/nonexistent".into(), u64::MAX)
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    /// A small gzip layer that inflates to 256 MiB once kept 256 inflater
    /// states (11 MiB) whatever the budget; now its checkpoints thin out to
    /// fit a quarter of the budget, and every chunk still reads right.
    #[test]
    fn a_layer_that_inflates_far_keeps_its_index_within_the_budget() {
        let zeros = vec![0u8; 256 << 20];
        let gz = gzip(&tar_with(&zeros));
        assert!(gz.len() < 4 << 20, "{}", gz.len());
        let meter = Budget(2 << 20, AtomicU64::new(0));
        let idx = index(&gz[..], Compression::Gzip, &nowhere(), "L", &meter).unwrap();
        let taken = meter.1.load(Ordering::SeqCst);
        let l = layer(idx, Plain::new(Arc::new(MemoryRange::new(gz)), None), "L").unwrap();
        assert!(l.resident() <= 2 << 20, "{}", l.resident());
        assert!(taken >= l.resident() - (64 << 10), "{taken} taken");
        for at in [0u64, (200 << 20) + 12345, (256 << 20) - 10] {
            let got = l.read_file("a/big.bin", at, 5000).unwrap();
            assert!(got.iter().all(|&b| b == 0) && !got.is_empty());
        }
        assert_eq!(&l.read_file("a/small.txt", 0, 5).unwrap()[..], b"hello");
        // With no room for it at all, the layer is refused with a reason.
        let tight = Budget(64 << 10, AtomicU64::new(0));
        let gz = gzip(&tar_with(&zeros[..8 << 20]));
        let e = index(&gz[..], Compression::Gzip, &nowhere(), "L", &tight)
            .err()
            .unwrap()
            .to_string();
        assert!(e.starts_with("layer L: its index ("), "{e}");
    }

    /// A one-shot tool's unmetered index keeps no chunks: nothing would
    /// take them, and they would double its memory.
    #[test]
    fn an_unmetered_index_keeps_no_chunks() {
        let gz = gzip(&tar_with(&noise(1 << 20)));
        let idx = index(&gz[..], Compression::Gzip, &nowhere(), "L", &Unmetered).unwrap();
        let l = layer(idx, Plain::new(Arc::new(MemoryRange::new(gz)), None), "L").unwrap();
        assert_eq!(l.take_kept().1, 0);
    }

    /// A cold read of a small file inflates only to the end of its 256 KiB
    /// chunk, checked by 64 KiB pieces, not to the end of the 1 MiB between
    /// two saved states (it read 1 MiB of the blob with 1 MiB chunks); the
    /// next chunk goes on from where that read stopped.
    #[test]
    fn a_cold_small_read_inflates_only_to_the_end_of_its_chunk() {
        let big = noise(3 << 20);
        let gz = gzip(&tar_with(&big));
        let idx = index(&gz[..], Compression::Gzip, &nowhere(), "L", &Unmetered).unwrap();
        let src = Arc::new(MemoryRange::new(gz));
        let l = layer(idx, Plain::new(src.clone(), None), "L").unwrap();
        assert_eq!(&l.read_file("a/small.txt", 0, 5).unwrap()[..], b"hello");
        let first = src.fetched();
        assert!(((256 << 10)..(384 << 10)).contains(&first), "{first}");
        // The rest of chunk 1, from chunk 0's end: another chunk's worth.
        let at = (256 << 10) + 1000;
        let got = l.read_file("a/big.bin", at, 10).unwrap();
        assert_eq!(&got[..], &big[at as usize..at as usize + 10]);
        let second = src.fetched() - first;
        assert!(second < 384 << 10, "{second}");
    }

    /// An inflater state in the memo that gives wrong bytes (here: one
    /// another stream reached at the same offset) is dropped and the load
    /// done again from the saved state: the read succeeds, and the blob's
    /// good copy is not forgotten (the load failed before).
    #[test]
    fn a_memo_state_that_gives_wrong_bytes_is_dropped_not_served() {
        let chunks = |data: &[u8]| {
            let gz = gzip(&tar_with(data));
            let idx = index(&gz[..], Compression::Gzip, &nowhere(), "L", &Unmetered).unwrap();
            let Stored::Gzip(states) = idx.stored else {
                panic!("gzip")
            };
            let src = Arc::new(MemoryRange::new(gz));
            StreamChunks {
                plain: Plain::new(src, None),
                what: "L".into(),
                digests: idx.digests,
                stored: Stored::Gzip(states),
                total: idx.total,
                memo: Mutex::new(Memo::default()),
                kept: Mutex::default(),
            }
        };
        let (good, other) = (noise(3 << 20), noise((3 << 20) + 1)[1..].to_vec());
        let (a, b) = (chunks(&good), chunks(&other));
        b.load(0).unwrap();
        let wrong = crate::sync::lock(&b.memo).nearest(CHUNK, CHUNK).unwrap();
        crate::sync::lock(&a.memo).put(wrong);
        let got = a.load(1).unwrap();
        let want = tar_with(&good);
        assert!(got.bytes() == &want[CHUNK as usize..2 * CHUNK as usize]);
    }

    /// A zstd layer's sealed copy keeps to the sealed-copy disk budget.
    #[test]
    fn a_zstd_layer_past_the_sealed_budget_is_refused() {
        let tar = tar_with(&vec![0u8; 4 << 20]);
        let zst = zstd::encode_all(&tar[..], 3).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let scratch = Scratch::new(dir.path().into(), 1 << 20);
        let e = index(&zst[..], Compression::Zstd, &scratch, "L", &Unmetered)
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.starts_with("layer L: ") && e.contains("sealed-copy disk budget"),
            "{e}"
        );
        assert_eq!(scratch.used(), 0, "the failed copy gave its room back");
    }

    /// A zstd layer's sealed copy is disk it holds while served (its whole
    /// tar stream); the other kinds hold none beside the blob.
    #[test]
    fn a_zstd_layer_holds_its_sealed_copy_on_disk() {
        let tar = tar_with(&big());
        let dir = tempfile::tempdir().unwrap();
        let scratch = Scratch::new(dir.path().into(), u64::MAX);
        let zst = zstd::encode_all(&tar[..], 3).unwrap();
        let idx = index(&zst[..], Compression::Zstd, &scratch, "L", &Unmetered).unwrap();
        let l = layer(idx, Plain::new(Arc::new(MemoryRange::new(zst)), None), "L").unwrap();
        assert_eq!(l.on_disk(), tar.len() as u64);
        assert_eq!(l.on_disk(), scratch.used());
        let idx = index(&tar[..], Compression::None, &scratch, "L", &Unmetered).unwrap();
        let l = layer(idx, Plain::new(Arc::new(MemoryRange::new(tar)), None), "L").unwrap();
        assert_eq!(l.on_disk(), 0);
    }

    fn tar_with(big: &[u8]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(5);
        h.set_mode(0o644);
        b.append_data(&mut h, "./a/small.txt", &b"hello"[..])
            .unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_size(big.len() as u64);
        h.set_mode(0o600);
        b.append_data(&mut h, "a/big.bin", big).unwrap();
        b.into_inner().unwrap()
    }

    fn big() -> Vec<u8> {
        let mut v = Vec::new();
        let mut i = 0u64;
        while v.len() < (3 << 20) + 12345 {
            write!(v, "{i} ").unwrap();
            i = i
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407)
                >> 40;
        }
        v
    }

    fn check(blob: Vec<u8>, compression: Compression, key: Option<LayerKey>, big: &[u8]) {
        let mut plain = blob.clone();
        if let Some(k) = &key {
            k.apply_at(0, &mut plain);
        }
        let scratch = tempfile::tempdir().unwrap();
        let scratch = Scratch::new(scratch.path().into(), u64::MAX);
        let idx = index(&plain[..], compression, &scratch, "L", &Unmetered).unwrap();
        let src = Arc::new(MemoryRange::new(blob));
        let l = layer(idx, Plain::new(src, key), "L").unwrap();
        assert_eq!(&l.read_file("a/small.txt", 0, 99).unwrap()[..], b"hello");
        let at = (2 << 20) - 100;
        let got = l.read_file("a/big.bin", at, 5000).unwrap();
        assert_eq!(&got[..], &big[at as usize..at as usize + 5000]);
        let all = l.read_file("a/big.bin", 0, u64::MAX).unwrap();
        assert!(all[..] == big[..]);
    }

    #[test]
    fn plain_gzip_and_zstd_tar_read_at_any_offset() {
        let big = big();
        let tar = tar_with(&big);
        check(tar.clone(), Compression::None, None, &big);
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&tar).unwrap();
        let gz = e.finish().unwrap();
        check(gz.clone(), Compression::Gzip, None, &big);
        let key = LayerKey::generate();
        let mut ct = gz;
        key.apply_at(0, &mut ct);
        check(ct, Compression::Gzip, Some(key), &big);
        let zst = zstd::encode_all(&tar[..], 3).unwrap();
        check(zst.clone(), Compression::Zstd, None, &big);
        let key = LayerKey::generate();
        let mut ct = zst;
        key.apply_at(0, &mut ct);
        check(ct, Compression::Zstd, Some(key), &big);
    }

    #[test]
    fn a_malformed_header_names_no_entry() {
        let mut tar = tar_with(b"data");
        // A size field that is no number, under a valid checksum: tar's
        // own error would end in "when getting size for a/small.txt".
        tar[124..136].copy_from_slice(b"12x45678901\0");
        let h = tar::Header::from_byte_slice(&tar[..512]).clone();
        let mut h = h;
        h.set_cksum();
        tar[..512].copy_from_slice(h.as_bytes());
        let e = index(&tar[..], Compression::None, &nowhere(), "L", &Unmetered)
            .err()
            .unwrap()
            .to_string();
        assert_eq!(e, "layer L: tar: an entry header is malformed");
    }

    /// A tar header claiming 2^62 bytes of a file the stream does not hold
    /// is a malformed archive, not 2^42 extents reserved up front (an abort).
    #[test]
    fn a_lying_entry_size_is_an_error_not_an_allocation() {
        let mut h = tar::Header::new_gnu();
        h.set_path("f").unwrap();
        h.set_size(1 << 62);
        h.set_mode(0o644);
        h.set_cksum();
        let mut tar = h.as_bytes().to_vec();
        tar.extend_from_slice(&[0; 2048]);
        for c in [Compression::None, Compression::Zstd] {
            let blob = match c {
                Compression::Zstd => zstd::encode_all(&tar[..], 1).unwrap(),
                _ => tar.clone(),
            };
            let dir = tempfile::tempdir().unwrap();
            let scratch = Scratch::new(dir.path().into(), u64::MAX);
            let e = index(&blob[..], c, &scratch, "sha256:ab", &Unmetered)
                .err()
                .unwrap();
            assert_eq!(
                e.to_string(),
                "layer sha256:ab: tar: an entry header is malformed",
                "{c:?}"
            );
        }
    }

    #[test]
    fn a_changed_local_copy_is_refused() {
        let big = big();
        let tar = tar_with(&big);
        let idx = index(&tar[..], Compression::None, &nowhere(), "L", &Unmetered).unwrap();
        let mut evil = tar.clone();
        evil[(1 << 20) + 7] ^= 1;
        let l = layer(idx, Plain::new(Arc::new(MemoryRange::new(evil)), None), "L").unwrap();
        let e = l
            .read_file("a/big.bin", 1 << 20, 10)
            .unwrap_err()
            .to_string();
        assert!(e.contains("layer L: chunk 4 does not match"), "{e}");
        assert_eq!(&l.read_file("a/small.txt", 0, 5).unwrap()[..], b"hello");
    }
}

//! A gzip reader whose whole state can be saved at any 1 MiB boundary of its
//! output and resumed later from the same compressed offset, zran-style: the
//! saved state is the inflater's tables and bit buffer plus its 32 KiB window.
//! Multi-member streams (what `pigz` and eStargz write) read as one.

use std::io::{self, Read};

use super::sparse::{MARGIN, MAX_INPUT, Pending, REACH};
use miniz_oxide::inflate::TINFLStatus;
use miniz_oxide::inflate::core::inflate_flags::{
    TINFL_FLAG_HAS_MORE_INPUT, TINFL_FLAG_STOP_ON_BLOCK_BOUNDARY,
};
use miniz_oxide::inflate::core::{
    BlockBoundaryState, DecompressorOxide, TINFL_LZ_DICT_SIZE, decompress_with_limit,
};
use zeroize::{Zeroize, Zeroizing};

use crate::crypto::wipe::SecretBuf;

/// Where the reader is in the gzip framing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Header,
    Deflate,
    Trailer(u8),
    Done,
}

/// Most bytes a gzip member header (with its name, comment and extra
/// field) may take.
pub const MAX_HEADER: u64 = 1 << 20;

/// Memory one saved [`State`] holds.
pub const STATE_BYTES: u64 = (std::mem::size_of::<State>()
    + std::mem::size_of::<DecompressorOxide>()
    + TINFL_LZ_DICT_SIZE) as u64;

/// Everything needed to resume inflating at a point of the output.
#[derive(Clone)]
pub struct State {
    d: Box<DecompressorOxide>,
    window: Box<[u8; TINFL_LZ_DICT_SIZE]>,
    window_at: usize,
    phase: Phase,
    header: Vec<u8>,
    members: u64,
    /// Output produced before the current member began.
    member_out: u64,
    /// Compressed bytes consumed.
    pub in_pos: u64,
    /// Plaintext bytes produced.
    pub out_pos: u64,
}

impl Drop for State {
    fn drop(&mut self) {
        // The window is the last 32 KiB of plaintext.
        self.window.zeroize();
    }
}

impl State {
    /// The state before the first byte.
    pub fn start() -> Self {
        State {
            d: Box::default(),
            window: Box::new([0; TINFL_LZ_DICT_SIZE]),
            window_at: 0,
            phase: Phase::Header,
            header: Vec::new(),
            members: 0,
            member_out: 0,
            in_pos: 0,
            out_pos: 0,
        }
    }

    /// The state at the start of a deflate block (a [`BlockStart`]): the
    /// caller feeds the compressed stream from byte `ceil(in_bit / 8)`;
    /// `partial` is byte `floor(in_bit / 8)` (unused when `in_bit` is a
    /// whole byte), and `window` (at most 32 KiB) the output just before
    /// `out`.
    pub fn at_block(in_bit: u64, partial: u8, out: u64, window: &[u8]) -> Option<Self> {
        if window.len() > TINFL_LZ_DICT_SIZE || (window.len() as u64) > out {
            return None;
        }
        let mut st = State::start();
        let r = (in_bit % 8) as u32;
        // Deflate packs bits from the low end: the block's first bits are
        // the high `8 - r` of the partial byte.
        let (num_bits, bit_buf) = if r == 0 {
            (0, 0)
        } else {
            ((8 - r) as u8, partial >> r)
        };
        st.d = Box::new(DecompressorOxide::from_block_boundary_state(
            &BlockBoundaryState {
                num_bits,
                bit_buf,
                ..Default::default()
            },
        ));
        st.window[..window.len()].copy_from_slice(window);
        st.window_at = window.len() & (TINFL_LZ_DICT_SIZE - 1);
        st.phase = Phase::Deflate;
        // Mid-member: the stream may end after this member's trailer.
        st.members = 1;
        st.member_out = out - window.len() as u64;
        st.in_pos = in_bit.div_ceil(8);
        st.out_pos = out;
        Some(st)
    }
}

/// Where a deflate block begins, as recorded while indexing: enough for
/// any inflater to resume there (zran's checkpoints).
pub struct BlockStart {
    /// Output produced before the block.
    pub out: u64,
    /// Bit offset of the block's first header bit in the compressed stream.
    pub in_bit: u64,
    /// The output just before `out` that the block may refer back to: at
    /// most 32 KiB, none at a member's start. Plaintext: wiped on drop.
    pub window: Zeroizing<Vec<u8>>,
}

/// What [`GzReader::with_blocks`] records.
struct Blocks {
    /// Least output between two recorded block starts.
    spacing: u64,
    /// Output is produced in calls that stop at multiples of this, and the
    /// input consumed at each is recorded ([`GzReader::piece_ends`]).
    piece: u64,
    points: Vec<BlockStart>,
    /// Most points kept: past it, `spacing` doubles and the points are
    /// thinned to it, so a long stream keeps a bounded number of windows.
    max_points: usize,
    /// The spacing thinning stops at.
    widest: u64,
    /// The last recorded point's output, once points were taken.
    last_out: Option<u64>,
    piece_ends: Vec<u64>,
    /// Whether windows are thinned ([`GzReader::with_sparse_windows`]).
    sparse: bool,
    /// Points kept whose window holds bytes (not thinned to nothing):
    /// what `max_points` bounds.
    windowed: usize,
    /// Whether the last window thinned came out empty (data that copies
    /// nothing from before it): the next point is due after `spacing`,
    /// else after [`DENSE_SPACING`] times that.
    copies_nothing: bool,
    /// Points whose windows wait for the input after them.
    pending: Vec<Pending>,
}

/// Over data whose windows keep bytes, points lie this many times
/// further apart than over data that copies nothing: such a window costs
/// its compressed size, so few of them can be checkpoints, and finding one
/// costs three inflations of 32 KiB.
const DENSE_SPACING: u64 = 8;

/// Most points kept, windows or not (48 bytes each without one).
const MAX_ALL_POINTS: usize = 1 << 16;

impl Blocks {
    /// Thins the window of `p`'s point, if it is still kept.
    /// The point's window waits in its [`Pending`] (not copied): it goes
    /// back whole if it cannot be thinned.
    fn thin(&mut self, p: Pending, reach: usize) {
        let Ok(i) = self.points.binary_search_by_key(&p.out, |q| q.out) else {
            return;
        };
        match p.thinned(reach) {
            Some(w) => {
                self.copies_nothing = w.is_empty();
                if w.is_empty() {
                    self.windowed = self.windowed.saturating_sub(1);
                }
                self.points[i].window = w;
            }
            None => self.points[i].window = p.window,
        }
    }

    /// The pending points `pick` chooses, the others left waiting (no
    /// allocation when it chooses none, as on most calls).
    fn take_pending(&mut self, pick: impl Fn(&Pending) -> bool) -> Vec<Pending> {
        if !self.pending.iter().any(&pick) {
            return Vec::new();
        }
        let (picked, waiting) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|p| pick(p));
        self.pending = waiting;
        picked
    }

    /// A pending point that gathered too much input: its window whole.
    fn keep_whole(&mut self, p: Pending) {
        if let Ok(i) = self.points.binary_search_by_key(&p.out, |q| q.out) {
            self.points[i].window = p.window;
        }
    }

    /// Whether a block start at `out` is due to be a point.
    fn due(&self, out: u64) -> bool {
        let spacing = if self.sparse && !self.copies_nothing {
            self.spacing.saturating_mul(DENSE_SPACING)
        } else {
            self.spacing
        };
        self.last_out
            .is_none_or(|l| out >= l.saturating_add(spacing))
    }
}

/// Inflates a gzip stream, saving a [`State`] each time the output reaches a
/// multiple of `every` bytes (a multiple of 32 KiB), when asked to.
pub struct GzReader<R> {
    inner: R,
    /// Compressed plaintext: wiped on drop.
    input: Zeroizing<Vec<u8>>,
    in_at: usize,
    in_len: usize,
    eof: bool,
    st: State,
    /// Produced bytes not yet handed out: `window[pending.0..pending.1]`.
    pending: (usize, usize),
    every: Option<u64>,
    saved: Vec<State>,
    /// Most states kept: past it, every other one is dropped and `every`
    /// doubles, so a stream that inflates without bound (a decompression
    /// bomb) keeps a bounded number of 32 KiB windows, further apart.
    max_saved: usize,
    blocks: Option<Blocks>,
    /// Output is produced in calls that stop at multiples of this, so the
    /// state can be taken between two of them ([`GzReader::state`]).
    stops: Option<u64>,
}

const INPUT: usize = 256 << 10;

impl<R: Read> GzReader<R> {
    /// Reads from the start of a gzip stream; with `every`, saves states.
    pub fn new(inner: R, every: Option<u64>) -> Self {
        assert!(every.is_none_or(|e| e > 0 && e.is_multiple_of(TINFL_LZ_DICT_SIZE as u64)));
        let mut r = Self::resume(inner, State::start());
        r.every = every;
        if every.is_some() {
            r.saved.push(r.st.clone());
        }
        r
    }

    /// Resumes at a saved state; `inner` must yield the compressed stream
    /// from `state.in_pos` on.
    pub fn resume(inner: R, state: State) -> Self {
        Self::resume_buffered(inner, state, INPUT)
    }

    /// [`GzReader::resume`] reading `input` bytes at a time: a short read
    /// need not allocate, and wipe, a long buffer.
    pub fn resume_buffered(inner: R, state: State, input: usize) -> Self {
        GzReader {
            inner,
            input: Zeroizing::new(vec![0; input.max(64)]),
            in_at: 0,
            in_len: 0,
            eof: false,
            st: state,
            pending: (0, 0),
            every: None,
            saved: Vec::new(),
            max_saved: usize::MAX,
            blocks: None,
            stops: None,
        }
    }

    /// Stops each inflate call at multiples of `every` bytes of output.
    pub fn with_stops(mut self, every: u64) -> Self {
        self.stops = Some(every.max(1));
        self
    }

    /// Its whole state, if no output is waiting to be read: where a later
    /// reader of the output from here on can resume.
    pub fn state(&self) -> Option<State> {
        (self.pending.0 == self.pending.1).then(|| self.st.clone())
    }

    /// Records a [`BlockStart`] at each member's start and at the first
    /// block start at least `spacing` bytes of output after the last one,
    /// and the input consumed at each multiple of `piece` of output (both
    /// powers of two, `piece` at most 32 KiB's multiple).
    pub fn with_blocks(mut self, spacing: u64, piece: u64) -> Self {
        assert!(spacing > 0 && piece > 0);
        self.blocks = Some(Blocks {
            spacing,
            piece,
            points: Vec::new(),
            max_points: usize::MAX,
            widest: u64::MAX,
            last_out: None,
            piece_ends: Vec::new(),
            sparse: false,
            windowed: 0,
            copies_nothing: false,
            pending: Vec::new(),
        });
        self
    }

    /// Keeps in each recorded window only the bytes the output after it
    /// copies from, the rest zero ([`super::sparse`]): the same output, for
    /// a window that compresses to next to nothing where data barely
    /// repeats. Costs three inflations of 32 KiB per point.
    pub fn with_sparse_windows(mut self) -> Self {
        if let Some(b) = self.blocks.as_mut() {
            b.sparse = true;
        }
        self
    }

    /// Keeps at most `n` (at least 2) recorded block starts between two
    /// calls of [`GzReader::take_points`], further apart as the stream goes,
    /// but never more than `widest` apart (past it, more are kept).
    pub fn with_max_points(mut self, n: usize, widest: u64) -> Self {
        if let Some(b) = self.blocks.as_mut() {
            b.max_points = n.max(2);
            b.widest = widest;
        }
        self
    }

    /// The block starts recorded since the last call. Windows still
    /// waiting to be thinned are thinned now if the stream has ended (with
    /// the output there is), else kept whole.
    pub fn take_points(&mut self) -> Vec<BlockStart> {
        let done = matches!(self.st.phase, Phase::Done);
        let out_pos = self.st.out_pos;
        let Some(b) = self.blocks.as_mut() else {
            return Vec::new();
        };
        let pending = std::mem::take(&mut b.pending);
        for p in pending {
            if done {
                let reach = (out_pos - p.out).min(REACH as u64) as usize;
                b.thin(p, reach);
            } else {
                b.keep_whole(p);
            }
        }
        std::mem::take(&mut b.points)
    }

    /// For each whole `piece` of output so far, the compressed bytes
    /// consumed when its last byte was produced.
    pub fn piece_ends(&self) -> &[u64] {
        self.blocks.as_ref().map_or(&[], |b| &b.piece_ends)
    }

    /// Compressed bytes consumed so far.
    pub fn in_pos(&self) -> u64 {
        self.st.in_pos
    }

    /// The last `n` bytes of output, oldest first.
    fn recent(&self, n: usize) -> Zeroizing<Vec<u8>> {
        let mut w = Zeroizing::new(Vec::with_capacity(n));
        let at = self.st.window_at;
        let start = (at + TINFL_LZ_DICT_SIZE - n) & (TINFL_LZ_DICT_SIZE - 1);
        if start < at || n == 0 {
            w.extend_from_slice(&self.st.window[start..at]);
        } else {
            w.extend_from_slice(&self.st.window[start..]);
            w.extend_from_slice(&self.st.window[..at]);
        }
        w
    }

    /// Records the block start the inflater is at, if it is due; `partial`
    /// is byte `floor(in_bit / 8)` of the input.
    fn block_start(&mut self, in_bit: u64, first: bool, partial: u8) {
        let out = self.st.out_pos;
        let since_member = (out - self.st.member_out).min(TINFL_LZ_DICT_SIZE as u64) as usize;
        let Some(b) = self.blocks.as_ref() else {
            return;
        };
        let due = (first && out == 0) || b.due(out);
        if due {
            let window = self.recent(since_member);
            let Some(b) = self.blocks.as_mut() else {
                return;
            };
            b.last_out = Some(out);
            b.windowed += usize::from(!window.is_empty());
            let window = if b.sparse && !window.is_empty() {
                b.pending.push(Pending {
                    out,
                    in_bit,
                    partial,
                    window,
                    // What stored blocks take for the output it waits for:
                    // grown and wiped only past that.
                    input: SecretBuf::with_capacity(REACH + MARGIN as usize + (4 << 10)),
                });
                // Until thinned, the window is the pending point's.
                Zeroizing::new(Vec::new())
            } else {
                window
            };
            b.points.push(BlockStart {
                out,
                in_bit,
                window,
            });
            if (b.windowed > b.max_points || b.points.len() > MAX_ALL_POINTS)
                && b.spacing.saturating_mul(2) <= b.widest
            {
                b.spacing *= 2;
                let mut last: Option<u64> = None;
                b.points.retain(|p| {
                    let keep = last.is_none_or(|l| p.out >= l + b.spacing);
                    if keep {
                        last = Some(p.out);
                    }
                    keep
                });
                b.windowed =
                    b.points.iter().filter(|p| !p.window.is_empty()).count() + b.pending.len();
                b.last_out = last;
            }
        }
    }

    /// Keeps at most `n` (at least 2) saved states; see [`GzReader::thin`].
    pub fn with_max_saved(mut self, n: usize) -> Self {
        self.max_saved = n.max(2);
        self
    }

    /// The spacing of the saved states now, if states are saved.
    pub fn every(&self) -> Option<u64> {
        self.every
    }

    /// Halves the saved states: keeps those on multiples of twice the
    /// spacing (the start among them), which becomes the spacing.
    fn thin(&mut self) {
        let Some(every) = self.every else { return };
        let wider = every * 2;
        self.saved.retain(|s| s.out_pos.is_multiple_of(wider));
        self.every = Some(wider);
    }

    /// The states saved so far; the first is the start.
    pub fn take_saved(&mut self) -> Vec<State> {
        std::mem::take(&mut self.saved)
    }

    fn refill(&mut self) -> io::Result<()> {
        if self.in_at < self.in_len || self.eof {
            return Ok(());
        }
        self.in_at = 0;
        self.in_len = self.inner.read(&mut self.input)?;
        self.eof = self.in_len == 0;
        Ok(())
    }

    fn consume(&mut self, n: usize) {
        if let Some(b) = self.blocks.as_mut()
            && !b.pending.is_empty()
        {
            for p in &mut b.pending {
                p.input
                    .extend_from_slice(&self.input[self.in_at..self.in_at + n]);
            }
            for p in b.take_pending(|p| p.input.len() > MAX_INPUT) {
                b.keep_whole(p);
            }
            // Windows behind stored blocks are thinned (to nothing) as soon
            // as their headers are in, rather than gathering the input
            // for three inflations that would find nothing.
            for p in b.take_pending(|p| p.stored_verdict(REACH) == Some(true)) {
                b.thin(p, REACH);
            }
        }
        self.in_at += n;
        self.st.in_pos += n as u64;
    }

    /// Makes progress: parses framing or produces output into the window.
    fn step(&mut self) -> io::Result<()> {
        self.refill()?;
        let avail = &self.input[self.in_at..self.in_len];
        match self.st.phase {
            Phase::Done => Ok(()),
            Phase::Header => {
                if avail.is_empty() {
                    if self.st.members > 0 && self.st.header.is_empty() {
                        self.st.phase = Phase::Done;
                        return Ok(());
                    }
                    return Err(bad("the gzip stream is truncated in a member header"));
                }
                let take = avail.len().min(64 << 10);
                let before = self.st.header.len();
                self.st.header.extend_from_slice(&avail[..take]);
                match header_len(&self.st.header)? {
                    Some(n) => {
                        self.consume(n - before);
                        self.st.header.clear();
                        *self.st.d = DecompressorOxide::new();
                        self.st.phase = Phase::Deflate;
                        self.st.member_out = self.st.out_pos;
                        let first = self.st.members == 0;
                        self.block_start(self.st.in_pos * 8, first, 0);
                    }
                    None => {
                        if self.st.header.len() as u64 > MAX_HEADER {
                            return Err(bad(&format!(
                                "member header is over the {MAX_HEADER}-byte limit"
                            )));
                        }
                        self.consume(take);
                    }
                }
                Ok(())
            }
            Phase::Trailer(left) => {
                if avail.is_empty() {
                    return Err(bad("the gzip stream is truncated in a member trailer"));
                }
                let n = avail.len().min(usize::from(left));
                self.consume(n);
                let left = left - n as u8;
                self.st.phase = if left == 0 {
                    self.st.members += 1;
                    Phase::Header
                } else {
                    Phase::Trailer(left)
                };
                Ok(())
            }
            Phase::Deflate => {
                let mut flags = if self.eof {
                    0
                } else {
                    TINFL_FLAG_HAS_MORE_INPUT
                };
                let mut limit = usize::MAX;
                if let Some(b) = &self.blocks {
                    flags |= TINFL_FLAG_STOP_ON_BLOCK_BOUNDARY;
                    limit = (b.piece - self.st.out_pos % b.piece) as usize;
                }
                if let Some(p) = self.stops {
                    limit = limit.min((p - self.st.out_pos % p) as usize);
                }
                let at = self.st.window_at;
                let (status, used, made) = decompress_with_limit(
                    &mut self.st.d,
                    avail,
                    &mut self.st.window[..],
                    at,
                    limit,
                    flags,
                );
                self.consume(used);
                self.pending = (at, at + made);
                self.st.window_at = (at + made) & (TINFL_LZ_DICT_SIZE - 1);
                self.st.out_pos += made as u64;
                if let Some(b) = self.blocks.as_mut()
                    && made > 0
                {
                    if self.st.out_pos.is_multiple_of(b.piece) {
                        b.piece_ends.push(self.st.in_pos);
                    }
                    let out_pos = self.st.out_pos;
                    for p in b.take_pending(|p| p.ready(out_pos)) {
                        b.thin(p, REACH);
                    }
                }
                match status {
                    TINFLStatus::Done => self.st.phase = Phase::Trailer(8),
                    TINFLStatus::NeedsMoreInput | TINFLStatus::FailedCannotMakeProgress
                        if self.eof =>
                    {
                        return Err(bad("the gzip stream is truncated"));
                    }
                    TINFLStatus::NeedsMoreInput | TINFLStatus::HasMoreOutput => {}
                    TINFLStatus::BlockBoundary => {
                        let (bits, buf) = self
                            .st
                            .d
                            .block_boundary_state()
                            .map_or((0, 0), |s| (s.num_bits, s.bit_buf));
                        let in_bit = self.st.in_pos * 8 - u64::from(bits);
                        // The block's first bits are the high ones of the
                        // last byte consumed.
                        let partial = if bits == 0 { 0 } else { buf << (8 - bits) };
                        self.block_start(in_bit, false, partial);
                    }
                    other => return Err(bad(&format!("invalid deflate data ({other:?})"))),
                }
                if made > 0
                    && let Some(every) = self.every
                    && self.st.out_pos.is_multiple_of(every)
                {
                    self.saved.push(self.st.clone());
                    if self.saved.len() > self.max_saved {
                        self.thin();
                    }
                }
                Ok(())
            }
        }
    }
}

impl<R: Read> Read for GzReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        loop {
            let (a, b) = self.pending;
            if a < b {
                let n = out.len().min(b - a);
                out[..n].copy_from_slice(&self.st.window[a..a + n]);
                self.pending.0 += n;
                return Ok(n);
            }
            if self.st.phase == Phase::Done || out.is_empty() {
                return Ok(0);
            }
            self.step()?;
        }
    }
}

/// The length of a complete gzip member header at the start of `h`, or
/// `None` if more bytes are needed.
fn header_len(h: &[u8]) -> io::Result<Option<usize>> {
    if h.len() < 10 {
        return Ok(None);
    }
    if h[0] != 0x1f || h[1] != 0x8b || h[2] != 8 {
        return Err(bad("not a gzip member (bad magic or method)"));
    }
    let flags = h[3];
    let mut at = 10;
    if flags & 4 != 0 {
        if h.len() < at + 2 {
            return Ok(None);
        }
        at += 2 + usize::from(u16::from_le_bytes([h[at], h[at + 1]]));
    }
    for bit in [8u8, 16] {
        if flags & bit != 0 {
            match h.get(at..).and_then(|r| r.iter().position(|&b| b == 0)) {
                Some(z) => at += z + 1,
                None => return Ok(None),
            }
        }
    }
    if flags & 2 != 0 {
        at += 2;
    }
    Ok((h.len() >= at).then_some(at))
}

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("gzip: {msg}"))
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::layer::testing::text;

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn resumes_from_every_saved_state() {
        let every = 64 << 10;
        let plain = text(1_000_000);
        // Two members, as eStargz and pigz write them.
        let mut z = gz(&plain[..300_000]);
        z.extend(gz(&plain[300_000..]));
        let mut r = GzReader::new(&z[..], Some(every));
        let mut all = Vec::new();
        r.read_to_end(&mut all).unwrap();
        assert_eq!(all, plain);
        let saved = r.take_saved();
        assert_eq!(saved.len(), (plain.len() as u64).div_ceil(every) as usize);
        for (k, s) in saved.into_iter().enumerate() {
            assert_eq!(s.out_pos, k as u64 * every);
            let from = s.in_pos as usize;
            let mut part = vec![0; 5000];
            GzReader::resume(&z[from..], s)
                .read_exact(&mut part)
                .unwrap();
            let at = k * every as usize;
            assert_eq!(part, plain[at..at + 5000], "state {k}");
        }
    }

    /// Block starts recorded on the way resume anywhere, mid-byte or not,
    /// across members, from their window alone; pieces' input ends are
    /// enough to produce them.
    /// Thinned windows give the very output the whole ones do, from every
    /// point to the end of the stream, across members; over data that
    /// barely repeats they are almost all zeros.
    #[test]
    fn sparse_windows_resume_to_the_same_output() {
        let mut plain = crate::layer::testing::noise(1_500_000);
        plain.extend(text(1_000_000));
        // Some repeats of the noise, far and near.
        let again = plain[100_000..140_000].to_vec();
        plain.extend(&again);
        plain.extend(crate::layer::testing::noise(300_000));
        let mut z = gz(&plain[..2_000_000]);
        z.extend(gz(&plain[2_000_000..]));
        let mut r = GzReader::new(&z[..], None)
            .with_blocks(64 << 10, 64 << 10)
            .with_sparse_windows();
        let mut all = Vec::new();
        r.read_to_end(&mut all).unwrap();
        assert!(all == plain);
        let points = r.take_points();
        // Over the noise every 64 KiB; over the text eight times further.
        assert!((16..40).contains(&points.len()), "{}", points.len());
        let mut thin = 0;
        for (i, p) in points.iter().enumerate() {
            let from = p.in_bit.div_ceil(8) as usize;
            let partial = z[(p.in_bit / 8) as usize];
            let st = State::at_block(p.in_bit, partial, p.out, &p.window).unwrap();
            let mut got = Vec::new();
            GzReader::resume(&z[from..], st)
                .read_to_end(&mut got)
                .unwrap_or_else(|e| panic!("point {i}: {e}"));
            assert!(got[..] == plain[p.out as usize..], "point {i} at {}", p.out);
            // Over the noise (a member's first block aside) nothing is
            // copied: no window at all.
            if (1..1_400_000).contains(&p.out) && p.window.is_empty() {
                thin += 1;
            }
        }
        assert!(thin > 10, "{thin} windows over noise were thinned away");
    }

    /// A stream that goes on without output (empty stored blocks) after a
    /// block start keeps that window whole instead of gathering its input
    /// without bound (with no bound, it gathered 6 MB here and thinned the
    /// window to nothing).
    #[test]
    fn a_window_whose_input_never_ends_stays_whole() {
        let plain = crate::layer::testing::noise(240_000);
        let stored = |out: &mut Vec<u8>, data: &[u8], last: bool| {
            out.push(u8::from(last));
            out.extend_from_slice(&(data.len() as u16).to_le_bytes());
            out.extend_from_slice(&(!(data.len() as u16)).to_le_bytes());
            out.extend_from_slice(data);
        };
        let mut z = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
        stored(&mut z, &plain[..60_000], false);
        stored(&mut z, &plain[60_000..120_000], false);
        for _ in 0..1_200_000 {
            stored(&mut z, &[], false);
        }
        stored(&mut z, &plain[120_000..180_000], false);
        stored(&mut z, &plain[180_000..], true);
        let mut crc = flate2::Crc::new();
        crc.update(&plain);
        z.extend_from_slice(&crc.sum().to_le_bytes());
        z.extend_from_slice(&(plain.len() as u32).to_le_bytes());
        let mut r = GzReader::new(&z[..], None)
            .with_blocks(1, 64 << 10)
            .with_sparse_windows();
        let mut all = Vec::new();
        r.read_to_end(&mut all).unwrap();
        assert!(all == plain);
        let points = r.take_points();
        let p = points.iter().find(|p| p.out == 120_000).unwrap();
        let set = p.window.iter().filter(|&&b| b != 0).count();
        assert!(set > 30_000, "{set} bytes of its window kept");
        // Stored blocks copy nothing: the one after the noise is thinned.
        let q = points.iter().find(|p| p.out == 180_000).unwrap();
        assert!(q.window.iter().all(|&b| b == 0));
    }

    #[test]
    fn resumes_at_every_recorded_block_start() {
        let plain = text(3_000_000);
        let mut z = gz(&plain[..1_000_000]);
        z.extend(gz(&plain[1_000_000..]));
        let piece = 64 << 10;
        let mut r = GzReader::new(&z[..], None).with_blocks(200 << 10, piece);
        let mut all = Vec::new();
        let mut points = Vec::new();
        let mut buf = vec![0; 10_000];
        loop {
            let n = r.read(&mut buf).unwrap();
            points.extend(r.take_points());
            if n == 0 {
                break;
            }
            all.extend_from_slice(&buf[..n]);
        }
        assert_eq!(all, plain);
        assert!(points.len() > 5, "{}", points.len());
        assert_eq!((points[0].out, points[0].window.len()), (0, 0));
        assert!(points.iter().any(|p| p.in_bit % 8 != 0));
        // The second member's start: no history.
        assert!(
            points
                .iter()
                .any(|p| p.out == 1_000_000 && p.window.is_empty())
        );
        let ends = r.piece_ends().to_vec();
        assert_eq!(ends.len(), plain.len() / piece as usize);
        for (i, p) in points.iter().enumerate() {
            let from = p.in_bit.div_ceil(8) as usize;
            let partial = z[(p.in_bit / 8) as usize];
            let st = State::at_block(p.in_bit, partial, p.out, &p.window).unwrap();
            // Only the input up to the next piece's end.
            let k = (p.out / piece) as usize;
            let to = ends.get(k).map_or(z.len(), |&e| e as usize);
            let want = ((k as u64 + 1) * piece - p.out) as usize;
            let want = want.min(plain.len() - p.out as usize);
            let mut got = vec![0; want];
            GzReader::resume(&z[from..to], st)
                .read_exact(&mut got)
                .unwrap_or_else(|e| panic!("point {i}: {e}"));
            let at = p.out as usize;
            assert!(got == plain[at..at + want], "point {i}");
        }
    }

    /// A member header whose file name never ends is refused at the limit,
    /// not buffered to the end of the stream.
    #[test]
    fn a_header_of_endless_name_is_refused_at_the_limit() {
        let mut z = vec![0x1f, 0x8b, 8, 0x08, 0, 0, 0, 0, 0, 0xff];
        z.resize(3 << 20, b'n');
        let e = GzReader::new(&z[..], None)
            .read_to_end(&mut Vec::new())
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("gzip: member header is over the {MAX_HEADER}-byte limit")
        );
    }

    /// Block starts past the most kept are thinned, each doubling of the
    /// spacing keeping the first and those far enough apart; every one kept
    /// still resumes right.
    #[test]
    fn a_long_stream_keeps_few_block_starts_further_apart() {
        let plain = text(2_000_000);
        let z = gz(&plain);
        let mut r = GzReader::new(&z[..], None)
            .with_blocks(16 << 10, 16 << 10)
            .with_max_points(4, u64::MAX);
        io::copy(&mut r, &mut io::sink()).unwrap();
        let points = r.take_points();
        assert!((2..=4).contains(&points.len()), "{}", points.len());
        assert_eq!(points[0].out, 0);
        let gaps: Vec<u64> = points.windows(2).map(|w| w[1].out - w[0].out).collect();
        assert!(gaps.iter().all(|&g| g >= 128 << 10), "{gaps:?}");
        for p in &points {
            let partial = z[(p.in_bit / 8) as usize];
            let st = State::at_block(p.in_bit, partial, p.out, &p.window).unwrap();
            let mut got = vec![0; 1000];
            GzReader::resume(&z[p.in_bit.div_ceil(8) as usize..], st)
                .read_exact(&mut got)
                .unwrap();
            assert!(got[..] == plain[p.out as usize..][..1000]);
        }
        // Never further apart than told: past it, more are kept (a layer
        // of 64 GiB kept its candidates more than 64 MiB apart otherwise).
        let mut r = GzReader::new(&z[..], None)
            .with_blocks(16 << 10, 16 << 10)
            .with_max_points(4, 32 << 10);
        io::copy(&mut r, &mut io::sink()).unwrap();
        let capped = r.take_points().len();
        let mut r = GzReader::new(&z[..], None).with_blocks(16 << 10, 16 << 10);
        io::copy(&mut r, &mut io::sink()).unwrap();
        // Its blocks are further apart than that: every one is kept.
        assert_eq!(capped, r.take_points().len());
        assert!(capped > 4, "{capped}");
    }

    #[test]
    fn a_long_stream_keeps_few_states_further_apart() {
        let every = 32 << 10;
        let plain = text(2_000_000);
        let z = gz(&plain);
        let mut r = GzReader::new(&z[..], Some(every)).with_max_saved(5);
        io::copy(&mut r, &mut io::sink()).unwrap();
        let wider = r.every().unwrap();
        let saved = r.take_saved();
        assert_eq!((wider, saved.len()), (512 << 10, 4));
        for s in saved {
            let at = s.out_pos as usize;
            assert!(at.is_multiple_of(wider as usize));
            let mut part = vec![0; 5000];
            GzReader::resume(&z[s.in_pos as usize..], s)
                .read_exact(&mut part)
                .unwrap();
            assert_eq!(part, plain[at..at + 5000]);
        }
    }

    #[test]
    fn truncated_and_corrupt_streams_fail() {
        let z = gz(&text(100_000));
        let mut out = Vec::new();
        let e = GzReader::new(&z[..z.len() - 20], None)
            .read_to_end(&mut out)
            .unwrap_err();
        assert!(e.to_string().contains("truncated"), "{e}");
        let mut bad = z.clone();
        bad[0] = 0;
        let e = GzReader::new(&bad[..], None)
            .read_to_end(&mut out)
            .unwrap_err();
        assert!(e.to_string().contains("not a gzip member"), "{e}");
    }
}

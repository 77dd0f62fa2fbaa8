//! A gzip reader whose whole state can be saved at any 1 MiB boundary of its
//! output and resumed later from the same compressed offset, zran-style: the
//! saved state is the inflater's tables and bit buffer plus its 32 KiB window.
//! Multi-member streams (what `pigz` and eStargz write) read as one.

use std::io::{self, Read};

use miniz_oxide::inflate::TINFLStatus;
use miniz_oxide::inflate::core::inflate_flags::TINFL_FLAG_HAS_MORE_INPUT;
use miniz_oxide::inflate::core::{DecompressorOxide, TINFL_LZ_DICT_SIZE, decompress};
use zeroize::{Zeroize, Zeroizing};

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
            in_pos: 0,
            out_pos: 0,
        }
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
        GzReader {
            inner,
            input: Zeroizing::new(vec![0; INPUT]),
            in_at: 0,
            in_len: 0,
            eof: false,
            st: state,
            pending: (0, 0),
            every: None,
            saved: Vec::new(),
            max_saved: usize::MAX,
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
                let flags = if self.eof {
                    0
                } else {
                    TINFL_FLAG_HAS_MORE_INPUT
                };
                let at = self.st.window_at;
                let (status, used, made) =
                    decompress(&mut self.st.d, avail, &mut self.st.window[..], at, flags);
                self.consume(used);
                self.pending = (at, at + made);
                self.st.window_at = (at + made) & (TINFL_LZ_DICT_SIZE - 1);
                self.st.out_pos += made as u64;
                match status {
                    TINFLStatus::Done => self.st.phase = Phase::Trailer(8),
                    TINFLStatus::NeedsMoreInput | TINFLStatus::FailedCannotMakeProgress
                        if self.eof =>
                    {
                        return Err(bad("the gzip stream is truncated"));
                    }
                    TINFLStatus::NeedsMoreInput | TINFLStatus::HasMoreOutput => {}
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

    fn text(n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n);
        let mut i = 0u64;
        while v.len() < n {
            writeln!(v, "line {i} of some compressible text {}", i * 7919 % 1000).unwrap();
            i += 1;
        }
        v.truncate(n);
        v
    }

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

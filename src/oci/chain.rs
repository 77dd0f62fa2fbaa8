//! SHA-256 chaining values: the digest of a stream, with the hash's
//! internal state kept at every `span` bytes, so any one span can later be
//! checked on its own (run the compression function from the value before
//! it and compare with the value after it) while the stream is hashed only
//! once. A seek index's span digests are these (docs/seek-index.md §5.2):
//! the pass that checks a blob's digest makes them for free.

use sha2::digest::block_buffer::{BlockBuffer, Eager};
use sha2::digest::typenum::U64;

/// SHA-256's initial state (FIPS 180-4 §5.3.3): the value before span 0.
const IV: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];

/// One chaining value, encoded as a digest is (big-endian words).
pub type Value = [u8; 32];

/// Hashes a stream, keeping the chaining value after every whole `span`
/// bytes but the last; the last value is the stream's SHA-256.
pub struct Chain {
    span: u64,
    state: [u32; 8],
    buf: BlockBuffer<U64, Eager>,
    len: u64,
    values: Vec<Value>,
    digest: Option<Value>,
}

impl Chain {
    /// Values every `span` bytes (a power of two, at least one 64-byte
    /// block: smaller ones are raised to it).
    pub fn new(span: u32) -> Self {
        Chain {
            span: u64::from(span.max(64).next_power_of_two()),
            state: IV,
            buf: BlockBuffer::default(),
            len: 0,
            values: Vec::new(),
            digest: None,
        }
    }

    pub fn update(&mut self, mut data: &[u8]) {
        debug_assert!(self.digest.is_none(), "update after finish");
        while !data.is_empty() {
            let take = ((self.span - self.len % self.span) as usize).min(data.len());
            let state = &mut self.state;
            self.buf
                .digest_blocks(&data[..take], |blocks| sha2::compress256(state, blocks));
            self.len += take as u64;
            data = &data[take..];
            if self.len.is_multiple_of(self.span) {
                // A span boundary is a block boundary: nothing is buffered.
                self.values.push(encode(&self.state));
            }
        }
    }

    /// The stream's SHA-256 (it ends here; later calls return the same).
    pub fn finish(&mut self) -> Value {
        if let Some(d) = self.digest {
            return d;
        }
        if self.len > 0 && self.len.is_multiple_of(self.span) {
            // The last span's value is the digest, not its raw state.
            self.values.pop();
        }
        let mut state = self.state;
        self.buf.len64_padding_be(self.len * 8, |b| {
            sha2::compress256(&mut state, std::slice::from_ref(b))
        });
        let d = encode(&state);
        if self.len > 0 {
            self.values.push(d);
        }
        self.digest = Some(d);
        d
    }

    /// Every span's value (`ceil(len / span)` of them, the last the
    /// stream's SHA-256; none for an empty stream) and the stream's length;
    /// finishes it.
    pub fn values(&mut self) -> (Vec<Value>, u64) {
        self.finish();
        (std::mem::take(&mut self.values), self.len)
    }
}

/// The value after a whole span whose bytes are `bytes` (a multiple of 64
/// long), starting from `before` (`None`: the stream's start).
pub fn step(before: Option<&Value>, bytes: &[u8]) -> Option<Value> {
    if !bytes.len().is_multiple_of(64) {
        return None;
    }
    let mut state = before.map_or(IV, decode);
    let mut buf = BlockBuffer::<U64, Eager>::default();
    buf.digest_blocks(bytes, |b| sha2::compress256(&mut state, b));
    Some(encode(&state))
}

/// The SHA-256 of a stream of `total` bytes whose last span is `bytes`,
/// starting from `before` (`None`: it is the only span).
pub fn last(before: Option<&Value>, bytes: &[u8], total: u64) -> Value {
    let mut state = before.map_or(IV, decode);
    let mut buf = BlockBuffer::<U64, Eager>::default();
    buf.digest_blocks(bytes, |b| sha2::compress256(&mut state, b));
    buf.len64_padding_be(total.wrapping_mul(8), |b| {
        sha2::compress256(&mut state, std::slice::from_ref(b))
    });
    encode(&state)
}

fn encode(state: &[u32; 8]) -> Value {
    let mut out = [0u8; 32];
    for (o, w) in out.chunks_exact_mut(4).zip(state) {
        o.copy_from_slice(&w.to_be_bytes());
    }
    out
}

fn decode(v: &Value) -> [u32; 8] {
    let mut s = [0u32; 8];
    for (w, b) in s.iter_mut().zip(v.chunks_exact(4)) {
        *w = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    }
    s
}

#[cfg(test)]
mod tests {
    use sha2::{Digest as _, Sha256};

    use super::*;

    fn bytes(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    /// Every span checks on its own, the last value is the stream's
    /// SHA-256, and a changed byte fails its span, whatever the length
    /// (none, less than a block, a span's multiple, one byte past it).
    #[test]
    fn spans_check_alone_and_end_in_the_digest() {
        let span = 256usize;
        for n in [0, 1, 63, 64, 255, 256, 257, 1024, 1000, 1025] {
            let data = bytes(n);
            let mut c = Chain::new(span as u32);
            // Fed in uneven pieces: values cannot depend on them.
            for piece in data.chunks(37) {
                c.update(piece);
            }
            let (values, len) = c.values();
            assert_eq!(len, n as u64);
            assert_eq!(values.len(), n.div_ceil(span), "{n}");
            let want: Value = Sha256::digest(&data).into();
            assert_eq!(c.finish(), want, "{n}");
            if n > 0 {
                assert_eq!(values.last(), Some(&want), "{n}");
            }
            let spans: Vec<&[u8]> = data.chunks(span).collect();
            for (i, s) in spans.iter().enumerate() {
                let before = i.checked_sub(1).map(|j| &values[j]);
                let check = |s: &[u8]| {
                    if i + 1 < spans.len() {
                        step(before, s) == Some(values[i])
                    } else {
                        last(before, s, n as u64) == values[i]
                    }
                };
                assert!(check(s), "{n} {i}");
                let mut bad = s.to_vec();
                bad[s.len() / 2] ^= 1;
                assert!(!check(&bad), "{n} {i}");
            }
        }
    }

    #[test]
    fn a_step_needs_whole_blocks() {
        assert_eq!(step(None, &[0; 65]), None);
        assert!(step(None, &[0; 128]).is_some());
    }
}

//! Sparse windows: a checkpoint's 32 KiB window keeps only the bytes the
//! output after it copies from, the rest zero. An inflater resumed with it
//! produces exactly the same output (the bytes it never copies cannot show),
//! and zeros cost next to nothing once the window is compressed: data that
//! barely repeats (compressed files, weights, binaries) refers back to a few
//! hundred of its 32768 bytes, so its checkpoints stop costing 32 KiB each.

use std::io::Read;

use zeroize::Zeroizing;

use super::gzip::{GzReader, State};
use crate::crypto::wipe::SecretBuf;

/// Output after a block start that can still refer into its window.
pub const REACH: usize = 32 << 10;

/// Output past [`REACH`] produced before a pending window is thinned, so the
/// compressed bytes gathered hold all the first `REACH` needs.
pub const MARGIN: u64 = 32 << 10;

/// Most stored block headers [`Pending::stored_verdict`] reads.
const MAX_STORED_BLOCKS: usize = 16;

/// Most compressed bytes gathered for one window: a stream that produces
/// its next 64 KiB from more (empty stored blocks, say) keeps that window
/// whole rather than memory without bound.
pub const MAX_INPUT: usize = 4 << 20;

/// A block start whose window waits for the compressed bytes after it.
pub struct Pending {
    pub out: u64,
    pub in_bit: u64,
    /// Byte `floor(in_bit / 8)` of the compressed stream.
    pub partial: u8,
    pub window: Zeroizing<Vec<u8>>,
    /// Compressed bytes from `ceil(in_bit / 8)` on (plaintext: a buffer that
    /// wipes what it leaves behind as it grows).
    pub input: SecretBuf,
}

impl Pending {
    /// Whether the output so far (`out_pos`) lets the window be thinned.
    pub fn ready(&self, out_pos: u64) -> bool {
        out_pos >= self.out + REACH as u64 + MARGIN
    }

    /// The window with only the bytes the next `REACH` bytes of output copy
    /// from (`reach`: the output there is, if the stream ends sooner), or
    /// `None` if the gathered input does not produce that much. Empty if
    /// that output copies nothing from it: the block needs no history, as
    /// a gzip member's first does not.
    ///
    /// Three inflations tell them: with each window byte replaced by the low
    /// byte of its position, by that byte inverted, and by the high byte of
    /// its position. A literal comes out the same in all three; a byte copied
    /// from the window (directly or through earlier output) differs between
    /// the first two and names its position in the first and third.
    pub fn thinned(&self, reach: usize) -> Option<Zeroizing<Vec<u8>>> {
        if self.stored_past(reach) {
            // What the inflations would find, without them: most block
            // starts over data that does not compress are these.
            return Some(Zeroizing::new(Vec::new()));
        }
        self.inflated_thin(reach)
    }

    /// Whether the blocks starting here are stored and hold at least
    /// `reach` bytes before any other kind of block: their output is
    /// literal, and what follows lies too far on to copy from the window
    /// (RFC 1951 §3.2.4). Zlib's faster levels store incompressible data
    /// in blocks of about 16 KiB, so several are followed.
    fn stored_past(&self, reach: usize) -> bool {
        self.stored_verdict(reach) == Some(true)
    }

    /// [`Pending::stored_past`] as soon as the input gathered tells: `None`
    /// while the block headers it needs are still to come.
    pub fn stored_verdict(&self, reach: usize) -> Option<bool> {
        let shift = (self.in_bit % 8) as usize;
        // Byte `k` of the stream from `floor(in_bit / 8)`: `partial` when
        // the block starts inside it (else `partial` is not that byte),
        // then `input`, which starts at `ceil(in_bit / 8)`.
        let byte = |k: usize| -> Option<u16> {
            match (shift, k) {
                (0, k) => self.input.get(k).copied(),
                (_, 0) => Some(self.partial),
                (_, k) => self.input.get(k - 1).copied(),
            }
            .map(u16::from)
        };
        let word = |k: usize| byte(k).zip(byte(k + 1)).map(|(a, b)| a | b << 8);
        // The next block header's byte and bit.
        let (mut at, mut bit) = (0usize, shift);
        let mut stored = 0usize;
        for _ in 0..MAX_STORED_BLOCKS {
            if stored >= reach {
                return Some(true);
            }
            let head = word(at)?;
            if (head >> (bit + 1)) & 3 != 0 {
                return Some(false);
            }
            // LEN and NLEN follow the header's three bits, byte-aligned.
            let k = at + (bit + 3).div_ceil(8);
            let (len, nlen) = (word(k)?, word(k + 2)?);
            if nlen != !len {
                return Some(false);
            }
            stored += usize::from(len);
            if (head >> bit) & 1 == 1 {
                // The member's last block: the next member starts afresh.
                return Some(true);
            }
            (at, bit) = (k + 4 + usize::from(len), 0);
        }
        // Blocks this short (empty ones, say) are left to the inflations:
        // the verdict is asked again as input arrives, so its work is
        // bounded.
        Some(stored >= reach)
    }

    /// [`Pending::thinned`] found by inflating.
    fn inflated_thin(&self, reach: usize) -> Option<Zeroizing<Vec<u8>>> {
        let w = self.window.len();
        let run = |window: &[u8]| -> Option<Zeroizing<Vec<u8>>> {
            let st = State::at_block(self.in_bit, self.partial, self.out, window)?;
            let mut r = GzReader::resume_buffered(&self.input[..], st, 16 << 10);
            let mut out = Zeroizing::new(vec![0u8; reach]);
            let mut n = 0;
            while n < reach {
                match r.read(&mut out[n..]) {
                    Ok(0) | Err(_) => break,
                    Ok(k) => n += k,
                }
            }
            (n == reach).then_some(out)
        };
        let low: Vec<u8> = (0..w).map(|k| k as u8).collect();
        let inverted: Vec<u8> = low.iter().map(|b| !b).collect();
        let high: Vec<u8> = (0..w).map(|k| (k >> 8) as u8).collect();
        let (a, b, c) = (run(&low)?, run(&inverted)?, run(&high)?);
        let mut thin = Zeroizing::new(vec![0u8; w]);
        let mut copied = false;
        for i in 0..reach {
            if a[i] != b[i] {
                let k = usize::from(a[i]) | usize::from(c[i]) << 8;
                *thin.get_mut(k)? = self.window[k];
                copied = true;
            }
        }
        // Not "all zeros": a copied byte may be zero.
        Some(if copied {
            thin
        } else {
            Zeroizing::new(Vec::new())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(in_bit: u64, partial: u8, input: &[u8]) -> Pending {
        let mut buf = SecretBuf::default();
        buf.extend_from_slice(input);
        Pending {
            out: 1 << 20,
            in_bit,
            partial,
            window: Zeroizing::new((0..REACH).map(|k| k as u8 | 1).collect()),
            input: buf,
        }
    }

    /// A stored block's header found at any bit offset, and only one long
    /// enough with a matching NLEN: the window it gives is all zeros.
    #[test]
    fn a_long_stored_block_needs_no_window() {
        let len = |n: u16| [n.to_le_bytes(), (!n).to_le_bytes()].concat();
        // At a byte boundary the header is `input[0]`; `partial` is not
        // that byte (the inflater passes 0).
        let mut at0 = vec![0u8];
        at0.extend(len(40_000));
        assert!(pending(8 * 100, 0, &at0).stored_past(REACH));
        // A fixed-Huffman block there whose next bytes happen to look like
        // LEN and NLEN is no stored block (it was once read from `partial`).
        let mut fixed = vec![0b0000_0010u8];
        fixed.extend(len(40_000));
        assert!(!pending(8 * 100, 0, &fixed).stored_past(REACH));
        // Five bits in: the header ends in the same byte.
        assert!(pending(8 * 100 + 5, 0b0001_1111, &len(40_000)).stored_past(REACH));
        // Six bits in: BTYPE's high bit is bit 0 of the next byte.
        let mut at6 = vec![0u8];
        at6.extend(len(40_000));
        assert!(pending(8 * 100 + 6, 0b0011_1111, &at6).stored_past(REACH));
        let thin = pending(8 * 100 + 6, 0b0011_1111, &at6)
            .thinned(REACH)
            .unwrap();
        assert!(thin.is_empty());
        // Three stored blocks of 12,000 bytes, the next ones byte-aligned;
        // two are not enough, nor two and then a compressed block.
        let mut three = vec![0u8];
        for _ in 0..3 {
            three.extend(len(12_000));
            three.extend(vec![0xa5; 12_000]);
            three.push(0);
        }
        assert!(pending(8 * 100 + 6, 0b0011_1111, &three).stored_past(REACH));
        let two = &three[..2 * 12_005];
        assert!(!pending(8 * 100 + 6, 0b0011_1111, two).stored_past(REACH));
        let mut then_compressed = three.clone();
        then_compressed[2 * 12_005] = 0b0000_0100;
        assert!(!pending(8 * 100 + 6, 0b0011_1111, &then_compressed).stored_past(REACH));
        // A member's last block ends what could copy from the window.
        let mut last = three.clone();
        last[12_005] = 0b0000_0001;
        assert!(pending(8 * 100 + 6, 0b0011_1111, &last).stored_past(REACH));
        // Too short, NLEN wrong, compressed (BTYPE 1 or 2), or cut off.
        assert!(!pending(8 * 100 + 5, 0b0001_1111, &len(1000)).stored_past(REACH));
        let mut wrong = len(40_000);
        wrong[3] ^= 1;
        assert!(!pending(8 * 100 + 5, 0b0001_1111, &wrong).stored_past(REACH));
        assert!(!pending(8 * 100 + 5, 0b1001_1111, &len(40_000)).stored_past(REACH));
        assert!(!pending(8 * 100 + 5, 0b0101_1111, &len(40_000)).stored_past(REACH));
        assert!(!pending(8 * 100 + 5, 0b0001_1111, &len(40_000)[..3]).stored_past(REACH));
    }
}

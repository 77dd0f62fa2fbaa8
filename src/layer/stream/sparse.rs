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
    /// `None` if the gathered input does not produce that much.
    ///
    /// Three inflations tell them: with each window byte replaced by the low
    /// byte of its position, by that byte inverted, and by the high byte of
    /// its position. A literal comes out the same in all three; a byte copied
    /// from the window (directly or through earlier output) differs between
    /// the first two and names its position in the first and third.
    pub fn thinned(&self, reach: usize) -> Option<Zeroizing<Vec<u8>>> {
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
        for i in 0..reach {
            if a[i] != b[i] {
                let k = usize::from(a[i]) | usize::from(c[i]) << 8;
                *thin.get_mut(k)? = self.window[k];
            }
        }
        Some(thin)
    }
}

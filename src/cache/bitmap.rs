//! Which blocks of a cached blob are on disk: one bit a block, with a count
//! of those set, so "is it all here" is one comparison and a search for the
//! missing ones skips whole bytes. Both run under the blob's lock on every
//! file open and read, so neither may walk a large blob bit by bit.

/// A fixed-length set of block numbers `0..len`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bitmap {
    bits: Vec<u8>,
    len: u64,
    set: u64,
}

impl Bitmap {
    /// `len` blocks, none present.
    pub fn new(len: u64) -> Self {
        Bitmap {
            bits: vec![0; len.div_ceil(8) as usize],
            len,
            set: 0,
        }
    }

    /// The map stored as `bytes`, if it is one of `len` blocks.
    pub fn from_bytes(bytes: Vec<u8>, len: u64) -> Option<Self> {
        if bytes.len() as u64 != len.div_ceil(8) {
            return None;
        }
        let mut m = Bitmap {
            bits: bytes,
            len,
            set: 0,
        };
        // Bits past the end are not blocks.
        if !len.is_multiple_of(8)
            && let Some(last) = m.bits.last_mut()
        {
            *last &= (1u8 << (len % 8)) - 1;
        }
        m.set = m.bits.iter().map(|b| u64::from(b.count_ones())).sum();
        Some(m)
    }

    /// The bytes to store.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bits
    }

    /// Whether every block is present.
    pub fn is_full(&self) -> bool {
        self.set == self.len
    }

    pub fn get(&self, b: u64) -> bool {
        b < self.len && self.bits[(b / 8) as usize] & (1 << (b % 8)) != 0
    }

    /// Marks `from..to` present (or absent); returns the byte range of the
    /// map that changed, to write back.
    pub fn assign(&mut self, from: u64, to: u64, present: bool) -> std::ops::Range<usize> {
        let to = to.min(self.len);
        if from >= to {
            return 0..0;
        }
        for b in from..to {
            let (byte, mask) = ((b / 8) as usize, 1u8 << (b % 8));
            let was = self.bits[byte] & mask != 0;
            if was != present {
                self.bits[byte] ^= mask;
                if present {
                    self.set += 1;
                } else {
                    self.set -= 1;
                }
            }
        }
        (from / 8) as usize..((to - 1) / 8 + 1) as usize
    }

    /// The first and one past the last missing block in `from..to`, or
    /// `None` if all are present.
    pub fn missing(&self, from: u64, to: u64) -> Option<(u64, u64)> {
        let to = to.min(self.len);
        if from >= to || self.is_full() {
            return None;
        }
        let first = self.find(from, to)?;
        let last = self.find_back(first, to)?;
        Some((first, last + 1))
    }

    /// The first missing block in `from..to`, skipping full bytes.
    fn find(&self, from: u64, to: u64) -> Option<u64> {
        let mut b = from;
        while b < to {
            if b.is_multiple_of(8) && to - b >= 8 && self.bits[(b / 8) as usize] == 0xff {
                b += 8;
                continue;
            }
            if !self.get(b) {
                return Some(b);
            }
            b += 1;
        }
        None
    }

    /// The last missing block in `from..to` (one is known to be there).
    fn find_back(&self, from: u64, to: u64) -> Option<u64> {
        let mut b = to;
        while b > from {
            if b.is_multiple_of(8) && b - from >= 8 && self.bits[(b / 8 - 1) as usize] == 0xff {
                b -= 8;
                continue;
            }
            b -= 1;
            if !self.get(b) {
                return Some(b);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The search agrees with a bit-by-bit walk on every range.
    #[test]
    fn missing_agrees_with_a_plain_walk() {
        let mut m = Bitmap::new(77);
        for (a, b) in [(0, 9), (16, 40), (41, 64), (70, 77)] {
            m.assign(a, b, true);
        }
        m.assign(30, 31, false);
        for from in 0..77 {
            for to in from..=77 {
                let walk = (from..to).filter(|&b| !m.get(b)).collect::<Vec<_>>();
                let want = walk.first().map(|&f| (f, walk.last().unwrap() + 1));
                assert_eq!(m.missing(from, to), want, "{from}..{to}");
            }
        }
    }

    #[test]
    fn counts_and_round_trips() {
        let mut m = Bitmap::new(20);
        assert_eq!(m.assign(3, 12, true), 0..2);
        m.assign(5, 7, true);
        assert!(!m.is_full());
        m.assign(0, 20, true);
        assert!(m.is_full() && m.missing(0, 20).is_none());
        m.assign(19, 20, false);
        let back = Bitmap::from_bytes(m.as_bytes().to_vec(), 20).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.missing(0, 20), Some((19, 20)));
        assert!(Bitmap::from_bytes(vec![0xff; 3], 20).unwrap().is_full());
        assert!(Bitmap::from_bytes(vec![0; 2], 20).is_none());
    }
}

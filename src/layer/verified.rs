//! Plaintext that matched an anchored sha256 digest. Only a digest check
//! makes a [`Verified`], and the chunk cache, the file system and the TOC
//! parser take nothing else: unverified bytes cannot reach them by mistake.

use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

/// A sha256 digest an anchor vouches for (a TOC's chunk digest, one recorded
/// while a whole blob was verified, a TOC anchor).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Sha256Digest(pub [u8; 32]);

impl Sha256Digest {
    /// Parses `sha256:<64 hex>`.
    pub fn parse(s: &str) -> Option<Self> {
        let hex = s.strip_prefix("sha256:")?;
        let mut d = [0u8; 32];
        hex::decode_to_slice(hex, &mut d).ok()?;
        Some(Sha256Digest(d))
    }
}

impl std::fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sha256:{}", hex::encode(self.0))
    }
}

impl std::fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// The bytes did not hash to the digest that vouches for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mismatch {
    /// What the bytes hash to.
    pub got: Sha256Digest,
}

/// Plaintext whose sha256 matched an anchored digest.
pub struct Verified(Zeroizing<Vec<u8>>);

impl Verified {
    /// Hashes `bytes` whole and keeps them only if they match `want`.
    pub fn check(bytes: Zeroizing<Vec<u8>>, want: &Sha256Digest) -> Result<Self, Mismatch> {
        let mut h = Hashing::from(bytes);
        h.filled = h.buf.len();
        h.hasher.update(&h.buf[..]);
        h.finish(want)
    }

    /// Keeps `bytes` only if each consecutive `piece` bytes of it (the
    /// last may be shorter) hash to their own digest in `want`, one per
    /// piece: what a seek index vouches for.
    pub fn check_pieces(
        bytes: Zeroizing<Vec<u8>>,
        piece: usize,
        want: &[Sha256Digest],
    ) -> Result<Self, Mismatch> {
        let count = bytes.len().div_ceil(piece.max(1));
        if piece == 0 || count != want.len() {
            return Err(Mismatch {
                got: Sha256Digest([0; 32]),
            });
        }
        for (p, w) in bytes.chunks(piece).zip(want) {
            let got = Sha256Digest(Sha256::digest(p).into());
            if got != *w {
                return Err(Mismatch { got });
            }
        }
        Ok(Verified(bytes))
    }

    /// Bytes `[from, to)` of these (part of a range that was checked
    /// whole: a file's chunk inside the pieces that verify it), in a buffer
    /// of their own size (the cache counts lengths); `None` if the range
    /// is not inside them. The whole buffer is wiped as it drops.
    pub fn within(self, from: usize, to: usize) -> Option<Self> {
        let part = self.0.get(from..to)?;
        let mut out = super::index::chunk_buffer(part.len());
        out.copy_from_slice(part);
        Some(Verified(out))
    }

    pub fn bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn into_inner(self) -> Zeroizing<Vec<u8>> {
        self.0
    }
}

/// Shows the length only: the bytes are plaintext.
impl std::fmt::Debug for Verified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Verified({} bytes)", self.0.len())
    }
}

impl std::ops::Deref for Verified {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.0
    }
}

/// A buffer filled front to back and hashed piece by piece as it fills
/// (while each piece is still in the core's cache); [`Hashing::finish`]
/// turns it into [`Verified`] only if the digest matches.
pub struct Hashing {
    buf: Zeroizing<Vec<u8>>,
    filled: usize,
    hasher: Sha256,
}

impl From<Zeroizing<Vec<u8>>> for Hashing {
    /// Fills `buf` (zeroed, of the expected length) from its start.
    fn from(buf: Zeroizing<Vec<u8>>) -> Self {
        Hashing {
            buf,
            filled: 0,
            hasher: Sha256::new(),
        }
    }
}

impl Hashing {
    /// How much is filled so far.
    pub fn filled(&self) -> usize {
        self.filled
    }

    /// The expected length.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Lets `fill` write into the next at most `max` unfilled bytes; what it
    /// reports written is hashed and counts as filled.
    pub fn fill<E>(
        &mut self,
        max: usize,
        fill: impl FnOnce(&mut [u8]) -> Result<usize, E>,
    ) -> Result<usize, E> {
        let end = self.buf.len().min(self.filled.saturating_add(max));
        let piece = &mut self.buf[self.filled..end];
        let n = fill(piece)?.min(piece.len());
        self.hasher.update(&piece[..n]);
        self.filled += n;
        Ok(n)
    }

    /// The buffer, if it is filled whole and hashes to `want`.
    pub fn finish(self, want: &Sha256Digest) -> Result<Verified, Mismatch> {
        let got = Sha256Digest(self.hasher.finalize().into());
        if self.filled != self.buf.len() || got != *want {
            return Err(Mismatch { got });
        }
        Ok(Verified(self.buf))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(b: &[u8]) -> Sha256Digest {
        Sha256Digest(Sha256::digest(b).into())
    }

    #[test]
    fn only_matching_bytes_become_verified() {
        let want = digest(b"hello world");
        let v = Verified::check(Zeroizing::new(b"hello world".to_vec()), &want).unwrap();
        assert_eq!(v.bytes(), b"hello world");
        let e = Verified::check(Zeroizing::new(b"hello worle".to_vec()), &want).err();
        assert_eq!(e.unwrap().got, digest(b"hello worle"));

        let mut h = Hashing::from(Zeroizing::new(vec![0u8; 11]));
        let src = b"hello world";
        while h.filled() < h.len() {
            let at = h.filled();
            h.fill(4, |p| -> Result<usize, ()> {
                p.copy_from_slice(&src[at..at + p.len()]);
                Ok(p.len())
            })
            .unwrap();
        }
        assert_eq!(h.finish(&want).unwrap().bytes(), src);
        // Half filled: never verified, even though the zeros are "bytes".
        let mut h = Hashing::from(Zeroizing::new(vec![0u8; 11]));
        h.fill(5, |p| -> Result<usize, ()> {
            p.copy_from_slice(b"hello");
            Ok(5)
        })
        .unwrap();
        assert!(h.finish(&want).is_err());
    }

    #[test]
    fn digests_parse_strictly() {
        let d = digest(b"x");
        assert_eq!(Sha256Digest::parse(&d.to_string()), Some(d));
        assert_eq!(Sha256Digest::parse("sha256:abc"), None);
        assert_eq!(Sha256Digest::parse("sha512:00"), None);
    }
}

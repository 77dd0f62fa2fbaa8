//! `sha256:<hex>` digests: computing and checking them while bytes stream.

use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex};

use sha2::{Digest as _, Sha256};

pub use oci_spec::image::Digest;

use super::Error;
use super::chain::Chain;

/// Parses `sha256:<64 hex>`; other algorithms are refused, as nothing here hashes them.
pub fn parse(s: &str) -> Result<Digest, Error> {
    let d: Digest = s
        .parse()
        .map_err(|_| Error::Malformed(format!("invalid digest {s:?}")))?;
    if d.algorithm().as_ref() != "sha256" || d.digest().len() != 64 {
        return Err(Error::Malformed(format!(
            "unsupported digest {s:?} (only sha256)"
        )));
    }
    Ok(d)
}

/// The sha256 digest of `bytes`.
pub fn of(bytes: &[u8]) -> Digest {
    from_hasher(Sha256::new_with_prefix(bytes))
}

/// The digest a finished hasher computed.
pub fn from_hasher(h: Sha256) -> Digest {
    from_raw(h.finalize().into())
}

/// The digest whose raw SHA-256 is `raw`.
fn from_raw(raw: [u8; 32]) -> Digest {
    parse(&format!("sha256:{}", hex::encode(raw))).expect("well-formed digest")
}

/// A writer that counts and hashes what passes through it.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    len: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            len: 0,
        }
    }

    /// The digest and length of everything written, and the inner writer.
    pub fn finish(self) -> (Digest, u64, W) {
        (from_hasher(self.hasher), self.len, self.inner)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that fails at EOF unless the bytes match `expected` digest and size.
pub struct VerifyingReader<R> {
    inner: R,
    hasher: Hashing,
    len: u64,
    expected: Digest,
    expected_len: Option<u64>,
    what: String,
    /// Set once EOF was checked, so later reads keep returning EOF.
    done: bool,
}

impl<R: Read> VerifyingReader<R> {
    pub fn new(
        inner: R,
        expected: Digest,
        expected_len: Option<u64>,
        what: impl Into<String>,
    ) -> Self {
        VerifyingReader {
            inner,
            hasher: Hashing::Whole(Sha256::new()),
            len: 0,
            expected,
            expected_len,
            what: what.into(),
            done: false,
        }
    }

    /// Hashes into `chain` (which keeps its chaining values: the span
    /// digests of a seek index) rather than a hasher of its own, so the
    /// bytes pass through SHA-256 once for both.
    pub fn chained(
        inner: R,
        expected: Digest,
        expected_len: Option<u64>,
        what: impl Into<String>,
        chain: Arc<Mutex<Chain>>,
    ) -> Self {
        VerifyingReader {
            hasher: Hashing::Chained(chain),
            ..Self::new(inner, expected, expected_len, what)
        }
    }
}

/// Where a [`VerifyingReader`]'s bytes are hashed.
enum Hashing {
    Whole(Sha256),
    Chained(Arc<Mutex<Chain>>),
}

impl Hashing {
    fn update(&mut self, bytes: &[u8]) {
        match self {
            Hashing::Whole(h) => h.update(bytes),
            Hashing::Chained(c) => crate::sync::lock(c).update(bytes),
        }
    }

    fn finish(&mut self) -> Digest {
        match self {
            Hashing::Whole(h) => from_hasher(std::mem::take(h)),
            Hashing::Chained(c) => from_raw(crate::sync::lock(c).finish()),
        }
    }
}

impl<R: Read> Read for VerifyingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.done {
            return Ok(0);
        }
        let n = self.inner.read(buf)?;
        if n > 0 {
            self.hasher.update(&buf[..n]);
            self.len += n as u64;
            if self.expected_len.is_some_and(|l| self.len > l) {
                return Err(bad(format!(
                    "{} is longer than its descriptor's size {}",
                    self.what,
                    self.expected_len.unwrap_or(0)
                )));
            }
            return Ok(n);
        }
        if let Some(l) = self.expected_len
            && self.len != l
        {
            return Err(bad(format!(
                "{} is truncated: {} of {l} bytes",
                self.what, self.len
            )));
        }
        let got = self.hasher.finish();
        if got != self.expected {
            return Err(bad(format!(
                "{} has digest {got}, want {}",
                self.what, self.expected
            )));
        }
        self.done = true;
        Ok(0)
    }
}

fn bad(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifying_reader_checks_digest_and_size() {
        let data = b"hello".to_vec();
        let d = of(&data);
        let mut ok = VerifyingReader::new(&data[..], d.clone(), Some(5), "blob");
        io::copy(&mut ok, &mut io::sink()).unwrap();
        let e = io::copy(
            &mut VerifyingReader::new(&data[..4], d.clone(), Some(5), "blob"),
            &mut io::sink(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("truncated: 4 of 5"), "{e}");
        let e = io::copy(
            &mut VerifyingReader::new(&b"hellp"[..], d, None, "blob"),
            &mut io::sink(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("has digest"), "{e}");
        // Chained: the same checks, and the chain keeps the values.
        let chain = Arc::new(Mutex::new(Chain::new(64)));
        let long = vec![7u8; 200];
        let mut r =
            VerifyingReader::chained(&long[..], of(&long), Some(200), "blob", chain.clone());
        io::copy(&mut r, &mut io::sink()).unwrap();
        let (values, len) = crate::sync::lock(&chain).values();
        assert_eq!((values.len(), len), (4, 200));
        let chain = Arc::new(Mutex::new(Chain::new(64)));
        let mut r = VerifyingReader::chained(&long[..], of(b"other"), None, "blob", chain);
        let e = io::copy(&mut r, &mut io::sink()).unwrap_err();
        assert!(e.to_string().contains("has digest"), "{e}");
        assert!(parse("sha512:00").is_err());
        assert!(parse("sha256:zz").is_err());
    }
}

//! Buffers for secrets that grow without leaving copies behind.
//!
//! A `Vec` that outgrows its capacity moves to a new allocation and frees
//! the old one as it is, so `Zeroizing<Vec<u8>>::extend_from_slice` (and
//! `read_to_end`, `serde_json::to_vec`) leave unwiped copies of what was
//! written so far. [`SecretBuf`] moves to a bigger buffer itself and wipes
//! the old one.

use std::io::{self, Read, Write};

use zeroize::Zeroizing;

/// A byte buffer that is wiped when dropped and whenever it moves.
#[derive(Default)]
pub struct SecretBuf(Zeroizing<Vec<u8>>);

impl SecretBuf {
    pub fn with_capacity(n: usize) -> Self {
        SecretBuf(Zeroizing::new(Vec::with_capacity(n)))
    }

    /// Makes room for `additional` more bytes; the old buffer is wiped.
    pub fn reserve(&mut self, additional: usize) {
        let need = self
            .0
            .len()
            .checked_add(additional)
            .expect("buffer size overflows usize");
        if need > self.0.capacity() {
            let cap = need.max(self.0.capacity().saturating_mul(2)).max(64);
            let mut bigger = Zeroizing::new(Vec::with_capacity(cap));
            bigger.extend_from_slice(&self.0);
            // The old buffer drops here and `Zeroizing` wipes all its capacity.
            self.0 = bigger;
        }
    }

    pub fn extend_from_slice(&mut self, b: &[u8]) {
        self.reserve(b.len());
        self.0.extend_from_slice(b);
    }

    /// Empties the buffer (wiping what it held) and keeps its capacity.
    pub fn clear(&mut self) {
        zeroize::Zeroize::zeroize(&mut *self.0);
    }

    pub fn into_inner(self) -> Zeroizing<Vec<u8>> {
        self.0
    }
}

impl std::ops::Deref for SecretBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl Write for SecretBuf {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Reads `r` to its end into a buffer that leaves no copies behind.
pub fn read_to_end(mut r: impl Read) -> io::Result<Zeroizing<Vec<u8>>> {
    let mut out = SecretBuf::default();
    let mut block = Zeroizing::new([0u8; 8192]);
    loop {
        match r.read(&mut block[..]) {
            Ok(0) => return Ok(out.into_inner()),
            Ok(n) => out.extend_from_slice(&block[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Serializes `v` as JSON into a buffer that leaves no copies behind.
pub fn to_json<T: serde::Serialize + ?Sized>(v: &T) -> serde_json::Result<Zeroizing<Vec<u8>>> {
    let mut out = SecretBuf::with_capacity(256);
    serde_json::to_writer(&mut out, v)?;
    Ok(out.into_inner())
}

/// A JSON error over secret or plaintext data, told by its kind and place
/// only: serde's own text can quote the value it choked on.
pub fn json_error(e: &serde_json::Error) -> String {
    let kind = match e.classify() {
        serde_json::error::Category::Io => "read",
        serde_json::error::Category::Syntax => "syntax",
        serde_json::error::Category::Data => "data",
        serde_json::error::Category::Eof => "truncated",
    };
    format!("{kind} error at line {} column {}", e.line(), e.column())
}

/// A string from secret JSON (a password, a key in base64) that is wiped
/// when dropped.
#[derive(Default)]
pub struct SecretString(pub Zeroizing<String>);

impl<'de> serde::Deserialize<'de> for SecretString {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(|s| SecretString(Zeroizing::new(s)))
    }
}

impl std::ops::Deref for SecretString {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_keeps_bytes_and_reads_to_end() {
        let mut b = SecretBuf::default();
        for i in 0..1000u32 {
            b.write_all(&i.to_le_bytes()).unwrap();
        }
        assert_eq!(b.len(), 4000);
        assert_eq!(&b[4..8], &1u32.to_le_bytes());
        let data: Vec<u8> = (0..20_000u32).map(|i| i as u8).collect();
        assert_eq!(&read_to_end(&data[..]).unwrap()[..], &data[..]);
        b.clear();
        assert!(b.is_empty());
    }

    #[test]
    fn json_errors_name_no_value() {
        let e = serde_json::from_str::<Vec<u8>>(r#""hunter2""#).unwrap_err();
        assert!(e.to_string().contains("hunter2"), "serde quotes it: {e}");
        assert_eq!(json_error(&e), "data error at line 1 column 9");
    }
}

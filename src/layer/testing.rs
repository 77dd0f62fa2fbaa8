//! What the layer modules' tests share.

use std::sync::atomic::{AtomicU64, Ordering};

use super::estargz::toc::TocEntry;
use super::index::{Meter, Node};

/// A budget of `.0` bytes; `.1` taken.
pub struct Budget(pub u64, pub AtomicU64);

impl Meter for Budget {
    fn take(&self, bytes: u64) -> bool {
        self.1
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |t| {
                t.checked_add(bytes).filter(|&n| n <= self.0)
            })
            .is_ok()
    }
    fn give(&self, bytes: u64) {
        self.1.fetch_sub(bytes, Ordering::SeqCst);
    }
    fn budget(&self) -> u64 {
        self.0
    }
}

/// A PAX extended header's payload of `records` (`LEN KEY=VALUE\n`).
pub fn pax(records: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in records {
        let body = k.len() + v.len() + 3;
        // The length field counts its own digits.
        let mut len = body + body.to_string().len();
        if len.to_string().len() != body.to_string().len() {
            len += 1;
        }
        out.extend_from_slice(format!("{len} {k}=").as_bytes());
        out.extend_from_slice(v);
        out.push(b'\n');
    }
    out
}

/// An entry of `kind` named `name`, mode 0644, with no extents.
pub fn node(name: &str, kind: &str) -> Node {
    Node {
        entry: TocEntry {
            name: name.into(),
            kind: kind.into(),
            mode: 0o644,
            ..Default::default()
        },
        extents: Vec::new(),
    }
}

/// Incompressible bytes (xorshift), the same for the same `n`.
pub fn noise(n: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Text that compresses about 3:1 and refers back all through its window.
pub fn text(n: usize) -> Vec<u8> {
    use std::io::Write as _;
    let mut v = Vec::with_capacity(n + 64);
    let mut i = 0u64;
    while v.len() < n {
        writeln!(v, "line {i} of some compressible text {}", i * 7919 % 1000).unwrap();
        i += 1;
    }
    v.truncate(n);
    v
}

/// A tar of regular files (mode 0644, GNU headers), in the order given.
pub fn tar_of<N: AsRef<str>>(files: &[(N, Vec<u8>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, name.as_ref(), &data[..]).unwrap();
    }
    b.into_inner().unwrap()
}

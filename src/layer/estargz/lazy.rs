//! Reads files out of an (optionally ocicrypt-encrypted) eStargz blob by
//! range: the footer, then the TOC, then exactly the chunk members a read
//! needs. CTR lets each range be decrypted at its own offset; every chunk is
//! checked against the anchored TOC before a byte is returned. Errors name the
//! layer and the chunk's blob offset, never a file name: they end up in logs.

use std::collections::HashMap;
use std::io;
use std::sync::Arc;

use zeroize::Zeroizing;

use super::footer::FOOTER_SIZE;
use super::reader::{MAX_TOC, inflate_chunk, parse_toc_member, toc_offset};
use super::toc::Toc;
use crate::crypto::cipher::LayerKey;
use crate::layer::source::RangeSource;

/// Largest chunk (uncompressed) or member (compressed) we will fetch at once;
/// a TOC that claims more is refused rather than trusted.
const MAX_CHUNK: u64 = 64 << 20;

/// An eStargz layer opened lazily.
pub struct LazyEstargz {
    src: Arc<dyn RangeSource>,
    key: Option<LayerKey>,
    what: String,
    toc: Toc,
    /// File name → indexes of its `reg`/`chunk` entries, in file order.
    files: HashMap<String, Vec<usize>>,
    /// Entry index → end of its gzip member in the blob.
    member_end: HashMap<usize, u64>,
}

fn bad(what: &str, msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("layer {what}: {msg}"))
}

impl LazyEstargz {
    /// Opens the layer: fetches the footer and TOC and checks the TOC against
    /// `anchor` (`sha256:…`). `key` decrypts an encrypted blob; `what` names
    /// the layer in errors.
    pub fn open(
        src: Arc<dyn RangeSource>,
        key: Option<LayerKey>,
        anchor: &str,
        what: &str,
    ) -> io::Result<Self> {
        let size = src.size();
        if size < FOOTER_SIZE as u64 {
            return Err(bad(
                what,
                format!("blob of {size} bytes is too small for eStargz"),
            ));
        }
        let footer_at = size - FOOTER_SIZE as u64;
        let mut footer = Zeroizing::new(src.read_range(footer_at, FOOTER_SIZE as u64)?);
        if let Some(k) = &key {
            k.apply_at(footer_at, &mut footer);
        }
        let toc_at = toc_offset(&footer).map_err(|e| bad(what, format!("footer: {e}")))?;
        if toc_at >= footer_at || footer_at - toc_at > MAX_TOC {
            return Err(bad(
                what,
                format!("footer points at TOC offset {toc_at}, outside the blob"),
            ));
        }
        let mut member = Zeroizing::new(src.read_range(toc_at, footer_at - toc_at)?);
        if let Some(k) = &key {
            k.apply_at(toc_at, &mut member);
        }
        let (toc, digest) = parse_toc_member(&member).map_err(|e| bad(what, e.to_string()))?;
        if !digest.eq_ignore_ascii_case(anchor) {
            return Err(bad(
                what,
                format!("TOC digest {digest} does not match its anchor {anchor}"),
            ));
        }

        // Each chunk member ends where the next member (or the TOC) begins.
        let mut starts: Vec<u64> = toc
            .entries
            .iter()
            .filter(|e| e.offset > 0)
            .map(|e| e.offset)
            .collect();
        starts.push(toc_at);
        starts.sort_unstable();
        starts.dedup();
        let mut files: HashMap<String, Vec<usize>> = HashMap::new();
        let mut member_end = HashMap::new();
        for (i, e) in toc.entries.iter().enumerate() {
            let payload = (e.kind == "reg" && e.size > 0) || e.kind == "chunk";
            if !payload {
                continue;
            }
            if e.offset == 0 || e.offset >= toc_at {
                return Err(bad(
                    what,
                    format!(
                        "TOC entry {i} has chunk offset {} outside the blob",
                        e.offset
                    ),
                ));
            }
            let end = starts
                .iter()
                .copied()
                .find(|&s| s > e.offset)
                .unwrap_or(toc_at);
            member_end.insert(i, end);
            files.entry(e.name.clone()).or_default().push(i);
        }
        Ok(LazyEstargz {
            src,
            key,
            what: what.to_string(),
            toc,
            files,
            member_end,
        })
    }

    /// The verified TOC.
    pub fn toc(&self) -> &Toc {
        &self.toc
    }

    /// Reads up to `len` bytes of file `name` from `offset`, fetching only the
    /// chunks that cover them. Plaintext is returned in a zeroizing buffer.
    pub fn read_file(&self, name: &str, offset: u64, len: u64) -> io::Result<Zeroizing<Vec<u8>>> {
        let chunks = self.files.get(name).ok_or_else(|| {
            bad(
                &self.what,
                "no regular file with content at the requested path".into(),
            )
        })?;
        let size = self.toc.entries[chunks[0]].size;
        let end = offset.saturating_add(len).min(size);
        let mut out = Zeroizing::new(Vec::with_capacity(end.saturating_sub(offset) as usize));
        for &i in chunks {
            let e = &self.toc.entries[i];
            let clen = if e.chunk_size == 0 {
                size.saturating_sub(e.chunk_offset)
            } else {
                e.chunk_size
            };
            let (cstart, cend) = (e.chunk_offset, e.chunk_offset + clen);
            if cend <= offset || cstart >= end {
                continue;
            }
            let data = self.chunk(i, clen)?;
            let from = offset.max(cstart) - cstart;
            let to = end.min(cend) - cstart;
            out.extend_from_slice(&data[from as usize..to as usize]);
        }
        Ok(out)
    }

    /// Fetches, decrypts, inflates and verifies one chunk.
    fn chunk(&self, i: usize, len: u64) -> io::Result<Zeroizing<Vec<u8>>> {
        let e = &self.toc.entries[i];
        let start = e.offset;
        let end = self.member_end[&i];
        if len > MAX_CHUNK || end - start > MAX_CHUNK {
            return Err(bad(
                &self.what,
                format!(
                    "chunk at blob offset {start} (TOC entry {i}) is larger than {MAX_CHUNK} bytes"
                ),
            ));
        }
        let mut member = Zeroizing::new(self.src.read_range(start, end - start)?);
        if let Some(k) = &self.key {
            k.apply_at(start, &mut member);
        }
        inflate_chunk(&member, len, &e.chunk_digest)
            .map(Zeroizing::new)
            .map_err(|err| {
                bad(
                    &self.what,
                    format!("chunk at blob offset {start} (TOC entry {i}): {err}"),
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::layer::estargz::writer::convert;
    use crate::layer::source::MemoryRange;

    /// Incompressible bytes, so chunk members are as large as their chunks.
    fn noise(n: usize) -> Vec<u8> {
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

    fn layer(big: &[u8]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(big.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, "data/big.bin", big).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_size(5);
        h.set_mode(0o644);
        b.append_data(&mut h, "data/small.txt", &b"hello"[..])
            .unwrap();
        b.into_inner().unwrap()
    }

    fn encrypted(big: &[u8]) -> (Vec<u8>, LayerKey, String) {
        let (blob, c) = convert(&layer(big)[..], Vec::new(), 1 << 20).unwrap();
        let key = LayerKey::generate();
        let (mut r, _) = key.encrypt_reader(io::Cursor::new(blob), None);
        let mut ct = Vec::new();
        r.read_to_end(&mut ct).unwrap();
        (ct, key, c.toc_digest)
    }

    #[test]
    fn reads_only_the_chunks_a_read_needs() {
        let big = noise(8 << 20);
        let (ct, key, anchor) = encrypted(&big);
        let src = Arc::new(MemoryRange::new(ct.clone()));
        let l = LazyEstargz::open(
            src.clone(),
            Some(LayerKey::from_options(&key.to_options(String::new()))),
            &anchor,
            "L",
        )
        .unwrap();
        let after_open = src.fetched.load(Ordering::Relaxed);
        assert_eq!(
            &l.read_file("data/small.txt", 0, 100).unwrap()[..],
            b"hello"
        );
        // 4 KiB across a chunk boundary needs exactly the two chunks around it.
        let at = (3 << 20) - 2048;
        let got = l.read_file("data/big.bin", at, 4096).unwrap();
        assert_eq!(&got[..], &big[at as usize..at as usize + 4096]);
        let fetched = src.fetched.load(Ordering::Relaxed) - after_open;
        assert!(
            fetched < (5 << 20) / 2,
            "fetched {fetched} bytes of an {} byte blob",
            ct.len()
        );
        assert!(ct.len() > 8 << 20);
        // A read past the end is clipped to the file.
        assert_eq!(
            l.read_file("data/big.bin", (8 << 20) - 10, 100)
                .unwrap()
                .len(),
            10
        );
    }

    #[test]
    fn wrong_anchor_tampered_chunk_and_wrong_key_are_refused() {
        let big = noise(3 << 20);
        let (ct, key, anchor) = encrypted(&big);
        let k = || Some(LayerKey::from_options(&key.to_options(String::new())));
        let e = LazyEstargz::open(
            Arc::new(MemoryRange::new(ct.clone())),
            k(),
            "sha256:00",
            "L",
        )
        .err()
        .unwrap();
        assert!(e.to_string().contains("does not match its anchor"), "{e}");
        let e = LazyEstargz::open(
            Arc::new(MemoryRange::new(ct.clone())),
            Some(LayerKey::generate()),
            &anchor,
            "L",
        )
        .err()
        .unwrap();
        assert!(e.to_string().contains("layer L: footer"), "{e}");

        let l =
            LazyEstargz::open(Arc::new(MemoryRange::new(ct.clone())), k(), &anchor, "L").unwrap();
        let second = l.files["data/big.bin"][1];
        let mut evil = ct.clone();
        evil[l.toc.entries[second].offset as usize + 30] ^= 1;
        let l = LazyEstargz::open(Arc::new(MemoryRange::new(evil)), k(), &anchor, "L").unwrap();
        assert_eq!(
            l.read_file("data/big.bin", 0, 10).unwrap().len(),
            10,
            "other chunks still work"
        );
        let e = l
            .read_file("data/big.bin", 1 << 20, 10)
            .unwrap_err()
            .to_string();
        let want = format!(
            "layer L: chunk at blob offset {} (TOC entry {second}): ",
            l.toc.entries[second].offset
        );
        assert!(e.contains(&want), "{e}");
        assert!(
            !e.contains("big.bin"),
            "errors reach logs and must not name files: {e}"
        );
    }
}

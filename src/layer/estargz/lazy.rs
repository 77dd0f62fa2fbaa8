//! Opens an (optionally ocicrypt-encrypted) eStargz blob lazily: the
//! footer, then the TOC, then, per read, exactly the chunk members needed.
//! CTR lets each range be decrypted at its own offset; every chunk is checked
//! against the anchored TOC before a byte is returned. Errors name the layer
//! and the chunk's blob offset, never a file name: they end up in logs.

use std::io;
use std::sync::Arc;

use zeroize::Zeroizing;

use super::footer::FOOTER_SIZE;
use super::reader::{MAX_TOC, inflate_chunk, parse_toc, toc_json, toc_offset};
use super::toc::Toc;
use super::{NO_PREFETCH_LANDMARK, PREFETCH_LANDMARK, TOC_NAME};
use crate::crypto::cipher::LayerKey;
use crate::layer::index::{ChunkSource, Extent, Layer, MAX_CHUNK, Node, bad};
use crate::layer::source::{RangeReader, RangeSource, prepare_in_pieces};
use crate::layer::tarmeta::clean;
use crate::layer::verified::{Sha256Digest, Verified};

/// What vouches for the TOC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Anchor {
    /// The TOC JSON must have this `sha256:` digest (from the private
    /// options, a TOC-digest annotation, or the TOC of a blob verified whole).
    Toc(String),
    /// Nothing vouches for the TOC; the operator asked to serve it anyway.
    Unverified,
}

/// Where one chunk's gzip member lies and what it must inflate to.
struct ChunkInfo {
    offset: u64,
    end: u64,
    len: u64,
    digest: Sha256Digest,
    toc_entry: usize,
}

struct EstargzChunks {
    src: Arc<dyn RangeSource>,
    key: Option<LayerKey>,
    what: String,
    chunks: Vec<ChunkInfo>,
    /// Where the prioritized files end (the prefetch landmark's member).
    prioritized_end: u64,
}

/// Opens the layer: fetches the footer and TOC and checks the TOC against
/// `anchor`. `key` decrypts an encrypted blob; `what` names the layer in
/// errors.
pub fn open(
    src: Arc<dyn RangeSource>,
    key: Option<LayerKey>,
    anchor: &Anchor,
    what: &str,
) -> io::Result<Layer> {
    let (toc, toc_at) = read_toc(&*src, key.as_ref(), anchor, what)?;
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

    let mut nodes: Vec<Node> = Vec::new();
    let mut chunks = Vec::new();
    let mut prioritized_end = 0;
    for (i, mut e) in toc.entries.into_iter().enumerate() {
        // Names as the tar-based formats store them (see `tarmeta::clean`).
        e.name = clean(&e.name);
        if e.kind == "hardlink" {
            e.link_name = clean(&e.link_name);
        }
        if e.kind == "reg" && e.name == PREFETCH_LANDMARK {
            prioritized_end = e.offset.min(toc_at);
        }
        let payload = (e.kind == "reg" && e.size > 0) || e.kind == "chunk";
        let owner = if e.kind == "chunk" {
            match nodes.last_mut() {
                Some(n) if n.entry.kind == "reg" && n.entry.name == e.name => Some(n),
                _ => {
                    return Err(bad(
                        what,
                        format!("TOC entry {i} is a chunk of no preceding file"),
                    ));
                }
            }
        } else {
            if e.kind == "reg"
                && [TOC_NAME, NO_PREFETCH_LANDMARK, PREFETCH_LANDMARK].contains(&e.name.as_str())
            {
                continue;
            }
            if e.name.is_empty() && e.kind != "dir" {
                return Err(bad(what, format!("TOC entry {i} has no name")));
            }
            nodes.push(Node {
                entry: e.clone(),
                extents: Vec::new(),
            });
            payload.then(|| nodes.last_mut().expect("pushed"))
        };
        let Some(owner) = owner else { continue };
        if e.offset == 0 || e.offset >= toc_at {
            return Err(bad(
                what,
                format!(
                    "TOC entry {i} has chunk offset {} outside the blob",
                    e.offset
                ),
            ));
        }
        let size = owner.entry.size;
        let len = if e.chunk_size == 0 {
            size.saturating_sub(e.chunk_offset)
        } else {
            e.chunk_size
        };
        // `starts` is sorted: a binary search keeps a TOC of many entries
        // from costing quadratic time (a hostile TOC could make it hours).
        let end = starts
            .get(starts.partition_point(|&s| s <= e.offset))
            .copied()
            .unwrap_or(toc_at);
        if len > MAX_CHUNK || end - e.offset > MAX_CHUNK {
            return Err(bad(
                what,
                format!("TOC entry {i} has a chunk larger than {MAX_CHUNK} bytes"),
            ));
        }
        let digest = Sha256Digest::parse(&e.chunk_digest)
            .ok_or_else(|| bad(what, format!("TOC entry {i} has no valid chunk digest")))?;
        owner.extents.push(Extent {
            file_offset: e.chunk_offset,
            chunk: chunks.len() as u32,
            chunk_offset: 0,
            len: len as u32,
        });
        chunks.push(ChunkInfo {
            offset: e.offset,
            end,
            len,
            digest,
            toc_entry: i,
        });
    }
    let count =
        u32::try_from(chunks.len()).map_err(|_| bad(what, "TOC has too many chunks".into()))?;
    let source = EstargzChunks {
        src,
        key,
        what: what.to_string(),
        chunks,
        prioritized_end,
    };
    Layer::new(what, nodes, Box::new(source), count)
}

/// Where the TOC member lies, by the footer: `(toc offset, footer offset)`.
pub fn toc_range(
    src: &dyn RangeSource,
    key: Option<&LayerKey>,
    what: &str,
) -> io::Result<(u64, u64)> {
    let size = src.size();
    if size < FOOTER_SIZE as u64 {
        return Err(bad(
            what,
            format!("blob of {size} bytes is too small for eStargz"),
        ));
    }
    let footer_at = size - FOOTER_SIZE as u64;
    let mut footer = Zeroizing::new(src.read_range(footer_at, FOOTER_SIZE as u64)?);
    if let Some(k) = key {
        k.apply_at(footer_at, &mut footer);
    }
    let toc_at = toc_offset(&footer).map_err(|e| bad(what, format!("footer: {e}")))?;
    if toc_at >= footer_at {
        return Err(bad(
            what,
            format!("footer points at TOC offset {toc_at}, outside the blob"),
        ));
    }
    if footer_at - toc_at > MAX_TOC {
        return Err(bad(
            what,
            format!(
                "footer points at a TOC of {} bytes, over the {MAX_TOC}-byte limit",
                footer_at - toc_at
            ),
        ));
    }
    Ok((toc_at, footer_at))
}

/// Fetches and checks the footer and TOC; returns the TOC and its offset.
fn read_toc(
    src: &dyn RangeSource,
    key: Option<&LayerKey>,
    anchor: &Anchor,
    what: &str,
) -> io::Result<(Toc, u64)> {
    let (toc_at, footer_at) = toc_range(src, key, what)?;
    let mut member = Zeroizing::new(src.read_range(toc_at, footer_at - toc_at)?);
    if let Some(k) = key {
        k.apply_at(toc_at, &mut member);
    }
    let (json, digest) = toc_json(&member).map_err(|e| bad(what, e.to_string()))?;
    drop(member);
    // Checked before a byte of it is parsed: a TOC no anchor vouches for
    // never reaches the JSON parser.
    let json = match anchor {
        Anchor::Toc(want) => {
            let want_digest = Sha256Digest::parse(&want.to_ascii_lowercase())
                .ok_or_else(|| bad(what, "TOC anchor is not a sha256 digest".into()))?;
            // Neither digest is printed: the anchor may come from the
            // private options, and the TOC's digest is a hash of the file list.
            Verified::check(json, &want_digest)
                .map_err(|_| bad(what, "TOC does not match its anchor".into()))?
        }
        Anchor::Unverified => {
            Verified::check(json, &digest).map_err(|_| bad(what, "TOC changed".into()))?
        }
    };
    let toc = parse_toc(&json).map_err(|e| bad(what, e.to_string()))?;
    Ok((toc, toc_at))
}

/// Whether the blob ends in an eStargz footer (decrypted with `key`).
pub fn has_footer(src: &dyn RangeSource, key: Option<&LayerKey>) -> io::Result<bool> {
    let size = src.size();
    if size < FOOTER_SIZE as u64 {
        return Ok(false);
    }
    let at = size - FOOTER_SIZE as u64;
    let mut footer = Zeroizing::new(src.read_range(at, FOOTER_SIZE as u64)?);
    if let Some(k) = key {
        k.apply_at(at, &mut footer);
    }
    Ok(toc_offset(&footer).is_ok())
}

impl EstargzChunks {
    /// The blob range the members of `ids` cover, and their total size
    /// (equal to the range's when they are adjacent).
    fn span<'a>(&self, ids: impl Iterator<Item = &'a u32>) -> Option<(u64, u64, u64)> {
        let mut span: Option<(u64, u64, u64)> = None;
        for c in ids.filter_map(|&c| self.chunks.get(c as usize)) {
            let (lo, hi, sum) = span.unwrap_or((c.offset, c.end, 0));
            span = Some((lo.min(c.offset), hi.max(c.end), sum + (c.end - c.offset)));
        }
        span
    }
}

impl ChunkSource for EstargzChunks {
    fn load(&self, chunk: u32) -> io::Result<Verified> {
        let c = self
            .chunks
            .get(chunk as usize)
            .ok_or_else(|| bad(&self.what, format!("no chunk {chunk}")))?;
        // One fetch for the whole member, then decrypt and inflate it piecewise.
        self.src.prepare(c.offset, c.end - c.offset)?;
        let member = RangeReader::new(&*self.src, self.key.as_ref(), c.offset, c.end);
        inflate_chunk(member, c.len, &c.digest).map_err(|err| {
            // A bad copy in the ciphertext cache must not fail every later
            // read: the next one fetches the member again.
            if let Err(e) = self.src.forget_range(c.offset, c.end - c.offset) {
                tracing::warn!("layer {}: forgetting a bad chunk: {e}", self.what);
            }
            bad(
                &self.what,
                format!(
                    "chunk at blob offset {} (TOC entry {}): {err}",
                    c.offset, c.toc_entry
                ),
            )
        })
    }

    fn fetched(&self) -> u64 {
        self.src.fetched()
    }

    fn is_local(&self) -> bool {
        self.src.has(0, self.src.size())
    }

    fn is_local_chunks(&self, chunks: &[u32]) -> bool {
        self.span(chunks.iter())
            .is_none_or(|(lo, hi, _)| self.src.has(lo, hi - lo))
    }

    fn prepare(&self, chunks: &[u32], then: &[u32]) -> io::Result<()> {
        if self.is_local_chunks(chunks) {
            return Ok(());
        }
        match self.span(chunks.iter().chain(then)) {
            // One range only if nothing lies between the members.
            Some((lo, hi, sum)) if hi - lo == sum => self.src.prepare(lo, hi - lo),
            _ => Ok(()),
        }
    }

    fn prefetch(&self, most: u64) -> io::Result<Vec<u32>> {
        let end = self.prioritized_end.min(most);
        prepare_in_pieces(&*self.src, 0, end)?;
        let held = self.chunks.iter().take_while(|c| c.end <= end).count();
        Ok((0..held as u32).collect())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::layer::estargz::writer::convert;
    use crate::layer::source::MemoryRange;
    use crate::layer::testing::noise;

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
        let l = open(
            src.clone(),
            Some(LayerKey::from_options(&key.to_options(String::new()))),
            &Anchor::Toc(anchor),
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

    /// A TOC that its anchor does not vouch for is refused before a byte of
    /// it is parsed: here JSON that would fail to parse fails the anchor.
    #[test]
    fn a_toc_is_checked_against_its_anchor_before_it_is_parsed() {
        let json = b"{ this is no JSON, and would cost the parser if it were huge";
        let mut tar = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(json.len() as u64);
        tar.append_data(&mut h, super::super::TOC_NAME, &json[..])
            .unwrap();
        let mut blob = Vec::new();
        let mut gz = flate2::write::GzEncoder::new(&mut blob, flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &tar.into_inner().unwrap()).unwrap();
        gz.finish().unwrap();
        blob.extend_from_slice(&super::super::footer::encode(0));
        let open_with = |anchor: String| {
            open(
                Arc::new(MemoryRange::new(blob.clone())),
                None,
                &Anchor::Toc(anchor),
                "L",
            )
            .err()
            .unwrap()
            .to_string()
        };
        let other = format!("sha256:{}", "ab".repeat(32));
        let e = open_with(other);
        assert!(e.contains("does not match its anchor"), "{e}");
        let own = format!(
            "sha256:{}",
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(json))
        );
        let e = open_with(own);
        assert!(e.contains("TOC is not valid"), "{e}");
    }

    #[test]
    fn wrong_anchor_tampered_chunk_and_wrong_key_are_refused() {
        let big = noise(3 << 20);
        let (ct, key, anchor) = encrypted(&big);
        let k = || Some(LayerKey::from_options(&key.to_options(String::new())));
        let e = open(
            Arc::new(MemoryRange::new(ct.clone())),
            k(),
            &Anchor::Toc(format!("sha256:{}", "00".repeat(32))),
            "L",
        )
        .err()
        .unwrap();
        assert!(e.to_string().contains("does not match its anchor"), "{e}");
        let e = open(
            Arc::new(MemoryRange::new(ct.clone())),
            k(),
            &Anchor::Toc("sha256:00".into()),
            "L",
        )
        .err()
        .unwrap();
        assert!(e.to_string().contains("is not a sha256 digest"), "{e}");
        let e = open(
            Arc::new(MemoryRange::new(ct.clone())),
            Some(LayerKey::generate()),
            &Anchor::Toc(anchor.clone()),
            "L",
        )
        .err()
        .unwrap();
        assert!(e.to_string().contains("layer L: footer"), "{e}");

        let anchor = Anchor::Toc(anchor);
        let (toc, _) = read_toc(&MemoryRange::new(ct.clone()), k().as_ref(), &anchor, "L").unwrap();
        let second = toc
            .entries
            .iter()
            .position(|e| e.kind == "chunk" && e.name == "data/big.bin")
            .unwrap();
        let mut evil = ct.clone();
        evil[toc.entries[second].offset as usize + 30] ^= 1;
        let l = open(Arc::new(MemoryRange::new(evil)), k(), &anchor, "L").unwrap();
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
            toc.entries[second].offset
        );
        assert!(e.contains(&want), "{e}");
        assert!(
            !e.contains("big.bin"),
            "errors reach logs and must not name files: {e}"
        );
    }

    #[test]
    fn prefetch_brings_the_prioritized_files_in_one_range_and_reads_need_no_more() {
        use crate::cache::blobs::{BLOCK, DiskRange};
        use crate::layer::estargz::writer::convert_prioritized;
        use std::collections::HashSet;

        let mut b = tar::Builder::new(Vec::new());
        let files: Vec<Vec<u8>> = (0..40).map(|i| noise(3000 + i * 11)).collect();
        for (i, f) in files.iter().enumerate() {
            let mut h = tar::Header::new_gnu();
            h.set_size(f.len() as u64);
            h.set_mode(0o644);
            b.append_data(&mut h, format!("lib/m{i:02}.py"), &f[..])
                .unwrap();
        }
        let big = noise(3 << 20);
        let mut h = tar::Header::new_gnu();
        h.set_size(big.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, "lib/native.so", &big[..]).unwrap();
        let t = b.into_inner().unwrap();
        let picked = [3usize, 17, 29, 38];
        let set: HashSet<String> = picked.iter().map(|i| format!("lib/m{i:02}.py")).collect();
        let (blob, c) = convert_prioritized(|| Ok(&t[..]), Vec::new(), 1 << 20, &set).unwrap();
        let key = LayerKey::generate();
        let (mut r, _) = key.encrypt_reader(io::Cursor::new(blob), None);
        let mut ct = Vec::new();
        r.read_to_end(&mut ct).unwrap();

        let dir = tempfile::tempdir().unwrap();
        let mem = Arc::new(MemoryRange::new(ct.clone()));
        let disk = Arc::new(
            DiskRange::open(dir.path(), &crate::oci::digest::of(&ct), mem.clone()).unwrap(),
        );
        let l = open(
            disk,
            Some(LayerKey::from_options(&key.to_options(String::new()))),
            &Anchor::Toc(c.toc_digest),
            "L",
        )
        .unwrap();
        let opened = mem.fetched.load(Ordering::Relaxed);
        assert_eq!(
            l.prefetch(u64::MAX).unwrap(),
            [0, 1, 2, 3],
            "the four prioritized files' chunks"
        );
        let prefetched = mem.fetched.load(Ordering::Relaxed) - opened;
        assert!(
            prefetched <= 2 * BLOCK,
            "prefetched {prefetched} bytes for four small files"
        );
        for i in picked {
            assert_eq!(
                l.read_file(&format!("lib/m{i:02}.py"), 0, 1 << 20).unwrap()[..],
                files[i][..]
            );
        }
        assert_eq!(
            mem.fetched.load(Ordering::Relaxed) - opened,
            prefetched,
            "no fetch after the prefetch"
        );
        assert_eq!(
            l.read_file("lib/m05.py", 0, 1 << 20).unwrap()[..],
            files[5][..]
        );
        assert!(mem.fetched.load(Ordering::Relaxed) - opened > prefetched);
    }

    /// A blob that is only a TOC member and the footer: enough for entries
    /// without content.
    fn toc_only_blob(entries: Vec<super::super::toc::TocEntry>) -> Vec<u8> {
        blob_with_toc(&[], entries)
    }

    /// `chunks`, then a TOC member of `entries`, then the footer.
    fn blob_with_toc(chunks: &[u8], entries: Vec<super::super::toc::TocEntry>) -> Vec<u8> {
        use std::io::Write;
        let json = serde_json::to_vec(&Toc {
            version: 1,
            entries,
        })
        .unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_path(TOC_NAME).unwrap();
        h.set_size(json.len() as u64);
        h.set_cksum();
        let mut tar = h.as_bytes().to_vec();
        tar.extend_from_slice(&json);
        tar.resize(tar.len().next_multiple_of(512) + 1024, 0);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        let mut blob = chunks.to_vec();
        blob.extend(gz.finish().unwrap());
        blob.extend_from_slice(&super::super::footer::encode(chunks.len() as u64));
        blob
    }

    /// A blob of `size` bytes that are zeros but for its last ones, `tail`;
    /// remembers the longest read asked of it.
    struct Sparse {
        size: u64,
        tail: Vec<u8>,
        longest: std::sync::atomic::AtomicU64,
    }

    impl RangeSource for Sparse {
        fn size(&self) -> u64 {
            self.size
        }
        fn read_into(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
            self.longest.fetch_max(buf.len() as u64, Ordering::Relaxed);
            let tail_at = self.size - self.tail.len() as u64;
            for (i, b) in buf.iter_mut().enumerate() {
                let at = offset + i as u64;
                *b = if at >= tail_at {
                    self.tail[(at - tail_at) as usize]
                } else {
                    0
                };
            }
            Ok(())
        }
        fn fetched(&self) -> u64 {
            0
        }
    }

    /// Sizes from the blob are limits' business, not allocations': a
    /// footer pointing at a TOC of 2^62 bytes, a TOC entry claiming a chunk
    /// of nearly 2^64 bytes.
    #[test]
    fn lying_sizes_in_footer_and_toc_are_refused_by_their_limits() {
        use super::super::toc::TocEntry;
        let src = Sparse {
            size: 1 << 62,
            tail: super::super::footer::encode(0).to_vec(),
            longest: Default::default(),
        };
        let e = open(Arc::new(src), None, &Anchor::Unverified, "sha256:ab")
            .err()
            .unwrap();
        assert_eq!(
            e.to_string(),
            format!(
                "layer sha256:ab: footer points at a TOC of {} bytes, over the {MAX_TOC}-byte limit",
                (1u64 << 62) - FOOTER_SIZE as u64
            )
        );

        let chunk = |size: u64, chunk_size: u64| TocEntry {
            name: "f".into(),
            kind: "reg".into(),
            size,
            offset: 10,
            chunk_size,
            chunk_digest: format!("sha256:{}", "00".repeat(32)),
            ..Default::default()
        };
        for (size, chunk_size) in [(u64::MAX, 0), (u64::MAX, u64::MAX - 1), (10, u64::MAX)] {
            let blob = blob_with_toc(&[0; 100], vec![chunk(size, chunk_size)]);
            let e = open(
                Arc::new(MemoryRange::new(blob)),
                None,
                &Anchor::Unverified,
                "sha256:ab",
            )
            .err()
            .unwrap();
            assert_eq!(
                e.to_string(),
                format!("layer sha256:ab: TOC entry 0 has a chunk larger than {MAX_CHUNK} bytes"),
                "size {size}, chunkSize {chunk_size}"
            );
        }
    }

    #[test]
    fn toc_names_are_cleaned_and_a_name_that_cleans_to_nothing_is_refused() {
        use super::super::toc::TocEntry;
        let entry = |name: &str, kind: &str, link: &str| TocEntry {
            name: name.into(),
            kind: kind.into(),
            link_name: link.into(),
            mode: 0o755,
            ..Default::default()
        };
        let blob = toc_only_blob(vec![
            entry("../escape/", "dir", ""),
            entry("/abs//x", "symlink", "../../t"),
            entry("a/./b/", "dir", ""),
            entry("h", "hardlink", "/../a/b/"),
        ]);
        let l = open(
            Arc::new(MemoryRange::new(blob)),
            None,
            &Anchor::Unverified,
            "L",
        )
        .unwrap();
        let got: Vec<_> = l
            .nodes()
            .iter()
            .map(|n| (n.entry.name.as_str(), n.entry.link_name.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("escape", ""),
                ("abs/x", "../../t"),
                ("a/b", ""),
                ("h", "a/b")
            ]
        );

        let blob = toc_only_blob(vec![entry("secret/../..", "reg", "")]);
        let e = open(
            Arc::new(MemoryRange::new(blob)),
            None,
            &Anchor::Unverified,
            "L",
        )
        .err()
        .unwrap();
        assert_eq!(e.to_string(), "layer L: TOC entry 0 has no name");
    }
}

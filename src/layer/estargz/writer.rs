//! Converts a tar stream to eStargz.
//!
//! Tar headers pass through byte for byte (PAX, GNU long names and all), so
//! the unpacked tree is exactly the original's; only gzip member boundaries,
//! a landmark entry and the TOC are added. Every regular file's payload is
//! cut into chunks, each its own gzip member with its own digest.

use std::collections::HashSet;
use std::io::{self, Read, Write};

use flate2::Compression;
use flate2::write::GzEncoder;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::toc::{Toc, TocEntry};
use super::{NO_PREFETCH_LANDMARK, PREFETCH_LANDMARK, TOC_NAME, footer};
use crate::crypto::wipe::{self, SecretBuf};
use crate::layer::tarmeta::{Pending, Source, is_extension, walk_error};

/// What a conversion produced, besides the blob.
#[derive(Debug, Clone)]
pub struct Converted {
    /// `sha256:` of the TOC JSON.
    pub toc_digest: String,
    /// `sha256:` of the uncompressed tar: the layer's new diff ID.
    pub diff_id: String,
    pub uncompressed_size: u64,
    /// Number of TOC entries (files and chunks).
    pub entries: usize,
}

/// Converts the uncompressed tar `src` into eStargz on `out`.
pub fn convert<R: Read, W: Write>(src: R, out: W, chunk_size: u64) -> io::Result<(W, Converted)> {
    let mut w = Writer::new(out, chunk_size);
    w.landmark(NO_PREFETCH_LANDMARK)?;
    w.entries(src, |_| Pick::Take)?;
    w.finish()
}

/// Converts like [`convert`], with the regular files named in `prioritized`
/// (TOC names: no leading `/` or `./`) moved to the front and followed by
/// the prefetch landmark, so a lazy reader can fetch all of them in one
/// range before the workload asks. `open` is called twice: the first pass
/// takes the prioritized files, the second the rest.
pub fn convert_prioritized<R: Read, W: Write>(
    mut open: impl FnMut() -> io::Result<R>,
    out: W,
    chunk_size: u64,
    prioritized: &HashSet<String>,
) -> io::Result<(W, Converted)> {
    let mut w = Writer::new(out, chunk_size);
    let mut moved = HashSet::new();
    w.entries(open()?, |e| {
        if e.kind == "reg" && prioritized.contains(&e.name) {
            moved.insert(e.name.clone());
            Pick::Take
        } else {
            Pick::Skip
        }
    })?;
    if moved.is_empty() {
        w.landmark(NO_PREFETCH_LANDMARK)?;
    } else {
        w.landmark(PREFETCH_LANDMARK)?;
    }
    w.entries(open()?, |e| match moved.contains(&e.name) {
        false => Pick::Take,
        true if e.kind == "reg" => Pick::Skip,
        // Moving the file ahead of an entry that replaced (or was replaced
        // by) it would change what the layer unpacks to.
        true => Pick::Refuse,
    })?;
    w.finish()
}

/// What a pass does with an entry.
enum Pick {
    Take,
    Skip,
    Refuse,
}

/// The blob being written: gzip members, and the TOC that indexes them.
struct Writer<W: Write> {
    sink: GzSink<W>,
    toc: Toc,
    /// One chunk of a file's plaintext; wiped when the writer is dropped.
    buf: Zeroizing<Vec<u8>>,
    chunk_size: u64,
}

impl<W: Write> Writer<W> {
    fn new(out: W, chunk_size: u64) -> Self {
        Writer {
            sink: GzSink::new(out),
            toc: Toc {
                version: 1,
                entries: Vec::new(),
            },
            buf: Zeroizing::new(vec![0u8; chunk_size as usize]),
            chunk_size,
        }
    }

    /// Copies the entries of the tar `src` that `pick` takes, with their
    /// extension headers, chunking regular files.
    fn entries<R: Read>(
        &mut self,
        src: R,
        mut pick: impl FnMut(&TocEntry) -> Pick,
    ) -> io::Result<()> {
        // The tar parser's errors quote entry names: read through a
        // `Source` and passed through `walk_error`, they name none.
        let mut archive = tar::Archive::new(Source(src));
        let mut pending = Pending::default();
        // Extension headers (PAX, GNU long names) belong to the next entry:
        // they are written only if it is. They hold names: wiped.
        let mut ext = SecretBuf::default();
        for entry in archive.entries().map_err(walk_error)?.raw(true) {
            let mut e = entry.map_err(walk_error)?;
            let hdr = e.header().clone();
            let size = hdr.entry_size().map_err(walk_error)?;
            let kind = hdr.entry_type();
            if is_extension(kind) {
                let data = pending.absorb(kind, size, &mut e).map_err(walk_error)?;
                ext.extend_from_slice(hdr.as_bytes());
                ext.extend_from_slice(&data);
                let pad = ext.len().next_multiple_of(512) - ext.len();
                ext.extend_from_slice(&[0u8; 512][..pad]);
                continue;
            }
            let te = pending.entry(&hdr).map_err(walk_error)?;
            let ext = std::mem::take(&mut ext);
            if [TOC_NAME, NO_PREFETCH_LANDMARK, PREFETCH_LANDMARK].contains(&te.name.as_str()) {
                // Re-converting an eStargz layer: its old TOC and landmarks are replaced.
                continue;
            }
            match pick(&te) {
                Pick::Take => {}
                Pick::Skip => continue,
                Pick::Refuse => {
                    return Err(bad(format!(
                        "prioritized file {} also appears as a {} entry; it cannot be moved",
                        te.name, te.kind
                    )));
                }
            }
            self.sink.write(&ext)?;
            self.entry(te, &hdr, size, &mut e)?;
        }
        Ok(())
    }

    fn entry(
        &mut self,
        mut te: TocEntry,
        hdr: &tar::Header,
        size: u64,
        e: &mut impl Read,
    ) -> io::Result<()> {
        let (sink, chunk_size) = (&mut self.sink, self.chunk_size);
        sink.write(hdr.as_bytes())?;
        let regular = te.kind == "reg";
        if regular && size > 0 {
            let first = self.toc.entries.len();
            // A file in one chunk has its chunk digest as its digest: hash it once.
            let mut file_hash = (size > chunk_size).then(Sha256::new);
            let mut written = 0u64;
            while written < size {
                let n = (size - written).min(chunk_size);
                let chunk = &mut self.buf[..n as usize];
                e.read_exact(chunk).map_err(walk_error)?;
                if let Some(h) = file_hash.as_mut() {
                    h.update(&*chunk);
                }
                sink.close()?;
                let offset = sink.open()?;
                sink.write(chunk)?;
                let mut ce = if written == 0 {
                    te.clone()
                } else {
                    TocEntry {
                        name: te.name.clone(),
                        kind: "chunk".into(),
                        ..Default::default()
                    }
                };
                ce.offset = offset;
                ce.chunk_offset = written;
                ce.chunk_size = if written + n < size { n } else { 0 };
                ce.chunk_digest = format!("sha256:{}", hex::encode(Sha256::digest(&*chunk)));
                self.toc.entries.push(ce);
                written += n;
            }
            self.toc.entries[first].digest = match file_hash {
                Some(h) => format!("sha256:{}", hex::encode(h.finalize())),
                None => self.toc.entries[first].chunk_digest.clone(),
            };
        } else {
            // Links, devices, directories: no payload (or one we pass through as is).
            let mut payload = e.take(size);
            let mut block = [0u8; 512];
            loop {
                match payload.read(&mut block).map_err(walk_error)? {
                    0 => break,
                    n => sink.write(&block[..n])?,
                }
            }
            if regular {
                te.size = 0;
            }
            if !te.name.is_empty() {
                self.toc.entries.push(te);
            }
        }
        self.sink.pad(size)
    }

    fn landmark(&mut self, name: &str) -> io::Result<()> {
        write_landmark(&mut self.sink, &mut self.toc, name)
    }

    /// Writes the TOC and footer.
    fn finish(self) -> io::Result<(W, Converted)> {
        let Writer { mut sink, toc, .. } = self;
        // The TOC entry starts its own member and ends the archive.
        // The TOC lists every name: serialized into a buffer that is wiped.
        let toc_json = wipe::to_json(&toc).map_err(|e| bad(wipe::json_error(&e)))?;
        let toc_digest = format!("sha256:{}", hex::encode(Sha256::digest(&toc_json)));
        sink.close()?;
        let toc_offset = sink.open()?;
        let mut th = tar::Header::new_ustar();
        th.set_path(TOC_NAME)?;
        th.set_size(toc_json.len() as u64);
        th.set_mode(0o444);
        th.set_entry_type(tar::EntryType::Regular);
        th.set_mtime(0);
        th.set_cksum();
        sink.write(th.as_bytes())?;
        sink.write(&toc_json)?;
        sink.pad(toc_json.len() as u64)?;
        sink.write(&[0u8; 1024])?;
        sink.close()?;
        let entries = toc.entries.len();
        let (mut out, diff, uncompressed_size) = sink.into_inner();
        out.write_all(&footer::encode(toc_offset))?;
        Ok((
            out,
            Converted {
                toc_digest,
                diff_id: format!("sha256:{}", hex::encode(diff)),
                uncompressed_size,
                entries,
            },
        ))
    }
}

fn write_landmark<W: Write>(sink: &mut GzSink<W>, toc: &mut Toc, name: &str) -> io::Result<()> {
    let mut h = tar::Header::new_ustar();
    h.set_path(name)?;
    h.set_size(1);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mtime(0);
    h.set_cksum();
    sink.write(h.as_bytes())?;
    sink.close()?;
    let offset = sink.open()?;
    sink.write(&[0x0f])?;
    sink.pad(1)?;
    let d = format!("sha256:{}", hex::encode(Sha256::digest([0x0fu8])));
    toc.entries.push(TocEntry {
        name: name.into(),
        kind: "reg".into(),
        size: 1,
        mode: 0o100644,
        offset,
        digest: d.clone(),
        chunk_digest: d,
        ..Default::default()
    });
    Ok(())
}

fn bad(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("estargz: {msg}"))
}

/// Writes the concatenation of gzip members, hashing the uncompressed stream.
struct GzSink<W: Write> {
    out: Option<Counting<W>>,
    gz: Option<GzEncoder<Counting<W>>>,
    diff: Sha256,
    size: u64,
}

impl<W: Write> GzSink<W> {
    fn new(out: W) -> Self {
        GzSink {
            out: Some(Counting { inner: out, n: 0 }),
            gz: None,
            diff: Sha256::new(),
            size: 0,
        }
    }

    /// Starts a member if none is open; returns its compressed offset.
    fn open(&mut self) -> io::Result<u64> {
        if let Some(out) = self.out.take() {
            let at = out.n;
            self.gz = Some(GzEncoder::new(out, Compression::default()));
            return Ok(at);
        }
        Err(io::Error::other("estargz: a gzip member is already open"))
    }

    fn close(&mut self) -> io::Result<()> {
        if let Some(gz) = self.gz.take() {
            self.out = Some(gz.finish()?);
        }
        Ok(())
    }

    fn write(&mut self, b: &[u8]) -> io::Result<()> {
        if self.gz.is_none() {
            self.open()?;
        }
        self.diff.update(b);
        self.size += b.len() as u64;
        self.gz.as_mut().expect("open member").write_all(b)
    }

    /// Pads a payload of `n` bytes to the 512-byte tar block.
    fn pad(&mut self, n: u64) -> io::Result<()> {
        let rem = (512 - n % 512) % 512;
        self.write(&[0u8; 512][..rem as usize])
    }

    fn into_inner(mut self) -> (W, [u8; 32], u64) {
        let _ = self.close();
        let out = self.out.take().expect("closed").inner;
        (out, self.diff.finalize().into(), self.size)
    }
}

struct Counting<W> {
    inner: W,
    n: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        let k = self.inner.write(b)?;
        self.n += k as u64;
        Ok(k)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use base64::Engine;
    use base64::engine::general_purpose::STANDARD as B64;

    use super::super::reader;
    use super::*;

    fn sample_tar() -> (Vec<u8>, Vec<u8>) {
        let big: Vec<u8> = (0..10_000u32).map(|i| (i * 31 % 251) as u8).collect();
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        b.append_data(&mut h, "./etc/", &[][..]).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o640);
        h.set_uid(1000);
        h.set_mtime(1_566_297_043);
        h.set_size(big.len() as u64);
        b.append_data(&mut h, "./etc/big.bin", &big[..]).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_size(0);
        b.append_data(&mut h, "./etc/empty", &[][..]).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, "./etc/link", "big.bin").unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Link);
        h.set_size(0);
        b.append_link(&mut h, "./etc/hard", "./etc/big.bin")
            .unwrap();
        let long = format!("./etc/{}/file", "d".repeat(150));
        b.append_pax_extensions([
            ("path", long.as_bytes()),
            ("SCHILY.xattr.user.k", b"v\x00x".as_slice()),
        ])
        .unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_path("./etc/placeholder").unwrap();
        h.set_size(3);
        h.set_cksum();
        b.append(&h, &b"abc"[..]).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Fifo);
        h.set_size(0);
        b.append_data(&mut h, "./etc/fifo", &[][..]).unwrap();
        (b.into_inner().unwrap(), big)
    }

    fn sha(s: &str) -> crate::layer::verified::Sha256Digest {
        crate::layer::verified::Sha256Digest::parse(s).expect("a chunk digest")
    }

    #[test]
    fn converted_blob_is_a_tar_gz_with_the_same_entries_and_a_verifiable_toc() {
        let (tar_bytes, big) = sample_tar();
        let (blob, c) = convert(&tar_bytes[..], Vec::new(), 4096).unwrap();

        // An ordinary gzip reader sees one tar: the original entries plus landmark and TOC.
        let mut plain = Vec::new();
        flate2::read::MultiGzDecoder::new(&blob[..])
            .read_to_end(&mut plain)
            .unwrap();
        assert_eq!(
            format!("sha256:{}", hex::encode(Sha256::digest(&plain))),
            c.diff_id
        );
        assert_eq!(plain.len() as u64, c.uncompressed_size);
        let mut names = Vec::new();
        for e in tar::Archive::new(&plain[..]).entries().unwrap() {
            let mut e = e.unwrap();
            let name = e.path().unwrap().to_string_lossy().into_owned();
            if name.ends_with("big.bin") {
                let mut data = Vec::new();
                e.read_to_end(&mut data).unwrap();
                assert_eq!(data, big);
            }
            if name.ends_with("/file") {
                let pax = e
                    .pax_extensions()
                    .unwrap()
                    .expect("the PAX header passes through");
                let xattr = pax
                    .map(|x| x.unwrap())
                    .find(|x| x.key().unwrap() == "SCHILY.xattr.user.k")
                    .unwrap();
                assert_eq!(xattr.value_bytes(), b"v\x00x");
            }
            names.push(name);
        }
        assert_eq!(names.first().unwrap(), NO_PREFETCH_LANDMARK);
        assert_eq!(names.last().unwrap(), TOC_NAME);
        assert!(
            names.iter().any(|n| n.len() > 150 && n.ends_with("/file")),
            "{names:?}"
        );

        // The footer finds the TOC; the TOC finds and verifies every chunk.
        let off = reader::toc_offset(&blob[blob.len() - 51..]).unwrap();
        let (toc, digest) = reader::parse_toc_member(&blob[off as usize..blob.len() - 51]).unwrap();
        assert_eq!(digest, c.toc_digest);
        let chunks: Vec<&TocEntry> = toc
            .entries
            .iter()
            .filter(|e| e.name == "etc/big.bin")
            .collect();
        assert_eq!(chunks.len(), 3, "10000 bytes in 4096-byte chunks");
        assert_eq!(
            (chunks[0].kind.as_str(), chunks[1].kind.as_str()),
            ("reg", "chunk")
        );
        assert_eq!(
            (
                chunks[0].chunk_size,
                chunks[1].chunk_size,
                chunks[2].chunk_size
            ),
            (4096, 4096, 0)
        );
        assert_eq!(chunks[0].size, 10_000);
        assert_eq!(chunks[0].mod_time, "2019-08-20T10:30:43Z");
        assert_eq!(chunks[0].mode, 0o100640);
        assert_eq!(
            chunks[0].digest,
            format!("sha256:{}", hex::encode(Sha256::digest(&big)))
        );
        let mut rebuilt = Vec::new();
        for ch in &chunks {
            let len = if ch.chunk_size == 0 {
                10_000 - ch.chunk_offset
            } else {
                ch.chunk_size
            };
            rebuilt.extend_from_slice(
                &reader::inflate_chunk(&blob[ch.offset as usize..], len, &sha(&ch.chunk_digest))
                    .unwrap(),
            );
        }
        assert_eq!(rebuilt, big);
        let kinds: BTreeMap<&str, &TocEntry> =
            toc.entries.iter().map(|e| (e.name.as_str(), e)).collect();
        assert_eq!(kinds["etc"].kind, "dir");
        assert_eq!(kinds["etc/link"].link_name, "big.bin");
        assert_eq!(kinds["etc/hard"].link_name, "etc/big.bin");
        assert_eq!(kinds["etc/fifo"].kind, "fifo");
        assert_eq!(kinds["etc/empty"].size, 0);
        let long = kinds.keys().find(|k| k.ends_with("/file")).unwrap();
        assert_eq!(kinds[long].xattrs["user.k"], B64.encode(b"v\x00x"));

        // A tampered chunk is refused.
        let mut evil = blob.clone();
        let at = chunks[1].offset as usize + 20;
        evil[at] ^= 0xff;
        assert!(
            reader::inflate_chunk(
                &evil[chunks[1].offset as usize..],
                4096,
                &sha(&chunks[1].chunk_digest)
            )
            .is_err()
        );
    }

    #[test]
    fn reconverting_replaces_the_old_toc_and_landmark() {
        let (tar_bytes, _) = sample_tar();
        let (blob, first) = convert(&tar_bytes[..], Vec::new(), 4096).unwrap();
        let mut plain = Vec::new();
        flate2::read::MultiGzDecoder::new(&blob[..])
            .read_to_end(&mut plain)
            .unwrap();
        let (_, second) = convert(&plain[..], Vec::new(), 4096).unwrap();
        assert_eq!(second.entries, first.entries);
    }

    #[test]
    fn a_malformed_header_names_no_entry() {
        let (mut t, _) = sample_tar();
        // A size field that is no number, under a valid checksum: tar's own
        // error would end in "when getting size for NAME".
        t[124..136].copy_from_slice(b"12x45678901\0");
        let mut h = tar::Header::from_byte_slice(&t[..512]).clone();
        assert!(!h.path_bytes().is_empty());
        h.set_cksum();
        t[..512].copy_from_slice(h.as_bytes());
        let e = convert(&t[..], Vec::new(), 4096).err().unwrap().to_string();
        assert_eq!(e, "tar: an entry header is malformed");
    }

    /// Entry names and regular files' contents, in archive order.
    fn listing(blob: &[u8]) -> Vec<(String, Vec<u8>)> {
        let mut plain = Vec::new();
        flate2::read::MultiGzDecoder::new(blob)
            .read_to_end(&mut plain)
            .unwrap();
        tar::Archive::new(&plain[..])
            .entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let name = e.path().unwrap().to_string_lossy().into_owned();
                let mut data = Vec::new();
                e.read_to_end(&mut data).unwrap();
                (name, data)
            })
            .collect()
    }

    #[test]
    fn prioritized_files_come_first_then_the_landmark_and_the_tree_is_the_same() {
        let (tar_bytes, _) = sample_tar();
        // The long name comes from a PAX header, which must move with its entry.
        let long = format!("etc/{}/file", "d".repeat(150));
        let set: HashSet<String> =
            ["etc/big.bin".to_string(), long, "etc/missing".to_string()].into();
        let mut opened = 0;
        let (blob, c) = convert_prioritized(
            || {
                opened += 1;
                Ok(&tar_bytes[..])
            },
            Vec::new(),
            4096,
            &set,
        )
        .unwrap();
        assert_eq!(
            opened, 2,
            "one pass for the prioritized files, one for the rest"
        );
        let got = listing(&blob);
        let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names[0], "etc/big.bin");
        assert!(
            names[1].ends_with("/file") && names[1].len() > 150,
            "{names:?}"
        );
        assert_eq!(names[2], PREFETCH_LANDMARK);
        assert_eq!(names.last().copied(), Some(TOC_NAME));

        // The same entries and contents as the plain conversion, moved.
        let (plain_blob, plain) = convert(&tar_bytes[..], Vec::new(), 4096).unwrap();
        let strip = |v: Vec<(String, Vec<u8>)>| {
            let mut v: Vec<_> = v
                .into_iter()
                .filter(|(n, _)| {
                    ![PREFETCH_LANDMARK, NO_PREFETCH_LANDMARK, TOC_NAME].contains(&n.as_str())
                })
                .collect();
            v.sort();
            v
        };
        assert_eq!(strip(got), strip(listing(&plain_blob)));
        assert_eq!(c.entries, plain.entries);

        // The TOC finds every chunk where the writer put it.
        let off = reader::toc_offset(&blob[blob.len() - 51..]).unwrap();
        let (toc, _) = reader::parse_toc_member(&blob[off as usize..blob.len() - 51]).unwrap();
        let landmark = toc
            .entries
            .iter()
            .find(|e| e.name == PREFETCH_LANDMARK)
            .unwrap();
        for e in toc.entries.iter().filter(|e| e.offset > 0) {
            let moved = e.name == "etc/big.bin" || e.name.ends_with("/file");
            assert_eq!(e.offset < landmark.offset, moved, "{}", e.name);
        }
    }

    #[test]
    fn a_list_naming_nothing_in_the_layer_changes_nothing() {
        let (tar_bytes, _) = sample_tar();
        let set: HashSet<String> = ["usr/bin/python3".to_string()].into();
        let (blob, _) = convert_prioritized(|| Ok(&tar_bytes[..]), Vec::new(), 4096, &set).unwrap();
        let (plain, _) = convert(&tar_bytes[..], Vec::new(), 4096).unwrap();
        assert_eq!(blob, plain);
    }

    #[test]
    fn a_prioritized_file_that_another_entry_replaces_is_refused() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(3);
        b.append_data(&mut h, "app/x", &b"abc"[..]).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_size(0);
        b.append_data(&mut h, "app/x/", &[][..]).unwrap();
        let t = b.into_inner().unwrap();
        let set: HashSet<String> = ["app/x".to_string()].into();
        let err = convert_prioritized(|| Ok(&t[..]), Vec::new(), 4096, &set)
            .err()
            .unwrap()
            .to_string();
        assert_eq!(
            err,
            "estargz: prioritized file app/x also appears as a dir entry; it cannot be moved"
        );
    }
}

//! Reading eStargz pieces: the TOC member and single chunk members.
//! Each function takes the bytes of one member, so callers can fetch
//! exactly those bytes with a range read.

use std::io::{self, BufRead, Read};

use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::toc::{MAX_TOC_ENTRIES, Toc};
use super::{TOC_NAME, footer};
use crate::layer::index::chunk_buffer;
use crate::layer::verified::{Hashing, Sha256Digest, Verified};

/// Bytes inflated between digest updates.
const PIECE: usize = 64 << 10;

/// Most TOC JSON we accept (a TOC for 100k files is ~30 MiB), and most
/// bytes the TOC member (from the footer's TOC offset to the footer) may
/// take in the blob.
pub const MAX_TOC: u64 = 256 << 20;

fn bad(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("estargz: {msg}"))
}

/// The TOC offset from the blob's last 51 bytes.
pub fn toc_offset(footer_bytes: &[u8]) -> io::Result<u64> {
    footer::decode(footer_bytes).map_err(bad)
}

/// The TOC JSON of a TOC member (from the TOC offset up to the footer),
/// unparsed, and its `sha256:` digest: what an anchor is compared with
/// before a byte of it is parsed.
pub fn toc_json(member: &[u8]) -> io::Result<(Zeroizing<Vec<u8>>, Sha256Digest)> {
    let mut gz = flate2::read::GzDecoder::new(member);
    let mut header = [0u8; 512];
    gz.read_exact(&mut header)
        .map_err(|e| bad(format!("TOC tar header: {e}")))?;
    let h = tar::Header::from_byte_slice(&header);
    // The entry's name is decrypted data: compared, never printed.
    if crate::layer::tarmeta::clean(&String::from_utf8_lossy(&h.path_bytes())) != TOC_NAME {
        return Err(bad(format!("the last entry is not {TOC_NAME}")));
    }
    let size = h.entry_size()?;
    if size > MAX_TOC {
        return Err(bad(format!(
            "TOC of {size} bytes is over the {MAX_TOC}-byte limit"
        )));
    }
    let mut json = Zeroizing::new(Vec::with_capacity(size as usize));
    (&mut gz).take(size).read_to_end(&mut json)?;
    if json.len() as u64 != size {
        return Err(bad("TOC is truncated".into()));
    }
    let digest = Sha256Digest(Sha256::digest(&json[..]).into());
    Ok((json, digest))
}

/// Parses TOC JSON that matched its anchor. Errors give the JSON position,
/// never the values there (file names are plaintext).
pub fn parse_toc(json: &Verified) -> io::Result<Toc> {
    let toc: Toc = serde_json::from_slice(json.bytes()).map_err(|e| {
        bad(format!(
            "TOC is not valid ({:?} error at line {} column {})",
            e.classify(),
            e.line(),
            e.column()
        ))
    })?;
    if toc.version != 1 {
        return Err(bad(format!("TOC version {} (want 1)", toc.version)));
    }
    if toc.entries.len() > MAX_TOC_ENTRIES {
        return Err(bad(format!(
            "TOC lists more than {MAX_TOC_ENTRIES} entries"
        )));
    }
    Ok(toc)
}

/// Parses a TOC member whose bytes are trusted without an anchor (our own
/// converter's output, tools, tests); returns the TOC and its JSON digest.
/// Never for bytes from a registry: those go through [`toc_json`], an
/// anchor check, then [`parse_toc`].
pub fn parse_toc_member(member: &[u8]) -> io::Result<(Toc, String)> {
    let (json, digest) = toc_json(member)?;
    let json = Verified::check(json, &digest).map_err(|_| bad("TOC changed".into()))?;
    Ok((parse_toc(&json)?, digest.to_string()))
}

/// Reads past a gzip member header (RFC 1952, section 2.3).
fn skip_gzip_header<R: BufRead>(r: &mut R) -> io::Result<()> {
    let mut fixed = [0u8; 10];
    r.read_exact(&mut fixed)?;
    if fixed[..3] != [0x1f, 0x8b, 8] {
        return Err(bad("chunk is not a gzip member".into()));
    }
    let flags = fixed[3];
    if flags & 0x04 != 0 {
        let mut xlen = [0u8; 2];
        r.read_exact(&mut xlen)?;
        io::copy(
            &mut r.take(u64::from(u16::from_le_bytes(xlen))),
            &mut io::sink(),
        )?;
    }
    for field in [0x08, 0x10] {
        if flags & field != 0 {
            let mut text = Vec::new();
            r.read_until(0, &mut text)?;
        }
    }
    if flags & 0x02 != 0 {
        r.read_exact(&mut [0u8; 2])?;
    }
    Ok(())
}

/// Inflates `len` bytes from a chunk's gzip member; they are served only if
/// they match `chunk_digest`.
pub fn inflate_chunk<R: BufRead>(
    member: R,
    len: u64,
    chunk_digest: &Sha256Digest,
) -> io::Result<Verified> {
    let len = usize::try_from(len).map_err(|_| bad(format!("chunk of {len} bytes")))?;
    // Zeroizing from the start: a chunk that fails its check is plaintext too.
    let mut out = Hashing::from(chunk_buffer(len));
    let mut member = member;
    skip_gzip_header(&mut member)?;
    // Raw inflate: the gzip CRC would be a second checksum pass over data
    // the SHA-256 vouches for.
    let mut gz = flate2::bufread::DeflateDecoder::new(member);
    // Each piece is hashed while it is still in the core's cache.
    while out.filled() < len {
        if out.fill(PIECE, |piece| gz.read(piece))? == 0 {
            return Err(bad(format!(
                "chunk is short: {} of {len} bytes",
                out.filled()
            )));
        }
    }
    out.finish(chunk_digest).map_err(|m| {
        bad(format!(
            "chunk digest {} does not match the TOC's {chunk_digest}",
            m.got
        ))
    })
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn member(b: flate2::GzBuilder, data: &[u8]) -> Vec<u8> {
        let mut e = b.write(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn chunks_inflate_past_any_optional_gzip_header_fields() {
        let data = b"some chunk bytes ".repeat(10_000);
        let digest = Sha256Digest(Sha256::digest(&data).into());
        let len = data.len() as u64;
        for b in [
            flate2::GzBuilder::new(),
            flate2::GzBuilder::new()
                .filename("name")
                .comment("comment")
                .extra(vec![1, 2, 3]),
        ] {
            let m = member(b, &data);
            assert_eq!(
                inflate_chunk(&m[..], len, &digest).unwrap().bytes(),
                &data[..]
            );
        }
        let m = member(flate2::GzBuilder::new(), &data);
        let e = inflate_chunk(&m[..], len + 1, &digest).unwrap_err();
        assert!(e.to_string().contains("chunk is short"), "{e}");
        let e = inflate_chunk(&m[1..], len, &digest).unwrap_err();
        assert!(e.to_string().contains("not a gzip member"), "{e}");
        let mut evil = m.clone();
        let mid = evil.len() / 2;
        evil[mid] ^= 1;
        assert!(inflate_chunk(&evil[..], len, &digest).is_err());
    }

    fn toc_tar_member(size: u64, json: &[u8]) -> Vec<u8> {
        let mut h = tar::Header::new_gnu();
        h.set_path(TOC_NAME).unwrap();
        h.set_size(size);
        h.set_cksum();
        let mut tar = h.as_bytes().to_vec();
        tar.extend_from_slice(json);
        member(flate2::GzBuilder::new(), &tar)
    }

    /// A TOC entry claiming 2^62 bytes is refused before a byte is reserved.
    #[test]
    fn a_toc_header_claiming_a_huge_toc_is_refused() {
        let e = toc_json(&toc_tar_member(1 << 62, b"{}")).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "estargz: TOC of {} bytes is over the {MAX_TOC}-byte limit",
                1u64 << 62
            )
        );
    }

    /// A TOC of more entries than the limit is refused while it is parsed,
    /// keeping no more than the limit's worth of them.
    #[test]
    fn a_toc_of_too_many_entries_is_refused() {
        let toc = |n: usize| {
            let mut json = br#"{"version":1,"entries":["#.to_vec();
            for i in 0..n {
                if i > 0 {
                    json.push(b',');
                }
                json.extend_from_slice(br#"{"name":"","type":"dir"}"#);
            }
            json.extend_from_slice(b"]}");
            let digest = Sha256Digest(Sha256::digest(&json).into());
            parse_toc(&Verified::check(Zeroizing::new(json), &digest).unwrap())
        };
        let e = toc(MAX_TOC_ENTRIES + 1).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("estargz: TOC lists more than {MAX_TOC_ENTRIES} entries")
        );
        assert_eq!(toc(3).unwrap().entries.len(), 3);
    }

    /// A TOC whose values are wrong is refused by position: a file name in
    /// it is plaintext and must not reach the error.
    #[test]
    fn toc_errors_name_no_value() {
        let json = br#"{"version":1,"entries":[{"name":"secret-name","type":7}]}"#;
        let mut tar = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(json.len() as u64);
        tar.append_data(&mut h, TOC_NAME, &json[..]).unwrap();
        let m = member(flate2::GzBuilder::new(), &tar.into_inner().unwrap());
        let e = parse_toc_member(&m).unwrap_err().to_string();
        assert!(e.contains("line 1 column") && !e.contains("secret"), "{e}");
        let mut tar = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        tar.append_data(&mut h, "secret-entry", &b"x"[..]).unwrap();
        let m = member(flate2::GzBuilder::new(), &tar.into_inner().unwrap());
        let e = parse_toc_member(&m).unwrap_err().to_string();
        assert!(!e.contains("secret"), "{e}");
    }
}

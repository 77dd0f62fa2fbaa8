//! Reading eStargz pieces: the TOC member and single chunk members.
//! Each function takes the bytes of one member, so callers can fetch
//! exactly those bytes with a range read.

use std::io::{self, BufRead, Read};

use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::toc::Toc;
use super::{TOC_NAME, footer};
use crate::layer::index::chunk_buffer;

/// Bytes inflated between digest updates.
const PIECE: usize = 64 << 10;

/// Most TOC JSON we accept (a TOC for 100k files is ~30 MiB).
pub const MAX_TOC: u64 = 256 << 20;

fn bad(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("estargz: {msg}"))
}

/// The TOC offset from the blob's last 51 bytes.
pub fn toc_offset(footer_bytes: &[u8]) -> io::Result<u64> {
    footer::decode(footer_bytes).map_err(bad)
}

/// Parses the TOC member (from the TOC offset up to the footer); returns the
/// TOC and the `sha256:` digest of its JSON.
pub fn parse_toc_member(member: &[u8]) -> io::Result<(Toc, String)> {
    let mut gz = flate2::read::GzDecoder::new(member);
    let mut header = [0u8; 512];
    gz.read_exact(&mut header)
        .map_err(|e| bad(format!("TOC tar header: {e}")))?;
    let h = tar::Header::from_byte_slice(&header);
    let name = String::from_utf8_lossy(&h.path_bytes()).into_owned();
    if crate::layer::tarmeta::clean(&name) != TOC_NAME {
        // The name is decrypted data: it stays out of the message.
        return Err(bad(format!("last entry is not {TOC_NAME}")));
    }
    let size = h.entry_size()?;
    if size > MAX_TOC {
        return Err(bad(format!("TOC of {size} bytes is too large")));
    }
    let mut json = Vec::with_capacity(size as usize);
    (&mut gz).take(size).read_to_end(&mut json)?;
    if json.len() as u64 != size {
        return Err(bad("TOC is truncated".into()));
    }
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(&json)));
    let toc: Toc =
        serde_json::from_slice(&json).map_err(|e| bad(format!("TOC is not valid JSON: {e}")))?;
    if toc.version != 1 {
        return Err(bad(format!("TOC version {} (want 1)", toc.version)));
    }
    Ok((toc, digest))
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

/// Inflates `len` bytes from a chunk's gzip member and checks its digest.
pub fn inflate_chunk<R: BufRead>(
    member: R,
    len: u64,
    chunk_digest: &str,
) -> io::Result<Zeroizing<Vec<u8>>> {
    let len = usize::try_from(len).map_err(|_| bad(format!("chunk of {len} bytes")))?;
    // Zeroizing from the start: a chunk that fails its check is plaintext too.
    let mut out = chunk_buffer(len);
    let mut member = member;
    skip_gzip_header(&mut member)?;
    // Raw inflate: the gzip CRC would be a second checksum pass over data
    // the SHA-256 below already vouches for.
    let mut gz = flate2::bufread::DeflateDecoder::new(member);
    let mut hasher = Sha256::new();
    let mut at = 0;
    // Hash each piece while it is still in the core's cache.
    while at < len {
        let n = gz.read(&mut out[at..len.min(at + PIECE)])?;
        if n == 0 {
            return Err(bad(format!("chunk is short: {at} of {len} bytes")));
        }
        hasher.update(&out[at..at + n]);
        at += n;
    }
    let got = format!("sha256:{}", hex::encode(hasher.finalize()));
    if got != chunk_digest {
        return Err(bad(format!(
            "chunk digest {got} does not match the TOC's {chunk_digest}"
        )));
    }
    Ok(out)
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
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&data)));
        let len = data.len() as u64;
        for b in [
            flate2::GzBuilder::new(),
            flate2::GzBuilder::new()
                .filename("name")
                .comment("comment")
                .extra(vec![1, 2, 3]),
        ] {
            let m = member(b, &data);
            assert_eq!(&inflate_chunk(&m[..], len, &digest).unwrap()[..], &data[..]);
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
}

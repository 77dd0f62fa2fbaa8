//! Reading eStargz pieces: the TOC member and single chunk members.
//! Each function takes the bytes of one member, so callers can fetch
//! exactly those bytes with a range read.

use std::io::{self, Read};

use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::toc::Toc;
use super::{TOC_NAME, footer};

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
        return Err(bad(format!("last entry is {name:?}, not {TOC_NAME}")));
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

/// Inflates `len` bytes from a chunk's gzip member and checks its digest.
pub fn inflate_chunk(
    member: &[u8],
    len: u64,
    chunk_digest: &str,
) -> io::Result<Zeroizing<Vec<u8>>> {
    // Zeroizing from the start: a chunk that fails its check is plaintext too.
    let mut out = Zeroizing::new(Vec::with_capacity(len as usize));
    flate2::read::GzDecoder::new(member)
        .take(len)
        .read_to_end(&mut out)?;
    if out.len() as u64 != len {
        return Err(bad(format!("chunk is short: {} of {len} bytes", out.len())));
    }
    let got = format!("sha256:{}", hex::encode(Sha256::digest(&out)));
    if got != chunk_digest {
        return Err(bad(format!(
            "chunk digest {got} does not match the TOC's {chunk_digest}"
        )));
    }
    Ok(out)
}

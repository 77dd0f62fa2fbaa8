//! The background check for a layer served through a seek index
//! (docs/seek-index.md §9): the index is vouched for only by its seal,
//! which any holder of the layer key can make, so the whole blob the
//! manifest pins is streamed once and everything the index let a reader
//! trust is rebuilt from it and compared: span digests, piece digests, the
//! tar stream's length and the entries.

use std::cell::Cell;
use std::io::{self, Read};
use std::rc::Rc;
use std::sync::Mutex;

use sha2::{Digest as _, Sha256};

use super::entries;
use crate::layer::index::{Unmetered, Vouched};
use crate::layer::stream::gzip::GzReader;
use crate::layer::stream::{CHUNK, ChunkHasher, Compression, walk};
use crate::oci::chain::Chain;

/// Hashes what passes through it (the tar stream: the diff ID).
/// Passes at most `left` bytes: a blob that inflates past what the index
/// said (a bomb behind a lying index) is stopped there, and `over` set,
/// rather than walked and hashed to its end.
struct Tee<R> {
    inner: R,
    hasher: Sha256,
    left: u64,
    over: Rc<Cell<bool>>,
}

impl<R: Read> Read for Tee<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            // One byte more tells a longer stream from one that ends here
            // (and lets the reader below check the blob at its end).
            if self.inner.read(&mut [0u8; 1])? > 0 {
                self.over.set(true);
            }
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.hasher.update(&buf[..n]);
        self.left -= n as u64;
        Ok(n)
    }
}

/// Streams `plain` (the layer's compressed plaintext, whose ciphertext's
/// digest keeps its chaining values in `spans` as it is read, made with
/// the vouched span size) to its end. Returns the diff ID and, if the blob is not what the index said,
/// the first difference found (one line, naming no file).
pub fn compare<R: Read>(
    plain: R,
    compression: Compression,
    spans: &Mutex<Chain>,
    vouched: &Vouched,
    what: &str,
) -> io::Result<(String, Option<String>)> {
    let stream: Box<dyn Read + '_> = match compression {
        Compression::Gzip => Box::new(GzReader::new(plain, None)),
        Compression::None => Box::new(plain),
        Compression::Zstd => return Err(io::Error::other("zstd layers have no seek index")),
    };
    let over = Rc::new(Cell::new(false));
    let tee = Tee {
        inner: stream,
        hasher: Sha256::new(),
        left: vouched.uncompressed,
        over: over.clone(),
    };
    let longer = || {
        format!(
            "its tar stream is longer than the {} bytes the seek index said",
            vouched.uncompressed
        )
    };
    let hasher = ChunkHasher::with_unit(tee, u64::from(vouched.piece), &Unmetered, what);
    let (nodes, hasher) = match walk(hasher, what) {
        Ok(w) => w,
        Err(_) if over.get() => return Ok((String::new(), Some(longer()))),
        Err(e) => return Err(e),
    };
    let (pieces, total, tee) = hasher.finish()?;
    if over.get() {
        return Ok((String::new(), Some(longer())));
    }
    let diff_id = format!("sha256:{}", hex::encode(tee.hasher.finalize()));
    let (got_spans, _) = crate::sync::lock(spans).values();
    let why = if total != vouched.uncompressed {
        Some(format!(
            "its tar stream is {total} bytes, the seek index said {}",
            vouched.uncompressed
        ))
    } else if let Some(i) = first_difference(&got_spans, &vouched.spans) {
        Some(format!(
            "ciphertext span {i} is not what the seek index said"
        ))
    } else if let Some(k) = first_difference(&pieces, &vouched.pieces) {
        Some(format!(
            "tar stream piece {k} is not what the seek index said"
        ))
    } else {
        // The served entries were decoded from the section vouched for;
        // the encoding is canonical, so the same bytes mean the same
        // entries.
        match entries::encode(&nodes, CHUNK) {
            Ok(ours) if Sha256::digest(&*ours)[..] == vouched.entries[..] => None,
            _ => Some("its entries are not the ones its tar headers make".into()),
        }
    };
    Ok((diff_id, why))
}

/// The first place two digest lists differ, counting a length difference.
fn first_difference(a: &[[u8; 32]], b: &[[u8; 32]]) -> Option<usize> {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .or((a.len() != b.len()).then_some(a.len().min(b.len())))
}

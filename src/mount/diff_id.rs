//! A layer's diff ID, computed the way containerd's unpacker checks it: the
//! sha256 of the whole uncompressed (and decrypted) tar stream. A lazily
//! mounted layer is never unpacked, so this is how lazycrypt binds it to
//! the diff ID its image config claims (the name containerd gives it).

use std::io::{self, Read};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

use super::open::{Blob, OpenOptions};
use crate::crypto::recipient::KeyRing;
use crate::layer::index::Vouched;
use crate::layer::seekindex::check;
use crate::layer::stream::Compression;
use crate::oci::Descriptor;
use crate::oci::chain::Chain;
use crate::oci::transport::ImageSource;

/// Streams layer `desc` whole (from the ciphertext cache where it is there;
/// what is fetched is stored as it passes, so the layer's reads need no
/// network afterwards), checks its digest and HMAC, decompresses it and
/// returns the `sha256:` digest of the tar stream. At most `rate` bytes of
/// blob a second: a background check must leave the link to the containers.
pub fn diff_id(
    src: Arc<dyn ImageSource>,
    desc: &Descriptor,
    ring: &KeyRing,
    opts: &OpenOptions,
    rate: Option<u64>,
) -> io::Result<String> {
    let blob = Blob::open(src, desc, ring, opts)?;
    let plain = Throttled::new(blob.whole()?, rate);
    let result = hash_tar(plain, blob.compression);
    match &result {
        Ok(_) => blob.disk.mark_complete()?,
        Err(_) => blob.disk.forget()?,
    }
    result.map_err(|e| io::Error::new(e.kind(), format!("layer {}: {e}", blob.what)))
}

/// [`diff_id`], and for a layer served through a seek index (`vouched`:
/// what the index vouched for, its entries among it), the first way
/// the blob differs from what the index said, if any
/// (docs/seek-index.md §9).
pub fn diff_id_checking(
    src: Arc<dyn ImageSource>,
    desc: &Descriptor,
    ring: &KeyRing,
    opts: &OpenOptions,
    rate: Option<u64>,
    vouched: Option<&Vouched>,
) -> io::Result<(String, Option<String>)> {
    let Some(vouched) = vouched else {
        return diff_id(src, desc, ring, opts, rate).map(|d| (d, None));
    };
    let blob = Blob::open(src, desc, ring, opts)?;
    let spans = Arc::new(Mutex::new(Chain::new(vouched.span)));
    let plain = Throttled::new(blob.whole_tapped(Some(spans.clone()))?, rate);
    let result = check::compare(plain, blob.compression, &spans, vouched, &blob.what);
    match &result {
        Ok(_) => blob.disk.mark_complete()?,
        Err(_) => blob.disk.forget()?,
    }
    result.map_err(|e| io::Error::new(e.kind(), format!("layer {}: {e}", blob.what)))
}

/// The sha256 of what `r` decompresses to.
fn hash_tar(r: impl Read, compression: Compression) -> io::Result<String> {
    let mut r: Box<dyn Read> = match compression {
        // eStargz and other concatenated members: containerd reads them all.
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(io::BufReader::new(r))),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(r)?),
        Compression::None => Box::new(r),
    };
    let mut h = Sha256::new();
    let mut buf = Zeroizing::new(vec![0u8; 256 << 10]);
    loop {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => h.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(format!("sha256:{}", hex::encode(h.finalize())))
}

/// A reader kept under `rate` bytes a second (on average since its start).
struct Throttled<R> {
    inner: R,
    rate: Option<u64>,
    start: Instant,
    read: u64,
}

impl<R> Throttled<R> {
    fn new(inner: R, rate: Option<u64>) -> Self {
        Throttled {
            inner,
            rate: rate.filter(|&r| r > 0),
            start: Instant::now(),
            read: 0,
        }
    }
}

impl<R: Read> Read for Throttled<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        if let Some(rate) = self.rate {
            let due = Duration::from_secs_f64(self.read as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(self.start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_ids_are_digests_of_the_whole_uncompressed_stream() {
        let tar = b"member one, ".repeat(1000);
        let want = format!("sha256:{}", hex::encode(Sha256::digest(&tar)));
        // Two gzip members, as eStargz has many.
        let mut gz = Vec::new();
        for half in [&tar[..5000], &tar[5000..]] {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            std::io::Write::write_all(&mut e, half).unwrap();
            gz.extend(e.finish().unwrap());
        }
        assert_eq!(hash_tar(&gz[..], Compression::Gzip).unwrap(), want);
        let zst = zstd::encode_all(&tar[..], 1).unwrap();
        assert_eq!(hash_tar(&zst[..], Compression::Zstd).unwrap(), want);
        assert_eq!(hash_tar(&tar[..], Compression::None).unwrap(), want);
        assert!(hash_tar(&gz[..gz.len() - 3], Compression::Gzip).is_err());
    }

    #[test]
    fn a_throttled_reader_keeps_to_its_rate() {
        let data = vec![7u8; 64 << 10];
        let started = Instant::now();
        let mut t = Throttled::new(&data[..], Some(256 << 10));
        io::copy(&mut t, &mut io::sink()).unwrap();
        // 64 KiB at 256 KiB/s: at least a quarter of a second.
        assert!(started.elapsed() >= Duration::from_millis(240));
    }
}

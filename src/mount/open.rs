//! Opens one layer of an image for lazy serving: unwraps its key, picks the
//! reader its format allows (anchored eStargz, or the stream index), and puts
//! the ciphertext disk cache under it.

use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::Arc;

use zeroize::Zeroizing;

use crate::cache::blobs::DiskRange;
use crate::cache::chunks::Reservation;
use crate::crypto::cipher::LayerKey;
use crate::crypto::envelope::layer_keys;
use crate::crypto::recipient::KeyRing;
use crate::layer::estargz::TOC_DIGEST_ANNOTATION;
use crate::layer::estargz::lazy::{self, Anchor};
use crate::layer::estargz::reader::toc_json;
use crate::layer::index::Layer;
use crate::layer::source::{BlobRange, RangeSource};
use crate::layer::stream::sealed::Scratch;
use crate::layer::stream::{self, Compression, Plain};
use crate::mount::seek::{self, Found, LayerBlob};
use crate::oci::chain::Chain;
use crate::oci::digest::VerifyingReader;
use crate::oci::transport::ImageSource;
use crate::oci::{Descriptor, media};

/// How layers are opened.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// Where ciphertext blobs are cached (`<dir>/sha256/<hex>.data`).
    pub cache_dir: PathBuf,
    /// Where zstd layers' sealed copies go, and the disk they may take.
    pub scratch: Scratch,
    /// Serve eStargz layers with no TOC anchor before their whole blob is
    /// verified (chunks are still checked against the unanchored TOC).
    pub allow_unverified_lazy: bool,
}

/// How a layer ended up being served, for `--stats` and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// eStargz with an anchored TOC: only the chunks read are fetched.
    Lazy,
    /// eStargz with no anchor: the blob was verified whole first.
    VerifiedEstargz,
    /// eStargz with no anchor, served unverified on the operator's say-so.
    Unverified,
    /// No TOC: the blob was fetched, verified and indexed.
    Indexed,
    /// No TOC, a seek index published beside the image: only the spans
    /// read are fetched.
    Seek,
}

/// A layer blob as lazycrypt reads it: its key (if encrypted), how it is
/// compressed, and its ciphertext cache file.
pub(super) struct Blob {
    src: Arc<dyn ImageSource>,
    desc: Descriptor,
    pub(super) what: String,
    annotations: std::collections::HashMap<String, String>,
    key: Option<LayerKey>,
    /// The layer's symmetric key, for its seek index's key.
    symkey: Option<Zeroizing<[u8; 32]>>,
    hmac: Option<Vec<u8>>,
    private_anchor: Option<String>,
    pub(super) compression: Compression,
    remote: Arc<BlobRange>,
    pub(super) disk: Arc<DiskRange>,
}

impl Blob {
    /// Unwraps the layer's key with `ring` and opens its cache file.
    pub(super) fn open(
        src: Arc<dyn ImageSource>,
        desc: &Descriptor,
        ring: &KeyRing,
        opts: &OpenOptions,
    ) -> io::Result<Self> {
        let what = desc.digest().to_string();
        let mt = desc.media_type().to_string();
        let annotations = desc.annotations().clone().unwrap_or_default();
        let (key, symkey, hmac, private_anchor) = if media::is_encrypted(&mt) {
            // The crypto::Error rides inside: the snapshotter tells a missing key by its variant.
            let (private, public) =
                layer_keys(&annotations, ring, &what).map_err(io::Error::other)?;
            (
                Some(LayerKey::from_options(&private)),
                Some(private.key()),
                Some(public.hmac),
                private.toc_digest(),
            )
        } else {
            (None, None, None, None)
        };
        let plain_type = media::decrypted(&mt);
        let compression = if plain_type.ends_with("tar+gzip") || plain_type.ends_with("tar.gzip") {
            Compression::Gzip
        } else if plain_type.ends_with("tar+zstd") {
            Compression::Zstd
        } else if plain_type.ends_with(".tar") || plain_type.ends_with("tar") {
            Compression::None
        } else {
            return Err(bad(
                &what,
                format!(
                    "media type {plain_type} cannot be served (tar, tar+gzip and tar+zstd can)"
                ),
            ));
        };
        let remote = Arc::new(BlobRange::new(src.clone(), desc.clone()));
        let disk = Arc::new(DiskRange::open(
            &opts.cache_dir,
            desc.digest(),
            remote.clone() as Arc<dyn RangeSource>,
        )?);
        Ok(Blob {
            src,
            desc: desc.clone(),
            what,
            annotations,
            key,
            symkey,
            hmac,
            private_anchor,
            compression,
            remote,
            disk,
        })
    }

    /// The whole blob, decrypted, failing at its end unless digest and HMAC
    /// match: from disk if it is there, else fetched once, in order, and
    /// stored as it passes. The caller marks the cache complete (or forgets
    /// it) once it has read to the end.
    pub(super) fn whole(&self) -> io::Result<Box<dyn Read + Send>> {
        self.whole_tapped(None)
    }

    /// [`Blob::whole`], its digest's chaining values kept in `spans` on
    /// the way (the span digests, for the background check of a seek
    /// index).
    pub(super) fn whole_tapped(
        &self,
        spans: Option<Arc<std::sync::Mutex<Chain>>>,
    ) -> io::Result<Box<dyn Read + Send>> {
        let raw: Box<dyn Read + Send> = if self.disk.is_complete() {
            Box::new(self.disk.local()?)
        } else {
            let r = Counted {
                inner: self.src.blob(&self.desc).map_err(io::Error::other)?,
                blob: self.remote.clone(),
            };
            Box::new(DiskRange::filling(&self.disk, r))
        };
        let (digest, size) = (self.desc.digest().clone(), Some(self.desc.size()));
        let verified = match spans {
            Some(s) => VerifyingReader::chained(raw, digest, size, &self.what, s),
            None => VerifyingReader::new(raw, digest, size, &self.what),
        };
        Ok(match (&self.key, &self.hmac) {
            (Some(k), Some(h)) => Box::new(k.decrypt_reader(verified, h, None, &self.what)),
            _ => Box::new(verified),
        })
    }
}

/// Opens layer `desc` of an image read from `src`. The memory its index
/// takes is held in `reserved` (counted against the chunk cache's budget),
/// which the caller keeps for as long as it serves the layer; a layer that
/// does not fit is refused. `seek` holds the seek indexes found for the
/// image's manifest, tried for an encrypted layer that has no TOC.
pub fn open_layer(
    src: Arc<dyn ImageSource>,
    desc: &Descriptor,
    ring: &KeyRing,
    opts: &OpenOptions,
    reserved: &Reservation,
    seek: Option<&Found>,
) -> io::Result<(Layer, Mode)> {
    let (layer, mode) = open_unreserved(src, desc, ring, opts, reserved, seek)?;
    reserved.set(layer.resident(), layer.what())?;
    Ok((layer, mode))
}

fn open_unreserved(
    src: Arc<dyn ImageSource>,
    desc: &Descriptor,
    ring: &KeyRing,
    opts: &OpenOptions,
    reserved: &Reservation,
    seek: Option<&Found>,
) -> io::Result<(Layer, Mode)> {
    let blob = Blob::open(src.clone(), desc, ring, opts)?;
    let anchor = blob
        .private_anchor
        .clone()
        .or_else(|| blob.annotations.get(TOC_DIGEST_ANNOTATION).cloned());
    // Where a layer is not said to be eStargz, only the footer's own bytes
    // are asked for: the cache would fetch its last block, which the
    // whole-blob fetch that most such layers get then fetches again.
    let footer_local = anchor.is_some() || opts.allow_unverified_lazy || blob.disk.is_complete();
    let footer_from: &dyn RangeSource = if footer_local {
        &*blob.disk
    } else {
        &*blob.remote
    };
    // Such a layer that no seek index lists is fetched whole whatever its
    // footer says: the whole fetch is asked for first, and the footer's
    // round trip made while its answer streams in (an encrypted layer's is
    // read and decrypted meanwhile). Should the footer's request fail, the
    // error is returned once that reader has stopped (an encrypted layer's
    // pump ends its current read first).
    let listed = seek.is_some_and(|f| f.lists(&blob.what));
    let mut early = if blob.compression == Compression::Gzip && !footer_local && !listed {
        Some(blob.whole()?)
    } else {
        None
    };
    let mut whole = || early.take().map_or_else(|| blob.whole(), Ok);
    if blob.compression == Compression::Gzip && lazy::has_footer(footer_from, blob.key.as_ref())? {
        let (anchor, mode) = match anchor {
            Some(a) => (Anchor::Toc(a), Mode::Lazy),
            None if opts.allow_unverified_lazy => (Anchor::Unverified, Mode::Unverified),
            None => {
                let toc =
                    verify_whole_keeping_toc(&blob.disk, whole()?, blob.key.as_ref(), &blob.what)?;
                (Anchor::Toc(toc), Mode::VerifiedEstargz)
            }
        };
        let layer = lazy::open(blob.disk, blob.key, &anchor, &blob.what)?;
        return Ok((layer, mode));
    }
    if let (Some(found), Some(key), Some(symkey)) = (seek, &blob.key, &blob.symkey) {
        let b = LayerBlob {
            src: &src,
            desc,
            what: &blob.what,
            compression: blob.compression,
            symkey: &symkey[..],
            key,
            disk: &blob.disk,
        };
        match seek::open(&b, found, &opts.cache_dir, reserved) {
            Ok(Some(layer)) => return Ok((layer, Mode::Seek)),
            Ok(None) => {}
            Err(why) => tracing::warn!(
                "layer {}: seek index not used ({why}); fetching the whole blob",
                blob.what
            ),
        }
    }
    let mut r = whole()?;
    let indexed = stream::index(
        &mut r,
        blob.compression,
        &opts.scratch,
        &blob.what,
        reserved,
    );
    let indexed = match indexed {
        Ok(i) => {
            blob.disk.mark_complete()?;
            i
        }
        Err(e) => {
            blob.disk.forget()?;
            return Err(e);
        }
    };
    let layer = stream::layer(indexed, Plain::new(blob.disk, blob.key), &blob.what)?;
    Ok((layer, Mode::Indexed))
}

/// Reads a whole eStargz blob through its verifiers (`r` yields plaintext
/// and fails unless digest and HMAC match), keeps it cached only if it
/// passed, and returns the digest of the TOC JSON *as the verified stream
/// carried it*: the TOC is later read back from the cache file, which
/// another image's fetches of the same blob may write, so it is anchored to
/// what was verified, not trusted as it lies on disk.
fn verify_whole_keeping_toc(
    disk: &DiskRange,
    mut r: Box<dyn Read + Send>,
    key: Option<&LayerKey>,
    what: &str,
) -> io::Result<String> {
    // Which bytes of the stream to keep; the footer on disk is only a guess
    // here, and a wrong guess keeps bytes that fail to parse as a TOC.
    let (toc_at, footer_at) = lazy::toc_range(disk, key, what)?;
    let mut toc = Zeroizing::new(Vec::with_capacity((footer_at - toc_at) as usize));
    let mut buf = Zeroizing::new(vec![0u8; 1 << 20]);
    let mut at = 0u64;
    let read = (|| loop {
        let n = match r.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let (lo, hi) = (at.max(toc_at), (at + n as u64).min(footer_at));
        if lo < hi {
            toc.extend_from_slice(&buf[(lo - at) as usize..(hi - at) as usize]);
        }
        at += n as u64;
    })();
    if let Err(e) = read {
        disk.forget()?;
        return Err(e);
    }
    disk.mark_complete()?;
    let (_, digest) = toc_json(&toc).map_err(|e| bad(what, e.to_string()))?;
    Ok(digest.to_string())
}

fn bad(what: &str, msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("layer {what}: {msg}"))
}

/// Counts a whole-blob stream into the blob's fetched bytes.
struct Counted {
    inner: Box<dyn Read + Send>,
    blob: Arc<BlobRange>,
}

impl Read for Counted {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.blob.note_fetched(n as u64);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::estargz::writer::convert;
    use crate::layer::source::MemoryRange;

    /// An ImageSource of one blob, noting each request in order.
    struct Recording {
        blob: Vec<u8>,
        asked: std::sync::Mutex<Vec<&'static str>>,
        /// Ranges are refused, as by a registry that fails them.
        no_ranges: bool,
    }

    impl ImageSource for Recording {
        fn root(&self) -> Result<crate::oci::transport::RawManifest, crate::oci::Error> {
            Err(crate::oci::Error::NotFound("no manifests".into()))
        }
        fn manifest(
            &self,
            _: &Descriptor,
        ) -> Result<crate::oci::transport::RawManifest, crate::oci::Error> {
            self.root()
        }
        fn blob(&self, _: &Descriptor) -> Result<Box<dyn Read + Send>, crate::oci::Error> {
            self.asked.lock().unwrap().push("whole");
            Ok(Box::new(io::Cursor::new(self.blob.clone())))
        }
        fn blob_range(
            &self,
            _: &Descriptor,
            offset: u64,
            len: u64,
        ) -> Result<Vec<u8>, crate::oci::Error> {
            self.asked.lock().unwrap().push("range");
            if self.no_ranges {
                return Err(crate::oci::Error::Registry("ranges refused".into()));
            }
            let end = (offset + len).min(self.blob.len() as u64) as usize;
            Ok(self.blob[offset as usize..end].to_vec())
        }
    }

    /// Opens `blob`, a tar+gzip layer no TOC annotation anchors and (unless
    /// `listed`) no seek index lists: how it is served, and the requests it
    /// made.
    fn open_unanchored(
        blob: Vec<u8>,
        no_ranges: bool,
        listed: bool,
    ) -> (io::Result<Mode>, Vec<&'static str>) {
        let dir = tempfile::tempdir().unwrap();
        let desc = Descriptor::new(
            oci_spec::image::MediaType::ImageLayerGzip,
            blob.len() as u64,
            crate::oci::digest::of(&blob),
        );
        let found = Found::listing(crate::oci::digest::of(b"manifest"), desc.digest().as_ref());
        let src = Arc::new(Recording {
            blob,
            asked: Default::default(),
            no_ranges,
        });
        let opts = OpenOptions {
            cache_dir: dir.path().join("blobs"),
            scratch: Scratch::new(dir.path().join("scratch"), 1 << 30),
            allow_unverified_lazy: false,
        };
        let cache = crate::cache::chunks::ChunkCache::new(1 << 30, 0);
        let reserved = cache.reservation();
        let mode = open_layer(
            src.clone(),
            &desc,
            &KeyRing::default(),
            &opts,
            &reserved,
            listed.then_some(&found),
        )
        .map(|(_, mode)| mode);
        let asked = src.asked.lock().unwrap().clone();
        (mode, asked)
    }

    /// A layer that will be fetched whole asks for its whole blob before
    /// its footer's bytes: the footer's round trip (a few ms of registry
    /// latency, at each layer's start) no longer holds the blob back. An
    /// eStargz one found so by its footer is verified from that same fetch;
    /// a failed footer request fails the open with its own error.
    #[test]
    fn a_layer_fetched_whole_is_asked_for_before_its_footer() {
        let tar = crate::layer::testing::tar_of(&[("a.txt", b"hello".to_vec())]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        io::Write::write_all(&mut gz, &tar).unwrap();
        let gz = gz.finish().unwrap();
        let (mode, asked) = open_unanchored(gz.clone(), false, false);
        assert_eq!(mode.unwrap(), Mode::Indexed);
        assert_eq!(asked, ["whole", "range"]);

        // One a seek index lists may never need its whole blob: it is
        // asked for only after the index was tried.
        let (mode, asked) = open_unanchored(gz.clone(), false, true);
        assert_eq!(mode.unwrap(), Mode::Indexed);
        assert_eq!(asked, ["range", "whole"]);

        let (mode, asked) = open_unanchored(gz, true, false);
        let e = mode.unwrap_err().to_string();
        assert!(e.contains("ranges refused"), "{e}");
        assert_eq!(asked, ["whole", "range"]);

        let (estargz, _) = convert(&tar[..], Vec::new(), 1 << 20).unwrap();
        let (mode, asked) = open_unanchored(estargz, false, false);
        assert_eq!(mode.unwrap(), Mode::VerifiedEstargz);
        assert_eq!(asked.first(), Some(&"whole"), "{asked:?}");
        assert_eq!(
            asked.iter().filter(|a| **a == "whole").count(),
            1,
            "{asked:?}"
        );
    }

    /// The TOC of a blob verified whole is anchored to what the verified
    /// stream carried: if the cache file changes afterwards (another
    /// image's fetch of the same blob), the layer is refused, not served by
    /// a TOC nobody checked.
    #[test]
    fn a_blob_verified_whole_keeps_the_toc_it_verified() {
        let mut tar = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(5);
        h.set_mode(0o644);
        tar.append_data(&mut h, "a.txt", &b"hello"[..]).unwrap();
        let (blob, _) = convert(&tar.into_inner().unwrap()[..], Vec::new(), 1 << 20).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let digest = crate::oci::digest::of(&blob);
        let open = || {
            let src = Arc::new(MemoryRange::new(blob.clone()));
            Arc::new(DiskRange::open(dir.path(), &digest, src).unwrap())
        };
        let disk = open();
        let stream = Box::new(DiskRange::filling(&disk, io::Cursor::new(blob.clone())));
        let toc = verify_whole_keeping_toc(&disk, stream, None, "L").unwrap();
        assert!(lazy::open(disk.clone(), None, &Anchor::Toc(toc.clone()), "L").is_ok());
        // A byte of the TOC member changes in the cache file.
        let (toc_at, footer_at) = lazy::toc_range(&*disk, None, "L").unwrap();
        let file = std::fs::read_dir(dir.path().join("sha256"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|x| x == "data"))
            .unwrap();
        let mut bytes = std::fs::read(&file).unwrap();
        bytes[((toc_at + footer_at) / 2) as usize] ^= 0x01;
        std::fs::write(&file, &bytes).unwrap();
        let e = lazy::open(open(), None, &Anchor::Toc(toc), "L")
            .err()
            .unwrap();
        assert!(e.to_string().starts_with("layer L:"), "{e}");
    }
}

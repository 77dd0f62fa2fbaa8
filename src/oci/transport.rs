//! The two sides of an image copy, whatever the transport.

use std::io::Read;

use super::digest::Digest;
use super::layout::Layout;
use super::reference::ImageRef;
use super::registry::{Registry, RegistryOptions};
use super::{Descriptor, Error};

/// A manifest or index as stored: its exact bytes matter for its digest.
#[derive(Debug, Clone)]
pub struct RawManifest {
    pub media_type: String,
    pub digest: Digest,
    pub bytes: Vec<u8>,
}

/// Where images are read from.
pub trait ImageSource: Send + Sync {
    /// The image the reference names (manifest or index).
    fn root(&self) -> Result<RawManifest, Error>;
    /// A manifest named by digest (a child of an index).
    fn manifest(&self, desc: &Descriptor) -> Result<RawManifest, Error>;
    /// The whole blob, as a stream. Callers verify the digest.
    fn blob(&self, desc: &Descriptor) -> Result<Box<dyn Read + Send>, Error>;
    /// Bytes `[offset, offset + len)` of a blob.
    fn blob_range(&self, desc: &Descriptor, offset: u64, len: u64) -> Result<Vec<u8>, Error>;
    /// The manifest or index under `tag` in the image's repository (where
    /// cosign stores signatures), [`Error::NotFound`] if there is none.
    /// Sources without such tags have none.
    fn tagged(&self, tag: &str) -> Result<RawManifest, Error> {
        Err(Error::NotFound(format!(
            "tag {tag}: this source has no tags"
        )))
    }
    /// The OCI 1.1 referrers API's index of the manifests whose `subject`
    /// is `digest` (where cosign 3 attaches its bundles), `None` if the
    /// registry has no such API (cosign then lists them under the
    /// `sha256-<hex>` tag) or the source is not a registry.
    fn referrers(&self, digest: &Digest) -> Result<Option<RawManifest>, Error> {
        let _ = digest;
        Ok(None)
    }
}

/// `source` with its root read once: the manifest a signature verdict was
/// given on is the one the copy reads, even if the reference's tag moves
/// (or a registry answers otherwise) in between.
pub struct PinnedRoot<'a> {
    source: &'a dyn ImageSource,
    root: RawManifest,
}

impl<'a> PinnedRoot<'a> {
    pub fn new(source: &'a dyn ImageSource, root: RawManifest) -> Self {
        PinnedRoot { source, root }
    }
}

impl ImageSource for PinnedRoot<'_> {
    fn root(&self) -> Result<RawManifest, Error> {
        Ok(self.root.clone())
    }
    fn manifest(&self, desc: &Descriptor) -> Result<RawManifest, Error> {
        self.source.manifest(desc)
    }
    fn blob(&self, desc: &Descriptor) -> Result<Box<dyn Read + Send>, Error> {
        self.source.blob(desc)
    }
    fn blob_range(&self, desc: &Descriptor, offset: u64, len: u64) -> Result<Vec<u8>, Error> {
        self.source.blob_range(desc, offset, len)
    }
    fn tagged(&self, tag: &str) -> Result<RawManifest, Error> {
        self.source.tagged(tag)
    }
    fn referrers(&self, digest: &Digest) -> Result<Option<RawManifest>, Error> {
        self.source.referrers(digest)
    }
}

/// Where images are written to. Nothing is visible under the reference until
/// [`ImageDest::commit`]; [`ImageDest::abort`] undoes what it can.
pub trait ImageDest: Send + Sync {
    /// Is the blob already there? (Lets copies skip unchanged blobs.)
    fn has_blob(&self, digest: &Digest) -> Result<bool, Error>;
    /// Stores a blob from a stream; returns its digest and size.
    fn put_blob(&self, data: &mut dyn Read, media_type: &str) -> Result<(Digest, u64), Error>;
    /// Stores a manifest or index by digest (not yet tagged).
    fn put_manifest(&self, m: &RawManifest) -> Result<(), Error>;
    /// Points the reference at `root`.
    fn commit(&self, root: &RawManifest) -> Result<(), Error>;
    /// Stores `m` under `tag` in the image's repository (where cosign
    /// stores signatures). Destinations without such tags refuse.
    fn put_tagged(&self, m: &RawManifest, tag: &str) -> Result<(), Error> {
        let _ = m;
        Err(Error::BadReference(format!(
            "tag {tag}: this destination has no tags"
        )))
    }
    /// Stores the artifact manifest `m` (its blobs already stored) as a
    /// referrer of its `subject`, listed where readers of the
    /// transport look for referrers. Destinations without referrers refuse.
    fn put_referrer(
        &self,
        m: &RawManifest,
        subject: &Digest,
        artifact_type: &str,
    ) -> Result<(), Error> {
        let _ = (m, subject);
        Err(Error::BadReference(format!(
            "this destination cannot hold referrers ({artifact_type})"
        )))
    }
    /// Removes what this copy made, where the transport allows it.
    fn abort(&self);
}

/// Transport options from the command line.
#[derive(Debug, Clone, Default)]
pub struct TransportOptions {
    pub registry: RegistryOptions,
}

/// Opens an image for reading.
pub fn open_source(r: &ImageRef, opts: &TransportOptions) -> Result<Box<dyn ImageSource>, Error> {
    Ok(match r {
        ImageRef::Layout { dir, tag } => Box::new(Layout::open(dir, tag.clone())?),
        ImageRef::Registry(rr) => Box::new(Registry::new(rr.clone(), &opts.registry)?),
    })
}

/// Opens an image for writing.
pub fn open_dest(r: &ImageRef, opts: &TransportOptions) -> Result<Box<dyn ImageDest>, Error> {
    Ok(match r {
        ImageRef::Layout { dir, tag } => Box::new(Layout::create(dir, tag.clone())?),
        ImageRef::Registry(rr) => Box::new(Registry::new(rr.clone(), &opts.registry)?),
    })
}

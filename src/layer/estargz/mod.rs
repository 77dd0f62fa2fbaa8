//! eStargz, per containerd/stargz-snapshotter `docs/estargz.md`: a valid
//! tar.gz made of independent gzip members (one per file chunk), a TOC
//! (`stargz.index.json`, the last tar entry) and a 51-byte footer that
//! points at the TOC, so a reader can fetch exactly the chunks it needs.

pub mod footer;
pub mod lazy;
pub mod reader;
pub mod toc;
pub mod writer;

/// The TOC's tar entry name.
pub const TOC_NAME: &str = "stargz.index.json";
/// The landmark for images without prioritized files.
pub const NO_PREFETCH_LANDMARK: &str = ".no.prefetch.landmark";
/// The landmark that ends the prioritized files.
pub const PREFETCH_LANDMARK: &str = ".prefetch.landmark";
/// The descriptor annotation that anchors a plain eStargz TOC.
pub const TOC_DIGEST_ANNOTATION: &str = "containerd.io/snapshot/stargz/toc.digest";
/// The descriptor annotation with the uncompressed size of the layer.
pub const UNCOMPRESSED_SIZE_ANNOTATION: &str = "io.containers.estargz.uncompressed-size";
/// lazycrypt writes files in chunks of this many uncompressed bytes.
pub const CHUNK_SIZE: u64 = 1 << 20;

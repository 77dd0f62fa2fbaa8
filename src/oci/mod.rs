//! The image model and its transports: descriptors, manifests, indexes,
//! media types, platforms, OCI layouts and registries.

pub mod auth;
pub mod build;
pub mod chain;
pub mod copy;
pub mod digest;
pub mod hosts;
pub mod image;
pub mod keychain;
pub mod layout;
pub mod media;
pub mod mirrored;
pub mod platform;
pub mod policy;
pub mod reference;
pub mod referrers;
pub mod registry;
pub mod retry;
pub mod signature;
pub mod transport;

pub use oci_spec::image::{Descriptor, ImageIndex, ImageManifest};

/// Manifests and indexes larger than this are refused (registries cap at 4 MiB).
pub const MAX_MANIFEST: u64 = 8 << 20;

/// What can go wrong reading or writing images; each says what and where.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    BadReference(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Malformed(String),
    #[error("{0}")]
    Registry(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

impl Error {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }
}

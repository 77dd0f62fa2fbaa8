//! ocicrypt: the layer cipher, key wrapping schemes and key sources.

pub mod cipher;
pub mod envelope;
pub mod jwe;
pub mod keyprovider;
pub mod keys;
pub mod options;
pub mod pgp;
pub mod pkcs7;
pub mod recipient;
pub mod wipe;

pub use keys::{KeyArg, KeyMaterial};
pub use recipient::{KeyRing, Recipient};

/// imgcrypt's text for "no key we hold opens this layer"; runbooks grep for it.
pub const MISSING_KEY: &str = "missing private key needed for decryption";

/// Crypto failures; each says what and where.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No key given, or none of those given unwraps the layer.
    #[error("{MISSING_KEY}{0}")]
    MissingKey(String),
    #[error("{0}")]
    BadKey(String),
    #[error("{0}")]
    Malformed(String),
    #[error("{0}")]
    KeyProvider(String),
    #[error(transparent)]
    Oci(#[from] crate::oci::Error),
}

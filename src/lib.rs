//! lazycrypt: run ocicrypt-encrypted OCI images without plaintext at rest.
//!
//! Modules follow the data flow: [`oci`] (image model, transports) →
//! [`crypto`] (layer cipher, key wrapping, key sources) → [`cli`].

pub mod cli;
pub mod crypto;
pub mod layer;
pub mod oci;
pub mod pipeline;

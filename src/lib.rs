//! lazycrypt: run ocicrypt-encrypted OCI images without plaintext at rest.
//!
//! Modules follow the data flow: [`oci`] (image model, transports) →
//! [`crypto`] (layer cipher, key wrapping, key sources) → [`layer`] (eStargz)
//! → [`convert`] (whole-image encrypt/decrypt) → [`cli`].

pub mod bench;
pub mod cache;
pub mod cli;
pub mod containerd;
pub mod convert;
pub mod crypto;
pub mod deadline;
pub mod fs;
pub mod layer;
pub mod mount;
pub mod oci;
pub mod pipeline;
pub mod private;
pub mod snapshotter;
pub mod sync;

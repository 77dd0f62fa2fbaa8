//! The encrypted seek index (docs/seek-index.md): a layer's tar entries,
//! inflater checkpoints and ciphertext span digests, published beside an
//! image as an OCI referrer and readable only by holders of the layer's key.
//! [`seal`] is its outer format, [`head`] and [`entries`] its payload,
//! [`windows`] the checkpoints' history; [`build`] writes one, [`artifact`]
//! carries it, [`serve`] reads a layer through it.

pub mod artifact;
pub mod build;
pub mod check;
pub mod entries;
pub mod head;
pub mod seal;
pub mod serve;
pub mod windows;

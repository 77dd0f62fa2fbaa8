//! The encrypted seek index (docs/seek-index.md): a layer's tar entries,
//! inflater checkpoints and ciphertext span digests, published beside an
//! image as an OCI referrer and readable only by holders of the layer's key.
//! [`seal`] is its outer format: the index key, the sealed records and the
//! head blob that carries them.

pub mod head;
pub mod seal;

//! Layer formats: eStargz (seekable tar.gz with a TOC), the stream index for
//! any other tar layer, and range reads of layer blobs. Every format ends in
//! the same [`index::Index`]: entries plus numbered, verifiable chunks.

pub mod estargz;
pub mod index;
pub mod seekindex;
pub mod source;
pub mod stream;
pub mod tarmeta;
#[cfg(test)]
pub(crate) mod testing;
pub mod verified;

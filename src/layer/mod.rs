//! Layer formats: eStargz (seekable tar.gz with a TOC), and range reads of layer blobs.

pub mod estargz;
pub mod source;

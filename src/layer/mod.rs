//! Layer formats: eStargz (seekable tar.gz with a TOC) and tar helpers.

pub mod estargz;

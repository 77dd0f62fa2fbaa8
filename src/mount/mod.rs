//! Serving an image as mounts: each layer opened lazily and exposed as a
//! read-only FUSE file system, and an overlay of them.

pub mod diff_id;
pub mod keeper;
pub mod layer;
pub mod open;
pub mod seek;
pub mod session;
pub mod sys;
pub mod warm;

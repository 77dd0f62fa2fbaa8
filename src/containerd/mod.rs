//! containerd's own API, as a client: `lazycrypt pull` stores an image's
//! manifest and config, has each layer prepared through containerd's
//! snapshots service (so lazycrypt mounts it lazily), and names the image.

pub mod client;
pub mod proto;
pub mod pull;

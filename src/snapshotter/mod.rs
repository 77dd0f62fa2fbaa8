//! The containerd remote snapshotter: the snapshots gRPC service, its
//! metadata, and the snapshot semantics behind it.

pub mod authorized;
pub mod checks;
pub mod config;
pub mod cri_keychain;
pub mod error;
pub mod filter;
pub mod meta;
pub mod metrics;
pub mod remote;
pub mod service;
pub mod store;
pub mod verdicts;

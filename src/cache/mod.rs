//! Caches: ciphertext blob ranges on disk (safe at rest), and decrypted
//! chunks in memory only (zeroized when evicted).

mod batches;
pub mod bitmap;
pub mod blobs;
pub mod chunks;
pub mod flight;

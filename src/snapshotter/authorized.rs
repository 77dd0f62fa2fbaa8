//! Layers whose keys this node's key files were seen to unwrap. Every
//! container start checks that a key here still opens each encrypted layer
//! below it (as imgcrypt's authorization check does); unwrapping is a
//! private-key operation of about 2 ms per layer and recipient, which on a
//! 20-layer image was most of a container's Prepare. The answer depends
//! only on the layer's descriptor and on the key files, so it is kept for
//! a descriptor under the fingerprint of the files it was reached with: a
//! key file removed, added or changed makes a new fingerprint, and the
//! next start unwraps again. Unwraps that ask a keyprovider are never kept.

use std::collections::HashMap;
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use crate::crypto::envelope;
use crate::crypto::recipient::KeyRing;
use crate::oci::{Descriptor, media};

/// Most descriptors kept; past it all are forgotten at once (each costs one
/// unwrap again), so the memory stays bounded without an eviction order.
pub const MAX_KEPT: usize = 4096;

/// Descriptor digest → the key-ring fingerprint that unwrapped it.
#[derive(Default)]
pub struct Authorized {
    kept: Mutex<HashMap<[u8; 32], [u8; 32]>>,
}

impl Authorized {
    /// Whether keys with `ring`'s fingerprint unwrapped the layer that
    /// `descriptor` (its JSON, as stored) describes.
    pub fn holds(&self, descriptor: &str, ring: &[u8; 32]) -> bool {
        crate::sync::lock(&self.kept).get(&id(descriptor)) == Some(ring)
    }

    /// Notes that keys with `ring`'s fingerprint unwrapped `descriptor`'s
    /// layer.
    pub fn note(&self, descriptor: &str, ring: [u8; 32]) {
        let mut kept = crate::sync::lock(&self.kept);
        if kept.len() >= MAX_KEPT {
            kept.clear();
        }
        kept.insert(id(descriptor), ring);
    }
}

/// The fingerprint an unwrap of `desc`'s key with `ring` is kept under:
/// none for a layer that is not encrypted, for a ring holding keys read
/// from no file, or where a keyprovider would be asked.
pub fn kept_under(desc: &Descriptor, ring: &KeyRing) -> Option<[u8; 32]> {
    let none = HashMap::new();
    let annotations = desc.annotations().as_ref().unwrap_or(&none);
    (media::is_encrypted(desc.media_type().as_ref()) && envelope::repeatable(annotations, ring))
        .then(|| ring.fingerprint())
        .flatten()
}

fn id(descriptor: &str) -> [u8; 32] {
    Sha256::digest(descriptor.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_layer_is_held_under_the_fingerprint_it_was_unwrapped_with_only() {
        let a = Authorized::default();
        assert!(!a.holds("d1", &[1; 32]));
        a.note("d1", [1; 32]);
        assert!(a.holds("d1", &[1; 32]));
        assert!(!a.holds("d1", &[2; 32]), "another ring");
        assert!(!a.holds("d2", &[1; 32]), "another descriptor");
        a.note("d1", [2; 32]);
        assert!(a.holds("d1", &[2; 32]) && !a.holds("d1", &[1; 32]));
    }

    #[test]
    fn past_the_limit_everything_is_forgotten() {
        let a = Authorized::default();
        for i in 0..MAX_KEPT {
            a.note(&i.to_string(), [1; 32]);
        }
        assert!(a.holds("0", &[1; 32]));
        a.note("new", [1; 32]);
        assert!(a.holds("new", &[1; 32]));
        assert!(!a.holds("0", &[1; 32]));
        assert_eq!(crate::sync::lock(&a.kept).len(), 1);
    }
}

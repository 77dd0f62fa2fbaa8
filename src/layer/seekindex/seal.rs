//! Sealing (docs/seek-index.md §4): every record of a layer's index is
//! AES-256-GCM under a key derived from the layer's symmetric key, with a
//! counter nonce and associated data binding the format version, the
//! record's kind and place, the image manifest and the layer. Only holders
//! of the layer key can read or forge an index; a record cannot be moved to
//! another place, layer or image.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::oci::digest::Digest;

/// The head blob's magic.
pub const MAGIC: &[u8; 6] = b"LZSEEK";
/// The format version this code reads and writes.
pub const VERSION: u16 = 1;
/// Sealed payloads are padded to a multiple of this.
pub const RECORD_ALIGN: usize = 4096;
/// GCM's tag.
pub const TAG_LEN: usize = 16;
/// Head blobs larger than this are refused before they are fetched.
pub const MAX_HEAD: u64 = 128 << 20;

const HKDF_INFO: &[u8] = b"lazycrypt seek-index v1";
const AD_LABEL: &[u8] = b"lazycrypt seek-index";
/// Magic, version and salt: what precedes record 0 in the head blob.
const PREAMBLE: usize = 6 + 2 + 32;

/// What a record holds; part of its nonce and associated data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Head = 0,
    Window = 1,
}

/// The image manifest and layer an index was sealed for.
#[derive(Debug, Clone, Copy)]
pub struct Binding<'a> {
    pub manifest: &'a Digest,
    pub layer: &'a Digest,
}

/// Why a sealed index cannot be used; one line, and never says more than
/// that it does not open (no oracle).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("head blob is {0} bytes, more than the {MAX_HEAD} a head may have")]
    TooLarge(u64),
    #[error("head blob is {0} bytes, not a sealed head")]
    BadSize(usize),
    #[error("head blob does not start with {:?}", std::str::from_utf8(MAGIC).unwrap_or(""))]
    BadMagic,
    #[error(
        "head blob is format version {0}, which this lazycrypt does not read (it reads {VERSION})"
    )]
    UnknownVersion(u16),
    #[error(
        "record {kind:?} {number} does not open under this layer's key (another image, layer or key, or tampered)"
    )]
    DoesNotOpen { kind: Kind, number: u64 },
}

/// The key every record of one sealing is under (§4.1); zeroized on drop.
pub struct IndexKey(Zeroizing<[u8; 32]>);

impl IndexKey {
    /// HKDF-SHA256 of the layer's symmetric key with the head's `salt`, for
    /// `layer` (its digest in the info: domain separation from ocicrypt's
    /// own use of the key).
    pub fn derive(symkey: &[u8], salt: &[u8; 32], layer: &Digest) -> Self {
        let mut info = Vec::with_capacity(HKDF_INFO.len() + 1 + 71);
        info.extend_from_slice(HKDF_INFO);
        info.push(0);
        info.extend_from_slice(layer.to_string().as_bytes());
        let mut key = Zeroizing::new([0u8; 32]);
        Hkdf::<Sha256>::new(Some(salt), symkey)
            .expand(&info, key.as_mut())
            .expect("32 bytes is a valid HKDF-SHA256 length");
        IndexKey(key)
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(self.0.as_ref().into())
    }

    /// Seals record `number` of `kind`.
    pub fn seal(&self, kind: Kind, number: u64, binding: Binding<'_>, plaintext: &[u8]) -> Vec<u8> {
        let nonce = nonce(kind, number);
        self.cipher()
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: &ad(kind, number, binding),
                },
            )
            .expect("AES-GCM seals any length this format allows")
    }

    /// Opens record `number` of `kind`: its plaintext (zeroized on drop),
    /// or why not.
    pub fn open(
        &self,
        kind: Kind,
        number: u64,
        binding: Binding<'_>,
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, SealError> {
        let nonce = nonce(kind, number);
        self.cipher()
            .decrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: sealed,
                    aad: &ad(kind, number, binding),
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| SealError::DoesNotOpen { kind, number })
    }
}

/// `kind: u32 || number: u64`, little-endian: unique per record under one
/// key, and a key is never used for two sealings (its salt is random).
fn nonce(kind: Kind, number: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[..4].copy_from_slice(&(kind as u32).to_le_bytes());
    n[4..].copy_from_slice(&number.to_le_bytes());
    n
}

fn ad(kind: Kind, number: u64, b: Binding<'_>) -> Vec<u8> {
    let (m, l) = (b.manifest.to_string(), b.layer.to_string());
    let mut ad = Vec::with_capacity(AD_LABEL.len() + 2 + 1 + 8 + 2 + m.len() + l.len());
    ad.extend_from_slice(AD_LABEL);
    ad.extend_from_slice(&VERSION.to_le_bytes());
    ad.push(kind as u8);
    ad.extend_from_slice(&number.to_le_bytes());
    // Digests are `sha256:<64 hex>`: 71 bytes, so a length fits a u8.
    ad.push(m.len() as u8);
    ad.extend_from_slice(m.as_bytes());
    ad.push(l.len() as u8);
    ad.extend_from_slice(l.as_bytes());
    ad
}

/// A head blob (§4.3), parsed but not opened.
pub struct HeadBlob<'a> {
    pub salt: [u8; 32],
    /// Record 0, sealed.
    pub record: &'a [u8],
}

impl<'a> HeadBlob<'a> {
    /// Refuses, by its descriptor's size alone, a head too large to fetch.
    pub fn check_size(size: u64) -> Result<(), SealError> {
        if size > MAX_HEAD {
            return Err(SealError::TooLarge(size));
        }
        Ok(())
    }

    /// Splits a fetched head blob into its salt and sealed record.
    pub fn parse(blob: &'a [u8]) -> Result<Self, SealError> {
        Self::check_size(blob.len() as u64)?;
        if blob.len() < 6 || &blob[..6] != MAGIC {
            return Err(SealError::BadMagic);
        }
        if blob.len() < 8 {
            return Err(SealError::BadSize(blob.len()));
        }
        let version = u16::from_le_bytes([blob[6], blob[7]]);
        if version != VERSION {
            return Err(SealError::UnknownVersion(version));
        }
        let sealed = blob.len().saturating_sub(PREAMBLE);
        if blob.len() < PREAMBLE + RECORD_ALIGN + TAG_LEN
            || !(sealed - TAG_LEN).is_multiple_of(RECORD_ALIGN)
        {
            return Err(SealError::BadSize(blob.len()));
        }
        let mut salt = [0u8; 32];
        salt.copy_from_slice(&blob[8..PREAMBLE]);
        Ok(HeadBlob {
            salt,
            record: &blob[PREAMBLE..],
        })
    }

    /// A head blob for `salt` and record 0 as sealed.
    pub fn write(salt: &[u8; 32], record: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(PREAMBLE + record.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(salt);
        out.extend_from_slice(record);
        out
    }
}

/// `payload` padded with zeros to a multiple of [`RECORD_ALIGN`] (at least
/// one), so a sealed head's size says less about its layer.
pub fn padded(payload: &[u8]) -> Zeroizing<Vec<u8>> {
    let len = payload.len().div_ceil(RECORD_ALIGN).max(1) * RECORD_ALIGN;
    let mut out = Zeroizing::new(Vec::with_capacity(len));
    out.extend_from_slice(payload);
    out.resize(len, 0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::digest;

    fn digests() -> (Digest, Digest, Digest) {
        (
            digest::of(b"manifest"),
            digest::of(b"layer"),
            digest::of(b"another"),
        )
    }

    /// A head sealed for one manifest and layer opens there and nowhere
    /// else: not under another key, salt, layer, manifest, kind or number,
    /// and not with one byte changed.
    #[test]
    fn a_record_opens_only_where_it_was_sealed() {
        let (m, l, other) = digests();
        let symkey = [7u8; 32];
        let salt = [9u8; 32];
        let key = IndexKey::derive(&symkey, &salt, &l);
        let here = Binding {
            manifest: &m,
            layer: &l,
        };
        let payload = padded(b"the index");
        let record = key.seal(Kind::Head, 0, here, &payload);
        assert_eq!(record.len(), RECORD_ALIGN + TAG_LEN);
        let blob = HeadBlob::write(&salt, &record);
        let head = HeadBlob::parse(&blob).unwrap();
        let opened = IndexKey::derive(&symkey, &head.salt, &l)
            .open(Kind::Head, 0, here, head.record)
            .unwrap();
        assert_eq!(&opened[..9], b"the index");

        let refused = SealError::DoesNotOpen {
            kind: Kind::Head,
            number: 0,
        };
        let elsewhere = [
            (IndexKey::derive(&[8u8; 32], &salt, &l), here),
            (IndexKey::derive(&symkey, &[1u8; 32], &l), here),
            (IndexKey::derive(&symkey, &salt, &other), here),
        ];
        for (k, b) in &elsewhere {
            assert_eq!(k.open(Kind::Head, 0, *b, &record).unwrap_err(), refused);
        }
        let another_image = Binding {
            manifest: &other,
            layer: &l,
        };
        assert_eq!(
            key.open(Kind::Head, 0, another_image, &record).unwrap_err(),
            refused
        );
        let another_layer = Binding {
            manifest: &m,
            layer: &other,
        };
        assert_eq!(
            key.open(Kind::Head, 0, another_layer, &record).unwrap_err(),
            refused
        );
        assert!(key.open(Kind::Window, 0, here, &record).is_err());
        assert!(key.open(Kind::Head, 1, here, &record).is_err());
        let mut tampered = record.clone();
        tampered[100] ^= 1;
        assert_eq!(
            key.open(Kind::Head, 0, here, &tampered).unwrap_err(),
            refused
        );
    }

    /// The head blob's outer checks come before any key is used, each with
    /// its own line; a later version is told apart from garbage.
    #[test]
    fn head_blobs_are_checked_before_they_are_opened() {
        let salt = [3u8; 32];
        let good = HeadBlob::write(&salt, &vec![0u8; RECORD_ALIGN + TAG_LEN]);
        assert!(HeadBlob::parse(&good).is_ok());
        assert_eq!(
            HeadBlob::check_size(MAX_HEAD + 1).unwrap_err(),
            SealError::TooLarge(MAX_HEAD + 1)
        );
        let mut magic = good.clone();
        magic[0] = b'X';
        assert_eq!(HeadBlob::parse(&magic).err(), Some(SealError::BadMagic));
        assert_eq!(HeadBlob::parse(b"LZ").err(), Some(SealError::BadMagic));
        let mut later = good.clone();
        later[6] = 2;
        assert_eq!(
            HeadBlob::parse(&later).err(),
            Some(SealError::UnknownVersion(2))
        );
        let short = &good[..good.len() - 1];
        assert_eq!(
            HeadBlob::parse(short).err(),
            Some(SealError::BadSize(short.len()))
        );
        let mut long = good.clone();
        long.extend_from_slice(&[0u8; 16]);
        assert_eq!(
            HeadBlob::parse(&long).err(),
            Some(SealError::BadSize(long.len()))
        );
        assert_eq!(
            HeadBlob::parse(&good[..PREAMBLE + TAG_LEN]).err(),
            Some(SealError::BadSize(PREAMBLE + TAG_LEN))
        );
    }

    /// The derivation is HKDF-SHA256 as RFC 5869 defines it, with the
    /// document's info string: checked against an independent computation.
    #[test]
    fn the_index_key_is_rfc_5869_hkdf_with_the_documents_info() {
        use hmac::{Hmac, Mac};
        let (_, l, _) = digests();
        let (symkey, salt) = ([5u8; 32], [6u8; 32]);
        // Extract, then one block of expand (L = 32).
        let mut ext = <Hmac<Sha256> as Mac>::new_from_slice(&salt).unwrap();
        ext.update(&symkey);
        let prk = ext.finalize().into_bytes();
        let mut exp = <Hmac<Sha256> as Mac>::new_from_slice(&prk).unwrap();
        exp.update(b"lazycrypt seek-index v1\0");
        exp.update(l.to_string().as_bytes());
        exp.update(&[1]);
        let want = exp.finalize().into_bytes();
        assert_eq!(
            IndexKey::derive(&symkey, &salt, &l).0.as_slice(),
            want.as_slice()
        );
    }

    #[test]
    fn padding_rounds_up_to_whole_records() {
        assert_eq!(padded(b"").len(), RECORD_ALIGN);
        assert_eq!(padded(&[1; RECORD_ALIGN]).len(), RECORD_ALIGN);
        assert_eq!(padded(&[1; RECORD_ALIGN + 1]).len(), 2 * RECORD_ALIGN);
    }
}

//! Signers' public keys, as cosign and containers-policy.json give them: one
//! PEM `PUBLIC KEY` (SubjectPublicKeyInfo) block, as `cosign
//! generate-key-pair` and `skopeo generate-sigstore-key` write them. A
//! policy's keys are read (and refused) here when it is loaded, and are the
//! very keys signatures are verified with.
//!
//! The verification schemes are sigstore's for a key of each kind (what
//! `cosign sign --key` and `skopeo --sign-by-sigstore-private-key` produce):
//! ECDSA over SHA-256 with an ASN.1 DER signature, RSA PKCS#1 v1.5 with
//! SHA-256, and pure Ed25519 over the message.

use std::fmt;

use der::asn1::ObjectIdentifier;
use p256::ecdsa::signature::Verifier as _;
use p256::ecdsa::signature::hazmat::PrehashVerifier as _;
use sha2::{Digest as _, Sha256};
use spki::DecodePublicKey as _;

const ID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const SECP256R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const SECP384R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const ID_ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");

/// Key files larger than this are refused before parsing (an RSA-16384 SPKI is ~3 KiB).
pub const MAX_KEY_PEM: usize = 64 << 10;

/// A public key that signatures are checked against.
#[derive(Clone)]
pub struct PublicKey {
    inner: Inner,
    /// The DER SubjectPublicKeyInfo it was read from.
    spki_der: Vec<u8>,
}

impl PartialEq for PublicKey {
    fn eq(&self, other: &Self) -> bool {
        self.spki_der == other.spki_der
    }
}

impl Eq for PublicKey {}

#[derive(Clone)]
enum Inner {
    P256(p256::ecdsa::VerifyingKey),
    P384(p384::ecdsa::VerifyingKey),
    Rsa(Box<rsa::pkcs1v15::VerifyingKey<Sha256>>),
    Ed25519(ed25519_dalek::VerifyingKey),
}

/// A key that cannot be used; says which one (`origin`) and why.
#[derive(Debug, thiserror::Error)]
#[error("public key {origin}: {reason}")]
pub struct KeyError {
    origin: String,
    reason: String,
}

impl KeyError {
    /// Why, without where.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

/// The signature does not verify under this key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("signature does not verify")]
pub struct BadSignature;

impl PublicKey {
    /// Parses one PEM `PUBLIC KEY` block; `origin` names where it came from
    /// (a file path, `keyData[1]`) for the error.
    pub fn from_pem(pem: &[u8], origin: &str) -> Result<Self, KeyError> {
        let fail = |reason: String| KeyError {
            origin: origin.to_string(),
            reason,
        };
        if pem.len() > MAX_KEY_PEM {
            return Err(fail(format!(
                "{} bytes, more than the {MAX_KEY_PEM} a public key can take",
                pem.len()
            )));
        }
        let block = pem_block(pem).ok_or_else(|| fail("no PEM block".into()))?;
        let (label, der) =
            der::pem::decode_vec(block).map_err(|e| fail(format!("not a valid PEM block: {e}")))?;
        if label != "PUBLIC KEY" {
            return Err(fail(format!(
                "a PEM {:?} block, not \"PUBLIC KEY\" (SubjectPublicKeyInfo)",
                clip(label)
            )));
        }
        Self::from_spki_der(&der).map_err(fail)
    }

    /// Reads a DER SubjectPublicKeyInfo (a policy's already-checked key);
    /// `origin` names it for the error.
    pub fn from_spki(der: &[u8], origin: &str) -> Result<Self, KeyError> {
        Self::from_spki_der(der).map_err(|reason| KeyError {
            origin: origin.to_string(),
            reason,
        })
    }

    fn from_spki_der(der: &[u8]) -> Result<Self, String> {
        let info = spki::SubjectPublicKeyInfoRef::try_from(der)
            .map_err(|e| format!("not a SubjectPublicKeyInfo: {e}"))?;
        let bad = |e: &dyn fmt::Display| format!("malformed {}: {e}", alg_name(&info.algorithm));
        let inner = match info.algorithm.oid {
            ID_EC_PUBLIC_KEY => match info.algorithm.parameters_oid() {
                Ok(SECP256R1) => Inner::P256(
                    p256::ecdsa::VerifyingKey::from_public_key_der(der).map_err(|e| bad(&e))?,
                ),
                Ok(SECP384R1) => Inner::P384(
                    p384::ecdsa::VerifyingKey::from_public_key_der(der).map_err(|e| bad(&e))?,
                ),
                Ok(curve) => {
                    return Err(format!(
                        "ECDSA curve {curve} is not supported (P-256 and P-384 are)"
                    ));
                }
                Err(e) => return Err(format!("ECDSA key without a named curve: {e}")),
            },
            RSA_ENCRYPTION => {
                let key = rsa::RsaPublicKey::from_public_key_der(der).map_err(|e| bad(&e))?;
                Inner::Rsa(Box::new(rsa::pkcs1v15::VerifyingKey::new(key)))
            }
            ID_ED25519 => {
                let raw: &[u8; 32] = info
                    .subject_public_key
                    .as_bytes()
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(|| bad(&"not 32 bytes"))?;
                Inner::Ed25519(ed25519_dalek::VerifyingKey::from_bytes(raw).map_err(|e| bad(&e))?)
            }
            other => {
                return Err(format!(
                    "algorithm {other} is not supported (ECDSA P-256/P-384, RSA and Ed25519 are)"
                ));
            }
        };
        Ok(PublicKey {
            inner,
            spki_der: der.to_vec(),
        })
    }

    /// The DER SubjectPublicKeyInfo (its SHA-256 names the key in reports).
    pub fn spki_der(&self) -> &[u8] {
        &self.spki_der
    }

    /// The public half of a P-256 signing key.
    pub(crate) fn from_p256(key: p256::ecdsa::VerifyingKey) -> Self {
        use p256::pkcs8::EncodePublicKey as _;
        let spki_der = key
            .to_public_key_der()
            .map(|d| d.into_vec())
            .unwrap_or_default();
        PublicKey {
            inner: Inner::P256(key),
            spki_der,
        }
    }

    /// Checks `signature` over `message` with this key's scheme.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), BadSignature> {
        let ok = match &self.inner {
            Inner::P256(k) => p256::ecdsa::DerSignature::try_from(signature)
                .is_ok_and(|s| k.verify(message, &s).is_ok()),
            // sigstore hashes with SHA-256 whatever the curve.
            Inner::P384(k) => p384::ecdsa::DerSignature::try_from(signature)
                .is_ok_and(|s| k.verify_prehash(&Sha256::digest(message), &s).is_ok()),
            Inner::Rsa(k) => rsa::pkcs1v15::Signature::try_from(signature)
                .is_ok_and(|s| k.verify(message, &s).is_ok()),
            Inner::Ed25519(k) => ed25519_dalek::Signature::from_slice(signature)
                .is_ok_and(|s| k.verify_strict(message, &s).is_ok()),
        };
        if ok { Ok(()) } else { Err(BadSignature) }
    }

    /// The key's kind, for messages: `ECDSA P-256`, `RSA-2048`, `Ed25519`.
    pub fn kind(&self) -> String {
        match &self.inner {
            Inner::P256(_) => "ECDSA P-256".into(),
            Inner::P384(_) => "ECDSA P-384".into(),
            Inner::Rsa(k) => {
                use rsa::traits::PublicKeyParts as _;
                format!("RSA-{}", k.as_ref().as_ref().n().bits())
            }
            Inner::Ed25519(_) => "Ed25519".into(),
        }
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("PublicKey").field(&self.kind()).finish()
    }
}

fn alg_name(alg: &spki::AlgorithmIdentifierRef<'_>) -> &'static str {
    match alg.oid {
        ID_EC_PUBLIC_KEY => "ECDSA key",
        RSA_ENCRYPTION => "RSA key",
        ID_ED25519 => "Ed25519 key",
        _ => "key",
    }
}

/// The first `-----BEGIN …-----END …-----` block: key files often carry a
/// comment line before it, which a strict RFC 7468 decoder refuses.
pub(crate) fn pem_block(pem: &[u8]) -> Option<&[u8]> {
    let start = memchr::memmem::find(pem, b"-----BEGIN ")?;
    let rest = &pem[start..];
    let end_marker = memchr::memmem::find(rest, b"-----END ")?;
    let after = &rest[end_marker + b"-----END ".len()..];
    let close = memchr::memmem::find(after, b"-----")?;
    Some(&rest[..end_marker + b"-----END ".len() + close + b"-----".len()])
}

/// An error about attacker-chosen bytes (a parser's, which may quote them)
/// for a one-line message: control characters escaped, at most 160 chars.
pub(crate) fn untrusted(e: impl std::fmt::Display) -> String {
    const MAX: usize = 160;
    let mut escaped = String::new();
    for c in e.to_string().chars() {
        if c.is_control() {
            escaped.extend(c.escape_default());
        } else {
            escaped.push(c);
        }
    }
    match escaped.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}…", &escaped[..i]),
        None => escaped,
    }
}

/// Attacker-chosen text in a one-line message: bounded; `{:?}` escapes it.
pub(crate) fn clip(s: &str) -> &str {
    const MAX: usize = 64;
    match s.char_indices().nth(MAX) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use p256::pkcs8::EncodePublicKey as _;
    use p256::pkcs8::LineEnding;

    /// A P-256 public key in PEM, as cosign writes it.
    pub(in crate::oci::policy) fn p256_pem(seed: u8) -> String {
        let secret = p256::SecretKey::from_slice(&[seed.max(1); 32]).unwrap();
        secret
            .public_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap()
    }

    /// The same key, whatever surrounds its PEM block, is the same key.
    #[test]
    fn a_key_is_its_subject_public_key_info() {
        let k = PublicKey::from_pem(p256_pem(1).as_bytes(), "a").unwrap();
        let with_space = format!("# cosign.pub\n\n{}\n\n", p256_pem(1));
        assert_eq!(PublicKey::from_pem(with_space.as_bytes(), "b").unwrap(), k);
        assert_ne!(PublicKey::from_pem(p256_pem(2).as_bytes(), "c").unwrap(), k);
        assert_eq!(k.kind(), "ECDSA P-256");
    }

    /// A well-formed P-256 SubjectPublicKeyInfo whose point is off the curve.
    #[test]
    fn a_point_off_the_curve_is_refused() {
        let mut der = p256::SecretKey::from_slice(&[1; 32])
            .unwrap()
            .public_key()
            .to_public_key_der()
            .unwrap()
            .into_vec();
        let last = der.len() - 1;
        der[last] ^= 1;
        let e = PublicKey::from_spki(&der, "k").unwrap_err();
        assert!(e.reason().starts_with("malformed ECDSA key: "), "{e}");
    }
}

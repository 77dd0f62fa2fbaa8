//! The public keys a `sigstoreSigned` requirement trusts: one PEM
//! `PUBLIC KEY` (SubjectPublicKeyInfo) each, as `cosign generate-key-pair`
//! and `skopeo generate-sigstore-key` write them. Checked when the policy is
//! loaded, so a bad key stops the daemon at start, not at the first pull.

use p256::pkcs8::DecodePublicKey as _;
use spki::{ObjectIdentifier, SubjectPublicKeyInfoRef};

const EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const P384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
const RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");

/// The signature algorithms cosign keys come in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAlgorithm {
    EcdsaP256,
    EcdsaP384,
    Rsa,
    Ed25519,
}

/// A validated signer public key.
#[derive(Clone, PartialEq, Eq)]
pub struct SigstoreKey {
    algorithm: KeyAlgorithm,
    spki_der: Vec<u8>,
}

impl std::fmt::Debug for SigstoreKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigstoreKey({:?})", self.algorithm)
    }
}

impl SigstoreKey {
    /// Parses one PEM `PUBLIC KEY` block (surrounding whitespace allowed).
    pub fn from_pem(pem: &[u8]) -> Result<Self, String> {
        let text = pem.trim_ascii();
        // pem-rfc7468's own reasons name the wrong part for plain garbage.
        let (label, der) =
            der::pem::decode_vec(text).map_err(|_| "not a single PEM block".to_string())?;
        if label != "PUBLIC KEY" {
            return Err(format!("PEM block is {label:?}, want \"PUBLIC KEY\""));
        }
        Self::from_der(der)
    }

    fn from_der(der: Vec<u8>) -> Result<Self, String> {
        let spki = SubjectPublicKeyInfoRef::try_from(der.as_slice())
            .map_err(|e| format!("not a SubjectPublicKeyInfo ({e})"))?;
        let invalid = |e: &dyn std::fmt::Display| format!("invalid key ({e})");
        let algorithm = match spki.algorithm.oid {
            EC_PUBLIC_KEY => match spki.algorithm.parameters_oid().map_err(|e| invalid(&e))? {
                P256 => {
                    p256::PublicKey::from_public_key_der(&der).map_err(|e| invalid(&e))?;
                    KeyAlgorithm::EcdsaP256
                }
                P384 => {
                    p384::PublicKey::from_public_key_der(&der).map_err(|e| invalid(&e))?;
                    KeyAlgorithm::EcdsaP384
                }
                // The verifier has no P-521 (cosign never makes such keys):
                // refused here, at start, not at the first pull.
                curve => {
                    return Err(format!(
                        "unsupported elliptic curve {curve} (P-256 and P-384 are)"
                    ));
                }
            },
            RSA => {
                rsa::RsaPublicKey::from_public_key_der(&der).map_err(|e| invalid(&e))?;
                KeyAlgorithm::Rsa
            }
            ED25519 => {
                if spki.algorithm.parameters.is_some()
                    || spki.subject_public_key.raw_bytes().len() != 32
                {
                    return Err("invalid Ed25519 key".into());
                }
                KeyAlgorithm::Ed25519
            }
            other => return Err(format!("unsupported key algorithm {other}")),
        };
        Ok(SigstoreKey {
            algorithm,
            spki_der: der,
        })
    }

    pub fn algorithm(&self) -> KeyAlgorithm {
        self.algorithm
    }

    /// The DER SubjectPublicKeyInfo.
    pub fn spki_der(&self) -> &[u8] {
        &self.spki_der
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

    #[test]
    fn reads_keys_cosign_and_skopeo_write() {
        let k = SigstoreKey::from_pem(p256_pem(1).as_bytes()).unwrap();
        assert_eq!(k.algorithm(), KeyAlgorithm::EcdsaP256);
        let with_space = format!("\n{}\n\n", p256_pem(1));
        assert_eq!(SigstoreKey::from_pem(with_space.as_bytes()).unwrap(), k);
        let p384 = p384::SecretKey::from_slice(&[7; 48])
            .unwrap()
            .public_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap();
        assert_eq!(
            SigstoreKey::from_pem(p384.as_bytes()).unwrap().algorithm(),
            KeyAlgorithm::EcdsaP384
        );
        // Ed25519 SubjectPublicKeyInfo (RFC 8410's example key).
        let ed = "-----BEGIN PUBLIC KEY-----\n\
                  MCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n\
                  -----END PUBLIC KEY-----\n";
        assert_eq!(
            SigstoreKey::from_pem(ed.as_bytes()).unwrap().algorithm(),
            KeyAlgorithm::Ed25519
        );
    }

    #[test]
    fn refuses_what_is_not_a_public_key() {
        assert_eq!(
            SigstoreKey::from_pem(b"hello").unwrap_err(),
            "not a single PEM block"
        );
        let private = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        assert_eq!(
            SigstoreKey::from_pem(private.as_bytes()).unwrap_err(),
            "PEM block is \"PRIVATE KEY\", want \"PUBLIC KEY\""
        );
        let two = format!("{}{}", p256_pem(1), p256_pem(2));
        assert_eq!(
            SigstoreKey::from_pem(two.as_bytes()).unwrap_err(),
            "not a single PEM block"
        );
        // A valid P-521 key: the verifier could never use it.
        let mut scalar = [3; 66];
        scalar[0] = 0;
        let p521 = p521::SecretKey::from_slice(&scalar)
            .unwrap()
            .public_key()
            .to_public_key_der()
            .unwrap()
            .into_vec();
        assert_eq!(
            SigstoreKey::from_der(p521).unwrap_err(),
            "unsupported elliptic curve 1.3.132.0.35 (P-256 and P-384 are)"
        );
        // A well-formed P-256 SubjectPublicKeyInfo whose point is off the curve.
        let mut der = p256::SecretKey::from_slice(&[1; 32])
            .unwrap()
            .public_key()
            .to_public_key_der()
            .unwrap()
            .into_vec();
        let last = der.len() - 1;
        der[last] ^= 1;
        assert!(
            SigstoreKey::from_der(der)
                .unwrap_err()
                .starts_with("invalid key (")
        );
    }
}

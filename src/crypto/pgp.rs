//! OpenPGP key wrapping: one message with a PKESK packet per recipient
//! around the private options, as ocicrypt's `pgp` scheme writes it.

use std::io::Read;

use pgp::composed::{Message, MessageBuilder, PublicOrSecret, SignedPublicKey, SignedSecretKey};
use pgp::crypto::sym::SymmetricKeyAlgorithm;
use pgp::types::{KeyDetails, Password};
use zeroize::Zeroizing;

use super::Error;
use super::keys::KeyMaterial;
use super::options::{MAX_WRAPPED_KEY, check_wrapped_size};
use super::wipe;

/// Parses binary (`gpg --export[-secret-keys]`) or armored key rings.
pub fn parse_keys(data: &[u8]) -> Result<Vec<KeyMaterial>, String> {
    let (iter, _) =
        PublicOrSecret::from_reader_many(data).map_err(|e| format!("OpenPGP keys: {e}"))?;
    let mut out = Vec::new();
    for k in iter {
        match k.map_err(|e| format!("OpenPGP keys: {e}"))? {
            PublicOrSecret::Public(p) => out.push(KeyMaterial::PgpPublic(Box::new(p))),
            PublicOrSecret::Secret(s) => out.push(KeyMaterial::PgpSecret(Box::new(s))),
        }
    }
    if out.is_empty() {
        return Err("no OpenPGP keys in the file".into());
    }
    Ok(out)
}

/// Encrypts `plaintext` to the encryption subkeys of every recipient.
pub fn wrap(recipients: &[&SignedPublicKey], plaintext: &[u8]) -> Result<Vec<u8>, Error> {
    let mut rng = rand::thread_rng();
    let mut b = MessageBuilder::from_bytes("", plaintext.to_vec())
        .seipd_v1(&mut rng, SymmetricKeyAlgorithm::AES256);
    for r in recipients {
        let subkeys: Vec<_> = r
            .public_subkeys
            .iter()
            .filter(|s| {
                s.key.algorithm().can_encrypt()
                    && s.signatures.iter().any(|sig| {
                        let f = sig.key_flags();
                        f.encrypt_comms() || f.encrypt_storage()
                    })
            })
            .collect();
        if subkeys.is_empty() {
            return Err(Error::BadKey(format!(
                "pgp: key {} has no encryption subkey",
                hex::encode(r.primary_key.fingerprint().as_bytes())
            )));
        }
        for s in subkeys {
            b.encrypt_to_key(&mut rng, &s.key)
                .map_err(|e| Error::BadKey(format!("pgp: {e}")))?;
        }
    }
    b.to_vec(&mut rng)
        .map_err(|e| Error::Malformed(format!("pgp: writing message: {e}")))
}

/// Decrypts a message with the first secret key that fits. `Ok(None)`: none fits.
pub fn unwrap(
    msg: &[u8],
    keys: &[(&SignedSecretKey, &str)],
) -> Result<Option<Zeroizing<Vec<u8>>>, Error> {
    if keys.is_empty() {
        return Ok(None);
    }
    check_wrapped_size("pgp", "wrapped key", msg.len())?;
    for (key, pw) in keys {
        let parsed = Message::from_bytes(msg)
            .map_err(|e| Error::Malformed(format!("pgp: not an OpenPGP message: {e}")))?;
        let password = Password::from(*pw);
        match parsed.decrypt(&password, key) {
            Ok(mut m) => {
                // A message may be compressed: read no more than the limit
                // (and one byte to tell a message over it), into a buffer
                // that leaves no copies of the private options behind.
                let data = wipe::read_to_end((&mut m).take(MAX_WRAPPED_KEY as u64 + 1))
                    .map_err(|e| Error::Malformed(format!("pgp: {e}")))?;
                check_wrapped_size("pgp", "unwrapped message", data.len())?;
                return Ok(Some(data));
            }
            Err(e) => tracing::debug!("pgp: key does not decrypt this message: {e}"),
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use pgp::composed::{EncryptionCaps, KeyType, SecretKeyParamsBuilder, SubkeyParamsBuilder};
    use pgp::crypto::ecc_curve::ECCCurve;
    use pgp::types::CompressionAlgorithm;

    use super::*;

    fn key() -> SignedSecretKey {
        SecretKeyParamsBuilder::default()
            .key_type(KeyType::Ed25519Legacy)
            .can_certify(true)
            .can_sign(true)
            .primary_user_id("test <test@example.com>".into())
            .subkey(
                SubkeyParamsBuilder::default()
                    .key_type(KeyType::ECDH(ECCCurve::Curve25519Legacy))
                    .can_encrypt(EncryptionCaps::All)
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap()
            .generate(rand::thread_rng())
            .unwrap()
    }

    /// A small message that would inflate to 16 MiB is not inflated (the
    /// private options are never compressed; a compressed message fails as
    /// options), and a wrapped key over the limit is refused unparsed.
    #[test]
    fn compressed_and_oversized_messages_cost_no_more_than_their_size() {
        let k = key();
        let public = k.to_public_key();
        let mut rng = rand::thread_rng();
        let mut b = MessageBuilder::from_bytes("", vec![0u8; 16 << 20])
            .seipd_v1(&mut rng, SymmetricKeyAlgorithm::AES256);
        b.compression(CompressionAlgorithm::ZLIB);
        for s in &public.public_subkeys {
            b.encrypt_to_key(&mut rng, &s.key).unwrap();
        }
        let bomb = b.to_vec(&mut rng).unwrap();
        assert!(bomb.len() < 100 << 10, "{} bytes", bomb.len());
        let got = unwrap(&bomb, &[(&k, "")]).unwrap().unwrap();
        assert!(got.len() < bomb.len(), "{} bytes", got.len());

        let fine = wrap(&[&public], b"{}").unwrap();
        assert_eq!(
            unwrap(&fine, &[(&k, "")]).unwrap().unwrap().as_slice(),
            b"{}"
        );
        let e = unwrap(&vec![0x80; MAX_WRAPPED_KEY + 1], &[(&k, "")]).unwrap_err();
        assert!(matches!(e, Error::Malformed(_)), "{e}");
        assert_eq!(
            e.to_string(),
            format!(
                "pgp: wrapped key of {} bytes is over the {MAX_WRAPPED_KEY}-byte limit",
                MAX_WRAPPED_KEY + 1
            )
        );
    }
}

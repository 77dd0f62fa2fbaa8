//! OpenPGP key wrapping: one message with a PKESK packet per recipient
//! around the private options, as ocicrypt's `pgp` scheme writes it.

use pgp::composed::{Message, MessageBuilder, PublicOrSecret, SignedPublicKey, SignedSecretKey};
use pgp::crypto::sym::SymmetricKeyAlgorithm;
use pgp::types::{KeyDetails, Password};
use zeroize::Zeroizing;

use super::Error;
use super::keys::KeyMaterial;

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
    for (key, pw) in keys {
        let parsed = Message::from_bytes(msg)
            .map_err(|e| Error::Malformed(format!("pgp: not an OpenPGP message: {e}")))?;
        let password = Password::from(*pw);
        match parsed.decrypt(&password, key) {
            Ok(mut m) => {
                let data = m
                    .as_data_vec()
                    .map_err(|e| Error::Malformed(format!("pgp: {e}")))?;
                return Ok(Some(Zeroizing::new(data)));
            }
            Err(e) => tracing::debug!("pgp: key does not decrypt this message: {e}"),
        }
    }
    Ok(None)
}

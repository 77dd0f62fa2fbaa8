//! Who to encrypt to (`--recipient`), and the keys we hold to decrypt (`--key`).

use std::path::Path;
use std::time::Duration;

use pgp::composed::{SignedPublicKey, SignedSecretKey};
use zeroize::Zeroizing;

use super::Error;
use super::keyprovider::{self, ProviderConfig};
use super::keys::{Certificate, KeyArg, KeyMaterial, PrivateKey, PublicKey, ReadableKeys};

/// One `--recipient SCHEME:VALUE`.
pub enum Recipient {
    Jwe(PublicKey),
    Pkcs7(Certificate),
    Pgp(Box<SignedPublicKey>),
    /// `provider:NAME[:ARG]`; the keyprovider named in the ocicrypt config.
    Provider {
        name: String,
        arg: Option<String>,
    },
}

impl Recipient {
    /// Parses `jwe:PUB`, `pkcs7:CERT`, `pgp:KEYFILE` or `provider:NAME[:ARG]`.
    pub fn parse(spec: &str) -> Result<Vec<Recipient>, Error> {
        let (scheme, value) = spec.split_once(':').ok_or_else(|| {
            Error::BadKey(format!(
                "recipient {spec:?}: want jwe:FILE, pkcs7:FILE, pgp:FILE or provider:NAME"
            ))
        })?;
        let load = |what: &str| -> Result<Vec<KeyMaterial>, Error> {
            KeyArg {
                path: value.into(),
                password: None,
            }
            .load(ReadableKeys::Refuse)
            .map_err(|e| Error::BadKey(format!("recipient {scheme}: {what}: {e}")))
        };
        let wrong = |k: &KeyMaterial, want: &str| {
            Error::BadKey(format!(
                "recipient {spec}: the file holds a {}, not {want}",
                k.kind()
            ))
        };
        match scheme {
            "jwe" => load("public key")?
                .into_iter()
                .map(|k| match k {
                    KeyMaterial::Public(p) => Ok(Recipient::Jwe(p)),
                    other => Err(wrong(&other, "a public key")),
                })
                .collect(),
            "pkcs7" => load("certificate")?
                .into_iter()
                .map(|k| match k {
                    KeyMaterial::Certificate(c) => Ok(Recipient::Pkcs7(c)),
                    other => Err(wrong(&other, "an X.509 certificate")),
                })
                .collect(),
            "pgp" => load("OpenPGP public key")?
                .into_iter()
                .map(|k| match k {
                    KeyMaterial::PgpPublic(p) => Ok(Recipient::Pgp(p)),
                    other => Err(wrong(&other, "an OpenPGP public key (gpg --export)")),
                })
                .collect(),
            "provider" => {
                let (name, arg) = match value.split_once(':') {
                    Some((n, a)) => (n.to_string(), Some(a.to_string())),
                    None => (value.to_string(), None),
                };
                if name.is_empty() {
                    return Err(Error::BadKey(format!(
                        "recipient {spec:?}: empty provider name"
                    )));
                }
                Ok(vec![Recipient::Provider { name, arg }])
            }
            other => Err(Error::BadKey(format!(
                "recipient {spec:?}: unknown scheme {other:?} (jwe, pkcs7, pgp, provider)"
            ))),
        }
    }
}

/// How a ring's key files are checked and its keyproviders called.
#[derive(Debug, Clone, Copy)]
pub struct KeyOptions {
    /// Whether private key files may be readable by others.
    pub readable_keys: ReadableKeys,
    /// How long one keyprovider call may take.
    pub provider_timeout: Duration,
}

impl Default for KeyOptions {
    fn default() -> Self {
        KeyOptions {
            readable_keys: ReadableKeys::Refuse,
            provider_timeout: keyprovider::DEFAULT_TIMEOUT,
        }
    }
}

/// The keys a decryption may use: `--key` files, a keys directory, and the
/// keyproviders of `$OCICRYPT_KEYPROVIDER_CONFIG`.
#[derive(Default)]
pub struct KeyRing {
    // Private, so that keys come in through `add` or a file read, and the
    // fingerprint always tells what the ring holds.
    private: Vec<PrivateKey>,
    certs: Vec<Certificate>,
    pgp: Vec<(SignedSecretKey, Zeroizing<String>)>,
    /// Every keyprovider named here is asked to unwrap its own
    /// `provider.NAME` entries, as ocicrypt asks every configured provider.
    pub provider_config: Option<ProviderConfig>,
    /// Whether `--key` files with private keys may be readable by others.
    pub readable_keys: ReadableKeys,
    /// The digests of the key files read, for [`KeyRing::fingerprint`].
    files: Vec<[u8; 32]>,
    /// Whether keys were added that no file read vouches for.
    unfiled: bool,
}

impl KeyRing {
    /// The ring every command decrypts with (`decrypt`, `mount`,
    /// `stream-decrypt`, `serve`…), so that they find the same keys:
    /// the `--key` arguments `args`, the key files under `dir`, and every
    /// keyprovider `$OCICRYPT_KEYPROVIDER_CONFIG` names.
    pub fn load(args: &[String], dir: Option<&Path>, opts: KeyOptions) -> Result<KeyRing, Error> {
        let mut ring = KeyRing {
            provider_config: ProviderConfig::from_env()?.map(|mut c| {
                c.timeout = opts.provider_timeout;
                c
            }),
            readable_keys: opts.readable_keys,
            ..Default::default()
        };
        for a in args {
            // A password given inline is not repeated in the error.
            let shown = a.split(":pass=").next().unwrap_or(a);
            ring.add_arg(a).map_err(|e| match e {
                Error::KeyProvider(m) => Error::KeyProvider(format!("--key {shown}: {m}")),
                e => Error::BadKey(format!("--key {shown}: {e}")),
            })?;
        }
        if let Some(d) = dir {
            let none = Zeroizing::new(String::new());
            for f in super::keys::load_dir(d, opts.readable_keys)? {
                ring.add_file(f, &none);
            }
        }
        Ok(ring)
    }

    /// What the ring's keys are, as the files they were read from: two
    /// rings with the same fingerprint unwrap the same layer keys, unless
    /// a keyprovider is asked. `None` when keys were added that were not
    /// read from a file.
    pub fn fingerprint(&self) -> Option<[u8; 32]> {
        use sha2::{Digest, Sha256};
        if self.unfiled {
            return None;
        }
        let mut files = self.files.clone();
        files.sort_unstable();
        let mut h = Sha256::new();
        for f in &files {
            h.update(f);
        }
        Some(h.finalize().into())
    }

    fn add_file(&mut self, f: super::keys::KeyFile, password: &Zeroizing<String>) {
        self.files.push(f.digest);
        for k in f.keys {
            self.add_material(k, password);
        }
    }

    /// Adds one `--key` argument: `FILE[:pass=…]` or `provider:NAME`. Every
    /// configured provider is asked anyway; naming one checks it is configured.
    pub fn add_arg(&mut self, arg: &str) -> Result<(), Error> {
        if let Some(name) = arg.strip_prefix("provider:") {
            let name = name.split(':').next().unwrap_or(name);
            keyprovider::provider(self.provider_config.as_ref(), name)?;
            return Ok(());
        }
        let ka = KeyArg::parse(arg)?;
        let pw = ka
            .password
            .clone()
            .unwrap_or_else(|| Zeroizing::new(String::new()));
        let f = ka.read(self.readable_keys)?;
        self.add_file(f, &pw);
        Ok(())
    }

    /// Adds parsed key material; public keys add nothing to decrypt with.
    pub fn add(&mut self, k: KeyMaterial, password: &Zeroizing<String>) {
        self.unfiled = true;
        self.add_material(k, password);
    }

    fn add_material(&mut self, k: KeyMaterial, password: &Zeroizing<String>) {
        match k {
            KeyMaterial::Private(p) => self.private.push(p),
            KeyMaterial::Certificate(c) => self.certs.push(c),
            KeyMaterial::PgpSecret(s) => self.pgp.push((*s, password.clone())),
            KeyMaterial::Public(_) | KeyMaterial::PgpPublic(_) => {}
        }
    }

    pub fn private_keys(&self) -> &[PrivateKey] {
        &self.private
    }

    pub fn certificates(&self) -> &[Certificate] {
        &self.certs
    }

    /// PGP secret keys, each with the password it was given with.
    pub fn pgp_keys(&self) -> &[(SignedSecretKey, Zeroizing<String>)] {
        &self.pgp
    }

    /// The configured keyprovider called `name`, if any.
    pub fn provider(&self, name: &str) -> Option<&keyprovider::Provider> {
        self.provider_config.as_ref()?.providers.get(name)
    }

    /// How many keys are held, for error messages.
    pub fn len(&self) -> usize {
        self.private.len()
            + self.pgp.len()
            + self
                .provider_config
                .as_ref()
                .map_or(0, |c| c.providers.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use p256::pkcs8::{EncodePrivateKey, LineEnding};

    use super::*;

    fn key_file(p: &Path) {
        let pem = p256::SecretKey::random(&mut rand::rngs::OsRng)
            .to_pkcs8_pem(LineEnding::LF)
            .unwrap();
        std::fs::write(p, pem.as_bytes()).unwrap();
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    fn ring(dir: &Path) -> KeyRing {
        KeyRing::load(&[], Some(dir), KeyOptions::default()).unwrap()
    }

    #[test]
    fn the_fingerprint_changes_with_the_key_files_only() {
        let d = tempfile::tempdir().unwrap();
        key_file(&d.path().join("a.pem"));
        key_file(&d.path().join("b.pem"));
        let first = ring(d.path()).fingerprint().unwrap();
        assert_eq!(ring(d.path()).fingerprint(), Some(first), "read again");

        // Another key in place of one, a key removed, a key added.
        let b = std::fs::read(d.path().join("b.pem")).unwrap();
        key_file(&d.path().join("b.pem"));
        let replaced = ring(d.path()).fingerprint().unwrap();
        assert_ne!(replaced, first);
        std::fs::remove_file(d.path().join("b.pem")).unwrap();
        let removed = ring(d.path()).fingerprint().unwrap();
        assert!(removed != first && removed != replaced);
        std::fs::write(d.path().join("b.pem"), &b).unwrap();
        std::fs::set_permissions(
            d.path().join("b.pem"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        assert_eq!(ring(d.path()).fingerprint(), Some(first), "b is back");

        // Keys that came from no file leave the ring without a fingerprint.
        let mut r = ring(d.path());
        let k = p256::SecretKey::random(&mut rand::rngs::OsRng);
        r.add(
            KeyMaterial::Private(PrivateKey::P256(k)),
            &Zeroizing::new(String::new()),
        );
        assert_eq!(r.fingerprint(), None);
    }
}

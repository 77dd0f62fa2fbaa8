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
    pub private: Vec<PrivateKey>,
    pub certs: Vec<Certificate>,
    pub pgp: Vec<(SignedSecretKey, Zeroizing<String>)>,
    /// Every keyprovider named here is asked to unwrap its own
    /// `provider.NAME` entries, as ocicrypt asks every configured provider.
    pub provider_config: Option<ProviderConfig>,
    /// Whether `--key` files with private keys may be readable by others.
    pub readable_keys: ReadableKeys,
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
            for k in super::keys::load_dir(d, opts.readable_keys)? {
                ring.add(k, &none);
            }
        }
        Ok(ring)
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
        for k in ka.load(self.readable_keys)? {
            self.add(k, &pw);
        }
        Ok(())
    }

    /// Adds parsed key material; public keys add nothing to decrypt with.
    pub fn add(&mut self, k: KeyMaterial, password: &Zeroizing<String>) {
        match k {
            KeyMaterial::Private(p) => self.private.push(p),
            KeyMaterial::Certificate(c) => self.certs.push(c),
            KeyMaterial::PgpSecret(s) => self.pgp.push((*s, password.clone())),
            KeyMaterial::Public(_) | KeyMaterial::PgpPublic(_) => {}
        }
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

//! Key files: PEM (PKCS#1, PKCS#8, encrypted PKCS#8, SEC1, SPKI, X.509), DER,
//! JWK and OpenPGP key rings, and the `FILE[:pass=…|:file=…|:fd=…]` syntax
//! imgcrypt uses. All private material zeroizes on drop (the `rsa`, `p256`…
//! and `pgp` key types do so themselves).
//!
//! A file that holds private key material must be protected as ssh wants
//! its private keys: owned by root or by this process's user, writable by
//! its owner only, and readable by its owner only unless the operator
//! allows more ([`ReadableKeys::Allow`]). The checks look at the file a
//! symlink leads to (Kubernetes secret volumes are symlinks into `..data/`)
//! and run after parsing tells private from public material, before any
//! private key is handed on. Public keys and certificates may be readable.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use der::{Decode, Encode};
use pkcs8::DecodePrivateKey;
use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::pkcs1::DecodeRsaPublicKey;
use rsa::{BigUint, RsaPrivateKey, RsaPublicKey};
use spki::DecodePublicKey;
use zeroize::Zeroizing;

use super::Error;
use super::wipe::{SecretString, json_error};

/// An RSA or EC private key (JWE, PKCS#7).
pub enum PrivateKey {
    Rsa(Box<RsaPrivateKey>),
    P256(p256::SecretKey),
    P384(p384::SecretKey),
    P521(p521::SecretKey),
}

/// An RSA or EC public key to encrypt to (JWE).
#[derive(Clone, Debug)]
pub enum PublicKey {
    /// With `true` when a JWK asked for `RSA-OAEP-256`.
    Rsa(Box<RsaPublicKey>, bool),
    P256(p256::PublicKey),
    P384(p384::PublicKey),
    P521(p521::PublicKey),
}

/// An X.509 certificate with an RSA key (PKCS#7 recipients).
#[derive(Clone, Debug)]
pub struct Certificate {
    /// DER of the issuer Name and of the serial INTEGER, for IssuerAndSerialNumber.
    pub issuer_der: Vec<u8>,
    pub serial_der: Vec<u8>,
    pub public: RsaPublicKey,
}

/// Everything a key file can hold.
pub enum KeyMaterial {
    Private(PrivateKey),
    Public(PublicKey),
    Certificate(Certificate),
    PgpSecret(Box<pgp::composed::SignedSecretKey>),
    PgpPublic(Box<pgp::composed::SignedPublicKey>),
}

impl KeyMaterial {
    /// Whether this is secret material, which only its owner may read.
    pub fn is_secret(&self) -> bool {
        matches!(self, KeyMaterial::Private(_) | KeyMaterial::PgpSecret(_))
    }

    pub fn kind(&self) -> &'static str {
        match self {
            KeyMaterial::Private(_) => "private key",
            KeyMaterial::Public(_) => "public key",
            KeyMaterial::Certificate(_) => "certificate",
            KeyMaterial::PgpSecret(_) => "OpenPGP secret key",
            KeyMaterial::PgpPublic(_) => "OpenPGP public key",
        }
    }
}

/// Whether a private key file may be readable by its group or by others.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ReadableKeys {
    /// Refuse it, as ssh refuses an unprotected private key file.
    #[default]
    Refuse,
    /// Accept it (`--allow-readable-keys`), e.g. from a Kubernetes secret
    /// volume left at its default mode 0644. Owner and write checks stay.
    Allow,
}

/// A key file argument: path and optional password, as `FILE:pass=PW`,
/// `FILE:file=PWFILE` or `FILE:fd=N` (imgcrypt's syntax).
///
/// `pass=` puts the password on the command line, where any local user
/// reads it (`/proc/PID/cmdline`); it stays for imgcrypt's sake, and
/// [`KeyArg::password_in_argv`] lets the CLI warn about it.
pub struct KeyArg {
    pub path: PathBuf,
    pub password: Option<Zeroizing<String>>,
}

impl KeyArg {
    /// Whether `arg` carries its password itself (`FILE:pass=PW`) rather
    /// than naming a file or descriptor that holds it.
    pub fn password_in_argv(arg: &str) -> bool {
        arg.contains(":pass=")
    }

    pub fn parse(arg: &str) -> Result<Self, Error> {
        for (marker, kind) in [(":pass=", 0), (":file=", 1), (":fd=", 2)] {
            if let Some(i) = arg.rfind(marker) {
                let path = PathBuf::from(&arg[..i]);
                let v = &arg[i + marker.len()..];
                let password = match kind {
                    0 => Zeroizing::new(v.to_string()),
                    1 => read_password(Path::new(v))?,
                    _ => {
                        let fd: u32 = v
                            .parse()
                            .map_err(|_| Error::BadKey(format!("{arg}: fd= wants a number")))?;
                        read_password(&PathBuf::from(format!("/proc/self/fd/{fd}")))?
                    }
                };
                return Ok(KeyArg {
                    path,
                    password: Some(password),
                });
            }
        }
        Ok(KeyArg {
            path: PathBuf::from(arg),
            password: None,
        })
    }

    /// Reads and parses the file; refuses private key material in a file
    /// that others could change or (unless `readable` allows it) read.
    pub fn load(&self, readable: ReadableKeys) -> Result<Vec<KeyMaterial>, Error> {
        self.read(readable).map(|f| f.keys)
    }

    /// [`KeyArg::load`], with the digest of what was read.
    pub fn read(&self, readable: ReadableKeys) -> Result<KeyFile, Error> {
        let (data, meta) = read_key_file(&self.path)
            .map_err(|e| Error::BadKey(format!("{}: {e}", self.path.display())))?;
        let password = self.password.as_deref().map(|s| s.as_str());
        let keys = parse_key_file(&data, password)
            .map_err(|e| Error::BadKey(format!("{}: {e}", self.path.display())))?;
        check_protected(&self.path, &meta, &keys, readable)?;
        Ok(KeyFile::new(keys, &data, password))
    }
}

/// The keys one file held, and the SHA-256 of its bytes and password: two
/// files with the same digest hold keys that open the same layers.
pub struct KeyFile {
    pub keys: Vec<KeyMaterial>,
    pub digest: [u8; 32],
}

impl KeyFile {
    /// `keys`, parsed from a file's bytes `data` with `password`.
    fn new(keys: Vec<KeyMaterial>, data: &[u8], password: Option<&str>) -> Self {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update((data.len() as u64).to_be_bytes());
        h.update(data);
        h.update(password.unwrap_or("").as_bytes());
        KeyFile {
            keys,
            digest: h.finalize().into(),
        }
    }
}

/// The file's bytes and the metadata of the very file read (through any
/// symlinks), so the checks see what was read.
fn read_key_file(p: &Path) -> std::io::Result<(Zeroizing<Vec<u8>>, std::fs::Metadata)> {
    let mut f = std::fs::File::open(p)?;
    let meta = f.metadata()?;
    let mut data = Zeroizing::new(Vec::new());
    f.read_to_end(&mut data)?;
    Ok((data, meta))
}

/// Refuses `keys` read from `path` if they include secret material and the
/// file is not protected; see the module documentation.
fn check_protected(
    path: &Path,
    meta: &std::fs::Metadata,
    keys: &[KeyMaterial],
    readable: ReadableKeys,
) -> Result<(), Error> {
    if !keys.iter().any(KeyMaterial::is_secret) {
        return Ok(());
    }
    let (uid, euid) = (meta.uid(), nix::unistd::geteuid().as_raw());
    let mode = meta.mode() & 0o7777;
    let p = path.display();
    if uid != 0 && uid != euid {
        return Err(Error::BadKey(format!(
            "private key file {p} is owned by uid {uid}, not by root or by this process's user (uid {euid}); it will not be used"
        )));
    }
    if mode & 0o022 != 0 {
        return Err(Error::BadKey(format!(
            "permissions {mode:04o} for private key file {p} let others than its owner change it; it will not be used (chmod 600)"
        )));
    }
    if mode & 0o044 != 0 && readable == ReadableKeys::Refuse {
        return Err(Error::BadKey(format!(
            "UNPROTECTED PRIVATE KEY FILE: permissions {mode:04o} for {p} are too open: a private key file must be readable by its owner only (chmod 600), unless --allow-readable-keys is given"
        )));
    }
    Ok(())
}

fn read_password(p: &Path) -> Result<Zeroizing<String>, Error> {
    let bad = |e: std::io::Error| Error::BadKey(format!("password file {}: {e}", p.display()));
    // A pipe (`fd=`) has no size to read up front: the buffer grows, wiping.
    let raw = std::fs::File::open(p)
        .and_then(super::wipe::read_to_end)
        .map_err(bad)?;
    let text = std::str::from_utf8(&raw)
        .map_err(|_| Error::BadKey(format!("password file {}: not UTF-8", p.display())))?;
    Ok(Zeroizing::new(
        text.trim_end_matches(['\n', '\r']).to_string(),
    ))
}

/// Parses whatever keys a file holds; fails when it holds none.
pub fn parse_key_file(data: &[u8], password: Option<&str>) -> Result<Vec<KeyMaterial>, String> {
    let trimmed = trim_ascii(data);
    if trimmed.starts_with(b"{") {
        return parse_jwk(trimmed).map(|k| vec![k]);
    }
    if trimmed.starts_with(b"-----BEGIN PGP") {
        // Secret keys are unlocked when used, with the password given then.
        return super::pgp::parse_keys(data);
    }
    if trimmed.starts_with(b"-----BEGIN") {
        let text = std::str::from_utf8(data).map_err(|_| "PEM file is not text".to_string())?;
        let blocks = pem_blocks(text)?;
        let mut out = Vec::new();
        for b in &blocks {
            out.push(parse_pem_block(b, password)?);
        }
        if out.is_empty() {
            return Err("no PEM blocks".into());
        }
        return Ok(out);
    }
    if let Ok(k) = parse_der(data, password) {
        return Ok(vec![k]);
    }
    if data.first().is_some_and(|b| b & 0x80 != 0)
        && let Ok(k) = super::pgp::parse_keys(data)
    {
        return Ok(k);
    }
    Err("not a recognised key: want PEM, DER, JWK or an OpenPGP key export".into())
}

fn trim_ascii(d: &[u8]) -> &[u8] {
    let start = d
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(d.len());
    &d[start..]
}

struct PemBlock {
    label: String,
    /// `DEK-Info: ALG,IVHEX` of OpenSSL's legacy encrypted PEM.
    dek_info: Option<String>,
    der: Zeroizing<Vec<u8>>,
}

fn pem_blocks(text: &str) -> Result<Vec<PemBlock>, String> {
    let mut out = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let Some(label) = line
            .trim()
            .strip_prefix("-----BEGIN ")
            .and_then(|l| l.strip_suffix("-----"))
        else {
            continue;
        };
        let end = format!("-----END {label}-----");
        // Sized for the whole file, so that it never moves and leaves a copy.
        let mut body = Zeroizing::new(String::with_capacity(text.len()));
        let mut dek_info = None;
        let mut closed = false;
        for l in lines.by_ref() {
            let l = l.trim();
            if l == end {
                closed = true;
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                if k == "DEK-Info" {
                    dek_info = Some(v.trim().to_string());
                }
                continue;
            }
            body.push_str(l);
        }
        if !closed {
            return Err(format!("PEM block {label:?} has no END line"));
        }
        let der = Zeroizing::new(
            // The decoder's error names a byte of the key: not printed.
            B64.decode(body.as_bytes())
                .map_err(|_| format!("PEM block {label:?}: bad base64"))?,
        );
        out.push(PemBlock {
            label: label.to_string(),
            dek_info,
            der,
        });
    }
    Ok(out)
}

fn parse_pem_block(b: &PemBlock, password: Option<&str>) -> Result<KeyMaterial, String> {
    if let Some(info) = &b.dek_info {
        let der = legacy_decrypt(&b.label, info, &b.der, password)?;
        let plain = PemBlock {
            label: b.label.clone(),
            dek_info: None,
            der,
        };
        // CBC padding lets one wrong password in 256 through: the key it
        // yields does not parse.
        return parse_pem_block(&plain, None).map_err(|_| wrong_password(&b.label));
    }
    match b.label.as_str() {
        "PRIVATE KEY" => parse_pkcs8(&b.der).map(KeyMaterial::Private),
        "ENCRYPTED PRIVATE KEY" => decrypt_pkcs8(&b.der, password).map(KeyMaterial::Private),
        "RSA PRIVATE KEY" => RsaPrivateKey::from_pkcs1_der(&b.der)
            .map(|k| KeyMaterial::Private(PrivateKey::Rsa(Box::new(k))))
            .map_err(|e| format!("RSA PRIVATE KEY: {e}")),
        "EC PRIVATE KEY" => parse_sec1(&b.der).map(KeyMaterial::Private),
        "PUBLIC KEY" => parse_spki(&b.der).map(KeyMaterial::Public),
        "RSA PUBLIC KEY" => RsaPublicKey::from_pkcs1_der(&b.der)
            .map(|k| KeyMaterial::Public(PublicKey::Rsa(Box::new(k), false)))
            .map_err(|e| format!("RSA PUBLIC KEY: {e}")),
        "CERTIFICATE" => parse_certificate(&b.der).map(KeyMaterial::Certificate),
        other => Err(format!("unsupported PEM block {other:?}")),
    }
}

/// Decrypts OpenSSL's legacy PEM encryption (`Proc-Type: 4,ENCRYPTED` with
/// `DEK-Info`): the key is EVP_BytesToKey(MD5, password, first 8 IV bytes).
fn legacy_decrypt(
    label: &str,
    info: &str,
    data: &[u8],
    password: Option<&str>,
) -> Result<Zeroizing<Vec<u8>>, String> {
    use cbc::cipher::{BlockDecryptMut, KeyIvInit, block_padding::Pkcs7};
    use md5::{Digest, Md5};
    let Some(pw) = password else {
        return Err(format!(
            "{label}: the private key is password protected; give the password as FILE:pass=… or FILE:file=…"
        ));
    };
    let (alg, iv_hex) = info
        .split_once(',')
        .ok_or_else(|| format!("{label}: bad DEK-Info {info:?}"))?;
    let iv = hex::decode(iv_hex.trim()).map_err(|_| format!("{label}: bad DEK-Info IV"))?;
    let (key_len, iv_len) = match alg {
        "AES-128-CBC" => (16, 16),
        "AES-192-CBC" => (24, 16),
        "AES-256-CBC" => (32, 16),
        "DES-EDE3-CBC" => (24, 8),
        other => return Err(format!("{label}: unsupported PEM encryption {other}")),
    };
    if iv.len() != iv_len {
        return Err(format!(
            "{label}: DEK-Info IV has {} bytes, want {iv_len}",
            iv.len()
        ));
    }
    let mut key = Zeroizing::new(Vec::with_capacity(key_len + 16));
    // Each MD5 block is key material: kept in one wiped buffer.
    let mut prev = Zeroizing::new([0u8; 16]);
    let mut first = true;
    while key.len() < key_len {
        let mut h = Md5::new();
        if !first {
            h.update(&prev[..]);
        }
        h.update(pw.as_bytes());
        h.update(&iv[..8]);
        h.finalize_into((&mut *prev).into());
        key.extend_from_slice(&prev[..]);
        first = false;
    }
    key.truncate(key_len);
    let wrong = || wrong_password(label);
    let mut buf = Zeroizing::new(data.to_vec());
    let bad_params = |e: cbc::cipher::InvalidLength| format!("{label}: {e}");
    let n = match alg {
        "AES-128-CBC" => cbc::Decryptor::<aes::Aes128>::new_from_slices(&key, &iv)
            .map_err(bad_params)?
            .decrypt_padded_mut::<Pkcs7>(&mut buf)
            .map(|p| p.len()),
        "AES-192-CBC" => cbc::Decryptor::<aes::Aes192>::new_from_slices(&key, &iv)
            .map_err(bad_params)?
            .decrypt_padded_mut::<Pkcs7>(&mut buf)
            .map(|p| p.len()),
        "AES-256-CBC" => cbc::Decryptor::<aes::Aes256>::new_from_slices(&key, &iv)
            .map_err(bad_params)?
            .decrypt_padded_mut::<Pkcs7>(&mut buf)
            .map(|p| p.len()),
        _ => cbc::Decryptor::<des::TdesEde3>::new_from_slices(&key, &iv)
            .map_err(bad_params)?
            .decrypt_padded_mut::<Pkcs7>(&mut buf)
            .map(|p| p.len()),
    }
    .map_err(|_| wrong())?;
    buf.truncate(n);
    Ok(buf)
}

fn wrong_password(label: &str) -> String {
    format!("{label}: wrong password for the encrypted private key")
}

fn parse_der(d: &[u8], password: Option<&str>) -> Result<KeyMaterial, String> {
    if let Ok(k) = parse_pkcs8(d) {
        return Ok(KeyMaterial::Private(k));
    }
    if let Ok(k) = RsaPrivateKey::from_pkcs1_der(d) {
        return Ok(KeyMaterial::Private(PrivateKey::Rsa(Box::new(k))));
    }
    if let Ok(k) = parse_sec1(d) {
        return Ok(KeyMaterial::Private(k));
    }
    if let Ok(k) = parse_spki(d) {
        return Ok(KeyMaterial::Public(k));
    }
    if let Ok(c) = parse_certificate(d) {
        return Ok(KeyMaterial::Certificate(c));
    }
    if pkcs8::EncryptedPrivateKeyInfo::from_der(d).is_ok() {
        return decrypt_pkcs8(d, password).map(KeyMaterial::Private);
    }
    Err("not a DER key".into())
}

fn parse_pkcs8(d: &[u8]) -> Result<PrivateKey, String> {
    if let Ok(k) = RsaPrivateKey::from_pkcs8_der(d) {
        return Ok(PrivateKey::Rsa(Box::new(k)));
    }
    if let Ok(k) = p256::SecretKey::from_pkcs8_der(d) {
        return Ok(PrivateKey::P256(k));
    }
    if let Ok(k) = p384::SecretKey::from_pkcs8_der(d) {
        return Ok(PrivateKey::P384(k));
    }
    if let Ok(k) = p521::SecretKey::from_pkcs8_der(d) {
        return Ok(PrivateKey::P521(k));
    }
    Err("PRIVATE KEY: not an RSA or NIST P-256/P-384/P-521 key".into())
}

fn decrypt_pkcs8(d: &[u8], password: Option<&str>) -> Result<PrivateKey, String> {
    let Some(pw) = password else {
        return Err("the private key is password protected; give the password as FILE:pass=… or FILE:file=…".into());
    };
    let info = pkcs8::EncryptedPrivateKeyInfo::from_der(d)
        .map_err(|e| format!("ENCRYPTED PRIVATE KEY: {e}"))?;
    let wrong = || "wrong password for the encrypted private key".to_string();
    let doc = info.decrypt(pw).map_err(|_| wrong())?;
    // CBC padding lets one wrong password in 256 through.
    parse_pkcs8(doc.as_bytes()).map_err(|_| wrong())
}

fn parse_sec1(d: &[u8]) -> Result<PrivateKey, String> {
    if let Ok(k) = p256::SecretKey::from_sec1_der(d) {
        return Ok(PrivateKey::P256(k));
    }
    if let Ok(k) = p384::SecretKey::from_sec1_der(d) {
        return Ok(PrivateKey::P384(k));
    }
    if let Ok(k) = p521::SecretKey::from_sec1_der(d) {
        return Ok(PrivateKey::P521(k));
    }
    Err("EC PRIVATE KEY: not a NIST P-256/P-384/P-521 key".into())
}

fn parse_spki(d: &[u8]) -> Result<PublicKey, String> {
    if let Ok(k) = RsaPublicKey::from_public_key_der(d) {
        return Ok(PublicKey::Rsa(Box::new(k), false));
    }
    if let Ok(k) = p256::PublicKey::from_public_key_der(d) {
        return Ok(PublicKey::P256(k));
    }
    if let Ok(k) = p384::PublicKey::from_public_key_der(d) {
        return Ok(PublicKey::P384(k));
    }
    if let Ok(k) = p521::PublicKey::from_public_key_der(d) {
        return Ok(PublicKey::P521(k));
    }
    Err("PUBLIC KEY: not an RSA or NIST P-256/P-384/P-521 key".into())
}

fn parse_certificate(d: &[u8]) -> Result<Certificate, String> {
    let cert = x509_cert::Certificate::from_der(d).map_err(|e| format!("CERTIFICATE: {e}"))?;
    let tbs = &cert.tbs_certificate;
    let spki = tbs
        .subject_public_key_info
        .to_der()
        .map_err(|e| format!("CERTIFICATE: {e}"))?;
    let public = RsaPublicKey::from_public_key_der(&spki)
        .map_err(|_| "CERTIFICATE: PKCS#7 recipients need an RSA certificate".to_string())?;
    Ok(Certificate {
        issuer_der: tbs
            .issuer
            .to_der()
            .map_err(|e| format!("CERTIFICATE: {e}"))?,
        serial_der: tbs
            .serial_number
            .to_der()
            .map_err(|e| format!("CERTIFICATE: {e}"))?,
        public,
    })
}

/// A JWK as RFC 7517/7518 name its members; the private ones are wiped
/// when dropped. `dp`, `dq` and `qi` are skipped unread: the key is
/// rebuilt from `d`, `p` and `q`.
#[derive(serde::Deserialize)]
struct Jwk {
    kty: Option<String>,
    crv: Option<String>,
    alg: Option<String>,
    n: Option<String>,
    e: Option<String>,
    x: Option<String>,
    y: Option<String>,
    d: Option<SecretString>,
    p: Option<SecretString>,
    q: Option<SecretString>,
}

fn parse_jwk(d: &[u8]) -> Result<KeyMaterial, String> {
    // serde's text can quote a value, and some values are the private key.
    let v: Jwk = serde_json::from_slice(d).map_err(|e| format!("JWK: {}", json_error(&e)))?;
    let field = |k: &str, s: Option<&str>| -> Result<Zeroizing<Vec<u8>>, String> {
        let s = s.ok_or_else(|| format!("JWK: missing {k:?}"))?;
        // The decoder's error names the offending byte: not printed.
        B64URL
            .decode(s.trim_end_matches('='))
            .map(Zeroizing::new)
            .map_err(|_| format!("JWK: {k:?} is not base64url"))
    };
    let big = |k: &str, s: Option<&str>| field(k, s).map(|b| BigUint::from_bytes_be(&b));
    let has_d = v.d.is_some();
    match v.kty.as_deref() {
        Some("RSA") => {
            let (n, e) = (big("n", v.n.as_deref())?, big("e", v.e.as_deref())?);
            if has_d {
                let primes = match (big("p", v.p.as_deref()), big("q", v.q.as_deref())) {
                    (Ok(p), Ok(q)) => vec![p, q],
                    _ => vec![],
                };
                let k = RsaPrivateKey::from_components(n, e, big("d", v.d.as_deref())?, primes)
                    .map_err(|e| format!("JWK: {e}"))?;
                Ok(KeyMaterial::Private(PrivateKey::Rsa(Box::new(k))))
            } else {
                let k = RsaPublicKey::new(n, e).map_err(|e| format!("JWK: {e}"))?;
                Ok(KeyMaterial::Public(PublicKey::Rsa(
                    Box::new(k),
                    v.alg.as_deref() == Some("RSA-OAEP-256"),
                )))
            }
        }
        Some("EC") => {
            let crv = v.crv.as_deref().unwrap_or("");
            let (x, y) = (field("x", v.x.as_deref())?, field("y", v.y.as_deref())?);
            let mut sec1 = vec![4u8];
            sec1.extend_from_slice(&x);
            sec1.extend_from_slice(&y);
            let bad = |e: &dyn std::fmt::Display| format!("JWK: bad {crv} key: {e}");
            if has_d {
                let d = field("d", v.d.as_deref())?;
                Ok(KeyMaterial::Private(match crv {
                    "P-256" => {
                        PrivateKey::P256(p256::SecretKey::from_slice(&d).map_err(|e| bad(&e))?)
                    }
                    "P-384" => {
                        PrivateKey::P384(p384::SecretKey::from_slice(&d).map_err(|e| bad(&e))?)
                    }
                    "P-521" => {
                        PrivateKey::P521(p521::SecretKey::from_slice(&d).map_err(|e| bad(&e))?)
                    }
                    _ => return Err(format!("JWK: unsupported curve {crv:?}")),
                }))
            } else {
                Ok(KeyMaterial::Public(match crv {
                    "P-256" => PublicKey::P256(
                        p256::PublicKey::from_sec1_bytes(&sec1).map_err(|e| bad(&e))?,
                    ),
                    "P-384" => PublicKey::P384(
                        p384::PublicKey::from_sec1_bytes(&sec1).map_err(|e| bad(&e))?,
                    ),
                    "P-521" => PublicKey::P521(
                        p521::PublicKey::from_sec1_bytes(&sec1).map_err(|e| bad(&e))?,
                    ),
                    _ => return Err(format!("JWK: unsupported curve {crv:?}")),
                }))
            }
        }
        other => Err(format!("JWK: unsupported kty {other:?}")),
    }
}

/// Loads every key in a directory tree, like `ctd-decoder --decryption-keys-path`.
/// Files that hold no usable key (or need a password) are skipped; a file
/// with private key material that is not protected (see the module
/// documentation) fails the whole load, so that the operator sees why.
pub fn load_dir(dir: &Path, readable: ReadableKeys) -> Result<Vec<KeyFile>, Error> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d)
            .map_err(|e| Error::BadKey(format!("keys directory {}: {e}", d.display())))?;
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok((data, meta)) = read_key_file(&p) {
                match parse_key_file(&data, None) {
                    Ok(keys) => {
                        check_protected(&p, &meta, &keys, readable)?;
                        out.push(KeyFile::new(keys, &data, None));
                    }
                    Err(err) => tracing::debug!("skipping {}: {err}", p.display()),
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{PermissionsExt, chown, symlink};

    use p256::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};

    use super::*;

    fn private_pem() -> Zeroizing<String> {
        p256::SecretKey::random(&mut rand::rngs::OsRng)
            .to_pkcs8_pem(LineEnding::LF)
            .unwrap()
    }

    fn write(p: &Path, data: &[u8], mode: u32) {
        std::fs::write(p, data).unwrap();
        chmod(p, mode);
    }

    fn chmod(p: &Path, mode: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    fn load(p: &Path, readable: ReadableKeys) -> Result<usize, String> {
        KeyArg {
            path: p.into(),
            password: None,
        }
        .load(readable)
        .map(|k| k.len())
        .map_err(|e| e.to_string())
    }

    #[test]
    fn key_parse_errors_quote_no_private_value() {
        // A JWK whose `d` has a bad character near its end, and one whose
        // `d` is of the wrong type: neither the value nor a byte of it is told.
        let jwk = |d: &str| {
            format!(r#"{{"kty":"EC","crv":"P-256","x":"AAAA","y":"AAAA","d":{d}}}"#).into_bytes()
        };
        let err = |data: &[u8]| parse_key_file(data, None).err().unwrap();
        assert_eq!(
            err(&jwk(r#""hunter2secret$Q""#)),
            r#"JWK: "d" is not base64url"#
        );
        let e = err(&jwk(r#"["hunter2secret"]"#));
        assert!(
            e.starts_with("JWK: data error at line 1 column ") && !e.contains("hunter2"),
            "{e}"
        );
        assert_eq!(
            err(b"-----BEGIN PRIVATE KEY-----\nhunter2secret$Q\n-----END PRIVATE KEY-----\n"),
            r#"PEM block "PRIVATE KEY": bad base64"#
        );
    }

    #[test]
    fn a_password_file_is_read_without_its_line_end() {
        let d = tempfile::tempdir().unwrap();
        let pw = d.path().join("pw");
        std::fs::write(&pw, "hunter2\r\n").unwrap();
        let arg = format!("{}:file={}", d.path().join("k.pem").display(), pw.display());
        let ka = KeyArg::parse(&arg).unwrap();
        assert_eq!(ka.password.as_deref().map(|p| p.as_str()), Some("hunter2"));
        assert!(!KeyArg::password_in_argv(&arg));
        assert!(KeyArg::password_in_argv("k.pem:pass=hunter2"));
    }

    /// CBC padding lets about one wrong password in 256 through; the
    /// error must still say it is the password.
    #[test]
    fn every_wrong_password_is_called_wrong_even_past_the_padding() {
        let d = tempfile::tempdir().unwrap();
        let (plain, legacy) = (d.path().join("k.pem"), d.path().join("legacy.pem"));
        write(&plain, private_pem().as_bytes(), 0o600);
        let openssl = std::process::Command::new("openssl")
            .args(["ec", "-aes128", "-passout", "pass:right", "-in"])
            .arg(&plain)
            .arg("-out")
            .arg(&legacy)
            .output()
            .unwrap();
        assert!(openssl.status.success(), "{openssl:?}");
        let data = std::fs::read(&legacy).unwrap();
        assert_eq!(parse_key_file(&data, Some("right")).map(|k| k.len()), Ok(1));
        for i in 0..3000 {
            let e = parse_key_file(&data, Some(&format!("wrong{i}")))
                .map(|_| ())
                .unwrap_err();
            assert_eq!(
                e, "EC PRIVATE KEY: wrong password for the encrypted private key",
                "wrong{i}"
            );
        }
    }

    #[test]
    fn private_key_files_must_be_protected_as_ssh_wants() {
        use ReadableKeys::{Allow, Refuse};
        let d = tempfile::tempdir().unwrap();
        let key = d.path().join("key.pem");
        write(&key, private_pem().as_bytes(), 0o600);
        assert_eq!(load(&key, Refuse), Ok(1));
        chmod(&key, 0o400);
        assert_eq!(load(&key, Refuse), Ok(1));

        let k = key.display();
        for mode in [0o644, 0o640, 0o604] {
            chmod(&key, mode);
            assert_eq!(
                load(&key, Refuse),
                Err(format!(
                    "UNPROTECTED PRIVATE KEY FILE: permissions {mode:04o} for {k} are too open: a private key file must be readable by its owner only (chmod 600), unless --allow-readable-keys is given"
                ))
            );
            assert_eq!(load(&key, Allow), Ok(1), "{mode:o} allowed");
        }
        for mode in [0o620, 0o602, 0o666] {
            chmod(&key, mode);
            let want = Err(format!(
                "permissions {mode:04o} for private key file {k} let others than its owner change it; it will not be used (chmod 600)"
            ));
            assert_eq!(load(&key, Refuse), want);
            assert_eq!(
                load(&key, Allow),
                want,
                "{mode:o} is refused even when allowed"
            );
        }
        chmod(&key, 0o600);
        chown(&key, Some(65534), None).unwrap();
        let want = Err(format!(
            "private key file {k} is owned by uid 65534, not by root or by this process's user (uid 0); it will not be used"
        ));
        assert_eq!(load(&key, Refuse), want);
        assert_eq!(load(&key, Allow), want);

        // A symlink is judged by the file it leads to, not by its own mode.
        let link = d.path().join("link.pem");
        symlink(&key, &link).unwrap();
        assert!(
            load(&link, Refuse)
                .unwrap_err()
                .contains("owned by uid 65534")
        );
        chown(&key, Some(0), None).unwrap();
        assert_eq!(load(&link, Refuse), Ok(1));
        chmod(&key, 0o644);
        assert!(
            load(&link, Refuse)
                .unwrap_err()
                .starts_with("UNPROTECTED PRIVATE KEY FILE: permissions 0644 for ")
        );

        // Public material may be read by anyone.
        let public = d.path().join("pub.pem");
        let pem = p256::SecretKey::random(&mut rand::rngs::OsRng)
            .public_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap();
        write(&public, pem.as_bytes(), 0o644);
        assert_eq!(load(&public, Refuse), Ok(1));
    }

    #[test]
    fn a_kubernetes_style_keys_directory_is_checked_through_its_symlinks() {
        let d = tempfile::tempdir().unwrap();
        // A secret volume: NAME -> ..data/NAME, ..data -> ..<timestamp>/.
        let data = d.path().join("..2024_01_01_00_00_00.1");
        std::fs::create_dir(&data).unwrap();
        let key = data.join("key.pem");
        write(&key, private_pem().as_bytes(), 0o644);
        symlink(data.file_name().unwrap(), d.path().join("..data")).unwrap();
        symlink("..data/key.pem", d.path().join("key.pem")).unwrap();
        let pem = p256::SecretKey::random(&mut rand::rngs::OsRng)
            .public_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap();
        write(&d.path().join("pub.pem"), pem.as_bytes(), 0o644);

        let e = load_dir(d.path(), ReadableKeys::Refuse)
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.starts_with("UNPROTECTED PRIVATE KEY FILE: permissions 0644 for "),
            "{e}"
        );
        let secret = |files: Vec<KeyFile>| {
            files
                .iter()
                .flat_map(|f| &f.keys)
                .filter(|k| k.is_secret())
                .count()
        };
        // Reached three ways: the timestamped dir, `..data` and the top link.
        assert_eq!(secret(load_dir(d.path(), ReadableKeys::Allow).unwrap()), 3);
        chmod(&key, 0o600);
        assert_eq!(secret(load_dir(d.path(), ReadableKeys::Refuse).unwrap()), 3);
        chmod(&key, 0o660);
        let e = load_dir(d.path(), ReadableKeys::Allow)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("let others than its owner change it"), "{e}");
    }
}

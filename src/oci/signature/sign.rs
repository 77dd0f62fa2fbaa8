//! The signing side of cosign's classic format, as `cosign sign --key` (with
//! `--new-bundle-format=false`) and `skopeo copy --sign-by-sigstore-private-key`
//! write it: the simple-signing payload naming `HOST/REPO` and the manifest
//! digest, signed with the key in a cosign `ENCRYPTED SIGSTORE PRIVATE KEY`
//! file, and stored as one more layer of the `sha256-<hex>.sig` manifest.
//!
//! cosign's key file is PEM over base64 JSON: the PKCS#8 private key sealed
//! with NaCl secretbox (XSalsa20-Poly1305) under a key scrypt derives from
//! the passphrase. The passphrase, the derived key, the PKCS#8 bytes and the
//! signing key are all zeroized when dropped.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use crypto_secretbox::aead::{Aead as _, KeyInit as _};
use der::asn1::ObjectIdentifier;
use p256::ecdsa::signature::Signer as _;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::classic::{SIGNATURE_ANNOTATION, SIMPLE_SIGNING_MEDIA_TYPE, signature_tag};
use super::payload::SIGNATURE_TYPE;
use crate::oci::digest::{self, Digest};
use crate::oci::policy::key::{PublicKey, clip, pem_block};
use crate::oci::transport::{ImageDest, ImageSource, RawManifest};
use crate::oci::{Descriptor, Error, ImageManifest, media};

/// The PEM type of the private keys `cosign generate-key-pair` writes (and,
/// before cosign 2, `ENCRYPTED COSIGN PRIVATE KEY`, the same format).
pub const SIGSTORE_PRIVATE_KEY_PEM: &str = "ENCRYPTED SIGSTORE PRIVATE KEY";
const COSIGN_PRIVATE_KEY_PEM: &str = "ENCRYPTED COSIGN PRIVATE KEY";

const ID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const SECP256R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");

/// scrypt costs above these are refused before any memory is spent on them
/// (cosign writes N=2^16, r=8, p=1: 64 MiB, 2^19 blocks of work): memory
/// (128·N·r bytes) at most 256 MiB, work (N·r·p) at most 16 times cosign's.
const MAX_LOG_N: u8 = 20;
const MAX_R: u32 = 32;
const MAX_P: u32 = 16;
const MAX_N_R: u64 = 1 << 21;
const MAX_N_R_P: u64 = 1 << 23;

/// A passphrase; zeroized when dropped.
pub struct Passphrase(Zeroizing<Vec<u8>>);

impl Passphrase {
    /// Takes ownership of the bytes.
    pub fn new(bytes: Zeroizing<Vec<u8>>) -> Self {
        Passphrase(bytes)
    }

    /// A passphrase file's first line, as skopeo's `--sign-passphrase-file`
    /// reads it (the line ending is not part of it).
    pub fn from_file_contents(contents: Zeroizing<Vec<u8>>) -> Self {
        let line = contents.split(|&b| b == b'\n').next().unwrap_or_default();
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        Passphrase(Zeroizing::new(line.to_vec()))
    }
}

/// Why a cosign private key cannot be used; one line naming the file.
#[derive(Debug, thiserror::Error)]
#[error("cosign private key {origin}: {problem}")]
pub struct PrivateKeyError {
    origin: String,
    problem: PrivateKeyProblem,
}

impl PrivateKeyError {
    /// What is wrong with the key.
    pub fn problem(&self) -> &PrivateKeyProblem {
        &self.problem
    }
}

/// What is wrong with a cosign private key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrivateKeyProblem {
    #[error("{0} bytes, more than the {max} a key file can take", max = crate::oci::policy::key::MAX_KEY_PEM)]
    TooLarge(usize),
    #[error("no PEM block")]
    NoPem,
    #[error("not a valid PEM block: {0}")]
    BadPem(String),
    #[error("a PEM {0:?} block, not {SIGSTORE_PRIVATE_KEY_PEM:?}")]
    WrongType(String),
    #[error("not a cosign encrypted key: {0}")]
    Malformed(String),
    #[error("key derivation {0:?} is not supported (cosign's is scrypt)")]
    UnsupportedKdf(String),
    #[error("cipher {0:?} is not supported (cosign's is nacl/secretbox)")]
    UnsupportedCipher(String),
    #[error("scrypt parameters {0} are not supported")]
    KdfParams(String),
    #[error("wrong passphrase (the key does not decrypt)")]
    WrongPassphrase,
    #[error("the decrypted key is not PKCS#8: {0}")]
    NotPkcs8(String),
    #[error("a {0} key; only ECDSA P-256 keys (cosign generate-key-pair's) can sign")]
    Unsupported(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Sealed {
    kdf: Kdf,
    cipher: Cipher,
    ciphertext: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Kdf {
    name: String,
    params: KdfParams,
    salt: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KdfParams {
    #[serde(rename = "N")]
    n: u64,
    r: u32,
    p: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Cipher {
    name: String,
    nonce: String,
}

/// A private key that signs in sigstore's scheme for its kind: ECDSA P-256
/// over SHA-256, ASN.1 DER signatures. Zeroized when dropped.
pub struct Signer {
    key: p256::ecdsa::SigningKey,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(ECDSA P-256)")
    }
}

impl Signer {
    /// Opens a cosign private key file's contents with `passphrase`;
    /// `origin` names the file for the error.
    pub fn from_cosign_pem(
        pem: &[u8],
        passphrase: &Passphrase,
        origin: &str,
    ) -> Result<Self, PrivateKeyError> {
        Self::open(pem, passphrase).map_err(|problem| PrivateKeyError {
            origin: origin.to_string(),
            problem,
        })
    }

    fn open(pem: &[u8], passphrase: &Passphrase) -> Result<Self, PrivateKeyProblem> {
        use PrivateKeyProblem as P;
        if pem.len() > crate::oci::policy::key::MAX_KEY_PEM {
            return Err(P::TooLarge(pem.len()));
        }
        let block = pem_block(pem).ok_or(P::NoPem)?;
        let (label, body) = der::pem::decode_vec(block).map_err(|e| P::BadPem(e.to_string()))?;
        if label != SIGSTORE_PRIVATE_KEY_PEM && label != COSIGN_PRIVATE_KEY_PEM {
            return Err(P::WrongType(clip(label).into()));
        }
        let sealed: Sealed =
            serde_json::from_slice(&body).map_err(|e| P::Malformed(e.to_string()))?;
        if sealed.kdf.name != "scrypt" {
            return Err(P::UnsupportedKdf(clip(&sealed.kdf.name).into()));
        }
        if sealed.cipher.name != "nacl/secretbox" {
            return Err(P::UnsupportedCipher(clip(&sealed.cipher.name).into()));
        }
        let field = |name: &str, b64: &str| {
            B64.decode(b64)
                .map_err(|_| P::Malformed(format!("{name} is not valid base64")))
        };
        let salt = field("kdf.salt", &sealed.kdf.salt)?;
        let nonce = field("cipher.nonce", &sealed.cipher.nonce)?;
        let ciphertext = field("ciphertext", &sealed.ciphertext)?;
        let nonce: [u8; 24] = nonce
            .try_into()
            .map_err(|_| P::Malformed("cipher.nonce is not 24 bytes".into()))?;

        let KdfParams { n, r, p } = sealed.kdf.params;
        let bad_params = || P::KdfParams(format!("N={n}, r={r}, p={p}"));
        if !n.is_power_of_two() || n < 2 {
            return Err(bad_params());
        }
        let log_n = n.trailing_zeros() as u8;
        if log_n > MAX_LOG_N || r == 0 || r > MAX_R || p == 0 || p > MAX_P {
            return Err(bad_params());
        }
        let n_r = n * u64::from(r);
        if n_r > MAX_N_R || n_r * u64::from(p) > MAX_N_R_P {
            return Err(bad_params());
        }
        let params = scrypt::Params::new(log_n, r, p, 32).map_err(|_| bad_params())?;
        let mut secret = Zeroizing::new([0u8; 32]);
        scrypt::scrypt(&passphrase.0, &salt, &params, secret.as_mut()).map_err(|_| bad_params())?;
        let cipher = crypto_secretbox::XSalsa20Poly1305::new(secret.as_ref().into());
        let pkcs8 = Zeroizing::new(
            cipher
                .decrypt(&nonce.into(), ciphertext.as_slice())
                .map_err(|_| P::WrongPassphrase)?,
        );
        Self::from_pkcs8(&pkcs8)
    }

    fn from_pkcs8(der_bytes: &[u8]) -> Result<Self, PrivateKeyProblem> {
        use pkcs8::DecodePrivateKey as _;
        let info = pkcs8::PrivateKeyInfo::try_from(der_bytes)
            .map_err(|e| PrivateKeyProblem::NotPkcs8(e.to_string()))?;
        let kind = match (info.algorithm.oid, info.algorithm.parameters_oid()) {
            (ID_EC_PUBLIC_KEY, Ok(SECP256R1)) => None,
            (ID_EC_PUBLIC_KEY, Ok(curve)) => Some(format!("ECDSA {curve}")),
            (oid, _) => Some(format!("{oid}")),
        };
        if let Some(kind) = kind {
            return Err(PrivateKeyProblem::Unsupported(kind));
        }
        let key = p256::ecdsa::SigningKey::from_pkcs8_der(der_bytes)
            .map_err(|e| PrivateKeyProblem::NotPkcs8(e.to_string()))?;
        Ok(Signer { key })
    }

    /// The signature of `message`: ECDSA P-256 over SHA-256, ASN.1 DER.
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        let sig: p256::ecdsa::Signature = self.key.sign(message);
        sig.to_der().as_bytes().to_vec()
    }

    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        PublicKey::from_p256(*self.key.verifying_key())
    }

    /// A fresh ECDSA P-256 key, as `cosign generate-key-pair` makes.
    pub fn generate() -> Self {
        Signer {
            key: p256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng),
        }
    }

    /// The matching public key as a PEM `PUBLIC KEY` block, what a
    /// policy's `keyPath` names (cosign's `cosign.pub`).
    pub fn public_key_pem(&self) -> String {
        use pkcs8::EncodePublicKey as _;
        self.key
            .verifying_key()
            .to_public_key_pem(pkcs8::LineEnding::LF)
            .expect("a P-256 public key encodes")
    }

    /// The key as a cosign `ENCRYPTED SIGSTORE PRIVATE KEY` file sealed
    /// with `passphrase` (scrypt N=2^16, r=8, p=1 and NaCl secretbox, as
    /// cosign 3 writes it), which [`Signer::from_cosign_pem`] and cosign open.
    pub fn to_cosign_pem(&self, passphrase: &Passphrase) -> Zeroizing<String> {
        use pkcs8::EncodePrivateKey as _;
        use rand::RngCore as _;
        let pkcs8 = self.key.to_pkcs8_der().expect("a P-256 key encodes");
        let (mut salt, mut nonce) = ([0u8; 32], [0u8; 24]);
        rand::rngs::OsRng.fill_bytes(&mut salt);
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let (log_n, r, p) = (16u8, 8u32, 1u32);
        let params = scrypt::Params::new(log_n, r, p, 32).expect("cosign's scrypt parameters");
        let mut secret = Zeroizing::new([0u8; 32]);
        scrypt::scrypt(&passphrase.0, &salt, &params, secret.as_mut())
            .expect("a 32-byte output is valid");
        let cipher = crypto_secretbox::XSalsa20Poly1305::new(secret.as_ref().into());
        let ciphertext = cipher
            .encrypt(&nonce.into(), pkcs8.as_bytes())
            .expect("secretbox seals any length");
        let sealed = serde_json::json!({
            "kdf": {
                "name": "scrypt",
                "params": {"N": 1u64 << log_n, "r": r, "p": p},
                "salt": B64.encode(salt),
            },
            "cipher": {"name": "nacl/secretbox", "nonce": B64.encode(nonce)},
            "ciphertext": B64.encode(ciphertext),
        });
        let body = serde_json::to_vec(&sealed).expect("JSON serializes");
        Zeroizing::new(
            der::pem::encode_string(SIGSTORE_PRIVATE_KEY_PEM, der::pem::LineEnding::LF, &body)
                .expect("PEM encodes"),
        )
    }
}

/// The simple-signing payload cosign signs for `docker_reference`
/// (`HOST/REPO`) at `manifest_digest`, byte for byte as cosign writes it.
pub fn classic_payload(docker_reference: &str, manifest_digest: &Digest) -> Vec<u8> {
    #[derive(Serialize)]
    struct Payload<'a> {
        critical: Critical<'a>,
        optional: Option<()>,
    }
    #[derive(Serialize)]
    struct Critical<'a> {
        identity: Identity<'a>,
        image: Image<'a>,
        r#type: &'a str,
    }
    #[derive(Serialize)]
    struct Identity<'a> {
        #[serde(rename = "docker-reference")]
        docker_reference: &'a str,
    }
    #[derive(Serialize)]
    struct Image<'a> {
        #[serde(rename = "docker-manifest-digest")]
        docker_manifest_digest: &'a str,
    }
    serde_json::to_vec(&Payload {
        critical: Critical {
            identity: Identity { docker_reference },
            image: Image {
                docker_manifest_digest: manifest_digest.as_ref(),
            },
            r#type: SIGNATURE_TYPE,
        },
        optional: None,
    })
    .expect("a payload serializes")
}

/// What [`attach_classic`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    /// The tag the signature manifest is under (`sha256-<hex>.sig`).
    pub tag: String,
    /// The signature manifest's digest.
    pub manifest: Digest,
    /// How many signatures it holds, this one included.
    pub signatures: usize,
    /// False if the same signature was already there (nothing was written).
    pub written: bool,
}

/// Signs `manifest_digest` for `docker_reference` (`HOST/REPO`) and adds the
/// signature to the repository's `sha256-<hex>.sig` manifest, keeping the
/// signatures already there (read from `source`, written to `dest`: the
/// same repository).
pub fn attach_classic(
    source: &dyn ImageSource,
    dest: &dyn ImageDest,
    signer: &Signer,
    docker_reference: &str,
    manifest_digest: &Digest,
) -> Result<Attached, Error> {
    let tag = signature_tag(manifest_digest);
    let mut layers = match source.tagged(&tag) {
        Ok(raw) => existing_layers(&raw, &tag)?,
        Err(Error::NotFound(_)) => Vec::new(),
        Err(e) => return Err(e),
    };
    let payload = classic_payload(docker_reference, manifest_digest);
    let signature = B64.encode(signer.sign(&payload));
    let payload_digest = digest::of(&payload);
    let already = layers.iter().any(|l| {
        l.digest() == &payload_digest
            && l.annotations()
                .as_ref()
                .and_then(|a| a.get(SIGNATURE_ANNOTATION))
                == Some(&signature)
    });
    if already {
        let raw = source.tagged(&tag)?;
        return Ok(Attached {
            tag,
            manifest: raw.digest,
            signatures: layers.len(),
            written: false,
        });
    }
    let (stored, size) = dest.put_blob(&mut payload.as_slice(), SIMPLE_SIGNING_MEDIA_TYPE)?;
    layers.push(descriptor(
        SIMPLE_SIGNING_MEDIA_TYPE,
        stored,
        size,
        Some(signature),
    ));

    // go-containerregistry's config for an image made of these layers, as
    // cosign writes it: zero times, one history entry per layer, and the
    // (uncompressed) layers' digests as diff_ids.
    let config = serde_json::to_vec(&Config {
        architecture: "",
        created: ZERO_TIME,
        history: layers
            .iter()
            .map(|_| History { created: ZERO_TIME })
            .collect(),
        os: "",
        rootfs: RootFs {
            r#type: "layers",
            diff_ids: layers.iter().map(|l| l.digest().to_string()).collect(),
        },
        config: Empty {},
    })
    .expect("a config serializes");
    let (config_digest, config_size) = dest.put_blob(&mut config.as_slice(), media::OCI_CONFIG)?;
    let manifest = serde_json::to_vec(&Manifest {
        schema_version: 2,
        media_type: media::OCI_MANIFEST,
        config: descriptor(media::OCI_CONFIG, config_digest, config_size, None),
        layers: &layers,
    })
    .expect("a manifest serializes");
    let raw = RawManifest {
        media_type: media::OCI_MANIFEST.into(),
        digest: digest::of(&manifest),
        bytes: manifest,
    };
    dest.put_tagged(&raw, &tag)?;
    Ok(Attached {
        tag,
        manifest: raw.digest,
        signatures: layers.len(),
        written: true,
    })
}

const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

#[derive(Serialize)]
struct Config<'a> {
    architecture: &'a str,
    created: &'a str,
    history: Vec<History<'a>>,
    os: &'a str,
    rootfs: RootFs<'a>,
    config: Empty,
}

#[derive(Serialize)]
struct History<'a> {
    created: &'a str,
}

#[derive(Serialize)]
struct RootFs<'a> {
    r#type: &'a str,
    diff_ids: Vec<String>,
}

#[derive(Serialize)]
struct Empty {}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Manifest<'a> {
    schema_version: u32,
    media_type: &'a str,
    config: Descriptor,
    layers: &'a [Descriptor],
}

fn descriptor(
    media_type: &str,
    digest: Digest,
    size: u64,
    signature: Option<String>,
) -> Descriptor {
    let mut d = Descriptor::new(media_type.into(), size, digest);
    if let Some(s) = signature {
        d.set_annotations(Some([(SIGNATURE_ANNOTATION.to_string(), s)].into()));
    }
    d
}

/// The layers of the signature manifest already under `tag`, kept as they
/// are (other signers' annotations included). Anything but an image
/// manifest there is refused rather than overwritten.
fn existing_layers(raw: &RawManifest, tag: &str) -> Result<Vec<Descriptor>, Error> {
    let what = format!("signature manifest {tag}");
    if !media::is_manifest(&raw.media_type) {
        return Err(Error::Malformed(format!(
            "{what}: a {:?}, not an image manifest; not overwriting it",
            clip(&raw.media_type)
        )));
    }
    let manifest: ImageManifest = serde_json::from_slice(&raw.bytes).map_err(|e| {
        Error::Malformed(format!(
            "{what}: not an image manifest: {}",
            crate::oci::policy::key::untrusted(e)
        ))
    })?;
    Ok(manifest.layers().clone())
}

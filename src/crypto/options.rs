//! The ocicrypt layer-cipher options, byte-for-byte as ocicrypt writes them.
//!
//! Public options travel in the clear (`org.opencontainers.image.enc.pubopts`);
//! private options are what every key wrapper wraps. Private options hold the
//! layer key, so their serialized form is always a [`Zeroizing`] buffer.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use zeroize::{Zeroize, Zeroizing};

use super::Error;

/// The only layer cipher ocicrypt defines.
pub const CIPHER_AES_CTR_HMAC: &str = "AES_256_CTR_HMAC_SHA256";
/// lazycrypt's own cipher option: base64 of `sha256:<hex>` of the eStargz TOC.
pub const TOC_DIGEST_OPTION: &str = "lazycrypt.toc-digest";

/// Most bytes one wrapped key (one JWE, PKCS#7 or OpenPGP entry of a
/// layer's `org.opencontainers.image.enc.keys.*` annotation) may have, and
/// most bytes it may unwrap to. The private options are a few hundred bytes
/// and each recipient adds at most a few KiB.
pub const MAX_WRAPPED_KEY: usize = 1 << 20;

/// Refuses a wrapped key (or what it unwrapped to: `what`) of `len` bytes
/// over [`MAX_WRAPPED_KEY`]; `scheme` names the scheme in the error.
pub fn check_wrapped_size(scheme: &str, what: &str, len: usize) -> Result<(), Error> {
    if len > MAX_WRAPPED_KEY {
        return Err(Error::Malformed(format!(
            "{scheme}: {what} of {len} bytes is over the {MAX_WRAPPED_KEY}-byte limit"
        )));
    }
    Ok(())
}

/// `{"cipher":…,"hmac":…,"cipheroptions":{}}`, the public half.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicOptions {
    pub cipher: String,
    #[serde(with = "b64_bytes")]
    pub hmac: Vec<u8>,
    #[serde(default, with = "b64_map")]
    pub cipheroptions: BTreeMap<String, Vec<u8>>,
}

impl PublicOptions {
    /// The annotation value: base64 of the JSON.
    pub fn to_annotation(&self) -> String {
        B64.encode(serde_json::to_vec(self).expect("options serialize"))
    }

    /// Parses an annotation value; `where_` names the layer in errors.
    pub fn from_annotation(value: &str) -> Result<Self, Error> {
        let raw = B64
            .decode(value.trim())
            .map_err(|e| Error::Malformed(format!("pubopts annotation is not base64: {e}")))?;
        let opts: PublicOptions = serde_json::from_slice(&raw)
            .map_err(|e| Error::Malformed(format!("pubopts annotation is not valid JSON: {e}")))?;
        if opts.cipher != CIPHER_AES_CTR_HMAC {
            return Err(Error::Malformed(format!(
                "unsupported layer cipher {:?} (only {CIPHER_AES_CTR_HMAC})",
                opts.cipher
            )));
        }
        if opts.hmac.len() != 32 {
            return Err(Error::Malformed(format!(
                "pubopts hmac has {} bytes, want 32",
                opts.hmac.len()
            )));
        }
        Ok(opts)
    }
}

/// `{"symkey":…,"digest":…,"cipheroptions":{"nonce":…}}`, the wrapped half.
#[derive(Clone, Serialize, Deserialize)]
pub struct PrivateOptions {
    #[serde(with = "b64_bytes")]
    pub symkey: Vec<u8>,
    /// Digest of the plaintext blob, `sha256:<hex>`.
    pub digest: String,
    #[serde(default, with = "b64_map")]
    pub cipheroptions: BTreeMap<String, Vec<u8>>,
}

impl Drop for PrivateOptions {
    fn drop(&mut self) {
        self.symkey.zeroize();
        self.digest.zeroize();
        for v in self.cipheroptions.values_mut() {
            v.zeroize();
        }
    }
}

impl std::fmt::Debug for PrivateOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrivateOptions").finish_non_exhaustive()
    }
}

impl PrivateOptions {
    /// The JSON every wrapper wraps; zeroized when dropped.
    pub fn to_json(&self) -> Zeroizing<Vec<u8>> {
        super::wipe::to_json(self).expect("options serialize")
    }

    /// Parses unwrapped private options and checks they can drive the cipher.
    pub fn from_json(raw: &[u8]) -> Result<Self, Error> {
        // serde's text can quote a value, and these values are the key.
        let opts: PrivateOptions = serde_json::from_slice(raw).map_err(|e| {
            Error::Malformed(format!(
                "unwrapped private options are not valid ({})",
                super::wipe::json_error(&e)
            ))
        })?;
        if opts.symkey.len() != 32 {
            return Err(Error::Malformed(format!(
                "private options symkey has {} bytes, want 32",
                opts.symkey.len()
            )));
        }
        match opts.cipheroptions.get("nonce") {
            Some(n) if n.len() == 16 => {}
            Some(n) => {
                return Err(Error::Malformed(format!(
                    "private options nonce has {} bytes, want 16",
                    n.len()
                )));
            }
            None => return Err(Error::Malformed("private options have no nonce".into())),
        }
        Ok(opts)
    }

    /// The 16-byte initial counter block.
    pub fn nonce(&self) -> [u8; 16] {
        let mut n = [0u8; 16];
        if let Some(v) = self.cipheroptions.get("nonce")
            && v.len() == 16
        {
            n.copy_from_slice(v);
        }
        n
    }

    /// The 32-byte layer key (checked at parse time).
    pub fn key(&self) -> Zeroizing<[u8; 32]> {
        let mut k = Zeroizing::new([0u8; 32]);
        if self.symkey.len() == 32 {
            k.copy_from_slice(&self.symkey);
        }
        k
    }

    /// The eStargz TOC digest anchor, if the writer put one in.
    pub fn toc_digest(&self) -> Option<String> {
        self.cipheroptions
            .get(TOC_DIGEST_OPTION)
            .and_then(|v| String::from_utf8(v.clone()).ok())
    }
}

mod b64_bytes {
    use super::*;

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        // The encoded key is a transient copy of the key: zeroize it too.
        let enc = Zeroizing::new(B64.encode(v));
        s.serialize_str(&enc)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a base64 string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<u8>, E> {
                B64.decode(v)
                    .map_err(|e| E::custom(format!("bad base64: {e}")))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Vec<u8>, E> {
                Ok(Vec::new())
            }
        }
        d.deserialize_any(V)
    }
}

mod b64_map {
    use super::*;

    pub fn serialize<S: Serializer>(
        m: &BTreeMap<String, Vec<u8>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(m.len()))?;
        for (k, v) in m {
            let enc = Zeroizing::new(B64.encode(v));
            map.serialize_entry(k, enc.as_str())?;
        }
        map.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<String, Vec<u8>>, D::Error> {
        let raw: Option<BTreeMap<String, Option<String>>> = Option::deserialize(d)?;
        let mut out = BTreeMap::new();
        for (k, v) in raw.unwrap_or_default() {
            let mut v = v.unwrap_or_default();
            let bytes = B64
                .decode(&v)
                .map_err(|e| de::Error::custom(format!("cipher option {k:?}: bad base64: {e}")));
            v.zeroize();
            out.insert(k, bytes?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_options_match_ocicrypt_field_order() {
        let mut co = BTreeMap::new();
        co.insert("nonce".to_string(), vec![1u8; 16]);
        let p = PrivateOptions {
            symkey: vec![2u8; 32],
            digest: "sha256:00".into(),
            cipheroptions: co,
        };
        let json = String::from_utf8(p.to_json().to_vec()).unwrap();
        assert!(json.starts_with(r#"{"symkey":"AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=","digest":"sha256:00","cipheroptions":{"nonce":"#));
        let back = PrivateOptions::from_json(json.as_bytes()).unwrap();
        assert_eq!(back.nonce(), [1u8; 16]);
    }

    #[test]
    fn public_options_roundtrip_and_reject_unknown_cipher() {
        let p = PublicOptions {
            cipher: CIPHER_AES_CTR_HMAC.into(),
            hmac: vec![7; 32],
            cipheroptions: BTreeMap::new(),
        };
        let a = p.to_annotation();
        assert_eq!(PublicOptions::from_annotation(&a).unwrap(), p);
        let bad = B64.encode(br#"{"cipher":"AES_128_CBC","hmac":"","cipheroptions":{}}"#);
        let e = PublicOptions::from_annotation(&bad)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unsupported layer cipher \"AES_128_CBC\""),
            "{e}"
        );
        assert!(PublicOptions::from_annotation("%%%").is_err());
    }

    #[test]
    fn private_options_errors_quote_no_value() {
        for raw in [
            r#"{"symkey":"AAAA","digest":"x","cipheroptions":"hunter2-secret"}"#,
            r#"{"symkey":"hunter2-secret!","digest":"x"}"#,
            r#"{"symkey":["hunter2-secret"],"digest":"x"}"#,
        ] {
            let e = PrivateOptions::from_json(raw.as_bytes())
                .unwrap_err()
                .to_string();
            assert!(!e.contains("hunter2"), "{e}");
            assert!(
                e.starts_with(
                    "unwrapped private options are not valid (data error at line 1 column "
                ),
                "{e}"
            );
        }
    }

    #[test]
    fn private_options_reject_short_key() {
        let e = PrivateOptions::from_json(br#"{"symkey":"AAAA","digest":"x","cipheroptions":{"nonce":"AAAAAAAAAAAAAAAAAAAAAA=="}}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("symkey has 3 bytes"), "{e}");
    }
}

//! PKCS#7 EnvelopedData key wrapping (ocicrypt's `pkcs7` scheme): RSA
//! PKCS#1 v1.5 key transport per recipient certificate, AES-128-GCM content.
//!
//! ocicrypt writes this with Go's `go.mozilla.org/pkcs7`, whose output is not
//! strict DER: the GCM parameters sit in a *primitive* SEQUENCE tag wrapping the
//! real SEQUENCE, the GCM nonce is tagged `[4]` instead of OCTET STRING, and
//! the content is `[0]` constructed around an OCTET STRING. Go's decoder
//! expects those tags back, so they are written the same way.
//! Strict DER decoders reject both, so this module reads and writes the few
//! TLVs involved itself, accepting both that form and the standard one.

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes128Gcm, Aes256Gcm, Nonce};
use rand::RngCore;
use rand::rngs::OsRng;
use rsa::Pkcs1v15Encrypt;
use rsa::traits::PublicKeyParts;
use zeroize::Zeroizing;

use super::Error;
use super::keys::{Certificate, PrivateKey};
use super::options::check_wrapped_size;

const OID_ENVELOPED: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x03];
const OID_DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x01];
const OID_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const OID_AES128_GCM: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x01, 0x06];
const OID_AES256_GCM: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x01, 0x2e];

const SEQ: u8 = 0x30;
const SET: u8 = 0x31;
const INT: u8 = 0x02;
const OCTETS: u8 = 0x04;
const OID: u8 = 0x06;
const CTX0: u8 = 0xa0;
/// Go pkcs7's tag for the GCM nonce (`asn1:"tag:4"`).
const NONCE_TAG: u8 = 0x84;

fn bad(why: &str) -> Error {
    Error::Malformed(format!("pkcs7: {why}"))
}

/// Encrypts `plaintext` to every certificate's RSA key in one EnvelopedData.
pub fn wrap(recipients: &[Certificate], plaintext: &[u8]) -> Result<Vec<u8>, Error> {
    let mut key = Zeroizing::new([0u8; 16]);
    let mut nonce = [0u8; 12];
    OsRng.fill_bytes(key.as_mut());
    OsRng.fill_bytes(&mut nonce);
    let sealed = Aes128Gcm::new(key.as_ref().into())
        .encrypt(Nonce::from_slice(&nonce), plaintext)
        .map_err(|_| bad("content encryption failed"))?;

    let mut infos = Vec::new();
    for c in recipients {
        let ek = c
            .public
            .encrypt(&mut OsRng, Pkcs1v15Encrypt, key.as_ref())
            .map_err(|e| Error::BadKey(format!("pkcs7: RSA key transport: {e}")))?;
        let ias = tlv(SEQ, &[c.issuer_der.clone(), c.serial_der.clone()].concat());
        let alg = tlv(SEQ, &tlv(OID, OID_RSA));
        infos.push(tlv(
            SEQ,
            &[tlv(INT, &[0]), ias, alg, tlv(OCTETS, &ek)].concat(),
        ));
    }
    let gcm_params = tlv(SEQ, &[tlv(NONCE_TAG, &nonce), tlv(INT, &[16])].concat());
    // Go pkcs7's encoding: the parameters' DER inside a primitive SEQUENCE tag.
    let alg = tlv(
        SEQ,
        &[tlv(OID, OID_AES128_GCM), tlv(0x10, &gcm_params)].concat(),
    );
    let eci = tlv(
        SEQ,
        &[tlv(OID, OID_DATA), alg, tlv(CTX0, &tlv(OCTETS, &sealed))].concat(),
    );
    let env = tlv(
        SEQ,
        &[tlv(INT, &[0]), tlv(SET, &infos.concat()), eci].concat(),
    );
    Ok(tlv(
        SEQ,
        &[tlv(OID, OID_ENVELOPED), tlv(CTX0, &env)].concat(),
    ))
}

/// Decrypts with a (certificate, private key) pair naming one of the
/// recipients. `Ok(None)`: no pair opens it.
///
/// Whether a recipient's key transport failed (bad PKCS#1 padding, a key that
/// is not the one it was wrapped to) or yielded a content key that does not
/// open the content (wrong key, wrong length) is never told apart: a failed
/// transport continues with a random key of the content cipher's length
/// (implicit rejection), so every such pair goes through the same GCM step
/// and ends the same way, `Ok(None)`. Telling them apart would be a
/// Bleichenbacher padding oracle for whoever can feed us annotations.
pub fn unwrap(
    der: &[u8],
    certs: &[&Certificate],
    keys: &[&PrivateKey],
) -> Result<Option<Zeroizing<Vec<u8>>>, Error> {
    check_wrapped_size("pkcs7", "wrapped key", der.len())?;
    let (ci, _) = read(der)?;
    let mut ci = Reader(expect(ci, SEQ, "ContentInfo")?.content);
    let oid = ci.next(OID, "contentType")?;
    if oid.content != OID_ENVELOPED {
        return Err(bad("not EnvelopedData"));
    }
    let wrapper = ci.next(CTX0, "content")?;
    let (env, _) = read(wrapper.content)?;
    let mut env = Reader(expect(env, SEQ, "EnvelopedData")?.content);
    env.next(INT, "version")?;
    let infos = env.next(SET, "recipientInfos")?;
    let eci = env.next(SEQ, "encryptedContentInfo")?;
    // Parsed before any key is used, so its errors do not depend on the keys.
    let content = Content::parse(eci.content)?;

    let mut ri_list = Reader(infos.content);
    while !ri_list.0.is_empty() {
        let ri = ri_list.next(SEQ, "RecipientInfo")?;
        let mut r = Reader(ri.content);
        r.next(INT, "RecipientInfo version")?;
        let ias = r.next(SEQ, "issuerAndSerialNumber")?;
        r.next(SEQ, "keyEncryptionAlgorithm")?;
        let ek = r.next(OCTETS, "encryptedKey")?;
        for c in certs {
            let want = [c.issuer_der.as_slice(), c.serial_der.as_slice()].concat();
            if ias.content != want.as_slice() {
                continue;
            }
            for k in keys {
                let PrivateKey::Rsa(rk) = k else { continue };
                if rk.n() != c.public.n() || rk.e() != c.public.e() {
                    continue;
                }
                let cek = transport_key(rk, ek.content, content.cipher.key_len());
                if let Some(pt) = content.open(&cek) {
                    return Ok(Some(pt));
                }
            }
        }
    }
    Ok(None)
}

/// The content key a recipient's `encryptedKey` carries, or a random key of
/// `len` bytes when RSA decryption fails or yields another length. The random
/// key is drawn first either way; decryption is blinded.
fn transport_key(rk: &rsa::RsaPrivateKey, ek: &[u8], len: usize) -> Zeroizing<Vec<u8>> {
    let mut fallback = Zeroizing::new(vec![0u8; len]);
    OsRng.fill_bytes(&mut fallback);
    match rk
        .decrypt_blinded(&mut OsRng, Pkcs1v15Encrypt, ek)
        .map(Zeroizing::new)
    {
        Ok(key) if key.len() == len => key,
        _ => fallback,
    }
}

#[derive(Clone, Copy)]
enum ContentCipher {
    Aes128Gcm,
    Aes256Gcm,
}

impl ContentCipher {
    fn key_len(self) -> usize {
        match self {
            ContentCipher::Aes128Gcm => 16,
            ContentCipher::Aes256Gcm => 32,
        }
    }
}

/// The EncryptedContentInfo: cipher, nonce and sealed content.
struct Content {
    cipher: ContentCipher,
    nonce: [u8; 12],
    sealed: Vec<u8>,
}

impl Content {
    fn parse(eci: &[u8]) -> Result<Content, Error> {
        let mut e = Reader(eci);
        e.next(OID, "contentType")?;
        let alg = e.next(SEQ, "contentEncryptionAlgorithm")?;
        let mut a = Reader(alg.content);
        let alg_oid = a.next(OID, "algorithm")?;
        let cipher = match alg_oid.content {
            x if x == OID_AES128_GCM => ContentCipher::Aes128Gcm,
            x if x == OID_AES256_GCM => ContentCipher::Aes256Gcm,
            _ => return Err(bad("unsupported content encryption (want AES-GCM)")),
        };
        let (params, _) = read(a.0)?;
        // Standard: a constructed SEQUENCE. Go pkcs7: a primitive tag around one.
        let params = if params.tag == SEQ {
            params
        } else {
            expect(read(params.content)?.0, SEQ, "GCMParameters")?
        };
        let mut p = Reader(params.content);
        let nonce = p.next_any("GCM nonce")?;
        let nonce: [u8; 12] = match nonce.content.try_into() {
            Ok(n) if nonce.tag == OCTETS || nonce.tag == NONCE_TAG => n,
            _ => return Err(bad("GCM nonce is not 12 bytes")),
        };
        let content = e.next_any("encryptedContent")?;
        let sealed = if content.tag == 0x80 {
            content.content.to_vec()
        } else if content.tag == CTX0 {
            let mut parts = Reader(content.content);
            let mut out = Vec::new();
            while !parts.0.is_empty() {
                out.extend_from_slice(parts.next(OCTETS, "encryptedContent")?.content);
            }
            out
        } else {
            return Err(bad("unexpected encryptedContent tag"));
        };
        Ok(Content {
            cipher,
            nonce,
            sealed,
        })
    }

    /// The plaintext, if `cek` opens the content.
    fn open(&self, cek: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        let n = Nonce::from_slice(&self.nonce);
        let pt = match self.cipher {
            ContentCipher::Aes128Gcm => Aes128Gcm::new_from_slice(cek)
                .ok()?
                .decrypt(n, &self.sealed[..]),
            ContentCipher::Aes256Gcm => Aes256Gcm::new_from_slice(cek)
                .ok()?
                .decrypt(n, &self.sealed[..]),
        };
        pt.ok().map(Zeroizing::new)
    }
}

struct Tlv<'a> {
    tag: u8,
    content: &'a [u8],
}

fn read(input: &[u8]) -> Result<(Tlv<'_>, &[u8]), Error> {
    let (&tag, rest) = input.split_first().ok_or_else(|| bad("truncated"))?;
    if tag & 0x1f == 0x1f {
        return Err(bad("multi-byte tags are not used here"));
    }
    let (&l0, rest) = rest.split_first().ok_or_else(|| bad("truncated"))?;
    let (len, rest) = if l0 < 0x80 {
        (l0 as usize, rest)
    } else {
        let n = (l0 & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return Err(bad("bad length"));
        }
        (
            rest[..n].iter().fold(0usize, |a, &b| (a << 8) | b as usize),
            &rest[n..],
        )
    };
    if rest.len() < len {
        return Err(bad("truncated"));
    }
    Ok((
        Tlv {
            tag,
            content: &rest[..len],
        },
        &rest[len..],
    ))
}

fn expect<'a>(t: Tlv<'a>, tag: u8, what: &str) -> Result<Tlv<'a>, Error> {
    if t.tag != tag {
        return Err(bad(&format!("{what}: unexpected tag 0x{:02x}", t.tag)));
    }
    Ok(t)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn next_any(&mut self, what: &str) -> Result<Tlv<'a>, Error> {
        let (t, rest) = read(self.0).map_err(|_| bad(&format!("{what}: missing or truncated")))?;
        self.0 = rest;
        Ok(t)
    }

    fn next(&mut self, tag: u8, what: &str) -> Result<Tlv<'a>, Error> {
        let t = self.next_any(what)?;
        expect(t, tag, what)
    }
}

fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let n = content.len();
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let bytes: Vec<u8> = n
            .to_be_bytes()
            .iter()
            .copied()
            .skip_while(|&b| b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use base64::Engine;
    use base64::engine::general_purpose::STANDARD as B64;
    use rsa::{BigUint, RsaPrivateKey, RsaPublicKey};

    use super::*;
    use crate::crypto::envelope::{self, KEYS_PREFIX};
    use crate::crypto::{KeyMaterial, KeyRing};

    fn keypair() -> (RsaPrivateKey, Certificate) {
        let k = RsaPrivateKey::new(&mut OsRng, 2048).unwrap();
        let cert = Certificate {
            issuer_der: tlv(SEQ, &tlv(SET, b"test issuer")),
            serial_der: tlv(INT, &[7]),
            public: k.to_public_key(),
        };
        (k, cert)
    }

    /// `der` with its (first, 2048-bit) encryptedKey replaced by `ek`.
    fn with_ek(der: &[u8], ek: &[u8]) -> Vec<u8> {
        let head = [OCTETS, 0x82, 0x01, 0x00];
        let at = der.windows(4).position(|w| w == head).unwrap() + 4;
        let mut out = der.to_vec();
        out[at..at + 256].copy_from_slice(ek);
        out
    }

    fn pkcs1(public: &RsaPublicKey, msg: &[u8]) -> Vec<u8> {
        public.encrypt(&mut OsRng, Pkcs1v15Encrypt, msg).unwrap()
    }

    /// Raw RSA of a block that is not PKCS#1 v1.5 padded (starts 00 01).
    fn bad_padding(public: &RsaPublicKey) -> Vec<u8> {
        let mut block = [0xa5u8; 256];
        block[0] = 0;
        block[1] = 1;
        let c = BigUint::from_bytes_be(&block).modpow(public.e(), public.n());
        let c = c.to_bytes_be();
        [vec![0; 256 - c.len()], c].concat()
    }

    #[test]
    fn bad_padding_wrong_key_and_bad_cek_fail_alike() {
        let (k, cert) = keypair();
        let (_, other) = keypair();
        let msg = b"{\"symkey\":\"x\"}";
        let good = wrap(std::slice::from_ref(&cert), msg).unwrap();
        let key = PrivateKey::Rsa(Box::new(k));
        assert_eq!(
            unwrap(&good, &[&cert], &[&key])
                .unwrap()
                .unwrap()
                .as_slice(),
            msg
        );

        let mut cek16 = [0u8; 16];
        OsRng.fill_bytes(&mut cek16);
        let blobs = [
            ("bad padding", with_ek(&good, &bad_padding(&cert.public))),
            (
                "wrapped to another key",
                with_ek(&good, &pkcs1(&other.public, &cek16)),
            ),
            (
                "wrong content key",
                with_ek(&good, &pkcs1(&cert.public, &cek16)),
            ),
            (
                "content key of 5 bytes",
                with_ek(&good, &pkcs1(&cert.public, b"short")),
            ),
            (
                "content key of 32 bytes",
                with_ek(&good, &pkcs1(&cert.public, &[1; 32])),
            ),
            ("flipped encryptedKey", {
                let mut b = good.clone();
                let at = b
                    .windows(4)
                    .position(|w| w == [OCTETS, 0x82, 1, 0])
                    .unwrap();
                b[at + 100] ^= 1;
                b
            }),
        ];
        let none = zeroize::Zeroizing::new(String::new());
        let mut ring = KeyRing::default();
        ring.add(KeyMaterial::Private(key), &none);
        ring.add(KeyMaterial::Certificate(cert.clone()), &none);
        let mut errors = Vec::new();
        for (what, blob) in &blobs {
            let got = unwrap(blob, &[&ring.certificates()[0]], &[&ring.private_keys()[0]]);
            assert!(matches!(got, Ok(None)), "{what}: {got:?}");
            let ann = HashMap::from([(format!("{KEYS_PREFIX}pkcs7"), B64.encode(blob))]);
            let e = envelope::unwrap(&ann, &ring, "L").err().unwrap();
            assert!(matches!(e, Error::MissingKey(_)), "{what}: {e}");
            errors.push((what, e.to_string()));
        }
        // Holding a key that is no recipient at all ends the same way.
        let (stranger, stranger_cert) = keypair();
        let mut ring2 = KeyRing::default();
        ring2.add(
            KeyMaterial::Private(PrivateKey::Rsa(Box::new(stranger))),
            &none,
        );
        ring2.add(KeyMaterial::Certificate(stranger_cert), &none);
        let ann = HashMap::from([(format!("{KEYS_PREFIX}pkcs7"), B64.encode(&good))]);
        let e = envelope::unwrap(&ann, &ring2, "L").err().unwrap();
        errors.push((&"not a recipient", e.to_string()));
        for (what, e) in &errors {
            assert_eq!(e, &errors[0].1, "{what} differs from {}", errors[0].0);
        }
    }

    #[test]
    fn lying_lengths_and_oversized_input_are_errors() {
        use crate::crypto::options::MAX_WRAPPED_KEY;
        // A ContentInfo claiming 4 GiB of content in 10 bytes.
        let e = unwrap(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff, 6, 1, 0, 0], &[], &[]).unwrap_err();
        assert_eq!(e.to_string(), "pkcs7: truncated");
        let mut huge = vec![0x30, 0x83, 0x10, 0, 1];
        huge.resize(MAX_WRAPPED_KEY + 5, 0);
        let e = unwrap(&huge, &[], &[]).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "pkcs7: wrapped key of {} bytes is over the {MAX_WRAPPED_KEY}-byte limit",
                MAX_WRAPPED_KEY + 5
            )
        );
    }

    #[test]
    fn truncated_and_garbage_input_is_an_error() {
        for bad in [
            &[][..],
            &[0x30, 0x82, 0xff][..],
            &[0x30, 0x03, 0x06, 0x01][..],
            b"garbage",
        ] {
            assert!(unwrap(bad, &[], &[]).is_err());
        }
    }
}

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
/// recipients. `Ok(None)`: no pair fits.
pub fn unwrap(
    der: &[u8],
    certs: &[&Certificate],
    keys: &[&PrivateKey],
) -> Result<Option<Zeroizing<Vec<u8>>>, Error> {
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

    let mut cek: Option<Zeroizing<Vec<u8>>> = None;
    let mut ri_list = Reader(infos.content);
    'outer: while !ri_list.0.is_empty() {
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
                if let Ok(key) = rk.decrypt(Pkcs1v15Encrypt, ek.content) {
                    cek = Some(Zeroizing::new(key));
                    break 'outer;
                }
            }
        }
    }
    let Some(cek) = cek else { return Ok(None) };

    let mut e = Reader(eci.content);
    e.next(OID, "contentType")?;
    let alg = e.next(SEQ, "contentEncryptionAlgorithm")?;
    let mut a = Reader(alg.content);
    let alg_oid = a.next(OID, "algorithm")?;
    let (params, _) = read(a.0)?;
    // Standard: a constructed SEQUENCE. Go pkcs7: a primitive tag around one.
    let params = if params.tag == SEQ {
        params
    } else {
        expect(read(params.content)?.0, SEQ, "GCMParameters")?
    };
    let mut p = Reader(params.content);
    let nonce = p.next_any("GCM nonce")?;
    if (nonce.tag != OCTETS && nonce.tag != NONCE_TAG) || nonce.content.len() != 12 {
        return Err(bad("GCM nonce is not 12 bytes"));
    }
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
    let n = Nonce::from_slice(nonce.content);
    let pt = match alg_oid.content {
        x if x == OID_AES128_GCM && cek.len() == 16 => Aes128Gcm::new_from_slice(&cek)
            .ok()
            .and_then(|c| c.decrypt(n, &sealed[..]).ok()),
        x if x == OID_AES256_GCM && cek.len() == 32 => Aes256Gcm::new_from_slice(&cek)
            .ok()
            .and_then(|c| c.decrypt(n, &sealed[..]).ok()),
        _ => return Err(bad("unsupported content encryption (want AES-GCM)")),
    };
    pt.map(|p| Some(Zeroizing::new(p)))
        .ok_or_else(|| bad("content authentication failed"))
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
    use super::*;

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

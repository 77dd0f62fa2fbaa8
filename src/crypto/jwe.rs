//! JWE key wrapping as ocicrypt (go-jose) does it: `A256GCM` content
//! encryption; RSA keys wrap with `RSA-OAEP` (or `RSA-OAEP-256` when a JWK
//! asks), EC keys with `ECDH-ES+A256KW`. One recipient gives the flattened
//! JSON serialization, several the general one.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes128Gcm, Aes256Gcm, AesGcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use rand::RngCore;
use rand::rngs::OsRng;
use rsa::Oaep;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::Error;
use super::keys::{PrivateKey, PublicKey};

type Aes192Gcm = AesGcm<aes::Aes192, aes_gcm::aead::consts::U12>;

/// Wraps `plaintext` (the private options) to every recipient in one JWE.
pub fn wrap(recipients: &[PublicKey], plaintext: &[u8]) -> Result<Vec<u8>, Error> {
    if recipients.is_empty() {
        return Err(Error::BadKey("jwe: no recipients".into()));
    }
    let mut cek = Zeroizing::new([0u8; 32]);
    OsRng.fill_bytes(cek.as_mut());
    let mut headers = Vec::new();
    for r in recipients {
        headers.push(wrap_cek(r, &cek)?);
    }

    let single = headers.len() == 1;
    let mut protected = Map::new();
    protected.insert("enc".into(), json!("A256GCM"));
    if single {
        // go-jose moves a lone recipient's header into the protected header.
        for (k, v) in &headers[0].0 {
            protected.insert(k.clone(), v.clone());
        }
    }
    let protected_b64 = B64URL.encode(serde_json::to_vec(&Value::Object(protected)).expect("json"));

    let mut iv = [0u8; 12];
    OsRng.fill_bytes(&mut iv);
    let gcm = Aes256Gcm::new(cek.as_ref().into());
    let sealed = gcm
        .encrypt(
            Nonce::from_slice(&iv),
            Payload {
                msg: plaintext,
                aad: protected_b64.as_bytes(),
            },
        )
        .map_err(|_| Error::Malformed("jwe: content encryption failed".into()))?;
    let (ct, tag) = sealed.split_at(sealed.len() - 16);

    let mut out = Map::new();
    out.insert("protected".into(), json!(protected_b64));
    if single {
        out.insert("encrypted_key".into(), json!(B64URL.encode(&headers[0].1)));
    } else {
        let list: Vec<Value> = headers
            .iter()
            .map(|(h, ek)| json!({"header": Value::Object(h.clone()), "encrypted_key": B64URL.encode(ek)}))
            .collect();
        out.insert("recipients".into(), Value::Array(list));
    }
    out.insert("iv".into(), json!(B64URL.encode(iv)));
    out.insert("ciphertext".into(), json!(B64URL.encode(ct)));
    out.insert("tag".into(), json!(B64URL.encode(tag)));
    Ok(serde_json::to_vec(&Value::Object(out)).expect("json"))
}

/// Wraps the content key for one recipient: its header and encrypted key.
fn wrap_cek(r: &PublicKey, cek: &[u8; 32]) -> Result<(Map<String, Value>, Vec<u8>), Error> {
    let mut h = Map::new();
    let ek = match r {
        PublicKey::Rsa(k, sha256) => {
            let res = if *sha256 {
                h.insert("alg".into(), json!("RSA-OAEP-256"));
                k.encrypt(&mut OsRng, Oaep::new::<Sha256>(), cek)
            } else {
                h.insert("alg".into(), json!("RSA-OAEP"));
                k.encrypt(&mut OsRng, Oaep::new::<sha1::Sha1>(), cek)
            };
            res.map_err(|e| Error::BadKey(format!("jwe: RSA-OAEP: {e}")))?
        }
        PublicKey::P256(k) => ecdh_wrap::<p256::NistP256>(k, "P-256", &mut h, cek)?,
        PublicKey::P384(k) => ecdh_wrap::<p384::NistP384>(k, "P-384", &mut h, cek)?,
        PublicKey::P521(k) => ecdh_wrap::<p521::NistP521>(k, "P-521", &mut h, cek)?,
    };
    Ok((h, ek))
}

fn ecdh_wrap<C>(
    pk: &elliptic_curve::PublicKey<C>,
    crv: &str,
    h: &mut Map<String, Value>,
    cek: &[u8; 32],
) -> Result<Vec<u8>, Error>
where
    C: elliptic_curve::CurveArithmetic,
    elliptic_curve::AffinePoint<C>:
        elliptic_curve::sec1::FromEncodedPoint<C> + elliptic_curve::sec1::ToEncodedPoint<C>,
    elliptic_curve::FieldBytesSize<C>: elliptic_curve::sec1::ModulusSize,
{
    use elliptic_curve::sec1::ToEncodedPoint;
    let eph = elliptic_curve::ecdh::EphemeralSecret::<C>::random(&mut OsRng);
    let shared = eph.diffie_hellman(pk);
    let epk = eph.public_key().to_encoded_point(false);
    let (x, y) = (
        epk.x().expect("uncompressed"),
        epk.y().expect("uncompressed"),
    );
    h.insert("alg".into(), json!("ECDH-ES+A256KW"));
    h.insert(
        "epk".into(),
        json!({"kty": "EC", "crv": crv, "x": B64URL.encode(x), "y": B64URL.encode(y)}),
    );
    let kek = concat_kdf(shared.raw_secret_bytes(), "ECDH-ES+A256KW", b"", b"", 32);
    let kw =
        aes_kw::KekAes256::try_from(&kek[..]).map_err(|e| Error::Malformed(format!("jwe: {e}")))?;
    kw.wrap_vec(cek)
        .map_err(|e| Error::Malformed(format!("jwe: key wrap: {e}")))
}

/// RFC 7518 §4.6.2 Concat KDF with SHA-256.
fn concat_kdf(z: &[u8], alg: &str, apu: &[u8], apv: &[u8], len: usize) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::with_capacity(len + 32));
    let mut counter = 1u32;
    while out.len() < len {
        let mut h = Sha256::new();
        h.update(counter.to_be_bytes());
        h.update(z);
        for part in [alg.as_bytes(), apu, apv] {
            h.update((part.len() as u32).to_be_bytes());
            h.update(part);
        }
        h.update(((len * 8) as u32).to_be_bytes());
        out.extend_from_slice(&h.finalize());
        counter += 1;
    }
    out.truncate(len);
    out
}

/// Unwraps a JWE with the first key that fits. `Ok(None)`: no key fits.
pub fn unwrap(jwe: &[u8], keys: &[&PrivateKey]) -> Result<Option<Zeroizing<Vec<u8>>>, Error> {
    let bad = |why: String| Error::Malformed(format!("jwe: {why}"));
    let v: Value = serde_json::from_slice(jwe).map_err(|e| bad(format!("not JSON: {e}")))?;
    let protected_b64 = v["protected"].as_str().unwrap_or("");
    let protected: Map<String, Value> = if protected_b64.is_empty() {
        Map::new()
    } else {
        let raw = B64URL
            .decode(protected_b64)
            .map_err(|e| bad(format!("protected header: {e}")))?;
        serde_json::from_slice(&raw).map_err(|e| bad(format!("protected header: {e}")))?
    };
    let shared = v["unprotected"].as_object().cloned().unwrap_or_default();

    let mut recipients: Vec<(Map<String, Value>, Value)> = Vec::new();
    match v["recipients"].as_array() {
        Some(list) => {
            for r in list {
                recipients.push((
                    r["header"].as_object().cloned().unwrap_or_default(),
                    r["encrypted_key"].clone(),
                ));
            }
        }
        None => recipients.push((
            v["header"].as_object().cloned().unwrap_or_default(),
            v["encrypted_key"].clone(),
        )),
    }

    let field = |k: &str| -> Result<Vec<u8>, Error> {
        let s = v[k].as_str().ok_or_else(|| bad(format!("missing {k:?}")))?;
        B64URL.decode(s).map_err(|e| bad(format!("{k:?}: {e}")))
    };
    let (iv, ct, tag) = (field("iv")?, field("ciphertext")?, field("tag")?);
    if iv.len() != 12 {
        return Err(bad(format!("iv has {} bytes, want 12", iv.len())));
    }
    let mut aad = protected_b64.as_bytes().to_vec();
    if let Some(extra) = v["aad"].as_str() {
        aad.push(b'.');
        aad.extend_from_slice(extra.as_bytes());
    }

    for (rh, ek) in &recipients {
        let mut h = protected.clone();
        h.extend(shared.clone());
        h.extend(rh.clone());
        let alg = h
            .get("alg")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let enc = h
            .get("enc")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let ek = match ek.as_str() {
            Some(s) => B64URL
                .decode(s)
                .map_err(|e| bad(format!("encrypted_key: {e}")))?,
            None => Vec::new(),
        };
        let cek_len = match enc.as_str() {
            "A128GCM" => 16,
            "A192GCM" => 24,
            "A256GCM" => 32,
            other => return Err(bad(format!("unsupported content encryption {other:?}"))),
        };
        for key in keys {
            let Some(cek) = unwrap_cek(&alg, &enc, cek_len, &h, &ek, key)? else {
                continue;
            };
            let mut sealed = ct.clone();
            sealed.extend_from_slice(&tag);
            let payload = Payload {
                msg: &sealed,
                aad: &aad,
            };
            let res = match cek_len {
                16 => Aes128Gcm::new_from_slice(&cek)
                    .map(|c| c.decrypt(Nonce::from_slice(&iv), payload)),
                24 => Aes192Gcm::new_from_slice(&cek)
                    .map(|c| c.decrypt(Nonce::from_slice(&iv), payload)),
                _ => Aes256Gcm::new_from_slice(&cek)
                    .map(|c| c.decrypt(Nonce::from_slice(&iv), payload)),
            };
            match res {
                Ok(Ok(pt)) => return Ok(Some(Zeroizing::new(pt))),
                // RSA-OAEP can "succeed" with a wrong key only by chance; try the next key.
                _ => continue,
            }
        }
    }
    Ok(None)
}

/// The content key for one recipient header, if `key` is its key.
fn unwrap_cek(
    alg: &str,
    enc: &str,
    cek_len: usize,
    h: &Map<String, Value>,
    ek: &[u8],
    key: &PrivateKey,
) -> Result<Option<Zeroizing<Vec<u8>>>, Error> {
    match (alg, key) {
        ("RSA-OAEP", PrivateKey::Rsa(k)) => Ok(k
            .decrypt(Oaep::new::<sha1::Sha1>(), ek)
            .ok()
            .map(Zeroizing::new)),
        ("RSA-OAEP-256", PrivateKey::Rsa(k)) => Ok(k
            .decrypt(Oaep::new::<Sha256>(), ek)
            .ok()
            .map(Zeroizing::new)),
        (a, PrivateKey::P256(k)) if a.starts_with("ECDH-ES") => {
            ecdh_unwrap::<p256::NistP256>(k, "P-256", a, enc, cek_len, h, ek)
        }
        (a, PrivateKey::P384(k)) if a.starts_with("ECDH-ES") => {
            ecdh_unwrap::<p384::NistP384>(k, "P-384", a, enc, cek_len, h, ek)
        }
        (a, PrivateKey::P521(k)) if a.starts_with("ECDH-ES") => {
            ecdh_unwrap::<p521::NistP521>(k, "P-521", a, enc, cek_len, h, ek)
        }
        _ => Ok(None),
    }
}

fn ecdh_unwrap<C>(
    sk: &elliptic_curve::SecretKey<C>,
    crv: &str,
    alg: &str,
    enc: &str,
    cek_len: usize,
    h: &Map<String, Value>,
    ek: &[u8],
) -> Result<Option<Zeroizing<Vec<u8>>>, Error>
where
    C: elliptic_curve::CurveArithmetic,
    elliptic_curve::AffinePoint<C>:
        elliptic_curve::sec1::FromEncodedPoint<C> + elliptic_curve::sec1::ToEncodedPoint<C>,
    elliptic_curve::FieldBytesSize<C>: elliptic_curve::sec1::ModulusSize,
{
    let bad = |why: String| Error::Malformed(format!("jwe: {why}"));
    let epk = h
        .get("epk")
        .ok_or_else(|| bad(format!("{alg} without epk")))?;
    if epk["crv"].as_str() != Some(crv) {
        return Ok(None);
    }
    let coord = |k: &str| -> Result<Vec<u8>, Error> {
        B64URL
            .decode(epk[k].as_str().unwrap_or(""))
            .map_err(|e| bad(format!("epk {k}: {e}")))
    };
    let mut sec1 = vec![4u8];
    sec1.extend(coord("x")?);
    sec1.extend(coord("y")?);
    let pk = elliptic_curve::PublicKey::<C>::from_sec1_bytes(&sec1)
        .map_err(|_| bad("epk is not a point on the curve".into()))?;
    let shared = elliptic_curve::ecdh::diffie_hellman(sk.to_nonzero_scalar(), pk.as_affine());
    let party = |k: &str| -> Result<Vec<u8>, Error> {
        match h.get(k).and_then(Value::as_str) {
            Some(s) => B64URL.decode(s).map_err(|e| bad(format!("{k}: {e}"))),
            None => Ok(Vec::new()),
        }
    };
    let (apu, apv) = (party("apu")?, party("apv")?);
    let z = shared.raw_secret_bytes();
    if alg == "ECDH-ES" {
        return Ok(Some(concat_kdf(z, enc, &apu, &apv, cek_len)));
    }
    let kek_len = match alg {
        "ECDH-ES+A128KW" => 16,
        "ECDH-ES+A192KW" => 24,
        "ECDH-ES+A256KW" => 32,
        other => {
            return Err(bad(format!(
                "unsupported key management algorithm {other:?}"
            )));
        }
    };
    let kek = concat_kdf(z, alg, &apu, &apv, kek_len);
    let res = match kek_len {
        16 => aes_kw::KekAes128::try_from(&kek[..]).map(|k| k.unwrap_vec(ek)),
        24 => aes_kw::KekAes192::try_from(&kek[..]).map(|k| k.unwrap_vec(ek)),
        _ => aes_kw::KekAes256::try_from(&kek[..]).map(|k| k.unwrap_vec(ek)),
    };
    Ok(match res {
        Ok(Ok(cek)) => Some(Zeroizing::new(cek)),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rsa() -> (PrivateKey, PublicKey) {
        let k = rsa::RsaPrivateKey::new(&mut OsRng, 2048).unwrap();
        let p = k.to_public_key();
        (
            PrivateKey::Rsa(Box::new(k)),
            PublicKey::Rsa(Box::new(p), false),
        )
    }

    #[test]
    fn roundtrip_rsa_and_ec_single_and_multi() {
        let (rsk, rpk) = rsa();
        let esk = p256::SecretKey::random(&mut OsRng);
        let epk = PublicKey::P256(esk.public_key());
        let esk = PrivateKey::P256(esk);
        let msg = b"{\"symkey\":\"x\"}";

        let one = wrap(std::slice::from_ref(&rpk), msg).unwrap();
        let v: Value = serde_json::from_slice(&one).unwrap();
        assert!(v.get("recipients").is_none() && v.get("encrypted_key").is_some());
        assert_eq!(unwrap(&one, &[&rsk]).unwrap().unwrap().as_slice(), msg);

        let one_ec = wrap(std::slice::from_ref(&epk), msg).unwrap();
        assert_eq!(
            unwrap(&one_ec, &[&rsk, &esk]).unwrap().unwrap().as_slice(),
            msg
        );

        let both = wrap(&[rpk, epk], msg).unwrap();
        assert_eq!(
            serde_json::from_slice::<Value>(&both).unwrap()["recipients"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
        assert_eq!(unwrap(&both, &[&esk]).unwrap().unwrap().as_slice(), msg);
        assert_eq!(unwrap(&both, &[&rsk]).unwrap().unwrap().as_slice(), msg);

        let (other, _) = rsa();
        assert!(unwrap(&both, &[&other]).unwrap().is_none());
    }

    #[test]
    fn malformed_jwe_is_an_error_not_a_panic() {
        let (k, _) = rsa();
        for bad in [
            &b"not json"[..],
            b"{}",
            br#"{"protected":"!!","iv":"","ciphertext":"","tag":""}"#,
        ] {
            assert!(unwrap(bad, &[&k]).is_err());
        }
    }
}

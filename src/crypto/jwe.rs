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
use super::options::check_wrapped_size;

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
///
/// Header members come from three places (RFC 7516 §7.2.1): the protected
/// header, the shared `unprotected` header and the recipient's `header`; their
/// names must be disjoint, so no member, `alg` included, can be given twice.
/// `enc` names the one content cipher all recipients share, so it is taken
/// only from the protected or shared header, never from a recipient's.
pub fn unwrap(jwe: &[u8], keys: &[&PrivateKey]) -> Result<Option<Zeroizing<Vec<u8>>>, Error> {
    check_wrapped_size("jwe", "wrapped key", jwe.len())?;
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
    let shared = object(&v, "unprotected")?;
    disjoint(&protected, "protected", &shared, "shared unprotected")?;

    let mut recipients: Vec<(Map<String, Value>, Value)> = Vec::new();
    match v.get("recipients") {
        // The general form: a top-level "header" or "encrypted_key" is no
        // member of it and is ignored (go-jose repeats the first recipient's
        // encrypted_key there), so no header member can come from it.
        Some(Value::Array(list)) => {
            for r in list {
                recipients.push((object(r, "header")?, r["encrypted_key"].clone()));
            }
        }
        Some(_) => return Err(bad("\"recipients\" is not an array".into())),
        None => recipients.push((object(&v, "header")?, v["encrypted_key"].clone())),
    }
    for (i, (rh, _)) in recipients.iter().enumerate() {
        let at = |e: Error| match e {
            Error::Malformed(m) => Error::Malformed(format!("{m} (recipient {i})")),
            other => other,
        };
        disjoint(&protected, "protected", rh, "per-recipient").map_err(at)?;
        disjoint(&shared, "shared unprotected", rh, "per-recipient").map_err(at)?;
        if rh.contains_key("enc") {
            return Err(at(bad(
                "\"enc\" in a per-recipient header: it belongs in the protected or shared header"
                    .into(),
            )));
        }
    }
    let enc = protected
        .get("enc")
        .or_else(|| shared.get("enc"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let cek_len = match enc.as_str() {
        "A128GCM" => 16,
        "A192GCM" => 24,
        "A256GCM" => 32,
        other => return Err(bad(format!("unsupported content encryption {other:?}"))),
    };

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
        let ek = match ek.as_str() {
            Some(s) => B64URL
                .decode(s)
                .map_err(|e| bad(format!("encrypted_key: {e}")))?,
            None => Vec::new(),
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
                // Not this key (or not a key that fits); try the next.
                _ => continue,
            }
        }
    }
    Ok(None)
}

fn bad(why: String) -> Error {
    Error::Malformed(format!("jwe: {why}"))
}

/// Member `k` of `v` as a header object; absent is empty.
fn object(v: &Value, k: &str) -> Result<Map<String, Value>, Error> {
    match v.get(k) {
        None => Ok(Map::new()),
        Some(Value::Object(m)) => Ok(m.clone()),
        Some(_) => Err(bad(format!("{k:?} is not a JSON object"))),
    }
}

/// RFC 7516 §7.2.1: a header member is given in one place only.
fn disjoint(
    a: &Map<String, Value>,
    a_name: &str,
    b: &Map<String, Value>,
    b_name: &str,
) -> Result<(), Error> {
    match a.keys().find(|k| b.contains_key(*k)) {
        Some(k) => Err(bad(format!(
            "header member {k:?} is in both the {a_name} and the {b_name} header"
        ))),
        None => Ok(()),
    }
}

/// The content key for one recipient header, if `key` is its key. For RSA
/// keys, a failed decryption gives a random key of the content cipher's
/// length instead, so it fails at the content like any wrong key does.
fn unwrap_cek(
    alg: &str,
    enc: &str,
    cek_len: usize,
    h: &Map<String, Value>,
    ek: &[u8],
    key: &PrivateKey,
) -> Result<Option<Zeroizing<Vec<u8>>>, Error> {
    match (alg, key) {
        ("RSA-OAEP", PrivateKey::Rsa(k)) => {
            Ok(Some(rsa_oaep(k, Oaep::new::<sha1::Sha1>(), ek, cek_len)))
        }
        ("RSA-OAEP-256", PrivateKey::Rsa(k)) => {
            Ok(Some(rsa_oaep(k, Oaep::new::<Sha256>(), ek, cek_len)))
        }
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

/// Blinded RSA-OAEP decryption of the content key, or a random one of `len`
/// bytes (drawn first either way) when it fails or has another length.
fn rsa_oaep(k: &rsa::RsaPrivateKey, oaep: Oaep, ek: &[u8], len: usize) -> Zeroizing<Vec<u8>> {
    let mut fallback = Zeroizing::new(vec![0u8; len]);
    OsRng.fill_bytes(&mut fallback);
    match k.decrypt_blinded(&mut OsRng, oaep, ek).map(Zeroizing::new) {
        Ok(cek) if cek.len() == len => cek,
        _ => fallback,
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

    /// A flattened RSA-OAEP/A256GCM JWE with its members placed as given.
    fn flattened(
        pk: &rsa::RsaPublicKey,
        protected: Value,
        unprotected: Option<Value>,
        header: Option<Value>,
        msg: &[u8],
    ) -> Vec<u8> {
        let cek = [9u8; 32];
        let ek = pk
            .encrypt(&mut OsRng, Oaep::new::<sha1::Sha1>(), &cek)
            .unwrap();
        let protected_b64 = B64URL.encode(serde_json::to_vec(&protected).unwrap());
        let iv = [3u8; 12];
        let sealed = Aes256Gcm::new((&cek).into())
            .encrypt(
                Nonce::from_slice(&iv),
                Payload {
                    msg,
                    aad: protected_b64.as_bytes(),
                },
            )
            .unwrap();
        let (ct, tag) = sealed.split_at(sealed.len() - 16);
        let mut out = json!({
            "protected": protected_b64,
            "encrypted_key": B64URL.encode(ek),
            "iv": B64URL.encode(iv),
            "ciphertext": B64URL.encode(ct),
            "tag": B64URL.encode(tag),
        });
        if let Some(u) = unprotected {
            out["unprotected"] = u;
        }
        if let Some(h) = header {
            out["header"] = h;
        }
        serde_json::to_vec(&out).unwrap()
    }

    #[test]
    fn header_members_come_from_one_place_only() {
        let k = rsa::RsaPrivateKey::new(&mut OsRng, 2048).unwrap();
        let pk = k.to_public_key();
        let sk = PrivateKey::Rsa(Box::new(k));
        let msg = b"{}";
        let alg = || json!({"alg": "RSA-OAEP"});
        let enc = || json!({"enc": "A256GCM"});
        let both = || json!({"alg": "RSA-OAEP", "enc": "A256GCM"});

        // Where ocicrypt and RFC 7516 put them: accepted.
        for (p, u, h) in [
            (both(), None, None),
            (enc(), None, Some(alg())),
            (enc(), Some(alg()), None),
            (json!({}), Some(enc()), Some(alg())),
        ] {
            let jwe = flattened(&pk, p, u, h, msg);
            assert_eq!(unwrap(&jwe, &[&sk]).unwrap().unwrap().as_slice(), msg);
        }

        // Given twice, or enc per recipient: rejected, saying what.
        for (p, u, h, want) in [
            (
                both(),
                None,
                Some(alg()),
                "jwe: header member \"alg\" is in both the protected and the per-recipient header (recipient 0)",
            ),
            (
                both(),
                Some(enc()),
                None,
                "jwe: header member \"enc\" is in both the protected and the shared unprotected header",
            ),
            (
                enc(),
                Some(alg()),
                Some(alg()),
                "jwe: header member \"alg\" is in both the shared unprotected and the per-recipient header (recipient 0)",
            ),
            (
                json!({}),
                None,
                Some(both()),
                "jwe: \"enc\" in a per-recipient header: it belongs in the protected or shared header (recipient 0)",
            ),
        ] {
            let jwe = flattened(&pk, p, u, h, msg);
            let e = unwrap(&jwe, &[&sk]).unwrap_err();
            assert!(matches!(e, Error::Malformed(_)), "{e}");
            assert_eq!(e.to_string(), want);
        }

        // The general form takes no header member from a top-level "header"
        // (go-jose also repeats the first encrypted_key at the top level).
        let (rsk, rpk) = rsa();
        let mut general: Value =
            serde_json::from_slice(&wrap(&[rpk.clone(), rpk], msg).unwrap()).unwrap();
        general["header"] = json!({"alg": "RSA-OAEP-256", "enc": "A128GCM"});
        general["encrypted_key"] = general["recipients"][0]["encrypted_key"].clone();
        let jwe = serde_json::to_vec(&general).unwrap();
        assert_eq!(unwrap(&jwe, &[&rsk]).unwrap().unwrap().as_slice(), msg);
    }

    #[test]
    fn tampered_rsa_oaep_key_fails_like_a_wrong_key() {
        let (sk, pk) = rsa();
        let one = wrap(std::slice::from_ref(&pk), b"{}").unwrap();
        let mut v: Value = serde_json::from_slice(&one).unwrap();
        let mut ek = B64URL.decode(v["encrypted_key"].as_str().unwrap()).unwrap();
        ek[10] ^= 1;
        v["encrypted_key"] = json!(B64URL.encode(&ek));
        let tampered = serde_json::to_vec(&v).unwrap();
        assert!(unwrap(&tampered, &[&sk]).unwrap().is_none());
        let (other, _) = rsa();
        assert!(unwrap(&one, &[&other]).unwrap().is_none());
    }

    /// A wrapped key over the limit is refused before it is parsed: JSON
    /// a tenth its size can cost the parser ten times its size in memory.
    #[test]
    fn a_jwe_over_the_size_limit_is_refused_unparsed() {
        use crate::crypto::options::MAX_WRAPPED_KEY;
        let mut huge = b"[".to_vec();
        huge.resize(MAX_WRAPPED_KEY, b'0');
        huge[2..].iter_mut().step_by(2).for_each(|b| *b = b',');
        huge.push(b']');
        let e = unwrap(&huge, &[]).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "jwe: wrapped key of {} bytes is over the {MAX_WRAPPED_KEY}-byte limit",
                MAX_WRAPPED_KEY + 1
            )
        );
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

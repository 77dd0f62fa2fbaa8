//! Layer annotations: wrapping private options to recipients, and finding the
//! key that unwraps them.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

use super::options::{PrivateOptions, PublicOptions};
use super::recipient::{KeyRing, Recipient};
use super::{Error, jwe, keyprovider, pgp, pkcs7};

/// `org.opencontainers.image.enc.keys.<scheme>`.
pub const KEYS_PREFIX: &str = "org.opencontainers.image.enc.keys.";
/// The public options annotation.
pub const PUBOPTS: &str = "org.opencontainers.image.enc.pubopts";

/// Wraps `opts` to the recipients: one entry per scheme covering all of that
/// scheme's recipients (one per keyprovider), keyed by annotation name.
pub fn wrap(
    recipients: &[Recipient],
    opts: &PrivateOptions,
    ring: &KeyRing,
) -> Result<BTreeMap<String, String>, Error> {
    let json = opts.to_json();
    let mut out = BTreeMap::new();
    let mut jwes = Vec::new();
    let mut certs = Vec::new();
    let mut pgps = Vec::new();
    for r in recipients {
        match r {
            Recipient::Jwe(k) => jwes.push(k.clone()),
            Recipient::Pkcs7(c) => certs.push(c.clone()),
            Recipient::Pgp(k) => pgps.push(k.as_ref()),
            Recipient::Provider { name, arg } => {
                let wrapped =
                    keyprovider::wrap(ring.provider_config.as_ref(), name, arg.as_deref(), &json)?;
                out.insert(format!("{KEYS_PREFIX}provider.{name}"), B64.encode(wrapped));
            }
        }
    }
    if !jwes.is_empty() {
        out.insert(
            format!("{KEYS_PREFIX}jwe"),
            B64.encode(jwe::wrap(&jwes, &json)?),
        );
    }
    if !certs.is_empty() {
        out.insert(
            format!("{KEYS_PREFIX}pkcs7"),
            B64.encode(pkcs7::wrap(&certs, &json)?),
        );
    }
    if !pgps.is_empty() {
        out.insert(
            format!("{KEYS_PREFIX}pgp"),
            B64.encode(pgp::wrap(&pgps, &json)?),
        );
    }
    Ok(out)
}

/// Adds wrapped entries to a layer's annotations, appending to existing lists.
pub fn merge(annotations: &mut HashMap<String, String>, wrapped: BTreeMap<String, String>) {
    for (k, v) in wrapped {
        match annotations.get_mut(&k) {
            Some(existing) if !existing.is_empty() => {
                existing.push(',');
                existing.push_str(&v);
            }
            _ => {
                annotations.insert(k, v);
            }
        }
    }
}

/// The schemes a layer is wrapped with, in the order they are tried.
pub fn schemes(annotations: &HashMap<String, String>) -> Vec<String> {
    let mut s: Vec<String> = annotations
        .keys()
        .filter_map(|k| k.strip_prefix(KEYS_PREFIX))
        .map(str::to_string)
        .collect();
    let rank = |s: &str| {
        ["jwe", "pkcs7", "pgp", "pkcs11"]
            .iter()
            .position(|x| *x == s)
            .unwrap_or(9)
    };
    s.sort_by(|a, b| rank(a).cmp(&rank(b)).then(a.cmp(b)));
    s
}

/// ocicrypt's text when keys were given and none unwrapped the layer.
pub const NONE_FIT: &str =
    "no suitable key unwrapper found or none of the private keys could be used for decryption";

/// Most entries (recipients) of one scheme that are tried: each may cost an
/// RSA decryption or a keyprovider call, and a manifest may list thousands.
/// imgcrypt writes one entry per recipient; past this many, the rest are
/// not tried.
pub const MAX_ENTRIES_PER_SCHEME: usize = 64;

/// Why one annotation entry gave no private options.
enum Miss {
    /// Well formed, but no key or provider we hold opens it. The text is
    /// the same for every such entry of a scheme, whatever the entry holds:
    /// it depends on the keys held only (see `pkcs7::unwrap`).
    NoKey(String),
    /// The entry cannot be read; the text says why (as it did when this
    /// failure ended the search).
    Malformed(String),
    /// A keyprovider failed (or timed out).
    Provider(String),
}

/// Layer keys this process unwrapped or tried to, each with private-key
/// operations or keyprovider calls.
pub static UNWRAPS: AtomicU64 = AtomicU64::new(0);

/// Whether [`unwrap`] answers the same for `annotations` whenever the ring
/// has the same [`KeyRing::fingerprint`]: true unless a configured
/// keyprovider would be asked, which may answer otherwise next time.
pub fn repeatable(annotations: &HashMap<String, String>, ring: &KeyRing) -> bool {
    schemes(annotations).iter().all(|s| {
        s.strip_prefix("provider.")
            .is_none_or(|name| ring.provider(name).is_none())
    })
}

/// Unwraps a layer's private options: every entry of every scheme is tried,
/// with every key and configured keyprovider, and the first that yields
/// valid private options wins. A malformed entry or a failing provider only
/// ends its own try. When none succeeds, the error lists why for each
/// scheme, on one line. `layer` names the layer in errors.
pub fn unwrap(
    annotations: &HashMap<String, String>,
    ring: &KeyRing,
    layer: &str,
) -> Result<PrivateOptions, Error> {
    UNWRAPS.fetch_add(1, Ordering::Relaxed);
    let schemes = schemes(annotations);
    if schemes.is_empty() {
        return Err(Error::Malformed(format!(
            "layer {layer}: encrypted, but has no {KEYS_PREFIX}* annotation"
        )));
    }
    let mut misses = Vec::new();
    for scheme in &schemes {
        let value = &annotations[&format!("{KEYS_PREFIX}{scheme}")];
        let entries = value.split(',').filter(|e| !e.is_empty());
        for (i, entry) in entries.enumerate() {
            if i == MAX_ENTRIES_PER_SCHEME {
                misses.push(Miss::Malformed(format!(
                    "{KEYS_PREFIX}{scheme}: entries past the first {MAX_ENTRIES_PER_SCHEME} are not tried"
                )));
                break;
            }
            match unwrap_entry(scheme, i, entry, ring) {
                Ok(opts) => return Ok(opts),
                Err(m) => misses.push(m),
            }
        }
    }
    Err(none_unwrapped(layer, ring, misses))
}

/// One entry of one scheme, with every key the ring holds for that scheme.
fn unwrap_entry(
    scheme: &str,
    i: usize,
    entry: &str,
    ring: &KeyRing,
) -> Result<PrivateOptions, Miss> {
    let at = format!("{KEYS_PREFIX}{scheme} entry {i}");
    let raw = B64
        .decode(entry.trim())
        .map_err(|e| Miss::Malformed(format!("{at} is not base64: {e}")))?;
    let no_key = |held: usize| {
        Miss::NoKey(match (ring.is_empty(), held) {
            (true, _) => format!("{scheme}: no key was given"),
            (false, 0) => format!("{scheme}: no key of this kind was given"),
            (false, n) => format!("{scheme}: none of the {n} keys of this kind given opens it"),
        })
    };
    let keyed = |r: Result<Option<zeroize::Zeroizing<Vec<u8>>>, Error>, held: usize| match r {
        Ok(Some(json)) => Ok(json),
        Ok(None) => Err(no_key(held)),
        Err(Error::Malformed(m)) => Err(Miss::Malformed(format!("{at}: {m}"))),
        Err(e) => Err(Miss::Malformed(format!("{at}: {e}"))),
    };
    let json = match scheme {
        "jwe" => {
            let private: Vec<_> = ring.private_keys().iter().collect();
            keyed(jwe::unwrap(&raw, &private), private.len())?
        }
        "pkcs7" => {
            let private: Vec<_> = ring.private_keys().iter().collect();
            let certs: Vec<_> = ring.certificates().iter().collect();
            let pairs = if certs.is_empty() { 0 } else { private.len() };
            keyed(pkcs7::unwrap(&raw, &certs, &private), pairs)?
        }
        "pgp" => {
            let keys: Vec<_> = ring
                .pgp_keys()
                .iter()
                .map(|(k, pw)| (k, pw.as_str()))
                .collect();
            keyed(pgp::unwrap(&raw, &keys), keys.len())?
        }
        s => match s.strip_prefix("provider.") {
            Some(name) if ring.provider(name).is_some() => {
                keyprovider::unwrap(ring.provider_config.as_ref(), name, &raw)
                    .map_err(|e| Miss::Provider(format!("{scheme}: {e}")))?
            }
            Some(name) => {
                return Err(Miss::NoKey(format!(
                    "{scheme}: no keyprovider {name:?} is configured (${})",
                    keyprovider::CONFIG_ENV
                )));
            }
            None => {
                return Err(Miss::NoKey(format!(
                    "{scheme}: not a scheme lazycrypt knows"
                )));
            }
        },
    };
    PrivateOptions::from_json(&json).map_err(|e| Miss::Malformed(format!("{at}: {e}")))
}

/// The error when no entry unwrapped: why, for each scheme, in the order
/// tried. A layer some key could open had we held it is a missing key (as
/// imgcrypt says); otherwise a failing provider or a malformed layer.
fn none_unwrapped(layer: &str, ring: &KeyRing, misses: Vec<Miss>) -> Error {
    let mut why: Vec<String> = Vec::new();
    let (mut no_key, mut provider) = (false, false);
    for m in misses {
        let text = match m {
            Miss::NoKey(t) => {
                no_key = true;
                t
            }
            Miss::Provider(t) => {
                provider = true;
                t
            }
            Miss::Malformed(t) => t,
        };
        if !why.contains(&text) {
            why.push(text);
        }
    }
    let why = why.join("; ");
    let detail = if ring.is_empty() {
        format!("layer {layer}: {why}")
    } else {
        format!("layer {layer}: {NONE_FIT}: {why}")
    };
    if no_key {
        Error::MissingKey(format!(" ({detail})"))
    } else if provider {
        Error::KeyProvider(detail)
    } else {
        Error::Malformed(detail)
    }
}

/// The HMAC, checked at EOF, is what authenticates a layer. The private
/// options' digest is not a reliable plaintext digest: when containers/image
/// compresses a layer on the fly while encrypting it (skopeo does, for
/// uncompressed layers), ocicrypt records the digest of the uncompressed
/// source. So a mismatch is noted, not fatal, as in ocicrypt's own users.
/// The recorded digest is a private option, so it is never logged.
pub fn note_digest(layer: &str, got: &str, recorded: &str) {
    if !got.eq_ignore_ascii_case(recorded) {
        tracing::debug!(
            "layer {layer}: the decrypted blob's digest differs from the one in the private options"
        );
    }
}

/// Unwraps a layer's private options and reads its public options.
pub fn layer_keys(
    annotations: &HashMap<String, String>,
    ring: &KeyRing,
    layer: &str,
) -> Result<(PrivateOptions, PublicOptions), Error> {
    let pub_raw = annotations.get(PUBOPTS).ok_or_else(|| {
        Error::Malformed(format!(
            "layer {layer}: encrypted, but has no {PUBOPTS} annotation"
        ))
    })?;
    let pubopts = PublicOptions::from_annotation(pub_raw)
        .map_err(|e| Error::Malformed(format!("layer {layer}: {e}")))?;
    let opts = unwrap(annotations, ring, layer)?;
    Ok((opts, pubopts))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::keys::{PrivateKey, PublicKey};

    fn p256() -> (PrivateKey, PublicKey) {
        let k = p256::SecretKey::random(&mut rand::rngs::OsRng);
        let public = PublicKey::P256(k.public_key());
        (PrivateKey::P256(k), public)
    }

    fn opts() -> PrivateOptions {
        PrivateOptions {
            symkey: vec![7; 32],
            digest: "sha256:00".into(),
            cipheroptions: [("nonce".to_string(), vec![1; 16])].into(),
        }
    }

    fn jwe_entry(to: &PublicKey) -> String {
        B64.encode(jwe::wrap(std::slice::from_ref(to), &opts().to_json()).unwrap())
    }

    /// The variant decides what containerd is told (a missing key is
    /// "permission denied"): it says whether a key we lack could open the layer.
    #[test]
    fn every_entry_is_tried_and_the_failure_is_classified_by_what_was_met() {
        let (ours, our_pub) = p256();
        let (_, their_pub) = p256();
        let mut ring = KeyRing::default();
        ring.add(
            crate::crypto::KeyMaterial::Private(ours),
            &zeroize::Zeroizing::new(String::new()),
        );
        let garbage = B64.encode("not json");
        let jwe_key = format!("{KEYS_PREFIX}jwe");
        let pkcs7_key = format!("{KEYS_PREFIX}pkcs7");
        let ann = |pairs: &[(&str, String)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect()
        };

        // A garbage entry, then ours: ours opens.
        let got = unwrap(
            &ann(&[(&jwe_key, format!("{garbage},{}", jwe_entry(&our_pub)))]),
            &ring,
            "L",
        )
        .unwrap();
        assert_eq!(got.symkey, vec![7; 32]);

        // Only garbage: malformed, each reason on one line.
        let e = unwrap(
            &ann(&[(&jwe_key, garbage.clone()), (&pkcs7_key, garbage.clone())]),
            &ring,
            "L",
        )
        .unwrap_err();
        assert!(matches!(e, Error::Malformed(_)), "{e}");
        let text = e.to_string();
        assert!(
            text.starts_with(&format!(
                "layer L: {NONE_FIT}: {jwe_key} entry 0: jwe: not JSON"
            )) && text.ends_with(&format!("; {pkcs7_key} entry 0: pkcs7: truncated"))
                && !text.contains('\n'),
            "{text}"
        );

        // Garbage beside an entry for someone else's key: a missing key.
        let e = unwrap(
            &ann(&[(&jwe_key, format!("{garbage},{}", jwe_entry(&their_pub)))]),
            &ring,
            "L",
        )
        .unwrap_err();
        assert!(matches!(e, Error::MissingKey(_)), "{e}");
        assert!(
            e.to_string().ends_with(&format!(
                "(layer L: {NONE_FIT}: {jwe_key} entry 0: jwe: not JSON: expected ident at line 1 column 2; jwe: none of the 1 keys of this kind given opens it)"
            )),
            "{e}"
        );

        // A provider the ring does not configure: a missing key, named.
        let e = unwrap(
            &ann(&[(&format!("{KEYS_PREFIX}provider.kms"), garbage)]),
            &KeyRing::default(),
            "L",
        )
        .unwrap_err();
        assert!(matches!(e, Error::MissingKey(_)), "{e}");
        assert!(
            e.to_string()
                .ends_with("(layer L: provider.kms: no keyprovider \"kms\" is configured ($OCICRYPT_KEYPROVIDER_CONFIG))"),
            "{e}"
        );
    }

    /// A manifest listing thousands of entries costs at most 64 tries a
    /// scheme (each may be an RSA decryption or a keyprovider call); ours
    /// past them is not reached.
    #[test]
    fn entries_past_the_cap_are_not_tried() {
        let (ours, our_pub) = p256();
        let mut ring = KeyRing::default();
        ring.add(
            crate::crypto::KeyMaterial::Private(ours),
            &zeroize::Zeroizing::new(String::new()),
        );
        let garbage = B64.encode("not json");
        let mut entries = vec![garbage; MAX_ENTRIES_PER_SCHEME];
        entries.push(jwe_entry(&our_pub));
        let ann = HashMap::from([(format!("{KEYS_PREFIX}jwe"), entries.join(","))]);
        let e = unwrap(&ann, &ring, "L").unwrap_err().to_string();
        assert!(
            e.ends_with(&format!(
                "; {KEYS_PREFIX}jwe: entries past the first 64 are not tried"
            )),
            "{e}"
        );
        entries.remove(0);
        let ann = HashMap::from([(format!("{KEYS_PREFIX}jwe"), entries.join(","))]);
        assert!(unwrap(&ann, &ring, "L").is_ok(), "the 64th is tried");
    }
}

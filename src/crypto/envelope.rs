//! Layer annotations: wrapping private options to recipients, and finding the
//! key that unwraps them.

use std::collections::{BTreeMap, HashMap};

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

/// Unwraps a layer's private options with the first key in `ring` that fits.
/// `layer` names the layer in errors.
pub fn unwrap(
    annotations: &HashMap<String, String>,
    ring: &KeyRing,
    layer: &str,
) -> Result<PrivateOptions, Error> {
    let schemes = schemes(annotations);
    if schemes.is_empty() {
        return Err(Error::Malformed(format!(
            "layer {layer}: encrypted, but has no {KEYS_PREFIX}* annotation"
        )));
    }
    let private: Vec<_> = ring.private.iter().collect();
    let certs: Vec<_> = ring.certs.iter().collect();
    let pgp_keys: Vec<_> = ring.pgp.iter().map(|(k, pw)| (k, pw.as_str())).collect();
    for scheme in &schemes {
        let value = &annotations[&format!("{KEYS_PREFIX}{scheme}")];
        for (i, entry) in value.split(',').filter(|e| !e.is_empty()).enumerate() {
            let raw = B64.decode(entry.trim()).map_err(|e| {
                Error::Malformed(format!(
                    "layer {layer}: {KEYS_PREFIX}{scheme} entry {i} is not base64: {e}"
                ))
            })?;
            let ctx = |e: Error| match e {
                Error::Malformed(m) => Error::Malformed(format!(
                    "layer {layer}: {KEYS_PREFIX}{scheme} entry {i}: {m}"
                )),
                other => other,
            };
            let got = match scheme.as_str() {
                "jwe" => jwe::unwrap(&raw, &private).map_err(ctx)?,
                "pkcs7" => pkcs7::unwrap(&raw, &certs, &private).map_err(ctx)?,
                "pgp" => pgp::unwrap(&raw, &pgp_keys).map_err(ctx)?,
                s => match s.strip_prefix("provider.") {
                    Some(name) if ring.providers.iter().any(|p| p == name) => Some(
                        keyprovider::unwrap(ring.provider_config.as_ref(), name, &raw)?,
                    ),
                    _ => None,
                },
            };
            if let Some(json) = got {
                return PrivateOptions::from_json(&json)
                    .map_err(|e| Error::Malformed(format!("layer {layer}: {e}")));
            }
        }
    }
    Err(Error::MissingKey(if ring.is_empty() {
        format!(
            " (layer {layer} is wrapped with {}; no key was given)",
            schemes.join(", ")
        )
    } else {
        format!(
            " (layer {layer} is wrapped with {}; none of the {} keys given unwraps it)",
            schemes.join(", "),
            ring.len()
        )
    }))
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

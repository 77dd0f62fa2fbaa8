//! The "simple signing" payload a cosign signature signs
//! (containers-signature(5), cosign's SIGNATURE_SPEC):
//!
//! ```json
//! {"critical":{"identity":{"docker-reference":"registry.example/app"},
//!              "image":{"docker-manifest-digest":"sha256:…"},
//!              "type":"cosign container image signature"},
//!  "optional":{"creator":"…","timestamp":1700000000}}
//! ```
//!
//! Parsed as strictly as containers/image does, so a payload podman refuses
//! is refused here too: every `critical` field present exactly once and no
//! other, `optional` present (cosign writes `null` when it has no
//! annotations); inside `optional` only `creator` and `timestamp` are typed.

use std::collections::HashSet;
use std::fmt;
use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};

use crate::oci::digest::{self, Digest};
use crate::oci::policy::key::clip;

/// The only `critical.type` this format defines.
pub const SIGNATURE_TYPE: &str = "cosign container image signature";

/// Payloads larger than this are refused before they are parsed (cosign's
/// are ~250 bytes; a few `-a key=value` annotations add little).
pub const MAX_PAYLOAD: usize = 64 << 10;

/// Why a payload is not one this format accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    #[error("is {0} bytes, more than the {MAX_PAYLOAD} a signature payload may have")]
    TooLarge(usize),
    #[error("is not a simple-signing payload: {0}")]
    Malformed(String),
    #[error("has critical.type {0:?}, not {SIGNATURE_TYPE:?}")]
    WrongType(String),
}

/// A parsed payload. Says nothing about who signed it: only
/// [`super::ClassicSignature::verify`] hands out payloads whose signature
/// verified, as [`super::VerifiedPayload`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload {
    docker_reference: String,
    manifest_digest: Digest,
    creator: Option<String>,
    timestamp: Option<i64>,
}

impl Payload {
    /// Parses payload bytes; refuses oversized ones before looking at them.
    pub fn parse(bytes: &[u8]) -> Result<Self, PayloadError> {
        if bytes.len() > MAX_PAYLOAD {
            return Err(PayloadError::TooLarge(bytes.len()));
        }
        let Obj(raw): Obj<Raw> = serde_json::from_slice(bytes)
            .map_err(|e| PayloadError::Malformed(crate::oci::policy::key::untrusted(e)))?;
        let (critical, optional) = (raw.critical.0, raw.optional);
        if critical.r#type != SIGNATURE_TYPE {
            return Err(PayloadError::WrongType(clip(&critical.r#type).into()));
        }
        let d = &critical.image.0.docker_manifest_digest;
        let manifest_digest = digest::parse(d).map_err(|_| {
            PayloadError::Malformed(format!(
                "critical.image.docker-manifest-digest {:?} is not a sha256 digest",
                clip(d)
            ))
        })?;
        let optional = optional.unwrap_or_default();
        Ok(Payload {
            docker_reference: critical.identity.0.docker_reference,
            manifest_digest,
            creator: optional.creator,
            timestamp: optional.timestamp,
        })
    }

    /// `critical.identity.docker-reference`: the name the signer signed the
    /// image under, for the policy's `signedIdentity`.
    pub fn docker_reference(&self) -> &str {
        &self.docker_reference
    }

    /// `critical.image.docker-manifest-digest`: the manifest signed.
    pub fn manifest_digest(&self) -> &Digest {
        &self.manifest_digest
    }

    /// `optional.creator`, e.g. `containers/image 5.24.0`.
    pub fn creator(&self) -> Option<&str> {
        self.creator.as_deref()
    }

    /// `optional.timestamp`, seconds since the epoch, as the signer claims it.
    pub fn timestamp(&self) -> Option<i64> {
        self.timestamp
    }

    /// Whether this payload signs `manifest_digest`.
    pub fn check(&self, manifest_digest: &Digest) -> Result<(), OtherDigest> {
        if &self.manifest_digest == manifest_digest {
            Ok(())
        } else {
            Err(OtherDigest {
                signed: self.manifest_digest.clone(),
            })
        }
    }
}

/// The payload signs another manifest than the one being verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtherDigest {
    /// The digest the payload signs.
    pub signed: Digest,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    critical: Obj<Critical>,
    // `deserialize_with` makes the field required: a missing `optional` is
    // refused (containers/image), while `null` is cosign's "no annotations".
    #[serde(deserialize_with = "nullable")]
    optional: Option<Optional>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Critical {
    identity: Obj<Identity>,
    image: Obj<Image>,
    r#type: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Identity {
    #[serde(rename = "docker-reference")]
    docker_reference: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Image {
    #[serde(rename = "docker-manifest-digest")]
    docker_manifest_digest: String,
}

/// A struct read from a JSON object only: serde would also take a JSON array
/// of its fields in order, which containers/image refuses.
struct Obj<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Obj<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(ObjVisitor(PhantomData))
    }
}

struct ObjVisitor<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjVisitor<T> {
    type Value = Obj<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Obj<T>, A::Error> {
        T::deserialize(de::value::MapAccessDeserializer::new(map)).map(Obj)
    }
}

fn nullable<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Optional>, D::Error> {
    Option::<Optional>::deserialize(d)
}

/// `optional`: any keys (cosign's `-a` annotations), each at most once.
#[derive(Default)]
struct Optional {
    creator: Option<String>,
    timestamp: Option<i64>,
}

impl<'de> Deserialize<'de> for Optional {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(OptionalVisitor)
    }
}

struct OptionalVisitor;

impl<'de> Visitor<'de> for OptionalVisitor {
    type Value = Optional;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object or null for `optional`")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Optional, A::Error> {
        let mut out = Optional::default();
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key.clone()) {
                return Err(de::Error::custom(format_args!(
                    "duplicate key {:?} in `optional`",
                    clip(&key)
                )));
            }
            match key.as_str() {
                "creator" => out.creator = Some(map.next_value()?),
                "timestamp" => {
                    // Go decodes a JSON number as a float; an integral one
                    // such as 1.7e9 is a valid timestamp there.
                    let n: serde_json::Number = map.next_value()?;
                    let t = n
                        .as_i64()
                        .or_else(|| {
                            n.as_f64()
                                .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
                                .map(|f| f as i64)
                        })
                        .ok_or_else(|| {
                            de::Error::custom("`optional.timestamp` is not an integer")
                        })?;
                    out.timestamp = Some(t);
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn payload(critical_extra: &str, optional: &str) -> String {
        format!(
            r#"{{"critical":{{"identity":{{"docker-reference":"reg.example/app"}},"image":{{"docker-manifest-digest":"{D}"}},"type":"cosign container image signature"{critical_extra}}},"optional":{optional}}}"#
        )
    }

    fn err(s: &str) -> String {
        Payload::parse(s.as_bytes()).unwrap_err().to_string()
    }

    #[test]
    fn parses_cosign_and_skopeo_payloads() {
        // cosign: `optional` is null without annotations.
        let p = Payload::parse(payload("", "null").as_bytes()).unwrap();
        assert_eq!(p.docker_reference(), "reg.example/app");
        assert_eq!(p.manifest_digest().to_string(), D);
        assert_eq!((p.creator(), p.timestamp()), (None, None));
        // skopeo: creator and timestamp; an annotation of any JSON type.
        let p = Payload::parse(
            payload(
                "",
                r#"{"creator":"containers/image 5.24.0","timestamp":1.7e9,"x":[1,{"y":null}]}"#,
            )
            .as_bytes(),
        )
        .unwrap();
        assert_eq!(p.creator(), Some("containers/image 5.24.0"));
        assert_eq!(p.timestamp(), Some(1_700_000_000));
        assert!(p.check(&digest::parse(D).unwrap()).is_ok());
        let other = digest::of(b"other");
        assert_eq!(
            p.check(&other),
            Err(OtherDigest {
                signed: digest::parse(D).unwrap()
            })
        );
    }

    #[test]
    fn refuses_what_containers_image_refuses() {
        assert_eq!(
            err(&payload(r#","extra":1"#, "null")),
            "is not a simple-signing payload: unknown field `extra`, expected one of `identity`, `image`, `type` at line 1 column 221"
        );
        assert_eq!(
            err(&payload("", "null").replace(r#","optional":null"#, "")),
            "is not a simple-signing payload: missing field `optional` at line 1 column 215"
        );
        assert_eq!(
            err(&payload("", r#"{"a":1,"a":2}"#)),
            "is not a simple-signing payload: duplicate key \"a\" in `optional` at line 1 column 236"
        );
        assert_eq!(
            err(&payload("", r#"{"timestamp":1.5}"#)),
            "is not a simple-signing payload: `optional.timestamp` is not an integer at line 1 column 243"
        );
        assert_eq!(
            err(&payload("", r#"{"creator":7}"#)),
            "is not a simple-signing payload: invalid type: integer `7`, expected a string at line 1 column 238"
        );
        assert_eq!(
            err(&format!("{} x", payload("", "null"))),
            "is not a simple-signing payload: trailing characters at line 1 column 233"
        );
        assert_eq!(
            err("[]"),
            "is not a simple-signing payload: invalid type: sequence, expected a JSON object at line 1 column 0"
        );
        assert_eq!(
            err(&payload("", "null").replace(D, "sha512:00")),
            "is not a simple-signing payload: critical.image.docker-manifest-digest \"sha512:00\" is not a sha256 digest"
        );
        assert_eq!(
            err(&payload("", "null").replace("cosign container", "atomic container")),
            "has critical.type \"atomic container image signature\", not \"cosign container image signature\""
        );
        assert_eq!(
            err(&payload("", "null").replace(
                r#"{"docker-reference":"reg.example/app"}"#,
                r#"["reg.example/app"]"#
            )),
            "is not a simple-signing payload: invalid type: sequence, expected a JSON object at line 1 column 24"
        );
        let big = payload("", &format!(r#"{{"x":"{}"}}"#, "a".repeat(MAX_PAYLOAD)));
        assert_eq!(
            err(&big),
            format!(
                "is {} bytes, more than the 65536 a signature payload may have",
                big.len()
            )
        );
    }

    #[test]
    fn duplicate_critical_fields_are_refused() {
        let dup = payload("", "null").replacen(
            r#"{"identity""#,
            r#"{"type":"cosign container image signature","identity""#,
            1,
        );
        assert!(err(&dup).starts_with("is not a simple-signing payload: duplicate field `type`"));
        let dup = format!(r#"{{"optional":null,{}"#, &payload("", "null")[1..]);
        assert!(
            err(&dup).starts_with("is not a simple-signing payload: duplicate field `optional`")
        );
    }

    #[test]
    fn attacker_text_in_messages_is_bounded() {
        let long = "t\n".repeat(1000);
        let e = err(&payload("", "null").replace(SIGNATURE_TYPE, &long.replace('\n', "\\n")));
        assert!(!e.contains('\n'), "{e}");
        assert!(e.len() < 250, "{e}");
    }
}

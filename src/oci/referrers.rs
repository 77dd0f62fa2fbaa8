//! OCI 1.1 referrers: manifests whose `subject` is another manifest
//! (signatures, seek indexes), found through the registry's referrers API
//! or, where it has none (Debian's registry 2.8), under the distribution
//! spec's fallback tag `sha256-<hex>`; attached the same way.

use serde_json::{Value, json};

use super::digest::Digest;
use super::transport::{ImageSource, RawManifest};
use super::{Descriptor, Error, ImageIndex, media};

/// The tag a registry without the referrers API lists `subject`'s
/// referrers under (`sha256-<hex>`).
pub fn referrers_tag(subject: &Digest) -> String {
    format!("{}-{}", subject.algorithm().as_ref(), subject.digest())
}

/// The referrers of `subject` whose `artifactType` is `artifact_type`, in
/// listing order: from the referrers API where the source has one, else
/// from the fallback tag (none if it is missing).
pub fn list(
    source: &dyn ImageSource,
    subject: &Digest,
    artifact_type: &str,
) -> Result<Vec<Descriptor>, Error> {
    let raw = match source.referrers(subject)? {
        Some(raw) => raw,
        None => match source.tagged(&referrers_tag(subject)) {
            Ok(raw) => raw,
            Err(Error::NotFound(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        },
    };
    let what = format!("referrers of {subject}");
    if !media::is_index(&raw.media_type) {
        return Err(Error::Malformed(format!("{what}: not an image index")));
    }
    let index: ImageIndex = serde_json::from_slice(&raw.bytes).map_err(|e| {
        Error::Malformed(format!(
            "{what}: not an image index: {}",
            super::policy::key::untrusted(e)
        ))
    })?;
    Ok(index
        .manifests()
        .iter()
        .filter(|d| {
            d.artifact_type()
                .as_ref()
                .is_some_and(|t| t.to_string() == artifact_type)
        })
        .cloned()
        .collect())
}

/// The fallback index `current` (`None`: there is none yet) with the
/// artifact manifest `m` listed, or `None` if it already is. Entries others
/// wrote are kept as they are.
pub fn with_referrer(
    current: Option<&RawManifest>,
    m: &RawManifest,
    artifact_type: &str,
    annotations: Option<&Value>,
) -> Result<Option<RawManifest>, Error> {
    let mut index = match current {
        None => json!({
            "schemaVersion": 2,
            "mediaType": media::OCI_INDEX,
            "manifests": [],
        }),
        Some(raw) => {
            if !media::is_index(&raw.media_type) {
                return Err(Error::Malformed(format!(
                    "the referrers tag holds a {:?}, not an image index; nothing was overwritten",
                    super::policy::key::clip(&raw.media_type)
                )));
            }
            serde_json::from_slice::<Value>(&raw.bytes)
                .ok()
                .filter(|v| v["manifests"].is_array())
                .ok_or_else(|| {
                    Error::Malformed(
                        "the referrers tag holds no image index; nothing was overwritten".into(),
                    )
                })?
        }
    };
    let digest = m.digest.to_string();
    let listed = index["manifests"].as_array_mut().expect("checked above");
    if listed.iter().any(|e| e["digest"].as_str() == Some(&digest)) {
        return Ok(None);
    }
    let mut entry = json!({
        "mediaType": m.media_type,
        "digest": digest,
        "size": m.bytes.len(),
        "artifactType": artifact_type,
    });
    if let Some(a) = annotations {
        entry["annotations"] = a.clone();
    }
    listed.push(entry);
    let bytes = serde_json::to_vec(&index).expect("json");
    Ok(Some(RawManifest {
        media_type: media::OCI_INDEX.to_string(),
        digest: super::digest::of(&bytes),
        bytes,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn artifact() -> RawManifest {
        let bytes = br#"{"schemaVersion":2}"#.to_vec();
        RawManifest {
            media_type: media::OCI_MANIFEST.to_string(),
            digest: super::super::digest::of(&bytes),
            bytes,
        }
    }

    #[test]
    fn the_fallback_index_gains_the_artifact_once_and_keeps_others() {
        let m = artifact();
        let first = with_referrer(None, &m, "application/x-a", None)
            .unwrap()
            .unwrap();
        assert!(
            with_referrer(Some(&first), &m, "application/x-a", None)
                .unwrap()
                .is_none()
        );
        let mut other: Value = serde_json::from_slice(&first.bytes).unwrap();
        other["manifests"][0]["digest"] = json!(format!("sha256:{}", "1".repeat(64)));
        other["manifests"][0]["x-kept"] = json!(true);
        let bytes = serde_json::to_vec(&other).unwrap();
        let other = RawManifest {
            media_type: media::OCI_INDEX.into(),
            digest: super::super::digest::of(&bytes),
            bytes,
        };
        let both = with_referrer(Some(&other), &m, "application/x-a", None)
            .unwrap()
            .unwrap();
        let v: Value = serde_json::from_slice(&both.bytes).unwrap();
        assert_eq!(v["manifests"].as_array().unwrap().len(), 2);
        assert_eq!(v["manifests"][0]["x-kept"], json!(true));
        let not_index = RawManifest {
            media_type: media::OCI_MANIFEST.into(),
            ..m.clone()
        };
        let e = with_referrer(Some(&not_index), &m, "application/x-a", None).unwrap_err();
        assert!(e.to_string().contains("nothing was overwritten"), "{e}");
    }
}

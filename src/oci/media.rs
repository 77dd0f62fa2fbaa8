//! Media types: OCI and Docker layers, manifests, and their `+encrypted` forms.

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

const ENCRYPTED: &str = "+encrypted";

/// Is this a single-image manifest type?
pub fn is_manifest(mt: &str) -> bool {
    mt == OCI_MANIFEST || mt == DOCKER_MANIFEST
}

/// Is this a multi-platform index type?
pub fn is_index(mt: &str) -> bool {
    mt == OCI_INDEX || mt == DOCKER_LIST
}

/// Is this an ocicrypt-encrypted layer?
pub fn is_encrypted(mt: &str) -> bool {
    mt.ends_with(ENCRYPTED)
}

/// Is this a layer type ocicrypt will encrypt (OCI or Docker tar, any compression)?
pub fn is_layer(mt: &str) -> bool {
    to_oci_layer(mt.trim_end_matches(ENCRYPTED)).is_some()
}

/// The OCI layer type for an OCI or Docker layer type (unencrypted).
pub fn to_oci_layer(mt: &str) -> Option<String> {
    const OCI_PREFIXES: [&str; 2] = [
        "application/vnd.oci.image.layer.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
    ];
    if OCI_PREFIXES
        .iter()
        .any(|p| mt == *p || mt.strip_prefix(p).is_some_and(|s| s.starts_with('+')))
    {
        return Some(mt.to_string());
    }
    Some(
        match mt {
            "application/vnd.docker.image.rootfs.diff.tar.gzip" => OCI_LAYER_GZIP,
            "application/vnd.docker.image.rootfs.diff.tar" => OCI_LAYER,
            "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => {
                "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            }
            "application/vnd.docker.image.rootfs.foreign.diff.tar" => {
                "application/vnd.oci.image.layer.nondistributable.v1.tar"
            }
            _ => return None,
        }
        .to_string(),
    )
}

/// The media type of a layer once encrypted (Docker types map to OCI ones).
pub fn encrypted(mt: &str) -> Option<String> {
    if is_encrypted(mt) {
        return Some(mt.to_string());
    }
    to_oci_layer(mt).map(|m| m + ENCRYPTED)
}

/// The media type of an encrypted layer once decrypted.
pub fn decrypted(mt: &str) -> String {
    mt.strip_suffix(ENCRYPTED).unwrap_or(mt).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encrypted_types() {
        assert_eq!(
            encrypted(OCI_LAYER_GZIP).unwrap(),
            "application/vnd.oci.image.layer.v1.tar+gzip+encrypted"
        );
        assert_eq!(
            encrypted("application/vnd.docker.image.rootfs.diff.tar.gzip").unwrap(),
            "application/vnd.oci.image.layer.v1.tar+gzip+encrypted"
        );
        assert_eq!(
            encrypted("application/vnd.oci.image.layer.v1.tar+zstd").unwrap(),
            "application/vnd.oci.image.layer.v1.tar+zstd+encrypted"
        );
        assert!(encrypted(OCI_CONFIG).is_none());
        assert!(encrypted("application/vnd.oci.image.layer.v1.tarball").is_none());
        assert_eq!(
            decrypted("application/vnd.oci.image.layer.v1.tar+encrypted"),
            OCI_LAYER
        );
        assert!(is_layer(
            "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip+encrypted"
        ));
    }
}

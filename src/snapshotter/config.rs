//! `lazycrypt serve`'s configuration file (TOML, `/etc/lazycrypt/config.toml`
//! by default). Every field is optional; command-line flags override it.
//! `contrib/config.toml` documents each field.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The file's fields, as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub root: Option<PathBuf>,
    pub address: Option<PathBuf>,
    pub keys_dir: Option<PathBuf>,
    /// Accept private key files readable by their group or others.
    pub allow_readable_keys: Option<bool>,
    #[serde(default)]
    pub plain_http: Vec<String>,
    /// containerd's registry hosts directory (`hosts.toml` per registry).
    pub hosts_dir: Option<PathBuf>,
    /// Size with a K/M/G suffix, e.g. "256M".
    pub cache_size: Option<String>,
    /// Disk the sealed copies of zstd layers may take together (`16G`).
    pub sealed_size: Option<String>,
    /// The kernel's read-ahead per layer mount, e.g. "4M" or "128K".
    pub read_ahead: Option<String>,
    /// "tmpfs" or "disk".
    pub upper: Option<String>,
    pub upper_size: Option<String>,
    pub allow_unverified_lazy: Option<bool>,
    /// Serve layers through seek indexes published beside images (default
    /// true).
    pub seek_index: Option<bool>,
    /// Prometheus metrics address, e.g. "127.0.0.1:9187".
    pub metrics: Option<std::net::SocketAddr>,
    /// Blob bytes a second a background diff-ID check may read, e.g. "32M";
    /// "0" for no limit.
    pub diff_id_rate: Option<String>,
    /// Seconds after a layer's mount before its diff ID is checked.
    pub diff_id_delay: Option<u64>,
    /// Seconds one keyprovider request may take (1 to 86400).
    pub keyprovider_timeout: Option<u64>,
    /// Seconds a registry request with an answer of bounded size may take,
    /// retries included; a file read waiting on the registry fails with
    /// EIO after this long.
    pub registry_timeout: Option<u64>,
    /// Seconds a registry may stay silent in the middle of a request.
    pub registry_read_timeout: Option<u64>,
    /// Seconds connecting to a registry may take, TLS included.
    pub registry_connect_timeout: Option<u64>,
    /// containers-policy.json(5) file every image's signatures must satisfy
    /// (e.g. "/etc/containers/policy.json"); unset: any image.
    pub policy: Option<PathBuf>,
    /// Listen as a CRI image service in front of containerd, keeping the
    /// credentials of pulled images in memory for their lazy layers.
    pub cri_keychain: Option<CriKeychain>,
}

/// `cri_keychain = { listen = "…", upstream = "…" }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CriKeychain {
    /// The socket the kubelet's `--image-service-endpoint` names.
    pub listen: PathBuf,
    /// containerd's socket, where every call goes on to.
    pub upstream: PathBuf,
    /// Seconds a pull's credentials are kept for new layer mounts
    /// (default 3600).
    pub ttl: Option<u64>,
}

impl CriKeychain {
    /// Rejects settings under which the keychain would take over (and
    /// unlink) another socket, or keep nothing: the error says which.
    /// `address` is serve's snapshots socket.
    pub fn check(&self, address: Option<&Path>) -> Result<(), String> {
        let listen = self.listen.display();
        if self.listen == self.upstream {
            return Err(format!(
                "cri_keychain: listen {listen} is also upstream (containerd's socket)"
            ));
        }
        if address == Some(self.listen.as_path()) {
            return Err(format!(
                "cri_keychain: listen {listen} is also address (the snapshotter's socket)"
            ));
        }
        if self.ttl == Some(0) {
            return Err("cri_keychain: ttl must be at least 1 (seconds)".into());
        }
        Ok(())
    }
}

impl FileConfig {
    /// Reads `path`; a missing file is an empty configuration unless
    /// `required`.
    pub fn load(path: &Path, required: bool) -> Result<FileConfig, String> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                return Ok(FileConfig::default());
            }
            Err(e) => return Err(format!("config {}: {e}", path.display())),
        };
        let cfg: FileConfig = toml::from_str(&text)
            .map_err(|e| format!("config {}: {}", path.display(), e.message()))?;
        if let Some(u) = &cfg.upper
            && u != "tmpfs"
            && u != "disk"
        {
            return Err(format!(
                "config {}: upper must be \"tmpfs\" or \"disk\", not {u:?}",
                path.display()
            ));
        }
        if let Some(k) = &cfg.cri_keychain {
            k.check(cfg.address.as_deref())
                .map_err(|e| format!("config {}: {e}", path.display()))?;
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_fields_and_names_the_file_in_errors() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c.toml");
        std::fs::write(&p, "root = \"/x\"\nplain_http = [\"127.0.0.1:5000\"]\ncache_size = \"64M\"\nupper = \"disk\"\n").unwrap();
        let c = FileConfig::load(&p, true).unwrap();
        assert_eq!(c.root.as_deref(), Some(Path::new("/x")));
        assert_eq!(c.plain_http, ["127.0.0.1:5000"]);
        assert_eq!(c.upper.as_deref(), Some("disk"));
        std::fs::write(&p, "rooot = \"/x\"\n").unwrap();
        let e = FileConfig::load(&p, true).unwrap_err();
        assert!(
            e.starts_with(&format!("config {}: unknown field `rooot`", p.display())),
            "{e}"
        );
        std::fs::write(&p, "upper = \"ram\"\n").unwrap();
        assert!(
            FileConfig::load(&p, true)
                .unwrap_err()
                .contains("upper must be")
        );
        std::fs::write(&p, "allow_readable_keys = true\n").unwrap();
        assert_eq!(
            FileConfig::load(&p, true).unwrap().allow_readable_keys,
            Some(true)
        );
        std::fs::write(
            &p,
            "keyprovider_timeout = 5\nregistry_timeout = 5\nregistry_read_timeout = 2\n",
        )
        .unwrap();
        let c = FileConfig::load(&p, true).unwrap();
        assert_eq!(
            (
                c.keyprovider_timeout,
                c.registry_timeout,
                c.registry_read_timeout
            ),
            (Some(5), Some(5), Some(2))
        );
        std::fs::write(
            &p,
            "cri_keychain = { listen = \"/run/l/cri.sock\", upstream = \"/run/c.sock\" }\n",
        )
        .unwrap();
        let k = FileConfig::load(&p, true).unwrap().cri_keychain.unwrap();
        assert_eq!(
            (k.listen.as_path(), k.upstream.as_path(), k.ttl),
            (Path::new("/run/l/cri.sock"), Path::new("/run/c.sock"), None)
        );
        std::fs::write(&p, "cri_keychain = { listen = \"/x\" }\n").unwrap();
        let e = FileConfig::load(&p, true).unwrap_err();
        assert!(e.contains("missing field `upstream`"), "{e}");
        assert!(FileConfig::load(&d.path().join("none"), false).is_ok());
        assert!(FileConfig::load(&d.path().join("none"), true).is_err());
    }

    #[test]
    fn rejects_a_keychain_that_would_take_another_socket_or_keep_nothing() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c.toml");
        for (text, why) in [
            (
                "cri_keychain = { listen = \"/run/c.sock\", upstream = \"/run/c.sock\" }\n",
                "cri_keychain: listen /run/c.sock is also upstream (containerd's socket)",
            ),
            (
                "address = \"/run/l.sock\"\ncri_keychain = { listen = \"/run/l.sock\", upstream = \"/run/c.sock\" }\n",
                "cri_keychain: listen /run/l.sock is also address (the snapshotter's socket)",
            ),
            (
                "cri_keychain = { listen = \"/run/k.sock\", upstream = \"/run/c.sock\", ttl = 0 }\n",
                "cri_keychain: ttl must be at least 1 (seconds)",
            ),
        ] {
            std::fs::write(&p, text).unwrap();
            let e = FileConfig::load(&p, true).unwrap_err();
            assert_eq!(e, format!("config {}: {why}", p.display()));
        }
        let k = CriKeychain {
            listen: "/run/k.sock".into(),
            upstream: "/run/c.sock".into(),
            ttl: Some(1),
        };
        assert!(k.check(Some(Path::new("/run/l.sock"))).is_ok());
        assert!(k.check(Some(Path::new("/run/k.sock"))).is_err());
    }
}

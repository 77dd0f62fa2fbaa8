//! Registry mirrors from containerd's `hosts.toml` (`certs.d`) layout, so
//! lazycrypt fetches from the same mirrors or P2P distributors (Dragonfly,
//! Spegel) that containerd uses: `<dir>/<host>/hosts.toml`, else
//! `<dir>/_default/hosts.toml`. Each `[host."URL"]` is tried in file order
//! for the capabilities it lists, then `server` (default `https://<host>`).

use std::path::Path;

use serde::Deserialize;

/// One place to fetch from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `scheme://host[:port]`.
    pub base: String,
    /// May serve blobs and manifests by digest.
    pub pull: bool,
    /// May resolve tags.
    pub resolve: bool,
}

#[derive(Deserialize)]
struct HostsFile {
    server: Option<String>,
    #[serde(default)]
    host: toml::Table,
}

/// The endpoints for registry `host`, in the order to try them; empty when
/// no hosts.toml applies.
pub fn endpoints(dir: &Path, host: &str) -> Result<Vec<Endpoint>, String> {
    let file = [host, "_default"]
        .iter()
        .map(|h| dir.join(h).join("hosts.toml"))
        .find(|p| p.is_file());
    let Some(path) = file else {
        return Ok(Vec::new());
    };
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let parsed: HostsFile =
        toml::from_str(&text).map_err(|e| format!("{}: {}", path.display(), e.message()))?;
    let mut out = Vec::new();
    for (url, v) in &parsed.host {
        let caps: Vec<String> = match v.get("capabilities") {
            Some(toml::Value::Array(a)) => a
                .iter()
                .filter_map(|c| c.as_str().map(String::from))
                .collect(),
            Some(_) => {
                return Err(format!(
                    "{}: {url}: capabilities must be a list",
                    path.display()
                ));
            }
            None => vec!["pull".into(), "resolve".into()],
        };
        out.push(Endpoint {
            base: base_of(url, &path)?,
            pull: caps.iter().any(|c| c == "pull"),
            resolve: caps.iter().any(|c| c == "resolve"),
        });
    }
    let server = parsed.server.unwrap_or_else(|| format!("https://{host}"));
    out.push(Endpoint {
        base: base_of(&server, &path)?,
        pull: true,
        resolve: true,
    });
    Ok(out)
}

/// `scheme://host[:port]` of a URL (a `/v2` or other path is dropped).
fn base_of(url: &str, file: &Path) -> Result<String, String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| format!("{}: {url}: not a URL", file.display()))?;
    if scheme != "http" && scheme != "https" {
        return Err(format!("{}: {url}: only http and https", file.display()));
    }
    let host = rest.split('/').next().unwrap_or_default();
    if host.is_empty() {
        return Err(format!("{}: {url}: no host", file.display()));
    }
    Ok(format!("{scheme}://{host}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirrors_come_in_file_order_then_the_server() {
        let d = tempfile::tempdir().unwrap();
        let h = d.path().join("registry.example.com");
        std::fs::create_dir_all(&h).unwrap();
        std::fs::write(
            h.join("hosts.toml"),
            "server = \"https://registry.example.com\"\n\
             [host.\"http://127.0.0.1:65001\"]\n  capabilities = [\"pull\", \"resolve\"]\n\
             [host.\"https://mirror.example.com/v2/x\"]\n  capabilities = [\"pull\"]\n",
        )
        .unwrap();
        let e = endpoints(d.path(), "registry.example.com").unwrap();
        let bases: Vec<_> = e.iter().map(|e| e.base.as_str()).collect();
        assert_eq!(
            bases,
            [
                "http://127.0.0.1:65001",
                "https://mirror.example.com",
                "https://registry.example.com"
            ]
        );
        assert!(e[1].pull && !e[1].resolve);
        assert!(endpoints(d.path(), "other.example.com").unwrap().is_empty());
        std::fs::write(h.join("hosts.toml"), "[host.\"ftp://x\"]\n").unwrap();
        let err = endpoints(d.path(), "registry.example.com").unwrap_err();
        assert!(err.contains("only http and https"), "{err}");
    }
}

//! Registry mirrors from containerd's `hosts.toml` (`certs.d`) layout, so
//! lazycrypt fetches from the same mirrors or P2P distributors (Dragonfly,
//! Spegel) that containerd uses: `<dir>/<host>/hosts.toml`, else
//! `<dir>/_default/hosts.toml`. Each `[host."URL"]` is tried in file order
//! for the capabilities it lists, then `server` (default `https://<host>`).
//!
//! A `[host."URL".header]` table (or a top-level `[header]` for `server`)
//! gives that endpoint headers of its own, `Authorization` among them: that
//! is how a mirror gets credentials other than an auth-file entry for its
//! own host; it never gets its registry's (see [`super::auth`]).

use std::path::Path;

use serde::Deserialize;

use super::auth::Header;

/// One place to fetch from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `scheme://host[:port]`.
    pub base: String,
    /// May serve blobs and manifests by digest.
    pub pull: bool,
    /// May resolve tags.
    pub resolve: bool,
    /// Headers sent with every request to this endpoint (and only to it).
    pub headers: Vec<Header>,
}

#[derive(Deserialize)]
struct HostsFile {
    server: Option<String>,
    #[serde(default)]
    header: toml::Table,
    #[serde(default)]
    host: toml::Table,
}

/// The endpoints for registry `host`, in the order to try them; empty when
/// no hosts.toml applies.
pub fn endpoints(dir: &Path, host: &str) -> Result<Vec<Endpoint>, String> {
    // The host comes from an image reference: it must not climb out of `dir`.
    if !super::reference::valid_host(host) {
        return Err(format!(
            "registry host {host:?} cannot name a directory in {}",
            dir.display()
        ));
    }
    let file = [host, "_default"]
        .iter()
        .map(|h| dir.join(h).join("hosts.toml"))
        .find(|p| p.is_file());
    let Some(path) = file else {
        return Ok(Vec::new());
    };
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse(&text, host, &path)
}

/// The endpoints a `hosts.toml` of registry `host` gives, read from `text`;
/// `path` names the file in errors.
pub fn parse(text: &str, host: &str, path: &Path) -> Result<Vec<Endpoint>, String> {
    let parsed: HostsFile =
        toml::from_str(text).map_err(|e| format!("{}: {}", path.display(), e.message()))?;
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
        let headers = match v.get("header") {
            Some(toml::Value::Table(t)) => {
                headers(t).map_err(|e| format!("{}: {url}: {e}", path.display()))?
            }
            Some(_) => return Err(format!("{}: {url}: header must be a table", path.display())),
            None => Vec::new(),
        };
        out.push(Endpoint {
            base: base_of(url, path)?,
            pull: caps.iter().any(|c| c == "pull"),
            resolve: caps.iter().any(|c| c == "resolve"),
            headers,
        });
    }
    let server = parsed.server.unwrap_or_else(|| format!("https://{host}"));
    out.push(Endpoint {
        base: base_of(&server, path)?,
        pull: true,
        resolve: true,
        headers: headers(&parsed.header).map_err(|e| format!("{}: {e}", path.display()))?,
    });
    Ok(out)
}

/// `name = "value"` or `name = ["value", …]`, as containerd reads them.
fn headers(t: &toml::Table) -> Result<Vec<Header>, String> {
    let mut out = Vec::new();
    for (name, v) in t {
        let values: Vec<&toml::Value> = match v {
            toml::Value::Array(a) => a.iter().collect(),
            v => vec![v],
        };
        for v in values {
            let v = v
                .as_str()
                .ok_or_else(|| format!("header {name}: values must be strings"))?;
            out.push(Header::new(name, v.to_string())?);
        }
    }
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

    #[test]
    fn endpoints_carry_their_own_headers() {
        let d = tempfile::tempdir().unwrap();
        let h = d.path().join("reg.example");
        std::fs::create_dir_all(&h).unwrap();
        std::fs::write(
            h.join("hosts.toml"),
            "[header]\n  x-server = \"s\"\n\
             [host.\"https://mirror.example\"]\n\
             [host.\"https://mirror.example\".header]\n  Authorization = \"Basic bTpt\"\n  x-two = [\"a\", \"b\"]\n\
             [host.\"https://plain.example\"]\n",
        )
        .unwrap();
        let e = endpoints(d.path(), "reg.example").unwrap();
        let names = |i: usize| -> Vec<(String, String)> {
            e[i].headers
                .iter()
                .map(|h| (h.name.clone(), h.value.expose().to_string()))
                .collect()
        };
        let pair = |n: &str, v: &str| (n.to_string(), v.to_string());
        assert_eq!(
            names(0),
            [
                pair("Authorization", "Basic bTpt"),
                pair("x-two", "a"),
                pair("x-two", "b")
            ]
        );
        assert!(names(1).is_empty());
        assert_eq!(names(2), [pair("x-server", "s")]);

        std::fs::write(
            h.join("hosts.toml"),
            "[host.\"https://m.example\".header]\n  Authorization = \"Basic s3cret\\n\"\n",
        )
        .unwrap();
        let err = endpoints(d.path(), "reg.example").unwrap_err();
        assert!(err.contains("header Authorization: invalid value"), "{err}");
        assert!(!err.contains("s3cret"), "{err}");
    }

    #[test]
    fn a_reference_host_cannot_leave_the_hosts_dir() {
        let d = tempfile::tempdir().unwrap();
        let certs = d.path().join("certs.d");
        std::fs::create_dir_all(certs.join("a")).unwrap();
        // A hosts.toml the traversals below would reach.
        let mirror = "[host.\"http://127.0.0.1:1\"]\n";
        std::fs::write(d.path().join("hosts.toml"), mirror).unwrap();
        std::fs::create_dir_all(certs.join("a/b")).unwrap();
        std::fs::write(certs.join("a/b/hosts.toml"), mirror).unwrap();
        for host in ["..", "a/b", "../certs.d/a/b", "a\\b", ".", ""] {
            let err = endpoints(&certs, host).unwrap_err();
            assert!(err.contains("cannot name a directory"), "{host}: {err}");
        }
    }
}

//! Image references in skopeo's transport syntax.

use std::fmt;
use std::path::PathBuf;

use super::Error;

/// Where an image lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageRef {
    /// `oci:DIR[:TAG]`: an OCI image layout directory.
    Layout { dir: PathBuf, tag: Option<String> },
    /// `docker://HOST/REPO[:TAG|@DIGEST]`: an OCI distribution registry.
    Registry(RegistryRef),
}

/// A repository on a registry, and a tag or digest in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryRef {
    /// `host[:port]`, as in URLs (`docker.io` means Docker Hub).
    pub host: String,
    pub repo: String,
    /// A tag or a `sha256:` digest.
    pub reference: String,
}

impl RegistryRef {
    /// The API endpoint host (Docker Hub's differs from its name).
    pub fn api_host(&self) -> &str {
        if self.host == "docker.io" {
            "registry-1.docker.io"
        } else {
            &self.host
        }
    }

    /// Is the reference a digest rather than a tag?
    pub fn is_digest(&self) -> bool {
        self.reference.starts_with("sha256:")
    }

    /// Parses the part after `docker://`.
    pub fn parse(s: &str) -> Result<Self, Error> {
        let bad = |why: &str| Error::BadReference(format!("docker://{s}: {why}"));
        if s.is_empty() {
            return Err(bad("empty reference"));
        }
        // A ':' after the last '/' starts a tag; one before it is a port.
        let tag_colon = |s: &str| {
            let slash = s.rfind('/').map(|i| i + 1).unwrap_or(0);
            s[slash..].rfind(':').map(|i| slash + i)
        };
        let (name, reference) = match s.split_once('@') {
            Some((n, d)) => {
                super::digest::parse(d).map_err(|_| bad("invalid digest after '@'"))?;
                // `name:tag@digest`, as containerd reads it: the digest
                // alone says what is pulled.
                let name = match tag_colon(n) {
                    Some(colon) if valid_tag(&n[colon + 1..]) => &n[..colon],
                    Some(_) => return Err(bad("invalid tag")),
                    None => n,
                };
                (name, d.to_string())
            }
            None => match tag_colon(s) {
                Some(colon) => (&s[..colon], s[colon + 1..].to_string()),
                None => (s, "latest".to_string()),
            },
        };
        // Docker Hub's names as containerd normalizes them: `nginx` and
        // `docker.io/nginx` are `docker.io/library/nginx`, and
        // `index.docker.io` is `docker.io`.
        let (host, repo) = match name.split_once('/') {
            Some((h, r)) if h.contains('.') || h.contains(':') || h == "localhost" => {
                (h.to_string(), r.to_string())
            }
            _ => ("docker.io".to_string(), name.to_string()),
        };
        let host = if host == "index.docker.io" {
            "docker.io".to_string()
        } else {
            host
        };
        let repo = if host == "docker.io" && !repo.contains('/') {
            format!("library/{repo}")
        } else {
            repo
        };
        if !valid_host(&host) {
            return Err(bad(
                "invalid registry host (want a DNS name, IPv4 or [IPv6] address, and an optional :port)",
            ));
        }
        let repo_ok = !repo.is_empty()
            && repo.split('/').all(|c| {
                !c.is_empty()
                    && c.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)
                    })
            });
        if !repo_ok {
            return Err(bad(
                "repository names are lowercase letters, digits, '.', '_', '-' and '/'",
            ));
        }
        if !(reference.starts_with("sha256:") || valid_tag(&reference)) {
            return Err(bad("invalid tag"));
        }
        Ok(RegistryRef {
            host,
            repo,
            reference,
        })
    }
}

pub(crate) fn valid_tag(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 128
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// Is `h` a registry `host[:port]`: dot-separated DNS labels (or an IPv4
/// address) or a bracketed IPv6 address, and an optional port? Such a host
/// is one plain path component, so it can name a `hosts.toml` directory
/// (no `..`, no separators).
pub fn valid_host(h: &str) -> bool {
    let (name, port) = match h.rsplit_once(':') {
        Some((n, p)) if !n.starts_with('[') || n.ends_with(']') => (n, Some(p)),
        _ => (h, None),
    };
    let port_ok = port.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 5
            && p.bytes().all(|b| b.is_ascii_digit())
            && p.parse::<u16>().is_ok()
    });
    let name_ok = if let Some(v6) = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
        v6.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        !name.is_empty()
            && name.len() <= 253
            && name.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && !l.starts_with('-')
                    && !l.ends_with('-')
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            })
    };
    port_ok && name_ok
}

impl ImageRef {
    /// Parses `oci:DIR[:TAG]` or `docker://…`.
    pub fn parse(s: &str) -> Result<Self, Error> {
        if let Some(rest) = s.strip_prefix("docker://") {
            return Ok(ImageRef::Registry(RegistryRef::parse(rest)?));
        }
        if let Some(rest) = s.strip_prefix("oci:") {
            if rest.is_empty() {
                return Err(Error::BadReference(format!("{s}: missing directory")));
            }
            let (dir, tag) = match rest.rsplit_once(':') {
                Some((d, t)) if !t.contains('/') && !d.is_empty() => (d, Some(t.to_string())),
                _ => (rest, None),
            };
            if tag.as_deref() == Some("") {
                return Err(Error::BadReference(format!("{s}: empty tag")));
            }
            return Ok(ImageRef::Layout {
                dir: PathBuf::from(dir),
                tag,
            });
        }
        Err(Error::BadReference(format!(
            "{s}: unknown transport (use oci:DIR[:TAG] or docker://HOST/REPO[:TAG|@DIGEST])"
        )))
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageRef::Layout { dir, tag: Some(t) } => write!(f, "oci:{}:{t}", dir.display()),
            ImageRef::Layout { dir, tag: None } => write!(f, "oci:{}", dir.display()),
            ImageRef::Registry(r) => write!(f, "{r}"),
        }
    }
}

impl fmt::Display for RegistryRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sep = if self.is_digest() { '@' } else { ':' };
        write!(
            f,
            "docker://{}/{}{sep}{}",
            self.host, self.repo, self.reference
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(s: &str) -> RegistryRef {
        match ImageRef::parse(s).unwrap() {
            ImageRef::Registry(r) => r,
            _ => panic!(),
        }
    }

    #[test]
    fn parses_skopeo_syntax() {
        let r = reg("docker://127.0.0.1:5000/a/b:v1");
        assert_eq!(
            (r.host.as_str(), r.repo.as_str(), r.reference.as_str()),
            ("127.0.0.1:5000", "a/b", "v1")
        );
        let r = reg("docker://127.0.0.1:5000/app");
        assert_eq!(r.reference, "latest");
        assert_eq!(reg("docker://busybox").repo, "library/busybox");
        let d = format!("sha256:{}", "a".repeat(64));
        let r = reg(&format!("docker://localhost/x@{d}"));
        assert!(r.is_digest());
        assert_eq!(r.to_string(), format!("docker://localhost/x@{d}"));
        assert_eq!(
            ImageRef::parse("oci:/tmp/x:v2").unwrap(),
            ImageRef::Layout {
                dir: "/tmp/x".into(),
                tag: Some("v2".into())
            }
        );
        assert_eq!(
            ImageRef::parse("oci:rel/dir").unwrap(),
            ImageRef::Layout {
                dir: "rel/dir".into(),
                tag: None
            }
        );
    }

    #[test]
    fn normalizes_names_as_containerd_does() {
        let d = format!("sha256:{}", "b".repeat(64));
        for (written, normalized) in [
            ("nginx", "docker://docker.io/library/nginx:latest"),
            ("docker.io/nginx", "docker://docker.io/library/nginx:latest"),
            (
                "docker.io/library/nginx:1",
                "docker://docker.io/library/nginx:1",
            ),
            ("index.docker.io/x/y", "docker://docker.io/x/y:latest"),
            (
                "index.docker.io/nginx",
                "docker://docker.io/library/nginx:latest",
            ),
            (
                "registry-1.docker.io/x/y",
                "docker://registry-1.docker.io/x/y:latest",
            ),
            (
                &format!("reg:5000/x:v1@{d}"),
                &format!("docker://reg:5000/x@{d}"),
            ),
            (
                &format!("reg:5000/x@{d}"),
                &format!("docker://reg:5000/x@{d}"),
            ),
            ("reg.example:443/x", "docker://reg.example:443/x:latest"),
        ] {
            assert_eq!(
                RegistryRef::parse(written).unwrap().to_string(),
                normalized,
                "{written}"
            );
        }
        assert!(RegistryRef::parse(&format!("reg:5000/x:b@d@{d}")).is_err());
        assert!(RegistryRef::parse(&format!("reg:5000/x:@{d}")).is_err());
    }

    #[test]
    fn hosts_are_single_path_components() {
        for h in [
            "localhost",
            "127.0.0.1:5000",
            "reg.example.com",
            "[::1]:5000",
            "[fe80::1]",
            "a-b.io",
        ] {
            assert!(valid_host(h), "{h}");
        }
        for h in [
            "", "..", ".", "a/b", "a\\b", "../x", "a..b", "-a.io", "a.io:", "[::1", "::1",
            "a.io:x", "%2e%2e",
        ] {
            assert!(!valid_host(h), "{h}");
        }
    }

    #[test]
    fn rejects_bad_references() {
        for s in [
            "x",
            "oci:",
            "docker://",
            "docker://h.io/UPPER",
            "docker://h.io/a@sha256:12",
            "docker://h.io/a:b@c",
            "docker://../a",
            "docker://a..b/x",
            "docker://.hidden/x",
            "docker://h.io:/x",
            "docker://h.io:99999/x",
            "docker://h.io:5000:1/x",
            "docker://[zz]/x",
            "docker://bad_host.io/x",
        ] {
            assert!(ImageRef::parse(s).is_err(), "{s}");
        }
    }
}

//! Which credentials go where, after containerd's rules:
//!
//! - Credentials are looked up for the host a request goes to. A mirror
//!   gets none of its registry's: only an auth-file entry naming the
//!   mirror's own `host[:port]`, or `header`s that `hosts.toml` gives it
//!   (see [`super::hosts`]). `--creds` names the registry's own host only.
//! - `Authorization` (and a `hosts.toml` endpoint's headers) go only to the
//!   origin (scheme, host, port) they were meant for, never to a redirect or
//!   an upload location elsewhere (blob redirects commonly point at storage
//!   on another host).
//! - Basic credentials go to a token realm only over TLS, or to a plain-HTTP
//!   realm on the very host of an endpoint the operator made plain HTTP
//!   (`--plain-http`, `plain_http`, or an `http://` URL in `hosts.toml`).
//!   Any other realm is asked for an anonymous token instead.

use std::fmt;
use std::path::PathBuf;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use zeroize::Zeroizing;

use super::reference::RegistryRef;

/// A credential or header value: zeroized on drop, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Zeroizing<String>);

impl Secret {
    pub fn new(s: String) -> Self {
        Secret(Zeroizing::new(s))
    }

    /// The value, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(…)")
    }
}

/// A header an endpoint's requests carry (from `hosts.toml`); it may hold a
/// credential, so its value is a [`Secret`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    pub value: Secret,
}

impl Header {
    /// A header whose name and value are valid in HTTP; the error names the
    /// header, never its value.
    pub fn new(name: &str, value: String) -> Result<Self, String> {
        ureq::http::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("header {name:?}: invalid name"))?;
        ureq::http::HeaderValue::from_str(&value)
            .map_err(|_| format!("header {name}: invalid value"))?;
        Ok(Header {
            name: name.to_string(),
            value: Secret::new(value),
        })
    }
}

/// Where a URL points: scheme, host and port. Credentials are bound to one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    scheme: String,
    host: String,
    port: u16,
}

impl Origin {
    /// The origin of an absolute `http`/`https` URL.
    pub fn of(url: &str) -> Option<Origin> {
        let uri: ureq::http::Uri = url.parse().ok()?;
        let scheme = uri.scheme_str()?.to_ascii_lowercase();
        let default = match scheme.as_str() {
            "http" => 80,
            "https" => 443,
            _ => return None,
        };
        let host = uri.host()?.to_ascii_lowercase();
        if host.is_empty() {
            return None;
        }
        Some(Origin {
            port: uri.port_u16().unwrap_or(default),
            scheme,
            host,
        })
    }

    /// Plain HTTP rather than TLS.
    pub fn is_plain_http(&self) -> bool {
        self.scheme == "http"
    }

    /// `host[:port]`, as auth files and image references name registries.
    pub fn authority(&self) -> String {
        let default = if self.is_plain_http() { 80 } else { 443 };
        if self.port == default {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// May basic credentials of the endpoint at `endpoint` go to token realm
/// `realm`? Over TLS, yes; over plain HTTP only to the endpoint's own host,
/// and only when the endpoint itself is plain HTTP, which only the operator
/// can make it.
pub fn basic_to_realm(endpoint: &Origin, realm: &Origin) -> bool {
    !realm.is_plain_http() || (endpoint.is_plain_http() && realm.host == endpoint.host)
}

/// What a registry's own host is given to authenticate with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// `base64(user:password)`, for Basic challenges and token realms.
    Basic(Secret),
    /// A registry token, sent as `Authorization: Bearer` as it is.
    Bearer(Secret),
}

impl Credential {
    /// Basic credentials of `user` and `password`.
    pub fn basic(user: &str, password: &str) -> Self {
        let pair = Zeroizing::new(format!("{user}:{password}"));
        Credential::Basic(Secret::new(B64.encode(pair.as_bytes())))
    }

    /// Basic credentials from `USER[:PASSWORD]` (`--creds`).
    pub fn from_creds(c: &str) -> Self {
        let (user, password) = c.split_once(':').unwrap_or((c, ""));
        Credential::basic(user, password)
    }
}

/// The credential for requests to `endpoint` on behalf of repository `r`:
/// `creds` when `endpoint` is `r`'s own registry, else what the auth
/// `files` hold for `endpoint`'s own `host[:port]`.
pub fn credential_for(
    endpoint: &Origin,
    r: &RegistryRef,
    creds: Option<&Credential>,
    files: &[PathBuf],
) -> Option<Credential> {
    // As origins, so `reg.example:443` is `https://reg.example`.
    let own = [r.host.as_str(), r.api_host()]
        .iter()
        .any(|h| Origin::of(&format!("{}://{h}", endpoint.scheme)).as_ref() == Some(endpoint));
    let authority = endpoint.authority();
    if own {
        if let Some(c) = creds {
            return Some(c.clone());
        }
        return from_auth_files(files, &r.host).map(Credential::Basic);
    }
    from_auth_files(files, &authority).map(Credential::Basic)
}

/// The auth files skopeo and docker use, in the order they are consulted.
pub fn auth_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = Vec::new();
    if let Ok(p) = std::env::var("REGISTRY_AUTH_FILE") {
        files.push(p.into());
    }
    if let Ok(d) = std::env::var("XDG_RUNTIME_DIR") {
        files.push(PathBuf::from(d).join("containers/auth.json"));
    }
    if let Ok(d) = std::env::var("DOCKER_CONFIG") {
        files.push(PathBuf::from(d).join("config.json"));
    }
    if let Ok(h) = std::env::var("HOME") {
        files.push(PathBuf::from(h).join(".docker/config.json"));
    }
    files
}

/// The first `auths` entry for `host` in `files`.
fn from_auth_files(files: &[PathBuf], host: &str) -> Option<Secret> {
    let keys: Vec<String> = if host == "docker.io" {
        vec![
            "docker.io".into(),
            "https://index.docker.io/v1/".into(),
            "registry-1.docker.io".into(),
        ]
    } else {
        vec![
            host.to_string(),
            format!("https://{host}"),
            format!("http://{host}"),
        ]
    };
    files.iter().find_map(|f| {
        let text = Zeroizing::new(std::fs::read(f).ok()?);
        let v: serde_json::Value = serde_json::from_slice(&text).ok()?;
        keys.iter().find_map(|k| {
            v["auths"][k]["auth"]
                .as_str()
                .map(|a| Secret::new(a.into()))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o(url: &str) -> Origin {
        Origin::of(url).unwrap()
    }

    #[test]
    fn origins_differ_by_scheme_host_or_port() {
        assert_eq!(
            o("https://Reg.example/v2/x"),
            o("https://reg.example:443/y")
        );
        assert_ne!(o("https://reg.example"), o("http://reg.example"));
        assert_ne!(o("http://127.0.0.1:5000"), o("http://127.0.0.1:5001"));
        assert_ne!(o("http://127.0.0.1:5000"), o("http://localhost:5000"));
        assert_eq!(o("http://127.0.0.1:5000/v2").authority(), "127.0.0.1:5000");
        assert_eq!(o("https://reg.example:443").authority(), "reg.example");
        assert!(Origin::of("ftp://x/").is_none() && Origin::of("/v2/x").is_none());
    }

    #[test]
    fn basic_credentials_go_to_tls_realms_or_the_plain_http_registry_itself() {
        let tls = o("https://reg.example");
        let plain = o("http://127.0.0.1:5000");
        assert!(basic_to_realm(&tls, &o("https://auth.example/token")));
        assert!(basic_to_realm(&plain, &o("https://auth.example/token")));
        assert!(basic_to_realm(&plain, &o("http://127.0.0.1:5001/token")));
        assert!(!basic_to_realm(&plain, &o("http://localhost:5000/token")));
        assert!(!basic_to_realm(&tls, &o("http://reg.example/token")));
        assert!(!basic_to_realm(&tls, &o("http://auth.example/token")));
    }

    #[test]
    fn mirrors_get_only_their_own_credentials() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("config.json");
        std::fs::write(
            &f,
            r#"{"auths":{"reg.example":{"auth":"cmVnOnI="},"mirror.example:5000":{"auth":"bWlycm9yOm0="}}}"#,
        )
        .unwrap();
        let files = [f];
        let r = RegistryRef::parse("reg.example/a/b:v1").unwrap();
        let get = |host: &str, creds: Option<&str>| {
            let creds = creds.map(Credential::from_creds);
            match credential_for(&o(&format!("https://{host}")), &r, creds.as_ref(), &files) {
                Some(Credential::Basic(s)) => Some(s.expose().to_string()),
                _ => None,
            }
        };
        assert_eq!(get("reg.example", None).as_deref(), Some("cmVnOnI="));
        assert_eq!(get("reg.example", Some("u:p")).as_deref(), Some("dTpw"));
        assert_eq!(
            get("mirror.example:5000", None).as_deref(),
            Some("bWlycm9yOm0=")
        );
        assert_eq!(
            get("mirror.example:5000", Some("u:p")).as_deref(),
            Some("bWlycm9yOm0=")
        );
        assert_eq!(get("other.example", Some("u:p")), None);
        assert_eq!(get("reg.example:5000", None), None);
        // A default port written in the reference names the same origin.
        let r443 = RegistryRef::parse("reg.example:443/a/b").unwrap();
        let c = Credential::from_creds("u:p");
        for (endpoint, own) in [
            ("https://reg.example", true),
            ("https://reg.example:443", true),
            ("http://reg.example", false),
            ("https://reg.example:5000", false),
        ] {
            let got = credential_for(&o(endpoint), &r443, Some(&c), &[]);
            assert_eq!(got.is_some(), own, "{endpoint}");
        }
        assert_eq!(format!("{:?}", Secret::new("s3cret".into())), "Secret(…)");
        assert_eq!(
            Credential::from_creds("u"),
            Credential::Basic(Secret::new("dTo=".into()))
        );
        assert_eq!(
            format!("{:?}", Credential::from_creds("u:hunter2")),
            "Basic(Secret(…))"
        );
    }
}

//! Docker references as containers/image compares them, and the
//! `signedIdentity` rules that say which signed reference an image accepts.

use std::fmt;

use crate::oci::digest;
use crate::oci::reference::{RegistryRef, valid_host, valid_tag};

/// A Docker reference in its fully expanded form: `host/path`, and a tag,
/// a digest, both, or neither (what a signature's
/// `critical.identity.docker-reference` may say).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerReference {
    name: String,
    tag: Option<String>,
    digest: Option<String>,
}

impl DockerReference {
    /// Parses and normalizes as docker's `ParseNormalizedNamed` does:
    /// `busybox` is `docker.io/library/busybox`, `index.docker.io` is
    /// `docker.io`. No default tag is added.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (rest, digest) = match s.split_once('@') {
            Some((n, d)) => {
                digest::parse(d).map_err(|e| e.to_string())?;
                (n, Some(d.to_string()))
            }
            None => (s, None),
        };
        let last = rest.rfind('/').map(|i| i + 1).unwrap_or(0);
        let (name, tag) = match rest[last..].rfind(':') {
            // Without a '/', a second ':' is neither a port nor a tag.
            Some(i) if last == 0 && rest[..i].contains(':') => {
                return Err("more than one ':' in a name without a path".into());
            }
            Some(i) => (&rest[..last + i], Some(&rest[last + i + 1..])),
            None => (rest, None),
        };
        if let Some(t) = tag
            && !valid_tag(t)
        {
            return Err(format!("invalid tag {t:?}"));
        }
        let r = RegistryRef::parse(name).map_err(|e| e.to_string())?;
        Ok(DockerReference {
            name: format!("{}/{}", r.host, r.repo),
            tag: tag.map(str::to_string),
            digest,
        })
    }

    /// `host/path`, without tag or digest.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Has neither a tag nor a digest?
    pub fn is_name_only(&self) -> bool {
        self.tag.is_none() && self.digest.is_none()
    }
}

impl From<&RegistryRef> for DockerReference {
    fn from(r: &RegistryRef) -> Self {
        let (tag, digest) = if r.is_digest() {
            (None, Some(r.reference.clone()))
        } else {
            (Some(r.reference.clone()), None)
        };
        DockerReference {
            name: format!("{}/{}", r.host, r.repo),
            tag,
            digest,
        }
    }
}

impl fmt::Display for DockerReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// Which identity a signature must claim for an image (`signedIdentity`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignedIdentity {
    /// The signed reference is the image's reference, tag or digest and all.
    MatchExact,
    /// A tagged image needs its exact reference signed; an image pulled by
    /// digest needs any tag or digest of its repository (the digest itself
    /// is checked against the manifest). The default.
    MatchRepoDigestOrExact,
    /// Any reference in the image's repository (what cosign signs).
    MatchRepository,
    /// Exactly this reference, wherever the image is pulled from.
    ExactReference { docker_reference: DockerReference },
    /// Any reference in this repository, wherever the image is pulled from.
    ExactRepository { docker_repository: String },
    /// The image's `prefix` is replaced by `signed_prefix`, then
    /// [`SignedIdentity::MatchRepoDigestOrExact`] applies (for mirrors).
    RemapIdentity {
        prefix: String,
        signed_prefix: String,
    },
}

impl SignedIdentity {
    /// Does a signature claiming `signed` (its `docker-reference`) identify
    /// `image`? An unparsable claim matches nothing.
    pub fn matches(&self, image: &RegistryRef, signed: &str) -> bool {
        let Ok(signed) = DockerReference::parse(signed) else {
            return false;
        };
        let intended = DockerReference::from(image);
        match self {
            SignedIdentity::MatchExact => {
                !signed.is_name_only() && signed.to_string() == intended.to_string()
            }
            SignedIdentity::MatchRepoDigestOrExact => repo_digest_or_exact(&intended, &signed),
            SignedIdentity::MatchRepository => signed.name == intended.name,
            SignedIdentity::ExactReference { docker_reference } => {
                !signed.is_name_only() && signed.to_string() == docker_reference.to_string()
            }
            SignedIdentity::ExactRepository { docker_repository } => {
                signed.name == *docker_repository
            }
            SignedIdentity::RemapIdentity {
                prefix,
                signed_prefix,
            } => match remap(&intended, prefix, signed_prefix) {
                Some(remapped) => repo_digest_or_exact(&remapped, &signed),
                None => false,
            },
        }
    }
}

fn repo_digest_or_exact(intended: &DockerReference, signed: &DockerReference) -> bool {
    if signed.is_name_only() {
        return false;
    }
    if intended.tag.is_some() {
        signed.to_string() == intended.to_string()
    } else if intended.digest.is_some() {
        signed.name == intended.name
    } else {
        false
    }
}

/// `intended` with `prefix` replaced by `signed_prefix` if its name starts
/// with `prefix` at a '/' boundary, else as it is; `None` if a rewritten
/// name is not a reference
/// in its fully expanded form (it then matches nothing, as in
/// containers/image).
fn remap(intended: &DockerReference, prefix: &str, signed_prefix: &str) -> Option<DockerReference> {
    // Outside the prefix the name stays as it is (containers/image's
    // remapReferencePrefix), matched as matchRepoDigestOrExact.
    let Some(rest) = intended.name.strip_prefix(prefix) else {
        return Some(intended.clone());
    };
    if !(rest.is_empty() || rest.starts_with('/')) {
        return Some(intended.clone());
    }
    let rewritten = format!("{signed_prefix}{}", &intended.to_string()[prefix.len()..]);
    let parsed = DockerReference::parse(&rewritten).ok()?;
    (parsed.to_string() == rewritten).then_some(parsed)
}

/// Is `host` a registry host as name normalization reads the first path
/// component (a '.', a ':' or `localhost`), and not Docker Hub's old alias?
fn registry_host(host: &str) -> Result<(), String> {
    if !(host.contains('.') || host.contains(':') || host == "localhost") || !valid_host(host) {
        return Err(format!("{host:?} is not a registry host"));
    }
    if host == "index.docker.io" {
        return Err("Docker Hub is written docker.io".into());
    }
    Ok(())
}

fn path_components(path: &str) -> Result<(), String> {
    let ok = path.split('/').all(|c| {
        !c.is_empty()
            && c.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
    });
    if ok {
        Ok(())
    } else {
        Err("repository paths are lowercase letters, digits, '.', '_', '-' and '/'".into())
    }
}

/// Checks a `remapIdentity` prefix: a `host[:port]`, or a namespace or
/// repository in the fully expanded form, without tag or digest.
pub(super) fn check_prefix(prefix: &str) -> Result<(), String> {
    let (host, path) = match prefix.split_once('/') {
        Some((h, p)) => (h, Some(p)),
        None => (prefix, None),
    };
    registry_host(host)?;
    if let Some(p) = path {
        path_components(p)?;
    }
    Ok(())
}

/// Checks a `transports.docker` scope. containers/image accepts any string
/// there; one that cannot name an image (a short name, an uppercase path, a
/// port on a wildcard) simply never applies, which in a security policy is
/// a silent hole, so it is refused.
pub(super) fn check_scope(scope: &str) -> Result<(), String> {
    const FORMS: &str = "scopes are HOST[:PORT], *.DOMAIN, or HOST/PATH[:TAG|@DIGEST] in the fully expanded form (docker.io/library/busybox)";
    let bad = |why: String| Err(format!("{why}; {FORMS}"));
    if let Some(domain) = scope.strip_prefix("*.") {
        if domain.contains(':') || domain.starts_with('[') || !valid_host(domain) {
            return bad(format!("{domain:?} is not a DNS domain"));
        }
        return Ok(());
    }
    let (rest, digest) = match scope.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (scope, None),
    };
    let (host, path) = match rest.split_once('/') {
        Some((h, p)) => (h, Some(p)),
        None => (rest, None),
    };
    let hint = || match DockerReference::parse(scope) {
        Ok(r) if r.to_string() != scope => format!(" (did you mean {:?}?)", r.to_string()),
        _ => String::new(),
    };
    if let Err(why) = registry_host(host) {
        return bad(format!("{why}{}", hint()));
    }
    let Some(path) = path else {
        return match digest {
            Some(_) => bad("a digest needs a repository".into()),
            None => Ok(()),
        };
    };
    let (repo, tag) = match path.rsplit_once(':') {
        Some((r, t)) => (r, Some(t)),
        None => (path, None),
    };
    if let Err(why) = path_components(repo) {
        return bad(why);
    }
    if let Some(t) = tag
        && !valid_tag(t)
    {
        return bad(format!("invalid tag {t:?}"));
    }
    if let Some(d) = digest {
        digest::parse(d).map_err(|e| e.to_string())?;
        if tag.is_some() {
            return bad("a scope has a tag or a digest, not both".into());
        }
    }
    // A tagged Docker Hub image is always in a namespace (`library/`).
    if (tag.is_some() || digest.is_some()) && host == "docker.io" && !repo.contains('/') {
        return bad(format!(
            "Docker Hub images are docker.io/NAMESPACE/NAME{}",
            hint()
        ));
    }
    Ok(())
}

/// The scopes that may hold `image`'s requirements, most specific first:
/// the reference itself, its repository, each parent namespace up to the
/// host, then `*.` wildcards of the host's domains (without the port), as
/// containers/image's docker transport looks them up.
pub(super) fn scopes(image: &RegistryRef) -> Vec<String> {
    let mut res = vec![DockerReference::from(image).to_string()];
    let mut name = format!("{}/{}", image.host, image.repo);
    loop {
        res.push(name.clone());
        match name.rfind('/') {
            Some(i) => name.truncate(i),
            None => break,
        }
    }
    if let Some(i) = name.find(':') {
        name.truncate(i);
    }
    while let Some(i) = name.find('.') {
        name.drain(..=i);
        res.push(format!("*.{name}"));
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const E: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

    fn img(s: &str) -> RegistryRef {
        RegistryRef::parse(s).unwrap()
    }

    #[test]
    fn parses_and_normalizes_like_docker() {
        for (s, want) in [
            ("busybox", "docker.io/library/busybox"),
            ("busybox:latest", "docker.io/library/busybox:latest"),
            ("library/busybox:1", "docker.io/library/busybox:1"),
            ("index.docker.io/x/y", "docker.io/x/y"),
            ("localhost:5000/a/b:v1", "localhost:5000/a/b:v1"),
            ("localhost:5000", "docker.io/library/localhost:5000"),
            (&format!("reg.io/a:v1@{D}"), &format!("reg.io/a:v1@{D}")),
        ] {
            assert_eq!(DockerReference::parse(s).unwrap().to_string(), want, "{s}");
        }
        assert!(DockerReference::parse("busybox").unwrap().is_name_only());
        for s in [
            "",
            "a:b:c",
            "reg.io/A",
            "reg.io/a:",
            "reg.io/a@sha256:12",
            "/a",
        ] {
            assert!(DockerReference::parse(s).is_err(), "{s}");
        }
    }

    fn check(identity: &SignedIdentity, table: &[(&str, &str, bool)]) {
        for (image, signed, want) in table {
            assert_eq!(
                identity.matches(&img(image), signed),
                *want,
                "{identity:?}: image {image}, signed {signed}"
            );
        }
    }

    #[test]
    fn match_exact() {
        check(
            &SignedIdentity::MatchExact,
            &[
                ("busybox:latest", "busybox:latest", true),
                ("busybox:latest", "docker.io/library/busybox:latest", true),
                ("busybox", "busybox:latest", true),
                ("busybox:latest", "busybox", false),
                ("busybox:latest", "busybox:other", false),
                ("busybox:latest", "reg.io/library/busybox:latest", false),
                (&format!("busybox@{D}"), &format!("busybox@{D}"), true),
                // A digest reference is not matched by a tag signature.
                (&format!("busybox@{D}"), "busybox:latest", false),
                ("busybox:latest", &format!("busybox:latest@{D}"), false),
                ("busybox:latest", "not a reference", false),
            ],
        );
    }

    #[test]
    fn match_repo_digest_or_exact() {
        check(
            &SignedIdentity::MatchRepoDigestOrExact,
            &[
                ("busybox:latest", "busybox:latest", true),
                ("busybox:latest", "busybox:v1", false),
                ("busybox:latest", "busybox", false),
                (&format!("busybox@{D}"), "busybox:v1", true),
                (&format!("busybox@{D}"), &format!("busybox@{E}"), true),
                (&format!("busybox@{D}"), "busybox", false),
                (&format!("busybox@{D}"), "other:v1", false),
                (&format!("reg.io/a@{D}"), "reg.io/a:v1", true),
                (&format!("reg.io/a@{D}"), "reg.io/a/b:v1", false),
            ],
        );
    }

    #[test]
    fn match_repository() {
        check(
            &SignedIdentity::MatchRepository,
            &[
                ("busybox:latest", "busybox", true),
                ("busybox:latest", "busybox:v1", true),
                (&format!("busybox@{D}"), "docker.io/library/busybox", true),
                ("busybox:latest", "reg.io/library/busybox", false),
                ("reg.io/a/b:v1", "reg.io/a", false),
                ("reg.io/a:v1", "reg.io/a/b", false),
            ],
        );
    }

    #[test]
    fn exact_reference_and_repository_ignore_where_the_image_is() {
        let exact = SignedIdentity::ExactReference {
            docker_reference: DockerReference::parse("vendor.io/p/app:v1").unwrap(),
        };
        check(
            &exact,
            &[
                ("mirror:5000/x:anything", "vendor.io/p/app:v1", true),
                ("mirror:5000/x:anything", "vendor.io/p/app:v2", false),
                ("mirror:5000/x:anything", "vendor.io/p/app", false),
                ("vendor.io/p/app:v1", "mirror:5000/x:anything", false),
            ],
        );
        let repo = SignedIdentity::ExactRepository {
            docker_repository: "vendor.io/p/app".into(),
        };
        check(
            &repo,
            &[
                ("mirror:5000/x:a", "vendor.io/p/app:v2", true),
                ("mirror:5000/x:a", "vendor.io/p/app", true),
                ("mirror:5000/x:a", "vendor.io/p/other:v2", false),
            ],
        );
    }

    #[test]
    fn remap_identity_rewrites_the_prefix_then_matches_repo_digest_or_exact() {
        // The man page's mirror example.
        let id = SignedIdentity::RemapIdentity {
            prefix: "private-mirror:5000/vendor-mirror".into(),
            signed_prefix: "vendor.example.com".into(),
        };
        check(
            &id,
            &[
                (
                    "private-mirror:5000/vendor-mirror/producta/image1:latest",
                    "vendor.example.com/producta/image1:latest",
                    true,
                ),
                (
                    "private-mirror:5000/vendor-mirror/producta/image1:latest",
                    "vendor.example.com/producta/image1:v2",
                    false,
                ),
                (
                    &format!("private-mirror:5000/vendor-mirror/producta/image1@{D}"),
                    "vendor.example.com/producta/image1:v2",
                    true,
                ),
                // Not under the prefix (only at a '/' boundary): no remap.
                (
                    "private-mirror:5000/vendor-mirrorx/a:v1",
                    "vendor.example.comx/a:v1",
                    false,
                ),
                (
                    "private-mirror:5000/vendor-mirrorx/a:v1",
                    "private-mirror:5000/vendor-mirrorx/a:v1",
                    true,
                ),
                // Nowhere near the prefix: kept, as containers/image does.
                ("other.example/a:v1", "other.example/a:v1", true),
                ("other.example/a:v1", "other.example/a:v2", false),
                // The mirror's own name is no longer accepted under the prefix.
                (
                    "private-mirror:5000/vendor-mirror/a:v1",
                    "private-mirror:5000/vendor-mirror/a:v1",
                    false,
                ),
            ],
        );
        // A remap whose result is not fully expanded matches nothing.
        let short = SignedIdentity::RemapIdentity {
            prefix: "mirror.io/hub".into(),
            signed_prefix: "docker.io".into(),
        };
        check(
            &short,
            &[
                ("mirror.io/hub/busybox:1", "busybox:1", false),
                ("mirror.io/hub/library/busybox:1", "busybox:1", true),
            ],
        );
    }

    #[test]
    fn scopes_go_from_the_reference_to_wildcard_domains() {
        assert_eq!(
            scopes(&img("a.b.example.com:5000/ns/sub/app:v1")),
            [
                "a.b.example.com:5000/ns/sub/app:v1",
                "a.b.example.com:5000/ns/sub/app",
                "a.b.example.com:5000/ns/sub",
                "a.b.example.com:5000/ns",
                "a.b.example.com:5000",
                "*.b.example.com",
                "*.example.com",
                "*.com",
            ]
        );
        assert_eq!(
            scopes(&img(&format!("busybox@{D}"))),
            [
                &format!("docker.io/library/busybox@{D}"),
                "docker.io/library/busybox",
                "docker.io/library",
                "docker.io",
                "*.io",
            ]
        );
        assert_eq!(
            scopes(&img("localhost/app:v1")),
            ["localhost/app:v1", "localhost/app", "localhost"]
        );
    }

    #[test]
    fn scopes_that_can_never_apply_are_refused() {
        for ok in [
            "reg.io",
            "reg.io:5000",
            "localhost",
            "*.example.com",
            "docker.io/openshift",
            "docker.io/library/busybox",
            "docker.io/library/busybox:latest",
            "reg.io/a/b",
            "[::1]:5000/a",
            &format!("reg.io/a@{D}"),
        ] {
            assert_eq!(check_scope(ok), Ok(()), "{ok}");
        }
        for (bad, why) in [
            (
                "busybox",
                "\"busybox\" is not a registry host (did you mean \"docker.io/library/busybox\"?)",
            ),
            (
                "library/busybox",
                "\"library\" is not a registry host (did you mean \"docker.io/library/busybox\"?)",
            ),
            (
                "docker.io/busybox:latest",
                "Docker Hub images are docker.io/NAMESPACE/NAME (did you mean \"docker.io/library/busybox:latest\"?)",
            ),
            (
                "index.docker.io/library/busybox",
                "Docker Hub is written docker.io (did you mean \"docker.io/library/busybox\"?)",
            ),
            (
                &format!("reg.io/a:v1@{D}"),
                "a scope has a tag or a digest, not both",
            ),
            (
                "reg.io/App",
                "repository paths are lowercase letters, digits, '.', '_', '-' and '/'",
            ),
            (
                "reg.io/a/",
                "repository paths are lowercase letters, digits, '.', '_', '-' and '/'",
            ),
            ("reg.io/a:", "invalid tag \"\""),
            (
                "*.example.com:5000",
                "\"example.com:5000\" is not a DNS domain",
            ),
            (
                "example*.*.com",
                "\"example*.*.com\" is not a registry host",
            ),
            ("*.", "\"\" is not a DNS domain"),
        ] {
            let e = check_scope(bad).unwrap_err();
            assert!(e.starts_with(&format!("{why}; scopes are ")), "{bad}: {e}");
        }
    }

    #[test]
    fn remap_prefixes_are_hosts_or_expanded_names() {
        for ok in ["reg.io", "reg.io:5000", "localhost/ns", "docker.io/library"] {
            assert_eq!(check_prefix(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "busybox",
            "library/busybox",
            "reg.io/a:v1",
            "reg.io/a@x",
            "reg.io/",
        ] {
            assert!(check_prefix(bad).is_err(), "{bad}");
        }
    }
}

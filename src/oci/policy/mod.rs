//! The signature policy, in containers-policy.json(5)'s format, so a node
//! reuses the `/etc/containers/policy.json` its podman or CRI-O already has.
//!
//! Parsing is as strict as containers/image's (unknown or duplicated
//! fields, empty requirement lists and unknown types refuse the whole file)
//! and stricter where lazycrypt cannot honour a rule: a requirement it
//! cannot check (`signedBy`, `signedBaseLayer`, keyless, Rekor) refuses the
//! file rather than being skipped, since skipping one would accept images
//! the operator meant to refuse.
//!
//! Only the `docker` transport applies: a containerd node pulls from
//! registries only. Other transports' sections (the stock file has
//! `docker-daemon`) are checked for well-formed requirement lists of known
//! types and otherwise left alone, so the operator's file still loads.

mod json;

pub mod identity;
pub mod key;

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

pub use identity::{DockerReference, SignedIdentity};
use json::Json;
pub use json::JsonPath;
pub use key::{BadSignature, KeyError, MAX_KEY_PEM, PublicKey};

use super::reference::RegistryRef;

/// Policy files larger than this are refused (real ones are a few KiB).
pub const MAX_POLICY: u64 = 1 << 20;
/// Key files larger than this are refused (a PEM public key is < 1 KiB).
pub const MAX_KEY_FILE: u64 = 64 << 10;

/// A loaded policy: every requirement list is non-empty, every requirement
/// one lazycrypt can check, every key read and valid.
#[derive(Debug, Clone)]
pub struct Policy {
    default: Vec<Requirement>,
    /// `transports.docker`, by scope (`""` is the transport's default).
    docker: HashMap<String, Vec<Requirement>>,
}

/// One rule an image must satisfy; an image must satisfy every rule of the
/// list that applies to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    /// Accepts any image (others in the list still apply).
    InsecureAcceptAnything,
    /// Refuses every image.
    Reject,
    /// A sigstore signature by one of `keys`, for an identity `identity`
    /// accepts.
    SigstoreSigned(SigstoreSigned),
}

/// The `sigstoreSigned` requirement with a key (keyless is refused at load).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigstoreSigned {
    keys: Vec<PublicKey>,
    identity: SignedIdentity,
}

impl SigstoreSigned {
    /// The trusted keys; never empty. A signature by any one is enough.
    pub fn keys(&self) -> &[PublicKey] {
        &self.keys
    }

    /// Which signed identities are accepted (`matchRepoDigestOrExact` when
    /// the file says nothing).
    pub fn identity(&self) -> &SignedIdentity {
        &self.identity
    }
}

/// Which part of the policy applied to an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope<'a> {
    /// `transports.docker.<scope>` (`""` for the transport's default).
    Docker(&'a str),
    /// The top-level `default`.
    Default,
}

/// A policy file that cannot be used: which file, where in it, and why.
#[derive(Debug, thiserror::Error)]
#[error("policy {origin}: {}{kind}", if path.is_root() { String::new() } else { format!("{path}: ") })]
pub struct Error {
    pub origin: String,
    pub path: JsonPath,
    pub kind: ErrorKind,
}

/// Why a policy file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ErrorKind {
    #[error("{0}")]
    Read(std::io::Error),
    #[error("larger than {MAX_POLICY} bytes")]
    TooLarge,
    #[error("{0}")]
    Syntax(String),
    #[error("expected {expected}, found {found}")]
    WrongType {
        expected: &'static str,
        found: &'static str,
    },
    #[error("{0:?} is missing")]
    Missing(&'static str),
    #[error("unknown field {0:?}")]
    UnknownField(String),
    #[error(
        "the list of requirements must not be empty (write [{{\"type\":\"insecureAcceptAnything\"}}] to accept anything)"
    )]
    EmptyRequirements,
    #[error("unknown requirement type {0:?}")]
    UnknownType(String),
    #[error("unknown signedIdentity type {0:?}")]
    UnknownIdentityType(String),
    #[error("{0:?} requirements are not supported by lazycrypt ({1}); use \"sigstoreSigned\"")]
    UnsupportedType(String, &'static str),
    #[error("keyless (fulcio) sigstoreSigned is not supported yet")]
    Keyless,
    #[error("\"pki\" (X.509 CA) sigstoreSigned is not supported yet")]
    Pki,
    #[error("{0:?} is not supported yet: lazycrypt cannot check Rekor log inclusion")]
    Rekor(String),
    #[error("exactly one of keyPath, keyPaths, keyData and keyDatas must be given, {0}")]
    KeySources(String),
    #[error("{0:?} contains no entries")]
    NoEntries(&'static str),
    #[error("key path {0:?} is not absolute")]
    RelativeKeyPath(String),
    #[error("{path}: {source}")]
    KeyFile {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: larger than {MAX_KEY_FILE} bytes")]
    KeyFileTooLarge { path: String },
    #[error("{what}: {why}")]
    BadKey { what: String, why: String },
    #[error("not valid base64")]
    Base64,
    #[error("{field} {value:?} is not valid: {why}")]
    BadValue {
        field: &'static str,
        value: String,
        why: String,
    },
    #[error("scope {scope:?} is not valid: {why}")]
    BadScope { scope: String, why: String },
}

/// The requirement types containers/image knows.
const KNOWN_TYPES: [&str; 5] = [
    "insecureAcceptAnything",
    "reject",
    "signedBy",
    "signedBaseLayer",
    "sigstoreSigned",
];

impl Policy {
    /// Reads and checks the policy file at `path`, and the key files it names.
    pub fn load(path: &Path) -> Result<Policy, Error> {
        let origin = path.display().to_string();
        let fail = |kind| Error {
            origin: origin.clone(),
            path: JsonPath::default(),
            kind,
        };
        let mut bytes = Vec::new();
        read_regular(path, MAX_POLICY + 1, &mut bytes).map_err(|e| fail(ErrorKind::Read(e)))?;
        if bytes.len() as u64 > MAX_POLICY {
            return Err(fail(ErrorKind::TooLarge));
        }
        Policy::parse(&bytes, &origin)
    }

    /// Parses a policy; `origin` names it in errors. Key files named by
    /// `keyPath`/`keyPaths` are read now.
    pub fn parse(bytes: &[u8], origin: &str) -> Result<Policy, Error> {
        Parser { origin }.policy(bytes)
    }

    /// The requirements for `image`, from the most specific scope that has
    /// any: the reference, its repository, each parent namespace, the host,
    /// `*.` wildcard domains, the docker transport's `""`, then `default`.
    pub fn requirements_for(&self, image: &RegistryRef) -> &[Requirement] {
        self.lookup(image).1
    }

    /// Which scope applies to `image`, and its requirements.
    pub fn lookup(&self, image: &RegistryRef) -> (Scope<'_>, &[Requirement]) {
        identity::scopes(image)
            .iter()
            .map(String::as_str)
            .chain([""])
            .find_map(|s| self.docker.get_key_value(s))
            .map(|(s, r)| (Scope::Docker(s.as_str()), r.as_slice()))
            .unwrap_or((Scope::Default, &self.default))
    }
}

struct Parser<'a> {
    origin: &'a str,
}

type Members = [(String, Json)];

impl Parser<'_> {
    fn err(&self, path: &JsonPath, kind: ErrorKind) -> Error {
        Error {
            origin: self.origin.to_string(),
            path: path.clone(),
            kind,
        }
    }

    fn object<'j>(&self, v: &'j Json, path: &JsonPath) -> Result<&'j Members, Error> {
        match v {
            Json::Object(m) => Ok(m),
            other => Err(self.wrong(path, "an object", other)),
        }
    }

    fn string<'j>(&self, v: &'j Json, path: &JsonPath) -> Result<&'j str, Error> {
        match v {
            Json::String(s) => Ok(s),
            other => Err(self.wrong(path, "a string", other)),
        }
    }

    fn array<'j>(&self, v: &'j Json, path: &JsonPath) -> Result<&'j [Json], Error> {
        match v {
            Json::Array(a) => Ok(a),
            other => Err(self.wrong(path, "an array", other)),
        }
    }

    fn wrong(&self, path: &JsonPath, expected: &'static str, found: &Json) -> Error {
        self.err(
            path,
            ErrorKind::WrongType {
                expected,
                found: found.kind(),
            },
        )
    }

    /// Refuses members other than `allowed`.
    fn only(&self, members: &Members, allowed: &[&str], path: &JsonPath) -> Result<(), Error> {
        match members.iter().find(|(k, _)| !allowed.contains(&k.as_str())) {
            Some((k, _)) => Err(self.err(path, ErrorKind::UnknownField(k.clone()))),
            None => Ok(()),
        }
    }

    fn policy(&self, bytes: &[u8]) -> Result<Policy, Error> {
        let root = JsonPath::default();
        let doc: Json = serde_json::from_slice(bytes)
            .map_err(|e| self.err(&root, ErrorKind::Syntax(e.to_string())))?;
        let top = self.object(&doc, &root)?;
        self.only(top, &["default", "transports"], &root)?;
        let default = match get(top, "default") {
            Some(v) => self.requirements(v, &root.key("default"))?,
            None => return Err(self.err(&root, ErrorKind::Missing("default"))),
        };
        let mut docker = HashMap::new();
        if let Some(t) = get(top, "transports") {
            let tpath = root.key("transports");
            for (name, scopes) in self.object(t, &tpath)? {
                let path = tpath.key(name);
                let scopes = self.object(scopes, &path)?;
                for (scope, reqs) in scopes {
                    let spath = path.key(scope);
                    if name == "docker" {
                        if !scope.is_empty() {
                            identity::check_scope(scope).map_err(|why| {
                                self.err(
                                    &path,
                                    ErrorKind::BadScope {
                                        scope: scope.clone(),
                                        why,
                                    },
                                )
                            })?;
                        }
                        docker.insert(scope.clone(), self.requirements(reqs, &spath)?);
                    } else {
                        self.foreign_requirements(reqs, &spath)?;
                    }
                }
            }
        }
        Ok(Policy { default, docker })
    }

    fn requirements(&self, v: &Json, path: &JsonPath) -> Result<Vec<Requirement>, Error> {
        let list = self.array(v, path)?;
        if list.is_empty() {
            return Err(self.err(path, ErrorKind::EmptyRequirements));
        }
        list.iter()
            .enumerate()
            .map(|(i, r)| self.requirement(r, &path.index(i)))
            .collect()
    }

    /// A requirement list of a transport lazycrypt never pulls through:
    /// well-formed and of known types, not interpreted.
    fn foreign_requirements(&self, v: &Json, path: &JsonPath) -> Result<(), Error> {
        let list = self.array(v, path)?;
        if list.is_empty() {
            return Err(self.err(path, ErrorKind::EmptyRequirements));
        }
        for (i, r) in list.iter().enumerate() {
            let path = path.index(i);
            let ty = self.type_field(self.object(r, &path)?, &path)?;
            if !KNOWN_TYPES.contains(&ty) {
                return Err(self.err(&path, ErrorKind::UnknownType(ty.to_string())));
            }
        }
        Ok(())
    }

    fn type_field<'j>(&self, members: &'j Members, path: &JsonPath) -> Result<&'j str, Error> {
        match get(members, "type") {
            Some(t) => self.string(t, &path.key("type")),
            None => Err(self.err(path, ErrorKind::Missing("type"))),
        }
    }

    fn requirement(&self, v: &Json, path: &JsonPath) -> Result<Requirement, Error> {
        let members = self.object(v, path)?;
        let ty = self.type_field(members, path)?;
        match ty {
            "insecureAcceptAnything" => {
                self.only(members, &["type"], path)?;
                Ok(Requirement::InsecureAcceptAnything)
            }
            "reject" => {
                self.only(members, &["type"], path)?;
                Ok(Requirement::Reject)
            }
            "sigstoreSigned" => self.sigstore_signed(members, path),
            "signedBy" => Err(self.err(
                path,
                ErrorKind::UnsupportedType(ty.into(), "GPG simple signing"),
            )),
            "signedBaseLayer" => Err(self.err(
                path,
                ErrorKind::UnsupportedType(ty.into(), "base layer identities"),
            )),
            other => Err(self.err(path, ErrorKind::UnknownType(other.into()))),
        }
    }

    fn sigstore_signed(&self, members: &Members, path: &JsonPath) -> Result<Requirement, Error> {
        const REKOR: [&str; 4] = [
            "rekorPublicKeyPath",
            "rekorPublicKeyPaths",
            "rekorPublicKeyData",
            "rekorPublicKeyDatas",
        ];
        const KEYS: [&str; 4] = ["keyPath", "keyPaths", "keyData", "keyDatas"];
        let mut allowed = vec!["type", "signedIdentity", "fulcio", "pki"];
        allowed.extend(KEYS);
        allowed.extend(REKOR);
        self.only(members, &allowed, path)?;
        if get(members, "fulcio").is_some() {
            return Err(self.err(&path.key("fulcio"), ErrorKind::Keyless));
        }
        if get(members, "pki").is_some() {
            return Err(self.err(&path.key("pki"), ErrorKind::Pki));
        }
        if let Some(r) = REKOR.iter().find(|r| get(members, r).is_some()) {
            return Err(self.err(&path.key(r), ErrorKind::Rekor(r.to_string())));
        }
        let given: Vec<&'static str> = KEYS
            .into_iter()
            .filter(|k| get(members, k).is_some())
            .collect();
        let keys = match given.as_slice() {
            [] => return Err(self.err(path, ErrorKind::KeySources("none is".into()))),
            [one] => {
                let kpath = path.key(one);
                let v = get(members, one).expect("given");
                match *one {
                    "keyPath" => vec![self.key_file(self.string(v, &kpath)?, &kpath)?],
                    "keyData" => vec![self.key_data(v, &kpath)?],
                    plural => {
                        let list = self.array(v, &kpath)?;
                        if list.is_empty() {
                            return Err(self.err(&kpath, ErrorKind::NoEntries(plural)));
                        }
                        let mut keys = Vec::with_capacity(list.len());
                        for (i, item) in list.iter().enumerate() {
                            let ipath = kpath.index(i);
                            keys.push(if plural == "keyPaths" {
                                self.key_file(self.string(item, &ipath)?, &ipath)?
                            } else {
                                self.key_data(item, &ipath)?
                            });
                        }
                        keys
                    }
                }
            }
            several => {
                return Err(self.err(
                    path,
                    ErrorKind::KeySources(format!("found {}", several.join(" and "))),
                ));
            }
        };
        let identity = match get(members, "signedIdentity") {
            Some(v) => self.signed_identity(v, &path.key("signedIdentity"))?,
            None => SignedIdentity::MatchRepoDigestOrExact,
        };
        Ok(Requirement::SigstoreSigned(SigstoreSigned {
            keys,
            identity,
        }))
    }

    /// Reads a key file. A relative path is refused: containers/image would
    /// read it from the working directory, which for a daemon is arbitrary.
    fn key_file(&self, file: &str, path: &JsonPath) -> Result<PublicKey, Error> {
        if !Path::new(file).is_absolute() {
            return Err(self.err(path, ErrorKind::RelativeKeyPath(file.into())));
        }
        let mut bytes = Vec::new();
        read_regular(Path::new(file), MAX_KEY_FILE + 1, &mut bytes).map_err(|source| {
            self.err(
                path,
                ErrorKind::KeyFile {
                    path: file.into(),
                    source,
                },
            )
        })?;
        if bytes.len() as u64 > MAX_KEY_FILE {
            return Err(self.err(path, ErrorKind::KeyFileTooLarge { path: file.into() }));
        }
        PublicKey::from_pem(&bytes, file).map_err(|e| {
            self.err(
                path,
                ErrorKind::BadKey {
                    what: file.into(),
                    why: e.reason().to_string(),
                },
            )
        })
    }

    /// A key given inline: base64 of the PEM text, as Go encodes `[]byte`.
    fn key_data(&self, v: &Json, path: &JsonPath) -> Result<PublicKey, Error> {
        let b64: String = self
            .string(v, path)?
            .chars()
            .filter(|c| !matches!(c, '\r' | '\n'))
            .collect();
        let pem = B64
            .decode(b64)
            .map_err(|_| self.err(path, ErrorKind::Base64))?;
        PublicKey::from_pem(&pem, "key").map_err(|e| {
            self.err(
                path,
                ErrorKind::BadKey {
                    what: "key".into(),
                    why: e.reason().to_string(),
                },
            )
        })
    }

    fn signed_identity(&self, v: &Json, path: &JsonPath) -> Result<SignedIdentity, Error> {
        let members = self.object(v, path)?;
        let ty = self.type_field(members, path)?;
        // Every field is required, as containers/image's exact-field parsing does.
        let field = |name: &'static str| -> Result<&str, Error> {
            match get(members, name) {
                Some(v) => self.string(v, &path.key(name)),
                None => Err(self.err(path, ErrorKind::Missing(name))),
            }
        };
        let bad = |field: &'static str, value: &str, why: String| {
            self.err(
                &path.key(field),
                ErrorKind::BadValue {
                    field,
                    value: value.into(),
                    why,
                },
            )
        };
        let identity = match ty {
            "matchExact" | "matchRepoDigestOrExact" | "matchRepository" => {
                self.only(members, &["type"], path)?;
                match ty {
                    "matchExact" => SignedIdentity::MatchExact,
                    "matchRepoDigestOrExact" => SignedIdentity::MatchRepoDigestOrExact,
                    _ => SignedIdentity::MatchRepository,
                }
            }
            "exactReference" => {
                self.only(members, &["type", "dockerReference"], path)?;
                let s = field("dockerReference")?;
                let r = DockerReference::parse(s).map_err(|why| bad("dockerReference", s, why))?;
                if r.is_name_only() {
                    return Err(bad(
                        "dockerReference",
                        s,
                        "it has neither a tag nor a digest".into(),
                    ));
                }
                SignedIdentity::ExactReference {
                    docker_reference: r,
                }
            }
            "exactRepository" => {
                self.only(members, &["type", "dockerRepository"], path)?;
                let s = field("dockerRepository")?;
                let r = DockerReference::parse(s).map_err(|why| bad("dockerRepository", s, why))?;
                SignedIdentity::ExactRepository {
                    docker_repository: r.name().to_string(),
                }
            }
            "remapIdentity" => {
                self.only(members, &["type", "prefix", "signedPrefix"], path)?;
                let prefix = field("prefix")?;
                identity::check_prefix(prefix).map_err(|why| bad("prefix", prefix, why))?;
                let signed = field("signedPrefix")?;
                identity::check_prefix(signed).map_err(|why| bad("signedPrefix", signed, why))?;
                SignedIdentity::RemapIdentity {
                    prefix: prefix.into(),
                    signed_prefix: signed.into(),
                }
            }
            other => return Err(self.err(path, ErrorKind::UnknownIdentityType(other.into()))),
        };
        Ok(identity)
    }
}

/// Reads at most `limit` bytes of a regular file. Opened without blocking
/// and checked first, so a key path naming a FIFO or a device fails at once
/// instead of hanging the daemon's start.
fn read_regular(path: &Path, limit: u64, out: &mut Vec<u8>) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    f.take(limit).read_to_end(out)?;
    Ok(())
}

fn get<'j>(members: &'j Members, key: &str) -> Option<&'j Json> {
    members.iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

#[cfg(test)]
mod tests;

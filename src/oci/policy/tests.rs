use super::key::tests::p256_pem;
use super::*;

const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn b64(pem: &str) -> String {
    B64.encode(pem)
}

/// A directory with `k1.pub` and `k2.pub` (P-256 keys 1 and 2).
fn key_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("k1.pub"), p256_pem(1)).unwrap();
    std::fs::write(dir.path().join("k2.pub"), p256_pem(2)).unwrap();
    dir
}

fn key(seed: u8) -> PublicKey {
    PublicKey::from_pem(p256_pem(seed).as_bytes(), "test").unwrap()
}

fn parse(json: &str) -> Result<Policy, Error> {
    Policy::parse(json.as_bytes(), "/etc/containers/policy.json")
}

fn img(s: &str) -> RegistryRef {
    RegistryRef::parse(s).unwrap()
}

fn sigstore(keys: Vec<PublicKey>, identity: SignedIdentity) -> Requirement {
    Requirement::SigstoreSigned(SigstoreSigned { keys, identity })
}

#[test]
fn reads_the_man_pages_locked_down_example() {
    let dir = key_dir();
    let k1 = dir.path().join("k1.pub");
    let json = format!(
        r#"{{
        "default": [{{"type": "reject"}}],
        "transports": {{
            "docker": {{
                "docker.io/openshift": [{{"type": "insecureAcceptAnything"}}],
                "docker.io/library/busybox": [{{"type": "insecureAcceptAnything"}}],
                "*.temporary-project.example.com": [{{"type": "insecureAcceptAnything"}}],
                "hostname:5000/myns/sigstore-signed-with-full-references": [
                    {{"type": "sigstoreSigned", "keyPath": "{k1}"}}
                ],
                "hostname:5000/myns/sigstore-signed-allows-malicious-tag-substitution": [
                    {{"type": "sigstoreSigned", "keyPath": "{k1}",
                      "signedIdentity": {{"type": "matchRepository"}}}}
                ]
            }},
            "dir": {{"": [{{"type": "insecureAcceptAnything"}}]}},
            "atomic": {{
                "hostname:5000/myns/official": [
                    {{"type": "signedBy", "keyType": "GPGKeys", "keyPath": "/path/to/official-pubkey.gpg"}}
                ]
            }}
        }}
    }}"#,
        k1 = k1.display()
    );
    let p = parse(&json).unwrap();
    assert_eq!(
        p.requirements_for(&img("quay.io/x:1")),
        [Requirement::Reject]
    );
    assert_eq!(
        p.requirements_for(&img("docker.io/openshift/origin:v3")),
        [Requirement::InsecureAcceptAnything]
    );
    assert_eq!(
        p.requirements_for(&img("busybox")),
        [Requirement::InsecureAcceptAnything]
    );
    assert_eq!(
        p.requirements_for(&img("a.temporary-project.example.com/x:1")),
        [Requirement::InsecureAcceptAnything]
    );
    assert_eq!(
        p.requirements_for(&img(
            "hostname:5000/myns/sigstore-signed-with-full-references:v1"
        )),
        [sigstore(
            vec![key(1)],
            SignedIdentity::MatchRepoDigestOrExact
        )]
    );
    assert_eq!(
        p.requirements_for(&img(
            "hostname:5000/myns/sigstore-signed-allows-malicious-tag-substitution:v1"
        )),
        [sigstore(vec![key(1)], SignedIdentity::MatchRepository)]
    );
}

#[test]
fn parses_every_key_source_and_identity() {
    let dir = key_dir();
    let (k1, k2) = (dir.path().join("k1.pub"), dir.path().join("k2.pub"));
    let json = format!(
        r#"{{"default": [{{"type": "insecureAcceptAnything"}}], "transports": {{"docker": {{
        "r.io/paths": [{{"type": "sigstoreSigned", "keyPaths": ["{k1}", "{k2}"],
            "signedIdentity": {{"type": "matchExact"}}}}],
        "r.io/data": [{{"type": "sigstoreSigned", "keyData": "{d1}",
            "signedIdentity": {{"type": "matchRepoDigestOrExact"}}}}],
        "r.io/datas": [{{"type": "sigstoreSigned", "keyDatas": ["{d2}", "{d1}"],
            "signedIdentity": {{"type": "exactReference", "dockerReference": "vendor.io/app:v1"}}}}],
        "r.io/repo": [{{"type": "sigstoreSigned", "keyData": "{d1}",
            "signedIdentity": {{"type": "exactRepository", "dockerRepository": "busybox"}}}}],
        "r.io/remap": [{{"type": "sigstoreSigned", "keyData": "{d1}",
            "signedIdentity": {{"type": "remapIdentity", "prefix": "r.io/remap", "signedPrefix": "vendor.io"}}}},
            {{"type": "reject"}}]
    }}}}}}"#,
        k1 = k1.display(),
        k2 = k2.display(),
        d1 = b64(&p256_pem(1)),
        d2 = b64(&p256_pem(2)),
    );
    let p = parse(&json).unwrap();
    let reqs = |s: &str| p.requirements_for(&img(s)).to_vec();
    assert_eq!(
        reqs("r.io/paths:1"),
        [sigstore(vec![key(1), key(2)], SignedIdentity::MatchExact)]
    );
    assert_eq!(
        reqs("r.io/data:1"),
        [sigstore(
            vec![key(1)],
            SignedIdentity::MatchRepoDigestOrExact
        )]
    );
    assert_eq!(
        reqs("r.io/datas:1"),
        [sigstore(
            vec![key(2), key(1)],
            SignedIdentity::ExactReference {
                docker_reference: DockerReference::parse("vendor.io/app:v1").unwrap()
            }
        )]
    );
    assert_eq!(
        reqs("r.io/repo:1"),
        [sigstore(
            vec![key(1)],
            SignedIdentity::ExactRepository {
                docker_repository: "docker.io/library/busybox".into()
            }
        )]
    );
    assert_eq!(
        reqs("r.io/remap/a:1"),
        [
            sigstore(
                vec![key(1)],
                SignedIdentity::RemapIdentity {
                    prefix: "r.io/remap".into(),
                    signed_prefix: "vendor.io".into()
                }
            ),
            Requirement::Reject
        ]
    );
    let Requirement::SigstoreSigned(s) = &reqs("r.io/paths:1")[0] else {
        panic!()
    };
    assert_eq!(s.keys().len(), 2);
    assert_eq!(s.identity(), &SignedIdentity::MatchExact);
}

#[test]
fn the_most_specific_scope_wins() {
    let scopes = [
        "reg.example.com:5000/ns/app:v1",
        &format!("reg.example.com:5000/ns/app@{D}"),
        "reg.example.com:5000/ns/app",
        "reg.example.com:5000/ns",
        "reg.example.com:5000",
        "*.example.com",
        "*.com",
        "",
    ];
    // Scope i rejects (so each list is told apart by its position).
    let mut docker = String::new();
    for (i, s) in scopes.iter().enumerate() {
        let reqs = vec![r#"{"type":"reject"}"#; i + 1].join(",");
        docker.push_str(&format!(
            "{}\"{s}\": [{reqs}]",
            if i > 0 { "," } else { "" }
        ));
    }
    let json = format!(
        r#"{{"default": [{{"type":"insecureAcceptAnything"}}], "transports": {{"docker": {{{docker}}}}}}}"#
    );
    let p = parse(&json).unwrap();
    let which = |r: &str| {
        let (scope, reqs) = p.lookup(&img(r));
        (scope, reqs.len())
    };
    assert_eq!(
        which("reg.example.com:5000/ns/app:v1"),
        (Scope::Docker(scopes[0]), 1)
    );
    assert_eq!(
        which(&format!("reg.example.com:5000/ns/app@{D}")),
        (Scope::Docker(scopes[1]), 2)
    );
    assert_eq!(
        which("reg.example.com:5000/ns/app:v2"),
        (Scope::Docker(scopes[2]), 3)
    );
    assert_eq!(
        which("reg.example.com:5000/ns/other:v1"),
        (Scope::Docker(scopes[3]), 4)
    );
    assert_eq!(
        which("reg.example.com:5000/other/app:v1"),
        (Scope::Docker(scopes[4]), 5)
    );
    // The wildcard matches any port and subdomain, not the bare domain.
    assert_eq!(
        which("reg.example.com/ns/app:v1"),
        (Scope::Docker(scopes[5]), 6)
    );
    assert_eq!(
        which("a.b.example.com:1/x:1"),
        (Scope::Docker(scopes[5]), 6)
    );
    assert_eq!(which("example.com/x:1"), (Scope::Docker(scopes[6]), 7));
    assert_eq!(which("localhost:5000/x:1"), (Scope::Docker(""), 8));
    // Without a transport default, the global default applies.
    let p = parse(
        r#"{"default": [{"type":"reject"}], "transports": {"docker": {"r.io": [{"type":"insecureAcceptAnything"}]}, "dir": {"": [{"type":"insecureAcceptAnything"}]}}}"#,
    )
    .unwrap();
    assert_eq!(
        p.lookup(&img("q.io/x:1")),
        (Scope::Default, &[Requirement::Reject][..])
    );
    assert_eq!(
        p.lookup(&img("r.io/x:1")),
        (
            Scope::Docker("r.io"),
            &[Requirement::InsecureAcceptAnything][..]
        )
    );
}

#[test]
fn docker_hub_images_are_looked_up_fully_expanded() {
    let p = parse(
        r#"{"default": [{"type":"reject"}], "transports": {"docker": {
            "docker.io/library": [{"type":"insecureAcceptAnything"}]}}}"#,
    )
    .unwrap();
    assert_eq!(
        p.lookup(&img("busybox:1")).0,
        Scope::Docker("docker.io/library")
    );
    assert_eq!(p.lookup(&img("someone/app:1")).0, Scope::Default);
}

/// Each bad policy, and its whole one-line error.
#[test]
fn refusals_say_what_and_where() {
    let dir = key_dir();
    let k1 = dir.path().join("k1.pub").display().to_string();
    let missing = dir.path().join("nope.pub").display().to_string();
    let not_key = dir.path().join("not.pub");
    std::fs::write(&not_key, "hello").unwrap();
    let not_key = not_key.display().to_string();
    let d1 = b64(&p256_pem(1));
    let accept = r#"[{"type":"insecureAcceptAnything"}]"#;
    let docker = |scope: &str, reqs: &str| {
        format!(r#"{{"default": {accept}, "transports": {{"docker": {{"{scope}": {reqs}}}}}}}"#)
    };
    let sig = |fields: &str| {
        docker(
            "reg.example/app",
            &format!(r#"[{{"type":"sigstoreSigned",{fields}}}]"#),
        )
    };
    let at = r#"policy /etc/containers/policy.json: transports.docker."reg.example/app"[0]"#;
    let cases: Vec<(String, String)> = vec![
        ("".into(), "policy /etc/containers/policy.json: EOF while parsing a value at line 1 column 0".into()),
        ("{\"default\": [".into(), "policy /etc/containers/policy.json: EOF while parsing a list at line 1 column 13".into()),
        ("[]".into(), "policy /etc/containers/policy.json: expected an object, found an array".into()),
        ("{}".into(), "policy /etc/containers/policy.json: \"default\" is missing".into()),
        (format!(r#"{{"default": {accept}, "defaults": []}}"#), "policy /etc/containers/policy.json: unknown field \"defaults\"".into()),
        (format!(r#"{{"default": {accept}, "default": {accept}}}"#), "policy /etc/containers/policy.json: duplicate key \"default\" at line 1 column 58".into()),
        (r#"{"default": []}"#.into(), "policy /etc/containers/policy.json: default: the list of requirements must not be empty (write [{\"type\":\"insecureAcceptAnything\"}] to accept anything)".into()),
        (r#"{"default": {}}"#.into(), "policy /etc/containers/policy.json: default: expected an array, found an object".into()),
        (r#"{"default": [{}]}"#.into(), "policy /etc/containers/policy.json: default[0]: \"type\" is missing".into()),
        (r#"{"default": [{"type": 1}]}"#.into(), "policy /etc/containers/policy.json: default[0].type: expected a string, found a number".into()),
        (r#"{"default": [{"type": "reject", "keyPath": "/x"}]}"#.into(), "policy /etc/containers/policy.json: default[0]: unknown field \"keyPath\"".into()),
        (docker("reg.example/app", r#"[{"type":"signedByX"}]"#), format!("{at}: unknown requirement type \"signedByX\"")),
        (docker("reg.example/app", "[]"), "policy /etc/containers/policy.json: transports.docker.\"reg.example/app\": the list of requirements must not be empty (write [{\"type\":\"insecureAcceptAnything\"}] to accept anything)".into()),
        (docker("reg.example/app", r#"[{"type":"signedBy","keyType":"GPGKeys","keyPath":"/k.gpg"}]"#), format!("{at}: \"signedBy\" requirements are not supported by lazycrypt (GPG simple signing); use \"sigstoreSigned\"")),
        (docker("reg.example/app", r#"[{"type":"signedBaseLayer","baseLayerIdentity":{"type":"matchExact"}}]"#), format!("{at}: \"signedBaseLayer\" requirements are not supported by lazycrypt (base layer identities); use \"sigstoreSigned\"")),
        (docker("busybox", accept), "policy /etc/containers/policy.json: transports.docker: scope \"busybox\" is not valid: \"busybox\" is not a registry host (did you mean \"docker.io/library/busybox\"?); scopes are HOST[:PORT], *.DOMAIN, or HOST/PATH[:TAG|@DIGEST] in the fully expanded form (docker.io/library/busybox)".into()),
        (sig(r#""fulcio": {"caPath": "/ca.pem", "oidcIssuer": "https://x", "subjectEmail": "a@b"}, "rekorPublicKeyPath": "/r.pub""#), format!("{at}.fulcio: keyless (fulcio) sigstoreSigned is not supported yet")),
        (sig(r#""pki": {}"#), format!("{at}.pki: \"pki\" (X.509 CA) sigstoreSigned is not supported yet")),
        (sig(&format!(r#""keyPath": "{k1}", "rekorPublicKeyPath": "/r.pub""#)), format!("{at}.rekorPublicKeyPath: \"rekorPublicKeyPath\" is not supported yet: lazycrypt cannot check Rekor log inclusion")),
        (sig(r#""keyType": "GPGKeys""#), format!("{at}: unknown field \"keyType\"")),
        (sig(r#""signedIdentity": {"type": "matchRepository"}"#), format!("{at}: exactly one of keyPath, keyPaths, keyData and keyDatas must be given, none is")),
        (sig(&format!(r#""keyPath": "{k1}", "keyData": "{d1}""#)), format!("{at}: exactly one of keyPath, keyPaths, keyData and keyDatas must be given, found keyPath and keyData")),
        (sig(r#""keyPaths": []"#), format!("{at}.keyPaths: \"keyPaths\" contains no entries")),
        (sig(r#""keyDatas": []"#), format!("{at}.keyDatas: \"keyDatas\" contains no entries")),
        (sig(r#""keyPath": "keys/k1.pub""#), format!("{at}.keyPath: key path \"keys/k1.pub\" is not absolute")),
        (sig(r#""keyPath": """#), format!("{at}.keyPath: key path \"\" is not absolute")),
        (sig(&format!(r#""keyPath": "{missing}""#)), format!("{at}.keyPath: {missing}: No such file or directory (os error 2)")),
        (sig(&format!(r#""keyPaths": ["{k1}", "{not_key}"]"#)), format!("{at}.keyPaths[1]: {not_key}: no PEM block")),
        (sig(r#""keyData": "%%%""#), format!("{at}.keyData: not valid base64")),
        (sig(&format!(r#""keyDatas": ["{d1}", "{}"]"#, B64.encode("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"))), format!("{at}.keyDatas[1]: key: a PEM \"PRIVATE KEY\" block, not \"PUBLIC KEY\" (SubjectPublicKeyInfo)")),
        (sig(&format!(r#""keyData": "{d1}", "signedIdentity": {{"type": "matchAnything"}}"#)), format!("{at}.signedIdentity: unknown signedIdentity type \"matchAnything\"")),
        (sig(&format!(r#""keyData": "{d1}", "signedIdentity": {{"type": "matchExact", "dockerReference": "a.io/b:c"}}"#)), format!("{at}.signedIdentity: unknown field \"dockerReference\"")),
        (sig(&format!(r#""keyData": "{d1}", "signedIdentity": {{"type": "exactReference"}}"#)), format!("{at}.signedIdentity: \"dockerReference\" is missing")),
        (sig(&format!(r#""keyData": "{d1}", "signedIdentity": {{"type": "exactReference", "dockerReference": "vendor.io/app"}}"#)), format!("{at}.signedIdentity.dockerReference: dockerReference \"vendor.io/app\" is not valid: it has neither a tag nor a digest")),
        (sig(&format!(r#""keyData": "{d1}", "signedIdentity": {{"type": "exactRepository", "dockerRepository": "Vendor.io/App"}}"#)), format!("{at}.signedIdentity.dockerRepository: dockerRepository \"Vendor.io/App\" is not valid: docker://Vendor.io/App: repository names are lowercase letters, digits, '.', '_', '-' and '/'")),
        (sig(&format!(r#""keyData": "{d1}", "signedIdentity": {{"type": "remapIdentity", "prefix": "mirror.io/x"}}"#)), format!("{at}.signedIdentity: \"signedPrefix\" is missing")),
        (sig(&format!(r#""keyData": "{d1}", "signedIdentity": {{"type": "remapIdentity", "prefix": "busybox", "signedPrefix": "vendor.io"}}"#)), format!("{at}.signedIdentity.prefix: prefix \"busybox\" is not valid: \"busybox\" is not a registry host")),
        (format!(r#"{{"default": {accept}, "transports": {{"docker-daemon": {{"": [{{"type": "bogus"}}]}}}}}}"#), "policy /etc/containers/policy.json: transports.\"docker-daemon\".\"\"[0]: unknown requirement type \"bogus\"".into()),
        (format!(r#"{{"default": {accept}, "transports": {{"dir": {{"": []}}}}}}"#), "policy /etc/containers/policy.json: transports.dir.\"\": the list of requirements must not be empty (write [{\"type\":\"insecureAcceptAnything\"}] to accept anything)".into()),
    ];
    for (json, want) in cases {
        let e = parse(&json).unwrap_err();
        assert_eq!(e.to_string(), want, "{json}");
        assert!(!want.contains('\n'));
    }
}

#[test]
fn errors_are_typed() {
    let e = parse(r#"{"default": [{"type": "signedByX"}]}"#).unwrap_err();
    assert!(matches!(&e.kind, ErrorKind::UnknownType(t) if t == "signedByX"));
    assert_eq!(e.path.to_string(), "default[0]");
    assert_eq!(e.origin, "/etc/containers/policy.json");
}

#[test]
fn other_transports_are_checked_but_do_not_apply() {
    // The stock Fedora / RHEL shape: docker-daemon accepts anything.
    let p = parse(
        r#"{"default": [{"type": "reject"}], "transports": {
            "docker-daemon": {"": [{"type": "insecureAcceptAnything"}]},
            "atomic": {"h:5000/ns": [{"type": "signedBy", "keyType": "GPGKeys", "keyPath": "/k.gpg"}]}}}"#,
    )
    .unwrap();
    assert_eq!(p.requirements_for(&img("r.io/x:1")), [Requirement::Reject]);
}

#[test]
fn load_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("policy.json");
    assert_eq!(
        Policy::load(&missing).unwrap_err().to_string(),
        format!(
            "policy {}: No such file or directory (os error 2)",
            missing.display()
        )
    );
    let big = dir.path().join("big.json");
    std::fs::write(&big, vec![b' '; MAX_POLICY as usize + 1]).unwrap();
    assert_eq!(
        Policy::load(&big).unwrap_err().to_string(),
        format!("policy {}: larger than 1048576 bytes", big.display())
    );
    let ok = dir.path().join("ok.json");
    std::fs::write(&ok, r#"{"default": [{"type": "insecureAcceptAnything"}]}"#).unwrap();
    assert_eq!(
        Policy::load(&ok).unwrap().requirements_for(&img("r.io/x")),
        [Requirement::InsecureAcceptAnything]
    );
    let big_key = dir.path().join("big.pub");
    std::fs::write(&big_key, vec![b'A'; MAX_KEY_FILE as usize + 1]).unwrap();
    let e = parse(&format!(
        r#"{{"default": [{{"type": "sigstoreSigned", "keyPath": "{}"}}]}}"#,
        big_key.display()
    ))
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "policy /etc/containers/policy.json: default[0].keyPath: {}: larger than 65536 bytes",
            big_key.display()
        )
    );
}

#[test]
fn key_paths_and_policies_must_be_regular_files() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo.pub");
    let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    for bad in [dir.path().to_path_buf(), fifo.clone()] {
        let e = parse(&format!(
            r#"{{"default": [{{"type": "sigstoreSigned", "keyPath": "{}"}}]}}"#,
            bad.display()
        ))
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "policy /etc/containers/policy.json: default[0].keyPath: {}: not a regular file",
                bad.display()
            )
        );
        assert_eq!(
            Policy::load(&bad).unwrap_err().to_string(),
            format!("policy {}: not a regular file", bad.display())
        );
    }
}

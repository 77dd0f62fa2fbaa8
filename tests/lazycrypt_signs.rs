//! lazycrypt's own signatures: one `lazycrypt encrypt
//! --sign-by-sigstore-private-key` pushes an encrypted eStargz image to
//! Debian's registry and signs it with a key real cosign 3.1 generated, in
//! cosign's classic format. `cosign verify --key` and `lazycrypt verify
//! --policy` accept it with that key only.

mod common;

use std::path::Path;
use std::process::Command;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use common::signers::{Format, PASSWORD, cosign_keys, cosign_sign, cosign_verify, digest_ref};
use common::*;

/// A policy trusting `public` for `scope` (matchRepository), rejecting the rest.
fn policy_file(dir: &Path, name: &str, scope: &str, public: &Path) -> std::path::PathBuf {
    let pem = std::fs::read(public).unwrap();
    let p = serde_json::json!({
        "default": [{"type": "reject"}],
        "transports": {"docker": {scope: [{"type": "sigstoreSigned", "keyData": B64.encode(pem),
                                           "signedIdentity": {"type": "matchRepository"}}]}},
    });
    let path = dir.join(name);
    std::fs::write(&path, serde_json::to_vec(&p).unwrap()).unwrap();
    path
}

fn verify(image: &str, policy: &Path) -> std::process::Output {
    run(lazycrypt()
        .args(["verify", "--plain-http", "--policy"])
        .arg(policy)
        .arg(image))
}

/// A plain layout image and a recipient key in `d`.
fn plain_image(d: &Path) -> (String, RsaKeys) {
    let src = d.join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("hello.txt"), "signed and encrypted\n").unwrap();
    let plain = format!("oci:{}/img:plain", d.display());
    build_dir(&src, &plain, &[]);
    (plain, rsa_keys(d, "k"))
}

fn encrypt_and_sign(plain: &str, dst: &str, recipient: &Path, key: &Path) -> Command {
    let mut c = lazycrypt();
    c.args(["encrypt", "--plain-http", "--estargz", "-r"])
        .arg(format!("jwe:{}", recipient.display()))
        .arg("--sign-by-sigstore-private-key")
        .arg(key)
        .args([plain, dst]);
    c
}

#[test]
fn one_encrypt_command_pushes_an_image_cosign_and_lazycrypt_verify() {
    let d = tmp();
    let reg = Registry::start();
    let (plain, k) = plain_image(d.path());
    let (key, public) = cosign_keys(&d.path().join("signer"));
    let (other_key, other_public) = cosign_keys(&d.path().join("other"));
    let pass = d.path().join("pass");
    std::fs::write(&pass, format!("{PASSWORD}\n")).unwrap();

    let repo = "signed";
    let out = ok(
        encrypt_and_sign(&plain, &reg.image(&format!("{repo}:v1")), &k.public, &key)
            .arg("--sign-passphrase-file")
            .arg(&pass)
            .env_remove("COSIGN_PASSWORD"),
    );
    let (reference, digest) = digest_ref(&reg, repo, "v1");
    let hex = digest.strip_prefix("sha256:").unwrap();
    assert!(
        out.contains(&format!(
            "signed {digest} in cosign's classic format: tag sha256-{hex}.sig"
        )),
        "{out}"
    );

    // cosign accepts it with the signing key, refuses it with another.
    let v = cosign_verify(d.path(), &public, Format::Classic, &reference);
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
    let claims: serde_json::Value = serde_json::from_slice(&v.stdout).unwrap();
    assert_eq!(
        claims[0]["critical"]["identity"]["docker-reference"],
        format!("{}/{repo}:v1", reg.addr)
    );
    assert_eq!(
        claims[0]["critical"]["image"]["docker-manifest-digest"],
        digest
    );
    let v = cosign_verify(d.path(), &other_public, Format::Classic, &reference);
    assert!(!v.status.success());
    assert!(
        String::from_utf8_lossy(&v.stderr)
            .contains("invalid signature when validating ASN.1 encoded signature"),
        "{}",
        String::from_utf8_lossy(&v.stderr)
    );

    // lazycrypt verify: accepted with the key, rejected with the other.
    let scope = format!("{}/{repo}", reg.addr);
    let image = reg.image(&format!("{repo}:v1"));
    let good = policy_file(d.path(), "good.json", &scope, &public);
    let bad = policy_file(d.path(), "bad.json", &scope, &other_public);
    let v = verify(&image, &good);
    let stdout = String::from_utf8_lossy(&v.stdout);
    assert!(
        v.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&v.stderr)
    );
    let fingerprint = {
        use sha2::Digest as _;
        let pem = std::fs::read_to_string(&public).unwrap();
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        hex::encode(sha2::Sha256::digest(B64.decode(body).unwrap()))
    };
    assert!(
        stdout.contains(&format!(
            ": signed by key 0 (sha256:{fingerprint}) of sigstoreSigned requirement 0, identity \"{scope}:v1\", digest {digest}\n"
        )),
        "{stdout}"
    );
    assert!(
        stdout.ends_with(&format!(
            "verdict: accepted {}/{repo}:v1@{digest} (signed)\n",
            reg.addr
        )),
        "{stdout}"
    );
    let v = verify(&image, &bad);
    let stdout = String::from_utf8_lossy(&v.stdout);
    assert_eq!(v.status.code(), Some(1), "{stdout}");
    let verdict = stdout.lines().last().unwrap();
    assert!(
        verdict.starts_with(&format!(
            "verdict: rejected: signature verification failed for {}/{repo}:v1@{digest}: signature layer sha256:",
            reg.addr
        )) && verdict.ends_with(": not signed by the trusted key"),
        "{stdout}"
    );

    // cosign appends its own classic signature to lazycrypt's manifest;
    // both keys now verify, with cosign and with lazycrypt.
    cosign_sign(d.path(), &other_key, Format::Classic, &reference);
    for public in [&public, &other_public] {
        let v = cosign_verify(d.path(), public, Format::Classic, &reference);
        assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
    }
    let v = verify(&image, &bad);
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
}

#[test]
fn a_wrong_passphrase_or_a_layout_destination_is_one_line_and_pushes_nothing() {
    let d = tmp();
    let reg = Registry::start();
    let (plain, k) = plain_image(d.path());
    let (key, _) = cosign_keys(&d.path().join("signer"));
    let image = reg.image("wrong-pass:v1");

    let e = fails(encrypt_and_sign(&plain, &image, &k.public, &key).env("COSIGN_PASSWORD", "nope"));
    assert_eq!(
        e.trim_end(),
        format!(
            "lazycrypt: cosign private key {}: wrong passphrase (the key does not decrypt)",
            key.display()
        )
    );
    // Nothing was pushed.
    let out = run(Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("http://{}/v2/wrong-pass/manifests/v1", reg.addr)));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "404");

    let layout = format!("oci:{}/enc:v1", d.path().display());
    let e =
        fails(encrypt_and_sign(&plain, &layout, &k.public, &key).env("COSIGN_PASSWORD", PASSWORD));
    assert_eq!(
        e.trim_end(),
        format!(
            "lazycrypt: --sign-by-sigstore-private-key: {layout} is not a docker:// destination; signatures are stored in a registry repository"
        )
    );
}

#[test]
fn verify_of_an_unsigned_image_exits_1_with_the_verdict_line() {
    let d = tmp();
    let reg = Registry::start();
    let (plain, k) = plain_image(d.path());
    let (_, public) = cosign_keys(&d.path().join("signer"));
    encrypt_estargz(&plain, &reg.image("unsigned:v1"), &k.public);
    let (_, digest) = digest_ref(&reg, "unsigned", "v1");
    let policy = policy_file(
        d.path(),
        "p.json",
        &format!("{}/unsigned", reg.addr),
        &public,
    );
    let v = verify(&reg.image("unsigned:v1"), &policy);
    assert_eq!(v.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&v.stdout),
        format!(
            "image {addr}/unsigned:v1 {digest}\nno signatures found\nverdict: rejected: signature verification failed for {addr}/unsigned:v1@{digest}: no signatures found (the image is unsigned)\n",
            addr = reg.addr
        )
    );
}

/// A multi-platform image is signed at its index and at each platform's
/// manifest, as `cosign sign --recursive` signs: a node verifies the
/// manifest of the platform it runs.
#[test]
fn a_multi_platform_image_is_signed_at_each_platforms_manifest() {
    let d = tmp();
    let reg = Registry::start();
    let multi = common::multi_platform_image(d.path());
    let k = rsa_keys(d.path(), "k");
    let (key, public) = cosign_keys(&d.path().join("signer"));
    let pass = d.path().join("pass");
    std::fs::write(&pass, format!("{PASSWORD}\n")).unwrap();
    let out = ok(
        encrypt_and_sign(&multi, &reg.image("multi:v1"), &k.public, &key)
            .arg("--sign-passphrase-file")
            .arg(&pass),
    );
    let index = common::signers::registry_json(&reg, "multi", "manifests/v1");
    let platforms: Vec<String> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["digest"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(platforms.len(), 2);
    let (_, root) = digest_ref(&reg, "multi", "v1");
    let policy = policy_file(d.path(), "p.json", &format!("{}/multi", reg.addr), &public);
    for digest in platforms.iter().chain([&root]) {
        assert!(
            out.contains(&format!("signed {digest} in cosign's classic format")),
            "{out}"
        );
        let v = verify(&reg.image(&format!("multi@{digest}")), &policy);
        assert!(
            v.status.success(),
            "{digest}: {}",
            String::from_utf8_lossy(&v.stdout)
        );
    }
}

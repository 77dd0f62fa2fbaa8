//! skopeo 1.22 (Debian unstable's, sigstore enabled) as a second real
//! signer and verifier beside cosign, against Debian's registry on
//! 127.0.0.1: it signs an image Debian's skopeo 1.9.3 encrypted, and
//! `lazycrypt verify` and `cosign verify` accept that signature with the
//! signing key only; and it accepts lazycrypt's own signature under a
//! `sigstoreSigned` policy, and rejects it under a policy naming another key.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use common::signers::{
    Format, PASSWORD, cosign_keys, cosign_verify, digest_ref, registry_get, registry_json,
    skopeo_sign, skopeo_sigstore,
};
use common::*;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// A policy trusting `public` for `scope` with `identity` (a signedIdentity
/// type; "" leaves it out, so the default applies), rejecting the rest.
fn policy_file(dir: &Path, name: &str, scope: &str, public: &Path, identity: &str) -> PathBuf {
    let pem = std::fs::read(public).unwrap();
    let mut requirement = serde_json::json!({"type": "sigstoreSigned", "keyData": B64.encode(pem)});
    if !identity.is_empty() {
        requirement["signedIdentity"] = serde_json::json!({"type": identity});
    }
    let p = serde_json::json!({
        "default": [{"type": "reject"}],
        "transports": {"docker": {scope: [requirement]}},
    });
    let path = dir.join(name);
    std::fs::write(&path, serde_json::to_vec(&p).unwrap()).unwrap();
    path
}

fn lazycrypt_verify(image: &str, policy: &Path) -> Output {
    run(lazycrypt()
        .args(["verify", "--plain-http", "--policy"])
        .arg(policy)
        .arg(image))
}

/// skopeo 1.22 copies `image` (`docker://…`) to `dir:OUT` under `policy`.
fn skopeo_copy_with_policy(d: &Path, policy: &Path, image: &str, out: &Path) -> Output {
    run(skopeo_sigstore(d)
        .arg("--policy")
        .arg(policy)
        .args(["copy", "--src-tls-verify=false", image])
        .arg(format!("dir:{}", out.display())))
}

/// A plain layout image in `d` and an RSA recipient key.
fn plain_image(d: &Path) -> (String, RsaKeys) {
    let src = d.join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("hello.txt"), "signed by skopeo\n").unwrap();
    let plain = format!("oci:{}/img:plain", d.display());
    build_dir(&src, &plain, &[]);
    (plain, rsa_keys(d, "k"))
}

fn assert_encrypted(manifest: &Value) {
    let layers = manifest["layers"].as_array().unwrap();
    assert!(!layers.is_empty());
    for l in layers {
        let t = l["mediaType"].as_str().unwrap();
        assert!(t.ends_with("+encrypted"), "{t}");
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn skopeo_signs_a_skopeo_encrypted_image_and_lazycrypt_and_cosign_verify_it() {
    let d = tmp();
    let reg = Registry::start();
    let (plain, k) = plain_image(d.path());
    let repo = "enc";
    let image = reg.image(&format!("{repo}:v1"));
    skopeo_encrypt(
        &plain,
        &image,
        &[format!("jwe:{}", k.public.display())],
        None,
    );
    let (reference, digest) = digest_ref(&reg, repo, "v1");
    assert_encrypted(&registry_json(&reg, repo, &format!("manifests/{digest}")));
    let (key, public) = cosign_keys(&d.path().join("signer"));
    let (_, other_public) = cosign_keys(&d.path().join("other"));

    // skopeo 1.22 copies the image onto itself and signs it: the manifest
    // (still encrypted) keeps its digest, and that digest is what is signed.
    skopeo_sign(d.path(), &key, PASSWORD, &image, &image);
    assert_eq!(digest_ref(&reg, repo, "v1").1, digest);
    assert_encrypted(&registry_json(&reg, repo, &format!("manifests/{digest}")));

    // cosign's classic format under the `sha256-<hex>.sig` tag.
    let hex = digest.strip_prefix("sha256:").unwrap();
    let sig_tag = format!("sha256-{hex}.sig");
    let mut tags: Vec<String> = registry_json(&reg, repo, "tags/list")["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    tags.sort();
    assert_eq!(tags, [sig_tag.clone(), "v1".to_string()]);
    let sig = registry_json(&reg, repo, &format!("manifests/{sig_tag}"));
    assert_eq!(
        sig["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert_eq!(
        sig["config"]["mediaType"],
        "application/vnd.oci.image.config.v1+json"
    );
    let layers = sig["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1);
    assert_eq!(
        layers[0]["mediaType"],
        "application/vnd.dev.cosign.simplesigning.v1+json"
    );
    let annotations = layers[0]["annotations"].as_object().unwrap();
    assert_eq!(
        annotations.keys().collect::<Vec<_>>(),
        ["dev.cosignproject.cosign/signature"]
    );
    let payload_digest = layers[0]["digest"].as_str().unwrap();
    let payload = registry_get(&reg, repo, &format!("blobs/{payload_digest}"));
    assert_eq!(
        format!("sha256:{}", hex::encode(Sha256::digest(&payload))),
        payload_digest
    );
    let config = registry_get(
        &reg,
        repo,
        &format!("blobs/{}", sig["config"]["digest"].as_str().unwrap()),
    );
    let config: Value = serde_json::from_slice(&config).unwrap();
    assert_eq!(
        config["rootfs"],
        serde_json::json!({"type": "layers", "diff_ids": [payload_digest]})
    );
    let payload: Value = serde_json::from_slice(&payload).unwrap();
    // Unlike cosign and lazycrypt, skopeo names the tag it copied to.
    let identity = format!("{}/{repo}:v1", reg.addr);
    assert_eq!(
        payload["critical"]["identity"]["docker-reference"],
        identity
    );
    assert_eq!(
        payload["critical"]["image"]["docker-manifest-digest"],
        digest
    );
    assert_eq!(
        payload["critical"]["type"],
        "cosign container image signature"
    );
    assert!(
        payload["optional"]["creator"]
            .as_str()
            .unwrap()
            .starts_with("containers/image "),
        "{payload}"
    );

    // cosign accepts it with the signing key.
    let v = cosign_verify(d.path(), &public, Format::Classic, &reference);
    assert!(v.status.success(), "{}", stderr(&v));
    let claims: Value = serde_json::from_slice(&v.stdout).unwrap();
    assert_eq!(
        claims[0]["critical"]["image"]["docker-manifest-digest"],
        digest
    );
    let v = cosign_verify(d.path(), &other_public, Format::Classic, &reference);
    assert!(!v.status.success());

    // lazycrypt verify: accepted with the key, rejected with another.
    let scope = format!("{}/{repo}", reg.addr);
    let good = policy_file(d.path(), "good.json", &scope, &public, "matchRepository");
    let v = lazycrypt_verify(&image, &good);
    let out = stdout(&v);
    assert!(v.status.success(), "{out} {}", stderr(&v));
    assert!(
        out.contains(&format!(
            "of sigstoreSigned requirement 0, identity \"{identity}\", digest {digest}\n"
        )),
        "{out}"
    );
    assert!(
        out.ends_with(&format!("verdict: accepted {identity}@{digest} (signed)\n")),
        "{out}"
    );
    let bad = policy_file(
        d.path(),
        "bad.json",
        &scope,
        &other_public,
        "matchRepository",
    );
    let v = lazycrypt_verify(&image, &bad);
    let out = stdout(&v);
    assert_eq!(v.status.code(), Some(1), "{out}");
    let verdict = out.lines().last().unwrap();
    assert!(
        verdict.starts_with(&format!(
            "verdict: rejected: signature verification failed for {identity}@{digest}: signature layer {payload_digest}"
        )) && verdict.ends_with(": not signed by the trusted key"),
        "{out}"
    );
}

#[test]
fn the_tag_in_skopeos_signed_identity_matters_for_match_exact_as_in_skopeo() {
    let d = tmp();
    let reg = Registry::start();
    let (plain, k) = plain_image(d.path());
    let repo = "exact";
    let v1 = reg.image(&format!("{repo}:v1"));
    let v2 = reg.image(&format!("{repo}:v2"));
    skopeo_encrypt(&plain, &v1, &[format!("jwe:{}", k.public.display())], None);
    let (key, public) = cosign_keys(&d.path().join("signer"));
    skopeo_sign(d.path(), &key, PASSWORD, &v1, &v1);
    // v2: the same manifest under another tag (Debian's skopeo copies it
    // unchanged and leaves the signature tag alone).
    ok(skopeo().args([
        "copy",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        &v1,
        &v2,
    ]));
    let digest = digest_ref(&reg, repo, "v1").1;
    assert_eq!(digest_ref(&reg, repo, "v2").1, digest);

    let scope = format!("{}/{repo}", reg.addr);
    let signed = format!("{scope}:v1");
    for identity in ["matchRepository", "matchExact", "matchRepoDigestOrExact"] {
        let policy = policy_file(
            d.path(),
            &format!("{identity}.json"),
            &scope,
            &public,
            identity,
        );
        for (tag, image) in [("v1", &v1), ("v2", &v2)] {
            let expect_accepted = identity == "matchRepository" || tag == "v1";
            let v = lazycrypt_verify(image, &policy);
            let out = stdout(&v);
            let skopeo_out = d.path().join(format!("out-{identity}-{tag}"));
            let s = skopeo_copy_with_policy(d.path(), &policy, image, &skopeo_out);
            if expect_accepted {
                assert!(v.status.success(), "{identity} {tag}: {out}");
                assert!(s.status.success(), "{identity} {tag}: {}", stderr(&s));
            } else {
                assert_eq!(v.status.code(), Some(1), "{identity} {tag}: {out}");
                assert!(
                    out.lines().last().unwrap().ends_with(&format!(
                        "claims identity \"{signed}\", which the policy's signedIdentity does not accept"
                    )),
                    "{identity} {tag}: {out}"
                );
                assert!(!s.status.success(), "{identity} {tag}");
                assert!(
                    stderr(&s).contains(&format!(
                        "Source image rejected: Signature for identity \\\"{signed}\\\" is not accepted"
                    )),
                    "{identity} {tag}: {}",
                    stderr(&s)
                );
            }
        }
    }
}

#[test]
fn skopeo_accepts_lazycrypts_signature_with_the_signing_key_only() {
    let d = tmp();
    let reg = Registry::start();
    let (plain, k) = plain_image(d.path());
    let (key, public) = cosign_keys(&d.path().join("signer"));
    let (_, other_public) = cosign_keys(&d.path().join("other"));
    let pass = d.path().join("pass");
    std::fs::write(&pass, format!("{PASSWORD}\n")).unwrap();
    let repo = "lazy";
    let image = reg.image(&format!("{repo}:v1"));
    ok(lazycrypt()
        .args(["encrypt", "--plain-http", "--estargz", "-r"])
        .arg(format!("jwe:{}", k.public.display()))
        .arg("--sign-by-sigstore-private-key")
        .arg(&key)
        .arg("--sign-passphrase-file")
        .arg(&pass)
        .args([&plain, &image])
        .env_remove("COSIGN_PASSWORD"));
    let (_, digest) = digest_ref(&reg, repo, "v1");

    let scope = format!("{}/{repo}", reg.addr);
    let good = policy_file(d.path(), "good.json", &scope, &public, "matchRepository");
    let bad = policy_file(
        d.path(),
        "bad.json",
        &scope,
        &other_public,
        "matchRepository",
    );

    // Accepted: skopeo copies the ciphertext as it is (no keys given) and
    // keeps the signature beside it.
    let out = d.path().join("accepted");
    let s = skopeo_copy_with_policy(d.path(), &good, &image, &out);
    assert!(s.status.success(), "{}", stderr(&s));
    let manifest = std::fs::read(out.join("manifest.json")).unwrap();
    assert_eq!(
        format!("sha256:{}", hex::encode(Sha256::digest(&manifest))),
        digest
    );
    assert_encrypted(&serde_json::from_slice(&manifest).unwrap());
    assert!(out.join("signature-1").is_file());

    // Rejected before any manifest is written.
    let out = d.path().join("rejected");
    let s = skopeo_copy_with_policy(d.path(), &bad, &image, &out);
    assert!(!s.status.success());
    assert!(
        stderr(&s).contains(
            "Source image rejected: cryptographic signature verification failed: invalid signature when validating ASN.1 encoded signature"
        ),
        "{}",
        stderr(&s)
    );
    assert!(!out.join("manifest.json").exists());

    // lazycrypt signs the name as pushed, tag included, as skopeo does: the
    // policy podman and CRI-O users write without a signedIdentity (so
    // matchRepoDigestOrExact) accepts it, in skopeo and in lazycrypt.
    let default = policy_file(d.path(), "default.json", &scope, &public, "");
    let out = d.path().join("default");
    let s = skopeo_copy_with_policy(d.path(), &default, &image, &out);
    assert!(s.status.success(), "{}", stderr(&s));
    let v = lazycrypt_verify(&image, &default);
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
}

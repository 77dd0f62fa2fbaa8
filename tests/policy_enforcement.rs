//! `lazycrypt serve --policy` as the node's enforcement point: an encrypted
//! eStargz image signed by real cosign 3.1 with the policy's key is mounted
//! lazily; an unsigned image and one signed by another key are refused with
//! the verdict's one line before any of their blobs is fetched (counted at
//! a proxy in front of Debian's registry) or any key unwrapped (their key
//! is not on the node: the refusal is still the signature's). A changed
//! policy refuses new containers on a layer already mounted. `pull`,
//! `mount` and `decrypt` refuse an unsigned image with the same line.

#[macro_use]
mod common;

use std::collections::HashMap;
use std::path::Path;

use common::containerd::Daemon;
use common::faults::FaultProxy;
use common::signers::{
    Format, cosign_keys, cosign_sign, digest_ref, registry_get, registry_json, registry_put_blob,
    registry_put_manifest, write_signed_by_policy,
};
use common::snapshots::{code, connect, prepare_labelled as prepare};
use common::{Registry, fails, lazycrypt, ok, tmp};
use tonic::Code;

fn rt() -> tokio::runtime::Runtime {
    common::cri::rt()
}

/// What `lazycrypt pull` puts on a layer's Prepare: the layer, its image,
/// and the image's layers it may open ahead.
fn layer_labels(
    target: &str,
    image: &str,
    manifest: &str,
    layer: &str,
    all: &[String],
) -> HashMap<String, String> {
    [
        ("containerd.io/snapshot.ref", target),
        ("containerd.io/snapshot/lazycrypt.image-ref", image),
        ("containerd.io/snapshot/lazycrypt.manifest-digest", manifest),
        ("containerd.io/snapshot/lazycrypt.layer-digest", layer),
        (
            "containerd.io/snapshot/lazycrypt.image-layers",
            &all.join(","),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// An image pushed to `reg` as `REPO:v1`.
struct Pushed {
    repo: String,
    digest: String,
    config: String,
    layers: Vec<String>,
    /// The layers' chain IDs: their snapshots' names.
    chains: Vec<String>,
}

/// Encrypts the plain image `plain` as eStargz to `recipient` (`jwe:PUB`,
/// or `provider:testkp` through the keyprovider config `provider`) and
/// pushes it to `reg` as `repo:TAG`.
fn push(
    reg: &Registry,
    plain: &str,
    repo: &str,
    tag: &str,
    recipient: &str,
    provider: &Path,
) -> Pushed {
    ok(lazycrypt()
        .env("OCICRYPT_KEYPROVIDER_CONFIG", provider)
        .args([
            "encrypt",
            "--plain-http",
            "--estargz",
            "-r",
            recipient,
            plain,
        ])
        .arg(reg.image(&format!("{repo}:{tag}"))));
    let (_, digest) = digest_ref(reg, repo, tag);
    let m = registry_json(reg, repo, &format!("manifests/{tag}"));
    let config = m["config"]["digest"].as_str().unwrap().to_string();
    let layers: Vec<String> = m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect();
    let c = registry_json(reg, repo, &format!("blobs/{config}"));
    let diff_ids: Vec<String> = c["rootfs"]["diff_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap().to_string())
        .collect();
    Pushed {
        repo: repo.to_string(),
        digest,
        config,
        layers,
        chains: lazycrypt::containerd::pull::chain_ids(&diff_ids),
    }
}

fn read_through(opts: &str, target: &Path, file: &str) -> String {
    std::fs::create_dir_all(target).unwrap();
    ok(std::process::Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", opts])
        .arg(target));
    let got = std::fs::read_to_string(target.join(file));
    ok(std::process::Command::new("umount").arg(target));
    got.unwrap()
}

/// The signature manifest cosign's classic format keeps under `tag` in `repo`.
fn sig_manifest(reg: &Registry, repo: &str, tag: &str) -> serde_json::Value {
    registry_json(reg, repo, &format!("manifests/{tag}"))
}

/// The `.sig` tag of `p`'s digest.
fn sig_tag(p: &Pushed) -> String {
    format!("{}.sig", p.digest.replacen(':', "-", 1))
}

/// Replaces the blob of `m`'s layer 0 with `data` (uploaded to `repo`).
fn swap_layer0(reg: &Registry, repo: &str, m: &mut serde_json::Value, data: &[u8]) {
    let digest = registry_put_blob(reg, repo, data);
    m["layers"][0]["digest"] = digest.into();
    m["layers"][0]["size"] = data.len().into();
}

/// Images that are bad in each way the issue names, each in its own
/// repository, encrypted to the keyprovider double; `signer` is the
/// policy's key, `other` another. The expected end of each refusal.
fn bad_images(
    d: &Path,
    reg: &Registry,
    via: &str,
    plain: &str,
    provider: &Path,
    signer: &Path,
    other: &Path,
) -> Vec<(Pushed, String)> {
    let push = |repo: &str, tag: &str| push(reg, plain, repo, tag, "provider:testkp", provider);
    let at = |p: &Pushed| format!("{via}/{}@{}", p.repo, p.digest);
    let mut bad = Vec::new();

    let unsigned = push("unsigned/app", "v1");
    bad.push((
        unsigned,
        "no signatures found (the image is unsigned)".to_string(),
    ));

    let foreign = push("foreign/app", "v1");
    cosign_sign(d, other, Format::Bundle, &at(&foreign));
    bad.push((
        foreign,
        "bundle is not signed by the trusted key".to_string(),
    ));

    // A good signature of v0, put where v1's would be.
    let v0 = push("otherdigest/app", "v0");
    let moved = push("otherdigest/app", "v1");
    cosign_sign(d, signer, Format::Classic, &at(&v0));
    let m = sig_manifest(reg, "otherdigest/app", &sig_tag(&v0));
    registry_put_manifest(reg, "otherdigest/app", &sig_tag(&moved), &m);
    let why = format!("signs another manifest, {}", v0.digest);
    bad.push((moved, why));

    // The payload's bytes changed after signing.
    let tampered = push("tampered/app", "v1");
    cosign_sign(d, signer, Format::Classic, &at(&tampered));
    let mut m = sig_manifest(reg, "tampered/app", &sig_tag(&tampered));
    let layer = m["layers"][0]["digest"].as_str().unwrap().to_string();
    let mut payload = registry_get(reg, "tampered/app", &format!("blobs/{layer}"));
    payload.push(b' ');
    swap_layer0(reg, "tampered/app", &mut m, &payload);
    registry_put_manifest(reg, "tampered/app", &sig_tag(&tampered), &m);
    let layer = m["layers"][0]["digest"].as_str().unwrap().to_string();
    bad.push((
        tampered,
        format!("signature layer {layer}: not signed by the trusted key"),
    ));

    // The annotation holds another payload's signature by the right key.
    let annotated = push("annotation/app", "v1");
    cosign_sign(d, signer, Format::Classic, &at(&annotated));
    let mut m = sig_manifest(reg, "annotation/app", &sig_tag(&annotated));
    let theirs = sig_manifest(reg, "otherdigest/app", &sig_tag(&v0));
    let key = "dev.cosignproject.cosign/signature";
    m["layers"][0]["annotations"][key] = theirs["layers"][0]["annotations"][key].clone();
    registry_put_manifest(reg, "annotation/app", &sig_tag(&annotated), &m);
    let layer = m["layers"][0]["digest"].as_str().unwrap().to_string();
    bad.push((
        annotated,
        format!("signature layer {layer}: not signed by the trusted key"),
    ));

    // A bundle that is not one, listed where cosign lists bundles.
    let malformed = push("malformed/app", "v1");
    cosign_sign(d, signer, Format::Bundle, &at(&malformed));
    let index_tag = malformed.digest.replacen(':', "-", 1);
    let mut index = sig_manifest(reg, "malformed/app", &index_tag);
    let entry = index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let mut m = sig_manifest(reg, "malformed/app", &entry);
    swap_layer0(reg, "malformed/app", &mut m, br#"{"garbage":true}"#);
    let bundle_manifest = registry_put_manifest(reg, "malformed/app", "unused", &m);
    let size = serde_json::to_vec(&m).unwrap().len();
    index["manifests"][0]["digest"] = bundle_manifest.clone().into();
    index["manifests"][0]["size"] = size.into();
    registry_put_manifest(reg, "malformed/app", &index_tag, &index);
    bad.push((
        malformed,
        format!("bundle manifest {bundle_manifest}: bundle is malformed: "),
    ));

    // The .sig tag names an index: garbage where a signature manifest goes.
    let garbage = push("garbage/app", "v1");
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [],
    });
    registry_put_manifest(reg, "garbage/app", &sig_tag(&garbage), &index);
    let why = format!(
        "signature manifest {}: a \"application/vnd.oci.image.index.v1+json\", not an image manifest",
        sig_tag(&garbage)
    );
    bad.push((garbage, why));
    bad
}

#[test]
fn serve_mounts_only_images_the_policy_accepts_and_fetches_nothing_of_the_others() {
    let d = tmp();
    let reg = Registry::start();
    let proxy = FaultProxy::start(&reg.addr);
    let (signer, public) = cosign_keys(&d.path().join("signer"));
    let (other, _) = cosign_keys(&d.path().join("other"));
    // Every image's key is the keyprovider double's, which records each
    // call the daemon makes: a refused image must not reach it.
    let provider = common::keyprovider_config(d.path());
    let calls = d.path().join("keyprovider-calls");

    let src = d.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("marker"), "signed and encrypted\n").unwrap();
    let plain = format!("oci:{}/img:plain", d.path().display());
    common::build_dir(&src, &plain, &[]);
    let signed = push(
        &reg,
        &plain,
        "signed/app",
        "v1",
        "provider:testkp",
        &provider,
    );
    let reference = format!("{}/{}@{}", proxy.addr, signed.repo, signed.digest);
    cosign_sign(d.path(), &signer, Format::Bundle, &reference);
    let two = common::build_image(d.path(), "two", 2);
    let bad = bad_images(
        d.path(),
        &reg,
        &proxy.addr,
        &two,
        &provider,
        &signer,
        &other,
    );

    let policy = d.path().join("policy.json");
    write_signed_by_policy(&policy, &public);
    let keys = d.path().join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    let metrics = format!("127.0.0.1:{}", common::free_port());
    let mut args: Vec<String> = [
        "--keys-dir",
        keys.to_str().unwrap(),
        "--plain-http",
        &proxy.addr,
    ]
    .map(String::from)
    .to_vec();
    args.extend(["--metrics".into(), metrics.clone()]);
    let with_policy = |p: &Path| {
        let mut a = args.clone();
        a.extend(["--policy".to_string(), p.display().to_string()]);
        a
    };
    let env = [
        ("OCICRYPT_KEYPROVIDER_CONFIG", provider.as_path()),
        ("LAZYCRYPT_TEST_KEYPROVIDER_CALLS", calls.as_path()),
    ];
    let daemon = Daemon::start_with_env(d.path(), &with_policy(&policy), &env);
    let name = |p: &Pushed| format!("{}/{}:v1", proxy.addr, p.repo);
    let prefix = |p: &Pushed| {
        format!(
            "signature verification failed for {}@{}: ",
            name(p),
            p.digest
        )
    };

    rt().block_on(async {
        let c = &mut connect(&daemon.socket).await;
        let mut reasons = std::collections::HashSet::new();
        for (image, reason) in &bad {
            // Each layer, the bottom one opening the one above ahead.
            for (i, layer) in image.layers.iter().enumerate() {
                let labels = layer_labels(
                    &image.chains[i],
                    &name(image),
                    &image.digest,
                    layer,
                    &image.layers,
                );
                let (cd, msg) =
                    code(prepare(c, &format!("x-{}-{i}", image.repo), "", labels).await);
                assert_eq!(cd, Code::FailedPrecondition, "{msg}");
                let why = msg
                    .strip_prefix(&prefix(image))
                    .unwrap_or_else(|| panic!("{msg}"));
                assert!(
                    why.ends_with(reason.as_str()) || why.contains(reason.as_str()),
                    "{} refused with {msg:?}, not {reason:?}",
                    image.repo
                );
                assert!(!msg.contains('\n'), "{msg}");
                reasons.insert(why.to_string());
            }
        }
        // One distinct line per way of being bad.
        assert_eq!(reasons.len(), bad.len(), "{reasons:#?}");
        // Nothing of them was fetched: not their config, not one layer
        // byte (their manifests and signatures were), and no key of theirs
        // was unwrapped.
        let asked = proxy.requests();
        for (image, _) in &bad {
            for blob in image.layers.iter().chain([&image.config]) {
                let hit: Vec<_> = asked.iter().filter(|r| r.contains(blob.as_str())).collect();
                assert!(hit.is_empty(), "{} fetched: {hit:?}", image.repo);
            }
        }
        assert!(
            asked.iter().any(|r| r.contains("/unsigned/app/manifests/")),
            "{asked:?}"
        );
        assert!(!calls.exists(), "the keyprovider was asked: {calls:?}");

        // The daemon goes on serving the signed image.
        let l = signed.chains[0].clone();
        let labels = layer_labels(
            &l,
            &name(&signed),
            &signed.digest,
            &signed.layers[0],
            &signed.layers,
        );
        let (cd, msg) = code(prepare(c, "x-signed", "", labels).await);
        assert_eq!(cd, Code::AlreadyExists, "{msg}");
        let m = prepare(c, "c1", &l, HashMap::new()).await.unwrap();
        assert_eq!(
            read_through(&m[0], &d.path().join("rootfs"), "marker"),
            "signed and encrypted\n"
        );
        // Its key was unwrapped through the provider: the record works.
        let asked = std::fs::read_to_string(&calls).unwrap();
        assert!(
            asked.lines().count() >= 1 && asked.lines().all(|l| l == "keyunwrap"),
            "{asked}"
        );

        let page = common::http_get(&metrics, "/metrics");
        assert!(
            page.contains("lazycrypt_signature_verdicts_total{verdict=\"accepted\"} 1\n"),
            "{page}"
        );
        assert!(
            page.contains(&format!(
                "lazycrypt_signature_verdicts_total{{verdict=\"rejected\"}} {}\n",
                bad.len()
            )),
            "{page}"
        );
    });

    // A changed policy: new containers on the layer already mounted are
    // refused, with the verdict's line.
    daemon.kill();
    let reject = d.path().join("reject.json");
    std::fs::write(&reject, br#"{"default":[{"type":"reject"}]}"#).unwrap();
    let daemon = Daemon::start_with(d.path(), &with_policy(&reject));
    rt().block_on(async {
        let c = &mut connect(&daemon.socket).await;
        let (cd, msg) = code(prepare(c, "c2", &signed.chains[0], HashMap::new()).await);
        assert_eq!(cd, Code::FailedPrecondition, "{msg}");
        assert_eq!(
            msg,
            format!("{}rejected by policy scope default", prefix(&signed))
        );
    });
    // Its drop detaches the layer mount the keeper still holds: no daemon
    // may serve it under this policy.
    drop(daemon);
}

#[test]
fn pull_mount_and_decrypt_refuse_an_unsigned_image_with_the_verdicts_line() {
    let d = tmp();
    let reg = Registry::start();
    let (_, public) = cosign_keys(&d.path().join("signer"));
    let k = common::rsa_keys(d.path(), "k");
    let plain = common::build_image(d.path(), "one", 1);
    let cfg = common::keyprovider_config(d.path());
    let recipient = format!("jwe:{}", k.public.display());
    let image = push(&reg, &plain, "unsigned/app", "v1", &recipient, &cfg);
    let policy = d.path().join("policy.json");
    write_signed_by_policy(&policy, &public);
    let want = format!(
        "signature verification failed for {}/{}:v1@{}: no signatures found (the image is unsigned)",
        reg.addr, image.repo, image.digest
    );
    let name = format!("{}/{}:v1", reg.addr, image.repo);
    let docker = format!("docker://{name}");
    let policy = policy.to_str().unwrap();

    // No containerd here: without the check, pull fails connecting to it.
    let err = fails(lazycrypt().args([
        "pull",
        "--plain-http",
        "--policy",
        policy,
        "--address",
        "/nonexistent.sock",
        &name,
    ]));
    assert!(err.trim_end().ends_with(&want), "{err}");

    let mnt = d.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let err = fails(
        lazycrypt()
            .args(["mount", "--plain-http", "--policy", policy, "--key"])
            .arg(&k.private)
            .arg("--root")
            .arg(d.path().join("state"))
            .arg("--run-dir")
            .arg(d.path().join("run"))
            .arg(&docker)
            .arg(&mnt),
    );
    assert!(err.trim_end().ends_with(&want), "{err}");

    let out = format!("oci:{}/out:plain", d.path().display());
    let err = fails(
        lazycrypt()
            .args(["decrypt", "--plain-http", "--policy", policy, "--key"])
            .arg(&k.private)
            .args([&docker, &out]),
    );
    assert!(err.trim_end().ends_with(&want), "{err}");
    assert!(!d.path().join("out").join("index.json").exists());
}

/// `decrypt --policy` decrypts the manifest the verdict was given on: a
/// registry that answers the tag with the signed manifest first and an
/// unsigned one after gets the signed one decrypted, not the other.
#[test]
fn decrypt_reads_the_manifest_it_verified_once() {
    let d = tmp();
    let reg = Registry::start();
    let proxy = FaultProxy::start(&reg.addr);
    let (signer, public) = cosign_keys(&d.path().join("signer"));
    let k = common::rsa_keys(d.path(), "k");
    let cfg = common::keyprovider_config(d.path());
    let recipient = format!("jwe:{}", k.public.display());
    let one = common::build_image(d.path(), "one", 1);
    let two = common::build_image(d.path(), "two", 2);
    let signed = push(&reg, &one, "moving/app", "v1", &recipient, &cfg);
    push(&reg, &two, "moving/app", "evil", &recipient, &cfg);
    let at = format!("{}/moving/app@{}", proxy.addr, signed.digest);
    cosign_sign(d.path(), &signer, Format::Classic, &at);
    let policy = d.path().join("policy.json");
    write_signed_by_policy(&policy, &public);

    proxy.swap_after_first("/moving/app/manifests/v1", "/moving/app/manifests/evil");
    let out = format!("oci:{}/out:plain", d.path().display());
    ok(lazycrypt()
        .args(["decrypt", "--plain-http", "--policy"])
        .arg(&policy)
        .arg("--key")
        .arg(&k.private)
        .arg(format!("docker://{}/moving/app:v1", proxy.addr))
        .arg(&out));
    // The signed image has one layer; the one swapped in, two.
    assert_eq!(common::layer_digests(&out).len(), 1);
}

/// A policy lazycrypt cannot enforce stops `serve` at start, with one line
/// naming the file and the JSON path, never ignored: an unknown requirement
/// type (`--policy`), a syntax error (the config file's `policy`).
#[test]
fn serve_refuses_to_start_with_a_policy_it_cannot_enforce() {
    let d = tmp();
    let unknown = d.path().join("unknown.json");
    std::fs::write(&unknown, br#"{"default":[{"type":"signedByX"}]}"#).unwrap();
    let broken = d.path().join("broken.json");
    std::fs::write(&broken, br#"{"default": ["#).unwrap();
    let config = d.path().join("config.toml");
    std::fs::write(
        &config,
        format!("policy = {:?}\n", broken.display().to_string()),
    )
    .unwrap();
    let serve = |extra: &[&std::ffi::OsStr]| {
        let mut c = lazycrypt();
        c.arg("serve")
            .arg("--root")
            .arg(d.path().join("root"))
            .arg("--address")
            .arg(d.path().join("lz.sock"))
            .args(extra)
            .stdin(std::process::Stdio::null());
        c
    };
    let err = fails(&mut serve(&["--policy".as_ref(), unknown.as_os_str()]));
    assert!(
        err.trim_end().ends_with(&format!(
            "policy {}: default[0]: unknown requirement type \"signedByX\"",
            unknown.display()
        )),
        "{err}"
    );
    let err = fails(&mut serve(&["--config".as_ref(), config.as_os_str()]));
    assert!(
        err.trim_end().ends_with(&format!(
            "policy {}: EOF while parsing a list at line 1 column 13",
            broken.display()
        )),
        "{err}"
    );
    assert!(!d.path().join("lz.sock").exists());
}

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
use common::signers::{Format, cosign_keys, cosign_sign, digest_ref, registry_json};
use common::{Registry, fails, lazycrypt, ok, tmp};
use lazycrypt::containerd::proto::snapshots as pb;
use pb::snapshots_client::SnapshotsClient;
use tonic::Code;
use tonic::transport::Channel;

type Client = SnapshotsClient<Channel>;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn connect(socket: &Path) -> Client {
    let c = lazycrypt::containerd::client::Client::connect(socket, "unused")
        .await
        .unwrap();
    SnapshotsClient::new(c.channel)
}

/// A Prepare: the mounts' options, or the refusal.
async fn prepare(
    c: &mut Client,
    key: &str,
    parent: &str,
    labels: HashMap<String, String>,
) -> Result<Vec<String>, tonic::Status> {
    let r = c
        .prepare(pb::PrepareSnapshotRequest {
            key: key.into(),
            parent: parent.into(),
            labels,
            ..Default::default()
        })
        .await?;
    Ok(r.into_inner()
        .mounts
        .iter()
        .map(|m| m.options.join(","))
        .collect())
}

fn code<T: std::fmt::Debug>(r: Result<T, tonic::Status>) -> (Code, String) {
    let e = r.unwrap_err();
    (e.code(), e.message().to_string())
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

/// Encrypts the plain image `plain` as eStargz to `public` and pushes it to
/// `reg` as `repo:v1`.
fn push(reg: &Registry, plain: &str, repo: &str, public: &Path) -> Pushed {
    common::encrypt_estargz(plain, &reg.image(&format!("{repo}:v1")), public);
    let (_, digest) = digest_ref(reg, repo, "v1");
    let m = registry_json(reg, repo, "manifests/v1");
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

/// A policy accepting only images signed by `public`, for their repository.
fn signed_by(path: &Path, public: &Path) {
    let p = serde_json::json!({
        "default": [{"type": "sigstoreSigned", "keyPath": public,
                     "signedIdentity": {"type": "matchRepository"}}],
    });
    std::fs::write(path, serde_json::to_vec(&p).unwrap()).unwrap();
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

fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.split_once("\r\n\r\n").unwrap().1.to_string()
}

#[test]
fn serve_mounts_only_images_the_policy_accepts_and_fetches_nothing_of_the_others() {
    let d = tmp();
    let reg = Registry::start();
    let proxy = FaultProxy::start(&reg.addr);
    let (signer, public) = cosign_keys(&d.path().join("signer"));
    let (other, _) = cosign_keys(&d.path().join("other"));
    // The node holds `k`; the refused images are encrypted to `k2`, which
    // it does not: had a key been looked for, the refusal would say so.
    let k = common::rsa_keys(d.path(), "k");
    let k2 = common::rsa_keys(d.path(), "k2");

    let src = d.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("marker"), "signed and encrypted\n").unwrap();
    let plain = format!("oci:{}/img:plain", d.path().display());
    common::build_dir(&src, &plain, &[]);
    let signed = push(&reg, &plain, "signed/app", &k.public);
    let two = common::build_image(d.path(), "two", 2);
    let unsigned = push(&reg, &two, "unsigned/app", &k2.public);
    let foreign = push(&reg, &two, "foreign/app", &k2.public);
    for (key, image) in [(&signer, &signed), (&other, &foreign)] {
        let reference = format!("{}/{}@{}", reg.addr, image.repo, image.digest);
        cosign_sign(d.path(), key, Format::Bundle, &reference);
    }

    let policy = d.path().join("policy.json");
    signed_by(&policy, &public);
    let keys = d.path().join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    std::fs::copy(&k.private, keys.join("k.pem")).unwrap();
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
    let daemon = Daemon::start_with(d.path(), &with_policy(&policy));
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
        for (image, reason) in [
            (&unsigned, "no signatures found (the image is unsigned)"),
            (&foreign, "bundle is not signed by the trusted key"),
        ] {
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
                assert!(
                    msg.starts_with(&prefix(image)) && msg.ends_with(reason),
                    "{msg}"
                );
                assert!(!msg.contains('\n'), "{msg}");
            }
        }
        // Nothing of them was fetched: not their config, not one layer
        // byte (their manifests and signatures were).
        let asked = proxy.requests();
        for image in [&unsigned, &foreign] {
            for blob in image.layers.iter().chain([&image.config]) {
                let hit: Vec<_> = asked.iter().filter(|r| r.contains(blob.as_str())).collect();
                assert!(hit.is_empty(), "{} fetched: {hit:?}", image.repo);
            }
        }
        assert!(
            asked.iter().any(|r| r.contains("/unsigned/app/manifests/")),
            "{asked:?}"
        );

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

        let page = http_get(&metrics, "/metrics");
        assert!(
            page.contains("lazycrypt_signature_verdicts_total{verdict=\"accepted\"} 1\n"),
            "{page}"
        );
        assert!(
            page.contains("lazycrypt_signature_verdicts_total{verdict=\"rejected\"} 2\n"),
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
    let image = push(&reg, &plain, "unsigned/app", &k.public);
    let policy = d.path().join("policy.json");
    signed_by(&policy, &public);
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

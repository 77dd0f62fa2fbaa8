//! A node whose lazycrypt enforces a `sigstoreSigned` policy, through
//! containerd as users run it (1.6, 2.1 with the transfer service, 2.1 with
//! CRI's local pull): encrypted images (lazycrypt's eStargz, skopeo's
//! tar.gz) signed by real cosign 3.1 (v3 bundle, classic) and skopeo 1.22
//! run lazily through `lazycrypt pull` + `ctr run` and through a kubelet's
//! CRI `PullImage`; an unsigned image is refused on both paths with the
//! verdict's line, and none of its layer bytes is fetched.

#[macro_use]
mod common;

use std::path::Path;

use common::containerd::{Containerd, Daemon, Line};
use common::faults::FaultProxy;
use common::signers::{
    Format, PASSWORD, cosign_keys, cosign_sign, digest_ref, registry_json, skopeo_sign,
    write_signed_by_policy,
};
use common::{Registry, lazycrypt, ok, run, tmp};

/// Who encrypts an image and who signs it.
#[derive(Clone, Copy)]
enum Signer {
    CosignBundle,
    CosignClassic,
    Skopeo,
    Nobody,
}

/// The images, as `(repository, encrypted as eStargz by lazycrypt (or as
/// tar.gz by Debian's skopeo), signer)`. Each has a layer of its own: a
/// layer the node already holds under a signed image's chain ID is never
/// prepared again, so containerd would ask for no verdict.
const IMAGES: [(&str, bool, Signer); 5] = [
    ("signed/esgz-bundle", true, Signer::CosignBundle),
    ("signed/targz-classic", false, Signer::CosignClassic),
    ("signed/esgz-skopeo", true, Signer::Skopeo),
    ("signed/targz-skopeo", false, Signer::Skopeo),
    ("unsigned/esgz", true, Signer::Nobody),
];

/// Builds, encrypts to `public` and pushes [`IMAGES`] (`busybox` plus a
/// secret holding `marker`), then signs each under the name the node pulls
/// it by (`via`'s). The plaintext inputs are deleted once pushed. Their
/// references as pulled.
fn images(
    dir: &Path,
    reg: &Registry,
    via: &dyn Fn(&str) -> String,
    marker: &str,
    public: &Path,
    signer: &Path,
) -> Vec<String> {
    let inputs = dir.join("inputs");
    let root = inputs.join("rootfs");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::create_dir_all(root.join("data")).unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    std::fs::write(
        root.join("data/secret"),
        format!("the secret is {marker}\n"),
    )
    .unwrap();
    let mut pulled = Vec::new();
    for (i, (repo, estargz, who)) in IMAGES.into_iter().enumerate() {
        std::fs::write(root.join("data/variant"), repo).unwrap();
        let plain = format!("oci:{}:v{i}", inputs.join("img").display());
        ok(lazycrypt()
            .args(["build", "--cmd", "/bin/busybox", "--layer"])
            .arg(&root)
            .args(["--", &plain]));
        let image = reg.image(&format!("{repo}:v1"));
        if estargz {
            common::encrypt_estargz(&plain, &image, public);
        } else {
            common::skopeo_encrypt(&plain, &image, &[format!("jwe:{}", public.display())], None);
        }
        let (by_digest, _) = digest_ref(reg, repo, "v1");
        let name = via(&format!("{}/{repo}:v1", reg.addr));
        match who {
            Signer::CosignBundle => cosign_sign(dir, signer, Format::Bundle, &via(&by_digest)),
            Signer::CosignClassic => cosign_sign(dir, signer, Format::Classic, &via(&by_digest)),
            Signer::Skopeo => {
                let at = format!("docker://{name}");
                skopeo_sign(dir, signer, PASSWORD, &at, &at);
            }
            Signer::Nobody => {}
        }
        pulled.push(name);
    }
    std::fs::remove_dir_all(&inputs).unwrap();
    pulled
}

/// The layer digests of `repo:v1`.
fn layers(reg: &Registry, repo: &str) -> Vec<String> {
    registry_json(reg, repo, "manifests/v1")["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect()
}

on_lines!(a_signed_encrypted_image_runs_and_an_unsigned_one_is_refused_through_containerd: V1_6, V2_1, V2_1Local);
fn a_signed_encrypted_image_runs_and_an_unsigned_one_is_refused_through_containerd(line: Line) {
    let d = tmp();
    let reg = Registry::start();
    let (signer, public) = cosign_keys(&d.path().join("signer"));
    let k = common::rsa_keys(d.path(), "k");
    let marker = format!("LZSIGNED{}", std::process::id());
    // containerd and lazycrypt reach the registry through a proxy that
    // records each request; images are signed under that name.
    let proxy = FaultProxy::start(&reg.addr);
    let via = |image: &str| image.replacen(&reg.addr, &proxy.addr, 1);
    let mut pulled = images(d.path(), &reg, &via, &marker, &k.public, &signer);
    let unsigned = pulled.pop().unwrap();
    let signed = pulled;
    let unsigned_digest = digest_ref(&reg, "unsigned/esgz", "v1").1;
    let unsigned_layers = layers(&reg, "unsigned/esgz");
    let policy = d.path().join("policy.json");
    write_signed_by_policy(&policy, &public);
    let (_keys, mut args) = common::keys_dir_args(d.path(), &k.private, &proxy.addr);
    args.extend(["--policy".to_string(), policy.display().to_string()]);
    let daemon = Daemon::start_with(d.path(), &args);
    let ctd = Containerd::start_on(line, d.path(), &daemon.socket, Some(&proxy.addr));
    let refusal = format!(
        "signature verification failed for {unsigned}@{unsigned_digest}: no signatures found (the image is unsigned)"
    );

    // A kubelet's path: CRI pulls, then containers read the secret.
    let cat = |ns: &str, image: &str, id: &str| {
        ctd.run_in(ns, image, id, &["/bin/busybox", "cat", "/data/secret"])
    };
    for (i, image) in signed.iter().enumerate() {
        ctd.cri_pull(image)
            .unwrap_or_else(|e| panic!("CRI pull of {image}: {e}\n{}", daemon.log()));
        let out = cat("k8s.io", image, &format!("cri{i}"));
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains(&marker),
            "{out:?}\n{}",
            daemon.log()
        );
    }
    // Each image's one layer was mounted by lazycrypt (eStargz lazily,
    // tar.gz through its index), not unpacked by containerd.
    let log = daemon.log();
    let mounted = log.matches("mounted (Lazy)").count() + log.matches("mounted (Indexed)").count();
    assert_eq!(mounted, signed.len(), "{log}");
    let err = ctd.cri_pull(&unsigned).unwrap_err();
    assert!(err.message().contains(&refusal), "{err:?}");

    // `lazycrypt pull` + `ctr run` (not CRI's, so once per containerd).
    if line != Line::V2_1Local {
        for (i, image) in signed.iter().enumerate() {
            let out = ok(ctd.lazycrypt_pull().arg(image));
            assert!(out.contains("1 layers mounted lazily"), "{out}");
            let out = cat(line.namespace(), image, &format!("ctr{i}"));
            assert!(
                out.status.success() && String::from_utf8_lossy(&out.stdout).contains(&marker),
                "{out:?}\n{}",
                daemon.log()
            );
        }
        let out = run(ctd.lazycrypt_pull().arg(&unsigned));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(&refusal), "{out:?}");
    }

    // `ctr images pull` (in a namespace of its own, where no layer is
    // held yet): on 1.6 it names no image for the layers, so under a policy
    // they are refused rather than unpacked by containerd unverified; 2.1's
    // transfer service names them, and the verdict applies.
    let ctr_pull = |image: &str| {
        run(ctd.ctr_in("ctr-pull").args([
            "images",
            "pull",
            "--plain-http",
            "--snapshotter",
            "lazycrypt",
            image,
        ]))
    };
    let out = ctr_pull(&signed[0]);
    let err = String::from_utf8_lossy(&out.stderr);
    match line {
        Line::V1_6 => assert!(
            !out.status.success()
                && err.contains("a signature policy is set, but no labels name this layer's image"),
            "{out:?}\n{}",
            daemon.log()
        ),
        Line::V2_1 | Line::V2_1Local => {
            assert!(out.status.success(), "{out:?}\n{}", daemon.log());
            let out = ctr_pull(&unsigned);
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success() && err.contains(&refusal), "{out:?}");
        }
    }

    // Nothing of the unsigned image's layer was fetched, by containerd or
    // by lazycrypt: its manifest and signature tag were asked for, its
    // blobs never.
    let asked = proxy.requests();
    for blob in &unsigned_layers {
        let hit: Vec<_> = asked.iter().filter(|r| r.contains(blob.as_str())).collect();
        assert!(hit.is_empty(), "unsigned layer fetched: {hit:?}");
    }
    assert!(
        asked
            .iter()
            .any(|r| r.contains("/unsigned/esgz/manifests/")),
        "{asked:?}"
    );
    // No plaintext at rest under the test's directory, nor in the log.
    common::mounts::assert_not_at_rest(d.path(), &marker, &daemon.log());
    drop(ctd);
    daemon.stop();
}

//! `lazycrypt index` (docs/seek-index.md): skopeo-encrypted tar.gz images,
//! unchanged, gain a sealed seek index beside them and start lazily; every
//! artifact that does not fit the image falls back to the whole blob.

mod common;

use common::mounts::{CountingProxy, mount_with_env};
use common::*;
use serde_json::Value;

/// skopeo with an empty GNUPGHOME: it uses the key files it is given.
fn skopeo_in(home: &std::path::Path) -> std::process::Command {
    let mut c = skopeo();
    c.env("GNUPGHOME", home);
    c
}

/// The manifest digest of a registry image, as skopeo reads it.
fn digest_of(image: &str) -> String {
    let out = ok(skopeo().args(["inspect", "--tls-verify=false", "--raw", image]));
    format!(
        "sha256:{}",
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(out.as_bytes()))
    )
}

fn registry_json(addr: &str, path: &str) -> Value {
    serde_json::from_str(&http_get(addr, path)).unwrap_or(Value::Null)
}

#[test]
fn skopeo_images_indexed_keep_their_digest_and_read_a_small_file_lazily() {
    let d = tmp();
    let reg = Registry::start();
    let src = d.path().join("src");
    for dir in ["a-weights", "m", "z-weights"] {
        std::fs::create_dir_all(src.join(dir)).unwrap();
    }
    let data = noise(200 << 20);
    for (i, part) in data.chunks(8 << 20).enumerate() {
        let dir = if i < 13 { "a-weights" } else { "z-weights" };
        std::fs::write(src.join(dir).join(format!("w{i:02}.bin")), part).unwrap();
    }
    let small: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(src.join("m/config.bin"), &small).unwrap();
    let plain = format!("oci:{}:plain", d.path().join("img").display());
    build_dir(&src, &plain, &[]);
    // Three recipients, one per scheme: any one key indexes and mounts it.
    let rsa = rsa_keys(d.path(), "rsa");
    let cms = rsa_keys(d.path(), "cms");
    let (pgp_home, uid, _pgp_pub, pgp_sec) = pgp_keys(d.path(), "pgp");
    let image = reg.image("seek/big:v1");
    let home = tmp();
    // skopeo finds PGP recipients by user ID in its keyring.
    ok(skopeo_in(&pgp_home).args([
        "copy",
        "--dest-tls-verify=false",
        "--encryption-key",
        &format!("jwe:{}", rsa.public.display()),
        "--encryption-key",
        &format!("pkcs7:{}", cms.cert.display()),
        "--encryption-key",
        &format!("pgp:{uid}"),
        &plain,
        &image,
    ]));
    let before = digest_of(&image);

    let out = ok(lazycrypt()
        .args(["index", "--plain-http", "--key"])
        .arg(&pgp_sec)
        .arg(&image));
    assert!(out.contains("published seek index"), "{out}");
    // The image is the same image: digest, tag, what skopeo reads.
    assert_eq!(digest_of(&image), before);
    ok(skopeo().args(["inspect", "--tls-verify=false", &image]));
    let dec = format!("oci:{}:dec", d.path().join("dec").display());
    ok(skopeo_in(home.path())
        .args(["copy", "--src-tls-verify=false", "--decryption-key"])
        .arg(&cms.private)
        .arg("--decryption-key")
        .arg(&cms.cert)
        .args([&image, &dec]));
    assert_eq!(layer_digests(&dec), layer_digests(&plain));
    // Debian's registry has no referrers API: the artifact is listed under
    // the fallback tag, with our artifactType and the image as subject.
    let tag = before.replace(':', "-");
    let listed = registry_json(&reg.addr, &format!("/v2/seek/big/manifests/{tag}"));
    let entry = &listed["manifests"][0];
    assert_eq!(
        entry["artifactType"], "application/vnd.lazycrypt.seek-index.v1",
        "{listed}"
    );
    let artifact = registry_json(
        &reg.addr,
        &format!(
            "/v2/seek/big/manifests/{}",
            entry["digest"].as_str().unwrap()
        ),
    );
    assert_eq!(artifact["subject"]["digest"], before.as_str());
    let layer_size: u64 = layout_manifest(&dec)["layers"][0]["size"].as_u64().unwrap();
    let artifact_size: u64 = artifact["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["size"].as_u64().unwrap())
        .sum();
    assert!(
        artifact_size * 50 < layer_size,
        "the artifact ({artifact_size} bytes) is over 2% of the layer ({layer_size})"
    );

    // A 4 KiB file of the 200 MiB image, through a proxy that counts.
    let proxy = CountingProxy::start(&reg.addr);
    let mnt = d.path().join("mnt");
    let m = mount_with_env(
        &format!("docker://{}/seek/big:v1", proxy.addr),
        &mnt,
        &d.path().join("state"),
        &[
            "--plain-http",
            "--key",
            rsa.private.to_str().unwrap(),
            "--stats",
        ],
        &[("LAZYCRYPT_LOG", std::path::Path::new("info"))],
    )
    .unwrap();
    assert_eq!(std::fs::read(mnt.join("m/config.bin")).unwrap(), small);
    let served = proxy.served();
    assert!(
        served < 3 << 20,
        "the registry served {served} bytes to read 4 KiB of a 200 MiB indexed image: {}",
        m.log()
    );
    // Whole files read right, far from any checkpoint too.
    let w = std::fs::read(mnt.join("z-weights/w20.bin")).unwrap();
    assert!(w[..] == data[20 << 23..21 << 23]);
    let (out, _) = m.umount();
    assert!(out.contains("1 seek-indexed"), "{out}");
}

#[test]
fn index_says_in_one_line_why_it_indexes_nothing() {
    let d = tmp();
    let plain = build_image(d.path(), "plain", 1);
    let e = fails(lazycrypt().args(["index", &plain]));
    assert_eq!(e.lines().count(), 1, "{e}");
    assert!(e.contains("no encrypted layers to index"), "{e}");
    let k = rsa_keys(d.path(), "k");
    let other = rsa_keys(d.path(), "other");
    let enc = format!("oci:{}:enc", d.path().join("img").display());
    skopeo_encrypt(&plain, &enc, &[format!("jwe:{}", k.public.display())], None);
    let e = fails(
        lazycrypt()
            .args(["index", "--key"])
            .arg(&other.private)
            .arg(&enc),
    );
    assert_eq!(e.lines().count(), 1, "{e}");
    assert!(
        e.contains("missing private key needed for decryption"),
        "{e}"
    );
}

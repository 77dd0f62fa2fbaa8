//! `lazycrypt index` (docs/seek-index.md): skopeo-encrypted tar.gz images,
//! unchanged, gain a sealed seek index beside them and start lazily; every
//! artifact that does not fit the image falls back to the whole blob.

mod common;

use common::mounts::{CountingProxy, mount_with_env};
use common::signers::{
    digest_ref, registry_get, registry_json, registry_put_blob, registry_put_manifest,
};
use common::*;
use serde_json::json;

/// skopeo with an empty GNUPGHOME: it uses the key files it is given.
fn skopeo_in(home: &std::path::Path) -> std::process::Command {
    let mut c = skopeo();
    c.env("GNUPGHOME", home);
    c
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
    let (_, before) = digest_ref(&reg, "seek/big", "v1");

    let out = ok(lazycrypt()
        .args(["index", "--plain-http", "--key"])
        .arg(&pgp_sec)
        .arg(&image));
    assert!(out.contains("published seek index"), "{out}");
    // Made again with the start-up file listed for nodes to fetch as they
    // mount: nodes take this newer artifact (the mount below prefetches).
    let start_up = d.path().join("start-up.txt");
    std::fs::write(&start_up, "/m/config.bin\n").unwrap();
    let out = ok(lazycrypt()
        .args(["index", "--plain-http", "--force", "--prioritize"])
        .arg(&start_up)
        .arg("--key")
        .arg(&pgp_sec)
        .arg(&image));
    assert!(out.contains("published seek index"), "{out}");
    assert!(out.contains("(1 prioritized)"), "{out}");
    // The image is the same image: digest, tag, what skopeo reads.
    assert_eq!(digest_ref(&reg, "seek/big", "v1").1, before);
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
    let listed = registry_json(&reg, "seek/big", &format!("manifests/{tag}"));
    assert_eq!(listed["manifests"].as_array().unwrap().len(), 2, "{listed}");
    let entry = &listed["manifests"][0];
    assert_eq!(
        entry["artifactType"], "application/vnd.lazycrypt.seek-index.v1",
        "{listed}"
    );
    let artifact = registry_json(
        &reg,
        "seek/big",
        &format!("manifests/{}", entry["digest"].as_str().unwrap()),
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
        &[("LAZYCRYPT_LOG", std::path::Path::new("debug"))],
    )
    .unwrap();
    // Fetched at mount, before any read: reading it then fetches nothing.
    wait_until(
        std::time::Duration::from_secs(120),
        || m.log().contains("prefetched 1 chunks"),
        || format!("no prefetch: {}", m.log()),
    );
    let prefetched = proxy.served();
    assert_eq!(std::fs::read(mnt.join("m/config.bin")).unwrap(), small);
    let served = proxy.served();
    assert_eq!(served, prefetched, "the prefetched file was fetched again");
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

/// `repo:tag`'s artifact (the first its fallback tag lists) made a
/// referrer of `subject` instead, its head replaced by `head` (if given)
/// and naming `layer` (if given): what anyone who can push to the
/// repository, or a co-recipient, could publish.
fn republish(
    reg: &Registry,
    repo: &str,
    from: &str,
    subject: &str,
    head: Option<Vec<u8>>,
    layer: Option<&str>,
) {
    let listed = registry_json(reg, repo, &format!("manifests/{}", from.replace(':', "-")));
    let mut art = registry_json(
        reg,
        repo,
        &format!(
            "manifests/{}",
            listed["manifests"][0]["digest"].as_str().unwrap()
        ),
    );
    let raw = registry_get(reg, repo, &format!("manifests/{subject}"));
    art["subject"] = json!({
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": subject,
        "size": raw.len(),
    });
    for l in art["layers"].as_array_mut().unwrap() {
        if let Some(layer) = layer {
            l["annotations"]["vnd.lazycrypt.seek-index.layer"] = json!(layer);
        }
        if let (Some(h), true) = (
            &head,
            l["mediaType"].as_str().unwrap().ends_with(".head.v1"),
        ) {
            l["digest"] = json!(registry_put_blob(reg, repo, h));
            l["size"] = json!(h.len());
        }
    }
    let digest = registry_put_manifest(reg, repo, "latest-artifact", &art);
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest,
            "size": serde_json::to_vec(&art).unwrap().len(),
            "artifactType": "application/vnd.lazycrypt.seek-index.v1",
        }],
    });
    registry_put_manifest(reg, repo, &subject.replace(':', "-"), &index);
}

/// The image mounted, the artifact's subject, its replacement head, the
/// layer it claims, the layer that falls back, and why.
type Case<'a> = (
    &'a str,
    &'a str,
    Option<Vec<u8>>,
    Option<&'a str>,
    &'a str,
    &'a str,
);

#[test]
fn artifacts_that_do_not_fit_the_image_fall_back_to_the_whole_blob_and_say_why() {
    let d = tmp();
    let reg = Registry::start();
    let src = d.path().join("src");
    std::fs::create_dir_all(src.join("m")).unwrap();
    let data = noise(6 << 20);
    std::fs::write(src.join("a.bin"), &data).unwrap();
    std::fs::write(src.join("m/t.txt"), b"the marker\n").unwrap();
    let plain = format!("oci:{}:plain", d.path().join("img").display());
    build_dir(&src, &plain, &[]);
    let k = rsa_keys(d.path(), "k");
    let recipient = [format!("jwe:{}", k.public.display())];
    let key = k.private.to_str().unwrap();
    // A: indexed. B: the same files encrypted again (other layer keys).
    for tag in ["a", "b"] {
        skopeo_encrypt(
            &plain,
            &reg.image(&format!("seek/x:{tag}")),
            &recipient,
            None,
        );
    }
    ok(lazycrypt().args([
        "index",
        "--plain-http",
        "--key",
        key,
        &reg.image("seek/x:a"),
    ]));
    let (_, a) = digest_ref(&reg, "seek/x", "a");
    let (_, b) = digest_ref(&reg, "seek/x", "b");
    let manifest_a = registry_json(&reg, "seek/x", &format!("manifests/{a}"));
    let layer_a = manifest_a["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let layer_b = registry_json(&reg, "seek/x", &format!("manifests/{b}"))["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    // C: image A's layers under another manifest (an annotation more).
    let mut c_doc = manifest_a.clone();
    c_doc["annotations"] = json!({"another": "image"});
    let c = registry_put_manifest(&reg, "seek/x", "c", &c_doc);
    let head_a = {
        let listed = registry_json(
            &reg,
            "seek/x",
            &format!("manifests/{}", a.replace(':', "-")),
        );
        let art = registry_json(
            &reg,
            "seek/x",
            &format!(
                "manifests/{}",
                listed["manifests"][0]["digest"].as_str().unwrap()
            ),
        );
        registry_get(
            &reg,
            "seek/x",
            &format!("blobs/{}", art["layers"][0]["digest"].as_str().unwrap()),
        )
    };
    let mut flipped = head_a.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 1;
    let cases: Vec<Case> = vec![
        // Made for A's layer: B's layer is not in it.
        ("b", &b, None, None, &layer_b, "no seek index lists it"),
        // Names B's layer, sealed under A's key (a wrong key).
        (
            "b",
            &b,
            None,
            Some(&layer_b),
            &layer_b,
            "does not open under this layer's key",
        ),
        // A's own index, for an image that shares A's layer: bound to A.
        (
            "c",
            &c,
            None,
            None,
            &layer_a,
            "does not open under this layer's key",
        ),
        // Tampered and truncated heads.
        (
            "c",
            &c,
            Some(flipped),
            None,
            &layer_a,
            "does not open under this layer's key",
        ),
        (
            "c",
            &c,
            Some(head_a[..head_a.len() - 100].to_vec()),
            None,
            &layer_a,
            "not a sealed head",
        ),
    ];
    for (i, (tag, subject, head, names, layer, why)) in cases.into_iter().enumerate() {
        republish(&reg, "seek/x", &a, subject, head, names);
        let mnt = d.path().join(format!("mnt{i}"));
        let image = reg.image(&format!("seek/x:{tag}"));
        let m = mount_with_env(
            &image,
            &mnt,
            &d.path().join(format!("state{i}")),
            &["--plain-http", "--key", key, "--stats"],
            &[("LAZYCRYPT_LOG", std::path::Path::new("info"))],
        )
        .unwrap();
        assert_eq!(std::fs::read(mnt.join("m/t.txt")).unwrap(), b"the marker\n");
        assert!(
            std::fs::read(mnt.join("a.bin")).unwrap() == data,
            "case {i}"
        );
        let log = m.log();
        let (out, _) = m.umount();
        assert!(out.contains("1 indexed"), "case {i}: {out}");
        let line = log
            .lines()
            .find(|l| l.contains(&format!("layer {layer}: ")) && l.contains("seek index"))
            .unwrap_or_else(|| panic!("case {i}: no line for {layer}: {log}"));
        assert!(line.contains(why), "case {i}: {line}");
        assert!(!line.contains("t.txt") && !line.contains("a.bin"), "{line}");
    }
    // A's own artifact still serves A.
    let mnt = d.path().join("mnt-a");
    let m = mount_with_env(
        &reg.image("seek/x:a"),
        &mnt,
        &d.path().join("state-a"),
        &["--plain-http", "--key", key, "--stats"],
        &[],
    )
    .unwrap();
    assert_eq!(std::fs::read(mnt.join("m/t.txt")).unwrap(), b"the marker\n");
    let (out, _) = m.umount();
    assert!(out.contains("1 seek-indexed"), "{out}");
}

//! ocicrypt interoperability with skopeo (Go ocicrypt), both directions, on
//! OCI layouts: layer digests after decryption equal the originals'.

mod common;

use common::*;

/// skopeo with an empty GNUPGHOME: it must use the key files it is given.
fn skopeo_decrypt(src: &str, dst: &str, keys: &[&std::path::Path]) {
    let home = tmp();
    let mut c = skopeo();
    c.env("GNUPGHOME", home.path()).arg("copy");
    ok(with_keys(&mut c, "--decryption-key", keys)
        .arg(src)
        .arg(dst));
}

fn lc_decrypt(src: &str, dst: &str, keys: &[&std::path::Path]) {
    let mut c = lazycrypt();
    c.arg("decrypt");
    ok(with_keys(&mut c, "--key", keys).arg(src).arg(dst));
}

fn assert_all_encrypted(image: &str) {
    for t in layer_types(image) {
        assert!(t.ends_with("+encrypted"), "{image}: layer type {t}");
    }
}

#[test]
fn skopeo_jwe_rsa_and_ec_images_decrypt_with_lazycrypt() {
    let d = tmp();
    let plain = build_image(d.path(), "plain", 2);
    let rsa = rsa_keys(d.path(), "rsa");
    let (ec, ec_pub) = ec_keys(d.path(), "ec", "prime256v1");
    for (tag, recipient, key) in [("rsa", &rsa.public, &rsa.private), ("ec", &ec_pub, &ec)] {
        let enc = format!("oci:{}/enc:{tag}", d.path().display());
        skopeo_encrypt(
            &plain,
            &enc,
            &[format!("jwe:{}", recipient.display())],
            None,
        );
        assert_all_encrypted(&enc);
        let out = format!("oci:{}/dec:{tag}", d.path().display());
        lc_decrypt(&enc, &out, &[key]);
        assert_eq!(layer_digests(&out), layer_digests(&plain), "jwe {tag}");
    }
}

#[test]
fn skopeo_three_recipients_each_key_decrypts() {
    let d = tmp();
    let plain = build_image(d.path(), "plain", 1);
    let a = rsa_keys(d.path(), "a");
    let b = rsa_keys(d.path(), "b");
    let (c, c_pub) = ec_keys(d.path(), "c", "secp384r1");
    let enc = format!("oci:{}/enc:three", d.path().display());
    skopeo_encrypt(
        &plain,
        &enc,
        &[
            format!("jwe:{}", a.public.display()),
            format!("jwe:{}", b.public.display()),
            format!("jwe:{}", c_pub.display()),
        ],
        None,
    );
    for (i, key) in [&a.private, &b.private, &c].iter().enumerate() {
        let out = format!("oci:{}/dec{i}:x", d.path().display());
        lc_decrypt(&enc, &out, &[key]);
        assert_eq!(layer_digests(&out), layer_digests(&plain), "recipient {i}");
    }
}

#[test]
fn skopeo_pkcs7_image_decrypts_with_key_and_certificate() {
    let d = tmp();
    let plain = build_image(d.path(), "plain", 2);
    let k = rsa_keys(d.path(), "p7");
    let enc = format!("oci:{}/enc:p7", d.path().display());
    skopeo_encrypt(&plain, &enc, &[format!("pkcs7:{}", k.cert.display())], None);
    let out = format!("oci:{}/dec:p7", d.path().display());
    lc_decrypt(&enc, &out, &[&k.private, &k.cert]);
    assert_eq!(layer_digests(&out), layer_digests(&plain));
}

#[test]
fn skopeo_pgp_image_decrypts_with_secret_key_export() {
    let d = tmp();
    let plain = build_image(d.path(), "plain", 2);
    let (home, uid, _public, secret) = pgp_keys(d.path(), "alice");
    let enc = format!("oci:{}/enc:pgp", d.path().display());
    // skopeo resolves pgp recipients through gpg's key ring.
    ok(skopeo().env("GNUPGHOME", &home).args([
        "copy",
        "--encryption-key",
        &format!("pgp:{uid}"),
        &plain,
        &enc,
    ]));
    assert_all_encrypted(&enc);
    let out = format!("oci:{}/dec:pgp", d.path().display());
    lc_decrypt(&enc, &out, &[&secret]);
    assert_eq!(layer_digests(&out), layer_digests(&plain));
}

#[test]
fn lazycrypt_images_decrypt_with_skopeo_for_every_scheme() {
    let d = tmp();
    let plain = build_image(d.path(), "plain", 2);
    let rsa = rsa_keys(d.path(), "rsa");
    let (ec, ec_pub) = ec_keys(d.path(), "ec", "prime256v1");
    let (_home, _uid, pgp_pub, pgp_sec) = pgp_keys(d.path(), "bob");
    let cases: Vec<(&str, String, Vec<&std::path::Path>)> = vec![
        (
            "jwe-rsa",
            format!("jwe:{}", rsa.public.display()),
            vec![&rsa.private],
        ),
        ("jwe-ec", format!("jwe:{}", ec_pub.display()), vec![&ec]),
        (
            "pkcs7",
            format!("pkcs7:{}", rsa.cert.display()),
            vec![&rsa.private, &rsa.cert],
        ),
        ("pgp", format!("pgp:{}", pgp_pub.display()), vec![&pgp_sec]),
    ];
    for (tag, recipient, keys) in cases {
        let enc = format!("oci:{}/enc:{tag}", d.path().display());
        ok(lazycrypt().args(["encrypt", "--recipient", &recipient, &plain, &enc]));
        assert_all_encrypted(&enc);
        let out = format!("oci:{}/skopeo-dec:{tag}", d.path().display());
        skopeo_decrypt(&enc, &out, &keys);
        assert_eq!(layer_digests(&out), layer_digests(&plain), "{tag}");
    }
}

#[test]
fn added_recipients_work_for_both_tools() {
    let d = tmp();
    let plain = build_image(d.path(), "plain", 2);
    let a = rsa_keys(d.path(), "a");
    let b = rsa_keys(d.path(), "b");
    let (_h, _u, c_pub, c_sec) = pgp_keys(d.path(), "carol");

    // lazycrypt encrypts to A, then adds B (jwe) and C (pgp) with A's key: data is not re-encrypted.
    let enc = format!("oci:{}/enc:a", d.path().display());
    ok(lazycrypt().args([
        "encrypt",
        "-r",
        &format!("jwe:{}", a.public.display()),
        &plain,
        &enc,
    ]));
    let more = format!("oci:{}/enc:abc", d.path().display());
    ok(lazycrypt()
        .args([
            "encrypt",
            "-r",
            &format!("jwe:{}", b.public.display()),
            "-r",
            &format!("pgp:{}", c_pub.display()),
        ])
        .arg("--key")
        .arg(&a.private)
        .args([&enc, &more]));
    assert_eq!(
        layer_digests(&more),
        layer_digests(&enc),
        "adding recipients must keep the ciphertext"
    );
    let m = layout_manifest(&more);
    let jwe = m["layers"][0]["annotations"]["org.opencontainers.image.enc.keys.jwe"]
        .as_str()
        .unwrap();
    assert_eq!(jwe.split(',').count(), 2, "the new JWE entry is appended");
    for (who, keys) in [
        ("a", vec![a.private.as_path()]),
        ("b", vec![b.private.as_path()]),
        ("c", vec![c_sec.as_path()]),
    ] {
        let out = format!("oci:{}/sk-{who}:x", d.path().display());
        skopeo_decrypt(&more, &out, &keys);
        assert_eq!(
            layer_digests(&out),
            layer_digests(&plain),
            "skopeo with {who}"
        );
        let out = format!("oci:{}/lc-{who}:x", d.path().display());
        lc_decrypt(&more, &out, &keys);
        assert_eq!(
            layer_digests(&out),
            layer_digests(&plain),
            "lazycrypt with {who}"
        );
    }

    // skopeo encrypts to A; lazycrypt adds B; skopeo decrypts with B.
    let sk = format!("oci:{}/sk-enc:a", d.path().display());
    skopeo_encrypt(&plain, &sk, &[format!("jwe:{}", a.public.display())], None);
    let skb = format!("oci:{}/sk-enc:ab", d.path().display());
    ok(lazycrypt()
        .args(["encrypt", "-r", &format!("jwe:{}", b.public.display())])
        .arg("--key")
        .arg(&a.private)
        .args([&sk, &skb]));
    let out = format!("oci:{}/sk-enc-dec:b", d.path().display());
    skopeo_decrypt(&skb, &out, &[&b.private]);
    assert_eq!(layer_digests(&out), layer_digests(&plain));
}

#[test]
fn layer_and_platform_selection() {
    let d = tmp();
    let plain = build_image(d.path(), "plain", 3);
    let k = rsa_keys(d.path(), "k");
    let enc = format!("oci:{}/enc:top", d.path().display());
    ok(lazycrypt().args([
        "encrypt",
        "-r",
        &format!("jwe:{}", k.public.display()),
        "--layer",
        "-1",
        &plain,
        &enc,
    ]));
    let types = layer_types(&enc);
    assert!(
        !types[0].ends_with("+encrypted") && !types[1].ends_with("+encrypted"),
        "{types:?}"
    );
    assert!(types[2].ends_with("+encrypted"), "{types:?}");
    let out = format!("oci:{}/dec:top", d.path().display());
    lc_decrypt(&enc, &out, &[&k.private]);
    assert_eq!(layer_digests(&out), layer_digests(&plain));

    let err = fails(lazycrypt().args([
        "encrypt",
        "-r",
        &format!("jwe:{}", k.public.display()),
        "--platform",
        "plan9/mips",
        &plain,
        &format!("oci:{}/x:y", d.path().display()),
    ]));
    assert!(err.contains("no manifest for platform plan9/mips"), "{err}");
}

#[test]
fn layerinfo_lists_schemes_recipients_and_key_status() {
    let d = tmp();
    let plain = build_image(d.path(), "plain", 2);
    let k = rsa_keys(d.path(), "k");
    let other = rsa_keys(d.path(), "other");
    let enc = format!("oci:{}/enc:x", d.path().display());
    ok(lazycrypt().args([
        "encrypt",
        "-r",
        &format!("jwe:{}", k.public.display()),
        "-r",
        &format!("pkcs7:{}", k.cert.display()),
        &plain,
        &enc,
    ]));
    let table = ok(lazycrypt().args(["layerinfo", &enc]));
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].contains("DIGEST")
            && lines[0].contains("ENCRYPTION")
            && lines[0].contains("RECIPIENTS")
    );
    assert_eq!(lines.len(), 3, "{table}");
    assert!(
        lines[1].contains("jwe,pkcs7") && lines[1].contains("jwe:RSA-OAEP"),
        "{table}"
    );
    let json: serde_json::Value = serde_json::from_str(&ok(lazycrypt()
        .arg("layerinfo")
        .arg("--json")
        .arg("--key")
        .arg(&other.private)
        .arg(&enc)))
    .unwrap();
    assert_eq!(json.as_array().unwrap().len(), 2);
    assert_eq!(json[0]["key"], "missing");
    assert_eq!(json[0]["digest"].as_str().unwrap(), layer_digests(&enc)[0]);
    let json: serde_json::Value = serde_json::from_str(&ok(lazycrypt()
        .arg("layerinfo")
        .arg("--json")
        .arg("--key")
        .arg(&k.private)
        .arg(&enc)))
    .unwrap();
    assert_eq!(json[1]["key"], "ok");
}

#[test]
fn uncompressed_layers_skopeo_compresses_while_encrypting_decrypt_like_skopeo() {
    // skopeo gzips an uncompressed layer on the way into an encrypted image, and
    // ocicrypt then records the *uncompressed* digest in the private options.
    // The HMAC still authenticates the blob; the result must match skopeo's own.
    let d = tmp();
    let root = d.path().join("rootfs");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("f.txt"), "uncompressed layer\n".repeat(10_000)).unwrap();
    let plain = format!("oci:{}/plain:tar", d.path().display());
    build_dir(&root, &plain, &["--no-gzip"]);
    assert!(layer_types(&plain)[0].ends_with(".tar"));
    let k = rsa_keys(d.path(), "k");
    let enc = format!("oci:{}/enc:tar", d.path().display());
    skopeo_encrypt(&plain, &enc, &[format!("jwe:{}", k.public.display())], None);
    assert!(
        layer_types(&enc)[0].ends_with("tar+gzip+encrypted"),
        "{:?}",
        layer_types(&enc)
    );
    let ours = format!("oci:{}/ours:x", d.path().display());
    let theirs = format!("oci:{}/theirs:x", d.path().display());
    lc_decrypt(&enc, &ours, &[&k.private]);
    skopeo_decrypt(&enc, &theirs, &[&k.private]);
    assert_eq!(layer_digests(&ours), layer_digests(&theirs));
    assert_eq!(layer_types(&ours), layer_types(&theirs));
}

/// (platform, manifest digest, layer media types) for each entry of an index image.
fn index_entries(image: &str) -> Vec<(String, String, Vec<String>)> {
    let (dir, tag) = split_layout(image);
    let idx = read_json_blob(&dir, index_entry(&dir, &tag)["digest"].as_str().unwrap());
    idx["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let digest = m["digest"].as_str().unwrap().to_string();
            let man = read_json_blob(&dir, &digest);
            let types = man["layers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l["mediaType"].as_str().unwrap().to_string())
                .collect();
            (
                m["platform"]["architecture"].as_str().unwrap().to_string(),
                digest,
                types,
            )
        })
        .collect()
}

#[test]
fn multi_platform_index_with_platform_selection() {
    let d = tmp();
    let multi = multi_platform_image(d.path());
    let k = rsa_keys(d.path(), "k");
    let before = index_entries(&multi);

    let arm = format!("oci:{}/enc:arm", d.path().display());
    ok(lazycrypt().args([
        "encrypt",
        "-r",
        &format!("jwe:{}", k.public.display()),
        "--platform",
        "linux/arm64",
        &multi,
        &arm,
    ]));
    let after = index_entries(&arm);
    assert_eq!(after[0], before[0], "amd64 is untouched, byte for byte");
    assert_ne!(after[1].1, before[1].1);
    assert!(
        after[1].2.iter().all(|t| t.ends_with("+encrypted")),
        "{after:?}"
    );

    let all = format!("oci:{}/enc:all", d.path().display());
    ok(lazycrypt().args([
        "encrypt",
        "-r",
        &format!("jwe:{}", k.public.display()),
        &multi,
        &all,
    ]));
    assert!(
        index_entries(&all)
            .iter()
            .all(|(_, _, t)| t.iter().all(|t| t.ends_with("+encrypted")))
    );
    let info: serde_json::Value =
        serde_json::from_str(&ok(lazycrypt().args(["layerinfo", "--json", &all]))).unwrap();
    let platforms: Vec<&str> = info
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["platform"].as_str().unwrap())
        .collect();
    assert_eq!(platforms, ["linux/amd64", "linux/arm64"]);

    let dec = format!("oci:{}/dec:all", d.path().display());
    lc_decrypt(&all, &dec, &[&k.private]);
    assert_eq!(
        index_entries(&dec),
        before,
        "decryption restores every manifest exactly"
    );

    // skopeo reads the multi-platform encrypted index we wrote.
    let sk = format!("oci:{}/skopeo:all", d.path().display());
    ok(skopeo()
        .args(["copy", "--all", "--decryption-key"])
        .arg(&k.private)
        .args([&all, &sk]));
    assert_eq!(
        index_entries(&sk)
            .iter()
            .map(|e| e.2.clone())
            .collect::<Vec<_>>(),
        before.iter().map(|e| e.2.clone()).collect::<Vec<_>>()
    );
}

/// pgp (the OpenPGP crate) logs a secret key's fields in hex at debug
/// level as it parses them: its lines stay off at every level asked, even
/// when named.
#[test]
fn no_log_level_lets_a_pgp_secret_key_into_the_log() {
    let d = tmp();
    let plain = build_image(d.path(), "plain", 1);
    let (_home, _uid, public, secret) = pgp_keys(d.path(), "carol");
    let enc = format!("oci:{}/enc:pgp", d.path().display());
    ok(lazycrypt().args([
        "encrypt",
        "--recipient",
        &format!("pgp:{}", public.display()),
        &plain,
        &enc,
    ]));
    for level in ["debug", "trace", "trace,pgp=trace"] {
        let out = format!("oci:{}/dec:{}", d.path().display(), level.len());
        let o = run(lazycrypt()
            .env("LAZYCRYPT_LOG", level)
            .args(["decrypt", "--key"])
            .arg(&secret)
            .args([&enc, &out]));
        assert!(o.status.success(), "{o:?}");
        let log = String::from_utf8_lossy(&o.stderr);
        assert!(
            !log.lines().any(|l| l.contains(" pgp::")),
            "LAZYCRYPT_LOG={level}: pgp's lines in the log:\n{}",
            log.lines()
                .filter(|l| l.contains(" pgp::"))
                .take(5)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

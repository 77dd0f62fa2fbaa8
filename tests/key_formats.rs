//! Key files in every form imgcrypt users have them: PEM PKCS#1, PKCS#8,
//! encrypted PKCS#8 (`:pass=`, `:file=`), legacy encrypted PEM, SEC1, DER, and JWK (including a
//! JWK that asks for RSA-OAEP-256, checked against skopeo).

mod common;

use std::process::Command;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use common::*;
use rsa::pkcs8::DecodePrivateKey;
use rsa::traits::{PrivateKeyParts, PublicKeyParts};

fn roundtrip(d: &std::path::Path, plain: &str, recipient: &str, key_arg: &str, tag: &str) {
    let enc = format!("oci:{}/enc:{tag}", d.display());
    ok(lazycrypt().args(["encrypt", "-r", recipient, plain, &enc]));
    let out = format!("oci:{}/dec:{tag}", d.display());
    ok(lazycrypt().args(["decrypt", "--key", key_arg, &enc, &out]));
    assert_eq!(layer_digests(&out), layer_digests(plain), "{tag}");
}

#[test]
fn pem_der_and_password_forms() {
    let d = tmp();
    let p = d.path();
    let plain = build_image(p, "plain", 1);
    let k = rsa_keys(p, "k");
    let rcpt = format!("jwe:{}", k.public.display());

    let pkcs1 = p.join("pkcs1.pem");
    ok(Command::new("openssl")
        .args(["rsa", "-traditional", "-in"])
        .arg(&k.private)
        .arg("-out")
        .arg(&pkcs1));
    assert!(
        std::fs::read_to_string(&pkcs1)
            .unwrap()
            .contains("BEGIN RSA PRIVATE KEY")
    );
    roundtrip(p, &plain, &rcpt, pkcs1.to_str().unwrap(), "pkcs1");

    let der = p.join("key.der");
    ok(Command::new("openssl")
        .args(["pkcs8", "-topk8", "-nocrypt", "-outform", "DER", "-in"])
        .arg(&k.private)
        .arg("-out")
        .arg(&der));
    roundtrip(p, &plain, &rcpt, der.to_str().unwrap(), "der");

    let enc_key = p.join("enc.pem");
    ok(Command::new("openssl")
        .args([
            "pkcs8",
            "-topk8",
            "-v2",
            "aes-256-cbc",
            "-passout",
            "pass:hunter2",
            "-in",
        ])
        .arg(&k.private)
        .arg("-out")
        .arg(&enc_key));
    roundtrip(
        p,
        &plain,
        &rcpt,
        &format!("{}:pass=hunter2", enc_key.display()),
        "encpass",
    );
    let pwfile = p.join("pw.txt");
    std::fs::write(&pwfile, "hunter2\n").unwrap();
    roundtrip(
        p,
        &plain,
        &rcpt,
        &format!("{}:file={}", enc_key.display(), pwfile.display()),
        "encfile",
    );

    let enc = format!("oci:{}/enc:encpass", p.display());
    let err = fails(
        lazycrypt()
            .arg("decrypt")
            .arg("--key")
            .arg(&enc_key)
            .args([&enc, &format!("oci:{}/x:1", p.display())]),
    );
    assert!(
        err.contains("password protected") && err.contains("pass="),
        "{err}"
    );
    let err = fails(lazycrypt().args([
        "decrypt",
        "--key",
        &format!("{}:pass=nope", enc_key.display()),
        &enc,
        &format!("oci:{}/x:2", p.display()),
    ]));
    assert!(err.contains("wrong password"), "{err}");
    assert!(
        !err.contains("nope"),
        "the password must not be echoed: {err}"
    );

    // OpenSSL's legacy encrypted PEM (Proc-Type/DEK-Info), as OpenSSL 1.x wrote it.
    for cipher in ["-aes256", "-des3"] {
        let legacy = p.join(format!("legacy{cipher}.pem"));
        ok(Command::new("openssl")
            .args([
                "rsa",
                "-traditional",
                cipher,
                "-passout",
                "pass:hunter2",
                "-in",
            ])
            .arg(&k.private)
            .arg("-out")
            .arg(&legacy));
        assert!(
            std::fs::read_to_string(&legacy)
                .unwrap()
                .contains("DEK-Info")
        );
        roundtrip(
            p,
            &plain,
            &rcpt,
            &format!("{}:pass=hunter2", legacy.display()),
            &format!("legacy{cipher}"),
        );
        let err = fails(lazycrypt().args([
            "decrypt",
            "--key",
            &format!("{}:pass=wrong", legacy.display()),
            &enc,
            &format!("oci:{}/x:3", p.display()),
        ]));
        assert!(err.contains("wrong password"), "{err}");
    }

    let (ec8, ec_pub) = ec_keys(p, "ec", "secp521r1");
    let ec_rcpt = format!("jwe:{}", ec_pub.display());
    roundtrip(p, &plain, &ec_rcpt, ec8.to_str().unwrap(), "ec-pkcs8");
    roundtrip(
        p,
        &plain,
        &ec_rcpt,
        p.join("ec.sec1.pem").to_str().unwrap(),
        "ec-sec1",
    );
    let ec_legacy = p.join("ec.legacy.pem");
    ok(Command::new("openssl")
        .args(["ec", "-aes128", "-passout", "pass:pw", "-in"])
        .arg(p.join("ec.sec1.pem"))
        .arg("-out")
        .arg(&ec_legacy));
    roundtrip(
        p,
        &plain,
        &ec_rcpt,
        &format!("{}:pass=pw", ec_legacy.display()),
        "ec-legacy",
    );
}

#[test]
fn jwk_keys_including_rsa_oaep_256_interoperate_with_skopeo() {
    let d = tmp();
    let p = d.path();
    let plain = build_image(p, "plain", 1);
    let k = rsa_keys(p, "k");
    let key = rsa::RsaPrivateKey::read_pkcs8_pem_file(&k.private).unwrap();
    let b = |n: &rsa::BigUint| B64URL.encode(n.to_bytes_be());
    let public =
        serde_json::json!({"kty": "RSA", "alg": "RSA-OAEP-256", "n": b(key.n()), "e": b(key.e())});
    let private = serde_json::json!({
        "kty": "RSA", "n": b(key.n()), "e": b(key.e()), "d": b(key.d()),
        "p": b(&key.primes()[0]), "q": b(&key.primes()[1]),
    });
    let (pub_jwk, priv_jwk) = (p.join("pub.jwk"), p.join("priv.jwk"));
    std::fs::write(&pub_jwk, public.to_string()).unwrap();
    write_private(&priv_jwk, private.to_string());

    roundtrip(
        p,
        &plain,
        &format!("jwe:{}", pub_jwk.display()),
        priv_jwk.to_str().unwrap(),
        "jwk",
    );
    let enc = format!("oci:{}/enc:jwk", p.display());
    let info = ok(lazycrypt().args(["layerinfo", &enc]));
    assert!(info.contains("jwe:RSA-OAEP-256"), "{info}");
    let out = format!("oci:{}/skopeo:jwk", p.display());
    ok(skopeo()
        .args(["copy", "--decryption-key"])
        .arg(&k.private)
        .args([&enc, &out]));
    assert_eq!(layer_digests(&out), layer_digests(&plain));
}

#[test]
fn private_key_files_others_can_read_or_change_are_refused() {
    use std::os::unix::fs::{PermissionsExt, chown, symlink};
    let d = tmp();
    let p = d.path();
    let plain = build_image(p, "plain", 1);
    let k = rsa_keys(p, "k");
    let enc = format!("oci:{}/enc:1", p.display());
    ok(lazycrypt().args([
        "encrypt",
        "-r",
        &format!("jwe:{}", k.public.display()),
        &plain,
        &enc,
    ]));
    let chmod = |f: &std::path::Path, mode: u32| {
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    let mut n = 0;
    let mut decrypt = |key: &[&str], extra: &[&str]| {
        n += 1;
        let mut c = lazycrypt();
        c.arg("decrypt")
            .args(key)
            .args(extra)
            .args([&enc, &format!("oci:{}/dec:{n}", p.display())]);
        c
    };
    let key = k.private.to_str().unwrap();
    let allow = ["--allow-readable-keys"];
    // A symlink, as in a Kubernetes secret volume: its target is judged.
    let dir = p.join("keys");
    std::fs::create_dir(&dir).unwrap();
    symlink(&k.private, dir.join("k.pem")).unwrap();
    // Public material beside it may be read by anyone.
    for f in [&k.public, &k.cert] {
        std::fs::copy(f, dir.join(f.file_name().unwrap())).unwrap();
        chmod(&dir.join(f.file_name().unwrap()), 0o644);
    }
    let link = dir.join("k.pem");
    let link = link.to_str().unwrap();
    let dir = dir.to_str().unwrap();

    chmod(&k.private, 0o644);
    for (args, named) in [
        (vec!["--key", key], key),
        (vec!["--key", link], link),
        (vec!["--decryption-keys-path", dir], link),
    ] {
        let err = fails(&mut decrypt(&args, &[]));
        assert!(
            err.contains(&format!(
                "UNPROTECTED PRIVATE KEY FILE: permissions 0644 for {named} are too open"
            )),
            "{err}"
        );
        assert!(err.contains("--allow-readable-keys"), "{err}");
        ok(&mut decrypt(&args, &allow));
    }

    chmod(&k.private, 0o620);
    let err = fails(&mut decrypt(&["--key", link], &allow));
    assert!(
        err.contains(&format!(
            "permissions 0620 for private key file {link} let others than its owner change it"
        )),
        "{err}"
    );
    chmod(&k.private, 0o600);
    chown(&k.private, Some(65534), None).unwrap();
    let err = fails(&mut decrypt(&["--decryption-keys-path", dir], &allow));
    assert!(err.contains("is owned by uid 65534"), "{err}");
    chown(&k.private, Some(0), None).unwrap();
    ok(&mut decrypt(&["--key", link], &[]));
    ok(&mut decrypt(&["--decryption-keys-path", dir], &[]));

    let help = ok(lazycrypt().args(["serve", "--help"]));
    assert!(help.contains("--allow-readable-keys"), "{help}");
}

/// A malformed wrapped-key entry ends only its own try: the other entries
/// and schemes are still tried with every key.
#[test]
fn a_garbage_entry_does_not_stop_the_entries_a_key_opens() {
    use base64::engine::general_purpose::STANDARD as B64;
    const JWE: &str = "org.opencontainers.image.enc.keys.jwe";
    const PKCS7: &str = "org.opencontainers.image.enc.keys.pkcs7";
    let d = tmp();
    let p = d.path();
    let plain = build_image(p, "plain", 1);
    let k = rsa_keys(p, "k");
    let enc = format!("oci:{}/enc:x", p.display());
    ok(lazycrypt().args([
        "encrypt",
        "-r",
        &format!("jwe:{}", k.public.display()),
        "-r",
        &format!("pkcs7:{}", k.cert.display()),
        &plain,
        &enc,
    ]));
    let original = layout_manifest(&enc)["layers"][0]["annotations"].clone();
    let garbage = B64.encode("not json");
    let set = |jwe: String, pkcs7: Option<String>| {
        edit_manifest(&enc, move |m| {
            let a = &mut m["layers"][0]["annotations"];
            a[JWE] = jwe.into();
            match pkcs7 {
                Some(v) => a[PKCS7] = v.into(),
                None => {
                    a.as_object_mut().unwrap().remove(PKCS7);
                }
            }
        });
    };
    let decrypt = |tag: &str, keys: &[&std::path::Path]| {
        let out = format!("oci:{}/dec:{tag}", p.display());
        let mut c = lazycrypt();
        c.arg("decrypt");
        let o = run(with_keys(&mut c, "--key", keys).args([&enc, &out]));
        if o.status.success() {
            assert_eq!(layer_digests(&out), layer_digests(&plain), "{tag}");
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&o.stderr).into_owned())
        }
    };
    let pkcs7 = original[PKCS7].as_str().unwrap().to_string();
    let jwe = original[JWE].as_str().unwrap().to_string();

    // The first scheme tried (JWE) is garbage; PKCS#7 opens.
    set(garbage.clone(), Some(pkcs7.clone()));
    decrypt("pkcs7", &[&k.private, &k.cert]).unwrap();
    // Within one scheme: a garbage entry, then the one the key opens.
    set(format!("{garbage},{jwe}"), None);
    decrypt("second", &[&k.private]).unwrap();

    // Nothing opens: one line says why for each scheme.
    set(garbage.clone(), Some(B64.encode("garbage")));
    let err = decrypt("none", &[&k.private, &k.cert]).unwrap_err();
    assert!(
        err.contains(&format!(
            "no suitable key unwrapper found or none of the private keys could be used for decryption: {JWE} entry 0: jwe: not JSON"
        )) && err.contains(&format!("; {PKCS7} entry 0: pkcs7: ")),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}

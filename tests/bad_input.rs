//! Bad input gets a clear one-line error, and no output is left behind.

mod common;

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use common::*;

struct Fixture {
    dir: Tmp,
    plain: String,
    enc: String,
    key: RsaKeys,
}

fn fixture() -> Fixture {
    let dir = tmp();
    let plain = build_image(dir.path(), "plain", 2);
    let key = rsa_keys(dir.path(), "k");
    let enc = format!("oci:{}/enc:x", dir.path().display());
    ok(lazycrypt().args([
        "encrypt",
        "-r",
        &format!("jwe:{}", key.public.display()),
        &plain,
        &enc,
    ]));
    Fixture {
        dir,
        plain,
        enc,
        key,
    }
}

impl Fixture {
    fn out(&self, name: &str) -> (String, std::path::PathBuf) {
        let p = self.dir.path().join(name);
        (format!("oci:{}:x", p.display()), p)
    }

    fn decrypt_fails(&self, keys: &[&Path], name: &str) -> String {
        let (out, path) = self.out(name);
        let mut c = lazycrypt();
        c.arg("decrypt");
        let err = fails(with_keys(&mut c, "--key", keys).arg(&self.enc).arg(&out));
        assert!(!path.exists(), "{name}: no output image may be left behind");
        err
    }

    fn layer0(&self) -> String {
        layer_digests(&self.enc)[0].clone()
    }

    fn set_annotation(&self, key: &str, value: &str) {
        let (k, v) = (key.to_string(), value.to_string());
        edit_manifest(&self.enc, move |m| {
            m["layers"][0]["annotations"][k] = serde_json::Value::String(v);
        });
    }
}

#[test]
fn wrong_or_missing_key_uses_imgcrypts_text_and_writes_nothing() {
    let f = fixture();
    let other = rsa_keys(f.dir.path(), "other");
    let err = f.decrypt_fails(&[&other.private], "wrong");
    assert!(
        err.contains("missing private key needed for decryption"),
        "{err}"
    );
    assert!(err.contains(&f.layer0()), "names the layer: {err}");
    let err = f.decrypt_fails(&[], "none");
    assert!(
        err.contains("missing private key needed for decryption")
            && err.contains("no key was given"),
        "{err}"
    );

    // An existing destination keeps its index when the run fails.
    let (existing, path) = f.out("existing");
    ok(lazycrypt()
        .arg("decrypt")
        .arg("--key")
        .arg(&f.key.private)
        .args([&f.enc, &existing]));
    let before = std::fs::read(path.join("index.json")).unwrap();
    let blobs_before = std::fs::read_dir(path.join("blobs/sha256"))
        .unwrap()
        .count();
    let again = format!("oci:{}:y", path.display());
    fails(
        lazycrypt()
            .arg("decrypt")
            .arg("--key")
            .arg(&other.private)
            .args([&f.enc, &again]),
    );
    assert_eq!(std::fs::read(path.join("index.json")).unwrap(), before);
    assert_eq!(
        std::fs::read_dir(path.join("blobs/sha256"))
            .unwrap()
            .count(),
        blobs_before
    );
}

#[test]
fn tampered_ciphertext_names_the_layer_and_leaves_no_output() {
    let f = fixture();
    let layer = f.layer0();
    let blob = blob_path(&split_layout(&f.enc).0, &layer);
    let mut bytes = std::fs::read(&blob).unwrap();
    let n = bytes.len();
    bytes[n / 3] ^= 1;
    std::fs::write(&blob, &bytes).unwrap();
    let err = f.decrypt_fails(&[&f.key.private], "tampered");
    // The manifest's digest catches it before the HMAC does.
    assert!(err.contains(&format!("layer {layer} has digest")), "{err}");
}

/// A co-recipient of the key can make a layer whose HMAC is valid: the
/// manifest's digest is what pins the content.
#[test]
fn a_blob_with_a_valid_hmac_but_another_digest_is_refused() {
    use std::io::Read;
    let f = fixture();
    let layer = f.layer0();
    let blob = blob_path(&split_layout(&f.enc).0, &layer);
    let annotations: std::collections::HashMap<String, String> =
        serde_json::from_value(layout_manifest(&f.enc)["layers"][0]["annotations"].clone())
            .unwrap();
    let opts = private_options(&annotations, &f.key.private);
    let key = lazycrypt::crypto::cipher::LayerKey::from_options(&opts);
    let mut plain = std::fs::read(&blob).unwrap();
    key.apply_at(0, &mut plain);
    let n = plain.len();
    plain[n / 2] ^= 1;
    let (mut r, result) = key.encrypt_reader(std::io::Cursor::new(plain), None);
    let mut forged = Vec::new();
    r.read_to_end(&mut forged).unwrap();
    drop(r);
    std::fs::write(&blob, &forged).unwrap();
    let pubopts = result.public_options().unwrap().to_annotation();
    f.set_annotation("org.opencontainers.image.enc.pubopts", &pubopts);
    let err = f.decrypt_fails(&[&f.key.private], "forged");
    assert!(
        err.contains(&layer) && err.contains("digest") && !err.contains("HMAC"),
        "{err}"
    );
}

#[test]
fn tampered_hmac_annotation_is_detected() {
    let f = fixture();
    let raw = B64.encode(br#"{"cipher":"AES_256_CTR_HMAC_SHA256","hmac":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","cipheroptions":{}}"#);
    f.set_annotation("org.opencontainers.image.enc.pubopts", &raw);
    let err = f.decrypt_fails(&[&f.key.private], "badhmac");
    assert!(
        err.contains("HMAC mismatch") && err.contains(&f.layer0()),
        "{err}"
    );
}

#[test]
fn truncated_blobs_are_reported() {
    let f = fixture();
    let layer = f.layer0();
    let blob = blob_path(&split_layout(&f.enc).0, &layer);
    let bytes = std::fs::read(&blob).unwrap();
    std::fs::write(&blob, &bytes[..bytes.len() / 2]).unwrap();
    let err = f.decrypt_fails(&[&f.key.private], "truncated");
    assert!(err.contains(&layer) && err.contains("truncated"), "{err}");

    // An unencrypted layer copied through is checked against its descriptor too.
    let plain_layer = layer_digests(&f.plain)[1].clone();
    let pblob = blob_path(&split_layout(&f.plain).0, &plain_layer);
    let bytes = std::fs::read(&pblob).unwrap();
    std::fs::write(&pblob, &bytes[..10]).unwrap();
    let (out, path) = f.out("trunc-plain");
    let err = fails(lazycrypt().args([
        "encrypt",
        "-r",
        &format!("jwe:{}", f.key.public.display()),
        "--layer",
        "0",
        &f.plain,
        &out,
    ]));
    assert!(
        err.contains(&plain_layer) && err.contains("truncated: 10 of"),
        "{err}"
    );
    assert!(!path.exists());
}

#[test]
fn malformed_annotations_say_what_and_where() {
    let cases: [(&str, &str, &str); 5] = [
        (
            "org.opencontainers.image.enc.keys.jwe",
            "%%%not-base64",
            "org.opencontainers.image.enc.keys.jwe entry 0 is not base64",
        ),
        (
            "org.opencontainers.image.enc.keys.jwe",
            &B64.encode("not json"),
            "jwe: not JSON",
        ),
        (
            "org.opencontainers.image.enc.pubopts",
            "%%%",
            "pubopts annotation is not base64",
        ),
        (
            "org.opencontainers.image.enc.pubopts",
            &B64.encode("{"),
            "pubopts annotation is not valid JSON",
        ),
        (
            "org.opencontainers.image.enc.pubopts",
            &B64.encode(br#"{"cipher":"AES_128_CBC","hmac":"","cipheroptions":{}}"#),
            "unsupported layer cipher \"AES_128_CBC\"",
        ),
    ];
    for (i, (k, v, want)) in cases.iter().enumerate() {
        let f = fixture();
        f.set_annotation(k, v);
        let err = f.decrypt_fails(&[&f.key.private], &format!("case{i}"));
        assert!(err.contains(want), "case {i}: {err}");
        assert!(err.contains(&f.layer0()), "case {i} names the layer: {err}");
    }

    // A JWE with a valid shape but garbage inside.
    let f = fixture();
    let jwe = B64.encode(
        br#"{"protected":"e30","encrypted_key":"AAAA","iv":"AAAA","ciphertext":"","tag":""}"#,
    );
    f.set_annotation("org.opencontainers.image.enc.keys.jwe", &jwe);
    let err = f.decrypt_fails(&[&f.key.private], "badjwe");
    assert!(
        err.contains("unsupported content encryption") || err.contains("iv has 3 bytes"),
        "{err}"
    );
}

#[test]
fn malformed_keys_and_recipients_say_which_file() {
    let f = fixture();
    let junk = f.dir.path().join("junk.pem");
    std::fs::write(
        &junk,
        "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let err = f.decrypt_fails(&[&junk], "junk");
    assert!(
        err.contains(&junk.display().to_string()) && err.contains("PRIVATE KEY"),
        "{err}"
    );

    let text = f.dir.path().join("text.txt");
    std::fs::write(&text, "hello").unwrap();
    let err = f.decrypt_fails(&[&text], "text");
    assert!(err.contains("not a recognised key"), "{err}");

    let (out, _) = f.out("r");
    let err = fails(lazycrypt().args([
        "encrypt",
        "-r",
        &format!("jwe:{}", f.key.private.display()),
        &f.plain,
        &out,
    ]));
    assert!(
        err.contains("holds a private key, not a public key"),
        "{err}"
    );
    let err = fails(lazycrypt().args(["encrypt", "-r", "rot13:whatever", &f.plain, &out]));
    assert!(err.contains("unknown scheme \"rot13\""), "{err}");
    let err =
        fails(lazycrypt().args(["encrypt", "-r", "jwe:/nonexistent/key.pem", &f.plain, &out]));
    assert!(err.contains("/nonexistent/key.pem"), "{err}");
}

#[test]
fn bad_estargz_layout_options_say_what_is_wrong() {
    let f = fixture();
    let (out, path) = f.out("esgz");
    let r = format!("jwe:{}", f.key.public.display());
    let err = fails(lazycrypt().args([
        "encrypt",
        "--estargz",
        "--prioritize",
        "/nonexistent/start-up.txt",
        "-r",
        &r,
        &f.plain,
        &out,
    ]));
    assert!(
        err.contains("--prioritize /nonexistent/start-up.txt") && err.contains("No such file"),
        "{err}"
    );
    let err = fails(lazycrypt().args([
        "encrypt",
        "--estargz",
        "--chunk-size",
        "1K",
        "-r",
        &r,
        &f.plain,
        &out,
    ]));
    assert!(err.contains("at least 4K"), "{err}");
    let err = fails(lazycrypt().args([
        "encrypt",
        "--estargz",
        "--chunk-size",
        "65M",
        "-r",
        &r,
        &f.plain,
        &out,
    ]));
    assert!(err.contains("over 64M"), "{err}");
    let list = f.dir.path().join("list.txt");
    std::fs::write(&list, "/etc/x\n").unwrap();
    let err = fails(lazycrypt().args([
        "encrypt",
        "--prioritize",
        list.to_str().unwrap(),
        "-r",
        &r,
        &f.plain,
        &out,
    ]));
    assert!(err.contains("--estargz"), "{err}");
    assert!(!path.exists(), "no output after a refused conversion");
}

#[test]
fn bad_references_and_layouts() {
    let f = fixture();
    let (out, _) = f.out("o");
    let err = fails(lazycrypt().args(["decrypt", "nonsense", &out]));
    assert!(err.contains("unknown transport"), "{err}");
    let err = fails(lazycrypt().args([
        "decrypt",
        &format!("oci:{}/missing:x", f.dir.path().display()),
        &out,
    ]));
    assert!(err.contains("not an OCI image layout"), "{err}");
    let err = fails(lazycrypt().args([
        "decrypt",
        &format!("oci:{}/enc:nosuchtag", f.dir.path().display()),
        &out,
    ]));
    assert!(err.contains("no image tagged \"nosuchtag\""), "{err}");
    let (dir, _) = split_layout(&f.enc);
    std::fs::write(dir.join("index.json"), "{not json").unwrap();
    let err = fails(lazycrypt().args(["decrypt", &f.enc, &out]));
    assert!(err.contains("index.json"), "{err}");
}

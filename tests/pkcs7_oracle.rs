//! No key-unwrap oracle: a PKCS#7 key annotation with bad RSA padding, one
//! wrapped to another key and one carrying a wrong content key fail with
//! byte-identical errors, on `decrypt` and on `stream-decrypt` (the stream
//! processor containerd runs), the same as holding no recipient's key.

mod common;

use std::path::Path;
use std::process::Stdio;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use common::*;
use prost::Message;
use rand::RngCore;
use rand::rngs::OsRng;
use rsa::pkcs8::DecodePublicKey;
use rsa::traits::PublicKeyParts;
use rsa::{BigUint, Pkcs1v15Encrypt, RsaPublicKey};

const PKCS7: &str = "org.opencontainers.image.enc.keys.pkcs7";

fn public(path: &Path) -> RsaPublicKey {
    RsaPublicKey::from_public_key_pem(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn pkcs1(to: &RsaPublicKey, msg: &[u8]) -> Vec<u8> {
    to.encrypt(&mut OsRng, Pkcs1v15Encrypt, msg).unwrap()
}

/// Raw RSA of a block that is not PKCS#1 v1.5 encryption padding.
fn bad_padding(to: &RsaPublicKey) -> Vec<u8> {
    let mut block = [0x5au8; 256];
    block[0] = 0;
    block[1] = 1;
    let c = BigUint::from_bytes_be(&block)
        .modpow(to.e(), to.n())
        .to_bytes_be();
    [vec![0; 256 - c.len()], c].concat()
}

/// The base64 EnvelopedData `annotation` with its 2048-bit encryptedKey replaced.
fn with_ek(annotation: &str, ek: &[u8]) -> String {
    let mut der = B64.decode(annotation).unwrap();
    let head = [0x04, 0x82, 0x01, 0x00];
    let at = der.windows(4).position(|w| w == head).unwrap() + 4;
    der[at..at + 256].copy_from_slice(ek);
    B64.encode(der)
}

/// `stream-decrypt` as containerd runs it, with the keys in the payload.
fn stream_decrypt(blob: &Path, desc: &serde_json::Value, key: &RsaKeys, dir: &Path) -> String {
    let b64 = |p: &Path| B64.encode(std::fs::read(p).unwrap());
    let value = serde_json::json!({
        "DecryptConfig": {"Parameters": {
            "privkeys": [b64(&key.private)],
            "privkeys-passwords": [""],
            "x509s": [b64(&key.cert)],
        }},
        "Descriptor": desc,
    });
    let payload = prost_types::Any {
        type_url: "github.com/containerd/imgcrypt/images/encryption.Payload".into(),
        value: serde_json::to_vec(&value).unwrap(),
    }
    .encode_to_vec();
    let pfile = dir.join("payload");
    std::fs::write(&pfile, payload).unwrap();
    let out = lazycrypt()
        .arg("stream-decrypt")
        .arg("--payload")
        .arg(&pfile)
        .env(
            "STREAM_PROCESSOR_MEDIATYPE",
            desc["mediaType"].as_str().unwrap(),
        )
        .stdin(std::fs::File::open(blob).unwrap())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "no plaintext may be written");
    String::from_utf8(out.stderr).unwrap()
}

#[test]
fn pkcs7_bad_padding_wrong_key_and_bad_cek_give_identical_errors() {
    let d = tmp();
    let plain = build_image(d.path(), "plain", 1);
    let k = rsa_keys(d.path(), "k");
    let other = rsa_keys(d.path(), "other");
    let enc = format!("oci:{}/enc:x", d.path().display());
    skopeo_encrypt(&plain, &enc, &[format!("pkcs7:{}", k.cert.display())], None);
    let original = layout_manifest(&enc)["layers"][0]["annotations"][PKCS7]
        .as_str()
        .unwrap()
        .to_string();
    let blob = blob_path(
        &split_layout(&enc).0,
        layout_manifest(&enc)["layers"][0]["digest"]
            .as_str()
            .unwrap(),
    );

    let (ours, theirs) = (public(&k.public), public(&other.public));
    let mut cek = [0u8; 16];
    OsRng.fill_bytes(&mut cek);
    let cases = [
        ("bad padding", with_ek(&original, &bad_padding(&ours)), &k),
        (
            "wrapped to another key",
            with_ek(&original, &pkcs1(&theirs, &cek)),
            &k,
        ),
        (
            "wrong content key",
            with_ek(&original, &pkcs1(&ours, &cek)),
            &k,
        ),
        (
            "content key of 5 bytes",
            with_ek(&original, &pkcs1(&ours, b"short")),
            &k,
        ),
        ("untampered, no recipient's key held", original, &other),
    ];
    let out = format!("oci:{}/dec:x", d.path().display());
    let mut seen: Vec<(&str, String, String)> = Vec::new();
    for (what, annotation, key) in &cases {
        let a = annotation.clone();
        edit_manifest(&enc, move |m| {
            m["layers"][0]["annotations"][PKCS7] = serde_json::Value::String(a);
        });
        let mut c = lazycrypt();
        c.arg("decrypt");
        let err = fails(with_keys(&mut c, "--key", &[&key.private, &key.cert]).args([&enc, &out]));
        assert!(
            err.contains("missing private key needed for decryption"),
            "{what}: {err}"
        );
        let desc = layout_manifest(&enc)["layers"][0].clone();
        let stream_err = stream_decrypt(&blob, &desc, key, d.path());
        assert!(
            stream_err.contains("missing private key needed for decryption"),
            "{what}: {stream_err}"
        );
        seen.push((what, err, stream_err));
    }
    for (what, err, stream_err) in &seen {
        assert_eq!(err, &seen[0].1, "decrypt: {what} vs {}", seen[0].0);
        assert_eq!(
            stream_err, &seen[0].2,
            "stream-decrypt: {what} vs {}",
            seen[0].0
        );
    }
}

//! `encrypt --estargz`: still a standard encrypted image (skopeo decrypts it
//! and it unpacks to the original tree), with the TOC anchor hidden in the
//! private options; and plain eStargz without recipients.

mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use common::*;
use sha2::{Digest, Sha256};

/// A source tree with what real layers hold: nested dirs, multi-chunk and
/// empty files, an executable, a symlink.
fn source_tree(root: &Path) {
    std::fs::create_dir_all(root.join("usr/bin")).unwrap();
    std::fs::create_dir_all(root.join("var/lib/empty-dir")).unwrap();
    let big: Vec<u8> = (0..(3 << 20) + 12345u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(root.join("usr/lib.so"), &big).unwrap();
    std::fs::write(root.join("usr/bin/tool"), b"#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(
        root.join("usr/bin/tool"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::fs::write(root.join("var/empty"), b"").unwrap();
    std::fs::write(
        root.join("marker.txt"),
        "lazycrypt estargz marker\n".repeat(100),
    )
    .unwrap();
    std::os::unix::fs::symlink("usr/bin/tool", root.join("tool-link")).unwrap();
}

/// Path → (kind, mode, uid, gid, content digest or link target), for tree comparison.
fn tree(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let what = if m.file_type().is_symlink() {
                format!("link {}", std::fs::read_link(&p).unwrap().display())
            } else if m.is_dir() {
                stack.push(p.clone());
                "dir".to_string()
            } else {
                format!(
                    "file {}",
                    hex::encode(Sha256::digest(std::fs::read(&p).unwrap()))
                )
            };
            out.insert(
                rel,
                format!(
                    "{what} mode={:o} uid={} gid={}",
                    m.mode() & 0o7777,
                    m.uid(),
                    m.gid()
                ),
            );
        }
    }
    out
}

/// Unpacks every layer of `oci:DIR:TAG` into `dest`, bottom first, with GNU tar.
fn unpack(image: &str, dest: &Path) {
    let (dir, _) = split_layout(image);
    std::fs::create_dir_all(dest).unwrap();
    for l in layer_digests(image) {
        ok(Command::new("tar")
            .args(["-xf"])
            .arg(blob_path(&dir, &l))
            .arg("-C")
            .arg(dest)
            .args(["--same-owner", "-p"]));
    }
}

#[test]
fn encrypted_estargz_decrypts_with_skopeo_to_the_same_tree() {
    let d = tmp();
    let src = d.path().join("src");
    source_tree(&src);
    let plain = format!("oci:{}/img:plain", d.path().display());
    build_dir(&src, &plain, &[]);
    let k = rsa_keys(d.path(), "k");

    let enc = format!("oci:{}/img:enc", d.path().display());
    let out = encrypt_estargz(&plain, &enc, &k.public);
    assert!(out.contains("encrypted (eStargz)"), "{out}");
    let layer = layout_manifest(&enc)["layers"][0].clone();
    assert_eq!(
        layer["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+gzip+encrypted"
    );
    assert!(
        layer["annotations"]
            .get("containerd.io/snapshot/stargz/toc.digest")
            .is_none(),
        "the TOC digest must not be public"
    );

    let dec = format!("oci:{}/img:skopeo", d.path().display());
    ok(skopeo()
        .args(["copy", "--decryption-key"])
        .arg(&k.private)
        .args([&enc, &dec]));
    let (a, b) = (
        d.path().join("unpacked-plain"),
        d.path().join("unpacked-estargz"),
    );
    unpack(&plain, &a);
    unpack(&dec, &b);
    std::fs::remove_file(b.join("stargz.index.json")).unwrap();
    std::fs::remove_file(b.join(".no.prefetch.landmark")).unwrap();
    assert_eq!(tree(&a), tree(&b));

    // The config's diff ID is the new uncompressed tar's digest.
    let (dir, _) = split_layout(&dec);
    let blob = std::fs::read(blob_path(
        &dir,
        layout_manifest(&dec)["layers"][0]["digest"]
            .as_str()
            .unwrap(),
    ))
    .unwrap();
    let mut tar_bytes = Vec::new();
    flate2::read::MultiGzDecoder::new(&blob[..])
        .read_to_end(&mut tar_bytes)
        .unwrap();
    let config = read_json_blob(
        &dir,
        layout_manifest(&dec)["config"]["digest"].as_str().unwrap(),
    );
    assert_eq!(
        config["rootfs"]["diff_ids"][0],
        format!("sha256:{}", hex::encode(Sha256::digest(&tar_bytes)))
    );

    // The TOC digest rides in the private options, and matches the TOC.
    let ann: std::collections::HashMap<String, String> =
        serde_json::from_value(layer["annotations"].clone()).unwrap();
    let private = private_options(&ann, &k.private);
    let (toc, toc_digest) = blob_toc(&blob);
    assert_eq!(private.toc_digest().as_deref(), Some(toc_digest.as_str()));
    let chunks = toc
        .entries
        .iter()
        .filter(|e| e.name == "usr/lib.so")
        .count();
    assert_eq!(chunks, 4, "3 MiB + 12345 bytes in 1 MiB chunks");
}

#[test]
fn plain_estargz_is_anchored_by_the_standard_annotation() {
    let d = tmp();
    let plain = build_image(d.path(), "plain", 2);
    let out = format!("oci:{}/es:x", d.path().display());
    ok(lazycrypt().args(["encrypt", "--estargz", &plain, &out]));
    let (dir, _) = split_layout(&out);
    let m = layout_manifest(&out);
    for l in m["layers"].as_array().unwrap() {
        assert_eq!(
            l["mediaType"],
            "application/vnd.oci.image.layer.v1.tar+gzip"
        );
        let blob = std::fs::read(blob_path(&dir, l["digest"].as_str().unwrap())).unwrap();
        let (_, toc_digest) = blob_toc(&blob);
        assert_eq!(
            l["annotations"]["containerd.io/snapshot/stargz/toc.digest"],
            toc_digest.as_str()
        );
        let mut tar_bytes = Vec::new();
        flate2::read::MultiGzDecoder::new(&blob[..])
            .read_to_end(&mut tar_bytes)
            .unwrap();
        assert_eq!(
            l["annotations"]["io.containers.estargz.uncompressed-size"],
            tar_bytes.len().to_string().as_str()
        );
    }
    // skopeo copies it like any gzip image.
    ok(skopeo().args(["copy", &out, &format!("oci:{}/copy:x", d.path().display())]));
}

#[test]
fn already_encrypted_layers_are_not_converted() {
    let d = tmp();
    let plain = build_image(d.path(), "plain", 1);
    let k = rsa_keys(d.path(), "k");
    let enc = format!("oci:{}/e:x", d.path().display());
    skopeo_encrypt(&plain, &enc, &[format!("jwe:{}", k.public.display())], None);
    let err = fails(lazycrypt().args([
        "encrypt",
        "--estargz",
        &enc,
        &format!("oci:{}/o:x", d.path().display()),
    ]));
    assert!(
        err.contains("already encrypted: decrypt the image before converting it to eStargz"),
        "{err}"
    );
    assert!(!d.path().join("o").exists());
}

#[test]
fn lazy_reads_over_registry_range_requests_fetch_only_what_they_need() {
    use lazycrypt::crypto::cipher::LayerKey;
    use lazycrypt::layer::estargz::lazy::{Anchor, open};
    use lazycrypt::layer::source::{BlobRange, RangeSource};
    use std::sync::Arc;

    let d = tmp();
    let reg = Registry::start();
    let src = d.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    // 24 MiB of incompressible data beside a small file.
    let noise = noise(24 << 20);
    std::fs::write(src.join("weights.bin"), &noise).unwrap();
    std::fs::write(src.join("config.txt"), "lazy marker\n").unwrap();
    let plain = format!("oci:{}/img:plain", d.path().display());
    build_dir(&src, &plain, &[]);
    let k = rsa_keys(d.path(), "k");
    let remote = reg.image("lazy/app:v1");
    encrypt_estargz(&plain, &remote, &k.public);

    let r = lazycrypt::oci::reference::ImageRef::parse(&remote).unwrap();
    let opts = lazycrypt::oci::transport::TransportOptions {
        registry: lazycrypt::oci::registry::RegistryOptions {
            plain_http: true,
            ..Default::default()
        },
    };
    let source: Arc<dyn lazycrypt::oci::transport::ImageSource> =
        Arc::from(lazycrypt::oci::transport::open_source(&r, &opts).unwrap());
    let image = lazycrypt::oci::image::Image::load(source.as_ref(), &remote).unwrap();
    let desc = image.manifests[0].manifest.layers()[0].clone();
    let ann = desc.annotations().clone().unwrap();
    let private = private_options(&ann, &k.private);
    let anchor = private.toc_digest().unwrap();
    let blob = Arc::new(BlobRange::new(source, desc.clone()));
    let layer = open(
        blob.clone(),
        Some(LayerKey::from_options(&private)),
        &Anchor::Toc(anchor),
        desc.digest().as_ref(),
    )
    .unwrap();
    assert_eq!(
        &layer.read_file("config.txt", 0, 4096).unwrap()[..],
        b"lazy marker\n"
    );
    let part = layer.read_file("weights.bin", 5 << 20, 4096).unwrap();
    assert_eq!(&part[..], &noise[5 << 20..(5 << 20) + 4096]);
    let fetched = blob.fetched();
    assert!(desc.size() > 24 << 20);
    assert!(
        fetched < 3 << 20,
        "fetched {fetched} of {} bytes",
        desc.size()
    );
}

//! `lazycrypt mount` end to end: real FUSE and overlay mounts of images
//! encrypted by skopeo and by lazycrypt, read through the kernel.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::mounts::{Ent, is_mounted, layout_from_tars, mount, snapshot};
use common::*;
use sha2::{Digest, Sha256};

/// One tar entry of a hand-made layer.
enum E {
    Dir(&'static str, u32, u32),
    File(String, u32, u32, Vec<u8>),
    XattrFile(&'static str, &'static str, &'static [u8], Vec<u8>),
    PaxFile(String, Vec<u8>),
    Symlink(&'static str, &'static str),
    Hardlink(&'static str, &'static str),
    Char(&'static str, u32, u32),
    Fifo(&'static str),
    Whiteout(&'static str),
    Opaque(&'static str),
}

const MTIME: u64 = 1_700_000_000;

fn header(kind: tar::EntryType, mode: u32, uid: u64, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(uid);
    h.set_gid(uid);
    h.set_mtime(MTIME);
    h.set_size(size);
    h
}

fn make_tar(entries: &[E]) -> Vec<u8> {
    use tar::EntryType as T;
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        match e {
            E::Dir(p, mode, uid) => {
                let mut h = header(T::Directory, *mode, (*uid).into(), 0);
                b.append_data(&mut h, p, &[][..]).unwrap();
            }
            E::File(p, mode, uid, data) => {
                let mut h = header(T::Regular, *mode, (*uid).into(), data.len() as u64);
                b.append_data(&mut h, p, &data[..]).unwrap();
            }
            E::XattrFile(p, k, v, data) => {
                b.append_pax_extensions([(format!("SCHILY.xattr.{k}").as_str(), *v)])
                    .unwrap();
                let mut h = header(T::Regular, 0o644, 0, data.len() as u64);
                b.append_data(&mut h, p, &data[..]).unwrap();
            }
            E::PaxFile(p, data) => {
                b.append_pax_extensions([("path", p.as_bytes())]).unwrap();
                let mut h = header(T::Regular, 0o644, 0, data.len() as u64);
                b.append_data(&mut h, "pax-placeholder", &data[..]).unwrap();
            }
            E::Symlink(p, t) => {
                let mut h = header(T::Symlink, 0o777, 0, 0);
                b.append_link(&mut h, p, t).unwrap();
            }
            E::Hardlink(p, t) => {
                let mut h = header(T::Link, 0o644, 0, 0);
                b.append_link(&mut h, p, t).unwrap();
            }
            E::Char(p, ma, mi) => {
                let mut h = header(T::Char, 0o666, 0, 0);
                h.set_device_major(*ma).unwrap();
                h.set_device_minor(*mi).unwrap();
                b.append_data(&mut h, p, &[][..]).unwrap();
            }
            E::Fifo(p) => {
                let mut h = header(T::Fifo, 0o600, 0, 0);
                b.append_data(&mut h, p, &[][..]).unwrap();
            }
            E::Whiteout(p) => {
                let (dir, name) = p.rsplit_once('/').unwrap_or(("", p));
                let wh = if dir.is_empty() {
                    format!(".wh.{name}")
                } else {
                    format!("{dir}/.wh.{name}")
                };
                let mut h = header(T::Regular, 0o644, 0, 0);
                b.append_data(&mut h, wh, &[][..]).unwrap();
            }
            E::Opaque(d) => {
                let mut h = header(T::Regular, 0o644, 0, 0);
                b.append_data(&mut h, format!("{d}/.wh..wh..opq"), &[][..])
                    .unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

fn ent(kind: char, mode: u32, uid: u32) -> Ent {
    Ent {
        kind,
        mode,
        uid,
        gid: uid,
        mtime: if kind == 'd' { 0 } else { MTIME as i64 },
        size: 0,
        sha: String::new(),
        link: String::new(),
        rdev: 0,
        nlink: 0,
        xattrs: BTreeMap::new(),
    }
}

fn file_ent(mode: u32, uid: u32, data: &[u8]) -> Ent {
    Ent {
        size: data.len() as u64,
        sha: hex::encode(Sha256::digest(data)),
        nlink: 1,
        ..ent('f', mode, uid)
    }
}

/// The rootfs these layers make when merged the overlay way.
fn expected(layers: &[Vec<E>]) -> BTreeMap<String, Ent> {
    let mut t: BTreeMap<String, Ent> = BTreeMap::new();
    let drop_under = |t: &mut BTreeMap<String, Ent>, p: &str, itself: bool| {
        let prefix = format!("{p}/");
        t.retain(|k, _| !(k.starts_with(&prefix) || (itself && k == p)));
    };
    for layer in layers {
        for e in layer {
            match e {
                E::Whiteout(p) => drop_under(&mut t, p, true),
                E::Opaque(d) => drop_under(&mut t, d, false),
                _ => {}
            }
        }
        for e in layer {
            match e {
                E::Dir(p, mode, uid) => {
                    t.insert(p.to_string(), ent('d', *mode, *uid));
                }
                E::File(p, mode, uid, data) => {
                    t.insert(p.clone(), file_ent(*mode, *uid, data));
                }
                E::XattrFile(p, k, v, data) => {
                    let mut f = file_ent(0o644, 0, data);
                    f.xattrs.insert(k.to_string(), v.to_vec());
                    t.insert(p.to_string(), f);
                }
                E::PaxFile(p, data) => {
                    t.insert(p.clone(), file_ent(0o644, 0, data));
                }
                E::Symlink(p, target) => {
                    let mut l = ent('l', 0o777, 0);
                    l.link = target.to_string();
                    t.insert(p.to_string(), l);
                }
                E::Hardlink(p, target) => {
                    let f = t.get_mut(*target).unwrap();
                    f.nlink += 1;
                    let f = f.clone();
                    t.insert(p.to_string(), f.clone());
                    for v in t.values_mut() {
                        if v.sha == f.sha && v.kind == 'f' {
                            v.nlink = f.nlink;
                        }
                    }
                }
                E::Char(p, ma, mi) => {
                    let mut c = ent('c', 0o666, 0);
                    c.rdev = libc::makedev(*ma, *mi);
                    t.insert(p.to_string(), c);
                }
                E::Fifo(p) => {
                    t.insert(p.to_string(), ent('p', 0o600, 0));
                }
                E::Whiteout(_) | E::Opaque(_) => {}
            }
        }
    }
    t
}

/// Every entry type the issue names, over three layers.
fn rich_layers(big: Vec<u8>) -> Vec<Vec<E>> {
    let long_dir = format!("deep/{}", "d".repeat(90));
    let long_name = format!("{long_dir}/{}.txt", "n".repeat(120));
    let pax_name = format!("deep/pax-{}.bin", "p".repeat(150));
    vec![
        vec![
            E::Dir("etc", 0o755, 0),
            E::File("etc/os-release".into(), 0o644, 0, b"ID=lazy\n".to_vec()),
            E::File("etc/remove-me".into(), 0o600, 0, b"gone soon\n".to_vec()),
            E::XattrFile(
                "etc/tagged",
                "user.note",
                b"v\x00x",
                b"xattr file\n".to_vec(),
            ),
            E::Dir("bin", 0o755, 0),
            E::File(
                "bin/tool".into(),
                0o4755,
                0,
                b"#!/bin/sh\necho tool\n".to_vec(),
            ),
            E::Dir("home", 0o755, 0),
            E::Dir("home/user", 0o700, 1000),
            E::File(
                "home/user/notes".into(),
                0o640,
                1000,
                b"private notes\n".to_vec(),
            ),
            E::Dir("data", 0o755, 0),
            E::File("data/big.bin".into(), 0o644, 0, big),
            E::File("data/small".into(), 0o644, 0, b"linked twice\n".to_vec()),
            E::Hardlink("data/hard", "data/small"),
            E::Dir("lib", 0o755, 0),
            E::Symlink("lib/conf", "../etc/os-release"),
            E::Symlink("lib/abs", "/etc/os-release"),
            E::Dir("dev", 0o755, 0),
            E::Char("dev/null", 1, 3),
            E::Fifo("dev/fifo"),
            E::Dir("opq", 0o755, 0),
            E::File("opq/old".into(), 0o644, 0, b"hidden by opaque\n".to_vec()),
            E::Dir("deep", 0o755, 0),
            E::Dir(Box::leak(long_dir.into_boxed_str()), 0o755, 0),
            E::File(long_name, 0o644, 0, b"long gnu name\n".to_vec()),
        ],
        vec![
            E::Whiteout("etc/remove-me"),
            E::Opaque("opq"),
            E::File("opq/new".into(), 0o644, 0, b"after opaque\n".to_vec()),
            E::File(
                "etc/os-release".into(),
                0o644,
                0,
                b"ID=lazy\nVERSION=2\n".to_vec(),
            ),
            E::PaxFile(pax_name, b"pax named\n".to_vec()),
        ],
        vec![
            E::Whiteout("lib/abs"),
            E::File("top.txt".into(), 0o644, 0, b"top layer\n".to_vec()),
        ],
    ]
}

fn assert_same_tree(mnt: &Path, want: &BTreeMap<String, Ent>) {
    let got = snapshot(mnt);
    for (k, w) in want {
        let g = got
            .get(k)
            .unwrap_or_else(|| panic!("{k} is missing from the mount"));
        assert_eq!(g, w, "{k} differs");
    }
    let extra: Vec<_> = got.keys().filter(|k| !want.contains_key(*k)).collect();
    assert!(extra.is_empty(), "unexpected entries: {extra:?}");
}

#[test]
fn mounted_trees_equal_the_merged_rootfs_for_skopeo_tar_gz_and_estargz() {
    let d = tmp();
    let big = noise(100 << 20);
    let layers = rich_layers(big);
    let want = expected(&layers);
    let tars: Vec<Vec<u8>> = layers.iter().map(|l| make_tar(l)).collect();
    let plain = layout_from_tars(&d.path().join("img"), "plain", &tars, true);
    let k = rsa_keys(d.path(), "k");
    let by_skopeo = format!("oci:{}:skopeo", d.path().join("img").display());
    ok(skopeo().args([
        "copy",
        "--encryption-key",
        &format!("jwe:{}", k.public.display()),
        &plain,
        &by_skopeo,
    ]));
    let by_us = format!("oci:{}:estargz", d.path().join("img").display());
    ok(lazycrypt().args([
        "encrypt",
        "--estargz",
        "-r",
        &format!("jwe:{}", k.public.display()),
        &plain,
        &by_us,
    ]));
    let key = k.private.to_str().unwrap();
    for (image, mode) in [(&by_skopeo, "3 indexed"), (&by_us, "3 lazy")] {
        let state = d.path().join(format!("state-{mode}"));
        let mnt = d.path().join("mnt");
        let m = mount(image, &mnt, &state, &["--key", key, "--stats"]).unwrap();
        assert_same_tree(&mnt, &want);
        let (out, _) = m.umount();
        assert!(out.contains(mode), "{image}: {out}");
    }
}

#[test]
fn mount_fails_cleanly_without_a_key_or_with_a_wrong_one() {
    let d = tmp();
    let tars = vec![make_tar(&[E::File(
        "a.txt".into(),
        0o644,
        0,
        b"a\n".to_vec(),
    )])];
    let plain = layout_from_tars(&d.path().join("img"), "plain", &tars, true);
    let k = rsa_keys(d.path(), "k");
    let other = rsa_keys(d.path(), "other");
    let enc = format!("oci:{}:enc", d.path().join("img").display());
    ok(lazycrypt().args([
        "encrypt",
        "--estargz",
        "-r",
        &format!("jwe:{}", k.public.display()),
        &plain,
        &enc,
    ]));
    let mnt = d.path().join("mnt");
    for args in [vec![], vec!["--key", other.private.to_str().unwrap()]] {
        let err = mount(&enc, &mnt, &d.path().join("state"), &args)
            .err()
            .unwrap();
        assert!(
            err.contains("missing private key needed for decryption"),
            "{err}"
        );
        assert!(!is_mounted(&mnt));
        let runs = d.path().join("state/run/mounts");
        assert!(
            !runs.exists() || std::fs::read_dir(&runs).unwrap().next().is_none(),
            "runtime dir left behind"
        );
    }
}

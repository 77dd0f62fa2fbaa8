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
fn mounted_trees_equal_the_merged_rootfs_for_skopeo_tar_gz_indexed_or_not_zstd_and_estargz() {
    let d = tmp();
    let big = noise(100 << 20);
    let layers = rich_layers(big);
    let want = expected(&layers);
    let tars: Vec<Vec<u8>> = layers.iter().map(|l| make_tar(l)).collect();
    let plain = layout_from_tars(&d.path().join("img"), "plain", &tars, true);
    let k = rsa_keys(d.path(), "k");
    let recipient = format!("jwe:{}", k.public.display());
    let img = d.path().join("img");
    let by_skopeo = format!("oci:{}:skopeo", img.display());
    skopeo_encrypt(
        &plain,
        &by_skopeo,
        std::slice::from_ref(&recipient),
        Some("gzip"),
    );
    let zstd = format!("oci:{}:zstd", img.display());
    skopeo_encrypt(&plain, &zstd, &[recipient], Some("zstd"));
    let by_us = format!("oci:{}:estargz", d.path().join("img").display());
    encrypt_estargz(&plain, &by_us, &k.public);
    let key = k.private.to_str().unwrap();
    // The tar.gz image with a seek index published beside it too: the
    // layers it indexes read as the whole-blob path reads them.
    // From uncompressed layers, so skopeo compresses them itself (Go's
    // gzip ends a block every few dozen KiB; the test layouts' level-1
    // gzip writes one block for the whole 100 MiB, where nothing can be
    // checkpointed, and `lazycrypt index` would refuse it).
    let tar_only = layout_from_tars(&d.path().join("img-tar"), "plain", &tars, false);
    let indexed = format!("oci:{}:indexed", img.display());
    skopeo_encrypt(
        &tar_only,
        &indexed,
        &[format!("jwe:{}", k.public.display())],
        Some("gzip"),
    );
    ok(lazycrypt().args(["index", "--key", key, &indexed]));
    for (image, mode) in [
        (&by_skopeo, "3 indexed"),
        (&indexed, "3 seek-indexed"),
        (&zstd, "3 indexed"),
        (&by_us, "3 lazy"),
    ] {
        let state = d
            .path()
            .join(format!("state-{}", image.rsplit(':').next().unwrap()));
        let mnt = d.path().join("mnt");
        let m = mount(image, &mnt, &state, &["--key", key, "--stats"]).unwrap();
        assert_same_tree(&mnt, &want);
        let (out, _) = m.umount();
        assert!(out.contains(mode), "{image}: {out}");
    }
}

#[test]
fn a_mount_whose_process_was_killed_is_cleaned_up_by_the_next_one() {
    let d = tmp();
    let tars = vec![make_tar(&[E::File(
        "a.txt".into(),
        0o644,
        0,
        b"a\n".to_vec(),
    )])];
    let plain = layout_from_tars(&d.path().join("img"), "plain", &tars, true);
    let k = rsa_keys(d.path(), "k");
    let enc = format!("oci:{}:enc", d.path().join("img").display());
    encrypt_estargz(&plain, &enc, &k.public);
    let (mnt, state) = (d.path().join("mnt"), d.path().join("state"));
    let key = ["--key", k.private.to_str().unwrap()];
    mount(&enc, &mnt, &state, &key).unwrap().kill();
    // The dead mount's overlay and FUSE mounts are still there.
    assert!(is_mounted(&mnt));
    let m = mount(&enc, &mnt, &state, &key).unwrap();
    assert_eq!(std::fs::read(mnt.join("a.txt")).unwrap(), b"a\n");
    // Unmounting leaves nothing mounted at the target: no stale overlay
    // was left stacked under the new one.
    m.umount();
}

/// The options of the mount at `p` in the kernel's mount table.
fn mount_options(p: &Path) -> Vec<String> {
    let table = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let line = table
        .lines()
        .rfind(|l| l.split(' ').nth(1) == p.to_str())
        .unwrap_or_else(|| panic!("{} is not mounted", p.display()));
    line.split(' ')
        .nth(3)
        .unwrap()
        .split(',')
        .map(String::from)
        .collect()
}

#[test]
fn an_image_cannot_bring_set_user_id_files_or_devices_unless_allowed() {
    let d = tmp();
    let tars = vec![make_tar(&[
        E::File("suid".into(), 0o4755, 0, b"x".to_vec()),
        E::Char("null", 1, 3),
    ])];
    let plain = layout_from_tars(&d.path().join("img"), "plain", &tars, true);
    let k = rsa_keys(d.path(), "k");
    let enc = format!("oci:{}:enc", d.path().join("img").display());
    encrypt_estargz(&plain, &enc, &k.public);
    let (mnt, state) = (d.path().join("mnt"), d.path().join("state"));
    let key = k.private.to_str().unwrap();
    let m = mount(&enc, &mnt, &state, &["--key", key]).unwrap();
    let opts = mount_options(&mnt);
    assert!(
        opts.iter().any(|o| o == "nosuid") && opts.iter().any(|o| o == "nodev"),
        "{opts:?}"
    );
    let e = std::fs::File::open(mnt.join("null")).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied, "{e}");
    m.umount();
    let m = mount(&enc, &mnt, &state, &["--key", key, "--allow-suid-dev"]).unwrap();
    let opts = mount_options(&mnt);
    assert!(
        !opts.iter().any(|o| o == "nosuid" || o == "nodev"),
        "{opts:?}"
    );
    let mut dev = std::fs::File::open(mnt.join("null")).unwrap();
    assert_eq!(std::io::Read::read(&mut dev, &mut [0; 8]).unwrap(), 0);
    drop(dev);
    m.umount();
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
    encrypt_estargz(&plain, &enc, &k.public);
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

#[test]
fn reading_one_small_file_of_a_200_mib_image_fetches_little_from_the_registry() {
    let d = tmp();
    let reg = Registry::start();
    let src = d.path().join("src");
    std::fs::create_dir_all(src.join("weights")).unwrap();
    let data = noise(200 << 20);
    for (i, part) in data.chunks(8 << 20).enumerate() {
        std::fs::write(src.join("weights").join(format!("w{i:02}.bin")), part).unwrap();
    }
    let small: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(src.join("config.bin"), &small).unwrap();
    let plain = format!("oci:{}:plain", d.path().join("img").display());
    build_dir(&src, &plain, &["--no-gzip"]);
    let k = rsa_keys(d.path(), "k");
    let remote = reg.image("lazy/big:v1");
    encrypt_estargz(&plain, &remote, &k.public);
    let proxy = common::mounts::CountingProxy::start(&reg.addr);
    let through_proxy = format!("docker://{}/lazy/big:v1", proxy.addr);
    let mnt = d.path().join("mnt");
    let m = mount(
        &through_proxy,
        &mnt,
        &d.path().join("state"),
        &[
            "--plain-http",
            "--key",
            k.private.to_str().unwrap(),
            "--stats",
        ],
    )
    .unwrap();
    assert_eq!(std::fs::read(mnt.join("config.bin")).unwrap(), small);
    let served = proxy.served();
    assert!(
        served < 3 << 20,
        "the registry served {served} bytes to read 4 KiB of a 200 MiB image"
    );
    // A short run of reads in order in the middle of a file (a tensor, a
    // header) loads no chunks beyond it. O_DIRECT keeps the kernel's own
    // read-ahead out of the count.
    let f = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(mnt.join("weights/w10.bin"))
            .unwrap()
    };
    let mut buf = vec![0u8; (64 << 10) + 4096];
    let at = buf.as_ptr().align_offset(4096);
    let piece = &mut buf[at..at + (64 << 10)];
    let base = 3 << 20;
    for i in 0..8u64 {
        use std::os::unix::fs::FileExt;
        let off = base + i * (64 << 10);
        f.read_exact_at(piece, off).unwrap();
        let want = &data[(10 << 23) + off as usize..][..64 << 10];
        assert!(piece == want, "wrong bytes at {off}");
    }
    // Give a read-ahead, had one been started, time to reach the registry.
    std::thread::sleep(std::time::Duration::from_secs(1));
    let run = proxy.served() - served;
    assert!(
        run < 5 << 19,
        "the registry served {run} bytes for 512 KiB read in order"
    );
    drop(f);
    let (out, _) = m.umount();
    assert!(out.contains("1 lazy"), "{out}");
    assert!(out.contains("(0 read ahead)"), "{out}");
}

/// A one-file image `oci:D/img:enc` that skopeo encrypted (JWE, tar+gzip)
/// for a fresh RSA key pair; its layer's digest.
fn skopeo_gzip_image(d: &Path, name: &str, data: &[u8]) -> (String, RsaKeys, String) {
    let src = d.join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join(name), data).unwrap();
    let plain = format!("oci:{}:plain", d.join("img").display());
    build_dir(&src, &plain, &[]);
    let k = rsa_keys(d, "k");
    let enc = format!("oci:{}:enc", d.join("img").display());
    skopeo_encrypt(
        &plain,
        &enc,
        &[format!("jwe:{}", k.public.display())],
        Some("gzip"),
    );
    let layer = layer_digests(&enc)[0].clone();
    (enc, k, layer)
}

/// A tar.gz layer served whole is fetched once: where nothing says the
/// layer is eStargz, its footer check asks for the footer's own bytes, not
/// for the cache block holding them, which the whole-blob fetch then
/// fetched a second time (16 to 32 KiB more per layer).
#[test]
fn a_tar_gz_layer_served_whole_is_fetched_once() {
    let d = tmp();
    let reg = Registry::start();
    let data = noise((2 << 20) + 14000);
    let (enc, k, layer) = skopeo_gzip_image(d.path(), "data.bin", &data);
    let size = std::fs::metadata(blob_path(&d.path().join("img"), &layer))
        .unwrap()
        .len();
    ok(skopeo().args([
        "copy",
        "--dest-tls-verify=false",
        &enc,
        &reg.image("whole/once:v1"),
    ]));
    let proxy = common::mounts::CountingProxy::start(&reg.addr);
    let mnt = d.path().join("mnt");
    let m = mount(
        &format!("docker://{}/whole/once:v1", proxy.addr),
        &mnt,
        &d.path().join("state"),
        &["--plain-http", "--key", k.private.to_str().unwrap()],
    )
    .unwrap();
    assert!(std::fs::read(mnt.join("data.bin")).unwrap() == data);
    let extra = proxy.served() - size;
    // The cache's last 16 KiB block of this blob holds more than the bound.
    assert!(size % (16 << 10) > 12 << 10, "{size}");
    assert!(
        extra < 12 << 10,
        "the registry served {extra} bytes beyond the {size}-byte layer"
    );
    m.umount();
}

#[test]
fn a_lazy_file_read_through_the_page_cache_costs_no_chunk_past_the_reader_and_still_maps() {
    let d = tmp();
    let reg = Registry::start();
    let src = d.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let data = noise(4 << 20);
    std::fs::write(src.join("data.bin"), &data).unwrap();
    let plain = format!("oci:{}:plain", d.path().join("img").display());
    build_dir(&src, &plain, &["--no-gzip"]);
    let k = rsa_keys(d.path(), "k");
    encrypt_estargz(&plain, &reg.image("lazy/stop:v1"), &k.public);
    let proxy = common::mounts::CountingProxy::start(&reg.addr);
    let mnt = d.path().join("mnt");
    let m = mount(
        &format!("docker://{}/lazy/stop:v1", proxy.addr),
        &mnt,
        &d.path().join("state"),
        &["--plain-http", "--key", k.private.to_str().unwrap()],
    )
    .unwrap();
    // Plain buffered reads, as `dd bs=64k` makes them, of the first 1 MiB
    // chunk, stopping at its end. The kernel's read-ahead would ask for the
    // next chunk; a file still fetched lazily is read around it.
    let before = proxy.served();
    let mut f = std::fs::File::open(mnt.join("data.bin")).unwrap();
    let mut piece = vec![0u8; 64 << 10];
    for i in 0..16 {
        use std::io::Read;
        f.read_exact(&mut piece).unwrap();
        assert!(piece == data[i * (64 << 10)..][..64 << 10], "wrong bytes");
    }
    std::thread::sleep(std::time::Duration::from_secs(1));
    let served = proxy.served() - before;
    assert!(
        served < 3 << 19,
        "the registry served {served} bytes for the first 1 MiB chunk read in order"
    );
    // Such a file may still be mapped, shared, and read through the map.
    let len = data.len();
    // SAFETY: a read-only shared mapping of an open file, unmapped below.
    let map = unsafe {
        use std::os::fd::AsRawFd;
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        )
    };
    assert_ne!(map, libc::MAP_FAILED, "{}", std::io::Error::last_os_error());
    // SAFETY: the mapping is `len` bytes long and readable.
    let mapped = unsafe { std::slice::from_raw_parts(map as *const u8, len) };
    let at = (5 << 19) + 4321;
    assert!(
        mapped[at..at + 8192] == data[at..at + 8192],
        "wrong mapped bytes"
    );
    // SAFETY: unmapping what was mapped above.
    unsafe { libc::munmap(map, len) };
    drop(f);
    m.umount();
}

#[test]
fn tampered_chunks_fail_with_eio_while_other_files_keep_working() {
    let d = tmp();
    let src = d.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let big = noise(8 << 20);
    std::fs::write(src.join("big.bin"), &big).unwrap();
    std::fs::write(src.join("small.txt"), "still fine\n").unwrap();
    let plain = format!("oci:{}:plain", d.path().join("img").display());
    build_dir(&src, &plain, &[]);
    let k = rsa_keys(d.path(), "k");
    let enc = format!("oci:{}:enc", d.path().join("img").display());
    encrypt_estargz(&plain, &enc, &k.public);
    let layer = layer_digests(&enc)[0].clone();
    let blob = blob_path(&d.path().join("img"), &layer);
    let mut bytes = std::fs::read(&blob).unwrap();
    // The middle of the blob lies in a chunk of the big file.
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&blob, &bytes).unwrap();

    let mnt = d.path().join("mnt");
    let key = k.private.to_str().unwrap();
    let m = mount(&enc, &mnt, &d.path().join("state"), &["--key", key]).unwrap();
    let e = std::fs::read(mnt.join("big.bin")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    assert_eq!(
        std::fs::read_to_string(mnt.join("small.txt")).unwrap(),
        "still fine\n"
    );
    // Chunks before the damaged one still read.
    let mut f = std::fs::File::open(mnt.join("big.bin")).unwrap();
    let mut head = vec![0u8; 1 << 20];
    std::io::Read::read_exact(&mut f, &mut head).unwrap();
    assert_eq!(head, big[..1 << 20]);
    drop(f);
    // The source is mended: the bad copy was not kept in the ciphertext
    // cache, so the next read fetches the chunk again and the file reads
    // whole.
    let mut mended = bytes.clone();
    mended[mid] ^= 0x40;
    std::fs::write(&blob, &mended).unwrap();
    assert!(std::fs::read(mnt.join("big.bin")).unwrap() == big);
    std::fs::write(&blob, &bytes).unwrap();
    let (_, log) = m.umount();
    let line = log
        .lines()
        .find(|l| l.contains("ERROR"))
        .unwrap_or_else(|| panic!("no error logged: {log}"));
    assert!(
        line.contains(&format!("layer {layer}: chunk at blob offset")),
        "{line}"
    );
    assert!(
        !log.contains("big.bin"),
        "file names reached the log: {log}"
    );

    // A damaged TOC or footer: the mount is refused, in one line, and nothing stays mounted.
    for at in [bytes.len() - 51 - 40, bytes.len() - 20] {
        let mut evil = std::fs::read(&blob).unwrap();
        evil[mid] ^= 0x40;
        evil[at] ^= 0x01;
        std::fs::write(&blob, &evil).unwrap();
        let err = mount(&enc, &mnt, &d.path().join("state2"), &["--key", key])
            .err()
            .expect("mount of a damaged layer");
        let last = err.lines().last().unwrap();
        assert!(last.starts_with("lazycrypt: mounting"), "{err}");
        assert!(last.contains(&format!("layer {layer}")), "{last}");
        assert!(!is_mounted(&mnt));
    }
}

/// A copy in the ciphertext cache that went bad after the blob was verified
/// (a disk error, a writer gone wrong) fails its chunk once; the next read
/// fetches that range again instead of failing forever.
#[test]
fn a_bad_copy_in_the_ciphertext_cache_is_fetched_again() {
    let d = tmp();
    let big = noise(8 << 20);
    let (enc, k, layer) = skopeo_gzip_image(d.path(), "big.bin", &big);
    let (mnt, state) = (d.path().join("mnt"), d.path().join("state"));
    // A 16 MiB cache keeps the first 2 MiB its verified pass read, in
    // memory; the middle of the layer is read from the ciphertext cache.
    let key = k.private.to_str().unwrap();
    let m = mount(&enc, &mnt, &state, &["--key", key, "--cache-size", "16M"]).unwrap();
    let hex = layer.trim_start_matches("sha256:");
    let cached = std::fs::read_dir(state.join("root/blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            let n = p.file_name().unwrap().to_string_lossy().into_owned();
            n.starts_with(hex) && n.ends_with(".data")
        })
        .expect("the layer's cache file");
    let mut bytes = std::fs::read(&cached).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x10;
    std::fs::write(&cached, &bytes).unwrap();
    // The first read may fail with EIO (or the kernel's retry of the page
    // may already find the range fetched again); the next one reads it all.
    if let Err(e) = std::fs::read(mnt.join("big.bin")) {
        assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    }
    let again = std::fs::read(mnt.join("big.bin"));
    assert!(
        again.as_ref().is_ok_and(|b| *b == big),
        "the bad copy stayed: {:?}",
        again.err()
    );
    assert!(
        m.log().contains("does not match the digests recorded"),
        "the bad copy was never read: {}",
        m.log()
    );
    m.umount();
}

#[test]
fn an_estargz_layer_without_an_anchor_is_verified_whole_before_it_is_served() {
    let d = tmp();
    let src = d.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a.bin"), noise(3 << 20)).unwrap();
    std::fs::write(src.join("b.txt"), "bee\n").unwrap();
    let plain = format!("oci:{}:plain", d.path().join("img").display());
    build_dir(&src, &plain, &[]);
    let esgz = format!("oci:{}:esgz", d.path().join("img").display());
    ok(lazycrypt().args(["encrypt", "--estargz", &plain, &esgz]));
    edit_manifest(&esgz, |m| {
        m["layers"][0]["annotations"]
            .as_object_mut()
            .unwrap()
            .remove("containerd.io/snapshot/stargz/toc.digest");
    });
    let mnt = d.path().join("mnt");
    let m = mount(&esgz, &mnt, &d.path().join("s1"), &["--stats"]).unwrap();
    assert_eq!(std::fs::read_to_string(mnt.join("b.txt")).unwrap(), "bee\n");
    let (out, _) = m.umount();
    assert!(out.contains("1 verified whole"), "{out}");

    // Damage a byte of a.bin's data: whole-blob verification refuses the layer…
    let layer = layer_digests(&esgz)[0].clone();
    let blob = blob_path(&d.path().join("img"), &layer);
    let mut bytes = std::fs::read(&blob).unwrap();
    bytes[(1 << 20) + 100] ^= 1;
    std::fs::write(&blob, &bytes).unwrap();
    let err = mount(&esgz, &mnt, &d.path().join("s2"), &[]).err().unwrap();
    assert!(err.contains(&format!("{layer} has digest")), "{err}");
    assert!(!is_mounted(&mnt));
    // …unless the operator allows unverified lazy reads: then chunk digests
    // from the (unanchored) TOC still stop the damaged chunk.
    let m = mount(
        &esgz,
        &mnt,
        &d.path().join("s3"),
        &["--allow-unverified-lazy", "--stats"],
    )
    .unwrap();
    assert_eq!(std::fs::read_to_string(mnt.join("b.txt")).unwrap(), "bee\n");
    let e = std::fs::read(mnt.join("a.bin")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO));
    let (out, _) = m.umount();
    assert!(out.contains("1 unverified"), "{out}");
}

/// A tar header written byte by byte, so names the `tar` crate would refuse
/// (`../`, absolute) can be made.
fn raw_entry(out: &mut Vec<u8>, name: &str, kind: u8, link: &str, data: &[u8], claimed: u64) {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..108].copy_from_slice(b"0000644\0");
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    h[124..136].copy_from_slice(format!("{claimed:011o}\0").as_bytes());
    h[136..148].copy_from_slice(format!("{MTIME:011o}\0").as_bytes());
    h[156] = kind;
    h[157..157 + link.len()].copy_from_slice(link.as_bytes());
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
}

#[test]
fn hostile_tar_entries_are_contained_or_refused() {
    let d = tmp();
    let mut t = Vec::new();
    raw_entry(&mut t, "../../escape.txt", b'0', "", b"escaped?\n", 9);
    raw_entry(&mut t, "/abs.txt", b'0', "", b"absolute\n", 9);
    raw_entry(&mut t, "dup", b'0', "", b"first\n", 6);
    raw_entry(&mut t, "dup", b'0', "", b"second\n", 7);
    raw_entry(&mut t, "ghost-link", b'1', "no/such/file", b"", 0);
    raw_entry(&mut t, "a/../../../b/c.txt", b'0', "", b"cleaned\n", 8);
    raw_entry(&mut t, "evil-link", b'2', "../../../../etc/shadow", b"", 0);
    t.extend_from_slice(&[0u8; 1024]);
    let image = layout_from_tars(&d.path().join("img"), "hostile", &[t.clone()], false);
    let mnt = d.path().join("box/mnt");
    let m = mount(&image, &mnt, &d.path().join("state"), &[]).unwrap();
    let got = snapshot(&mnt);
    let names: Vec<&str> = got.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        ["abs.txt", "b", "b/c.txt", "dup", "escape.txt", "evil-link"]
    );
    assert_eq!(
        std::fs::read_to_string(mnt.join("dup")).unwrap(),
        "second\n"
    );
    assert_eq!(
        std::fs::read_to_string(mnt.join("escape.txt")).unwrap(),
        "escaped?\n"
    );
    assert_eq!(got["evil-link"].link, "../../../../etc/shadow");
    for outside in ["box/escape.txt", "escape.txt", "box/abs.txt"] {
        assert!(!d.path().join(outside).exists(), "{outside} escaped");
    }
    let (_, log) = m.umount();
    assert!(
        log.contains("entry 4 skipped: hard link to a missing entry"),
        "{log}"
    );

    // A size the stream cannot back: the layer is refused, in one line.
    let mut t = Vec::new();
    raw_entry(&mut t, "huge.bin", b'0', "", b"tiny", (8 << 30) - 1);
    let image = layout_from_tars(&d.path().join("img2"), "huge", &[t], false);
    let err = mount(&image, &mnt, &d.path().join("state2"), &[])
        .err()
        .unwrap();
    let last = err.lines().last().unwrap();
    assert!(last.starts_with("lazycrypt: mounting"), "{err}");
    assert!(!is_mounted(&mnt));
}

/// A PAX header entry holding these records.
fn raw_pax(out: &mut Vec<u8>, records: &[(&str, &[u8])]) {
    let mut data = Vec::new();
    for (k, v) in records {
        let body = k.len() + v.len() + 3;
        let mut len = body + body.to_string().len();
        if len.to_string().len() != body.to_string().len() {
            len += 1;
        }
        data.extend_from_slice(format!("{len} {k}=").as_bytes());
        data.extend_from_slice(v);
        data.push(b'\n');
    }
    raw_entry(out, "pax", b'x', "", &data, data.len() as u64);
}

/// Every extended attribute of `p` (not following symlinks), by name.
fn all_xattrs(p: &Path) -> BTreeMap<String, Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    let mut names = vec![0u8; 64 << 10];
    // SAFETY: buffers are valid for the lengths given.
    let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    assert!(n >= 0, "listxattr {}", p.display());
    let mut out = BTreeMap::new();
    for name in names[..n as usize]
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
    {
        let cn = std::ffi::CString::new(name).unwrap();
        let mut v = vec![0u8; 64 << 10];
        // SAFETY: as above.
        let len =
            unsafe { libc::lgetxattr(c.as_ptr(), cn.as_ptr(), v.as_mut_ptr().cast(), v.len()) };
        assert!(len >= 0, "getxattr on {}", p.display());
        v.truncate(len as usize);
        out.insert(String::from_utf8_lossy(name).into_owned(), v);
    }
    out
}

#[test]
fn hostile_names_and_host_xattrs_do_not_steer_the_overlay() {
    let d = tmp();
    // File capabilities v2: effective, CAP_NET_RAW permitted (as ping has).
    let caps: &[u8] = &[
        1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    let mut lower = Vec::new();
    raw_entry(&mut lower, "d/", b'5', "", b"", 0);
    raw_entry(&mut lower, "d/keep.txt", b'0', "", b"kept\n", 5);
    raw_entry(&mut lower, "src/", b'5', "", b"", 0);
    raw_entry(&mut lower, "src/moved.txt", b'0', "", b"moved\n", 6);
    lower.extend_from_slice(&[0u8; 1024]);
    let mut upper = Vec::new();
    // overlayfs would hide d/keep.txt below if it read this.
    raw_pax(&mut upper, &[("SCHILY.xattr.trusted.overlay.opaque", b"y")]);
    raw_entry(&mut upper, "d/", b'5', "", b"", 0);
    raw_pax(
        &mut upper,
        &[
            ("SCHILY.xattr.trusted.overlay.redirect", b"/src"),
            (
                "SCHILY.xattr.security.selinux",
                b"system_u:object_r:shadow_t:s0",
            ),
        ],
    );
    raw_entry(&mut upper, "r/", b'5', "", b"", 0);
    raw_pax(
        &mut upper,
        &[
            ("SCHILY.xattr.trusted.other", b"1"),
            ("SCHILY.xattr.security.ima", b"x"),
            ("SCHILY.xattr.security.capability", caps),
            ("SCHILY.xattr.user.kept", b"yes"),
        ],
    );
    raw_entry(&mut upper, "f", b'0', "", b"f\n", 2);
    raw_entry(&mut upper, "../escape", b'0', "", b"e\n", 2);
    raw_entry(&mut upper, "/abs", b'0', "", b"a\n", 2);
    raw_entry(&mut upper, "a/./b", b'0', "", b"b\n", 2);
    raw_entry(&mut upper, "a//c", b'0', "", b"c\n", 2);
    raw_entry(&mut upper, "dup", b'0', "", b"first\n", 6);
    raw_entry(&mut upper, "./dup", b'0', "", b"second\n", 7);
    raw_entry(&mut upper, "a/.wh...", b'0', "", b"", 0);
    raw_entry(&mut upper, "x/../..", b'0', "", b"", 0);
    raw_entry(&mut upper, "h", b'1', "/../a//b", b"", 0);
    upper.extend_from_slice(&[0u8; 1024]);
    let plain = layout_from_tars(&d.path().join("img"), "plain", &[lower, upper], false);
    let k = rsa_keys(d.path(), "k");
    let lazy = format!("oci:{}:estargz", d.path().join("img").display());
    encrypt_estargz(&plain, &lazy, &k.public);
    let key = k.private.to_str().unwrap();
    let mnt = d.path().join("box/mnt");
    for (i, (image, args)) in [(&plain, vec![]), (&lazy, vec!["--key", key])]
        .into_iter()
        .enumerate()
    {
        let state = d.path().join(format!("state-{i}"));
        let m = mount(image, &mnt, &state, &args).unwrap();
        let got = snapshot(&mnt);
        let names: Vec<&str> = got.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "a",
                "a/b",
                "a/c",
                "abs",
                "d",
                "d/keep.txt",
                "dup",
                "escape",
                "f",
                "h",
                "r",
                "src",
                "src/moved.txt"
            ],
            "{image}"
        );
        assert_eq!(std::fs::read(mnt.join("dup")).unwrap(), b"second\n");
        assert_eq!(got["h"].nlink, 2, "h is a hard link to a/b");
        assert!(!d.path().join("box/escape").exists());
        let want: BTreeMap<String, Vec<u8>> = [
            ("security.capability".to_string(), caps.to_vec()),
            ("user.kept".to_string(), b"yes".to_vec()),
        ]
        .into();
        assert_eq!(all_xattrs(&mnt.join("f")), want, "{image}");
        for dir in ["d", "r"] {
            assert_eq!(all_xattrs(&mnt.join(dir)), BTreeMap::new(), "{image} {dir}");
        }
        let (_, log) = m.umount();
        assert!(log.contains("skipped: whiteout of no name"), "{log}");
        assert!(!log.contains(".wh..."), "{log}");
    }

    // A NUL in a PAX name refuses the layer, in a line that names no file.
    let mut t = Vec::new();
    raw_pax(&mut t, &[("path", b"secret-name\0x")]);
    raw_entry(&mut t, "placeholder", b'0', "", b"", 0);
    t.extend_from_slice(&[0u8; 1024]);
    let image = layout_from_tars(&d.path().join("img2"), "nul", &[t], false);
    let err = mount(&image, &mnt, &d.path().join("state-nul"), &[])
        .err()
        .unwrap();
    assert!(err.contains("PAX record holds a NUL byte"), "{err}");
    assert!(!err.contains("secret-name"), "{err}");
    assert!(!is_mounted(&mnt));
}

#[test]
fn no_plaintext_reaches_the_disk_or_the_log() {
    let d = tmp();
    let seed = hex::encode(Sha256::digest(d.path().as_os_str().as_encoded_bytes()));
    let marker = format!("LZMARK{}", &seed[..12]);
    let src = d.path().join("src");
    std::fs::create_dir_all(src.join(format!("dir-{marker}"))).unwrap();
    std::fs::write(
        src.join(format!("dir-{marker}/secret-{marker}.txt")),
        format!("the secret is {marker}\n").repeat(1000),
    )
    .unwrap();
    let mut big = noise(3 << 20);
    big[(2 << 20) + 5..(2 << 20) + 5 + marker.len()].copy_from_slice(marker.as_bytes());
    std::fs::write(src.join("big.bin"), &big).unwrap();
    let plain = format!("oci:{}:plain", d.path().join("img").display());
    build_dir(&src, &plain, &[]);
    let k = rsa_keys(d.path(), "k");
    let key = k.private.to_str().unwrap();
    let recipient = format!("jwe:{}", k.public.display());
    let esgz = format!("oci:{}:esgz", d.path().join("img").display());
    encrypt_estargz(&plain, &esgz, &k.public);
    // Prioritized files are fetched and decrypted into memory at mount.
    let list = d.path().join("start-up.txt");
    std::fs::write(&list, format!("dir-{marker}/secret-{marker}.txt\n")).unwrap();
    let prio = format!("oci:{}:prio", d.path().join("img").display());
    ok(lazycrypt().args([
        "encrypt",
        "--estargz",
        "--prioritize",
        list.to_str().unwrap(),
        "-r",
        &recipient,
        &plain,
        &prio,
    ]));
    let targz = format!("oci:{}:targz", d.path().join("img").display());
    skopeo_encrypt(
        &plain,
        &targz,
        std::slice::from_ref(&recipient),
        Some("gzip"),
    );
    // zstd layers are served from a sealed scratch copy: nameless, so the
    // scan below also reads every file the process holds open.
    let zstd = format!("oci:{}:zstd", d.path().join("img").display());
    skopeo_encrypt(
        &plain,
        &zstd,
        std::slice::from_ref(&recipient),
        Some("zstd"),
    );

    // tar.gz with a seek index: its sealed blobs are cached under the
    // state too, and `lazycrypt index` prints nothing of the files.
    let indexed = format!("oci:{}:indexed", d.path().join("img").display());
    skopeo_encrypt(
        &plain,
        &indexed,
        std::slice::from_ref(&recipient),
        Some("gzip"),
    );
    let said = run(lazycrypt().args(["index", "--key", key, &indexed]));
    assert!(said.status.success());
    for text in [&said.stdout, &said.stderr] {
        let text = String::from_utf8_lossy(text);
        assert!(text.contains("sha256:") || text.is_empty());
        assert!(
            !text.contains(&marker) && !text.contains("secret-"),
            "{text}"
        );
    }

    let state = d.path().join("state");
    let needles: [&[u8]; 2] = [marker.as_bytes(), b"secret-"];
    for image in [&esgz, &prio, &targz, &zstd, &indexed] {
        let mnt = d.path().join("mnt");
        let m = mount(
            image,
            &mnt,
            &state,
            &["--key", key, "--writable", "--stats"],
        )
        .unwrap();
        let secret = mnt.join(format!("dir-{marker}/secret-{marker}.txt"));
        assert!(std::fs::read_to_string(&secret).unwrap().contains(&marker));
        assert_eq!(std::fs::read(mnt.join("big.bin")).unwrap(), big);
        // Writes go to the tmpfs upper layer, never to the state dirs.
        std::fs::write(mnt.join(format!("new-{marker}")), &marker).unwrap();
        let hits = common::mounts::files_containing(&state, &needles);
        assert!(hits.is_empty(), "plaintext at rest while mounted: {hits:?}");
        let open = common::mounts::open_files_containing(m.pid, &needles);
        assert!(open.is_empty(), "plaintext in open files: {open:?}");
        let (out, log) = m.umount();
        for text in [&out, &log] {
            assert!(
                !text.contains(&marker) && !text.contains("secret-"),
                "{text}"
            );
        }
        if image == &indexed {
            assert!(!out.contains(" 0 seek-indexed"), "{out}");
        }
        let hits = common::mounts::files_containing(&state, &needles);
        assert!(hits.is_empty(), "plaintext at rest after unmount: {hits:?}");
    }
    // The cache did hold the ciphertext: the scan looked at real blobs.
    let cached = std::fs::read_dir(state.join("root/blobs/sha256"))
        .unwrap()
        .count();
    assert!(cached >= 4, "{cached} files in the blob cache");
}

#[test]
fn concurrent_readers_get_correct_bytes_under_a_small_cache() {
    let d = tmp();
    let src = d.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let all = noise(64 << 20);
    let mut files = Vec::new();
    let mut at = 0;
    for i in 0..40 {
        let len = 100_000 + (i * 77_777) % 3_000_000;
        let name = format!("f{i:02}.bin");
        std::fs::write(src.join(&name), &all[at..at + len]).unwrap();
        files.push((name, at, len));
        at += len;
    }
    let plain = format!("oci:{}:plain", d.path().join("img").display());
    build_dir(&src, &plain, &[]);
    let k = rsa_keys(d.path(), "k");
    let enc = format!("oci:{}:enc", d.path().join("img").display());
    encrypt_estargz(&plain, &enc, &k.public);
    let mnt = d.path().join("mnt");
    let m = mount(
        &enc,
        &mnt,
        &d.path().join("state"),
        &[
            "--key",
            k.private.to_str().unwrap(),
            "--cache-size",
            "16M",
            "--stats",
        ],
    )
    .unwrap();
    let files = std::sync::Arc::new(files);
    let all = std::sync::Arc::new(all);
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let (files, all, mnt) = (files.clone(), all.clone(), mnt.clone());
            std::thread::spawn(move || {
                use std::os::unix::fs::FileExt;
                let mut x = 0x2545_f491_4f6c_dd1du64 ^ (t + 1);
                let mut next = move || {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x
                };
                for _ in 0..60 {
                    let (name, base, len) = &files[(next() % files.len() as u64) as usize];
                    let off = (next() % *len as u64) as usize;
                    let n = ((next() % (512 << 10)) as usize).min(len - off);
                    let f = std::fs::File::open(mnt.join(name)).unwrap();
                    let mut buf = vec![0u8; n];
                    f.read_exact_at(&mut buf, off as u64).unwrap();
                    assert!(
                        buf[..] == all[base + off..base + off + n],
                        "{name} at {off}+{n} differs"
                    );
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let (out, _) = m.umount();
    let evicted: u64 = out
        .split("; ")
        .find_map(|p| p.strip_suffix(" chunks evicted"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no eviction count in {out}"));
    assert!(evicted > 0, "the 16 MiB budget was never reached: {out}");
}

#[test]
fn prioritized_files_are_fetched_at_mount_in_one_range_not_file_by_file() {
    let d = tmp();
    let reg = Registry::start();
    let src = d.path().join("src");
    std::fs::create_dir_all(src.join("lib")).unwrap();
    let all = noise(300 * 6000);
    let files: Vec<&[u8]> = all.chunks(6000).collect();
    for (i, f) in files.iter().enumerate() {
        std::fs::write(src.join(format!("lib/m{i:03}.py")), f).unwrap();
    }
    let plain = format!("oci:{}:plain", d.path().join("img").display());
    build_dir(&src, &plain, &["--no-gzip"]);
    let k = rsa_keys(d.path(), "k");
    let picked: Vec<usize> = (0..300).step_by(15).collect();
    let list = d.path().join("start-up.txt");
    let names: Vec<String> = picked.iter().map(|i| format!("/lib/m{i:03}.py")).collect();
    std::fs::write(&list, format!("# read at start-up\n{}\n", names.join("\n"))).unwrap();

    let mut served = Vec::new();
    for prioritize in [false, true] {
        let remote = reg.image(&format!("lazy/prio:{prioritize}"));
        let mut args = vec!["encrypt", "--plain-http", "--estargz"];
        if prioritize {
            args.extend(["--prioritize", list.to_str().unwrap()]);
        }
        let recipient = format!("jwe:{}", k.public.display());
        args.extend(["-r", &recipient, &plain, &remote]);
        ok(lazycrypt().args(&args));
        let proxy = common::mounts::CountingProxy::start(&reg.addr);
        let image = format!("docker://{}/lazy/prio:{prioritize}", proxy.addr);
        let mnt = d.path().join(format!("mnt-{prioritize}"));
        let state = d.path().join(format!("state-{prioritize}"));
        let key = k.private.to_str().unwrap();
        let m = mount(&image, &mnt, &state, &["--plain-http", "--key", key]).unwrap();
        for &i in &picked {
            let got = std::fs::read(mnt.join(format!("lib/m{i:03}.py"))).unwrap();
            assert!(got == files[i], "wrong bytes in m{i:03}.py");
        }
        served.push(proxy.served());
        m.umount();
    }
    // File by file, each of the 20 files costs a fetch of its own;
    // prioritized, they lie together and come in one range at mount.
    assert!(
        served[1] * 2 < served[0],
        "the registry served {} bytes with the files prioritized, {} without",
        served[1],
        served[0]
    );
}

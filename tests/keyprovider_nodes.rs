//! The key-broker path on a node: a layer wrapped only by a keyprovider
//! opens in `serve` (a container reads it) and in `mount`, with nothing but
//! `$OCICRYPT_KEYPROVIDER_CONFIG` naming the provider, as ocicrypt asks every
//! configured provider.

mod common;

use std::path::Path;

use common::containerd::{Containerd, Daemon};
use common::mounts::mount_with_env;
use common::*;

const ENV: &str = "OCICRYPT_KEYPROVIDER_CONFIG";

/// A busybox image with `/data/secret` holding `marker`, built in `d` and
/// encrypted as eStargz to the provider only, into `dst`.
fn provider_image(d: &Path, cfg: &Path, dst: &str, marker: &str) {
    let root = d.join("rootfs");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::create_dir_all(root.join("data")).unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    std::fs::write(root.join("data/secret"), format!("{marker}\n")).unwrap();
    let plain = format!("oci:{}:plain", d.join("img").display());
    ok(lazycrypt()
        .args(["build", "--cmd", "/bin/busybox", "--layer"])
        .arg(&root)
        .args(["--", &plain]));
    ok(lazycrypt().env(ENV, cfg).args([
        "encrypt",
        "--plain-http",
        "--estargz",
        "-r",
        "provider:testkp",
        &plain,
        dst,
    ]));
}

#[test]
fn serve_unwraps_a_layer_through_the_configured_keyprovider() {
    let d = tmp();
    let cfg = keyprovider_config(d.path());
    let reg = Registry::start();
    let image = reg.image("kp/app:v1");
    provider_image(d.path(), &cfg, &image, "served by the keyprovider");
    let name = image.trim_start_matches("docker://");

    // No keys directory: the provider is the node's only key.
    let args = ["--keys-dir", d.path().join("no-keys").to_str().unwrap()]
        .into_iter()
        .chain(["--plain-http", &reg.addr])
        .map(String::from)
        .collect::<Vec<_>>();
    let daemon = Daemon::start_with_env(d.path(), &args, &[(ENV, &cfg)]);
    let ctd = Containerd::start(d.path(), &daemon.socket);
    let pull = ["pull", "--plain-http", "--namespace", "lazycrypt-test"];
    let out = ok(lazycrypt()
        .args(pull)
        .arg("--address")
        .arg(&ctd.socket)
        .arg(name));
    assert!(out.contains("1 layers mounted lazily"), "{out}");
    let out = ok(ctd.ctr().args([
        "run",
        "--rm",
        "--snapshotter",
        "lazycrypt",
        name,
        "c1",
        "/bin/busybox",
        "cat",
        "/data/secret",
    ]));
    assert_eq!(out, "served by the keyprovider\n");
    drop(ctd);
    daemon.stop();
}

#[test]
fn mount_unwraps_a_layer_through_the_configured_keyprovider() {
    let d = tmp();
    let cfg = keyprovider_config(d.path());
    let enc = format!("oci:{}:enc", d.path().join("img").display());
    provider_image(d.path(), &cfg, &enc, "mounted by the keyprovider");
    let (mnt, state) = (d.path().join("mnt"), d.path().join("state"));
    let m = mount_with_env(&enc, &mnt, &state, &[], &[(ENV, &cfg)]).unwrap();
    assert_eq!(
        std::fs::read_to_string(mnt.join("data/secret")).unwrap(),
        "mounted by the keyprovider\n"
    );
    m.umount();

    // Without the config, the same mount is refused with imgcrypt's words.
    let err = common::mounts::mount(&enc, &mnt, &state, &[])
        .err()
        .expect("no key");
    assert!(
        err.contains("missing private key needed for decryption")
            && err.contains("provider.testkp: no keyprovider \"testkp\" is configured"),
        "{err}"
    );
}

//! `lazycrypt serve`'s CRI keychain: a CRI image service in front of
//! containerd (1.6 and 2.1) that keeps the image-pull-secret of a
//! `PullImage` in memory for the lazy layers of a private image, on a node
//! with no docker config.

#[macro_use]
mod common;

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::containerd::{Containerd, Daemon, Line};
use common::{Registry, lazycrypt, ok, tmp};
use lazycrypt::containerd::proto::cri;
use tonic::Code;

const USER: &str = "kubelet-user";
const PASSWORD: &str = "pw-Xq7-never-written";

/// A CRI `ImageFsInfo` sent to `socket`: where images are kept.
fn image_fs(socket: &Path) -> Result<Vec<String>, tonic::Status> {
    common::cri::rt().block_on(async {
        common::cri::images(socket)
            .await
            .image_fs_info(cri::ImageFsInfoRequest {})
            .await
            .map(|r| {
                r.into_inner()
                    .image_filesystems
                    .into_iter()
                    .filter_map(|f| f.fs_id.map(|i| i.mountpoint))
                    .collect()
            })
    })
}

/// A containerd-native call (its images service) sent to `socket`.
fn containerd_images_get(socket: &Path) -> Result<(), tonic::Status> {
    use lazycrypt::containerd::proto::images;
    common::cri::rt().block_on(async {
        let c = lazycrypt::containerd::client::Client::connect(socket, "k8s.io")
            .await
            .unwrap();
        images::images_client::ImagesClient::new(c.channel)
            .get(images::GetImageRequest {
                name: "docker.io/library/busybox:latest".into(),
            })
            .await
            .map(|_| ())
    })
}

/// An `ImageFsInfo` whose request carries `size` bytes more than the
/// empty message (a field containerd skips), sent to `socket`.
fn oversized_image_fs(socket: &Path, size: usize) -> Result<(), tonic::Status> {
    common::cri::rt().block_on(async {
        let c = lazycrypt::containerd::client::Client::connect(socket, "k8s.io")
            .await
            .unwrap();
        let mut grpc = tonic::client::Grpc::new(c.channel);
        grpc.ready().await.unwrap();
        let req = cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: "x".repeat(size),
                annotations: HashMap::new(),
            }),
            auth: None,
        };
        grpc.unary(
            tonic::Request::new(req),
            "/runtime.v1.ImageService/ImageFsInfo".parse().unwrap(),
            tonic_prost::ProstCodec::<cri::PullImageRequest, cri::ImageFsInfoResponse>::default(),
        )
        .await
        .map(|_| ())
    })
}

/// A `serve` config with the keychain on `listen` in front of `upstream`.
fn keychain_config(dir: &Path, listen: &Path, upstream: &Path) -> PathBuf {
    let p = dir.join("config.toml");
    std::fs::write(
        &p,
        format!(
            "cri_keychain = {{ listen = \"{}\", upstream = \"{}\" }}\n",
            listen.display(),
            upstream.display()
        ),
    )
    .unwrap();
    p
}

/// Waits for the keychain's socket (serve binds it after the snapshots one).
fn wait_for(p: &Path, daemon: &Daemon) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !p.exists() {
        assert!(
            Instant::now() < deadline,
            "no {}:\n{}",
            p.display(),
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The FUSE layer mounts under `root`.
fn layer_mounts(root: &Path) -> Vec<PathBuf> {
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f.len() > 2 && f[2].starts_with("fuse") && f[1].starts_with(&*root.to_string_lossy()))
                .then(|| PathBuf::from(f[1]))
        })
        .collect()
}

on_lines!(a_cri_pull_with_an_image_pull_secret_mounts_a_private_encrypted_image_lazily: V1_6, V2_1, V2_1Local);
fn a_cri_pull_with_an_image_pull_secret_mounts_a_private_encrypted_image_lazily(line: Line) {
    let d = tmp();
    let htpasswd = d.path().join("htpasswd");
    ok(std::process::Command::new("htpasswd")
        .arg("-Bbc")
        .arg(&htpasswd)
        .args([USER, PASSWORD]));
    let reg = Registry::start_with(Some(&htpasswd));
    // An encrypted eStargz image with a big file (never fetched whole) and
    // a marker, pushed with the credentials.
    let src = d.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("big.bin"), common::noise(24 << 20)).unwrap();
    std::fs::write(src.join("marker"), "private marker\n").unwrap();
    let plain = format!("oci:{}:plain", d.path().join("img").display());
    common::build_dir(&src, &plain, &["--no-gzip"]);
    let k = common::rsa_keys(d.path(), "k");
    let creds = format!("{USER}:{PASSWORD}");
    ok(lazycrypt().env("HOME", d.path()).args([
        "encrypt",
        "--plain-http",
        "--estargz",
        "--creds",
        &creds,
        "-r",
        &format!("jwe:{}", k.public.display()),
        &plain,
        &reg.image("priv/app:v1"),
    ]));

    // No docker config anywhere serve looks.
    let empty = d.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let keys = d.path().join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    std::fs::copy(&k.private, keys.join("k.pem")).unwrap();
    let listen = d.path().join("lz/cri/keychain.sock");
    let upstream = d.path().join("ctd/containerd.sock");
    let config = keychain_config(d.path(), &listen, &upstream);
    let args = [
        "--config",
        config.to_str().unwrap(),
        "--keys-dir",
        keys.to_str().unwrap(),
        "--plain-http",
        &reg.addr,
    ]
    .map(String::from);
    let auth_file = empty.join("auth.json");
    let env = [
        ("HOME", empty.as_path()),
        ("DOCKER_CONFIG", &empty),
        ("XDG_RUNTIME_DIR", &empty),
        ("REGISTRY_AUTH_FILE", &auth_file),
    ];
    let daemon = Daemon::start_with_env(d.path(), &args, &env);
    wait_for(&listen, &daemon);
    let mode = std::fs::metadata(&listen).unwrap().mode();
    assert_eq!(mode & 0o777, 0o600, "the keychain's socket is root's only");

    let ctd = Containerd::start_on(line, d.path(), &daemon.socket, Some(&reg.addr));
    let image = format!("{}/priv/app:v1", reg.addr);

    // A wrong password: containerd's 401, passed on, and nothing mounted.
    let wrong = cri::AuthConfig {
        username: USER.into(),
        password: "wrong-password".into(),
        ..Default::default()
    };
    let e = common::cri::pull(&listen, &image, Some(wrong)).unwrap_err();
    assert!(e.message().contains("401 Unauthorized"), "{e:?}");
    assert!(!e.message().contains("wrong-password"), "{e:?}");
    assert!(layer_mounts(&daemon.root).is_empty());

    // The right one, as `auth` (base64 of user:password), as kubelets send
    // a docker config's entry.
    let auth = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &creds);
    let pull = cri::AuthConfig {
        auth: auth.clone(),
        server_address: format!("http://{}", reg.addr),
        ..Default::default()
    };
    let image_ref = common::cri::pull(&listen, &image, Some(pull))
        .unwrap_or_else(|e| panic!("CRI pull: {e:?}\n{}", daemon.log()));
    assert!(image_ref.starts_with("sha256:"), "{image_ref}");
    assert!(daemon.log().contains("mounted (Lazy)"), "{}", daemon.log());
    let mounts = layer_mounts(&daemon.root);
    assert_eq!(mounts.len(), 1, "{mounts:?}");
    // A file reads right through the mount: fetched from the private
    // registry with the pull's credentials, and decrypted.
    assert_eq!(
        std::fs::read_to_string(mounts[0].join("marker")).unwrap(),
        "private marker\n"
    );
    let big = std::fs::read(mounts[0].join("big.bin")).unwrap();
    assert_eq!(big.len(), 24 << 20);

    // The credentials reached no log line and no file under the test's
    // directory (lazycrypt's root, containerd's root and state, the logs).
    let log = daemon.log();
    for secret in [PASSWORD, auth.as_str()] {
        assert!(!log.contains(secret), "a credential in serve's log");
    }
    let hits = common::mounts::files_containing(d.path(), &[PASSWORD.as_bytes(), auth.as_bytes()]);
    assert!(hits.is_empty(), "a credential at rest: {hits:?}");
    drop(ctd);
    daemon.stop();
}

#[test]
fn a_keychain_whose_containerd_is_down_answers_unavailable_until_it_is_up() {
    let d = tmp();
    let listen = d.path().join("lz/cri.sock");
    let upstream = d.path().join("ctd/containerd.sock");
    let config = keychain_config(d.path(), &listen, &upstream);
    let daemon = Daemon::start_with(d.path(), &["--config".into(), config.display().to_string()]);
    wait_for(&listen, &daemon);
    let e = image_fs(&listen).unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains(&*upstream.to_string_lossy()), "{e:?}");
    // Only CRI's image service is passed on, whether containerd is up or
    // not: the socket is no way into the rest of containerd.
    let native = containerd_images_get(&listen).unwrap_err();
    assert_eq!(native.code(), Code::Unimplemented, "{native:?}");
    // The kubelet tries again, and gets containerd's answer once it is up
    // (containerd's socket answers before its CRI plugin is ready: "server
    // is not initialized yet" comes first, also from containerd itself).
    let _ctd = Containerd::start(d.path(), &daemon.socket);
    let deadline = Instant::now() + Duration::from_secs(30);
    let fs = loop {
        match image_fs(&listen) {
            Ok(fs) => break fs,
            Err(e) if Instant::now() < deadline => {
                assert_ne!(e.code(), Code::Unimplemented, "{e:?}");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("{e:?}\n{}", daemon.log()),
        }
    };
    assert!(
        fs.iter()
            .any(|m| m.ends_with("io.containerd.snapshotter.v1.lazycrypt")),
        "{fs:?}"
    );
    let native = containerd_images_get(&listen).unwrap_err();
    assert_eq!(native.code(), Code::Unimplemented, "{native:?}");
    assert!(
        native
            .message()
            .contains("/containerd.services.images.v1.Images/Get"),
        "{native:?}"
    );
    // A request over the 16 MiB limit is answered with its own status, not
    // with what containerd makes of the cut stream.
    oversized_image_fs(&listen, 1 << 20).unwrap_or_else(|e| panic!("{e:?}"));
    let big = oversized_image_fs(&listen, 17 << 20).unwrap_err();
    assert_eq!(big.code(), Code::OutOfRange, "{big:?}");
    assert!(big.message().contains("too large"), "{big:?}");
}

#[test]
fn serve_refuses_a_keychain_on_its_own_snapshots_socket() {
    let d = tmp();
    let listen = d.path().join("lz/lazycrypt.sock");
    let config = keychain_config(d.path(), &listen, &d.path().join("ctd/containerd.sock"));
    let stderr = d.path().join("stderr");
    let mut serve = lazycrypt()
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .arg("--root")
        .arg(d.path().join("root"))
        .arg("--address")
        .arg(&listen)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    // It stops at once; a serve that took the socket twice runs on.
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = serve.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > deadline {
            serve.kill().unwrap();
            serve.wait().unwrap();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = std::fs::read_to_string(&stderr).unwrap();
    assert_eq!(status.and_then(|s| s.code()), Some(1), "{stderr}");
    assert_eq!(
        stderr,
        format!(
            "lazycrypt: cri_keychain: listen {} is also address (the snapshotter's socket)\n",
            listen.display()
        )
    );
    assert!(
        !d.path().join("root").exists(),
        "refused before anything else"
    );
}

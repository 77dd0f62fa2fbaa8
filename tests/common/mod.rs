//! Shared test helpers: real keys (openssl, gpg), real images (`lazycrypt
//! build`), a real registry (Debian's docker-registry) and skopeo.
#![allow(dead_code)]

/// A test run once for each containerd `line` named: `NAME::V1_6`,
/// `NAME::V2_1`, … call `NAME(Line::…)`.
#[allow(unused_macros)]
macro_rules! on_lines {
    ($test:ident: $($line:ident),+) => {
        mod $test {
            $(
                #[test]
                #[allow(non_snake_case)]
                fn $line() {
                    super::$test(super::Line::$line)
                }
            )+
        }
    };
}

pub mod auth_proxy;
pub mod containerd;
pub mod cri;
pub mod data;
pub mod faults;
pub mod mounts;
pub mod procfs;
pub mod signers;
pub mod snapshots;

#[allow(unused_imports)]
pub use data::noise;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};

pub const BIN: &str = env!("CARGO_BIN_EXE_lazycrypt");

/// A temporary directory that lives as long as the value. Whatever is
/// still mounted under it when it goes (the tmpfs uppers of containers a
/// test's daemon left running, FUSE layers of a test that failed half-way)
/// is detached first, so no test leaves mounts behind.
pub struct Tmp(tempfile::TempDir);

impl std::ops::Deref for Tmp {
    type Target = tempfile::TempDir;
    fn deref(&self) -> &tempfile::TempDir {
        &self.0
    }
}

impl Drop for Tmp {
    fn drop(&mut self) {
        let dir = self.0.path().to_string_lossy().into_owned();
        let mounted = std::fs::read_to_string("/proc/self/mounts")
            .map(|m| {
                m.lines()
                    .any(|l| l.split(' ').nth(1).is_some_and(|p| p.starts_with(&dir)))
            })
            .unwrap_or(false);
        if mounted {
            containerd::unmount_under(self.0.path());
        }
    }
}

/// A temporary directory that lives as long as the value ([`Tmp`]).
pub fn tmp() -> Tmp {
    Tmp(tempfile::Builder::new()
        .prefix("lazycrypt-test-")
        .tempdir()
        .expect("tempdir"))
}

/// Runs a command, returning its output; panics only if it cannot start.
pub fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

/// Runs a command, its output captured, for at most `limit`: its output,
/// or `Err` once it had to be killed.
pub fn output_within(cmd: &mut Command, limit: Duration) -> Result<Output, String> {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    let pid = child.id() as i32;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    match rx.recv_timeout(limit) {
        Ok(out) => out.map_err(|e| format!("{cmd:?}: {e}")),
        Err(_) => {
            // SAFETY: signalling our own child, which its waiter has not reaped.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            Err(format!("{cmd:?} did not end within {limit:?}"))
        }
    }
}

/// Runs a command that must succeed; returns stdout.
/// Polls `done` every 50 ms until it holds; fails with `why()` once `limit`
/// has passed (a bound on a hang, not a timing the test asserts).
pub fn wait_until(limit: Duration, mut done: impl FnMut() -> bool, why: impl Fn() -> String) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "{}", why());
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\nstdout: {}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command that must fail; returns stderr, which must be one line and no panic.
pub fn fails(cmd: &mut Command) -> String {
    let out = run(cmd);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{cmd:?} unexpectedly succeeded");
    assert!(!err.contains("panicked"), "{cmd:?} panicked: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.contains(" WARN ")).collect();
    assert_eq!(
        lines.len(),
        1,
        "{cmd:?} should print one error line, got: {err}"
    );
    err
}

pub fn lazycrypt() -> Command {
    let mut c = Command::new(BIN);
    c.env_remove("OCICRYPT_KEYPROVIDER_CONFIG");
    c
}

pub fn skopeo() -> Command {
    let mut c = Command::new("skopeo");
    c.arg("--insecure-policy");
    c
}

/// The test provider of `tests/fixtures/keyprovider.py`, as `testkp`.
pub fn keyprovider_config(d: &Path) -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/keyprovider.py");
    let p = d.join("ocicrypt-keyprovider.json");
    std::fs::write(
        &p,
        format!(
            r#"{{"key-providers":{{"testkp":{{"cmd":{{"path":"{}","args":[]}}}}}}}}"#,
            script.display()
        ),
    )
    .unwrap();
    p
}

/// The body of a plain HTTP GET.
pub fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    out.split_once("\r\n\r\n").unwrap().1.to_string()
}

/// A node keys dir holding `key` as `k.pem`, and the `serve` arguments that
/// use it and reach `registry` over plain HTTP.
pub fn keys_dir_args(dir: &Path, key: &Path, registry: &str) -> (PathBuf, Vec<String>) {
    let keys = dir.join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    std::fs::copy(key, keys.join("k.pem")).unwrap();
    let args = [
        "--keys-dir",
        keys.to_str().unwrap(),
        "--plain-http",
        registry,
    ]
    .map(String::from)
    .to_vec();
    (keys, args)
}

/// Writes a private key file readable by its owner only, as lazycrypt
/// wants key files (it refuses ones that others can read).
pub fn write_private(p: &Path, data: impl AsRef<[u8]>) {
    std::fs::write(p, data).unwrap();
    std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
}

/// An RSA key pair and a self-signed certificate for it, made by openssl.
pub struct RsaKeys {
    pub private: PathBuf,
    pub public: PathBuf,
    pub cert: PathBuf,
}

pub fn rsa_keys(dir: &Path, name: &str) -> RsaKeys {
    let private = dir.join(format!("{name}.pem"));
    let public = dir.join(format!("{name}.pub.pem"));
    let cert = dir.join(format!("{name}.crt"));
    ok(Command::new("openssl")
        .args(["genrsa", "-out"])
        .arg(&private)
        .arg("2048"));
    ok(Command::new("openssl")
        .args(["rsa", "-pubout", "-in"])
        .arg(&private)
        .arg("-out")
        .arg(&public));
    ok(Command::new("openssl")
        .args(["req", "-x509", "-new", "-days", "30", "-subj"])
        .arg(format!("/CN={name}"))
        .arg("-key")
        .arg(&private)
        .arg("-out")
        .arg(&cert));
    RsaKeys {
        private,
        public,
        cert,
    }
}

/// An EC key pair on `curve` (e.g. prime256v1): the private key as PKCS#8,
/// which is the PEM form Go ocicrypt reads (it skips SEC1 `EC PRIVATE KEY`).
/// The SEC1 form is written beside it as `NAME.sec1.pem`.
pub fn ec_keys(dir: &Path, name: &str, curve: &str) -> (PathBuf, PathBuf) {
    let sec1 = dir.join(format!("{name}.sec1.pem"));
    let private = dir.join(format!("{name}.pem"));
    let public = dir.join(format!("{name}.pub.pem"));
    ok(Command::new("openssl")
        .args(["ecparam", "-genkey", "-noout", "-name", curve, "-out"])
        .arg(&sec1));
    ok(Command::new("openssl")
        .args(["pkcs8", "-topk8", "-nocrypt", "-in"])
        .arg(&sec1)
        .arg("-out")
        .arg(&private));
    ok(Command::new("openssl")
        .args(["ec", "-pubout", "-in"])
        .arg(&sec1)
        .arg("-out")
        .arg(&public));
    (private, public)
}

/// An OpenPGP key (RSA signing primary + RSA encryption subkey) made by gpg:
/// returns (GNUPGHOME, user id, binary public export, binary secret export).
pub fn pgp_keys(dir: &Path, name: &str) -> (PathBuf, String, PathBuf, PathBuf) {
    let home = dir.join(format!("gnupg-{name}"));
    std::fs::create_dir_all(&home).unwrap();
    std::fs::set_permissions(&home, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let uid = format!("{name}@example.com");
    let gpg = || {
        let mut c = Command::new("gpg");
        c.env("GNUPGHOME", &home).args([
            "--batch",
            "--pinentry-mode",
            "loopback",
            "--passphrase",
            "",
        ]);
        c
    };
    ok(gpg().args(["--quick-gen-key", &uid, "rsa2048", "sign", "never"]));
    let colons = ok(gpg().args(["--with-colons", "--list-keys", &uid]));
    let fpr = colons
        .lines()
        .find(|l| l.starts_with("fpr"))
        .and_then(|l| l.split(':').nth(9))
        .unwrap()
        .to_string();
    ok(gpg().args(["--quick-add-key", &fpr, "rsa2048", "encr", "never"]));
    let public = dir.join(format!("{name}.gpg.pub"));
    let secret = dir.join(format!("{name}.gpg.sec"));
    std::fs::write(&public, run(gpg().args(["--export", &uid])).stdout).unwrap();
    write_private(
        &secret,
        run(gpg().args(["--export-secret-keys", &uid])).stdout,
    );
    (home, uid, public, secret)
}

/// Builds a plain image at `oci:DIR:TAG` with `n` layers of generated files.
pub fn build_image(dir: &Path, tag: &str, n: usize) -> String {
    let rootfs = dir.join(format!("rootfs-{tag}"));
    let mut cmd = lazycrypt();
    cmd.arg("build");
    for i in 0..n {
        let l = rootfs.join(format!("layer{i}"));
        std::fs::create_dir_all(l.join("data")).unwrap();
        std::fs::write(
            l.join("data").join(format!("file{i}.txt")),
            format!("layer {i} of {tag}\n").repeat(500),
        )
        .unwrap();
        let noise: Vec<u8> = (0..100_000u32)
            .map(|x| (x.wrapping_mul(2654435761) >> (i + 7)) as u8)
            .collect();
        std::fs::write(l.join(format!("blob{i}.bin")), noise).unwrap();
        cmd.arg("--layer").arg(&l);
    }
    let image = format!("oci:{}:{tag}", dir.join("images").display());
    ok(cmd.arg(&image));
    image
}

/// Builds `image` from the single directory `src`, with extra `build` flags.
pub fn build_dir(src: &Path, image: &str, flags: &[&str]) {
    ok(lazycrypt()
        .arg("build")
        .args(flags)
        .arg("--layer")
        .arg(src)
        .arg(image));
}

/// The `index.json` entry tagged `tag` in layout `dir`.
/// Builds linux/amd64 and linux/arm64 images and an index over both, tagged `multi`.
pub fn multi_platform_image(dir: &std::path::Path) -> String {
    let layout = dir.join("multi");
    let mut entries = Vec::new();
    for arch in ["amd64", "arm64"] {
        let root = dir.join(format!("rootfs-{arch}"));
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("arch.txt"), format!("{arch}\n").repeat(2000)).unwrap();
        let img = format!("oci:{}:{arch}", layout.display());
        build_dir(&root, &img, &["--platform", &format!("linux/{arch}")]);
        let e = index_entry(&layout, arch);
        entries.push(serde_json::json!({
            "mediaType": e["mediaType"], "digest": e["digest"], "size": e["size"],
            "platform": {"os": "linux", "architecture": arch},
        }));
    }
    let idx = serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": entries})).unwrap();
    let d = format!(
        "sha256:{}",
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&idx))
    );
    std::fs::write(blob_path(&layout, &d), &idx).unwrap();
    let ip = layout.join("index.json");
    let mut top: serde_json::Value = serde_json::from_slice(&std::fs::read(&ip).unwrap()).unwrap();
    top["manifests"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.index.v1+json", "digest": d, "size": idx.len(),
            "annotations": {"org.opencontainers.image.ref.name": "multi"},
        }));
    std::fs::write(ip, serde_json::to_vec(&top).unwrap()).unwrap();
    format!("oci:{}:multi", layout.display())
}

pub fn index_entry(dir: &Path, tag: &str) -> Value {
    let index: Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap_or_else(|| panic!("no tag {tag} in {}", dir.display()))
        .clone()
}

/// A JSON blob of layout `dir`.
pub fn read_json_blob(dir: &Path, digest: &str) -> Value {
    serde_json::from_slice(&std::fs::read(blob_path(dir, digest)).unwrap()).unwrap()
}

/// The manifest of `oci:DIR:TAG` (single-platform images).
pub fn layout_manifest(image: &str) -> Value {
    let (dir, tag) = split_layout(image);
    read_json_blob(&dir, index_entry(&dir, &tag)["digest"].as_str().unwrap())
}

/// Adds `FLAG KEY` for every key.
pub fn with_keys<'a>(c: &'a mut Command, flag: &str, keys: &[&Path]) -> &'a mut Command {
    for k in keys {
        c.arg(flag).arg(k);
    }
    c
}

pub fn split_layout(image: &str) -> (PathBuf, String) {
    let rest = image.strip_prefix("oci:").unwrap();
    let (d, t) = rest.rsplit_once(':').unwrap();
    (PathBuf::from(d), t.to_string())
}

pub fn blob_path(dir: &Path, digest: &str) -> PathBuf {
    dir.join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
}

/// Layer digests of a single-platform layout image.
pub fn layer_digests(image: &str) -> Vec<String> {
    layout_manifest(image)["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect()
}

pub fn layer_types(image: &str) -> Vec<String> {
    layout_manifest(image)["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["mediaType"].as_str().unwrap().to_string())
        .collect()
}

/// Rewrites the manifest of `oci:DIR:TAG` in place through `f`.
pub fn edit_manifest(image: &str, f: impl FnOnce(&mut Value)) {
    let (dir, tag) = split_layout(image);
    let mut m = layout_manifest(image);
    f(&mut m);
    let bytes = serde_json::to_vec(&m).unwrap();
    let d = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
    std::fs::write(blob_path(&dir, &d), &bytes).unwrap();
    let ip = dir.join("index.json");
    let mut index: Value = serde_json::from_slice(&std::fs::read(&ip).unwrap()).unwrap();
    for e in index["manifests"].as_array_mut().unwrap() {
        if e["annotations"]["org.opencontainers.image.ref.name"] == tag.as_str() {
            e["digest"] = Value::String(d.clone());
            e["size"] = Value::from(bytes.len());
        }
    }
    std::fs::write(ip, serde_json::to_vec(&index).unwrap()).unwrap();
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Debian's docker-registry on 127.0.0.1, killed on drop.
pub struct Registry {
    pub addr: String,
    child: Child,
    _dir: Tmp,
}

impl Registry {
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// With `htpasswd`: basic auth against that file.
    pub fn start_with(htpasswd: Option<&Path>) -> Self {
        let dir = tmp();
        let port = free_port();
        let auth = match htpasswd {
            Some(p) => format!(
                "auth:\n  htpasswd:\n    realm: test\n    path: {}\n",
                p.display()
            ),
            None => String::new(),
        };
        let cfg = format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n{auth}",
            dir.path().join("data").display()
        );
        let cfg_path = dir.path().join("config.yml");
        std::fs::write(&cfg_path, cfg).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&cfg_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting docker-registry (apt-get install docker-registry)");
        let addr = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "docker-registry did not start on {addr}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Registry {
            addr,
            child,
            _dir: dir,
        }
    }

    pub fn image(&self, repo: &str) -> String {
        format!("docker://{}/{repo}", self.addr)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `lazycrypt encrypt --estargz` of `plain` to the JWE key `public`, into
/// `dst` (a layout, or a plain-HTTP registry); returns what it printed.
pub fn encrypt_estargz(plain: &str, dst: &str, public: &Path) -> String {
    ok(lazycrypt().args([
        "encrypt",
        "--plain-http",
        "--estargz",
        "-r",
        &format!("jwe:{}", public.display()),
        plain,
        dst,
    ]))
}

/// skopeo encrypts `src` to `recipients` into `dst` (a layout, or a
/// plain-HTTP registry), compressing layers with `format` when given.
pub fn skopeo_encrypt(src: &str, dst: &str, recipients: &[String], format: Option<&str>) {
    let mut c = skopeo();
    c.arg("copy");
    if dst.starts_with("docker://") {
        c.arg("--dest-tls-verify=false");
    }
    if let Some(f) = format {
        c.args(["--dest-compress-format", f]);
    }
    for r in recipients {
        c.arg("--encryption-key").arg(r);
    }
    ok(c.arg(src).arg(dst));
}

/// A layer's private options, unwrapped with the key file at `key`.
pub fn private_options(
    annotations: &std::collections::HashMap<String, String>,
    key: &Path,
) -> lazycrypt::crypto::options::PrivateOptions {
    let mut ring = lazycrypt::crypto::KeyRing::default();
    ring.add_arg(key.to_str().unwrap()).unwrap();
    lazycrypt::crypto::envelope::layer_keys(annotations, &ring, "test")
        .unwrap()
        .0
}

/// The TOC of an eStargz blob and the digest of its JSON, found through the footer.
pub fn blob_toc(blob: &[u8]) -> (lazycrypt::layer::estargz::toc::Toc, String) {
    let footer_at = blob.len() - 51;
    let off = lazycrypt::layer::estargz::reader::toc_offset(&blob[footer_at..]).unwrap();
    lazycrypt::layer::estargz::reader::parse_toc_member(&blob[off as usize..footer_at]).unwrap()
}

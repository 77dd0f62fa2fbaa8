//! Mount helpers: a `lazycrypt mount` process, a tree snapshot of a mounted
//! file system, OCI layouts from hand-made tar layers, and a proxy that
//! counts the bytes a registry serves.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use sha2::{Digest, Sha256};

use super::{BIN, ok};

/// A running `lazycrypt mount`; unmounted on drop.
pub struct Mount {
    child: Option<Child>,
    /// The `lazycrypt mount` process.
    pub pid: u32,
    pub dir: PathBuf,
    pub run_dir: PathBuf,
    out: Arc<Mutex<String>>,
    err: Arc<Mutex<String>>,
}

fn drain(r: impl Read + Send + 'static, into: Arc<Mutex<String>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines().map_while(Result::ok) {
            let mut s = into.lock().unwrap();
            s.push_str(&line);
            s.push('\n');
        }
    });
}

/// Mounts `image` at `mnt` with state under `state`; `Err(stderr)` if the
/// process ends before it reports the mount.
pub fn mount(image: &str, mnt: &Path, state: &Path, args: &[&str]) -> Result<Mount, String> {
    mount_with_env(image, mnt, state, args, &[])
}

/// [`mount`] with extra environment.
pub fn mount_with_env(
    image: &str,
    mnt: &Path,
    state: &Path,
    args: &[&str],
    env: &[(&str, &Path)],
) -> Result<Mount, String> {
    std::fs::create_dir_all(mnt).unwrap();
    let run_dir = state.join("run");
    let mut child = std::process::Command::new(BIN)
        .arg("mount")
        .arg("--root")
        .arg(state.join("root"))
        .arg("--run-dir")
        .arg(&run_dir)
        .args(args)
        .arg(image)
        .arg(mnt)
        .envs(env.iter().copied())
        .env("TMPDIR", state.join("tmp"))
        .env(
            "LAZYCRYPT_LOG",
            std::env::var("LAZYCRYPT_LOG").unwrap_or("debug".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start lazycrypt mount");
    std::fs::create_dir_all(state.join("tmp")).unwrap();
    let (out, err) = (Arc::default(), Arc::default());
    drain(child.stdout.take().unwrap(), Arc::clone(&out));
    drain(child.stderr.take().unwrap(), Arc::clone(&err));
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if out.lock().unwrap().contains("mounted ") {
            break;
        }
        if child.try_wait().unwrap().is_some() {
            std::thread::sleep(Duration::from_millis(100));
            return Err(err.lock().unwrap().clone());
        }
        assert!(Instant::now() < deadline, "mount did not come up");
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(Mount {
        pid: child.id(),
        child: Some(child),
        dir: mnt.to_path_buf(),
        run_dir,
        out,
        err,
    })
}

impl Mount {
    /// What the process logged so far.
    pub fn log(&self) -> String {
        self.err.lock().unwrap().clone()
    }

    /// Unmounts with `lazycrypt umount`; returns the process's stdout and stderr.
    pub fn umount(mut self) -> (String, String) {
        self.stop();
        (
            self.out.lock().unwrap().clone(),
            self.err.lock().unwrap().clone(),
        )
    }

    /// SIGKILL, as in a crash: nothing is unmounted.
    pub fn kill(mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        ok(std::process::Command::new(BIN)
            .arg("umount")
            .arg("--run-dir")
            .arg(&self.run_dir)
            .arg(&self.dir));
        let status = child.wait().unwrap();
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            status.success(),
            "mount exited with {status}: {}",
            self.log()
        );
        assert!(
            !is_mounted(&self.dir),
            "{} is still mounted",
            self.dir.display()
        );
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
    }
}

/// Whether `p` is a mount point now.
pub fn is_mounted(p: &Path) -> bool {
    let want = std::fs::canonicalize(p).unwrap_or(p.to_path_buf());
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(want.to_str().unwrap()))
}

/// One entry of a tree snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ent {
    pub kind: char,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    pub size: u64,
    pub sha: String,
    pub link: String,
    pub rdev: u64,
    pub nlink: u64,
    pub xattrs: BTreeMap<String, Vec<u8>>,
}

/// `user.*` extended attributes of `p` (not following symlinks).
pub fn user_xattrs(p: &Path) -> BTreeMap<String, Vec<u8>> {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    let mut names = vec![0u8; 64 << 10];
    // SAFETY: buffers are valid for the lengths given.
    let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    let mut out = BTreeMap::new();
    if n <= 0 {
        return out;
    }
    for name in names[..n as usize]
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
    {
        let s = String::from_utf8_lossy(name).into_owned();
        if !s.starts_with("user.") {
            continue;
        }
        let cn = CString::new(name).unwrap();
        let mut v = vec![0u8; 64 << 10];
        // SAFETY: as above.
        let len =
            unsafe { libc::lgetxattr(c.as_ptr(), cn.as_ptr(), v.as_mut_ptr().cast(), v.len()) };
        assert!(len >= 0, "getxattr {s} on {}", p.display());
        v.truncate(len as usize);
        out.insert(s, v);
    }
    out
}

/// Every entry under `root` (relative paths), with what the tests compare.
pub fn snapshot(root: &Path) -> BTreeMap<String, Ent> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let t = m.file_type();
            let kind = if t.is_dir() {
                stack.push(p.clone());
                'd'
            } else if t.is_symlink() {
                'l'
            } else if t.is_char_device() {
                'c'
            } else if t.is_block_device() {
                'b'
            } else if t.is_fifo() {
                'p'
            } else {
                'f'
            };
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let sha = if kind == 'f' {
                hex::encode(Sha256::digest(std::fs::read(&p).unwrap()))
            } else {
                String::new()
            };
            out.insert(
                rel,
                Ent {
                    kind,
                    mode: m.mode() & 0o7777,
                    uid: m.uid(),
                    gid: m.gid(),
                    mtime: if kind == 'd' { 0 } else { m.mtime() },
                    size: if kind == 'f' { m.size() } else { 0 },
                    sha,
                    link: if kind == 'l' {
                        std::fs::read_link(&p)
                            .unwrap()
                            .to_string_lossy()
                            .into_owned()
                    } else {
                        String::new()
                    },
                    rdev: m.rdev(),
                    nlink: if kind == 'f' { m.nlink() } else { 0 },
                    xattrs: user_xattrs(&p),
                },
            );
        }
    }
    out
}

/// Writes an OCI layout image `oci:DIR:TAG` whose layers are these tars
/// (gzipped when `gzip`).
pub fn layout_from_tars(dir: &Path, tag: &str, tars: &[Vec<u8>], gzip: bool) -> String {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |b: &[u8]| -> (String, usize) {
        let d = hex::encode(Sha256::digest(b));
        std::fs::write(blobs.join(&d), b).unwrap();
        (format!("sha256:{d}"), b.len())
    };
    let mut layers = Vec::new();
    let mut diff_ids = Vec::new();
    for t in tars {
        diff_ids.push(format!("sha256:{}", hex::encode(Sha256::digest(t))));
        let (blob, mt) = if gzip {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(t).unwrap();
            (
                e.finish().unwrap(),
                "application/vnd.oci.image.layer.v1.tar+gzip",
            )
        } else {
            (t.clone(), "application/vnd.oci.image.layer.v1.tar")
        };
        let (d, n) = put(&blob);
        layers.push(json!({"mediaType": mt, "digest": d, "size": n}));
    }
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap();
    let (cd, cn) = put(&config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cn},
        "layers": layers,
    }))
    .unwrap();
    let (md, mn) = put(&manifest);
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": md, "size": mn,
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }],
    });
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    format!("oci:{}:{tag}", dir.display())
}

/// A TCP proxy in front of a registry that counts the bytes it serves, and
/// can hold back the registry's answers.
pub struct CountingProxy {
    pub addr: String,
    served: Arc<AtomicU64>,
    paused: Arc<std::sync::atomic::AtomicBool>,
    held: Arc<AtomicU64>,
}

impl CountingProxy {
    pub fn start(upstream: &str) -> Self {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let served = Arc::new(AtomicU64::new(0));
        let paused = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let held = Arc::new(AtomicU64::new(0));
        let (up, count) = (upstream.to_string(), served.clone());
        let (pause, hold) = (paused.clone(), held.clone());
        std::thread::spawn(move || {
            for c in l.incoming() {
                let Ok(client) = c else { continue };
                let Ok(server) = TcpStream::connect(&up) else {
                    continue;
                };
                let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let count = count.clone();
                let (pause, hold) = (pause.clone(), hold.clone());
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut c2, &mut s2);
                    let _ = s2.shutdown(std::net::Shutdown::Write);
                });
                std::thread::spawn(move || {
                    let (mut s, mut c) = (server, client);
                    let mut buf = vec![0u8; 64 << 10];
                    loop {
                        match s.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if pause.load(Ordering::SeqCst) {
                                    hold.fetch_add(1, Ordering::SeqCst);
                                    while pause.load(Ordering::SeqCst) {
                                        std::thread::sleep(std::time::Duration::from_millis(10));
                                    }
                                }
                                count.fetch_add(n as u64, Ordering::SeqCst);
                                if c.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    let _ = c.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        CountingProxy {
            addr,
            served,
            paused,
            held,
        }
    }

    /// Holds back (true) or lets through (false) what the registry sends.
    pub fn pause(&self, on: bool) {
        self.paused.store(on, Ordering::SeqCst);
    }

    /// How many answers were held back while paused.
    pub fn held(&self) -> u64 {
        self.held.load(Ordering::SeqCst)
    }

    /// Bytes the registry has sent through the proxy.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::SeqCst)
    }
}

/// Every file under `root` whose bytes contain any of `needles`.
/// The regular files process `pid` holds open (named or not) that contain
/// any of `needles`: the at-rest scan for files with no path to walk.
pub fn open_files_containing(pid: u32, needles: &[&[u8]]) -> Vec<String> {
    let mut hits = Vec::new();
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return hits;
    };
    for fd in rd.flatten() {
        let target = std::fs::read_link(fd.path()).unwrap_or_default();
        // Only disk files: /dev/fuse and pipes are not at rest.
        let on_disk = std::fs::metadata(fd.path()).is_ok_and(|m| m.is_file());
        if !on_disk || target.starts_with("/proc") {
            continue;
        }
        let data = std::fs::read(fd.path()).unwrap_or_default();
        if needles.iter().any(|n| contains(&data, n)) {
            hits.push(target.display().to_string());
        }
    }
    hits
}

/// Asserts that no file under `root` (a test's directory: lazycrypt's
/// root, containerd's root and state, the logs) holds `marker`, and that
/// `log` does not either.
pub fn assert_not_at_rest(root: &Path, marker: &str, log: &str) {
    let hits = files_containing(root, &[marker.as_bytes()]);
    assert!(hits.is_empty(), "plaintext at rest: {hits:?}");
    assert!(!log.contains(marker));
}

pub fn files_containing(root: &Path, needles: &[&[u8]]) -> Vec<PathBuf> {
    let mut hits = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(m) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            let name = p.file_name().unwrap().as_bytes().to_vec();
            if needles.iter().any(|n| contains(&name, n)) {
                hits.push(p.clone());
            }
            if m.is_dir() {
                // Never descend into a live mount: that is the plaintext view.
                if !is_mounted(&p) {
                    stack.push(p);
                }
            } else if m.is_file() {
                let data = std::fs::read(&p).unwrap_or_default();
                if needles.iter().any(|n| contains(&data, n)) {
                    hits.push(p);
                }
            }
        }
    }
    hits
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

//! `lazycrypt serve` and Debian's containerd, each with its own state under
//! a test's temporary directory, wired together as a proxy snapshotter.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::BIN;

/// A running `lazycrypt serve`; SIGKILLed on drop unless stopped.
pub struct Daemon {
    child: Option<Child>,
    pub root: PathBuf,
    pub socket: PathBuf,
    log: PathBuf,
    /// Stopped or killed on purpose: what it left under its root is the
    /// next daemon's, not this value's drop's, to clean up.
    crashed: bool,
}

fn wait_for(path: &Path, what: &str, child: &mut Child, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !path.exists() {
        if let Some(st) = child.try_wait().unwrap() {
            panic!(
                "{what} exited ({st}): {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "{what} did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Daemon {
    /// Starts `lazycrypt serve` with state in `dir/lz`.
    pub fn start(dir: &Path) -> Daemon {
        Self::start_with(dir, &[])
    }

    /// Starts `lazycrypt serve` with extra arguments.
    pub fn start_with(dir: &Path, args: &[String]) -> Daemon {
        Self::start_with_umask(dir, args, None)
    }

    /// Starts `lazycrypt serve` with extra arguments and, when given, this
    /// umask (what it creates must not depend on it).
    pub fn start_with_umask(dir: &Path, args: &[String], umask: Option<u32>) -> Daemon {
        let mut d = Self::spawn(dir, args, umask, &[]);
        d.wait_socket();
        d
    }

    /// Waits until the daemon's socket is there (panics if it exits).
    pub fn wait_socket(&mut self) {
        let child = self.child.as_mut().expect("a running daemon");
        wait_for(&self.socket, "lazycrypt serve", child, &self.log);
    }

    /// Starts `lazycrypt serve` with extra arguments and environment
    /// variables set (Some) or removed (None); does not wait for it.
    pub fn spawn_with_env(dir: &Path, args: &[String], env: &[(&str, Option<&str>)]) -> Daemon {
        Self::spawn(dir, args, None, env)
    }

    /// Starts `lazycrypt serve` with extra arguments and environment
    /// variables naming paths, and waits for its socket.
    pub fn start_with_env(dir: &Path, args: &[String], env: &[(&str, &Path)]) -> Daemon {
        let env: Vec<(&str, Option<&str>)> = env
            .iter()
            .map(|(k, v)| (*k, Some(v.to_str().expect("a UTF-8 path"))))
            .collect();
        let mut d = Self::spawn(dir, args, None, &env);
        d.wait_socket();
        d
    }

    fn spawn(
        dir: &Path,
        args: &[String],
        umask: Option<u32>,
        env: &[(&str, Option<&str>)],
    ) -> Daemon {
        let root = dir.join("lz/root");
        let socket = dir.join("lz/lazycrypt.sock");
        let log = dir.join("lz/serve.log");
        std::fs::create_dir_all(dir.join("lz")).unwrap();
        let _ = std::fs::remove_file(&socket);
        let mut cmd = Command::new(BIN);
        if let Some(mask) = umask {
            use std::os::unix::process::CommandExt;
            // SAFETY: umask is async-signal-safe and touches only the child.
            unsafe {
                cmd.pre_exec(move || {
                    libc::umask(mask as libc::mode_t);
                    Ok(())
                });
            }
        }
        for (k, v) in env {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        let child = cmd
            .args(["serve", "--root"])
            .arg(&root)
            .arg("--address")
            .arg(&socket)
            .args(args)
            .env("LAZYCRYPT_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::options()
                    .create(true)
                    .append(true)
                    .open(&log)
                    .unwrap(),
            )
            .spawn()
            .expect("start lazycrypt serve");
        Daemon {
            child: Some(child),
            root,
            socket,
            log,
            crashed: false,
        }
    }

    /// The daemon's process id (0 once stopped).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// What the daemon logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL: no chance to clean up, as in a crash. What it leaves (its
    /// mounts, its FUSE keeper) stays for the next daemon on this root,
    /// whose drop cleans up.
    pub fn kill(mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.crashed = true;
    }

    /// SIGTERM, and waits for a clean exit; panics if there is none within
    /// a minute (a shutdown that hangs is a failure, not a wait).
    pub fn stop(mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(60);
            let st = loop {
                if let Some(st) = c.try_wait().unwrap() {
                    break st;
                }
                if Instant::now() > deadline {
                    let _ = c.kill();
                    let _ = c.wait();
                    panic!(
                        "lazycrypt serve did not end within 60 s of SIGTERM:\n{}",
                        self.log()
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            };
            assert!(st.success(), "lazycrypt serve exited with {st}");
        }
        // What a clean stop leaves (layers containers still use, and the
        // keeper holding them) is the next daemon's, as after a crash.
        self.crashed = true;
    }
}

impl Drop for Daemon {
    /// A test that failed half-way: stop gracefully (the daemon unmounts its
    /// layers), and detach whatever is still mounted under its root.
    fn drop(&mut self) {
        if self.crashed {
            return;
        }
        if let Some(mut c) = self.child.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        unmount_under(&self.root);
        for pid in keeper_pids(&self.root) {
            // SAFETY: signalling a process this test's daemon started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// The FUSE keeper processes a daemon with state in `root` started.
pub fn keeper_pids(root: &Path) -> Vec<i32> {
    let socket = root.join("fuse-keeper.sock");
    let mut want = b"fuse-keeper\0".to_vec();
    want.extend_from_slice(socket.as_os_str().as_encoded_bytes());
    want.push(0);
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            cmd.windows(want.len()).any(|w| w == want).then_some(pid)
        })
        .collect()
}

/// Lazily unmounts everything mounted at or below `dir`, deepest first.
pub fn unmount_under(dir: &Path) {
    let _ = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "grep -o ' {0}[^ ]*' /proc/self/mounts | sort -r | xargs -r -n1 umount -l",
            dir.display()
        ))
        .status();
}

/// Debian's containerd with lazycrypt as the `lazycrypt` proxy snapshotter.
pub struct Containerd {
    child: Option<Child>,
    pub dir: PathBuf,
    pub socket: PathBuf,
}

impl Containerd {
    pub fn start(dir: &Path, snapshotter_socket: &Path) -> Containerd {
        Self::start_with_cri(dir, snapshotter_socket, None)
    }

    /// With `cri_registry` (`host:port`): the CRI plugin on, pulling with
    /// lazycrypt (snapshot annotations passed on) from that plain-HTTP
    /// registry.
    pub fn start_with_cri(
        dir: &Path,
        snapshotter_socket: &Path,
        cri_registry: Option<&str>,
    ) -> Containerd {
        let base = dir.join("ctd");
        std::fs::create_dir_all(&base).unwrap();
        let socket = base.join("containerd.sock");
        let (top, cri) = match cri_registry {
            None => (
                "disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n",
                String::new(),
            ),
            Some(reg) => (
                "",
                format!(
                    r#"[plugins."io.containerd.grpc.v1.cri"]
  disable_tcp_service = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "lazycrypt"
    disable_snapshot_annotations = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni}/bin"
    conf_dir = "{cni}/conf"
  [plugins."io.containerd.grpc.v1.cri".registry.mirrors."{reg}"]
    endpoint = ["http://{reg}"]
"#,
                    cni = base.join("cni").display()
                ),
            ),
        };
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
{top}[grpc]
  address = "{sock}"
[proxy_plugins.lazycrypt]
  type = "snapshot"
  address = "{snap}"
{cri}"#,
            root = base.join("root").display(),
            state = base.join("state").display(),
            sock = socket.display(),
            snap = snapshotter_socket.display(),
        );
        std::fs::write(base.join("config.toml"), config).unwrap();
        let log = base.join("containerd.log");
        let mut child = Command::new("containerd")
            .arg("--config")
            .arg(base.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start containerd (apt-get install containerd runc)");
        wait_for(&socket, "containerd", &mut child, &log);
        Containerd {
            child: Some(child),
            dir: base,
            socket,
        }
    }

    /// `ctr` against this containerd, in namespace `lazycrypt-test`.
    pub fn ctr(&self) -> Command {
        self.ctr_in("lazycrypt-test")
    }

    /// `lazycrypt pull` into this containerd, namespace `lazycrypt-test`,
    /// from a plain-HTTP registry: add the image (`HOST/REPO:TAG`).
    pub fn lazycrypt_pull(&self) -> Command {
        let mut c = super::lazycrypt();
        c.args(["pull", "--plain-http", "--namespace", "lazycrypt-test"])
            .arg("--address")
            .arg(&self.socket);
        c
    }

    /// `ctr` against this containerd, in namespace `ns`.
    pub fn ctr_in(&self, ns: &str) -> Command {
        let mut c = Command::new("ctr");
        c.arg("--address")
            .arg(&self.socket)
            .args(["--namespace", ns]);
        c
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // Stop the tasks first (a failed test may leave some running),
            // so their mounts and runc state go away with them.
            let tasks = self.ctr().args(["tasks", "ls", "-q"]).output();
            let ids = tasks.map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
            for id in ids.unwrap_or_default().split_whitespace() {
                let _ = self.ctr().args(["tasks", "delete", "--force", id]).output();
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        // Containers' rootfs mounts live under containerd's state dir.
        unmount_under(&self.dir);
    }
}

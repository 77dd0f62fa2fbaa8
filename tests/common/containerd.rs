//! `lazycrypt serve` and Debian's containerd, each with its own state under
//! a test's temporary directory, wired together as a proxy snapshotter.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
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

/// Waits until `path` accepts a connection: a socket file exists from its
/// `bind`, before its `listen`, and a connection in between is refused.
fn wait_for(path: &Path, what: &str, child: &mut Child, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::os::unix::net::UnixStream::connect(path).is_err() {
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

/// Which containerd the tests drive, and how its CRI plugin pulls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Line {
    /// Debian 12's containerd 1.6.20, configured by `contrib/containerd-1.x.toml`.
    V1_6,
    /// containerd 2.1.9 (Debian unstable's, unpacked by
    /// `scripts/install-deps.sh`), configured by `contrib/containerd-2.x.toml`
    /// as shipped: CRI pulls through the transfer service.
    V2_1,
    /// containerd 2.1.9 with the file's local-pull lines uncommented.
    V2_1Local,
}

/// Where `scripts/install-deps.sh` unpacks containerd 2.1.
fn containerd2_prefix() -> PathBuf {
    std::env::var_os("LAZYCRYPT_CONTAINERD2")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/lazycrypt-test/containerd2"))
}

impl Line {
    /// The directory of its `containerd`, `ctr` and shim.
    fn bin_dir(self) -> PathBuf {
        match self {
            Line::V1_6 => PathBuf::from("/usr/bin"),
            Line::V2_1 | Line::V2_1Local => containerd2_prefix().join("usr/bin"),
        }
    }

    /// The containerd namespace its tests use. runc keeps its state per
    /// namespace (`/run/containerd/runc/NS`) whatever containerd's state
    /// dir, so a test run on two lines at once needs two namespaces for the
    /// same container names not to meet.
    pub fn namespace(self) -> &'static str {
        match self {
            Line::V1_6 => "lazycrypt-test",
            Line::V2_1 => "lazycrypt-test-2.1",
            Line::V2_1Local => "lazycrypt-test-2.1-local",
        }
    }

    /// The shipped config file for this line, made to run under `base`:
    /// lazycrypt's socket, the hosts directory and the stream processor
    /// put where this test has them, and the lines a user would uncomment
    /// for local pull uncommented. Only what no user copies is added: where
    /// containerd keeps its state, and CRI's CNI directories.
    fn config(self, base: &Path, snapshotter_socket: &Path, hosts_dir: &Path) -> String {
        let name = match self {
            Line::V1_6 => "containerd-1.x.toml",
            Line::V2_1 | Line::V2_1Local => "containerd-2.x.toml",
        };
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("contrib")
            .join(name);
        let shipped = std::fs::read_to_string(&path).unwrap();
        let mut text = shipped
            .replace(
                "/run/lazycrypt/lazycrypt.sock",
                snapshotter_socket.to_str().unwrap(),
            )
            .replace("/etc/containerd/certs.d", hosts_dir.to_str().unwrap())
            .replace("/usr/local/bin/lazycrypt", BIN);
        if self == Line::V2_1Local {
            for line in [
                "use_local_image_pull = true",
                "disable_snapshot_annotations = false",
            ] {
                let commented = format!("# {line}");
                assert!(text.contains(&commented), "{name} has no {commented:?}");
                text = text.replace(&commented, line);
            }
        }
        let version = match self {
            Line::V1_6 => "version = 2\n",
            Line::V2_1 | Line::V2_1Local => "version = 3\n",
        };
        assert!(text.contains(version), "{name} is not {version:?}");
        let cni = base.join("cni");
        let node = format!(
            "root = \"{}\"\nstate = \"{}\"\n",
            base.join("root").display(),
            base.join("state").display()
        );
        text = text.replacen(version, &format!("{version}{node}"), 1);
        text.push_str(&format!(
            "\n[grpc]\n  address = \"{}\"\n",
            base.join("containerd.sock").display()
        ));
        text.push_str(&match self {
            Line::V1_6 => format!(
                "[plugins.\"io.containerd.grpc.v1.cri\".cni]\n  bin_dir = \"{0}/bin\"\n  conf_dir = \"{0}/conf\"\n",
                cni.display()
            ),
            // NRI's socket is one per host: tests run containerds side by side.
            Line::V2_1 | Line::V2_1Local => format!(
                "[plugins.'io.containerd.cri.v1.runtime'.cni]\n  bin_dirs = [\"{0}/bin\"]\n  conf_dir = \"{0}/conf\"\n[plugins.'io.containerd.nri.v1.nri']\n  disable = true\n",
                cni.display()
            ),
        });
        text
    }
}

/// A containerd with lazycrypt as the `lazycrypt` proxy snapshotter,
/// configured from the shipped contrib file of its line.
pub struct Containerd {
    child: Option<Child>,
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub line: Line,
}

impl Containerd {
    /// Debian 12's containerd 1.6.
    pub fn start(dir: &Path, snapshotter_socket: &Path) -> Containerd {
        Self::start_on(Line::V1_6, dir, snapshotter_socket, None)
    }

    /// containerd of `line`; with `registry` (`host:port`), a `hosts.toml`
    /// makes it reach that registry over plain HTTP.
    pub fn start_on(
        line: Line,
        dir: &Path,
        snapshotter_socket: &Path,
        registry: Option<&str>,
    ) -> Containerd {
        Self::start_edited(line, dir, snapshotter_socket, registry, |c| c)
    }

    /// As [`Containerd::start_on`], with the config file as `edit` makes it
    /// (a user's mistake).
    pub fn start_edited(
        line: Line,
        dir: &Path,
        snapshotter_socket: &Path,
        registry: Option<&str>,
        edit: impl FnOnce(String) -> String,
    ) -> Containerd {
        let base = dir.join("ctd");
        let hosts = base.join("certs.d");
        std::fs::create_dir_all(&hosts).unwrap();
        if let Some(reg) = registry {
            std::fs::create_dir_all(hosts.join(reg)).unwrap();
            std::fs::write(
                hosts.join(reg).join("hosts.toml"),
                format!("server = \"http://{reg}\"\n"),
            )
            .unwrap();
        }
        let socket = base.join("containerd.sock");
        let config = base.join("config.toml");
        std::fs::write(
            &config,
            edit(line.config(&base, snapshotter_socket, &hosts)),
        )
        .unwrap();
        let log = base.join("containerd.log");
        let bin = line.bin_dir();
        // containerd 2.1 finds its own shim (and runc) on PATH.
        let path = format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut child = Command::new(bin.join("containerd"))
            .arg("--config")
            .arg(&config)
            .env("PATH", path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "start {} ({e}): scripts/install-deps.sh installs it",
                    bin.join("containerd").display()
                )
            });
        wait_for(&socket, "containerd", &mut child, &log);
        Containerd {
            child: Some(child),
            dir: base,
            socket,
            line,
        }
    }

    /// What containerd logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    /// `ctr` against this containerd, in its line's namespace.
    pub fn ctr(&self) -> Command {
        self.ctr_in(self.line.namespace())
    }

    /// `lazycrypt pull` into this containerd, its line's namespace, from a
    /// plain-HTTP registry: add the image (`HOST/REPO:TAG`).
    pub fn lazycrypt_pull(&self) -> Command {
        let mut c = super::lazycrypt();
        c.args(["pull", "--plain-http", "--namespace", self.line.namespace()])
            .arg("--address")
            .arg(&self.socket);
        c
    }

    /// `ctr run --rm` of `image` on lazycrypt in namespace `ns`, as
    /// container `ID-<this line's namespace>` (runc's state is shared by the
    /// lines), running `argv`.
    pub fn run_in(&self, ns: &str, image: &str, id: &str, argv: &[&str]) -> Output {
        super::run(
            self.ctr_in(ns)
                .args(["run", "--rm", "--snapshotter", "lazycrypt", image])
                .arg(format!("{id}-{}", self.line.namespace()))
                .args(argv),
        )
    }

    /// A kubelet's `PullImage` of `image` through this containerd's CRI
    /// plugin; the image ref it answers with.
    pub fn cri_pull(&self, image: &str) -> Result<String, tonic::Status> {
        super::cri::pull(&self.socket, image, None)
    }

    /// `ctr` against this containerd, in namespace `ns`.
    pub fn ctr_in(&self, ns: &str) -> Command {
        let mut c = Command::new(self.line.bin_dir().join("ctr"));
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

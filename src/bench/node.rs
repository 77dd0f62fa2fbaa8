//! The processes a cold-start benchmark runs: a registry (optionally behind
//! a shaped link in a network namespace of its own), a proxy in front of it
//! that counts what the registry serves, and per repetition a fresh node:
//! containerd with lazycrypt as its proxy snapshotter, and `lazycrypt serve`.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A command the benchmark needs, and the Debian package that has it.
pub const TOOLS: [(&str, &str); 6] = [
    ("docker-registry", "docker-registry"),
    ("containerd", "containerd"),
    ("ctr", "containerd"),
    ("runc", "runc"),
    ("skopeo", "skopeo"),
    ("busybox", "busybox-static"),
];

/// The tools missing from PATH, each with the package to install.
pub fn missing_tools(names: &[&str]) -> Vec<String> {
    TOOLS
        .iter()
        .filter(|(t, _)| names.contains(t) && !on_path(t))
        .map(|(t, p)| format!("{t} (apt-get install {p})"))
        .collect()
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
}

/// Network shaping of the registry's link: rate and one-way delay.
#[derive(Debug, Clone, PartialEq)]
pub struct Shaping {
    /// A `tc` rate, e.g. `1gbit`, `100mbit`.
    pub rate: String,
    pub delay_ms: u32,
}

/// A network namespace of the benchmark's own, joined to the host by a veth
/// pair on a /30 of its own; removed on drop.
struct Netns {
    name: String,
    host_if: String,
}

/// The registry's address inside the namespace.
const NS_ADDR: &str = "10.213.47.2";
const HOST_ADDR: &str = "10.213.47.1";

impl Netns {
    fn create(shaping: &Shaping) -> io::Result<Netns> {
        let id = std::process::id();
        let ns = Netns {
            name: format!("lazycrypt-bench-{id}"),
            host_if: format!("lzb{id}h"),
        };
        let peer = format!("lzb{id}n");
        let rule = qdisc(shaping)?;
        let shape = |dev: &str| {
            let mut a = vec!["qdisc", "add", "dev", dev, "root"];
            a.extend(rule.iter().map(String::as_str));
            a.into_iter().map(String::from).collect::<Vec<_>>()
        };
        sh("ip", &["netns", "add", &ns.name])?;
        let in_ns = |cmd: &[&str]| {
            let mut a = vec!["netns", "exec", ns.name.as_str()];
            a.extend_from_slice(cmd);
            sh("ip", &a)
        };
        sh(
            "ip",
            &[
                "link",
                "add",
                &ns.host_if,
                "type",
                "veth",
                "peer",
                "name",
                &peer,
            ],
        )?;
        sh("ip", &["link", "set", &peer, "netns", &ns.name])?;
        sh(
            "ip",
            &[
                "addr",
                "add",
                &format!("{HOST_ADDR}/30"),
                "dev",
                &ns.host_if,
            ],
        )?;
        sh("ip", &["link", "set", &ns.host_if, "up"])?;
        in_ns(&["ip", "addr", "add", &format!("{NS_ADDR}/30"), "dev", &peer])?;
        in_ns(&["ip", "link", "set", &peer, "up"])?;
        in_ns(&["ip", "link", "set", "lo", "up"])?;
        let host_rule = shape(&ns.host_if);
        sh(
            "tc",
            &host_rule.iter().map(String::as_str).collect::<Vec<_>>(),
        )?;
        let mut ns_rule = vec!["tc".to_string()];
        ns_rule.extend(shape(&peer));
        in_ns(&ns_rule.iter().map(String::as_str).collect::<Vec<_>>())?;
        Ok(ns)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = sh("ip", &["link", "del", &self.host_if]);
        let _ = sh("ip", &["netns", "del", &self.name]);
    }
}

/// The `tc` queueing discipline for `shaping`: netem (rate and delay) where
/// the kernel has it, else a token bucket (rate only; a delay then is an
/// error rather than silently left out).
fn qdisc(shaping: &Shaping) -> io::Result<Vec<String>> {
    let has_netem = std::fs::read_to_string("/proc/modules")
        .is_ok_and(|m| m.lines().any(|l| l.starts_with("sch_netem ")))
        || Command::new("modprobe")
            .arg("sch_netem")
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    if has_netem {
        return Ok(["netem", "rate", &shaping.rate, "delay"]
            .iter()
            .map(|s| s.to_string())
            .chain([format!("{}ms", shaping.delay_ms)])
            .collect());
    }
    if shaping.delay_ms > 0 {
        return Err(io::Error::other(
            "a link delay needs tc's netem, which this kernel lacks (sch_netem); shape the rate only",
        ));
    }
    // A burst of 10 ms at the rate (at least 64 KiB) keeps tbf at its rate
    // whatever the kernel's timer frequency.
    let bits = rate_bits(&shaping.rate)?;
    let burst = (bits / 8 / 100).max(64 << 10);
    Ok(vec![
        "tbf".into(),
        "rate".into(),
        shaping.rate.clone(),
        "burst".into(),
        burst.to_string(),
        "latency".into(),
        "50ms".into(),
    ])
}

/// `1gbit` → 1e9.
fn rate_bits(rate: &str) -> io::Result<u64> {
    let (n, mult) = [
        ("gbit", 1_000_000_000),
        ("mbit", 1_000_000),
        ("kbit", 1_000),
    ]
    .iter()
    .find_map(|(suffix, m)| rate.strip_suffix(suffix).map(|n| (n, *m)))
    .ok_or_else(|| io::Error::other(format!("rate {rate:?}")))?;
    n.parse::<u64>()
        .map(|n| n * mult)
        .map_err(|_| io::Error::other(format!("rate {rate:?}")))
}

/// Runs a command to completion; its stderr becomes the error.
pub fn sh(cmd: &str, args: &[&str]) -> io::Result<String> {
    let out = Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| io::Error::new(e.kind(), format!("{cmd}: {e}")))?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "{cmd} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// [`sh`], noting the moment `line` appears on stdout.
pub fn sh_until(cmd: &str, args: &[&str], line: &str) -> io::Result<(Option<Instant>, String)> {
    use std::io::BufRead;
    let named = |e: io::Error| io::Error::new(e.kind(), format!("{cmd}: {e}"));
    let mut child = Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(named)?;
    let stderr = child.stderr.take().expect("piped");
    let errs = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = io::Read::read_to_string(&mut io::BufReader::new(stderr), &mut s);
        s
    });
    let mut seen = None;
    let mut out = String::new();
    for l in io::BufReader::new(child.stdout.take().expect("piped")).lines() {
        let l = l.map_err(named)?;
        if seen.is_none() && l == line {
            seen = Some(Instant::now());
        }
        out.push_str(&l);
        out.push('\n');
    }
    let status = child.wait().map_err(named)?;
    let err = errs.join().unwrap_or_default();
    if !status.success() {
        return Err(io::Error::other(format!(
            "{cmd} {}: {}",
            args.join(" "),
            err.trim()
        )));
    }
    Ok((seen, out))
}

/// The registry, where every node pulls from (through the counting proxy).
pub struct Registry {
    child: Child,
    /// What clients dial: the proxy, `127.0.0.1:PORT`.
    pub addr: String,
    served: Arc<AtomicU64>,
    _netns: Option<Netns>,
}

impl Registry {
    /// Starts Debian's registry with storage under `dir`, on loopback or,
    /// with `shaping`, in a namespace behind a shaped veth link.
    pub fn start(dir: &Path, shaping: Option<&Shaping>) -> io::Result<Registry> {
        // Every benchmark pushes its images afresh (new layer keys, new
        // digests): what earlier benchmarks pushed would only pile up.
        let _ = std::fs::remove_dir_all(dir.join("data"));
        std::fs::create_dir_all(dir)?;
        let netns = shaping.map(Netns::create).transpose()?;
        let listen = match &netns {
            Some(_) => format!("{NS_ADDR}:5000"),
            None => format!("127.0.0.1:{}", free_port()?),
        };
        let config = dir.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog: {{level: error, accesslog: {{disabled: true}}}}\n\
                 storage: {{filesystem: {{rootdirectory: {}}}, delete: {{enabled: true}}}}\n\
                 http: {{addr: {listen}}}\n",
                dir.join("data").display()
            ),
        )?;
        let mut cmd = match &netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &ns.name, "docker-registry"]);
                c
            }
            None => Command::new("docker-registry"),
        };
        let child = super::stop::spawn_daemon(
            cmd.arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )
        .map_err(|e| io::Error::new(e.kind(), format!("docker-registry: {e}")))?;
        starting(Duration::from_secs(20), "the registry to listen", || {
            TcpStream::connect(&listen).is_ok()
        })?;
        let (addr, served) = proxy(&listen)?;
        Ok(Registry {
            child,
            addr,
            served,
            _netns: netns,
        })
    }

    /// Bytes the registry has sent so far.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::SeqCst)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        super::stop::daemon_gone(self.child.id());
    }
}

fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A TCP proxy on loopback in front of `upstream`, counting the bytes
/// upstream sends.
fn proxy(upstream: &str) -> io::Result<(String, Arc<AtomicU64>)> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?.to_string();
    let served = Arc::new(AtomicU64::new(0));
    let (up, count) = (upstream.to_string(), served.clone());
    std::thread::spawn(move || {
        for c in l.incoming() {
            let (Ok(client), Ok(server)) = (c, TcpStream::connect(&up)) else {
                continue;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (Ok(mut c2), Ok(mut s2)) = (client.try_clone(), server.try_clone()) else {
                continue;
            };
            std::thread::spawn(move || {
                let _ = io::copy(&mut c2, &mut s2);
                let _ = s2.shutdown(std::net::Shutdown::Write);
            });
            let count = count.clone();
            std::thread::spawn(move || {
                let (mut s, mut c) = (server, client);
                let mut buf = vec![0u8; 256 << 10];
                while let Ok(n @ 1..) = s.read(&mut buf) {
                    count.fetch_add(n as u64, Ordering::SeqCst);
                    if c.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = c.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    Ok((addr, served))
}

/// [`wait_until`] for a daemon to come up, giving up when a signal asks
/// the benchmark to stop.
fn starting(limit: Duration, what: &str, mut done: impl FnMut() -> bool) -> io::Result<()> {
    wait_until(limit, what, || super::stop::requested() || done())?;
    super::stop::check()
}

/// Polls `done` until it holds or `limit` passes.
pub fn wait_until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) -> io::Result<()> {
    let start = Instant::now();
    while !done() {
        if start.elapsed() > limit {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("timed out waiting for {what}"),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// One cold node: fresh containerd and `lazycrypt serve` state.
pub struct Node {
    pub dir: PathBuf,
    pub containerd_socket: PathBuf,
    /// `lazycrypt serve --metrics`: every node serves them, so a node with
    /// a signature policy differs from one without in the policy only.
    metrics: String,
    ctd: Child,
    lz: Child,
}

/// The signature verdicts a node's `lazycrypt serve` gave.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Verdicts {
    /// Images accepted under the policy.
    pub accepted: u64,
    /// The time spent reaching every verdict, seconds.
    pub seconds: f64,
}

/// What a node's daemons used.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    /// Peak resident memory of `lazycrypt serve`, KiB.
    pub lazycrypt_peak_rss_kib: u64,
    /// CPU time of containerd and `lazycrypt serve` with their exited
    /// children (stream processors), seconds.
    pub cpu_seconds: f64,
}

impl Node {
    /// Starts containerd and `lazycrypt serve` (this executable) with state
    /// in `dir`, reaching `registry` over plain HTTP with the keys in `keys`
    /// and, if given, the signature policy `policy`.
    pub fn start(
        dir: &Path,
        registry: &str,
        keys: &Path,
        cache_size: &str,
        read_ahead: &str,
        policy: Option<&Path>,
    ) -> io::Result<Node> {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir.join("lz"))?;
        std::fs::create_dir_all(dir.join("ctd"))?;
        let exe = std::env::current_exe()?;
        let lz_sock = dir.join("lz/lazycrypt.sock");
        let metrics = format!("127.0.0.1:{}", free_port()?);
        let mut serve = Command::new(&exe);
        serve.arg("serve");
        if let Some(p) = policy {
            serve.arg("--policy").arg(p);
        }
        let lz = super::stop::spawn_daemon(
            serve
                .arg("--root")
                .arg(dir.join("lz/root"))
                .arg("--address")
                .arg(&lz_sock)
                .arg("--keys-dir")
                .arg(keys)
                .args(["--plain-http", registry, "--cache-size", cache_size])
                .args(["--read-ahead", read_ahead, "--metrics", &metrics])
                .arg("--hosts-dir")
                .arg(dir.join("lz/no-hosts"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.join("lz/log"))?),
        )?;
        let ctd_sock = dir.join("ctd/containerd.sock");
        let config = dir.join("ctd/config.toml");
        std::fs::write(
            &config,
            containerd_config(&dir.join("ctd"), &lz_sock, &exe, keys, registry),
        )?;
        let ctd = super::stop::spawn_daemon(
            Command::new("containerd")
                .arg("--config")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.join("ctd/log"))?),
        )
        .map_err(|e| io::Error::new(e.kind(), format!("containerd: {e}")))?;
        let node = Node {
            dir: dir.to_path_buf(),
            containerd_socket: ctd_sock,
            metrics,
            ctd,
            lz,
        };
        let mut node = node;
        let mut exited = None;
        starting(Duration::from_secs(30), "containerd and lazycrypt", || {
            for (name, c, log) in [
                ("lazycrypt serve", &mut node.lz, "lz/log"),
                ("containerd", &mut node.ctd, "ctd/log"),
            ] {
                if let Ok(Some(st)) = c.try_wait() {
                    let text = std::fs::read_to_string(dir.join(log)).unwrap_or_default();
                    let last = text.lines().last().unwrap_or("").to_string();
                    exited = Some(format!("{name} exited ({st}): {last}"));
                    return true;
                }
            }
            node.containerd_socket.exists() && lz_sock.exists()
        })?;
        if let Some(e) = exited {
            return Err(io::Error::other(e));
        }
        starting(
            Duration::from_secs(30),
            "containerd's lazycrypt plugin",
            || {
                node.ctr("default", &["plugins", "ls"]).is_ok_and(|o| {
                    o.lines().any(|l| {
                        l.contains("lazycrypt") && l.split_whitespace().last() == Some("ok")
                    })
                })
            },
        )?;
        Ok(node)
    }

    /// Runs `ctr` against this node's containerd in namespace `ns`.
    pub fn ctr(&self, ns: &str, args: &[&str]) -> io::Result<String> {
        sh("ctr", &self.ctr_args(ns, args))
    }

    /// Runs `ctr` like [`Node::ctr`], noting when `line` appears on its
    /// stdout; returns that moment (if it came) and the whole stdout.
    pub fn ctr_until(
        &self,
        ns: &str,
        args: &[&str],
        line: &str,
    ) -> io::Result<(Option<Instant>, String)> {
        sh_until("ctr", &self.ctr_args(ns, args), line)
    }

    fn ctr_args<'a>(&'a self, ns: &'a str, args: &[&'a str]) -> Vec<&'a str> {
        let mut a = vec![
            "--address",
            self.containerd_socket.to_str().unwrap_or(""),
            "--namespace",
            ns,
        ];
        a.extend_from_slice(args);
        a
    }

    /// The signature verdicts `lazycrypt serve` gave so far, from its
    /// metrics.
    pub fn signature_verdicts(&self) -> io::Result<Verdicts> {
        let mut c = TcpStream::connect(&self.metrics)?;
        c.set_read_timeout(Some(Duration::from_secs(10)))?;
        c.write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")?;
        let mut page = String::new();
        c.read_to_string(&mut page)?;
        let value = |name: &str| {
            page.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .ok_or_else(|| io::Error::other(format!("no {name} in lazycrypt's metrics")))
        };
        Ok(Verdicts {
            accepted: value("lazycrypt_signature_verdicts_total{verdict=\"accepted\"}")? as u64,
            seconds: value("lazycrypt_signature_verify_seconds_sum")?,
        })
    }

    /// What the daemons used so far.
    pub fn usage(&self) -> Usage {
        let ticks = clock_ticks();
        let cpu = |pid: u32| -> f64 {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // Fields after the command name (which may hold spaces) start
            // at field 3; utime, stime, cutime and cstime are fields 14-17.
            let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
            let f: Vec<&str> = rest.split_whitespace().collect();
            let t: u64 = f
                .get(11..15)
                .map_or(0, |v| v.iter().filter_map(|x| x.parse::<u64>().ok()).sum());
            t as f64 / ticks
        };
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.lz.id())).unwrap_or_default();
        let hwm = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        Usage {
            lazycrypt_peak_rss_kib: hwm,
            cpu_seconds: cpu(self.ctd.id()) + cpu(self.lz.id()),
        }
    }

    /// Deletes the node's tasks, then (dropping it) stops both daemons,
    /// lazycrypt gracefully, and removes every mount and file of the node.
    pub fn stop(self) {
        for ns in ["bench", "k8s.io"] {
            if let Ok(tasks) = self.ctr(ns, &["tasks", "ls", "-q"]) {
                for t in tasks.split_whitespace() {
                    let _ = self.ctr(ns, &["tasks", "delete", "--force", t]);
                }
            }
        }
    }
}

impl Drop for Node {
    /// After `stop`, or when starting failed half-way: nothing of the node
    /// stays running, mounted or on disk.
    fn drop(&mut self) {
        let _ = self.ctd.kill();
        let _ = self.ctd.wait();
        // SIGTERM: lazycrypt unmounts its layers and stops its FUSE keeper,
        // which a SIGKILL would leave running.
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.lz.id() as i32, libc::SIGTERM) };
        let _ = wait_until(Duration::from_secs(20), "lazycrypt to stop", || {
            self.lz.try_wait().ok().flatten().is_some()
        });
        let _ = self.lz.kill();
        let _ = self.lz.wait();
        for c in [&self.ctd, &self.lz] {
            super::stop::daemon_gone(c.id());
        }
        let _ = crate::mount::sys::unmount_under(&self.dir);
        // A layer still under a container's overlay when lazycrypt stopped
        // was left to its FUSE keeper for a next daemon; there is none.
        stop_keepers(&self.dir);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Kills the FUSE keepers of lazycrypt roots under `dir` (their mounts are
/// gone), and waits for them to end.
fn stop_keepers(dir: &Path) {
    let ours = |pid: &str| {
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd);
        cmd.contains("fuse-keeper") && cmd.contains(&*dir.to_string_lossy())
    };
    let keepers = || -> Vec<i32> {
        std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|p| ours(&p.to_string()))
            .collect()
    };
    for pid in keepers() {
        // SAFETY: a keeper this node's lazycrypt started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let _ = wait_until(Duration::from_secs(5), "FUSE keepers to end", || {
        keepers().is_empty()
    });
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// containerd 1.6 with lazycrypt as the `lazycrypt` proxy snapshotter, the
/// ocicrypt stream processor (`lazycrypt stream-decrypt`, the node's keys),
/// and CRI pulling with overlayfs from the registry over plain HTTP.
fn containerd_config(
    dir: &Path,
    lz_sock: &Path,
    exe: &Path,
    keys: &Path,
    registry: &str,
) -> String {
    let d = dir.display();
    format!(
        r#"version = 2
root = "{d}/root"
state = "{d}/state"
[grpc]
  address = "{d}/containerd.sock"
[proxy_plugins.lazycrypt]
  type = "snapshot"
  address = "{lz}"
[stream_processors]
  [stream_processors."io.containerd.ocicrypt.decoder.v1.tar.gzip"]
    accepts = ["application/vnd.oci.image.layer.v1.tar+gzip+encrypted"]
    returns = "application/vnd.oci.image.layer.v1.tar+gzip"
    path = "{exe}"
    args = ["stream-decrypt", "--decryption-keys-path", "{keys}"]
[plugins."io.containerd.grpc.v1.cri"]
  disable_tcp_service = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
  [plugins."io.containerd.grpc.v1.cri".image_decryption]
    key_model = "node"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{d}/cni/bin"
    conf_dir = "{d}/cni/conf"
  [plugins."io.containerd.grpc.v1.cri".registry.mirrors."{registry}"]
    endpoint = ["http://{registry}"]
"#,
        lz = lz_sock.display(),
        exe = exe.display(),
        keys = keys.display(),
    )
}

/// Drops the page cache, dentries and inodes, so reads start cold.
pub fn drop_caches() -> io::Result<()> {
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", "3")
}

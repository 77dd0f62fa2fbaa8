//! `lazycrypt serve` as a system daemon: systemd readiness (`READY=1` on
//! `$NOTIFY_SOCKET` once its socket answers, `STOPPING=1` on SIGTERM), and
//! a metrics endpoint that slow, idle or too many clients, or running out
//! of descriptors, cannot take down.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::containerd::Daemon;
use common::{free_port, ok, tmp};
use lazycrypt::containerd::proto::snapshots as pb;
use pb::snapshots_client::SnapshotsClient;

/// A Stat of a snapshot that does not exist on the daemon's socket: the
/// daemon answers NotFound.
fn stat_answers(socket: &Path) -> Result<tonic::Code, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let c = lazycrypt::containerd::client::Client::connect(socket, "test").await?;
        let r = SnapshotsClient::new(c.channel)
            .stat(pb::StatSnapshotRequest {
                snapshotter: "lazycrypt".into(),
                key: "none".into(),
            })
            .await;
        Ok(r.map_or_else(|s| s.code(), |_| tonic::Code::Ok))
    })
}

/// The next datagram on `rx`, as text.
fn next_state(rx: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = rx.recv(&mut buf).expect("a notification within 60 s");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// `serve` with NOTIFY_SOCKET=`value`, receiving on `rx`: READY=1 comes
/// when the socket already answers, STOPPING=1 on SIGTERM.
fn told_ready_then_stopping(dir: &Path, value: &str, rx: &UnixDatagram) {
    rx.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let d = Daemon::spawn_with_env(dir, &[], &[("NOTIFY_SOCKET", Some(value))]);
    assert_eq!(next_state(rx), "READY=1", "{}", d.log());
    // Not waited for: at READY=1 the socket is there and answers.
    assert_eq!(stat_answers(&d.socket), Ok(tonic::Code::NotFound));
    // SAFETY: signalling the daemon this test started.
    unsafe { libc::kill(d.pid() as i32, libc::SIGTERM) };
    assert_eq!(next_state(rx), "STOPPING=1");
    d.stop();
}

#[test]
fn serve_tells_systemd_ready_once_its_socket_answers_and_stopping_on_sigterm() {
    let d = tmp();
    // A path, as systemd gives it.
    let path = d.path().join("notify.sock");
    let rx = UnixDatagram::bind(&path).unwrap();
    told_ready_then_stopping(&d.path().join("a"), path.to_str().unwrap(), &rx);

    // An abstract name (systemd's own socket is one).
    let name = format!("lazycrypt-test-notify-{}", std::process::id());
    let rx = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(&name).unwrap()).unwrap();
    told_ready_then_stopping(&d.path().join("b"), &format!("@{name}"), &rx);
}

#[test]
fn serve_runs_without_notify_socket_or_with_one_nobody_listens_on() {
    let d = tmp();
    for (sub, value) in [
        ("unset", None),
        ("gone", Some(d.path().join("nobody.sock"))),
    ] {
        let value = value.as_ref().map(|p| p.to_str().unwrap());
        let mut daemon =
            Daemon::spawn_with_env(&d.path().join(sub), &[], &[("NOTIFY_SOCKET", value)]);
        daemon.wait_socket();
        let deadline = Instant::now() + Duration::from_secs(30);
        while stat_answers(&daemon.socket) != Ok(tonic::Code::NotFound) {
            assert!(Instant::now() < deadline, "{sub}: {}", daemon.log());
            std::thread::sleep(Duration::from_millis(20));
        }
        daemon.stop();
    }
}

fn serve_with_metrics(dir: &Path) -> (Daemon, String) {
    let addr = format!("127.0.0.1:{}", free_port());
    let d = Daemon::start_with(dir, &["--metrics".into(), addr.clone()]);
    (d, addr)
}

/// GET /metrics with curl: the page, or a panic.
fn metrics(addr: &str) -> String {
    ok(Command::new("curl")
        .args(["-sSf", "--max-time", "60"])
        .arg(format!("http://{addr}/metrics")))
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

#[test]
fn a_silent_or_dribbling_metrics_client_is_hung_up_on_and_others_are_served() {
    let d = tmp();
    let (daemon, addr) = serve_with_metrics(d.path());
    let mut silent = TcpStream::connect(&addr).unwrap();
    let mut dribbler = TcpStream::connect(&addr).unwrap();
    let dribbling = std::thread::spawn(move || {
        for b in b"GET /metrics HTTP/1.1\r\n".iter().cycle() {
            if dribbler.write_all(&[*b]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    assert!(metrics(&addr).contains("lazycrypt_snapshots{kind=\"active\"} 0"));
    // The daemon hangs up on both.
    silent
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let read = silent.read(&mut [0u8; 16]);
    assert!(
        matches!(read, Ok(0))
            || read
                .as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "the silent client is still connected: {read:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while !dribbling.is_finished() {
        assert!(
            Instant::now() < deadline,
            "the dribbling client is still connected"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(daemon);
}

#[test]
fn idle_metrics_connections_beyond_the_cap_hold_no_descriptors_of_the_daemon() {
    let d = tmp();
    let (daemon, addr) = serve_with_metrics(d.path());
    metrics(&addr);
    let base = fds(daemon.pid());
    let idle: Vec<TcpStream> = (0..200)
        .map(|_| TcpStream::connect(&addr).unwrap())
        .collect();
    // Give the daemon time to take what it would; it never holds more than
    // its 16 connections (a few descriptors of its own may come and go).
    let mut most = 0;
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        most = most.max(fds(daemon.pid()));
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        most <= base + 16 + 4,
        "200 idle connections: the daemon went from {base} to {most} descriptors"
    );
    drop(idle);
    assert!(metrics(&addr).contains("lazycrypt_layer_mounts 0"));
}

/// Sets the soft limit of open files of process `pid`; returns the old one.
fn set_nofile(pid: u32, soft: u64) -> u64 {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit on the daemon this test started, with valid pointers.
    let r = unsafe { libc::prlimit(pid as i32, libc::RLIMIT_NOFILE, std::ptr::null(), &mut old) };
    assert_eq!(r, 0, "prlimit: {}", std::io::Error::last_os_error());
    let new = libc::rlimit {
        rlim_cur: soft,
        rlim_max: old.rlim_max,
    };
    // SAFETY: as above.
    let r = unsafe { libc::prlimit(pid as i32, libc::RLIMIT_NOFILE, &new, std::ptr::null_mut()) };
    assert_eq!(r, 0, "prlimit: {}", std::io::Error::last_os_error());
    old.rlim_cur
}

#[test]
fn the_metrics_endpoint_survives_running_out_of_descriptors() {
    let d = tmp();
    let (daemon, addr) = serve_with_metrics(d.path());
    metrics(&addr);
    // Room for two more descriptors: the third connection's accept fails
    // with EMFILE.
    let before = set_nofile(daemon.pid(), fds(daemon.pid()) as u64 + 2);
    let idle: Vec<TcpStream> = (0..6).map(|_| TcpStream::connect(&addr).unwrap()).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !daemon.log().contains("os error 24") {
        assert!(Instant::now() < deadline, "no EMFILE: {}", daemon.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    set_nofile(daemon.pid(), before);
    drop(idle);
    // Descriptors are back: so is the endpoint.
    assert!(metrics(&addr).contains("lazycrypt_layer_mounts 0"));
    let log = daemon.log();
    assert_eq!(log.matches("os error 24").count(), 1, "logged once: {log}");
}

/// A crash of serve or its FUSE keeper writes no core file: both hold
/// plaintext chunks or keys in memory.
#[test]
fn serve_and_its_keeper_write_no_core_file() {
    let d = tmp();
    let daemon = Daemon::start(d.path());
    let keepers = common::containerd::keeper_pids(&daemon.root);
    let mut pids = vec![daemon.pid() as i32];
    pids.extend(keepers);
    for pid in pids {
        let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
        let core = limits
            .lines()
            .find(|l| l.starts_with("Max core file size"))
            .unwrap();
        let fields: Vec<&str> = core.split_whitespace().collect();
        assert_eq!(&fields[4..6], ["0", "0"], "{pid}: {core}");
    }
    daemon.stop();
}

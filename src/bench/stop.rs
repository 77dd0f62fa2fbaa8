//! Stopping a benchmark by a signal. Its node (containerd, `lazycrypt
//! serve`, their mounts), its registry and its network namespace are torn
//! down by their owners' drops, which a signal's default action would skip.
//! So SIGINT, SIGTERM and SIGHUP instead stop the command the benchmark is
//! waiting on and ask it to wind up; a second signal ends it at once.

use std::collections::BTreeSet;
use std::io::{self, Read};
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::{Child, Command};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::Duration;

use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, kill, sigaction};
use nix::unistd::Pid;

static REQUESTED: AtomicBool = AtomicBool::new(false);

/// Children that their owners stop in order (containerd after its tasks,
/// the registry), which a signal leaves alone.
static DAEMONS: Mutex<BTreeSet<u32>> = Mutex::new(BTreeSet::new());

/// How long the benchmark has to wind up after a signal.
const GRACE: Duration = Duration::from_secs(60);

/// Whether a signal asked the benchmark to stop.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}

/// Fails (`Interrupted`) once a signal has asked the benchmark to stop:
/// called before each step that would start or measure something.
pub fn check() -> io::Result<()> {
    if requested() {
        return Err(io::Error::new(io::ErrorKind::Interrupted, "stopped"));
    }
    Ok(())
}

/// Spawns a daemon its owner stops: a signal leaves it alone. (Spawned
/// under the lock, so that a signal never finds it unlisted.)
pub fn spawn_daemon(cmd: &mut Command) -> io::Result<Child> {
    let mut daemons = crate::sync::lock(&DAEMONS);
    let child = cmd.spawn()?;
    daemons.insert(child.id());
    Ok(child)
}

/// Forgets daemon `pid`, once its owner has stopped it.
pub fn daemon_gone(pid: u32) {
    crate::sync::lock(&DAEMONS).remove(&pid);
}

/// Takes over SIGINT, SIGTERM and SIGHUP for the rest of the process: a
/// handler notes the signal (in a pipe, the one thing it may safely do) and
/// a thread acts on it. Handlers, unlike a blocked mask, are not inherited
/// by the commands the benchmark runs.
pub fn install() -> io::Result<()> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two new descriptors into `fds`.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors are new and owned here alone; the write end
    // lives for the rest of the process, for the handler.
    let mut notes = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fds[0]) });
    PIPE.store(fds[1], Ordering::SeqCst);
    let action = SigAction::new(
        SigHandler::Handler(note),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: `note` only stores to an atomic and writes to a pipe.
        unsafe { sigaction(s, &action) }.map_err(io::Error::from)?;
    }
    std::thread::spawn(move || {
        let mut sig = [0u8; 1];
        if notes.read_exact(&mut sig).is_err() {
            return;
        }
        eprintln!(
            "{}: stopping; tearing down the node and the registry",
            name(sig[0])
        );
        stop_children();
        std::thread::spawn(|| {
            std::thread::sleep(GRACE);
            std::process::exit(130);
        });
        if notes.read_exact(&mut sig).is_ok() {
            eprintln!("{}: stopping now", name(sig[0]));
            std::process::exit(130);
        }
    });
    Ok(())
}

/// The write end of the pipe the handler notes signals in.
static PIPE: AtomicI32 = AtomicI32::new(-1);

extern "C" fn note(sig: libc::c_int) {
    REQUESTED.store(true, Ordering::SeqCst);
    let b = sig as u8;
    // SAFETY: write(2) is async-signal-safe; a full pipe only loses a note.
    unsafe { libc::write(PIPE.load(Ordering::SeqCst), (&raw const b).cast(), 1) };
}

fn name(sig: u8) -> String {
    Signal::try_from(i32::from(sig)).map_or_else(|_| format!("signal {sig}"), |s| s.to_string())
}

/// Sends SIGTERM to this process's children but its daemons: the command
/// the benchmark is waiting on returns.
fn stop_children() {
    let me = std::process::id() as i32;
    // Held while scanning: a daemon being spawned is listed before it runs.
    let daemons = crate::sync::lock(&DAEMONS);
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        // The parent is the second field after the command name, which may
        // hold spaces and parentheses.
        let parent = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<i32>().ok());
        if parent == Some(me) && !daemons.contains(&(pid as u32)) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
    }
}

//! Keeps the daemon's FUSE connections open while no daemon runs.
//!
//! The kernel ends a FUSE connection, and every container reading through
//! it gets ENOTCONN, once the last descriptor of its `/dev/fuse` file is
//! closed. A small process of its own (`lazycrypt fuse-keeper`) holds a
//! duplicate of each layer's descriptor, so a killed daemon's mounts stay
//! alive: their reads wait in the kernel's queue until the next daemon takes
//! the descriptors back and serves them again. The keeper holds no key, no
//! plaintext and no file name: only descriptors, named by mount directory.
//!
//! It leaves when told to (graceful daemon shutdown), or when every mount it
//! kept has gone away without the daemon saying so (a killed daemon whose
//! mounts were then unmounted by hand).

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{
    AddressFamily, Backlog, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType,
    UnixAddr, accept, bind, connect, getsockopt, listen, recvmsg, sendmsg, setsockopt, socket,
    sockopt,
};

/// Longest message: a verb and a mount directory.
const MAX_MESSAGE: usize = 8192;
/// How long either side waits for the other within one exchange.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a daemon waits for the keeper it started to listen.
const START_TIMEOUT: Duration = Duration::from_secs(5);

/// The daemon's handle on its keeper process.
#[derive(Debug, Clone)]
pub struct Keeper {
    socket: PathBuf,
}

impl Keeper {
    /// Reaches the keeper listening at `socket`, starting one (this
    /// executable, detached into its own process group) when none answers.
    pub fn start(socket: &Path) -> io::Result<Keeper> {
        let k = Keeper {
            socket: socket.to_path_buf(),
        };
        if k.exchange(b"PING", None).is_ok() {
            return Ok(k);
        }
        k.spawn()?;
        Ok(k)
    }

    fn spawn(&self) -> io::Result<()> {
        use std::os::unix::process::CommandExt;
        use std::process::{Command, Stdio};
        // /proc/self/exe still runs after the binary file was replaced.
        let mut child = Command::new("/proc/self/exe")
            .arg("fuse-keeper")
            .arg(&self.socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("starting the FUSE keeper: {e}")))?;
        // Reap it whenever it leaves, so it never lingers as a zombie.
        std::thread::spawn(move || child.wait());
        let started = Instant::now();
        loop {
            match self.exchange(b"PING", None) {
                Ok(_) => return Ok(()),
                Err(e) if started.elapsed() > START_TIMEOUT => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("the FUSE keeper at {}: {e}", self.socket.display()),
                    ));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    /// Hands the keeper a duplicate of the connection mounted at `dir`,
    /// replacing any it held for `dir`. Starts a new keeper if the old one
    /// has left.
    pub fn keep(&self, dir: &Path, conn: BorrowedFd<'_>) -> io::Result<()> {
        let msg = message(b"KEEP ", dir);
        if self.exchange(&msg, Some(conn)).is_ok() {
            return Ok(());
        }
        self.spawn()?;
        self.exchange(&msg, Some(conn)).map(drop)
    }

    /// Tells the keeper to close its duplicate for `dir` (before the daemon
    /// unmounts it on purpose).
    pub fn release(&self, dir: &Path) -> io::Result<()> {
        self.exchange(&message(b"RELEASE ", dir), None).map(drop)
    }

    /// Duplicates of every connection the keeper holds, by mount directory.
    /// The keeper keeps its own, so a daemon that dies while taking them
    /// over loses nothing.
    pub fn held(&self) -> io::Result<Vec<(PathBuf, OwnedFd)>> {
        let conn = self.connect()?;
        send(&conn, b"HELD", None)?;
        let mut out = Vec::new();
        loop {
            let (msg, fd) = receive(&conn)?;
            if msg == b"END" {
                return Ok(out);
            }
            match (msg.strip_prefix(b"FD "), fd) {
                (Some(dir), Some(fd)) => out.push((path(dir), fd)),
                _ => return Err(protocol_error(&msg)),
            }
        }
    }

    /// Asks the keeper to close everything and leave.
    pub fn quit(&self) -> io::Result<()> {
        self.exchange(b"QUIT", None).map(drop)
    }

    fn connect(&self) -> io::Result<OwnedFd> {
        let s = seqpacket()?;
        connect(s.as_raw_fd(), &UnixAddr::new(&self.socket)?)?;
        // The keeper is handed FUSE connections: whoever holds one answers
        // that layer's reads. Talk only to a keeper of our own user.
        if !same_user(&s) {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "FUSE keeper at {}: the listener is another user's",
                    self.socket.display()
                ),
            ));
        }
        timeouts(&s)?;
        Ok(s)
    }

    /// Sends one request and reads its one-line answer.
    fn exchange(&self, msg: &[u8], fd: Option<BorrowedFd<'_>>) -> io::Result<Vec<u8>> {
        let conn = self.connect()?;
        send(&conn, msg, fd)?;
        let (answer, _) = receive(&conn)?;
        match answer.strip_prefix(b"ERR ") {
            Some(e) => Err(io::Error::other(String::from_utf8_lossy(e).into_owned())),
            None => Ok(answer),
        }
    }
}

/// The keeper process: serves requests at `socket` until told to quit or
/// until every connection it kept has died.
pub fn serve(socket_path: &Path) -> io::Result<()> {
    // A fresh socket for each try: one bound in the staging directory
    // cannot be bound again.
    let bind_here = || {
        crate::private::bind_socket(socket_path, |p| {
            let s = seqpacket()?;
            bind(s.as_raw_fd(), &UnixAddr::new(p)?)?;
            Ok(s)
        })
    };
    let listener = match bind_here() {
        Ok(l) => l,
        Err(_) => {
            // A keeper that answers owns the name; a dead one left its file.
            let other = Keeper {
                socket: socket_path.to_path_buf(),
            };
            if other.exchange(b"PING", None).is_ok() {
                return Ok(());
            }
            let _ = std::fs::remove_file(socket_path);
            bind_here()?
        }
    };
    listen(&listener, Backlog::new(64).map_err(io::Error::from)?)?;
    let ours = inode(socket_path);
    let mut held: Vec<(Vec<u8>, OwnedFd)> = Vec::new();
    let mut lost = false;
    loop {
        // Held connections are polled for errors only: the keeper never
        // reads a request, it only notices when a mount has gone.
        let mut fds: Vec<PollFd<'_>> = vec![PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
        fds.extend(
            held.iter()
                .map(|(_, fd)| PollFd::new(fd.as_fd(), PollFlags::empty())),
        );
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
        let ready: Vec<bool> = fds
            .iter()
            .map(|p| p.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        drop(fds);
        let dead: Vec<usize> = (0..held.len()).filter(|&i| ready[i + 1]).collect();
        for i in dead.into_iter().rev() {
            held.remove(i);
            lost = true;
        }
        if lost && held.is_empty() {
            break;
        }
        if !ready[0] {
            continue;
        }
        let Ok(conn) = accept(listener.as_raw_fd()) else {
            continue;
        };
        // SAFETY: accept returned a new descriptor that nothing else owns.
        let conn = unsafe { OwnedFd::from_raw_fd(conn) };
        if !same_user(&conn) || timeouts(&conn).is_err() {
            continue;
        }
        match answer(&conn, &mut held) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => {
                let _ = send(&conn, format!("ERR {e}").as_bytes(), None);
            }
        }
    }
    // A keeper started after this one decided to leave may own the name now.
    if inode(socket_path) == ours {
        let _ = std::fs::remove_file(socket_path);
    }
    Ok(())
}

/// A new unix message socket, the kind keeper and clients speak over.
fn seqpacket() -> io::Result<OwnedFd> {
    Ok(socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?)
}

fn inode(p: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(p).ok().map(|m| m.ino())
}

/// Answers one request; false when told to quit.
fn answer(conn: &OwnedFd, held: &mut Vec<(Vec<u8>, OwnedFd)>) -> io::Result<bool> {
    let (msg, fd) = receive(conn)?;
    if msg == b"PING" {
        send(conn, b"OK", None)?;
    } else if let Some(dir) = msg.strip_prefix(b"KEEP ") {
        let fd = fd.ok_or_else(|| io::Error::other("KEEP without a descriptor"))?;
        held.retain(|(d, _)| d != dir);
        held.push((dir.to_vec(), fd));
        send(conn, b"OK", None)?;
    } else if let Some(dir) = msg.strip_prefix(b"RELEASE ") {
        held.retain(|(d, _)| d != dir);
        send(conn, b"OK", None)?;
    } else if msg == b"HELD" {
        for (dir, fd) in held.iter() {
            let mut m = b"FD ".to_vec();
            m.extend_from_slice(dir);
            send(conn, &m, Some(fd.as_fd()))?;
        }
        send(conn, b"END", None)?;
    } else if msg == b"QUIT" {
        held.clear();
        send(conn, b"OK", None)?;
        return Ok(false);
    } else {
        return Err(protocol_error(&msg));
    }
    Ok(true)
}

fn message(verb: &[u8], dir: &Path) -> Vec<u8> {
    let mut m = verb.to_vec();
    m.extend_from_slice(dir.as_os_str().as_bytes());
    m
}

fn path(b: &[u8]) -> PathBuf {
    PathBuf::from(std::ffi::OsStr::from_bytes(b))
}

fn protocol_error(msg: &[u8]) -> io::Error {
    let verb = msg.split(|&b| b == b' ').next().unwrap_or_default();
    io::Error::other(format!(
        "FUSE keeper: unexpected message {:?}",
        String::from_utf8_lossy(verb)
    ))
}

fn send(conn: &OwnedFd, msg: &[u8], fd: Option<BorrowedFd<'_>>) -> io::Result<()> {
    let raw: Vec<RawFd> = fd.iter().map(|f| f.as_raw_fd()).collect();
    let cmsg = [ControlMessage::ScmRights(&raw)];
    let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &cmsg };
    sendmsg::<()>(
        conn.as_raw_fd(),
        &[IoSlice::new(msg)],
        cmsgs,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )?;
    Ok(())
}

/// One message and the descriptor that came with it, if any.
fn receive(conn: &OwnedFd) -> io::Result<(Vec<u8>, Option<OwnedFd>)> {
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let mut iov = [IoSliceMut::new(&mut buf)];
    let r = recvmsg::<()>(
        conn.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let mut fd = None;
    for c in r.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            for raw in fds {
                // SAFETY: the kernel installed this descriptor for us alone.
                let owned = unsafe { OwnedFd::from_raw_fd(raw) };
                fd.get_or_insert(owned);
            }
        }
    }
    let n = r.bytes;
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "FUSE keeper: connection closed",
        ));
    }
    buf.truncate(n);
    Ok((buf, fd))
}

/// Whether the peer is the user we run as. Only the user running the keeper
/// (root, for the daemon) may talk to it, and the daemon talks only to a
/// keeper of its own user: a descriptor of a FUSE connection lets its holder
/// answer its reads.
fn same_user(conn: &OwnedFd) -> bool {
    getsockopt(conn, sockopt::PeerCredentials)
        .is_ok_and(|c| c.uid() == nix::unistd::geteuid().as_raw())
}

fn timeouts(conn: &OwnedFd) -> io::Result<()> {
    let t = nix::sys::time::TimeVal::new(EXCHANGE_TIMEOUT.as_secs() as _, 0);
    setsockopt(conn, sockopt::ReceiveTimeout, &t)?;
    setsockopt(conn, sockopt::SendTimeout, &t)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A keeper serving on a thread, and a handle on it.
    fn started(dir: &Path) -> (Keeper, std::thread::JoinHandle<io::Result<()>>) {
        let sock = dir.join("k.sock");
        let server = {
            let sock = sock.clone();
            std::thread::spawn(move || serve(&sock))
        };
        let k = Keeper { socket: sock };
        let started = Instant::now();
        while k.exchange(b"PING", None).is_err() {
            assert!(started.elapsed() < START_TIMEOUT, "keeper never listened");
            std::thread::sleep(Duration::from_millis(10));
        }
        (k, server)
    }

    /// A keeper killed without cleaning up leaves its socket file: the next
    /// one takes the name over.
    #[test]
    fn a_stale_socket_file_is_taken_over() {
        let d = tempfile::tempdir().unwrap();
        drop(std::os::unix::net::UnixListener::bind(d.path().join("k.sock")).unwrap());
        assert!(d.path().join("k.sock").exists());
        let (k, server) = started(d.path());
        k.quit().unwrap();
        server.join().unwrap().unwrap();
    }

    #[test]
    fn keeps_hands_back_and_releases_descriptors() {
        let dir = tempfile::tempdir().unwrap();
        let (k, server) = started(dir.path());
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        k.keep(Path::new("/x/1"), a.as_fd()).unwrap();
        k.keep(Path::new("/x/2"), a.as_fd()).unwrap();
        let held = k.held().unwrap();
        let names: Vec<_> = held.iter().map(|(p, _)| p.clone()).collect();
        assert_eq!(names, [PathBuf::from("/x/1"), PathBuf::from("/x/2")]);
        k.release(Path::new("/x/1")).unwrap();
        assert_eq!(k.held().unwrap().len(), 1);
        let e = k.exchange(b"BOGUS", None).unwrap_err();
        assert!(e.to_string().contains("unexpected message"), "{e}");
        k.quit().unwrap();
        server.join().unwrap().unwrap();
        assert!(!k.socket.exists());
    }

    #[test]
    fn leaves_when_every_kept_connection_died() {
        let dir = tempfile::tempdir().unwrap();
        let (k, server) = started(dir.path());
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        k.keep(Path::new("/x"), a.as_fd()).unwrap();
        drop((a, b));
        // The peer's end is closed: the kept socket reports a hang-up.
        server.join().unwrap().unwrap();
    }
}

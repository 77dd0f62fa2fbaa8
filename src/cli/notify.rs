//! systemd's readiness protocol (`sd_notify`): one datagram of `KEY=VALUE`
//! lines to the unix socket `$NOTIFY_SOCKET` names, a path or, when it
//! starts with `@`, an abstract name. With no `$NOTIFY_SOCKET` (not run by
//! systemd, or not as `Type=notify`) there is nothing to tell.
//!
//! A few lines over std's `UnixDatagram` rather than a crate: the protocol
//! is one `sendto`, and std reaches abstract names too.

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Where `$NOTIFY_SOCKET` (given as `value`) says to send; None if unset.
fn address(value: Option<&std::ffi::OsStr>) -> io::Result<Option<SocketAddr>> {
    let Some(v) = value.filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    let bytes = v.as_encoded_bytes();
    match bytes.first() {
        Some(b'@') => SocketAddr::from_abstract_name(&bytes[1..]).map(Some),
        Some(b'/') => SocketAddr::from_pathname(v).map(Some),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "NOTIFY_SOCKET is neither an absolute path nor an abstract name (@...)",
        )),
    }
}

/// Sends `state` (e.g. `READY=1`) to `$NOTIFY_SOCKET`; Ok(false) if it is
/// not set.
pub fn notify(state: &str) -> io::Result<bool> {
    let Some(addr) = address(std::env::var_os("NOTIFY_SOCKET").as_deref())? else {
        return Ok(false);
    };
    let sock = UnixDatagram::unbound()?;
    sock.send_to_addr(state.as_bytes(), &addr)?;
    Ok(true)
}

/// Tells systemd `state`; a failure is logged, never fatal (the daemon
/// serves all the same).
pub fn tell(state: &str) {
    match notify(state) {
        Ok(true) => tracing::debug!("told systemd {state}"),
        Ok(false) => {}
        Err(e) => tracing::warn!("cannot tell systemd {state} on NOTIFY_SOCKET: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn notify_socket_names_a_path_or_an_abstract_socket() {
        assert!(address(None).unwrap().is_none());
        assert!(address(Some(OsStr::new(""))).unwrap().is_none());
        let a = address(Some(OsStr::new("@lazycrypt/notify")))
            .unwrap()
            .unwrap();
        assert_eq!(a.as_abstract_name(), Some(&b"lazycrypt/notify"[..]));
        let p = address(Some(OsStr::new("/run/systemd/notify")))
            .unwrap()
            .unwrap();
        assert_eq!(
            p.as_pathname(),
            Some(std::path::Path::new("/run/systemd/notify"))
        );
        let e = address(Some(OsStr::new("run/notify"))).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn a_datagram_reaches_an_abstract_socket() {
        let name = format!("lazycrypt-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let rx = UnixDatagram::bind_addr(&addr).unwrap();
        let to = address(Some(OsStr::new(&format!("@{name}"))))
            .unwrap()
            .unwrap();
        UnixDatagram::unbound()
            .unwrap()
            .send_to_addr(b"READY=1", &to)
            .unwrap();
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }
}

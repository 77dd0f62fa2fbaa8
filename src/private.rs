//! What lazycrypt keeps on a node is its owner's (root's) alone: state
//! directories, cache files and sockets are made with explicit modes, never
//! from the umask, and ones an older version left wider are tightened.
//! Layer mounts need `allow_other` (containers run as other uids), so the
//! path to them is the only barrier a local user meets.

use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Directories only their owner may enter.
pub const DIR: u32 = 0o700;
/// Files only their owner may read or write.
pub const FILE: u32 = 0o600;

/// Makes `dir` (and any missing parent, 0700 too) a directory only its
/// owner reaches; an existing one is tightened to 0700.
pub fn dir(dir: &Path) -> io::Result<()> {
    dir_mode(dir, DIR)
}

/// Makes `dir` (and missing parents) 0700 if it is missing; an existing
/// one, which the operator named and may share, is left as it is.
pub fn ensure_dir(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    dir_mode(dir, DIR)
}

/// Makes `dir` (missing parents 0700) with exactly `mode`, whatever the
/// umask; an existing one gets `mode`.
pub fn dir_mode(dir: &Path, mode: u32) -> io::Result<()> {
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        DirBuilder::new()
            .recursive(true)
            .mode(DIR)
            .create(parent)
            .map_err(|e| at(parent, e))?;
    }
    match DirBuilder::new().mode(mode).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => {}
        Err(e) => return Err(at(dir, e)),
    }
    set_mode(dir, mode)
}

/// Makes the new directory `dir` (its parent must exist) with exactly `mode`.
pub fn new_dir(dir: &Path, mode: u32) -> io::Result<()> {
    DirBuilder::new()
        .mode(mode)
        .create(dir)
        .map_err(|e| at(dir, e))?;
    set_mode(dir, mode)
}

/// Opens `path` with `opts`; a file it creates is 0600 from the start, and
/// an existing one is tightened to 0600.
pub fn open(path: &Path, opts: &mut OpenOptions) -> io::Result<File> {
    let f = opts.mode(FILE).open(path).map_err(|e| at(path, e))?;
    f.set_permissions(Permissions::from_mode(FILE))
        .map_err(|e| at(path, e))?;
    Ok(f)
}

/// Sets `path`'s permission bits to exactly `mode` (a no-op when they are).
pub fn set_mode(path: &Path, mode: u32) -> io::Result<()> {
    let now = fs::symlink_metadata(path).map_err(|e| at(path, e))?;
    if now.permissions().mode() & 0o7777 != mode {
        fs::set_permissions(path, Permissions::from_mode(mode)).map_err(|e| at(path, e))?;
    }
    Ok(())
}

/// Binds a unix socket at `path` that only its owner can connect to. The
/// socket is bound inside a private directory beside `path`, made 0600 and
/// only then moved to `path`, so it never exists there with a wider mode.
/// `path` must not exist (remove a stale socket first): two daemons racing
/// for one name cannot both win.
pub fn bind_socket<T>(path: &Path, bind: impl FnOnce(&Path) -> io::Result<T>) -> io::Result<T> {
    let parent = match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(p) => p.to_path_buf(),
        None => PathBuf::from("."),
    };
    if !parent.exists() {
        dir(&parent)?;
    }
    // Not guessable: a local user who may write to the parent cannot take
    // the name first.
    let staging = parent.join(format!(
        ".lazycrypt-bind-{}-{:016x}",
        std::process::id(),
        rand::random::<u64>()
    ));
    let _ = fs::remove_dir_all(&staging);
    new_dir(&staging, DIR)?;
    let inner = staging.join("s");
    let bound = (|| {
        let t = bind(&inner).map_err(|e| at(path, e))?;
        set_mode(&inner, FILE)?;
        rename_noreplace(&inner, path).map_err(|e| at(path, e))?;
        Ok(t)
    })();
    let _ = fs::remove_dir_all(&staging);
    bound
}

fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
    };
    let (f, t) = (c(from)?, c(to)?);
    // SAFETY: both are NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            f.as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn at(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn mode(p: &Path) -> u32 {
        fs::symlink_metadata(p).unwrap().mode() & 0o7777
    }

    /// Modes hold whatever the umask, and wide old modes are tightened.
    #[test]
    fn modes_are_explicit_and_tightened() {
        let d = tempfile::tempdir().unwrap();
        // SAFETY: umask only changes this process's creation mask; the test
        // restores it.
        let old = unsafe { libc::umask(0) };
        let r = (|| -> io::Result<()> {
            let root = d.path().join("a/b/root");
            dir(&root)?;
            assert_eq!(mode(&root), 0o700);
            assert_eq!(mode(&d.path().join("a/b")), 0o700);
            fs::set_permissions(&root, Permissions::from_mode(0o755))?;
            dir(&root)?;
            assert_eq!(mode(&root), 0o700);
            dir_mode(&root.join("fs"), 0o755)?;
            assert_eq!(mode(&root.join("fs")), 0o755);
            let f = root.join("f");
            fs::write(&f, b"")?;
            fs::set_permissions(&f, Permissions::from_mode(0o644))?;
            open(&f, OpenOptions::new().read(true))?;
            assert_eq!(mode(&f), 0o600);
            open(&root.join("g"), OpenOptions::new().write(true).create(true))?;
            assert_eq!(mode(&root.join("g")), 0o600);
            let sock = root.join("s.sock");
            let l = bind_socket(&sock, |p| std::os::unix::net::UnixListener::bind(p))?;
            assert_eq!(mode(&sock), 0o600);
            std::os::unix::net::UnixStream::connect(&sock)?;
            drop(l);
            // The name is taken: a second daemon does not replace it.
            let e = bind_socket(&sock, |p| std::os::unix::net::UnixListener::bind(p)).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::AlreadyExists, "{e}");
            assert_eq!(
                fs::read_dir(&root)?.count(),
                4,
                "staging directory left behind"
            );
            Ok(())
        })();
        // SAFETY: as above.
        unsafe { libc::umask(old) };
        r.unwrap();
    }
}

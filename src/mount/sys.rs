//! The few mount system calls lazycrypt makes: overlay, tmpfs, unmount, and
//! the FUSE device's read-ahead.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

fn cstr(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

fn mount(fstype: &str, target: &Path, flags: libc::c_ulong, data: &str) -> io::Result<()> {
    let (src, fs) = (CString::new(fstype)?, CString::new(fstype)?);
    let (t, d) = (cstr(target)?, CString::new(data)?);
    // SAFETY: every pointer is a NUL-terminated string that outlives the call.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            t.as_ptr(),
            fs.as_ptr(),
            flags,
            d.as_ptr().cast(),
        )
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("mounting {fstype} at {}: {e}", target.display()),
        ));
    }
    Ok(())
}

/// The writable part of an overlay.
pub struct Upper {
    pub upper: PathBuf,
    pub work: PathBuf,
}

/// Mounts an overlay of `lowers` (topmost first) at `target`, with extra
/// mount `flags` (`MS_NOSUID`, `MS_NODEV`).
pub fn overlay(
    lowers: &[PathBuf],
    upper: Option<&Upper>,
    target: &Path,
    mut flags: libc::c_ulong,
) -> io::Result<()> {
    let mut data = String::from("lowerdir=");
    for (i, l) in lowers.iter().enumerate() {
        let s = l.to_str().ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "runtime path is not UTF-8")
        })?;
        if s.contains([',', ':']) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("runtime path {s} contains ',' or ':'"),
            ));
        }
        if i > 0 {
            data.push(':');
        }
        data.push_str(s);
    }
    match upper {
        Some(u) => data.push_str(&format!(
            ",upperdir={},workdir={}",
            u.upper.display(),
            u.work.display()
        )),
        None => flags |= libc::MS_RDONLY,
    }
    mount("overlay", target, flags, &data)
}

/// Mounts a private tmpfs at `target`.
pub fn tmpfs(target: &Path) -> io::Result<()> {
    tmpfs_sized(target, None)
}

/// A private tmpfs at `target`, limited to `size` bytes when given.
pub fn tmpfs_sized(target: &Path, size: Option<u64>) -> io::Result<()> {
    let opts = match size {
        Some(n) => format!("mode=0700,size={n}"),
        None => "mode=0700".to_string(),
    };
    mount("tmpfs", target, libc::MS_NODEV, &opts)
}

/// The kernel's mount table: (mount point, options) per mount. Unlike
/// `stat`, it also lists FUSE mounts whose server died.
fn mount_table() -> Vec<(std::path::PathBuf, String)> {
    let table = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    table
        .lines()
        .filter_map(|l| {
            let mut f = l.split(' ');
            let point = f.nth(1)?;
            let opts = f.nth(1)?;
            Some((
                std::path::PathBuf::from(unescape_mount_path(point)),
                unescape_mount_path(opts),
            ))
        })
        .collect()
}

/// Whether the topmost mount at `target` is one of our FUSE layers (by the
/// source name we mount them with).
pub fn is_layer_mount(target: &Path) -> bool {
    let table = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    table
        .lines()
        .filter_map(|l| {
            let mut f = l.split(' ');
            let source = f.next()?;
            let point = unescape_mount_path(f.next()?);
            let kind = f.next()?;
            (Path::new(&point) == target).then(|| source == "lazycrypt" && kind.starts_with("fuse"))
        })
        .next_back()
        .unwrap_or(false)
}

/// Mount points at or below `dir`, deepest first.
pub fn mounts_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out: Vec<std::path::PathBuf> = mount_table()
        .into_iter()
        .map(|(p, _)| p)
        .filter(|p| p.starts_with(dir))
        .collect();
    out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    out.dedup();
    out
}

/// Unmounts (or detaches, when busy) everything mounted at or below `dir`,
/// deepest first, dead FUSE mounts included; returns the first failure.
pub fn unmount_under(dir: &Path) -> io::Result<()> {
    let mut first = None;
    for m in mounts_under(dir) {
        if let Err(e) = unmount(&m) {
            first.get_or_insert(e);
        }
    }
    first.map_or(Ok(()), Err)
}

/// Whether `dir` is a lower layer of a mounted overlay (a container's
/// rootfs). Such a mount is in use even though unmounting it succeeds:
/// overlayfs holds a private copy, so the FUSE connection lives on, and
/// must stay served (or handed to the next daemon), not dropped.
pub fn lower_of_an_overlay(dir: &Path) -> bool {
    mount_table()
        .iter()
        .any(|(_, opts)| names_as_lower(opts, dir))
}

/// Whether mount options `opts` name `dir` among an overlay's lower (or
/// data-only) layers. containerd gives them relative to their common
/// parent when the absolute list is too long; that parent is the
/// snapshotter's `snapshots` directory, which the (absolute) upper
/// directory `snapshots/<id>/fs` also lies in. A relative one is taken from
/// there, so another snapshotter's `12/fs` is not ours.
fn names_as_lower(opts: &str, dir: &Path) -> bool {
    let pairs = || opts.split(',').filter_map(|o| o.split_once('='));
    let base = pairs()
        .find(|(k, _)| *k == "upperdir")
        .and_then(|(_, u)| Path::new(u).parent()?.parent().map(Path::to_path_buf));
    pairs()
        .filter(|(k, _)| k.starts_with("lowerdir") || k.starts_with("datadir"))
        .flat_map(|(_, v)| v.split(':'))
        .filter(|l| !l.is_empty())
        .any(|l| {
            let l = Path::new(l);
            if l.is_absolute() {
                l == dir
            } else {
                base.as_ref().is_some_and(|b| b.join(l) == dir)
            }
        })
}

/// Whether something is mounted at `target` with `needle` in its options
/// (an overlay whose layers live under a given directory).
pub fn mounted_with(target: &Path, needle: &str) -> bool {
    mount_table()
        .iter()
        .any(|(p, o)| p == target && o.contains(needle))
}

/// /proc/self/mounts writes space, tab, newline and backslash as octal escapes.
fn unescape_mount_path(p: &str) -> String {
    let b = p.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && let Ok(v) = u8::from_str_radix(&p[i + 1..i + 4], 8)
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Unmounts `target` unless it is in use.
pub fn unmount_idle(target: &Path) -> io::Result<()> {
    let t = cstr(target)?;
    // SAFETY: `t` is a NUL-terminated path.
    if unsafe { libc::umount2(t.as_ptr(), 0) } == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    Err(io::Error::new(
        e.kind(),
        format!("unmounting {}: {e}", target.display()),
    ))
}

/// Unmounts `target`; a busy mount is detached instead, so it goes away once
/// its last user does.
pub fn unmount(target: &Path) -> io::Result<()> {
    let t = cstr(target)?;
    // SAFETY: `t` is a NUL-terminated path.
    if unsafe { libc::umount2(t.as_ptr(), 0) } == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EBUSY) {
        // SAFETY: as above.
        if unsafe { libc::umount2(t.as_ptr(), libc::MNT_DETACH) } == 0 {
            return Ok(());
        }
    }
    Err(io::Error::new(
        e.kind(),
        format!("unmounting {}: {e}", target.display()),
    ))
}

/// Sets the kernel's read-ahead for the FUSE mount at `target` (the
/// default, 128 KiB, halves sequential throughput).
pub fn set_read_ahead(target: &Path, kib: u32) -> io::Result<()> {
    let dev = std::fs::metadata(target)?.dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    std::fs::write(
        format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb"),
        kib.to_string(),
    )
}

/// Whether `target` is a mount point (its device differs from its parent's).
pub fn is_mount_point(target: &Path) -> bool {
    let (Ok(a), Some(Ok(b))) = (
        std::fs::metadata(target),
        target.parent().map(std::fs::metadata),
    ) else {
        return false;
    };
    a.dev() != b.dev() || a.ino() == b.ino()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_overlays_lower_layers_are_found_absolute_or_relative() {
        let dir = Path::new("/var/lib/lazycrypt/snapshots/12/fs");
        let abs =
            "rw,relatime,lowerdir=/var/lib/lazycrypt/snapshots/12/fs:/x/fs,upperdir=/u,workdir=/w";
        assert!(names_as_lower(abs, dir));
        let relative = "rw,lowerdir=3/fs:12/fs,upperdir=/var/lib/lazycrypt/snapshots/13/fs";
        assert!(names_as_lower(relative, dir));
        let theirs = "rw,lowerdir=3/fs:12/fs,upperdir=/var/lib/containerd/o/snapshots/13/fs";
        assert!(!names_as_lower(theirs, dir), "another snapshotter's 12/fs");
        assert!(!names_as_lower("ro,lowerdir=3/fs:12/fs", dir));
        assert!(names_as_lower(
            "ro,lowerdir+=/a,lowerdir+=/var/lib/lazycrypt/snapshots/12/fs",
            dir
        ));
        assert!(!names_as_lower(
            "rw,lowerdir=/var/lib/lazycrypt/snapshots/2/fs,upperdir=/var/lib/lazycrypt/snapshots/12/fs",
            dir
        ));
        assert!(!names_as_lower(
            "rw,lowerdir=/var/lib/lazycrypt/snapshots/12/fs2",
            dir
        ));
    }
}

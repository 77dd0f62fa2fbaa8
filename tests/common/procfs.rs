//! What a process holds, read from /proc: open files, threads, memory, the
//! mounts under a directory and the disk its files take. For tests that
//! check a daemon gives back what it took.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// How many files process `pid` has open.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// A `Name:  N` field of `/proc/PID/status` (kB for the `Vm*` ones); 0 if
/// the process is gone.
pub fn status_field(pid: u32, name: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Mounts at or below `dir` in this mount namespace: (lazycrypt FUSE
/// mounts, every other kind).
pub fn mounts_under(dir: &Path) -> (usize, usize) {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut counts = (0, 0);
    for line in info.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let point = left.split(' ').nth(4).unwrap_or_default();
        if !Path::new(point).starts_with(dir) {
            continue;
        }
        let mut r = right.split(' ');
        let (kind, source) = (r.next().unwrap_or_default(), r.next().unwrap_or_default());
        if kind.starts_with("fuse") && source == "lazycrypt" {
            counts.0 += 1;
        } else {
            counts.1 += 1;
        }
    }
    counts
}

/// Disk blocks (in bytes) of the regular files under `dir`, not entering
/// mounts (a live layer mount would count its plaintext view).
pub fn disk_bytes_under(dir: &Path) -> u64 {
    let Ok(top) = std::fs::symlink_metadata(dir) else {
        return 0;
    };
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() && m.dev() == top.dev() {
                stack.push(e.path());
            } else if m.is_file() {
                total += m.blocks() * 512;
            }
        }
    }
    total
}

/// Disk blocks (in bytes) of the files process `pid` holds open whose path
/// lies under `dir`, named or not (`O_TMPFILE` and unlinked files show as
/// `DIR/#INODE (deleted)`): scratch files no directory walk finds.
pub fn open_file_bytes_under(pid: u32, dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    rd.flatten()
        .filter(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| t.starts_with(dir)))
        .filter_map(|fd| std::fs::metadata(fd.path()).ok())
        .filter(|m| m.is_file())
        .map(|m| m.blocks() * 512)
        .sum()
}

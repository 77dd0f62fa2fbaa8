//! The demo's at-rest check: every file under a directory, name and bytes,
//! searched for samples of the image's plaintext.

use std::io;
use std::path::{Path, PathBuf};

use crate::mount::sys;

/// What a scan looked at and where it found a sample.
#[derive(Debug, Default)]
pub struct Scan {
    pub files: usize,
    pub bytes: u64,
    pub hits: Vec<PathBuf>,
}

/// Scans `roots` (files, or directories walked whole), never crossing
/// into a mount (a live mount is the plaintext view, not the disk). A file
/// it cannot read is an error: an unread file is an unchecked one.
pub fn scan(roots: &[PathBuf], needles: &[Vec<u8>]) -> io::Result<Scan> {
    let mut s = Scan::default();
    let mut stack = roots.to_vec();
    while let Some(p) = stack.pop() {
        let at = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", p.display()));
        let m = std::fs::symlink_metadata(&p).map_err(at)?;
        let name = p.file_name().unwrap_or_default().as_encoded_bytes();
        if needles.iter().any(|n| contains(name, n)) {
            s.hits.push(p.clone());
        }
        if m.is_dir() {
            if !sys::is_mount_point(&p) {
                for e in std::fs::read_dir(&p).map_err(at)? {
                    stack.push(e.map_err(at)?.path());
                }
            }
        } else if m.is_file() {
            s.file(&p, &std::fs::read(&p).map_err(at)?, needles);
        }
    }
    Ok(s)
}

/// Scans the regular files this process holds open: one unlinked after
/// opening has no path a walk would find. Standard input, output and error
/// are left out: the demo's own output names the marker.
pub fn scan_open_files(needles: &[Vec<u8>]) -> io::Result<Scan> {
    let mut s = Scan::default();
    for fd in std::fs::read_dir("/proc/self/fd")? {
        let fd = fd?.path();
        if fd
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse::<u32>().ok())
            .is_none_or(|n| n <= 2)
        {
            continue;
        }
        // Gone since listed (the listing's own descriptor), or not a file
        // at rest (pipes, sockets, /dev/fuse).
        if !std::fs::metadata(&fd).is_ok_and(|m| m.is_file()) {
            continue;
        }
        let target = std::fs::read_link(&fd).unwrap_or_else(|_| fd.clone());
        match std::fs::read(&fd) {
            Ok(data) => s.file(&target, &data, needles),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("{}: {e}", target.display()),
                ));
            }
        }
    }
    Ok(s)
}

impl Scan {
    fn file(&mut self, p: &Path, data: &[u8], needles: &[Vec<u8>]) {
        self.files += 1;
        self.bytes += data.len() as u64;
        if needles.iter().any(|n| contains(data, n)) && !self.hits.iter().any(|h| h == p) {
            self.hits.push(p.to_path_buf());
        }
    }
}

/// Whether `needle` occurs in `hay`; an empty needle is in everything.
fn contains(hay: &[u8], needle: &[u8]) -> bool {
    memchr::memmem::find(hay, needle).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contains_finds_a_needle_anywhere_and_an_empty_one_everywhere() {
        assert!(contains(b"abcneedle", b"needle"));
        assert!(contains(b"needle", b"needle"));
        assert!(!contains(b"needl", b"needle"));
        assert!(!contains(b"nneedlx", b"needle"));
        assert!(contains(b"", b""));
    }

    #[test]
    fn finds_a_sample_in_names_and_bytes_under_the_paths_given_only() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        std::fs::create_dir_all(d.join("a/b")).unwrap();
        std::fs::create_dir_all(d.join("skip")).unwrap();
        std::fs::write(d.join("a/b/f"), b"xx needle yy").unwrap();
        std::fs::write(d.join("a/needle-name"), b"nothing").unwrap();
        std::fs::write(d.join("a/clean"), b"needl eneedl").unwrap();
        std::fs::write(d.join("skip/f"), b"needle").unwrap();
        let s = scan(&[d.join("a")], &[b"needle".to_vec()]).unwrap();
        let mut hits = s.hits.clone();
        hits.sort();
        assert_eq!(hits, vec![d.join("a/b/f"), d.join("a/needle-name")]);
        assert_eq!(s.files, 3);
    }
}

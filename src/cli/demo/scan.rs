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

/// Scans every file under `root` except those under `skip`, never crossing
/// into a mount (a live mount is the plaintext view, not the disk). A file
/// it cannot read is an error: an unread file is an unchecked one.
pub fn scan(root: &Path, skip: &[PathBuf], needles: &[Vec<u8>]) -> io::Result<Scan> {
    let mut s = Scan::default();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let at = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", d.display()));
        for e in std::fs::read_dir(&d).map_err(at)? {
            let p = e.map_err(at)?.path();
            if skip.contains(&p) {
                continue;
            }
            let m = std::fs::symlink_metadata(&p).map_err(at)?;
            let name = p.file_name().unwrap_or_default().as_encoded_bytes();
            if needles.iter().any(|n| contains(name, n)) {
                s.hits.push(p.clone());
            }
            if m.is_dir() {
                if !sys::is_mount_point(&p) {
                    stack.push(p);
                }
            } else if m.is_file() {
                let data = std::fs::read(&p)
                    .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", p.display())))?;
                s.files += 1;
                s.bytes += data.len() as u64;
                if needles.iter().any(|n| contains(&data, n)) && !s.hits.contains(&p) {
                    s.hits.push(p);
                }
            }
        }
    }
    Ok(s)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    let Some((&first, rest)) = needle.split_first() else {
        return true;
    };
    let mut at = 0;
    while let Some(i) = hay[at..].iter().position(|&b| b == first) {
        let start = at + i + 1;
        if hay.get(start..start + rest.len()) == Some(rest) {
            return true;
        }
        at = start;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_sample_in_names_and_bytes_but_not_under_skipped_paths() {
        let d = std::env::temp_dir().join(format!("lazycrypt-scan-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("a/b")).unwrap();
        std::fs::create_dir_all(d.join("skip")).unwrap();
        std::fs::write(d.join("a/b/f"), b"xx needle yy").unwrap();
        std::fs::write(d.join("a/needle-name"), b"nothing").unwrap();
        std::fs::write(d.join("a/clean"), b"needl eneedl").unwrap();
        std::fs::write(d.join("skip/f"), b"needle").unwrap();
        let s = scan(&d, &[d.join("skip")], &[b"needle".to_vec()]).unwrap();
        let mut hits = s.hits.clone();
        hits.sort();
        assert_eq!(hits, vec![d.join("a/b/f"), d.join("a/needle-name")]);
        assert_eq!(s.files, 3);
        std::fs::remove_dir_all(&d).unwrap();
    }
}

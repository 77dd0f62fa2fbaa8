//! Negative lookups answered before a container asks them. overlayfs looks
//! each name a container touches up in every lower layer that has the
//! directory, top down, until it finds a file (and in all of them for a
//! directory). On an image of many layers most of those lookups find
//! nothing, and each is a round trip to the daemon at the container's first
//! start: 500 of its 950 FUSE requests on the bench's 20-layer image. When
//! a layer is mounted on layers already mounted, the names one has and the
//! other lacks, in each directory both have, are looked up through the
//! mount that lacks them, in the background; the kernel keeps those
//! answers (negative entries, for the entry timeout) and overlayfs finds
//! them there.

use std::collections::{BTreeSet, HashMap};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::fs::tree::{Kind, ROOT, Tree};

/// Most bytes a layer's [`Names`] keep (its directories' paths and their
/// entries' names); directories past them, in breadth-first order, are not
/// warmed.
pub const MAX_NAME_BYTES: usize = 1 << 20;

/// Most lookups one mount warms, shallow directories first.
pub const MAX_LOOKUPS: usize = 16_384;

/// Most bytes of paths one mount's lookups take while they are listed.
pub const MAX_LOOKUP_BYTES: usize = 4 << 20;

/// What one name costs beyond its bytes (its `OsString`).
const NAME_OVERHEAD: usize = 24;

/// A layer's directories, breadth first, each with its entries' names in
/// order.
#[derive(Debug, Default)]
pub struct Names {
    dirs: Vec<(PathBuf, Vec<OsString>)>,
    at: HashMap<PathBuf, usize>,
}

impl Names {
    /// The names of `tree`'s directories, up to [`MAX_NAME_BYTES`].
    pub fn of(tree: &Tree) -> Names {
        let mut names = Names::default();
        let mut queue = std::collections::VecDeque::from([(PathBuf::new(), ROOT)]);
        let mut kept = 0;
        while let Some((path, ino)) = queue.pop_front() {
            let Some(Kind::Dir(d)) = tree.get(ino).map(|i| &i.kind) else {
                continue;
            };
            // The path is kept twice: in the list and as the map's key.
            let cost = 2 * (path.as_os_str().len() + NAME_OVERHEAD)
                + d.from(0)
                    .iter()
                    .map(|(n, _)| n.len() + NAME_OVERHEAD)
                    .sum::<usize>();
            if kept + cost > MAX_NAME_BYTES {
                break;
            }
            kept += cost;
            let mut kids = Vec::with_capacity(d.len());
            for (name, child) in d.from(0) {
                if matches!(tree.get(*child).map(|i| &i.kind), Some(Kind::Dir(_))) {
                    queue.push_back((path.join(name), *child));
                }
                kids.push(name.clone());
            }
            names.at.insert(path.clone(), names.dirs.len());
            names.dirs.push((path, kids));
        }
        names
    }

    fn dir(&self, path: &Path) -> Option<&[OsString]> {
        self.at.get(path).map(|&i| self.dirs[i].1.as_slice())
    }
}

/// Where a container's runtime mounts or binds something (runc's and
/// containerd's defaults, and the files the CRI binds): overlayfs looks
/// these up in every layer, and most images have none of them.
pub const RUNTIME_PATHS: [&str; 12] = [
    "proc",
    "dev",
    "dev/pts",
    "dev/shm",
    "dev/mqueue",
    "sys",
    "sys/fs/cgroup",
    "run",
    "tmp",
    "etc/hostname",
    "etc/hosts",
    "etc/resolv.conf",
];

/// What to look up so that overlayfs over `top` and `lowers` finds its
/// negative answers cached: `(0, path)` through `top`'s mount, `(i + 1,
/// path)` through `lowers[i]`'s. At most `max`, shallow directories first.
/// The [`RUNTIME_PATHS`] come first, through `top`'s mount (each layer is
/// once the top of the layers below it).
pub fn lookups(top: &Names, lowers: &[&Names], max: usize) -> Vec<(usize, PathBuf)> {
    let mut out: Vec<(usize, PathBuf)> = Vec::new();
    for p in RUNTIME_PATHS {
        if let Some(missing) = first_missing(top, Path::new(p))
            && !out.iter().any(|(_, q)| *q == missing)
        {
            out.push((0, missing));
        }
    }
    // Bounded as it grows, not once built: a chain of many layers, each
    // with a large directory the others lack, must not list them all first.
    let mut bytes: usize = out.iter().map(|(_, p)| p.as_os_str().len()).sum();
    let full = |n: usize, bytes: usize| n >= max || bytes >= MAX_LOOKUP_BYTES;
    for (dir, ours) in &top.dirs {
        let cost = |n: &OsString| dir.as_os_str().len() + 1 + n.len();
        let mut missing_here: BTreeSet<&OsString> = BTreeSet::new();
        let mut missing_bytes = 0;
        for (i, lower) in lowers.iter().enumerate() {
            let Some(theirs) = lower.dir(dir) else {
                continue;
            };
            let (only_ours, only_theirs) = apart(ours, theirs);
            for n in only_ours {
                if full(out.len() + missing_here.len(), bytes + missing_bytes) {
                    break;
                }
                bytes += cost(n);
                out.push((i + 1, dir.join(n)));
            }
            for n in only_theirs {
                if full(out.len() + missing_here.len(), bytes + missing_bytes) {
                    break;
                }
                if missing_here.insert(n) {
                    missing_bytes += cost(n);
                }
            }
        }
        bytes += missing_bytes;
        out.extend(missing_here.into_iter().map(|n| (0, dir.join(n))));
        if full(out.len(), bytes) {
            break;
        }
    }
    out
}

/// The first component of `path` that `names` lacks, with the directories
/// before it; `None` if it has them all, or if one on the way is not a
/// directory (a symlink there could lead out of the mount).
fn first_missing(names: &Names, path: &Path) -> Option<PathBuf> {
    let mut at = PathBuf::new();
    for c in path.iter() {
        let kids = names.dir(&at)?;
        let next = at.join(c);
        if kids.binary_search_by(|k| k.as_os_str().cmp(c)).is_err() {
            return Some(next);
        }
        at = next;
    }
    None
}

/// The names only in `a`, and those only in `b`; both sorted.
fn apart<'a>(a: &'a [OsString], b: &'a [OsString]) -> (Vec<&'a OsString>, Vec<&'a OsString>) {
    let (mut only_a, mut only_b) = (Vec::new(), Vec::new());
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        match (a.get(i), b.get(j)) {
            (Some(x), Some(y)) if x == y => (i, j) = (i + 1, j + 1),
            (Some(x), Some(y)) if x < y => {
                only_a.push(x);
                i += 1;
            }
            (Some(_), Some(y)) | (None, Some(y)) => {
                only_b.push(y);
                j += 1;
            }
            (Some(x), None) => {
                only_a.push(x);
                i += 1;
            }
            (None, None) => break,
        }
    }
    (only_a, only_b)
}

/// Looks `lookups` up through `mounts` (the top layer's first); returns how
/// many were looked up. Each answer is the kernel's to keep; what it says
/// does not matter here.
pub fn warm(mounts: &[PathBuf], lookups: &[(usize, PathBuf)]) -> usize {
    use std::path::Component;
    let mut n = 0;
    for (i, path) in lookups {
        // Names come from a layer's tree, cleaned of `..` and roots; this
        // holds whatever built them.
        if !path.components().all(|c| matches!(c, Component::Normal(_))) {
            continue;
        }
        if let Some(m) = mounts.get(*i) {
            let _ = std::fs::symlink_metadata(m.join(path));
            n += 1;
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dirs: &[(&str, &[&str])]) -> Names {
        let mut n = Names::default();
        for (d, kids) in dirs {
            let mut kids: Vec<OsString> = kids.iter().map(OsString::from).collect();
            kids.sort();
            n.at.insert(PathBuf::from(d), n.dirs.len());
            n.dirs.push((PathBuf::from(d), kids));
        }
        n
    }

    #[test]
    fn each_side_looks_up_what_only_the_other_has_in_a_directory_both_have() {
        let top = names(&[
            ("", &["app", "etc"]),
            ("etc", &["app.conf"]),
            ("app", &["run"]),
        ]);
        let l1 = names(&[
            ("", &["etc", "lib"]),
            ("etc", &["os-release"]),
            ("lib", &["x"]),
        ]);
        let l2 = names(&[("", &["bin", "lib"]), ("lib", &["y"])]);
        let got = lookups(&top, &[&l1, &l2], 100);
        // What the layer lacks of the runtime's paths: `dev` stands for
        // those under it.
        let runtime: Vec<_> = [
            "proc",
            "dev",
            "sys",
            "run",
            "tmp",
            "etc/hostname",
            "etc/hosts",
            "etc/resolv.conf",
        ]
        .into_iter()
        .map(|p| (0, PathBuf::from(p)))
        .collect();
        let (got_runtime, got) = got.split_at(runtime.len());
        assert_eq!(got_runtime, runtime);
        let want: Vec<(usize, PathBuf)> = [
            (1, "app"),
            (2, "app"),
            (2, "etc"),
            (0, "bin"),
            (0, "lib"),
            (1, "etc/app.conf"),
            (0, "etc/os-release"),
        ]
        .into_iter()
        .map(|(i, p)| (i, PathBuf::from(p)))
        .collect();
        assert_eq!(got, want);
        assert_eq!(lookups(&top, &[&l1, &l2], 11).len(), 11, "bounded");
        assert_eq!(lookups(&top, &[], 100).len(), 8);
    }

    #[test]
    fn many_layers_lacking_a_large_directory_list_no_more_than_the_bound() {
        let kids: Vec<String> = (0..5000).map(|i| format!("n{i:05}")).collect();
        let kids: Vec<&str> = kids.iter().map(String::as_str).collect();
        let big = names(&[("", &["d"]), ("d", &kids)]);
        let empty = names(&[("", &["d"]), ("d", &[])]);
        let lowers: Vec<&Names> = std::iter::repeat_n(&empty, 50).collect();
        assert_eq!(lookups(&big, &lowers, 1000).len(), 1000);
        // The other way round, each name is looked up once in the top.
        let got = lookups(&empty, &[&big, &big, &big], 100_000);
        assert_eq!(
            got.len(),
            6 + 5000,
            "proc, dev, sys, run, tmp and etc, then d/*"
        );
    }

    #[test]
    fn long_names_end_the_list_at_its_byte_bound() {
        let kids: Vec<String> = (0..5000)
            .map(|i| format!("{i:05}{}", "x".repeat(1000)))
            .collect();
        let kids: Vec<&str> = kids.iter().map(String::as_str).collect();
        let big = names(&[("", &["d"]), ("d", &kids)]);
        let empty = names(&[("", &["d"]), ("d", &[])]);
        let got = lookups(&big, &[&empty], 100_000);
        let bytes: usize = got.iter().map(|(_, p)| p.as_os_str().len()).sum();
        assert!(got.len() < 5000, "{} lookups", got.len());
        assert!(bytes <= MAX_LOOKUP_BYTES + 1100, "{bytes} bytes");
    }

    #[test]
    fn nothing_is_looked_up_outside_its_mount() {
        let d = tempfile::tempdir().unwrap();
        let mounts = [d.path().to_path_buf()];
        let bad = ["../x", "/etc/passwd", "a/../../x"].map(|p| (0, PathBuf::from(p)));
        assert_eq!(warm(&mounts, &bad), 0);
        assert_eq!(warm(&mounts, &[(0, PathBuf::from("a/b"))]), 1);
        assert_eq!(
            warm(&mounts, &[(1, PathBuf::from("a"))]),
            0,
            "no such mount"
        );
    }

    #[test]
    fn a_runtime_path_is_looked_up_up_to_what_the_layer_lacks() {
        let n = names(&[
            ("", &["dev", "etc", "run"]),
            ("dev", &["pts"]),
            ("etc", &[]),
        ]);
        let p = |s: &str| Some(PathBuf::from(s));
        assert_eq!(first_missing(&n, Path::new("proc")), p("proc"));
        assert_eq!(first_missing(&n, Path::new("dev/shm")), p("dev/shm"));
        assert_eq!(first_missing(&n, Path::new("etc/hosts")), p("etc/hosts"));
        // `run` is no directory here (a symlink, say): nothing through it.
        assert_eq!(first_missing(&n, Path::new("run/x")), None);
        assert_eq!(first_missing(&n, Path::new("dev/pts")), None, "present");
    }

    #[test]
    fn apart_splits_two_sorted_lists() {
        let s = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        let (a, b) = (s(&["a", "c", "d", "f"]), s(&["b", "c", "e", "f", "g"]));
        let (x, y) = apart(&a, &b);
        assert_eq!(x, [&a[0], &a[2]]);
        assert_eq!(y, [&b[0], &b[2], &b[4]]);
    }
}

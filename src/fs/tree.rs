//! The inode table of one layer, built from its entries the way a tar
//! extractor would (later entries replace earlier ones, missing parent
//! directories appear), with OCI whiteouts turned into what overlayfs reads
//! from a lower layer: `.wh.NAME` becomes a 0:0 character device `NAME`, and
//! `.wh..wh..opq` marks its directory `trusted.overlay.opaque=y`.
//!
//! Everything here comes from the image and is hostile:
//! - Names and hard-link targets are cleaned lexically (`.`, `..`, repeated
//!   and leading `/` go, as containerd's unpacker and the eStargz reader
//!   clean them), so no entry lands outside the layer root. A later entry
//!   with the same cleaned name replaces the earlier one, as tar extraction
//!   does; a directory over a directory only takes its metadata.
//! - Entries that cannot become a directory entry (a NUL in the name, a
//!   component longer than `NAME_MAX`, a whiteout of `.` or `..`, a hard link
//!   to nothing, a path through a file) are skipped with a warning that
//!   gives the entry's index and the layer, never the name: names are
//!   decrypted data.
//! - Of the image's xattrs only `user.*` and `security.capability` are
//!   served; see [`served_xattr`].

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

use crate::layer::index::Node;
use crate::layer::tarmeta::clean;

/// The root directory's inode number.
pub const ROOT: u64 = 1;

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";
/// The xattr overlayfs reads to treat a lower directory as opaque.
pub const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
/// Longest path Linux accepts (`PATH_MAX`): a longer name would also make
/// one directory inode per component, thousands for one entry.
const PATH_MAX: usize = 4096;
/// Longest name component Linux accepts (`NAME_MAX`).
const NAME_MAX: usize = 255;
/// Longest xattr name and value Linux accepts (`XATTR_NAME_MAX`, `XATTR_SIZE_MAX`).
const XATTR_NAME_MAX: usize = 255;
const XATTR_SIZE_MAX: usize = 64 << 10;

/// A directory's entries, sorted by name: looked up by binary search, and
/// listed from any position without walking the ones before it (`readdir`
/// resumes at an index).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dir(Vec<(OsString, u64)>);

impl Dir {
    /// The inode named `name`.
    pub fn get(&self, name: &OsStr) -> Option<u64> {
        self.0
            .binary_search_by(|(n, _)| n.as_os_str().cmp(name))
            .ok()
            .map(|i| self.0[i].1)
    }

    /// Entries from position `from` on.
    pub fn from(&self, from: usize) -> &[(OsString, u64)] {
        self.0.get(from..).unwrap_or_default()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Inode numbers of the entries.
    pub fn inodes(&self) -> impl Iterator<Item = u64> + '_ {
        self.0.iter().map(|(_, i)| *i)
    }
}

/// What an inode is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A directory; its entries are filled in when the tree is built.
    Dir(Dir),
    /// A regular file: the layer node holding its content.
    File(usize),
    Symlink(Vec<u8>),
    Char(u32),
    Block(u32),
    Fifo,
}

/// One inode.
#[derive(Debug, Clone)]
pub struct Inode {
    pub kind: Kind,
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub mtime: SystemTime,
    pub size: u64,
    pub nlink: u32,
    pub xattrs: BTreeMap<OsString, Vec<u8>>,
}

/// All inodes of a layer; inode `n` is `inodes[n - 1]`.
pub struct Tree {
    pub inodes: Vec<Inode>,
    /// Directory entries while building, by directory inode: a sorted map
    /// takes names in any order, then becomes each [`Dir`].
    building: HashMap<u64, BTreeMap<OsString, u64>>,
}

impl Tree {
    pub fn get(&self, ino: u64) -> Option<&Inode> {
        ino.checked_sub(1)
            .and_then(|i| self.inodes.get(usize::try_from(i).ok()?))
    }

    /// Builds the table; `layer` names the layer in warnings.
    pub fn build(nodes: &[Node], layer: &str) -> Tree {
        let mut t = Tree {
            inodes: vec![dir_inode(0o755, 0, 0, UNIX_EPOCH)],
            building: HashMap::new(),
        };
        for (i, n) in nodes.iter().enumerate() {
            if let Err(why) = t.place(i, n) {
                tracing::warn!("layer {layer}: entry {i} skipped: {why}");
            }
        }
        for (ino, kids) in std::mem::take(&mut t.building) {
            if let Kind::Dir(d) = &mut t.inode_mut(ino).kind {
                d.0 = kids.into_iter().collect();
            }
        }
        t.count_links();
        t
    }

    fn place(&mut self, i: usize, n: &Node) -> Result<(), &'static str> {
        let e = &n.entry;
        if e.name.contains('\0') || e.link_name.contains('\0') {
            return Err("name holds a NUL byte");
        }
        if e.name.len() > PATH_MAX {
            return Err("name longer than PATH_MAX");
        }
        let cleaned = clean(&e.name);
        let parts: Vec<&str> = cleaned.split('/').filter(|p| !p.is_empty()).collect();
        if parts.iter().any(|p| p.len() > NAME_MAX) {
            return Err("name component longer than NAME_MAX");
        }
        let Some((last, dirs)) = parts.split_last() else {
            // The root itself: take its metadata.
            if e.kind == "dir" {
                let root = &mut self.inodes[0];
                set_meta(root, e);
            }
            return Ok(());
        };
        let mut parent = ROOT;
        for d in dirs {
            parent = self.subdir(parent, OsStr::new(d))?;
        }
        if *last == OPAQUE {
            let p = self.inode_mut(parent);
            p.xattrs.insert(OPAQUE_XATTR.into(), b"y".to_vec());
            return Ok(());
        }
        let whiteout = last.strip_prefix(WHITEOUT_PREFIX);
        if whiteout.is_some_and(|h| matches!(h, "" | "." | "..")) {
            return Err("whiteout of no name, `.` or `..`");
        }
        let mut name = OsString::from(*last);
        let mut inode = match e.kind.as_str() {
            "dir" => dir_inode(0, 0, 0, UNIX_EPOCH),
            "reg" => plain(Kind::File(i)),
            "symlink" => plain(Kind::Symlink(e.link_name.as_bytes().to_vec())),
            "char" => plain(Kind::Char(dev(e.dev_major, e.dev_minor))),
            "block" => plain(Kind::Block(dev(e.dev_major, e.dev_minor))),
            "fifo" => plain(Kind::Fifo),
            "hardlink" => {
                let target = self
                    .resolve(&clean(&e.link_name))
                    .ok_or("hard link to a missing entry")?;
                if matches!(self.inode(target).kind, Kind::Dir(_)) {
                    return Err("hard link to a directory");
                }
                return self.link(parent, name, target);
            }
            _ => return Err("unknown entry type"),
        };
        set_meta(&mut inode, e);
        if let Some(hidden) = whiteout {
            // A whiteout: overlayfs hides `hidden` in the layers below.
            name = OsString::from(hidden);
            inode.kind = Kind::Char(0);
            inode.size = 0;
            inode.xattrs.clear();
        }
        if let Some(old) = self.child(parent, &name) {
            // A directory entry over a directory only updates its metadata;
            // its entries stay where they are kept while building.
            if let (Kind::Dir(_), "dir") = (&self.inode(old).kind, e.kind.as_str()) {
                let o = self.inode_mut(old);
                let opaque = o.xattrs.remove_entry(OsStr::new(OPAQUE_XATTR));
                *o = inode;
                o.xattrs.extend(opaque);
                return Ok(());
            }
        }
        let ino = self.push(inode);
        self.link(parent, name, ino)
    }

    fn link(&mut self, parent: u64, name: OsString, ino: u64) -> Result<(), &'static str> {
        match &self.inode(parent).kind {
            Kind::Dir(_) => {
                self.building.entry(parent).or_default().insert(name, ino);
                Ok(())
            }
            _ => Err("parent is not a directory"),
        }
    }

    /// The directory `name` under `parent`, made if missing.
    fn subdir(&mut self, parent: u64, name: &OsStr) -> Result<u64, &'static str> {
        if let Some(c) = self.child(parent, name) {
            return match self.inode(c).kind {
                Kind::Dir(_) => Ok(c),
                _ => Err("path goes through a non-directory"),
            };
        }
        let ino = self.push(dir_inode(0o755, 0, 0, UNIX_EPOCH));
        self.link(parent, name.to_os_string(), ino)?;
        Ok(ino)
    }

    fn resolve(&self, path: &str) -> Option<u64> {
        let mut at = ROOT;
        for p in path.split('/').filter(|p| !p.is_empty()) {
            at = self.child(at, OsStr::new(p))?;
        }
        Some(at)
    }

    fn child(&self, dir: u64, name: &OsStr) -> Option<u64> {
        match &self.inode(dir).kind {
            Kind::Dir(d) => match self.building.get(&dir) {
                Some(kids) => kids.get(name).copied(),
                None => d.get(name),
            },
            _ => None,
        }
    }

    fn push(&mut self, i: Inode) -> u64 {
        self.inodes.push(i);
        self.inodes.len() as u64
    }

    fn inode(&self, ino: u64) -> &Inode {
        &self.inodes[(ino - 1) as usize]
    }

    fn inode_mut(&mut self, ino: u64) -> &mut Inode {
        &mut self.inodes[(ino - 1) as usize]
    }

    /// Directories: 2 + subdirectories; others: how many names point at them.
    fn count_links(&mut self) {
        let mut links = vec![0u32; self.inodes.len()];
        links[0] = 1;
        for i in &self.inodes {
            if let Kind::Dir(kids) = &i.kind {
                for k in kids.inodes() {
                    links[(k - 1) as usize] += 1;
                }
            }
        }
        let subdirs: Vec<u32> = self
            .inodes
            .iter()
            .map(|i| match &i.kind {
                Kind::Dir(kids) => kids
                    .inodes()
                    .filter(|&k| matches!(self.inode(k).kind, Kind::Dir(_)))
                    .count() as u32,
                _ => 0,
            })
            .collect();
        for (n, i) in self.inodes.iter_mut().enumerate() {
            i.nlink = match i.kind {
                Kind::Dir(_) => 2 + subdirs[n],
                _ => links[n].max(1),
            };
        }
    }
}

fn dir_inode(perm: u16, uid: u32, gid: u32, mtime: SystemTime) -> Inode {
    Inode {
        kind: Kind::Dir(Dir::default()),
        perm,
        uid,
        gid,
        mtime,
        size: 0,
        nlink: 2,
        xattrs: BTreeMap::new(),
    }
}

fn plain(kind: Kind) -> Inode {
    Inode {
        kind,
        ..dir_inode(0, 0, 0, UNIX_EPOCH)
    }
}

fn set_meta(i: &mut Inode, e: &crate::layer::estargz::toc::TocEntry) {
    i.perm = (e.mode & 0o7777) as u16;
    i.uid = e.uid as u32;
    i.gid = e.gid as u32;
    i.mtime = parse_time(&e.mod_time);
    i.size = match &i.kind {
        Kind::File(_) => e.size,
        Kind::Symlink(t) => t.len() as u64,
        _ => 0,
    };
    // The opaque mark is ours (from `.wh..wh..opq`), not the image's.
    let opaque = i.xattrs.remove_entry(OsStr::new(OPAQUE_XATTR));
    i.xattrs = e
        .xattrs
        .iter()
        .filter_map(|(k, v)| Some((k, B64.decode(v).ok()?)))
        .filter(|(k, v)| served_xattr(k, v))
        .map(|(k, v)| (OsString::from(k), v))
        .collect();
    i.xattrs.extend(opaque);
}

/// Whether an xattr from the image is served. overlayfs reads
/// `trusted.overlay.*` (opaque, redirect, metacopy, origin, ...) from lower
/// layers and acts on it, and the kernel and LSMs act on other `trusted.*`
/// and `security.*` names (SELinux labels, IMA/EVM): those are the host's to
/// set, so they are dropped. `user.*` is kept (inert for the host, which
/// mounts overlayfs with `trusted.` xattrs). `security.capability` is kept:
/// file capabilities (`ping`) are ordinary image content that containerd's
/// unpacker preserves, and the container's bounding set still limits them.
/// `system.*` (ACLs) is dropped: FUSE without `posix_acl` never serves them.
/// Names and values Linux could not hold are dropped too.
pub fn served_xattr(name: &str, value: &[u8]) -> bool {
    let allowed =
        name == "security.capability" || name.strip_prefix("user.").is_some_and(|s| !s.is_empty());
    allowed && !name.contains('\0') && name.len() <= XATTR_NAME_MAX && value.len() <= XATTR_SIZE_MAX
}

/// Linux's `makedev` for the 32-bit rdev FUSE carries.
fn dev(major: u64, minor: u64) -> u32 {
    let (ma, mi) = (major as u32, minor as u32);
    ((ma & 0xfff) << 8) | (mi & 0xff) | ((mi & !0xff) << 12)
}

/// `2019-08-20T10:30:43Z` (fraction and zone tolerated) → a time; anything
/// unreadable is the epoch.
pub fn parse_time(s: &str) -> SystemTime {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        std::str::from_utf8(b.get(r)?).ok()?.parse().ok()
    };
    let parsed = (|| {
        let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
        let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
        // Days since the epoch (Howard Hinnant's days_from_civil).
        let y = if m <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let mp = (m + 9) % 12;
        let doy = (153 * mp + 2) / 5 + d - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = era * 146_097 + doe - 719_468;
        let mut secs = days * 86_400 + hh * 3600 + mm * 60 + ss;
        // A zone offset such as +02:00 after the seconds (and any fraction).
        let rest = &s[19..];
        let rest = rest.trim_start_matches(|c: char| c == '.' || c.is_ascii_digit());
        if let Some(sign) = rest.chars().next().filter(|c| *c == '+' || *c == '-') {
            let off = num(s.len() - 5..s.len() - 3)? * 3600 + num(s.len() - 2..s.len())? * 60;
            secs -= if sign == '+' { off } else { -off };
        }
        u64::try_from(secs).ok()
    })();
    parsed
        .map(|s| UNIX_EPOCH + Duration::from_secs(s))
        .unwrap_or(UNIX_EPOCH)
}

/// A name as bytes, for xattr lists.
pub fn name_bytes(n: &OsStr) -> &[u8] {
    n.as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::estargz::toc::rfc3339;
    use crate::layer::testing::node;

    /// A name past PATH_MAX would make a directory inode per component;
    /// it is skipped like any name that cannot be a path.
    #[test]
    fn a_name_longer_than_path_max_is_skipped() {
        let deep = "a/".repeat(2100) + "f";
        let t = Tree::build(&[node(&deep, "reg"), node("ok", "reg")], "L");
        assert_eq!(t.inodes.len(), 2, "the root and ok");
        assert!(t.resolve("ok").is_some() && t.resolve("a").is_none());
    }

    /// A directory declared again keeps its entries (they are no longer
    /// copied at each declaration), and lists sorted from any position.
    #[test]
    fn a_directory_declared_again_keeps_its_entries_in_order() {
        let mut nodes = vec![node("d", "dir")];
        for k in (0..50).rev() {
            nodes.push(node(&format!("d/f{k:02}"), "reg"));
            nodes.push(node("d", "dir"));
        }
        let t = Tree::build(&nodes, "L");
        let Kind::Dir(d) = &t.inode(t.resolve("d").unwrap()).kind else {
            panic!("d is a directory")
        };
        assert_eq!(d.len(), 50);
        assert_eq!(d.from(48)[0].0, "f48");
        assert!(d.from(50).is_empty() && d.from(usize::MAX).is_empty());
        assert_eq!(d.get(OsStr::new("f07")), t.resolve("d/f07"));
        assert_eq!(t.inode(t.resolve("d").unwrap()).nlink, 2);
    }

    #[test]
    fn whiteouts_links_and_replacements() {
        let mut link = node("b/hard", "hardlink");
        link.entry.link_name = "a/f".into();
        let mut dangling = node("b/bad", "hardlink");
        dangling.entry.link_name = "nowhere".into();
        let t = Tree::build(
            &[
                node("a/f", "reg"),
                node("a/.wh.gone", "reg"),
                node("a/.wh..wh..opq", "reg"),
                link,
                dangling,
                node("a/f/x", "reg"),
                node("c", "reg"),
                node("c", "symlink"),
            ],
            "L",
        );
        let a = t.resolve("a").unwrap();
        assert_eq!(t.inode(a).xattrs[OsStr::new(OPAQUE_XATTR)], b"y");
        let gone = t.resolve("a/gone").unwrap();
        assert_eq!(t.inode(gone).kind, Kind::Char(0));
        let (f, hard) = (t.resolve("a/f").unwrap(), t.resolve("b/hard").unwrap());
        assert_eq!(f, hard);
        assert_eq!(t.inode(f).nlink, 2);
        assert!(t.resolve("b/bad").is_none());
        assert!(t.resolve("a/f/x").is_none());
        assert!(matches!(
            t.inode(t.resolve("c").unwrap()).kind,
            Kind::Symlink(_)
        ));
        assert_eq!(t.inode(ROOT).nlink, 4);
    }

    /// Every name in every directory of `t`, as `dir/name` paths.
    fn all_names(t: &Tree) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![(ROOT, String::new())];
        while let Some((ino, path)) = stack.pop() {
            if let Kind::Dir(kids) = &t.inode(ino).kind {
                for (n, k) in kids.from(0).iter().cloned() {
                    let p = format!("{path}/{}", n.to_string_lossy());
                    out.push(p.clone());
                    stack.push((k, p));
                }
            }
        }
        out.sort();
        out
    }

    #[test]
    fn hostile_names_land_inside_the_layer_or_nowhere() {
        let mut link = node("h", "hardlink");
        link.entry.link_name = "../../a//./b".into();
        let mut nul_link = node("h2", "hardlink");
        nul_link.entry.link_name = "a/b\0x".into();
        let t = Tree::build(
            &[
                node("../escape", "reg"),
                node("/abs", "reg"),
                node("a/./b", "reg"),
                node("a//c", "reg"),
                node("./a/../../d/", "dir"),
                node("x\0y", "reg"),
                node(&"n".repeat(256), "reg"),
                node(".wh.", "reg"),
                node("a/.wh..", "reg"),
                node("a/.wh...", "reg"),
                node("..", "reg"),
                link,
                nul_link,
            ],
            "L",
        );
        assert_eq!(
            all_names(&t),
            ["/a", "/a/b", "/a/c", "/abs", "/d", "/escape", "/h"]
        );
        assert_eq!(t.resolve("h"), t.resolve("a/b"));
    }

    #[test]
    fn a_later_entry_with_the_same_cleaned_name_wins() {
        let mut s = node("./dup", "symlink");
        s.entry.link_name = "target".into();
        let mut d2 = node("/d/", "dir");
        d2.entry.mode = 0o700;
        let t = Tree::build(
            &[
                node("dup", "reg"),
                s,
                node("d", "dir"),
                node("d//f", "reg"),
                d2,
            ],
            "L",
        );
        assert_eq!(all_names(&t), ["/d", "/d/f", "/dup"]);
        let dup = t.inode(t.resolve("dup").unwrap());
        assert_eq!(dup.kind, Kind::Symlink(b"target".to_vec()));
        assert_eq!(t.inode(t.resolve("d").unwrap()).perm, 0o700);
    }

    #[test]
    fn only_user_and_capability_xattrs_of_the_image_are_served() {
        let xattrs = |n: &mut Node| {
            for k in [
                "trusted.overlay.opaque",
                "trusted.overlay.redirect",
                "trusted.overlay.metacopy",
                "trusted.overlay.origin",
                "trusted.other",
                "security.selinux",
                "security.ima",
                "security.capability",
                "system.posix_acl_access",
                "user.kept",
                "user.",
                "other.ns",
            ] {
                n.entry.xattrs.insert(k.into(), B64.encode(b"y"));
            }
            n.entry
                .xattrs
                .insert("user.big".into(), B64.encode(vec![0; 65537]));
        };
        let (mut f, mut d, mut root) = (node("f", "reg"), node("d", "dir"), node("./", "dir"));
        xattrs(&mut f);
        xattrs(&mut d);
        xattrs(&mut root);
        // `o` is made opaque by its whiteout, then its own entry comes again.
        let t = Tree::build(
            &[
                f,
                d,
                node("o", "dir"),
                node("o/.wh..wh..opq", "reg"),
                node("o", "dir"),
                node("./.wh..wh..opq", "reg"),
                root,
            ],
            "L",
        );
        let names = |ino: u64| -> Vec<String> {
            let mut v: Vec<_> = t
                .inode(ino)
                .xattrs
                .keys()
                .map(|k| k.to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        for p in ["f", "d"] {
            let ino = t.resolve(p).unwrap();
            assert_eq!(names(ino), ["security.capability", "user.kept"], "{p}");
        }
        let root_xattrs = names(ROOT);
        assert_eq!(
            root_xattrs,
            ["security.capability", OPAQUE_XATTR, "user.kept"]
        );
        let o = t.resolve("o").unwrap();
        assert_eq!(names(o), [OPAQUE_XATTR]);
    }

    #[test]
    fn times_round_trip() {
        let t = parse_time(&rfc3339(1_566_297_043));
        assert_eq!(t, UNIX_EPOCH + Duration::from_secs(1_566_297_043));
        assert_eq!(
            parse_time("2019-08-20T12:30:43.5+02:00"),
            UNIX_EPOCH + Duration::from_secs(1_566_297_043)
        );
        assert_eq!(parse_time("garbage"), UNIX_EPOCH);
    }
}

//! A read-only FUSE file system per layer. Callbacks run on fuser's session
//! threads and block on the chunk cache; no async runtime is involved.
//! Errors reaching the log name the layer and chunk, never a file.

pub mod ahead;
pub mod latency;
pub mod requests;
pub mod tree;

use std::ffi::OsStr;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyDirectoryPlus,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyXattr, Request,
};

use self::ahead::Runs;
use self::tree::{Inode, Kind, Tree};
use crate::cache::chunks::ChunkCache;
use crate::layer::index::{Layer, overlapping};

/// The layer never changes, so the kernel may cache everything for long.
const TTL: Duration = Duration::from_secs(3600);
/// Largest read the kernel is told to send, and its read-ahead.
pub const MAX_READ: u32 = 1 << 20;

/// Kernel read-ahead for a layer whose blob is all on this node: a few
/// requests in flight keep both cores busy on a sequential read.
pub const READ_AHEAD_KB: u32 = 4 * MAX_READ / 1024;

/// Kernel read-ahead for a layer still fetched from its registry, for the
/// files still read through the page cache (executables, and files all on
/// the node): each page read ahead may cost a chunk from the network, and a
/// reader that stops wastes it.
pub const LAZY_READ_AHEAD_KB: u32 = 128;

/// How much the kernel reads ahead on a layer mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadAhead {
    /// [`READ_AHEAD_KB`] for a layer whose blob is on this node, else
    /// [`LAZY_READ_AHEAD_KB`].
    Auto,
    /// This many KiB for every layer.
    Kib(u32),
}

impl ReadAhead {
    /// The read-ahead for `layer`, in KiB.
    pub fn for_layer(self, layer: &Layer) -> u32 {
        match self {
            ReadAhead::Kib(k) => k,
            ReadAhead::Auto if layer.is_local() => READ_AHEAD_KB,
            ReadAhead::Auto => LAZY_READ_AHEAD_KB,
        }
    }
}

/// How far behind the furthest read a request may start and still count as
/// part of a sequential pass.
const SEQUENTIAL_SLACK: u64 = 4 * MAX_READ as u64;

/// One mounted layer.
pub struct LayerFs {
    layer: Arc<Layer>,
    tree: Tree,
    cache: Arc<ChunkCache>,
    /// Each inode's reads so far, to spot sequential readers.
    runs: Vec<Runs>,
    /// Whether any entry has an xattr. Without any, the first getxattr
    /// answers ENOSYS and the kernel asks this mount no more: overlayfs
    /// asks each lower directory it passes whether it is opaque, and every
    /// exec asks for file capabilities, a round trip each.
    xattrs: bool,
    /// Whether every chunk is on this node: each open would answer the
    /// kernel's default (page cache kept), so the first answers ENOSYS and
    /// the kernel sends no more opens or releases.
    no_open: bool,
}

/// What a negative lookup says, cached by the kernel for [`TTL`]: a
/// layer's tree never changes, and overlayfs looks every name a container
/// touches up in each lower layer until it finds it.
fn absent() -> FileAttr {
    FileAttr {
        ino: INodeNo(0),
        size: 0,
        blocks: 0,
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind: FileType::RegularFile,
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 0,
        flags: 0,
    }
}

impl LayerFs {
    /// How many inodes the tree has (numbered from 1).
    pub fn inode_count(&self) -> u64 {
        self.tree.inodes.len() as u64
    }

    /// The tree served.
    pub fn tree(&self) -> &Tree {
        &self.tree
    }

    pub fn new(layer: Arc<Layer>, cache: Arc<ChunkCache>) -> Self {
        let tree = Tree::build(layer.nodes(), layer.what());
        let runs = (0..tree.inodes.len()).map(|_| Runs::default()).collect();
        let xattrs = tree.inodes.iter().any(|i| !i.xattrs.is_empty());
        let no_open = layer.is_local();
        LayerFs {
            layer,
            tree,
            cache,
            runs,
            xattrs,
            no_open,
        }
    }

    fn attr(&self, ino: u64, i: &Inode) -> FileAttr {
        let (kind, rdev) = match &i.kind {
            Kind::Dir(_) => (FileType::Directory, 0),
            Kind::File(_) => (FileType::RegularFile, 0),
            Kind::Symlink(_) => (FileType::Symlink, 0),
            Kind::Char(d) => (FileType::CharDevice, *d),
            Kind::Block(d) => (FileType::BlockDevice, *d),
            Kind::Fifo => (FileType::NamedPipe, 0),
        };
        FileAttr {
            ino: INodeNo(ino),
            size: i.size,
            blocks: i.size.div_ceil(512),
            atime: i.mtime,
            mtime: i.mtime,
            ctime: i.mtime,
            crtime: UNIX_EPOCH,
            kind,
            perm: i.perm,
            nlink: i.nlink,
            uid: i.uid,
            gid: i.gid,
            rdev,
            blksize: 4096,
            flags: 0,
        }
    }

    /// Every request goes through here: a poisoned layer (one that is not
    /// what its image claimed) answers nothing but EIO, names included.
    fn inode(&self, ino: INodeNo) -> Result<&Inode, Errno> {
        if self.layer.is_poisoned() {
            return Err(Errno::EIO);
        }
        self.tree.get(ino.0).ok_or(Errno::ENOENT)
    }

    /// How the kernel reads file `node`. Its content never changes, so the
    /// page cache is kept across opens. But the kernel's read-ahead runs a
    /// window past where a reader stops, and on a file still fetched from
    /// the registry each page past it can cost a chunk: such a file is read
    /// around the page cache, and our own read-ahead follows the reader's
    /// runs instead. Executables keep the page cache, since exec and
    /// dlopen map them and mapping a direct-I/O file drops its cached pages.
    fn open_flags(&self, inode: &Inode, node: usize) -> FopenFlags {
        let chunks: Vec<u32> = self.layer.nodes()[node]
            .extents
            .iter()
            .map(|x| x.chunk)
            .collect();
        if inode.perm & 0o111 != 0 || self.layer.is_local_chunks(&chunks) {
            FopenFlags::FOPEN_KEEP_CACHE
        } else {
            FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_DIRECT_IO
        }
    }

    /// Reads `[offset, offset + size)` of file `node`, handing the bytes to
    /// `reply` without copying when they lie in one chunk.
    fn read_file(&self, ino: u64, node: usize, offset: u64, size: u32, reply: ReplyData) {
        let n = &self.layer.nodes()[node];
        let end = offset.saturating_add(u64::from(size)).min(n.entry.size);
        if offset >= end {
            reply.data(&[]);
            return;
        }
        let parts: Vec<_> = overlapping(&n.extents, offset, end).copied().collect();
        let Some(runs) = self.runs.get((ino - 1) as usize) else {
            reply.error(Errno::ENOENT);
            return;
        };
        let run = runs.note(offset, end, u64::from(MAX_READ), SEQUENTIAL_SLACK);
        let plan = match parts.last() {
            // Extents are in file order: those after the read start here.
            Some(last) => ahead::plan(
                &n.extents[n
                    .extents
                    .partition_point(|x| x.file_offset <= last.file_offset)..],
                offset,
                run,
                |c| self.layer.is_local_chunks(c),
            ),
            None => ahead::Plan::default(),
        };
        let missing: Vec<u32> = parts
            .iter()
            .map(|x| x.chunk)
            .filter(|&c| !self.cache.is_cached(&self.layer, c))
            .collect();
        // Each fetch costs a round trip to the registry: the chunks the
        // reader is heading into come in the same range.
        if !missing.is_empty()
            && (missing.len() > 1 || !plan.with.is_empty())
            && let Err(e) = self.layer.prepare(&missing, &plan.with)
        {
            // Each chunk's own load tries again and reports.
            tracing::debug!("{e}");
        }
        // Keep the next chunks of this file loading while the reader works
        // through this one: verifying and inflating are the slow steps, and
        // the read-ahead workers use the other core. Queued after the fetch
        // above, so that no worker fetches one of them on its own first.
        for &c in &plan.ahead {
            self.cache.prefetch(&self.layer, c);
        }
        let mut chunks = Vec::with_capacity(parts.len());
        for x in &parts {
            match self.cache.get(&self.layer, x.chunk) {
                Ok(c) => chunks.push(c),
                Err(e) => {
                    tracing::error!("{e}");
                    reply.error(Errno::EIO);
                    return;
                }
            }
        }
        if let [x] = parts.as_slice() {
            let (a, b) = x.slice(offset, end);
            reply.data(&chunks[0][a..b]);
            return;
        }
        // A read across chunks is joined in this thread's buffer, kept for
        // the next such read: a fresh one would cost page faults, and its
        // zeroizing on drop, as much as the copy.
        JOINED.with(|buf| {
            let mut buf = buf.borrow_mut();
            buf.clear();
            // Growing in place would free the old buffer unwiped: a bigger
            // one replaces it instead, and the old one is wiped on drop.
            let want = usize::try_from(end - offset).unwrap_or(usize::MAX);
            if buf.capacity() < want {
                *buf = zeroize::Zeroizing::new(Vec::with_capacity(want));
            }
            for (x, c) in parts.iter().zip(&chunks) {
                let (a, b) = x.slice(offset, end);
                buf.extend_from_slice(&c[a..b]);
            }
            reply.data(&buf);
        });
    }
}

thread_local! {
    /// Plaintext of the last read that spanned chunks; zeroized when the
    /// FUSE thread ends.
    static JOINED: std::cell::RefCell<zeroize::Zeroizing<Vec<u8>>> =
        std::cell::RefCell::new(zeroize::Zeroizing::new(Vec::new()));
}

/// A directory's listing from the kernel's `offset` on: `.` and `..`, then
/// the entries, each with the offset to resume after it. Starts at the
/// offset's position without walking what lies before it.
fn listing<'a>(
    ino: u64,
    kids: &'a tree::Dir,
    offset: u64,
) -> impl Iterator<Item = (u64, u64, &'a OsStr)> + 'a {
    let dots = [(1u64, ino, OsStr::new(".")), (2, ino, OsStr::new(".."))];
    let skip = usize::try_from(offset).unwrap_or(usize::MAX);
    let first = skip.saturating_sub(2);
    let dots = dots.into_iter().skip(skip.min(2));
    let rest = kids
        .from(first)
        .iter()
        .enumerate()
        .map(move |(k, (n, c))| ((first + k + 3) as u64, *c, n.as_os_str()));
    dots.chain(rest)
}

/// The bytes of every inode. Sizes are the image's word: a sum of lies
/// must not overflow (a panic on a FUSE thread).
fn total_size(tree: &Tree) -> u64 {
    tree.inodes
        .iter()
        .fold(0u64, |t, i| t.saturating_add(i.size))
}

fn file_type(i: &Inode) -> FileType {
    match i.kind {
        Kind::Dir(_) => FileType::Directory,
        Kind::File(_) => FileType::RegularFile,
        Kind::Symlink(_) => FileType::Symlink,
        Kind::Char(_) => FileType::CharDevice,
        Kind::Block(_) => FileType::BlockDevice,
        Kind::Fifo => FileType::NamedPipe,
    }
}

/// Answers an xattr request: the size, the bytes, or ERANGE.
fn xattr_reply(data: &[u8], size: u32, reply: ReplyXattr) {
    if size == 0 {
        reply.size(data.len() as u32);
    } else if data.len() > size as usize {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(data);
    }
}

impl Filesystem for LayerFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_readahead(MAX_READ);
        // The kernel sizes its requests by max_pages, which fuser derives from
        // max_write: without this, reads arrive 128 KiB at a time.
        let _ = config.set_max_write(MAX_READ);
        // Files read around the page cache may still be mapped shared.
        let _ = config.add_capabilities(InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP);
        Ok(())
    }

    fn destroy(&mut self) {
        self.cache.forget_layer(self.layer.id());
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        requests::note(requests::Op::Lookup);
        let child = match self.inode(parent).map(|p| &p.kind) {
            Ok(Kind::Dir(kids)) => kids.get(name),
            Ok(_) => return reply.error(Errno::ENOTDIR),
            Err(e) => return reply.error(e),
        };
        match child.and_then(|c| Some((c, self.tree.get(c)?))) {
            Some((c, i)) => reply.entry(&TTL, &self.attr(c, i), Generation(0)),
            None => reply.entry(&TTL, &absent(), Generation(0)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        requests::note(requests::Op::Getattr);
        match self.inode(ino) {
            Ok(i) => reply.attr(&TTL, &self.attr(ino.0, i)),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.inode(ino).map(|i| &i.kind) {
            Ok(Kind::Symlink(t)) => reply.data(t),
            Ok(_) => reply.error(Errno::EINVAL),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        requests::note(requests::Op::Open);
        if flags.0 & libc::O_ACCMODE != libc::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        // A poisoned layer answers EIO, never what stops the kernel asking.
        if self.no_open && !self.layer.is_poisoned() {
            return reply.error(Errno::ENOSYS);
        }
        match self.inode(ino) {
            Ok(
                i @ Inode {
                    kind: Kind::File(node),
                    ..
                },
            ) => reply.opened(FileHandle(0), self.open_flags(i, *node)),
            Ok(_) => reply.error(Errno::EINVAL),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        requests::note(requests::Op::Read);
        match self.inode(ino).map(|i| &i.kind) {
            Ok(Kind::File(node)) => {
                let started = std::time::Instant::now();
                // Whatever this read asks of the registry shares one
                // deadline: a stalled registry fails it with EIO in time.
                let _budget = crate::deadline::budget();
                self.read_file(ino.0, *node, offset, size, reply);
                latency::READS.observe(started.elapsed());
            }
            Ok(_) => reply.error(Errno::EISDIR),
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.inode(ino).map(|i| &i.kind) {
            Ok(Kind::Dir(_)) => reply.opened(FileHandle(0), FopenFlags::FOPEN_CACHE_DIR),
            Ok(_) => reply.error(Errno::ENOTDIR),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        requests::note(requests::Op::Readdir);
        let kids = match self.inode(ino).map(|i| &i.kind) {
            Ok(Kind::Dir(kids)) => kids,
            Ok(_) => return reply.error(Errno::ENOTDIR),
            Err(e) => return reply.error(e),
        };
        for (k, c, n) in listing(ino.0, kids, offset) {
            let Some(i) = self.tree.get(c) else { continue };
            if reply.add(INodeNo(c), k, file_type(i), n) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        requests::note(requests::Op::Readdir);
        let kids = match self.inode(ino).map(|i| &i.kind) {
            Ok(Kind::Dir(kids)) => kids,
            Ok(_) => return reply.error(Errno::ENOTDIR),
            Err(e) => return reply.error(e),
        };
        for (k, c, n) in listing(ino.0, kids, offset) {
            let Some(i) = self.tree.get(c) else { continue };
            if reply.add(INodeNo(c), k, n, &TTL, &self.attr(c, i), Generation(0)) {
                break;
            }
        }
        reply.ok();
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        requests::note(requests::Op::Getxattr);
        if !self.xattrs && !self.layer.is_poisoned() {
            return reply.error(Errno::ENOSYS);
        }
        match self.inode(ino).map(|i| i.xattrs.get(name)) {
            Ok(Some(v)) => xattr_reply(v, size, reply),
            Ok(None) => reply.error(Errno::NO_XATTR),
            Err(e) => reply.error(e),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        requests::note(requests::Op::Listxattr);
        match self.inode(ino) {
            Ok(i) => {
                let mut list = Vec::new();
                for k in i.xattrs.keys() {
                    list.extend_from_slice(tree::name_bytes(k));
                    list.push(0);
                }
                xattr_reply(&list, size, reply);
            }
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let bytes = total_size(&self.tree);
        let files = self.tree.inodes.len() as u64;
        reply.statfs(bytes.div_ceil(4096), 0, 0, files, 0, 4096, 255, 4096);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::estargz::toc::TocEntry;
    use crate::layer::index::Node;

    /// A tree of regular files named `names`, each of `size` bytes.
    fn files(names: &[&str], size: u64) -> Tree {
        let nodes: Vec<_> = names
            .iter()
            .map(|n| Node {
                entry: TocEntry {
                    name: (*n).into(),
                    kind: "reg".into(),
                    size,
                    ..Default::default()
                },
                extents: Vec::new(),
            })
            .collect();
        Tree::build(&nodes, "L")
    }

    #[test]
    fn sizes_that_sum_past_u64_saturate() {
        assert_eq!(total_size(&files(&["a", "b"], u64::MAX - 1)), u64::MAX);
    }

    /// `readdir` resumes where the kernel's offset says: `.` and `..` at
    /// 1 and 2, then each entry at its position + 3.
    #[test]
    fn a_listing_resumes_at_the_kernels_offset() {
        let t = files(&["b", "a", "c"], 0);
        let Kind::Dir(root) = &t.inodes[0].kind else {
            panic!("the root is a directory")
        };
        let names = |off| {
            listing(1, root, off)
                .map(|(k, _, n)| format!("{k}:{}", n.to_string_lossy()))
                .collect::<Vec<_>>()
        };
        assert_eq!(names(0), ["1:.", "2:..", "3:a", "4:b", "5:c"]);
        assert_eq!(names(1), ["2:..", "3:a", "4:b", "5:c"]);
        assert_eq!(names(4), ["5:c"]);
        assert!(names(5).is_empty() && names(u64::MAX).is_empty());
    }
}

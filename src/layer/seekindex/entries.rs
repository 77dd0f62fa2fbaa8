//! The head payload's entry table (docs/seek-index.md §5.5): the entries
//! `stream::walk` makes of a tar stream, one record each in tar order, names
//! sharing their prefix with the previous one. One encoding per table, so a
//! rebuilt table can be compared with a published one byte for byte; the
//! decoder checks every rule and refuses anything else.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use zeroize::Zeroizing;

use super::head::{FieldError, Reader};
use crate::crypto::wipe::SecretBuf;
use crate::layer::estargz::toc::{TocEntry, rfc3339, unix_secs};
use crate::layer::index::{
    Extent, MAX_CHUNK, MAX_ENTRIES, Meter, Node, node_bytes, stream_extents,
};
use crate::layer::tarmeta::{MAX_EXTENSION, clean};

/// Bytes of a record with empty strings and no xattrs.
pub const MIN_RECORD: usize = 55;
/// Longest name, and longest link target.
pub const MAX_NAME: usize = 4096;
/// Most xattrs one entry may have.
pub const MAX_XATTRS: usize = 1024;
/// Longest xattr value.
pub const MAX_XATTR_VALUE: usize = 65536;
/// An xattr's smallest record: a one-byte key and an empty value.
const MIN_XATTR: usize = 1 + 1 + 4;

/// Kind codes 1..=7, in this order.
const KINDS: [&str; 7] = ["reg", "dir", "symlink", "hardlink", "char", "block", "fifo"];
const REG: u8 = 1;
const SYMLINK: u8 = 3;
const HARDLINK: u8 = 4;
const CHAR: u8 = 5;
const BLOCK: u8 = 6;

/// Why an entry table is refused or cannot be written; one line naming the
/// entry by number and the field, never quoting a name or a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntriesError {
    /// The bytes break a rule of §5.5.
    #[error("seek index entries: {0}")]
    Malformed(String),
    /// An entry the format cannot hold: the layer cannot be indexed.
    #[error("seek index entries: {0}")]
    Unrepresentable(String),
    /// The table does not fit in the memory budget.
    #[error(
        "seek index entries: the index ({entries} entries) does not fit in what the cache \
         budget leaves; a larger cache budget (--cache-size, cache_size) would take it"
    )]
    NoRoom { entries: usize },
}

/// Writes `nodes` (as `stream::walk` makes them, their extents cut in
/// chunks of `chunk` bytes) as the entries section. Fails on the first entry
/// the format cannot hold, naming it by number.
pub fn encode(nodes: &[Node], chunk: u64) -> Result<Zeroizing<Vec<u8>>, EntriesError> {
    if !(1..=MAX_CHUNK).contains(&chunk) {
        return Err(EntriesError::Unrepresentable(format!(
            "chunk size {chunk} is out of range"
        )));
    }
    // Names, link targets, xattrs: plaintext, in a buffer that leaves no
    // copies behind as it grows.
    let mut out = SecretBuf::with_capacity(nodes.len() * (MIN_RECORD + 16));
    let mut data_end = None;
    let mut prev = "";
    for (i, n) in nodes.iter().enumerate() {
        put(&mut out, n, prev, chunk, &mut data_end)
            .map_err(|why| EntriesError::Unrepresentable(format!("entry {i}: {why}")))?;
        prev = &n.entry.name;
    }
    Ok(out.into_inner())
}

/// Appends one node's record.
fn put(
    out: &mut SecretBuf,
    n: &Node,
    prev: &str,
    chunk: u64,
    data_end: &mut Option<u64>,
) -> Result<(), &'static str> {
    let e = &n.entry;
    let kind = KINDS
        .iter()
        .position(|&k| k == e.kind)
        .ok_or("its kind is not one the format has")? as u8
        + 1;
    if !e.digest.is_empty()
        || e.offset != 0
        || e.chunk_offset != 0
        || e.chunk_size != 0
        || !e.chunk_digest.is_empty()
    {
        return Err("it has TOC chunk fields, which the format does not hold");
    }
    name_rule(&e.name)?;
    let uid = u32::try_from(e.uid).map_err(|_| "its uid does not fit in 32 bits")?;
    let gid = u32::try_from(e.gid).map_err(|_| "its gid does not fit in 32 bits")?;
    let mtime = match e.mod_time.as_str() {
        "" => 0,
        t => unix_secs(t)
            .filter(|&s| s > 0)
            .ok_or("its modification time is not whole seconds after 1970 in RFC 3339")?,
    };
    let offset = match n.extents.first() {
        Some(x) => u64::from(x.chunk) * chunk + u64::from(x.chunk_offset),
        None => 0,
    };
    let want = if kind == REG && e.size > 0 {
        extent_count(offset, e.size, chunk)
    } else {
        Some(0)
    };
    if want != Some(n.extents.len() as u64)
        || (!n.extents.is_empty() && n.extents != stream_extents(offset, e.size, chunk))
    {
        return Err("its extents are not its size in one run of the tar stream");
    }
    data_rule(kind, e.size, offset, u64::MAX, data_end)?;
    link_rule(kind, &e.link_name)?;
    let uname = u8::try_from(e.user_name.len()).map_err(|_| "its user name is over 255 bytes")?;
    let gname = u8::try_from(e.group_name.len()).map_err(|_| "its group name is over 255 bytes")?;
    if !matches!(kind, CHAR | BLOCK) && (e.dev_major != 0 || e.dev_minor != 0) {
        return Err("it has device numbers but is no device");
    }
    let major = u32::try_from(e.dev_major).map_err(|_| "its device major is over 32 bits")?;
    let minor = u32::try_from(e.dev_minor).map_err(|_| "its device minor is over 32 bits")?;
    if e.xattrs.len() > MAX_XATTRS {
        return Err("it has more than 1024 xattrs");
    }

    // The name's first bytes equal to the previous name's (bytes, not
    // characters: the longest such prefix is the canonical one).
    let shared = prev
        .bytes()
        .zip(e.name.bytes())
        .take_while(|(a, b)| a == b)
        .count();
    let suffix = &e.name.as_bytes()[shared..];
    out.extend_from_slice(&[kind]);
    out.extend_from_slice(&(shared as u16).to_le_bytes());
    out.extend_from_slice(&(suffix.len() as u16).to_le_bytes());
    out.extend_from_slice(suffix);
    out.extend_from_slice(&e.mode.to_le_bytes());
    out.extend_from_slice(&uid.to_le_bytes());
    out.extend_from_slice(&gid.to_le_bytes());
    out.extend_from_slice(&mtime.to_le_bytes());
    out.extend_from_slice(&e.size.to_le_bytes());
    out.extend_from_slice(&offset.to_le_bytes());
    out.extend_from_slice(&(e.link_name.len() as u16).to_le_bytes());
    out.extend_from_slice(e.link_name.as_bytes());
    out.extend_from_slice(&[uname]);
    out.extend_from_slice(e.user_name.as_bytes());
    out.extend_from_slice(&[gname]);
    out.extend_from_slice(e.group_name.as_bytes());
    out.extend_from_slice(&major.to_le_bytes());
    out.extend_from_slice(&minor.to_le_bytes());
    out.extend_from_slice(&(e.xattrs.len() as u16).to_le_bytes());
    let mut total = 0usize;
    for (k, v) in &e.xattrs {
        let value = Zeroizing::new(B64.decode(v).map_err(|_| "an xattr value is not base64")?);
        if k.is_empty() || k.len() > 255 {
            return Err("an xattr key is empty or over 255 bytes");
        }
        if value.len() > MAX_XATTR_VALUE {
            return Err("an xattr value is over 65536 bytes");
        }
        total += k.len() + value.len();
        if total as u64 > MAX_EXTENSION {
            return Err("its xattrs are over 1 MiB in all");
        }
        out.extend_from_slice(&[k.len() as u8]);
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
        out.extend_from_slice(&value);
    }
    Ok(())
}

/// Reads `count` entries filling exactly `bytes`, for a tar stream of
/// `uncompressed` bytes cut in chunks of `chunk`, taking the memory each
/// node holds from `meter` as it is built.
pub fn decode(
    bytes: &[u8],
    count: u32,
    uncompressed: u64,
    chunk: u64,
    meter: &dyn Meter,
) -> Result<Vec<Node>, EntriesError> {
    let malformed = EntriesError::Malformed;
    // Chunk numbers are u32: every byte of the stream must have one.
    if !(1..=MAX_CHUNK).contains(&chunk) || uncompressed.saturating_sub(1) / chunk > u32::MAX.into()
    {
        return Err(malformed(format!(
            "chunk size {chunk} is out of range for {uncompressed} bytes"
        )));
    }
    if count as usize > MAX_ENTRIES {
        return Err(malformed(format!(
            "{count} entries, more than {MAX_ENTRIES}"
        )));
    }
    let mut r = Reader::new(bytes, "entries section");
    r.room(count.into(), MIN_RECORD, "entries")
        .map_err(|e| malformed(e.0))?;
    // Grown as nodes are metered, not reserved from the claimed count.
    let mut nodes: Vec<Node> = Vec::new();
    let mut data_end = None;
    for i in 0..count as usize {
        let prev = nodes.last().map_or("", |n| n.entry.name.as_str());
        let (entry, offset) = record(&mut r, prev, uncompressed, &mut data_end)
            .map_err(|e| malformed(format!("entry {i}: {}", e.0)))?;
        // Within the stream, so within the chunk numbers checked above.
        let spans = extent_count(offset, entry.size, chunk).unwrap_or(0);
        let mut node = Node {
            entry,
            extents: Vec::new(),
        };
        let held = node_bytes(&node) + spans * std::mem::size_of::<Extent>() as u64;
        if !meter.take(held) {
            return Err(EntriesError::NoRoom { entries: i + 1 });
        }
        node.extents = stream_extents(offset, node.entry.size, chunk);
        nodes.push(node);
    }
    if r.left() > 0 {
        return Err(malformed(format!(
            "{} bytes after the last entry",
            r.left()
        )));
    }
    Ok(nodes)
}

/// Reads one record after the entry named `prev`: its entry and data offset.
fn record(
    r: &mut Reader<'_>,
    prev: &str,
    uncompressed: u64,
    data_end: &mut Option<u64>,
) -> Result<(TocEntry, u64), FieldError> {
    let why = |s: &str| FieldError(s.into());
    let kind = r.u8("kind")?;
    let kind_name = *KINDS
        .get(usize::from(kind.wrapping_sub(1)))
        .ok_or_else(|| FieldError(format!("kind {kind} is not 1..7")))?;
    let shared = usize::from(r.u16("shared")?);
    let suffix_len = usize::from(r.u16("suffix length")?);
    if shared > prev.len() {
        return Err(why("shared is longer than the previous name"));
    }
    if shared + suffix_len > MAX_NAME {
        return Err(why("name is over 4096 bytes"));
    }
    let suffix = r.take(suffix_len, "name")?;
    if suffix
        .first()
        .is_some_and(|&b| prev.as_bytes().get(shared) == Some(&b))
    {
        return Err(why("shared is not the longest prefix of the previous name"));
    }
    let mut name = Vec::with_capacity(shared + suffix_len);
    name.extend_from_slice(&prev.as_bytes()[..shared]);
    name.extend_from_slice(suffix);
    let name = String::from_utf8(name).map_err(|_| why("name is not UTF-8"))?;
    name_rule(&name).map_err(why)?;
    let mode = r.u32("mode")?;
    let uid = r.u32("uid")?;
    let gid = r.u32("gid")?;
    let mtime = r.u64("mtime")?;
    let size = r.u64("size")?;
    let offset = r.u64("data offset")?;
    data_rule(kind, size, offset, uncompressed, data_end).map_err(why)?;
    let link_len = usize::from(r.u16("link length")?);
    if link_len > MAX_NAME {
        return Err(why("link target is over 4096 bytes"));
    }
    let link = text(r.take(link_len, "link target")?, "link target")?;
    link_rule(kind, link).map_err(why)?;
    let n = usize::from(r.u8("user name length")?);
    let user = text(r.take(n, "user name")?, "user name")?;
    let n = usize::from(r.u8("group name length")?);
    let group = text(r.take(n, "group name")?, "group name")?;
    let dev_major = r.u32("device major")?;
    let dev_minor = r.u32("device minor")?;
    if !matches!(kind, CHAR | BLOCK) && (dev_major != 0 || dev_minor != 0) {
        return Err(why("device numbers on an entry that is no device"));
    }
    let xattr_count = usize::from(r.u16("xattr count")?);
    if xattr_count > MAX_XATTRS {
        return Err(FieldError(format!(
            "{xattr_count} xattrs, more than {MAX_XATTRS}"
        )));
    }
    r.room(xattr_count as u64, MIN_XATTR, "xattrs")?;
    let mut xattrs = BTreeMap::new();
    let mut last: Option<&[u8]> = None;
    let mut total = 0usize;
    for x in 0..xattr_count {
        let klen = usize::from(r.u8("xattr key length")?);
        let key = r.take(klen, "xattr key")?;
        if key.is_empty() {
            return Err(FieldError(format!("xattr {x}'s key is empty")));
        }
        if last.is_some_and(|l| key <= l) {
            return Err(FieldError(format!(
                "xattr {x}'s key is not after the one before"
            )));
        }
        last = Some(key);
        let key = text(key, "xattr key")?;
        let vlen = r.u32("xattr value length")? as usize;
        if vlen > MAX_XATTR_VALUE {
            return Err(FieldError(format!("xattr {x}'s value is over 65536 bytes")));
        }
        let value = r.take(vlen, "xattr value")?;
        total += klen + vlen;
        if total as u64 > MAX_EXTENSION {
            return Err(why("xattrs are over 1 MiB in all"));
        }
        xattrs.insert(key.to_string(), B64.encode(value));
    }
    let entry = TocEntry {
        name,
        kind: kind_name.into(),
        size,
        mod_time: if mtime > 0 {
            rfc3339(mtime)
        } else {
            String::new()
        },
        link_name: link.into(),
        mode,
        uid: uid.into(),
        gid: gid.into(),
        user_name: user.into(),
        group_name: group.into(),
        dev_major: dev_major.into(),
        dev_minor: dev_minor.into(),
        xattrs,
        ..Default::default()
    };
    Ok((entry, offset))
}

fn text<'a>(b: &'a [u8], what: &str) -> Result<&'a str, FieldError> {
    std::str::from_utf8(b).map_err(|_| FieldError(format!("{what} is not UTF-8")))
}

/// A name as `tarmeta` leaves it: inside the layer, one way to spell it.
fn name_rule(name: &str) -> Result<(), &'static str> {
    if name.len() > MAX_NAME {
        return Err("name is over 4096 bytes");
    }
    if name.is_empty() {
        return Err("name is empty");
    }
    if name.contains('\0') {
        return Err("name holds a NUL byte");
    }
    if clean(name) != name {
        return Err("name is not clean (., .., empty or leading / components)");
    }
    Ok(())
}

/// Only links have targets; a hard link's is a clean name like any entry's.
fn link_rule(kind: u8, link: &str) -> Result<(), &'static str> {
    if link.len() > MAX_NAME {
        return Err("link target is over 4096 bytes");
    }
    if !link.is_empty() && !matches!(kind, SYMLINK | HARDLINK) {
        return Err("link target on an entry that is no link");
    }
    if link.contains('\0') {
        return Err("link target holds a NUL byte");
    }
    if kind == HARDLINK && clean(link) != link {
        return Err("hard link target is not clean");
    }
    Ok(())
}

/// Regular files' data lie in tar order, apart, inside the stream; other
/// entries have none. `end` is where the previous file's data ended.
fn data_rule(
    kind: u8,
    size: u64,
    offset: u64,
    uncompressed: u64,
    end: &mut Option<u64>,
) -> Result<(), &'static str> {
    if kind != REG && size != 0 {
        return Err("size is not 0 on an entry that is no regular file");
    }
    if size == 0 {
        return if offset == 0 {
            Ok(())
        } else {
            Err("data offset is not 0 on an entry without data")
        };
    }
    if end.is_some_and(|e| offset < e) {
        return Err("data offset is before the previous file's data ends");
    }
    let stop = offset
        .checked_add(size)
        .filter(|&s| s <= uncompressed)
        .ok_or("data runs past the tar stream's end")?;
    *end = Some(stop);
    Ok(())
}

/// How many chunks `size` bytes at `offset` touch, if their numbers fit in
/// an extent's u32.
fn extent_count(offset: u64, size: u64, chunk: u64) -> Option<u64> {
    if size == 0 {
        return Some(0);
    }
    let last = offset.checked_add(size - 1)? / chunk;
    u32::try_from(last).ok()?;
    Some(last - offset / chunk + 1)
}

#[cfg(test)]
mod tests {
    use crate::layer::testing::node;
    use crate::layer::testing::{Budget, pax};
    use std::sync::atomic::{AtomicU64, Ordering};

    use tar::{EntryType, Header};

    use super::*;
    use crate::layer::index::Unmetered;
    use crate::layer::stream::sealed::Scratch;
    use crate::layer::stream::{self, CHUNK};

    fn header(kind: EntryType, size: u64, mode: u32) -> Header {
        let mut h = Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(mode);
        h.set_mtime(1_566_297_043);
        h.set_uid(1000);
        h.set_gid(100);
        h.set_username("user").unwrap();
        h.set_groupname("staff").unwrap();
        h
    }

    /// A tar of every kind of entry `walk` keeps, with PAX and GNU
    /// extensions.
    fn layer_tar() -> Vec<u8> {
        use EntryType::*;
        let mut b = tar::Builder::new(Vec::new());
        let file = |b: &mut tar::Builder<Vec<u8>>, name: &str, data: &[u8]| {
            let mut h = header(Regular, data.len() as u64, 0o644);
            b.append_data(&mut h, name, data).unwrap();
        };
        let mut h = header(Directory, 0, 0o755);
        b.append_data(&mut h, "./", &b""[..]).unwrap();
        let mut h = header(Directory, 0, 0o755);
        b.append_data(&mut h, "d/", &b""[..]).unwrap();
        let mut h = header(Regular, 0, 0o600);
        h.set_mtime(0);
        b.append_data(&mut h, "d/empty", &b""[..]).unwrap();
        file(&mut b, "d/file", b"hello");
        let big: Vec<u8> = (0..(CHUNK as usize * 3 / 2 + 7))
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        file(&mut b, "d/big", &big);
        let mut h = header(Symlink, 0, 0o777);
        b.append_link(&mut h, "d/link", "../x/./y").unwrap();
        let mut h = header(Link, 0, 0o644);
        b.append_link(&mut h, "d/hard", "./d/file").unwrap();
        for (name, kind, major, minor) in [("dev/null", Char, 1, 3), ("dev/sda", Block, 8, 0)] {
            let mut h = header(kind, 0, 0o660);
            h.set_device_major(major).unwrap();
            h.set_device_minor(minor).unwrap();
            b.append_data(&mut h, name, &b""[..]).unwrap();
        }
        let mut h = header(Fifo, 0, 0o644);
        b.append_data(&mut h, "p", &b""[..]).unwrap();
        let ext = pax(&[
            ("uid", b"5000000"),
            ("gid", b"6000000"),
            ("mtime", b"99999999999.25"),
            ("uname", b"pax-user"),
            ("SCHILY.xattr.user.a", b"v\0w"),
            (
                "SCHILY.xattr.security.capability",
                &[1, 0, 0, 2, 0xff, 0, 0, 0],
            ),
        ]);
        let mut h = header(XHeader, ext.len() as u64, 0o644);
        b.append_data(&mut h, "PaxHeaders/pax", &ext[..]).unwrap();
        file(&mut b, "d/pax", b"pax data");
        let long = format!("d/{}/leaf", "n".repeat(150));
        file(&mut b, &long, b"long");
        let mut h = header(Symlink, 0, 0o777);
        b.append_link(&mut h, "d/longlink", "t/".repeat(80))
            .unwrap();
        // Names whose shared prefix ends inside a character.
        file(&mut b, "d/\u{e9}", b"");
        file(&mut b, "d/\u{e8}", b"e");
        file(&mut b, "d/file", b"again");
        b.into_inner().unwrap()
    }

    /// The layer's nodes as `stream::index` makes them, and its stream size.
    fn walked(tar: &[u8]) -> (Vec<Node>, u64) {
        let scratch = Scratch::new("/nonexistent".into(), u64::MAX);
        let idx = stream::index(tar, stream::Compression::None, &scratch, "L", &Unmetered).unwrap();
        (idx.nodes().to_vec(), idx.uncompressed_size())
    }

    fn same(got: &[Node], want: &[Node]) {
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert_eq!(g.entry, w.entry, "entry {i}");
            assert_eq!(g.extents, w.extents, "entry {i}");
        }
    }

    #[test]
    fn a_walked_layer_reads_back_as_it_was() {
        let tar = layer_tar();
        let (nodes, total) = walked(&tar);
        // The table exercises what it should.
        let kinds: std::collections::BTreeSet<_> =
            nodes.iter().map(|n| n.entry.kind.as_str()).collect();
        assert_eq!(kinds.len(), KINDS.len(), "{kinds:?}");
        let pax = nodes.iter().find(|n| n.entry.uid == 5_000_000).unwrap();
        assert_eq!(pax.entry.gid, 6_000_000);
        assert_eq!(pax.entry.user_name, "pax-user");
        assert_eq!(pax.entry.xattrs["user.a"], B64.encode(b"v\0w"));
        assert_eq!(pax.entry.xattrs.len(), 2);
        assert_eq!(pax.entry.mod_time, rfc3339(99_999_999_999));
        assert!(nodes.iter().any(|n| n.entry.name.len() > 150));
        assert!(nodes.iter().any(|n| n.entry.link_name.len() > 150));
        assert!(nodes.iter().any(|n| n.extents.len() == 2));
        assert!(nodes.iter().any(|n| n.entry.mod_time.is_empty()));
        assert!(nodes.iter().any(|n| n.entry.dev_major == 8));
        assert_eq!(
            nodes
                .iter()
                .find(|n| n.entry.kind == "hardlink")
                .unwrap()
                .entry
                .link_name,
            "d/file"
        );
        assert!(
            nodes.iter().all(|n| !n.entry.name.is_empty()),
            "./ is left out"
        );

        let bytes = encode(&nodes, CHUNK).unwrap();
        let meter = Budget(u64::MAX, AtomicU64::new(0));
        let back = decode(&bytes, nodes.len() as u32, total, CHUNK, &meter).unwrap();
        same(&back, &nodes);
        // What the nodes hold is taken, as `walk` takes it.
        let held: u64 = nodes.iter().map(node_bytes).sum();
        assert_eq!(meter.1.load(Ordering::SeqCst), held);
        // Canonical: the same layer gives the same bytes.
        assert_eq!(*encode(&walked(&tar).0, CHUNK).unwrap(), *bytes);
        assert_eq!(*encode(&back, CHUNK).unwrap(), *bytes);
        // An empty layer is an empty section.
        assert!(encode(&[], CHUNK).unwrap().is_empty());
        assert!(decode(&[], 0, 0, CHUNK, &Unmetered).unwrap().is_empty());
    }

    fn file(name: &str, offset: u64, size: u64) -> Node {
        let mut n = node(name, "reg");
        n.entry.size = size;
        n.extents = stream_extents(offset, size, CHUNK);
        n
    }

    /// A small table whose records the tests below break one field at a
    /// time.
    fn table() -> Vec<Node> {
        let mut dir = node("a", "dir");
        dir.entry.mod_time = rfc3339(1_566_297_043);
        dir.entry.user_name = "root".into();
        let mut xz = file("a/xz", 1536, 5);
        xz.entry.xattrs.insert("user.a".into(), B64.encode(b"x"));
        xz.entry.xattrs.insert("user.b".into(), B64.encode(b"yz"));
        let mut h = node("a/h", "hardlink");
        h.entry.link_name = "a/xy".into();
        let mut c = node("d", "char");
        (c.entry.dev_major, c.entry.dev_minor) = (1, 3);
        vec![dir, file("a/xy", 512, 10), xz, h, c]
    }

    const TOTAL: u64 = 4096;

    /// Where record `k` of [`table`]'s encoding starts: each record depends
    /// only on the one before, so it is the length of the first `k`.
    fn start(k: usize) -> usize {
        encode(&table()[..k], CHUNK).unwrap().len()
    }

    /// Where a field of record `k` lies, counted from the end of its name.
    fn after_name(k: usize, at: usize) -> usize {
        let s = start(k);
        let bytes = encode(&table(), CHUNK).unwrap();
        s + 5 + usize::from(u16::from_le_bytes([bytes[s + 3], bytes[s + 4]])) + at
    }

    const MODE: usize = 0;
    const SIZE: usize = 20;
    const OFFSET: usize = 28;
    const LINK_LEN: usize = 36;

    fn refuse(bytes: &[u8]) -> String {
        let n = table().len() as u32;
        let e = decode(bytes, n, TOTAL, CHUNK, &Unmetered).unwrap_err();
        assert!(matches!(e, EntriesError::Malformed(_)), "{e:?}");
        e.to_string()
    }

    /// `bytes` with `f` applied.
    fn broken(f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let mut b = encode(&table(), CHUNK).unwrap().to_vec();
        f(&mut b);
        b
    }

    fn put_u64(b: &mut [u8], at: usize, v: u64) {
        b[at..at + 8].copy_from_slice(&v.to_le_bytes());
    }

    #[test]
    fn the_test_table_reads_back() {
        let t = table();
        let bytes = encode(&t, CHUNK).unwrap();
        same(&decode(&bytes, 5, TOTAL, CHUNK, &Unmetered).unwrap(), &t);
        // Changing a field no rule covers still reads: the offsets are right.
        let b = broken(|b| {
            let at = after_name(1, MODE);
            b[at..at + 4].copy_from_slice(&7u32.to_le_bytes());
        });
        assert_eq!(
            decode(&b, 5, TOTAL, CHUNK, &Unmetered).unwrap()[1]
                .entry
                .mode,
            0o7
        );
    }

    #[test]
    fn a_kind_outside_1_to_7_is_refused() {
        for k in [0u8, 8, 255] {
            let e = refuse(&broken(|b| b[start(1)] = k));
            assert_eq!(
                e,
                format!("seek index entries: entry 1: kind {k} is not 1..7")
            );
        }
    }

    #[test]
    fn a_shared_prefix_longer_than_the_previous_name_is_refused() {
        let e = refuse(&broken(|b| b[1] = 1));
        assert_eq!(
            e,
            "seek index entries: entry 0: shared is longer than the previous name"
        );
        // "a/xy" after "a" shares 1 byte; 2 is longer than "a".
        let e = refuse(&broken(|b| b[start(1) + 1] = 2));
        assert!(e.contains("entry 1: shared is longer"), "{e}");
    }

    #[test]
    fn a_shared_prefix_shorter_than_the_longest_is_refused() {
        // "a/xy" spelled out in full after "a".
        let b = broken(|b| {
            let s = start(1);
            b.splice(s + 1..s + 8, [0, 0, 4, 0, b'a', b'/', b'x', b'y']);
        });
        let e = refuse(&b);
        assert!(
            e.contains("entry 1: shared is not the longest prefix"),
            "{e}"
        );
    }

    #[test]
    fn names_that_are_not_clean_or_hold_a_nul_are_refused() {
        // Record 1 is "a" + "/xy".
        let s = start(1) + 5;
        for (suffix, why) in [
            (&b"/.."[..], "name is not clean"),
            (b"/./", "name is not clean"),
            (b"//x", "name is not clean"),
            (b"/x/", "name is not clean"),
            (b"/x\0", "name holds a NUL byte"),
            (b"/x\xff", "name is not UTF-8"),
        ] {
            let e = refuse(&broken(|b| b[s..s + 3].copy_from_slice(suffix)));
            assert!(
                e.starts_with(&format!("seek index entries: entry 1: {why}")),
                "{e}"
            );
        }
        // A leading "/" on the first name.
        let e = refuse(&broken(|b| b[5] = b'/'));
        assert!(e.contains("entry 0: name is not clean"), "{e}");
        // An empty name.
        let b = broken(|b| {
            b.splice(3..6, [0, 0]);
        });
        assert!(refuse(&b).contains("entry 0: name is empty"));
        // A name over 4096 bytes is refused before it is read.
        let e = refuse(&broken(|b| b[3..5].copy_from_slice(&4097u16.to_le_bytes())));
        assert!(e.contains("entry 0: name is over 4096 bytes"), "{e}");
    }

    #[test]
    fn link_targets_keep_their_rules() {
        // A target on the directory.
        let b = broken(|b| {
            let at = after_name(0, LINK_LEN);
            b.splice(at..at + 2, [1, 0, b'x']);
        });
        assert!(refuse(&b).contains("entry 0: link target on an entry that is no link"));
        // The hard link's target "a/xy" made "a/..".
        let b = broken(|b| {
            let at = after_name(3, LINK_LEN + 2);
            b[at + 2..at + 4].copy_from_slice(b"..");
        });
        assert!(refuse(&b).contains("entry 3: hard link target is not clean"));
        let b = broken(|b| b[after_name(3, LINK_LEN + 2) + 1] = 0);
        assert!(refuse(&b).contains("entry 3: link target holds a NUL byte"));
        let b = broken(|b| b[after_name(3, LINK_LEN) + 1] = 0x20);
        assert!(refuse(&b).contains("entry 3: link target is over 4096 bytes"));
    }

    #[test]
    fn data_offsets_keep_their_order_and_stay_in_the_stream() {
        // Record 2's data (at 1536) moved into record 1's (512..522).
        let b = broken(|b| put_u64(b, after_name(2, OFFSET), 521));
        let e = refuse(&b);
        assert_eq!(
            e,
            "seek index entries: entry 2: data offset is before the previous file's data ends"
        );
        // Right after it is fine.
        let b = broken(|b| put_u64(b, after_name(2, OFFSET), 522));
        let nodes = decode(&b, 5, TOTAL, CHUNK, &Unmetered).unwrap();
        assert_eq!(nodes[2].extents, stream_extents(522, 5, CHUNK));
        // Past the stream's end, or wrapping around it.
        let e = decode(
            &encode(&table(), CHUNK).unwrap(),
            5,
            1540,
            CHUNK,
            &Unmetered,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("entry 2: data runs past the tar stream's end"),
            "{e}"
        );
        let b = broken(|b| put_u64(b, after_name(2, OFFSET), u64::MAX - 2));
        assert!(refuse(&b).contains("entry 2: data runs past"));
        // Entries without data have neither size nor offset.
        let b = broken(|b| put_u64(b, after_name(0, SIZE), 1));
        assert!(refuse(&b).contains("entry 0: size is not 0 on an entry that is no regular"));
        let b = broken(|b| put_u64(b, after_name(0, OFFSET), 1));
        assert!(refuse(&b).contains("entry 0: data offset is not 0"));
    }

    #[test]
    fn device_numbers_belong_to_devices_only() {
        // Record 0's device major: after its link (none), names "root" and "".
        let b = broken(|b| b[after_name(0, LINK_LEN + 2 + 1 + 4 + 1)] = 1);
        assert!(refuse(&b).contains("entry 0: device numbers on an entry that is no device"));
        let b = broken(|b| b[after_name(0, LINK_LEN + 2 + 1)] = 0xff);
        assert!(refuse(&b).contains("entry 0: user name is not UTF-8"));
    }

    /// Record 2's xattrs: count, then "user.a" = "x" and "user.b" = "yz".
    fn xattrs_at() -> usize {
        start(3) - (1 + 6 + 4 + 1) - (1 + 6 + 4 + 2) - 2
    }

    #[test]
    fn xattrs_keep_their_rules() {
        let x = xattrs_at();
        let b = broken(|b| b[x + 2 + 6] = b'c');
        assert_eq!(
            refuse(&b),
            "seek index entries: entry 2: xattr 1's key is not after the one before"
        );
        let b = broken(|b| b[x + 2 + 12 + 6] = b'a');
        assert!(refuse(&b).contains("entry 2: xattr 1's key is not after"));
        let b = broken(|b| b[x..x + 2].copy_from_slice(&1025u16.to_le_bytes()));
        assert!(refuse(&b).contains("entry 2: 1025 xattrs, more than 1024"));
        let b = broken(|b| b[x..x + 2].copy_from_slice(&1000u16.to_le_bytes()));
        assert!(refuse(&b).contains("entry 2: 1000 xattrs do not fit in the entries section"));
        let b = broken(|b| b[x + 2] = 0);
        assert!(refuse(&b).contains("entry 2: xattr 0's key is empty"));
        let b = broken(|b| b[x + 2 + 7..x + 2 + 11].copy_from_slice(&65537u32.to_le_bytes()));
        assert!(refuse(&b).contains("entry 2: xattr 0's value is over 65536 bytes"));
        let b = broken(|b| b[x + 3] = 0xc3);
        assert!(refuse(&b).contains("entry 2: xattr key is not UTF-8"));
    }

    #[test]
    fn one_entrys_xattrs_are_bounded_together() {
        // Keys and values of exactly 1 MiB: 15 full values and one less.
        let mut n = node("f", "fifo");
        for k in 0..15u8 {
            n.entry
                .xattrs
                .insert(format!("user.{k:02}"), B64.encode(vec![k; 65536]));
        }
        let rest = (1 << 20) - 16 * 7 - 15 * 65536;
        n.entry
            .xattrs
            .insert("user.15".into(), B64.encode(vec![15; rest]));
        let bytes = encode(std::slice::from_ref(&n), CHUNK).unwrap().to_vec();
        decode(&bytes, 1, 0, CHUNK, &Unmetered).unwrap();
        // One byte more is refused, by the encoder and by the decoder.
        let mut more = n.clone();
        more.entry.xattrs.insert("user.16".into(), String::new());
        let e = encode(&[more], CHUNK).unwrap_err();
        assert_eq!(
            e,
            EntriesError::Unrepresentable("entry 0: its xattrs are over 1 MiB in all".into())
        );
        let mut grown = bytes.clone();
        let len = grown.len() - rest - 4;
        grown[len..len + 4].copy_from_slice(&(rest as u32 + 1).to_le_bytes());
        grown.push(0);
        let e = decode(&grown, 1, 0, CHUNK, &Unmetered).unwrap_err();
        assert_eq!(
            e.to_string(),
            "seek index entries: entry 0: xattrs are over 1 MiB in all"
        );
    }

    #[test]
    fn counts_must_match_the_bytes() {
        let bytes = encode(&table(), CHUNK).unwrap();
        let e = decode(&bytes, u32::MAX, TOTAL, CHUNK, &Unmetered).unwrap_err();
        assert!(e.to_string().contains("entries, more than 1048576"), "{e}");
        let e = decode(&bytes, 1 << 20, TOTAL, CHUNK, &Unmetered).unwrap_err();
        assert_eq!(
            e.to_string(),
            "seek index entries: 1048576 entries do not fit in the entries section"
        );
        let e = decode(&bytes, 6, TOTAL, CHUNK, &Unmetered).unwrap_err();
        assert!(e.to_string().contains("entries do not fit"), "{e}");
        let e = decode(&bytes[..bytes.len() - 1], 5, TOTAL, CHUNK, &Unmetered).unwrap_err();
        assert!(
            e.to_string()
                .contains("entry 4: xattr count runs past the entries section's end"),
            "{e}"
        );
        let e = decode(&bytes, 4, TOTAL, CHUNK, &Unmetered).unwrap_err();
        assert!(e.to_string().ends_with("bytes after the last entry"), "{e}");
        let mut more = bytes.to_vec();
        more.push(0);
        let e = decode(&more, 5, TOTAL, CHUNK, &Unmetered).unwrap_err();
        assert_eq!(
            e.to_string(),
            "seek index entries: 1 bytes after the last entry"
        );
        // No chunk size, or one too small to number the stream's chunks.
        assert!(decode(&bytes, 5, TOTAL, 0, &Unmetered).is_err());
        assert!(decode(&bytes, 5, u64::MAX, 1, &Unmetered).is_err());
    }

    #[test]
    fn a_table_past_the_budget_is_refused() {
        let t = table();
        let bytes = encode(&t, CHUNK).unwrap();
        let all: u64 = t.iter().map(node_bytes).sum();
        let meter = Budget(all - 1, AtomicU64::new(0));
        assert_eq!(
            decode(&bytes, 5, TOTAL, CHUNK, &meter).unwrap_err(),
            EntriesError::NoRoom { entries: 5 }
        );
        let meter = Budget(0, AtomicU64::new(0));
        let e = decode(&bytes, 5, TOTAL, CHUNK, &meter).unwrap_err();
        assert_eq!(e, EntriesError::NoRoom { entries: 1 });
        assert!(e.to_string().contains("(1 entries) does not fit"), "{e}");
        let meter = Budget(all, AtomicU64::new(0));
        decode(&bytes, 5, TOTAL, CHUNK, &meter).unwrap();
    }

    #[test]
    fn what_the_format_cannot_hold_is_refused_by_number() {
        let refused = |n: Node| -> String {
            let mut t = table();
            t.push(n);
            let e = encode(&t, CHUNK).unwrap_err();
            assert!(matches!(e, EntriesError::Unrepresentable(_)), "{e:?}");
            let e = e.to_string();
            assert!(e.starts_with("seek index entries: entry 5: "), "{e}");
            e
        };
        let mut n = node("z", "fifo");
        n.entry.uid = 1 << 32;
        assert!(refused(n).contains("uid does not fit"));
        let mut n = node("z", "fifo");
        n.entry.gid = u64::MAX;
        assert!(refused(n).contains("gid does not fit"));
        let mut n = node("z", "fifo");
        for k in 0..1025 {
            n.entry.xattrs.insert(format!("user.{k}"), String::new());
        }
        assert!(refused(n).contains("more than 1024 xattrs"));
        assert!(refused(node(&"z".repeat(4097), "fifo")).contains("name is over 4096"));
        assert!(refused(node("z/../y", "fifo")).contains("name is not clean"));
        let mut n = node("z", "symlink");
        n.entry.link_name = "t".repeat(4097);
        assert!(refused(n).contains("link target is over 4096"));
        let mut n = node("z", "fifo");
        n.entry.xattrs.insert("k".repeat(256), String::new());
        assert!(refused(n).contains("xattr key is empty or over 255"));
        let mut n = node("z", "fifo");
        n.entry.xattrs.insert(String::new(), String::new());
        assert!(refused(n).contains("xattr key is empty"));
        let mut n = node("z", "fifo");
        n.entry
            .xattrs
            .insert("user.k".into(), B64.encode(vec![0; 65537]));
        assert!(refused(n).contains("xattr value is over 65536"));
        let mut n = node("z", "fifo");
        n.entry.xattrs.insert("user.k".into(), "not base64!".into());
        assert!(refused(n).contains("not base64"));
        let mut n = node("z", "fifo");
        n.entry.user_name = "u".repeat(256);
        assert!(refused(n).contains("user name is over 255"));
        let mut n = node("z", "char");
        n.entry.dev_minor = 1 << 32;
        assert!(refused(n).contains("device minor is over 32 bits"));
        let mut n = node("z", "fifo");
        n.entry.dev_major = 1;
        assert!(refused(n).contains("device numbers but is no device"));
        assert!(refused(node("z", "sparse")).contains("kind is not one"));
        let mut n = node("z", "fifo");
        n.entry.mod_time = "2019-08-20T10:30:43.5Z".into();
        assert!(refused(n).contains("modification time"));
        let mut n = node("z", "fifo");
        n.entry.mod_time = rfc3339(0);
        assert!(refused(n).contains("modification time"));
        let mut n = node("z", "fifo");
        n.entry.chunk_digest = "sha256:x".into();
        assert!(refused(n).contains("TOC chunk fields"));
        // Extents that are not the file's one run of the stream.
        let mut n = file("z", 4000, 10);
        n.extents[0].len = 9;
        assert!(refused(n).contains("extents are not its size"));
        let mut n = file("z", 4000, 10);
        n.extents.clear();
        assert!(refused(n).contains("extents are not its size"));
        let mut n = file("z", 1000, 10);
        assert!(refused(n.clone()).contains("data offset is before"));
        n.entry.size = 0;
        assert!(refused(n).contains("extents are not its size"));
        let mut n = node("z", "dir");
        n.entry.size = 3;
        assert!(refused(n).contains("size is not 0"));
        assert!(encode(&table(), 0).is_err());
    }

    /// xorshift64*: a fixed sequence, so a failure repeats.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    /// Mutated and random tables never panic; every refusal is one line,
    /// and whatever is accepted is the one encoding of what it decodes to.
    #[test]
    fn mutated_tables_are_refused_or_canonical_never_a_panic() {
        let tar = layer_tar();
        let (nodes, total) = walked(&tar);
        let base = encode(&nodes, CHUNK).unwrap().to_vec();
        let mut rng = Rng(0x5eed_1dea_u64);
        let mut accepted = 0;
        for round in 0..4000 {
            let mut b = base.clone();
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(b.len());
                match rng.below(6) {
                    0 | 1 => b[at] = rng.next() as u8,
                    2 => b[at] ^= 1 << rng.below(8),
                    3 => b.truncate(at),
                    4 => {
                        let n = rng.below(16);
                        b.splice(at..at, (0..n).map(|_| rng.next() as u8));
                    }
                    _ => {
                        let end = (at + rng.below(64)).min(b.len());
                        b.drain(at..end);
                    }
                }
                if b.is_empty() {
                    b.push(1);
                }
            }
            if round % 10 == 0 {
                b = (0..rng.below(600)).map(|_| rng.next() as u8).collect();
            }
            let count = match rng.below(4) {
                0 => rng.next() as u32,
                1 => nodes.len() as u32 + 1,
                _ => nodes.len() as u32,
            };
            let meter = Budget(rng.next() % (1 << 20), AtomicU64::new(0));
            match decode(&b, count, total, CHUNK, &meter) {
                Ok(back) => {
                    accepted += 1;
                    assert_eq!(*encode(&back, CHUNK).unwrap(), b[..], "round {round}");
                }
                Err(e) => assert!(!e.to_string().contains('\n'), "{e}"),
            }
        }
        assert!(
            accepted > 100,
            "{accepted} accepted: the mutations are too blunt"
        );
    }
}

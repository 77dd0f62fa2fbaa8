//! Tar entry metadata as the TOC records it: PAX records and GNU long names
//! folded into the entry they precede, names cleaned so no entry can point
//! outside the layer. Shared by the eStargz writer and the stream index.

use std::collections::BTreeMap;
use std::io::{self, Read};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use zeroize::Zeroizing;

use super::estargz::toc::{TocEntry, rfc3339};

/// Most extension data (PAX records, GNU long names: names, xattrs) we
/// accept for one entry, all its extension headers together.
pub const MAX_EXTENSION: u64 = 1 << 20;

/// A tar stream's source, whose own errors stay told apart from the tar
/// parser's: the parser's quote the entry's name (`… when getting size for
/// NAME`), and names are plaintext. See [`walk_error`].
pub struct Source<R>(pub R);

impl<R: Read> Read for Source<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0
            .read(buf)
            .map_err(|e| io::Error::new(e.kind(), FromSource(e)))
    }
}

impl<R> Source<R> {
    pub fn into_inner(self) -> R {
        self.0
    }
}

/// An error of the reader under a [`Source`].
#[derive(Debug)]
struct FromSource(io::Error);

impl std::fmt::Display for FromSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for FromSource {}

/// An error met while walking a tar stream read through a [`Source`]
/// (with this module's help): the source's own error as it was, one of
/// ours as it is, and for one of the tar parser's (which may quote an
/// entry's name) a text of our own that names none.
pub fn walk_error(e: io::Error) -> io::Error {
    let kind = e.kind();
    if e.get_ref().is_some_and(|i| i.is::<Own>()) {
        return e;
    }
    if let Some(Ok(src)) = e.into_inner().map(|i| i.downcast::<FromSource>()) {
        return src.0;
    }
    match kind {
        io::ErrorKind::UnexpectedEof => bad("the archive is truncated".into()),
        _ => bad("an entry header is malformed".into()),
    }
}

/// PAX records or GNU long names that apply to the next real entry.
#[derive(Default)]
pub struct Pending {
    path: Option<String>,
    link: Option<String>,
    uid: Option<u64>,
    gid: Option<u64>,
    mtime: Option<u64>,
    uname: Option<String>,
    gname: Option<String>,
    size: Option<u64>,
    xattrs: BTreeMap<String, String>,
    /// Extension bytes read for the next entry so far.
    read: u64,
}

/// Whether a header only carries metadata for the next entry.
pub fn is_extension(kind: tar::EntryType) -> bool {
    matches!(
        kind,
        tar::EntryType::XHeader
            | tar::EntryType::XGlobalHeader
            | tar::EntryType::GNULongName
            | tar::EntryType::GNULongLink
    )
}

impl Pending {
    /// Reads an extension entry's payload (`size` bytes from `r`), folds it
    /// in, and returns the payload.
    pub fn absorb<R: Read>(
        &mut self,
        kind: tar::EntryType,
        size: u64,
        r: R,
    ) -> io::Result<Zeroizing<Vec<u8>>> {
        if size > MAX_EXTENSION {
            return Err(bad(format!(
                "extension header of {size} bytes is too large (limit {MAX_EXTENSION})"
            )));
        }
        // Each header is bounded, and so are all of one entry's together:
        // xattrs accumulate across headers.
        self.read += size;
        if self.read > MAX_EXTENSION {
            return Err(bad(format!(
                "extension headers of one entry exceed {MAX_EXTENSION} bytes"
            )));
        }
        // Names and xattrs of the layer: plaintext, wiped after use (the
        // capacity is exact, so reading does not move it).
        let mut data = Zeroizing::new(Vec::with_capacity(size as usize));
        r.take(size).read_to_end(&mut data)?;
        match kind {
            tar::EntryType::XHeader => self.parse_pax(&data)?,
            tar::EntryType::GNULongName => self.path = Some(c_string(&data)),
            tar::EntryType::GNULongLink => self.link = Some(c_string(&data)),
            _ => {}
        }
        Ok(data)
    }

    /// The TOC entry for the real entry `h` these extensions precede (chunk
    /// fields left empty); resets the extensions.
    pub fn entry(&mut self, h: &tar::Header) -> io::Result<TocEntry> {
        let p = std::mem::take(self);
        let size = h.entry_size()?;
        if h.entry_type() == tar::EntryType::GNUSparse {
            return Err(bad("sparse tar entries are not supported".into()));
        }
        if p.size.is_some_and(|s| s != size) {
            return Err(bad("PAX size overrides are not supported".into()));
        }
        let raw_name = p
            .path
            .clone()
            .unwrap_or_else(|| String::from_utf8_lossy(&h.path_bytes()).into_owned());
        toc_entry(h, &p, clean(&raw_name))
    }

    /// Parses PAX records (`LEN KEY=VALUE\n`).
    fn parse_pax(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let sp = data
                .iter()
                .position(|&b| b == b' ')
                .ok_or_else(|| bad("malformed PAX record".into()))?;
            let len: usize = std::str::from_utf8(&data[..sp])
                .ok()
                .and_then(|s| s.parse().ok())
                .filter(|&l| l > sp + 1 && l <= data.len())
                .ok_or_else(|| bad("malformed PAX record length".into()))?;
            let rec = &data[sp + 1..len - 1];
            data = &data[len..];
            let Some(eq) = rec.iter().position(|&b| b == b'=') else {
                continue;
            };
            let (k, v) = (
                String::from_utf8_lossy(&rec[..eq]).into_owned(),
                &rec[eq + 1..],
            );
            // As Go's archive/tar: a NUL would cut a name short where the
            // kernel reads it, so the record is malformed, not truncated.
            let names = ["path", "linkpath", "uname", "gname"];
            if k.contains('\0') || (names.contains(&k.as_str()) && v.contains(&0)) {
                return Err(bad("PAX record holds a NUL byte".into()));
            }
            let text = || String::from_utf8_lossy(v).into_owned();
            let num = || text().split('.').next().and_then(|s| s.parse::<u64>().ok());
            match k.as_str() {
                "path" => self.path = Some(text()),
                "linkpath" => self.link = Some(text()),
                "uid" => self.uid = num(),
                "gid" => self.gid = num(),
                "mtime" => self.mtime = num(),
                "uname" => self.uname = Some(text()),
                "gname" => self.gname = Some(text()),
                "size" => self.size = num(),
                _ => {
                    if let Some(x) = k.strip_prefix("SCHILY.xattr.") {
                        self.xattrs.insert(x.to_string(), B64.encode(v));
                    }
                }
            }
        }
        Ok(())
    }
}

fn toc_entry(h: &tar::Header, p: &Pending, name: String) -> io::Result<TocEntry> {
    use tar::EntryType as T;
    let (kind, type_bits) = match h.entry_type() {
        T::Regular | T::Continuous => ("reg", 0o100000),
        T::Directory => ("dir", 0o040000),
        T::Symlink => ("symlink", 0o120000),
        T::Link => ("hardlink", 0o100000),
        T::Char => ("char", 0o020000),
        T::Block => ("block", 0o060000),
        T::Fifo => ("fifo", 0o010000),
        other => {
            return Err(bad(format!(
                "unsupported tar entry type {:?}",
                other.as_byte() as char
            )));
        }
    };
    let link = p.link.clone().or_else(|| {
        h.link_name_bytes()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
    });
    let mut e = TocEntry {
        name,
        kind: kind.into(),
        size: if kind == "reg" { h.entry_size()? } else { 0 },
        // Blank numeric fields read as 0, as Go's archive/tar reads them.
        mode: (h.mode().unwrap_or(0) & 0o7777) | type_bits,
        uid: p.uid.unwrap_or_else(|| h.uid().unwrap_or(0)),
        gid: p.gid.unwrap_or_else(|| h.gid().unwrap_or(0)),
        user_name: p
            .uname
            .clone()
            .or_else(|| h.username().ok().flatten().map(str::to_string))
            .unwrap_or_default(),
        group_name: p
            .gname
            .clone()
            .or_else(|| h.groupname().ok().flatten().map(str::to_string))
            .unwrap_or_default(),
        xattrs: p.xattrs.clone(),
        ..Default::default()
    };
    let mtime = p.mtime.unwrap_or_else(|| h.mtime().unwrap_or(0));
    if mtime > 0 {
        e.mod_time = rfc3339(mtime);
    }
    if matches!(kind, "symlink" | "hardlink") {
        e.link_name = link
            .map(|l| if kind == "hardlink" { clean(&l) } else { l })
            .unwrap_or_default();
    }
    if matches!(kind, "char" | "block") {
        e.dev_major = h.device_major().ok().flatten().unwrap_or(0).into();
        e.dev_minor = h.device_minor().ok().flatten().unwrap_or(0).into();
    }
    Ok(e)
}

/// `./a/b/` → `a/b`, and `../../x` or `/x` → `x`: names as the TOC stores
/// them, never above the layer root.
pub fn clean(name: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in name.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    parts.join("/")
}

fn c_string(data: &[u8]) -> String {
    let end = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    String::from_utf8_lossy(&data[..end]).into_owned()
}

fn bad(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, Own(format!("tar: {msg}")))
}

/// One of our own errors, which name no entry: [`walk_error`] keeps it.
#[derive(Debug)]
struct Own(String);

impl std::fmt::Display for Own {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Own {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::testing::pax;

    #[test]
    fn names_are_cleaned() {
        assert_eq!(clean("./a/b/"), "a/b");
        assert_eq!(clean("/a/../../b"), "b");
        assert_eq!(clean("./"), "");
    }

    /// A ustar header whose name and link name are these raw bytes.
    fn header(name: &[u8], link: &[u8], kind: tar::EntryType) -> tar::Header {
        let mut h = tar::Header::new_ustar();
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
        h.set_entry_type(kind);
        h.set_size(0);
        h.set_mode(0o644);
        h.set_cksum();
        h
    }

    #[test]
    fn hostile_tar_names_stay_inside_the_layer() {
        use tar::EntryType::{Link, Regular, Symlink};
        for (raw, want) in [
            ("../escape", "escape"),
            ("/abs", "abs"),
            ("a/./b", "a/b"),
            ("a//b", "a/b"),
            ("a/../../../b", "b"),
            ("..", ""),
        ] {
            let e = Pending::default()
                .entry(&header(raw.as_bytes(), b"", Regular))
                .unwrap();
            assert_eq!(e.name, want, "{raw}");
        }
        let e = Pending::default()
            .entry(&header(b"h", b"../../etc//passwd", Link))
            .unwrap();
        assert_eq!(e.link_name, "etc/passwd");
        // A symlink's target is content, resolved in the container's root.
        let e = Pending::default()
            .entry(&header(b"s", b"../../etc/passwd", Symlink))
            .unwrap();
        assert_eq!(e.link_name, "../../etc/passwd");

        // PAX names are cleaned the same way.
        let mut p = Pending::default();
        let rec = pax(&[("path", b"/../x/./y"), ("linkpath", b"/../../t")]);
        p.absorb(tar::EntryType::XHeader, rec.len() as u64, &rec[..])
            .unwrap();
        let e = p.entry(&header(b"ignored", b"", Link)).unwrap();
        assert_eq!((e.name.as_str(), e.link_name.as_str()), ("x/y", "t"));
    }

    #[test]
    fn a_lying_extension_size_is_refused_before_anything_is_allocated() {
        // A PAX header claiming 2^62 bytes: refused up front (reserving
        // that much would abort the process).
        let e = Pending::default()
            .absorb(tar::EntryType::XHeader, 1 << 62, &b""[..])
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "tar: extension header of {} bytes is too large (limit {MAX_EXTENSION})",
                1u64 << 62
            )
        );
        assert!(
            Pending::default()
                .absorb(tar::EntryType::GNULongName, u64::MAX, &b""[..])
                .is_err()
        );
    }

    #[test]
    fn extension_headers_of_one_entry_are_bounded_together() {
        // Many PAX headers, each under the limit, all adding xattrs to the
        // same entry: the one that takes the total over is refused.
        let value = vec![b'x'; 300 << 10];
        let mut p = Pending::default();
        let mut refused = None;
        for i in 0..8 {
            let rec = pax(&[(format!("SCHILY.xattr.user.{i}").as_str(), &value[..])]);
            if let Err(e) = p.absorb(tar::EntryType::XHeader, rec.len() as u64, &rec[..]) {
                refused = Some((i, e.to_string()));
                break;
            }
        }
        assert_eq!(
            refused,
            Some((
                3,
                format!("tar: extension headers of one entry exceed {MAX_EXTENSION} bytes")
            ))
        );
        // The budget is per entry: the next entry starts afresh.
        let mut p = Pending::default();
        let rec = pax(&[("SCHILY.xattr.user.a", &value[..])]);
        for _ in 0..4 {
            p.absorb(tar::EntryType::XHeader, rec.len() as u64, &rec[..])
                .unwrap();
            p.entry(&header(b"f", b"", tar::EntryType::Regular))
                .unwrap();
        }
    }

    #[test]
    fn a_nul_in_a_pax_name_is_refused_without_naming_it() {
        for rec in [
            pax(&[("path", b"secret\0name")]),
            pax(&[("linkpath", b"secret\0name")]),
            pax(&[("SCHILY.xattr.user.a\0secret", b"v")]),
        ] {
            let e = Pending::default()
                .absorb(tar::EntryType::XHeader, rec.len() as u64, &rec[..])
                .unwrap_err();
            assert_eq!(e.to_string(), "tar: PAX record holds a NUL byte");
        }
        // Elsewhere a NUL is only a byte of the value.
        let rec = pax(&[("SCHILY.xattr.user.a", b"v\0w")]);
        let mut p = Pending::default();
        p.absorb(tar::EntryType::XHeader, rec.len() as u64, &rec[..])
            .unwrap();
        let e = p
            .entry(&header(b"f", b"", tar::EntryType::Regular))
            .unwrap();
        assert_eq!(e.xattrs["user.a"], B64.encode(b"v\0w"));
    }
}

//! The eStargz footer: an empty gzip member whose Extra field holds the TOC
//! offset as `%016xSTARGZ`.

/// The footer's length in bytes.
pub const FOOTER_SIZE: usize = 51;

/// The footer pointing at a TOC that starts at `toc_offset`.
pub fn encode(toc_offset: u64) -> [u8; FOOTER_SIZE] {
    let mut f = [0u8; FOOTER_SIZE];
    // gzip header with FEXTRA, no mtime, OS unknown (as Go writes it).
    f[..10].copy_from_slice(&[0x1f, 0x8b, 0x08, 0x04, 0, 0, 0, 0, 0, 0xff]);
    f[10..12].copy_from_slice(&26u16.to_le_bytes());
    f[12..14].copy_from_slice(b"SG");
    f[14..16].copy_from_slice(&22u16.to_le_bytes());
    f[16..38].copy_from_slice(format!("{toc_offset:016x}STARGZ").as_bytes());
    // An empty final stored deflate block, then CRC32 = 0 and ISIZE = 0.
    f[38..43].copy_from_slice(&[0x01, 0x00, 0x00, 0xff, 0xff]);
    f
}

/// The TOC offset a footer points at, if it is an eStargz footer.
pub fn decode(f: &[u8]) -> Result<u64, String> {
    if f.len() != FOOTER_SIZE {
        return Err(format!("footer has {} bytes, want {FOOTER_SIZE}", f.len()));
    }
    if f[0..3] != [0x1f, 0x8b, 0x08] || f[3] & 0x04 == 0 {
        return Err("footer is not a gzip header with an Extra field".into());
    }
    if u16::from_le_bytes([f[10], f[11]]) != 26
        || &f[12..14] != b"SG"
        || u16::from_le_bytes([f[14], f[15]]) != 22
    {
        return Err("footer Extra field is not an eStargz subfield".into());
    }
    if &f[32..38] != b"STARGZ" {
        return Err("footer lacks the STARGZ magic".into());
    }
    let hex =
        std::str::from_utf8(&f[16..32]).map_err(|_| "footer offset is not hex".to_string())?;
    u64::from_str_radix(hex, 16).map_err(|_| "footer offset is not hex".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn footer_roundtrips_and_is_an_empty_gzip_member() {
        let f = encode(0x1234_5678_9abc);
        assert_eq!(decode(&f).unwrap(), 0x1234_5678_9abc);
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&f[..])
            .read_to_end(&mut out)
            .unwrap();
        assert!(out.is_empty());
        let mut bad = f;
        bad[33] = b'x';
        assert!(decode(&bad).is_err());
        assert!(decode(&f[..50]).is_err());
    }
}

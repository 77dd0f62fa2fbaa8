//! The TOC (`stargz.index.json`): field names as the eStargz spec gives them.

use std::collections::BTreeMap;

use serde::de::{IgnoredAny, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

/// Most entries (files and chunks) a TOC may list. Each costs about half a
/// KiB once parsed, so this bounds a TOC's memory to about 0.5 GiB; a TOC at
/// the size limit ([`super::reader::MAX_TOC`]) of real entries holds fewer.
pub const MAX_TOC_ENTRIES: usize = 1 << 20;

/// The whole TOC.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Toc {
    pub version: u32,
    /// At most [`MAX_TOC_ENTRIES`] + 1 are kept while parsing, so a TOC of
    /// more is told apart without holding them all.
    #[serde(deserialize_with = "bounded_entries")]
    pub entries: Vec<TocEntry>,
}

/// Keeps the first [`MAX_TOC_ENTRIES`] + 1 entries and only skips the rest.
fn bounded_entries<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<TocEntry>, D::Error> {
    struct Bounded;
    impl<'de> Visitor<'de> for Bounded {
        type Value = Vec<TocEntry>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a list of TOC entries")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while out.len() <= MAX_TOC_ENTRIES {
                match seq.next_element()? {
                    Some(e) => out.push(e),
                    None => return Ok(out),
                }
            }
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok(out)
        }
    }
    d.deserialize_seq(Bounded)
}

/// One tar entry, or one chunk of a regular file.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct TocEntry {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub size: u64,
    #[serde(default, rename = "modtime", skip_serializing_if = "String::is_empty")]
    pub mod_time: String,
    #[serde(default, rename = "linkName", skip_serializing_if = "String::is_empty")]
    pub link_name: String,
    #[serde(default)]
    pub mode: u32,
    #[serde(default)]
    pub uid: u64,
    #[serde(default)]
    pub gid: u64,
    #[serde(default, rename = "userName", skip_serializing_if = "String::is_empty")]
    pub user_name: String,
    #[serde(
        default,
        rename = "groupName",
        skip_serializing_if = "String::is_empty"
    )]
    pub group_name: String,
    #[serde(default, rename = "devMajor", skip_serializing_if = "is_zero")]
    pub dev_major: u64,
    #[serde(default, rename = "devMinor", skip_serializing_if = "is_zero")]
    pub dev_minor: u64,
    /// Values are base64, as Go encodes `[]byte`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub xattrs: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub digest: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub offset: u64,
    #[serde(default, rename = "chunkOffset", skip_serializing_if = "is_zero")]
    pub chunk_offset: u64,
    #[serde(default, rename = "chunkSize", skip_serializing_if = "is_zero")]
    pub chunk_size: u64,
    #[serde(
        default,
        rename = "chunkDigest",
        skip_serializing_if = "String::is_empty"
    )]
    pub chunk_digest: String,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// Unix seconds as RFC 3339 UTC (`2019-08-20T10:30:43Z`), as the TOC stores times.
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The Unix seconds [`rfc3339`] writes as `s`; `None` for any other text
/// (fractions, zone offsets, other spellings of the same time): its strict
/// inverse, for formats that store the seconds.
pub fn unix_secs(s: &str) -> Option<u64> {
    let (date, time) = s.strip_suffix('Z')?.split_once('T')?;
    let mut d = date.rsplitn(3, '-');
    let (day, month, year) = (d.next()?, d.next()?, d.next()?);
    let mut t = time.split(':');
    let (h, m, sec) = (t.next()?, t.next()?, t.next()?);
    // Years of up to 13 digits cover every u64 of seconds and keep the
    // arithmetic below far from overflowing.
    let num = |x: &str, digits: usize| -> Option<i128> {
        if x.is_empty() || x.len() > digits || !x.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        x.parse().ok()
    };
    let (y, mo, d) = (num(year, 13)?, num(month, 2)?, num(day, 2)?);
    let (h, m, sec) = (num(h, 2)?, num(m, 2)?, num(sec, 2)?);
    // Days since 1970-01-01 from a civil date (Howard Hinnant's
    // days_from_civil).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((mo + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = u64::try_from(days * 86_400 + h * 3600 + m * 60 + sec).ok()?;
    // Out-of-range fields (month 13, second 60) and unpadded spellings
    // give some time, but not one written the same way.
    (t.next().is_none() && rfc3339(secs) == s).then_some(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_format_as_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_566_297_043), "2019-08-20T10:30:43Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn times_parse_back_exactly_and_nothing_else_does() {
        for secs in [
            0,
            1,
            951_782_400,
            1_566_297_043,
            99_999_999_999,
            u64::MAX / 2,
            u64::MAX,
        ] {
            assert_eq!(unix_secs(&rfc3339(secs)), Some(secs), "{secs}");
        }
        for s in [
            "",
            "garbage",
            "2019-08-20T10:30:43",
            "2019-08-20T10:30:43.5Z",
            "2019-08-20T12:30:43+02:00",
            "2019-8-20T10:30:43Z",
            "2019-02-29T10:30:43Z",
            "2019-08-20T24:00:00Z",
            "2019-08-20T10:30:60Z",
            "2019-13-01T00:00:00Z",
            "1969-12-31T23:59:59Z",
            "02019-08-20T10:30:43Z",
            "+2019-08-20T10:30:43Z",
            "2019-08-20T10:30:43:00Z",
            "99999999999999-01-01T00:00:00Z",
        ] {
            assert_eq!(unix_secs(s), None, "{s}");
        }
    }

    #[test]
    fn entries_use_the_spec_field_names() {
        let e = TocEntry {
            name: "bin/busybox".into(),
            kind: "reg".into(),
            size: 5,
            offset: 126,
            chunk_digest: "sha256:x".into(),
            ..Default::default()
        };
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["type"], "reg");
        assert_eq!(v["chunkDigest"], "sha256:x");
        assert!(v.get("chunkSize").is_none());
        let back: TocEntry = serde_json::from_value(v).unwrap();
        assert_eq!(back, e);
    }
}

//! PAX records and GNU long names folded into the header they precede.
//! Input: one byte choosing the extension's type, then a 512-byte header
//! for the real entry, then the extension's payload.
#![no_main]

use lazycrypt::layer::tarmeta::Pending;
use libfuzzer_sys::fuzz_target;

fn seed(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut h = tar::Header::new_ustar();
    h.set_path("file").unwrap();
    h.set_size(3);
    h.set_mode(0o644);
    h.set_cksum();
    let mut out = vec![kind];
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(payload);
    out
}

fuzz_target!(
    init: lazycrypt_fuzz::write_seeds(|| vec![
        seed(0, b"27 path=var/pax-named-file\n20 SCHILY.xattr.a=b\n"),
        seed(0, b"12 uid=1000\n12 gid=1000\n21 mtime=1566297043.5\n12 size=3\n"),
        seed(1, b"a/very/long/name\0"),
        seed(2, b"../../link/target\0"),
    ]),
    |data: &[u8]| {
        let Some((&kind, rest)) = data.split_first() else { return };
        if rest.len() < 512 {
            return;
        }
        let (header, payload) = rest.split_at(512);
        let kind = match kind % 4 {
            0 => tar::EntryType::XHeader,
            1 => tar::EntryType::GNULongName,
            2 => tar::EntryType::GNULongLink,
            _ => tar::EntryType::XGlobalHeader,
        };
        let mut p = Pending::default();
        if p.absorb(kind, payload.len() as u64, payload).is_ok()
            && let Ok(e) = p.entry(tar::Header::from_byte_slice(header))
        {
            // Names stay inside the layer.
            assert!(!e.name.starts_with('/') && !e.name.split('/').any(|c| c == ".."));
        }
    }
);

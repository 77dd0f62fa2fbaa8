//! What the fuzz targets share: fixed test keys (so the unwrap paths reach
//! their parsers), builders of well-formed inputs for seed corpora, and the
//! code that writes those seeds on a target's first run.
//!
//! `scripts/fuzz.sh` sets `LAZYCRYPT_FUZZ_SEEDS` to a target's corpus
//! directory; [`write_seeds`] (called from each target's `init`) fills it
//! with the target's seeds when it is empty. Nothing large is committed.

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use lazycrypt::cache::chunks::ChunkCache;
use lazycrypt::crypto::keys::{Certificate, PrivateKey, PublicKey};
use lazycrypt::crypto::options::PrivateOptions;
use lazycrypt::layer::estargz::{TOC_NAME, footer};
use lazycrypt::layer::index::Layer;
use lazycrypt::layer::source::MemoryRange;
use lazycrypt::layer::stream::sealed::Scratch;
use lazycrypt::layer::stream::{self, Compression, Plain};
use pgp::composed::{SignedSecretKey, SubkeyParamsBuilder};
use rand::SeedableRng;
use rand::rngs::StdRng;

/// The environment variable naming the directory seeds are written to.
pub const SEEDS_ENV: &str = "LAZYCRYPT_FUZZ_SEEDS";

/// Writes `seeds()` as `seed-NN` files into `$LAZYCRYPT_FUZZ_SEEDS` if it
/// is set and holds no file yet.
pub fn write_seeds(seeds: impl FnOnce() -> Vec<Vec<u8>>) {
    let Some(dir) = std::env::var_os(SEEDS_ENV) else {
        return;
    };
    let dir = Path::new(&dir);
    std::fs::create_dir_all(dir).expect("seed directory");
    if std::fs::read_dir(dir)
        .expect("seed directory")
        .next()
        .is_some()
    {
        return;
    }
    for (i, s) in seeds().into_iter().enumerate() {
        std::fs::write(dir.join(format!("seed-{i:02}")), s).expect("seed file");
    }
}

fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// A fixed 1024-bit RSA key (small, so each fuzz run stays fast).
pub fn rsa_key() -> &'static PrivateKey {
    static K: OnceLock<PrivateKey> = OnceLock::new();
    K.get_or_init(|| {
        PrivateKey::Rsa(Box::new(
            rsa::RsaPrivateKey::new(&mut rng(1), 1024).expect("rsa key"),
        ))
    })
}

/// A fixed P-256 key.
pub fn p256_key() -> &'static PrivateKey {
    static K: OnceLock<PrivateKey> = OnceLock::new();
    K.get_or_init(|| PrivateKey::P256(p256::SecretKey::random(&mut rng(2))))
}

/// The public halves of [`rsa_key`] and [`p256_key`].
pub fn public_keys() -> Vec<PublicKey> {
    let PrivateKey::Rsa(r) = rsa_key() else {
        unreachable!()
    };
    let PrivateKey::P256(p) = p256_key() else {
        unreachable!()
    };
    vec![
        PublicKey::Rsa(Box::new(r.to_public_key()), false),
        PublicKey::P256(p.public_key()),
    ]
}

/// A certificate for [`rsa_key`], as PKCS#7 recipients name it.
pub fn certificate() -> &'static Certificate {
    static C: OnceLock<Certificate> = OnceLock::new();
    C.get_or_init(|| {
        let PrivateKey::Rsa(r) = rsa_key() else {
            unreachable!()
        };
        Certificate {
            // SEQUENCE { SET { "fuzz issuer" } } and INTEGER 7.
            issuer_der: [&[0x30, 13, 0x31, 11][..], b"fuzz issuer"].concat(),
            serial_der: vec![0x02, 1, 7],
            public: r.to_public_key(),
        }
    })
}

/// A fixed OpenPGP key (Ed25519 primary, Curve25519 encryption subkey).
pub fn pgp_key() -> &'static SignedSecretKey {
    static K: OnceLock<SignedSecretKey> = OnceLock::new();
    K.get_or_init(|| {
        use pgp::composed::{EncryptionCaps, KeyType, SecretKeyParamsBuilder};
        use pgp::crypto::ecc_curve::ECCCurve;
        use pgp::types::Timestamp;
        let created = Timestamp::from_secs(1_700_000_000);
        SecretKeyParamsBuilder::default()
            .key_type(KeyType::Ed25519Legacy)
            .can_certify(true)
            .can_sign(true)
            .created_at(created)
            .primary_user_id("fuzz <fuzz@example.com>".into())
            .subkey(
                SubkeyParamsBuilder::default()
                    .key_type(KeyType::ECDH(ECCCurve::Curve25519Legacy))
                    .can_encrypt(EncryptionCaps::All)
                    .created_at(created)
                    .build()
                    .expect("subkey params"),
            )
            .build()
            .expect("key params")
            .generate(rng(3))
            .expect("pgp key")
    })
}

/// Private options as a layer's wrapped keys carry them.
pub fn private_options_json() -> Vec<u8> {
    let mut cipheroptions = std::collections::BTreeMap::new();
    cipheroptions.insert("nonce".to_string(), vec![1u8; 16]);
    let opts = PrivateOptions {
        symkey: vec![2u8; 32],
        digest: format!("sha256:{}", "ab".repeat(32)),
        cipheroptions,
    };
    opts.to_json().to_vec()
}

/// A tar stream of entries of each kind the indexes handle: directories,
/// regular files (one of `big` bytes), a symlink, a hard link, a PAX path
/// with an xattr and a GNU long name.
pub fn sample_tar(big: usize) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_size(0);
    h.set_mode(0o755);
    b.append_data(&mut h, "etc/", &b""[..]).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_size(5);
    h.set_mode(0o644);
    h.set_mtime(1_566_297_043);
    b.append_data(&mut h, "./etc/hello.txt", &b"hello"[..])
        .unwrap();
    let data: Vec<u8> = (0..big).map(|i| (i * 7 % 251) as u8).collect();
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o755);
    b.append_data(&mut h, "bin/tool", &data[..]).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    b.append_link(&mut h, "bin/sh", "tool").unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Link);
    h.set_size(0);
    b.append_link(&mut h, "bin/tool2", "bin/tool").unwrap();
    b.append_pax_extensions([
        ("path", &b"var/a-pax-named-file"[..]),
        ("SCHILY.xattr.user.k", b"v"),
        ("mtime", b"1566297043.5"),
    ])
    .unwrap();
    let mut h = tar::Header::new_ustar();
    h.set_size(3);
    h.set_mode(0o600);
    b.append_data(&mut h, "ignored", &b"pax"[..]).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_size(4);
    h.set_mode(0o600);
    let long = format!("var/{}", "long-name/".repeat(12));
    b.append_data(&mut h, long.trim_end_matches('/'), &b"long"[..])
        .unwrap();
    b.into_inner().unwrap()
}

/// `data` gzip-compressed in one member.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// An eStargz blob of `tar`, as lazycrypt's converter writes it.
pub fn estargz(tar: &[u8]) -> Vec<u8> {
    lazycrypt::layer::estargz::writer::convert(tar, Vec::new(), 4096)
        .unwrap()
        .0
}

/// A TOC member (gzip of a tar entry named `stargz.index.json`) holding `json`.
pub fn toc_member(json: &[u8]) -> Vec<u8> {
    let mut h = tar::Header::new_ustar();
    h.set_path(TOC_NAME).unwrap();
    h.set_size(json.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    let mut tar = h.as_bytes().to_vec();
    tar.extend_from_slice(json);
    tar.resize(tar.len().next_multiple_of(512) + 1024, 0);
    gzip(&tar)
}

/// `chunks` (the blob up to its TOC), a TOC member of `json`, and a footer.
pub fn estargz_with_toc(chunks: &[u8], json: &[u8]) -> Vec<u8> {
    let mut blob = chunks.to_vec();
    blob.extend(toc_member(json));
    blob.extend_from_slice(&footer::encode(chunks.len() as u64));
    blob
}

/// Most chunks a target loads from one layer.
const MAX_LOADS: u32 = 64;

/// Loads the layer's chunks (the first [`MAX_LOADS`]) and reads a little of
/// each regular file: every read either fails or gives verified bytes.
pub fn exercise(layer: &Layer) {
    for c in 0..layer.chunk_count().min(MAX_LOADS) {
        let _ = layer.load_chunk(c);
    }
    for n in layer.nodes().iter().take(64) {
        if n.entry.kind == "reg" {
            let _ = layer.read_file(&n.entry.name, 0, 4096);
        }
    }
}

/// Indexes `blob` as a stream layer and serves it from memory.
pub fn stream_layer(blob: &[u8], compression: Compression) {
    static SCRATCH: OnceLock<tempfile::TempDir> = OnceLock::new();
    let dir = SCRATCH.get_or_init(|| tempfile::tempdir().expect("scratch dir"));
    // Budgets as a node has them, small enough that a bomb meets them.
    let scratch = Scratch::new(dir.path().into(), 256 << 20);
    let cache = ChunkCache::new(64 << 20, 0);
    let reserved = cache.reservation();
    let Ok(idx) = stream::index(blob, compression, &scratch, "L", &reserved) else {
        return;
    };
    let src = Arc::new(MemoryRange::new(blob.to_vec()));
    if let Ok(l) = stream::layer(idx, Plain::new(src, None), "L") {
        exercise(&l);
    }
}

//! Latency of one random 4 KiB read through a mounted layer (FUSE, as root):
//! the file's chunks are in lazycrypt's memory cache, and the read bypasses
//! the kernel's page cache (O_DIRECT), so each one is a FUSE round trip plus
//! a copy out of a cached chunk.

use std::io::Read;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::sync::Arc;

#[path = "../tests/common/data.rs"]
mod data;

use criterion::{Criterion, criterion_group, criterion_main};
use lazycrypt::cache::chunks::ChunkCache;
use lazycrypt::crypto::cipher::LayerKey;
use lazycrypt::layer::estargz::lazy::{Anchor, open};
use lazycrypt::layer::estargz::writer::convert;
use lazycrypt::layer::source::MemoryRange;
use lazycrypt::mount::layer::LayerMount;

const SIZE: usize = 64 << 20;

fn bench(c: &mut Criterion) {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("fuse/random_4k_read needs root (FUSE mounts); not measured");
        return;
    }
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(SIZE as u64);
    h.set_mode(0o644);
    b.append_data(&mut h, "data.bin", &data::noise(SIZE)[..])
        .unwrap();
    let (blob, converted) = convert(&b.into_inner().unwrap()[..], Vec::new(), 1 << 20).unwrap();
    let key = LayerKey::generate();
    let mut ct = Vec::new();
    key.encrypt_reader(std::io::Cursor::new(blob), None)
        .0
        .read_to_end(&mut ct)
        .unwrap();
    let layer = open(
        Arc::new(MemoryRange::new(ct)),
        Some(LayerKey::from_options(&key.to_options(String::new()))),
        &Anchor::Toc(converted.toc_digest),
        "bench",
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cache = Arc::new(ChunkCache::new(256 << 20, 2));
    let reserved = Arc::new(cache.reservation());
    let m = LayerMount::new(
        Arc::new(layer),
        reserved,
        cache,
        dir.path(),
        lazycrypt::fs::ReadAhead::Kib(4096),
    )
    .unwrap();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(dir.path().join("data.bin"))
        .unwrap();
    // An aligned buffer, as O_DIRECT wants.
    let mut buf = vec![0u8; 8192];
    let at = buf.as_ptr().align_offset(4096);
    let page = &mut buf[at..at + 4096];
    // Every chunk into the memory cache first.
    for off in (0..SIZE as u64).step_by(1 << 20) {
        f.read_exact_at(page, off).unwrap();
    }
    let mut x = 0x9e3779b97f4a7c15u64;
    let pages = (SIZE / 4096) as u64;
    c.bench_function("fuse/random_4k_read", |b| {
        b.iter(|| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            f.read_exact_at(page, (x % pages) * 4096).unwrap();
        })
    });
    drop(f);
    m.unmount().unwrap();
}

criterion_group!(benches, bench);
criterion_main!(benches);

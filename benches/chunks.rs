//! The chunk pipeline per MiB: fetch from a local source, decrypt (CTR at
//! the chunk's offset), inflate and verify — for an encrypted eStargz chunk
//! (incompressible and text) and for a stream-indexed tar.gz chunk.

use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;

#[path = "../tests/common/data.rs"]
mod data;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use lazycrypt::crypto::cipher::LayerKey;
use lazycrypt::layer::estargz::lazy::{Anchor, open};
use lazycrypt::layer::estargz::writer::convert;
use lazycrypt::layer::index::{Layer, Unmetered};
use lazycrypt::layer::source::MemoryRange;
use lazycrypt::layer::stream::sealed::Scratch;
use lazycrypt::layer::stream::{self, Compression, Plain};

use data::noise;

fn text(n: usize) -> Vec<u8> {
    let words = [
        "lazy", "crypt", "chunk", "verify", "decrypt", "overlay", "layer",
    ];
    let mut out = Vec::with_capacity(n + 100);
    let mut x = 7u64;
    while out.len() < n {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        write!(
            out,
            "{} {} ",
            words[(x >> 33) as usize % words.len()],
            x >> 50
        )
        .unwrap();
    }
    out.truncate(n);
    out
}

fn tar_of(files: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, name, &data[..]).unwrap();
    }
    b.into_inner().unwrap()
}

fn encrypted_estargz(tar: &[u8]) -> Layer {
    let (blob, c) = convert(tar, Vec::new(), 1 << 20).unwrap();
    let key = LayerKey::generate();
    let mut ct = Vec::new();
    key.encrypt_reader(std::io::Cursor::new(blob), None)
        .0
        .read_to_end(&mut ct)
        .unwrap();
    let key = LayerKey::from_options(&key.to_options(String::new()));
    open(
        Arc::new(MemoryRange::new(ct)),
        Some(key),
        &Anchor::Toc(c.toc_digest),
        "bench",
    )
    .unwrap()
}

fn stream_gzip(tar: &[u8]) -> Layer {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(tar).unwrap();
    let gz = e.finish().unwrap();
    let key = LayerKey::generate();
    let mut ct = gz.clone();
    key.apply_at(0, &mut ct);
    let nowhere = Scratch::new("/nonexistent".into(), u64::MAX);
    let idx = stream::index(&gz[..], Compression::Gzip, &nowhere, "bench", &Unmetered).unwrap();
    stream::layer(
        idx,
        Plain::new(Arc::new(MemoryRange::new(ct)), Some(key)),
        "bench",
    )
    .unwrap()
}

/// A zstd layer: served from its sealed scratch copy.
fn stream_zstd(tar: &[u8], scratch: &Path) -> Layer {
    let zst = zstd::encode_all(tar, 3).unwrap();
    let scratch = Scratch::new(scratch.into(), u64::MAX);
    let idx = stream::index(&zst[..], Compression::Zstd, &scratch, "bench", &Unmetered).unwrap();
    stream::layer(
        idx,
        Plain::new(Arc::new(MemoryRange::new(zst)), None),
        "bench",
    )
    .unwrap()
}

/// The chunk holding the middle of file `name`.
fn middle_chunk(l: &Layer, name: &str) -> u32 {
    let n = l.nodes().iter().find(|n| n.entry.name == name).unwrap();
    n.extents[n.extents.len() / 2].chunk
}

fn bench(c: &mut Criterion) {
    let tar = tar_of(&[("noise.bin", noise(16 << 20)), ("text.txt", text(16 << 20))]);
    let esgz = encrypted_estargz(&tar);
    let gz = stream_gzip(&tar);
    let scratch = std::env::temp_dir();
    let zst = stream_zstd(&tar, &scratch);
    let mut g = c.benchmark_group("chunk");
    g.throughput(Throughput::Bytes(1 << 20));
    g.sample_size(30);
    for (label, layer, file) in [
        ("estargz_noise", &esgz, "noise.bin"),
        ("estargz_text", &esgz, "text.txt"),
        ("stream_gzip_noise", &gz, "noise.bin"),
        ("stream_gzip_text", &gz, "text.txt"),
        ("stream_zstd_text", &zst, "text.txt"),
    ] {
        let k = middle_chunk(layer, file);
        g.bench_function(label, |b| b.iter(|| layer.load_chunk(k).unwrap()));
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

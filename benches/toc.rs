//! Opening an encrypted eStargz layer of 100,000 files (fetch and decrypt
//! the footer and TOC, inflate it, check its digest against the anchor,
//! parse the JSON, index the entries), then building its FUSE tree. A mount
//! pays both once per layer before its first file can be read.

use std::io::Read;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use lazycrypt::crypto::cipher::LayerKey;
use lazycrypt::fs::tree::Tree;
use lazycrypt::layer::estargz::lazy::{Anchor, open};
use lazycrypt::layer::estargz::writer::convert;
use lazycrypt::layer::source::MemoryRange;

const FILES: usize = 100_000;

fn bench(c: &mut Criterion) {
    let mut b = tar::Builder::new(Vec::new());
    for i in 0..FILES {
        let mut h = tar::Header::new_gnu();
        let data = format!("file {i}\n");
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        let name = format!("usr/lib/pkg{:03}/mod{i:06}.py", i % 500);
        b.append_data(&mut h, name, data.as_bytes()).unwrap();
    }
    let tar = b.into_inner().unwrap();
    let (blob, converted) = convert(&tar[..], Vec::new(), 1 << 20).unwrap();
    let key = LayerKey::generate();
    let mut ct = Vec::new();
    key.encrypt_reader(std::io::Cursor::new(blob), None)
        .0
        .read_to_end(&mut ct)
        .unwrap();
    let src = Arc::new(MemoryRange::new(ct));
    let anchor = Anchor::Toc(converted.toc_digest);
    let mut g = c.benchmark_group("toc");
    g.sample_size(10);
    let open_layer = || {
        let opts = key.to_options(String::new());
        open(
            src.clone(),
            Some(LayerKey::from_options(&opts)),
            &anchor,
            "bench",
        )
        .unwrap()
    };
    g.bench_function("open_100k_entries", |b| b.iter(open_layer));
    let layer = open_layer();
    g.bench_function("fuse_tree_100k_entries", |b| {
        b.iter(|| {
            let tree = Tree::build(layer.nodes(), "bench");
            assert!(tree.inodes.len() > FILES);
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

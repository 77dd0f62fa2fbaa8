//! Layer cipher throughput: what `lazycrypt decrypt` does per byte (AES-256-CTR,
//! HMAC-SHA256 over the ciphertext, SHA-256 over the plaintext for the digest
//! check), through the two-thread pipeline and, for comparison, on one thread.

use std::io::{self, Read, Write};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hmac::Mac;
use lazycrypt::crypto::cipher::LayerKey;
use sha2::{Digest, Sha256};

const SIZE: usize = 256 << 20;

/// A sink that hashes what it is given, as the layout and registry writers do.
struct HashSink(Sha256);

impl Write for HashSink {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.update(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn bench(c: &mut Criterion) {
    let plain: Vec<u8> = (0..SIZE)
        .map(|i| (i as u32).wrapping_mul(2654435761).to_le_bytes()[1])
        .collect();
    let key = LayerKey::generate();
    let (mut enc, res) = key.encrypt_reader(io::Cursor::new(plain.clone()), None);
    let mut ct = Vec::with_capacity(SIZE);
    enc.read_to_end(&mut ct).unwrap();
    drop(enc);
    let hmac = res.public_options().unwrap().hmac;
    let digest = res.plain_digest().unwrap();
    let ct = std::sync::Arc::new(ct);

    let mut g = c.benchmark_group("layer");
    g.throughput(Throughput::Bytes(SIZE as u64));
    g.sample_size(10);

    g.bench_function("decrypt_pipeline", |b| {
        b.iter(|| {
            let src = io::Cursor::new(ArcBytes(ct.clone()));
            let mut r = key.decrypt_reader(src, &hmac, None, "bench");
            let mut sink = HashSink(Sha256::new());
            io::copy(&mut r, &mut sink).unwrap();
            assert_eq!(format!("sha256:{}", hex::encode(sink.0.finalize())), digest);
        })
    });

    g.bench_function("decrypt_one_thread", |b| {
        let opts = key.to_options(digest.clone());
        b.iter(|| {
            let mut mac = <hmac::Hmac<Sha256> as Mac>::new_from_slice(&opts.symkey).unwrap();
            let mut h = Sha256::new();
            let mut buf = vec![0u8; 1 << 20];
            for (i, chunk) in ct.chunks(1 << 20).enumerate() {
                let b = &mut buf[..chunk.len()];
                b.copy_from_slice(chunk);
                mac.update(b);
                key.apply_at((i << 20) as u64, b);
                h.update(&*b);
            }
            mac.verify_slice(&hmac).unwrap();
        })
    });

    let plain = std::sync::Arc::new(plain);
    g.bench_function("encrypt_pipeline", |b| {
        b.iter(|| {
            let (mut r, _) = key.encrypt_reader(io::Cursor::new(ArcBytes(plain.clone())), None);
            let mut sink = HashSink(Sha256::new());
            io::copy(&mut r, &mut sink).unwrap();
        })
    });
    g.finish();

    let mut g = c.benchmark_group("seek");
    g.throughput(Throughput::Bytes(1 << 20));
    g.bench_function("decrypt_1MiB_at_offset", |b| {
        let mut buf = ct[100 << 20..101 << 20].to_vec();
        b.iter(|| key.apply_at(100 << 20, &mut buf))
    });
    g.finish();
}

/// Shares the ciphertext between iterations without copying it.
struct ArcBytes(std::sync::Arc<Vec<u8>>);

impl AsRef<[u8]> for ArcBytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);

//! Unwrapping a layer key: the JWE (RSA-OAEP-256 + AES-256-GCM) annotation
//! skopeo and lazycrypt write, opened with a 2048- and a 4096-bit RSA key.
//! Every lazily mounted layer pays this once per mount and once per
//! container start (the authorization check).

use std::collections::HashMap;

use criterion::{Criterion, criterion_group, criterion_main};
use lazycrypt::crypto::cipher::LayerKey;
use lazycrypt::crypto::envelope::{unwrap, wrap};
use lazycrypt::crypto::recipient::{KeyRing, Recipient};
use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let mut g = c.benchmark_group("unwrap");
    for bits in [2048, 4096] {
        let key = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), bits).unwrap();
        let private = dir.path().join(format!("k{bits}.pem"));
        let public = dir.path().join(format!("k{bits}.pub.pem"));
        // 0600: key files others can read are refused, as ssh refuses them.
        std::io::Write::write_all(
            &mut std::os::unix::fs::OpenOptionsExt::mode(
                std::fs::OpenOptions::new().write(true).create(true),
                0o600,
            )
            .open(&private)
            .unwrap(),
            key.to_pkcs8_pem(LineEnding::LF).unwrap().as_bytes(),
        )
        .unwrap();
        std::fs::write(
            &public,
            key.to_public_key()
                .to_public_key_pem(LineEnding::LF)
                .unwrap(),
        )
        .unwrap();
        let recipients = Recipient::parse(&format!("jwe:{}", public.display())).unwrap();
        let mut ring = KeyRing::default();
        ring.add_arg(private.to_str().unwrap()).unwrap();
        let opts = LayerKey::generate().to_options("sha256:00".into());
        let annotations: HashMap<String, String> = wrap(&recipients, &opts, &KeyRing::default())
            .unwrap()
            .into_iter()
            .collect();
        g.bench_function(format!("jwe_rsa{bits}"), |b| {
            b.iter(|| unwrap(&annotations, &ring, "bench").unwrap())
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

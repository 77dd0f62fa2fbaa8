//! The background diff-ID check of a lazily mounted layer, per layer: the
//! whole encrypted eStargz blob read from the ciphertext cache (as after a
//! first check fetched it), its digest and HMAC checked, decrypted,
//! inflated and hashed — unthrottled, so this is the CPU the check costs
//! (128 MiB of layer: half incompressible, half text).
//! What it costs the link is the compressed layer size, at most
//! `diff_id_rate` bytes a second.

use std::collections::HashMap;
use std::io::Read;
use std::sync::Arc;

#[path = "../tests/common/data.rs"]
mod data;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use lazycrypt::crypto::cipher::LayerKey;
use lazycrypt::crypto::envelope::{PUBOPTS, wrap};
use lazycrypt::crypto::recipient::{KeyRing, Recipient};
use lazycrypt::layer::estargz::writer::convert;
use lazycrypt::mount::diff_id::diff_id;
use lazycrypt::mount::open::OpenOptions;
use lazycrypt::oci::transport::{ImageSource, RawManifest};
use lazycrypt::oci::{Descriptor, Error};
use oci_spec::image::MediaType;
use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};

/// One blob, served from memory.
struct OneBlob(Vec<u8>);

impl ImageSource for OneBlob {
    fn root(&self) -> Result<RawManifest, Error> {
        unreachable!("only the blob is read")
    }
    fn manifest(&self, _: &Descriptor) -> Result<RawManifest, Error> {
        unreachable!("only the blob is read")
    }
    fn blob(&self, _: &Descriptor) -> Result<Box<dyn Read + Send>, Error> {
        Ok(Box::new(std::io::Cursor::new(self.0.clone())))
    }
    fn blob_range(&self, _: &Descriptor, offset: u64, len: u64) -> Result<Vec<u8>, Error> {
        Ok(self.0[offset as usize..(offset + len) as usize].to_vec())
    }
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

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    // Half incompressible, half text. `cargo test` runs this once, in a
    // debug build: a small layer there, the real one under `cargo bench`.
    let half = if std::env::args().any(|a| a == "--bench") {
        64 << 20
    } else {
        1 << 20
    };
    let words = b"lazy crypt chunk verify decrypt overlay layer ".repeat(half / 40);
    let tar = tar_of(&[
        ("weights.bin", data::noise(half)),
        ("text.txt", words[..half].to_vec()),
    ]);
    let (blob, _) = convert(&tar[..], Vec::new(), 256 << 10).unwrap();
    // The diff ID is that of the eStargz tar stream (TOC entry included).
    let mut untarred = Vec::new();
    flate2::read::MultiGzDecoder::new(&blob[..])
        .read_to_end(&mut untarred)
        .unwrap();
    let want = format!(
        "sha256:{}",
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&untarred))
    );
    let key = LayerKey::generate();
    let (mut r, result) = key.encrypt_reader(std::io::Cursor::new(blob), None);
    let mut ct = Vec::new();
    r.read_to_end(&mut ct).unwrap();
    drop(r);

    let rsa = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).unwrap();
    let private = dir.path().join("k.pem");
    std::io::Write::write_all(
        &mut std::os::unix::fs::OpenOptionsExt::mode(
            std::fs::OpenOptions::new().write(true).create(true),
            0o600,
        )
        .open(&private)
        .unwrap(),
        rsa.to_pkcs8_pem(LineEnding::LF).unwrap().as_bytes(),
    )
    .unwrap();
    let public = dir.path().join("k.pub.pem");
    std::fs::write(
        &public,
        rsa.to_public_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap(),
    )
    .unwrap();
    let recipients = Recipient::parse(&format!("jwe:{}", public.display())).unwrap();
    let mut annotations: HashMap<String, String> = wrap(
        &recipients,
        &key.to_options(String::new()),
        &KeyRing::default(),
    )
    .unwrap()
    .into_iter()
    .collect();
    annotations.insert(
        PUBOPTS.into(),
        result.public_options().unwrap().to_annotation(),
    );
    let mut desc = Descriptor::new(
        MediaType::Other("application/vnd.oci.image.layer.v1.tar+gzip+encrypted".into()),
        ct.len() as u64,
        lazycrypt::oci::digest::of(&ct),
    );
    desc.set_annotations(Some(annotations));
    let mut ring = KeyRing::default();
    ring.add_arg(private.to_str().unwrap()).unwrap();
    let opts = OpenOptions {
        cache_dir: dir.path().join("blobs"),
        scratch: lazycrypt::layer::stream::sealed::Scratch::new(
            dir.path().join("blobs/sealed"),
            u64::MAX,
        ),
        allow_unverified_lazy: false,
    };
    let src: Arc<dyn ImageSource> = Arc::new(OneBlob(ct.clone()));
    // The first check fetches the blob into the cache; the measured ones
    // read it from there, as a check after a restart does.
    assert_eq!(
        diff_id(src.clone(), &desc, &ring, &opts, None).unwrap(),
        want
    );

    let mut g = c.benchmark_group("diff_id");
    g.throughput(Throughput::Bytes(ct.len() as u64));
    g.sample_size(10);
    g.bench_function("estargz", |b| {
        b.iter(|| diff_id(src.clone(), &desc, &ring, &opts, None).unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

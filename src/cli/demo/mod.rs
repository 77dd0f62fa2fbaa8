//! `lazycrypt demo`: what lazycrypt is for, on a generated image and key
//! with nothing from the network: the image encrypted as eStargz, mounted
//! lazily (as root), one file read, the bytes that fetched and a scan of
//! the disk for plaintext; then the encrypt / inspect / decrypt round.

mod dir;
mod lazy;
mod scan;

use std::path::PathBuf;

use anyhow::{Context, Result, ensure};
use clap::Args as ClapArgs;
use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};

use super::layerinfo;
use crate::convert::{EncryptOptions, Selection, decrypt, encrypt};
use crate::crypto::{KeyRing, Recipient};
use crate::oci::build::{BuildSpec, build};
use crate::oci::copy::NoProgress;
use crate::oci::image::Image;
use crate::oci::layout::Layout;
use crate::oci::platform::Platform;

/// Random (incompressible) files in the image besides the one read: big
/// enough that the one chunk read of one of them is a small part.
const RANDOM_FILES: usize = 4;
const RANDOM_FILE_SIZE: usize = 4 << 20;
/// Where each random file's sample lies: mid-chunk, so reading the bytes
/// around it through the mount decrypts one chunk only.
const SAMPLE_AT: usize = RANDOM_FILE_SIZE / 2 + crate::layer::estargz::CHUNK_SIZE as usize / 2;
/// The bytes read through the mount around the first random file's sample.
const WINDOW: usize = 4 << 10;

#[derive(ClapArgs)]
pub struct Args {
    /// Where to put the keys and images (default: a new temporary directory).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

pub fn run(a: Args) -> Result<()> {
    let dir = dir::workdir(a.dir)?;
    println!("== working in {}", dir.display());

    println!("== generating an RSA-2048 key pair");
    let key = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048)?;
    let (priv_pem, pub_pem) = (dir.join("key.pem"), dir.join("pub.pem"));
    dir::write_new(&priv_pem, key.to_pkcs8_pem(LineEnding::LF)?.as_bytes())?;
    dir::write_new(
        &pub_pem,
        key.to_public_key()
            .to_public_key_pem(LineEnding::LF)?
            .as_bytes(),
    )?;

    // A marker new to this run, in the file the mount reads, in its name
    // and in another layer's file, and random files big enough that
    // fetching only what is read shows.
    let marker = format!("lzdemo-{}", hex::encode(rand::random::<[u8; 8]>()));
    let secret = format!("app/secret-{marker}.txt");
    let mut files = [
        vec![(
            "etc/hello.txt".to_string(),
            format!("hello from layer 0 ({marker})\n")
                .repeat(1000)
                .into_bytes(),
        )],
        vec![(
            secret.clone(),
            format!("secret data ({marker})\n")
                .repeat(1000)
                .into_bytes(),
        )],
    ];
    let mut needles = vec![marker.clone().into_bytes()];
    for i in 0..RANDOM_FILES {
        let mut data = vec![0u8; RANDOM_FILE_SIZE];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut data);
        needles.push(data[SAMPLE_AT..][..32].to_vec());
        files[1].push((format!("app/model-{i}.bin"), data));
    }
    println!(
        "== building a two-layer image ({} files, {} MiB of them random) into oci:{}/plain:demo",
        files.iter().map(Vec::len).sum::<usize>(),
        (RANDOM_FILES * RANDOM_FILE_SIZE) >> 20,
        dir.display()
    );
    let rootfs = dir.join("rootfs");
    if rootfs.exists() {
        // An earlier run's files would end up in the image.
        std::fs::remove_dir_all(&rootfs)
            .with_context(|| format!("removing {}", rootfs.display()))?;
    }
    // The plaintext inputs and outputs are the user's alone, whatever the
    // umask and however open the directory they named.
    let private = |d: &std::path::Path| {
        crate::private::dir(d).with_context(|| format!("creating {}", d.display()))
    };
    private(&rootfs)?;
    for (i, files) in files.iter().enumerate() {
        for (name, body) in files {
            let p = rootfs.join(format!("layer{i}")).join(name);
            std::fs::create_dir_all(p.parent().expect("parent"))?;
            std::fs::write(&p, body)?;
        }
    }
    let spec = BuildSpec {
        layers: vec![rootfs.join("layer0"), rootfs.join("layer1")],
        gzip: true,
        cmd: vec!["/bin/sh".into()],
        platform: Platform::host(),
    };
    let plain_dir = dir.join("plain");
    private(&plain_dir)?;
    build(&spec, &Layout::create(&plain_dir, Some("demo".into()))?)?;

    println!(
        "== converting to eStargz and encrypting to jwe:{}",
        pub_pem.display()
    );
    let recipients = Recipient::parse(&format!("jwe:{}", pub_pem.display()))?;
    let enc_dir = dir.join("encrypted");
    let src = Layout::open(&plain_dir, Some("demo".into()))?;
    let opts = EncryptOptions {
        recipients: &recipients,
        ring: &KeyRing::default(),
        estargz: true,
        prioritized: &Default::default(),
        chunk_size: crate::layer::estargz::CHUNK_SIZE,
    };
    encrypt(
        &src,
        &Layout::create(&enc_dir, Some("demo".into()))?,
        &opts,
        &Selection::default(),
        &NoProgress,
        "demo",
    )?;

    let ring = || -> Result<KeyRing> {
        let mut ring = KeyRing::default();
        ring.add_arg(&priv_pem.display().to_string())?;
        Ok(ring)
    };
    if nix::unistd::geteuid().is_root() {
        lazy::show(
            lazy::Plan {
                dir: &dir,
                image: &enc_dir,
                file: &secret,
                want: &files[1][0].1,
                window: lazy::Window {
                    file: &files[1][1].0,
                    at: (SAMPLE_AT - WINDOW / 2) as u64,
                    want: &files[1][1].1[SAMPLE_AT - WINDOW / 2..][..WINDOW],
                },
                needles: &needles,
                written: &[priv_pem.clone(), pub_pem.clone(), enc_dir.clone()],
                plaintext: &[rootfs.clone(), plain_dir.clone()],
            },
            ring()?,
        )?;
    } else {
        println!(
            "== skipped the lazy mount: mounting FUSE and overlayfs needs root, and this runs as uid {}; the rest runs",
            nix::unistd::geteuid()
        );
    }

    println!("== layerinfo oci:{}/encrypted:demo", dir.display());
    layerinfo::run(layerinfo::Args {
        keys: vec![priv_pem.display().to_string()],
        key_files: Default::default(),
        transport: Default::default(),
        json: false,
        image: format!("oci:{}:demo", enc_dir.display()),
    })?;

    println!("== decrypting with {}", priv_pem.display());
    let dec_dir = dir.join("decrypted");
    private(&dec_dir)?;
    let enc = Layout::open(&enc_dir, Some("demo".into()))?;
    decrypt(
        &enc,
        &Layout::create(&dec_dir, Some("demo".into()))?,
        &ring()?,
        &Selection::default(),
        &NoProgress,
        "demo",
    )?;

    let verified = verify(&dec_dir, &rootfs)?;
    println!(
        "== verified: {verified} files unpack from the decrypted eStargz layers exactly as built, and every layer matches its config diff ID"
    );
    Ok(())
}

/// Checks every decrypted layer against the config's diff IDs and every
/// regular file it holds against the source tree; returns the files checked.
fn verify(layout: &std::path::Path, rootfs: &std::path::Path) -> Result<usize> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let src = Layout::open(layout, Some("demo".into()))?;
    let img = Image::load(&src, "demo")?;
    let m = &img.manifests[0].manifest;
    let mut config = Vec::new();
    crate::oci::transport::ImageSource::blob(&src, m.config())?.read_to_end(&mut config)?;
    let config: serde_json::Value = serde_json::from_slice(&config)?;
    let mut files = 0;
    for (i, l) in m.layers().iter().enumerate() {
        let mut tar_bytes = Vec::new();
        flate2::read::MultiGzDecoder::new(crate::oci::transport::ImageSource::blob(&src, l)?)
            .read_to_end(&mut tar_bytes)?;
        let diff_id = format!("sha256:{}", hex::encode(Sha256::digest(&tar_bytes)));
        ensure!(
            config["rootfs"]["diff_ids"][i] == diff_id.as_str(),
            "layer {i}: diff ID mismatch"
        );
        for e in tar::Archive::new(&tar_bytes[..]).entries()? {
            let mut e = e?;
            let name = e
                .path()?
                .to_string_lossy()
                .trim_start_matches("./")
                .to_string();
            if e.header().entry_type() != tar::EntryType::Regular
                || name == "stargz.index.json"
                || name.ends_with(".landmark")
            {
                continue;
            }
            let mut data = Vec::new();
            e.read_to_end(&mut data)?;
            let want = std::fs::read(rootfs.join(format!("layer{i}")).join(&name))?;
            ensure!(data == want, "layer {i}: {name} differs from the source");
            files += 1;
        }
    }
    Ok(files)
}

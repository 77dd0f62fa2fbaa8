//! Load and soak of `lazycrypt serve` under containerd and runc: 40
//! containers from 8 encrypted images (eStargz, tar.gz, tar+zstd, plain
//! tar) started at once under a 64 MiB chunk cache, each checking the
//! digests of its image's files; then a pull/run/remove loop over the
//! images. The daemon's open files, threads, memory, mounts and disk are
//! taken before, at their peak and after, and must come back; nothing
//! plaintext is left at rest. Nothing is timed.
//!
//! `LAZYCRYPT_SOAK_MINUTES` sets the loop's length (default 1, as in CI);
//! `benches/soak.sh [MINUTES]` runs this test longer and shows its table.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::containerd::{Containerd, Daemon, keeper_pids};
use common::mounts::{files_containing, open_files_containing};
use common::procfs;
use common::{Registry, lazycrypt, ok, output_within, run, tmp};
use sha2::{Digest, Sha256};

const IMAGES: usize = 8;
const CONTAINERS: usize = 40;
/// The daemon's chunk cache budget (`--cache-size`).
const CACHE: u64 = 64 << 20;
/// Pull/run/remove loops running side by side, each over its own images.
const WORKERS: usize = 2;
/// A pull, or a container's start and check, on a shared 2-core machine
/// with 40 of them at once: generous, as nothing here is timed.
const STEP_LIMIT: Duration = Duration::from_secs(20 * 60);
/// How long the daemon gets, once every image is removed, to give back
/// what it took: tokio lets an idle blocking thread go after 10 s.
const SETTLE: Duration = Duration::from_secs(120);
/// Threads the daemon may keep beyond its start: tokio's blocking pool and
/// the first layer open start threads lazily that a daemon may keep.
const THREAD_SLACK: u64 = 4;

/// How an image's layers are compressed and encrypted.
#[derive(Clone, Copy, Debug)]
enum Kind {
    /// `lazycrypt encrypt --estargz`, with this chunk size when given.
    Estargz(Option<&'static str>),
    /// skopeo, recompressed to this format.
    Skopeo(&'static str),
    /// `lazycrypt encrypt` of uncompressed tar layers.
    Tar,
}

const KINDS: [Kind; IMAGES] = [
    Kind::Estargz(None),
    Kind::Estargz(Some("256K")),
    Kind::Estargz(None),
    Kind::Skopeo("gzip"),
    Kind::Skopeo("gzip"),
    Kind::Skopeo("zstd"),
    Kind::Skopeo("zstd"),
    Kind::Tar,
];

/// Files of each image, all listed in its `/SHA256SUMS`.
const FILES: usize = 4;

struct Image {
    /// `HOST/REPO:TAG`, as containerd names it.
    name: String,
    marker: String,
}

/// Image `i`, of `kind`: busybox and a noise file in one layer; another
/// noise file, a text file and `/SHA256SUMS` of all four in the next.
/// `marker` is in every data file's name and in the text. Built under
/// `work` (deleted by the caller once all are pushed) and pushed to `reg`
/// encrypted to `public`.
fn push_image(work: &Path, reg: &Registry, i: usize, noise: &[u8], public: &Path) -> Image {
    let marker = format!("{}{i}", marker_base(work));
    let src = work.join(format!("src{i}"));
    let layers = [src.join("l0"), src.join("l1")];
    for d in [
        layers[0].join("bin"),
        layers[0].join("data"),
        layers[1].join("data"),
    ] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::copy("/bin/busybox", layers[0].join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", layers[0].join("bin/sh")).unwrap();
    let text = format!("{marker} says hello\n").repeat(30_000);
    let files: [(usize, String, &[u8]); FILES - 1] = [
        (0, format!("data/a-{marker}.bin"), &noise[..noise.len() / 3]),
        (1, format!("data/b-{marker}.bin"), &noise[noise.len() / 3..]),
        (1, format!("data/text-{marker}.txt"), text.as_bytes()),
    ];
    let mut sums = hex_sha256(&std::fs::read("/bin/busybox").unwrap()) + "  /bin/busybox\n";
    for (layer, rel, data) in &files {
        std::fs::write(layers[*layer].join(rel), data).unwrap();
        sums += &format!("{}  /{rel}\n", hex_sha256(data));
    }
    std::fs::write(layers[1].join("SHA256SUMS"), sums).unwrap();

    let kind = KINDS[i];
    let plain = format!("oci:{}:plain", src.join("img").display());
    let mut build = lazycrypt();
    build.args(["build", "--cmd", "/bin/sh"]);
    if matches!(kind, Kind::Tar) {
        build.arg("--no-gzip");
    }
    for l in &layers {
        build.arg("--layer").arg(l);
    }
    ok(build.args(["--", &plain]));
    let dst = reg.image(&format!("soak/img{i}:v1"));
    let recipient = format!("jwe:{}", public.display());
    match kind {
        Kind::Estargz(None) => {
            common::encrypt_estargz(&plain, &dst, public);
        }
        Kind::Skopeo(format) => common::skopeo_encrypt(&plain, &dst, &[recipient], Some(format)),
        Kind::Estargz(Some(chunk)) => {
            ok(lazycrypt().args([
                "encrypt",
                "--plain-http",
                "--estargz",
                "--chunk-size",
                chunk,
                "-r",
                &recipient,
                &plain,
                &dst,
            ]));
        }
        Kind::Tar => {
            ok(lazycrypt().args(["encrypt", "--plain-http", "-r", &recipient, &plain, &dst]));
        }
    }
    Image {
        name: dst.trim_start_matches("docker://").to_string(),
        marker,
    }
}

fn hex_sha256(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// A marker unique to this run: never in a test's noise, found only where
/// plaintext went.
fn marker_base(dir: &Path) -> String {
    let seed = hex_sha256(dir.as_os_str().as_encoded_bytes());
    format!("LZSOAK{}x", &seed[..12])
}

/// `lazycrypt pull` of `image`.
fn pull(ctd: &Containerd, image: &Image) -> Result<(), String> {
    let o = output_within(ctd.lazycrypt_pull().arg(&image.name), STEP_LIMIT)?;
    if o.status.success() {
        Ok(())
    } else {
        Err(format!(
            "pull of {}: {}",
            image.name,
            String::from_utf8_lossy(&o.stderr).trim_end()
        ))
    }
}

/// A container of `image` that checks every file's digest with busybox's
/// `sha256sum -c`, and is removed when it ends.
fn check_in_container(ctd: &Containerd, image: &Image, id: &str) -> Result<(), String> {
    let mut cmd = ctd.ctr();
    cmd.args(["run", "--rm", "--snapshotter", "lazycrypt", &image.name, id])
        .args(["/bin/busybox", "sha256sum", "-c", "/SHA256SUMS"]);
    let o = output_within(&mut cmd, STEP_LIMIT)?;
    let checked = String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter(|l| l.ends_with(": OK"))
        .count();
    if o.status.success() && checked == FILES {
        Ok(())
    } else {
        // stdout names the files (plaintext): only the count is told.
        Err(format!(
            "container {id} of {}: {}, {checked} of {FILES} digests right: {}",
            image.name,
            o.status,
            String::from_utf8_lossy(&o.stderr).trim_end()
        ))
    }
}

/// Removes `image` from containerd, and with it (`--sync`: its garbage
/// collection runs now) the snapshots of its layers.
fn remove(ctd: &Containerd, image: &Image) -> Result<(), String> {
    let o = run(ctd.ctr().args(["images", "rm", "--sync", &image.name]));
    if o.status.success() {
        Ok(())
    } else {
        let err = String::from_utf8_lossy(&o.stderr);
        Err(format!("removing {}: {}", image.name, err.trim_end()))
    }
}

/// One figure taken of the daemon and the system, and what it may be once
/// the soak has settled, given what it was before.
struct Figure {
    name: &'static str,
    allowed_after: fn(u64) -> u64,
}

const fn figure(name: &'static str, allowed_after: fn(u64) -> u64) -> Figure {
    Figure {
        name,
        allowed_after,
    }
}

const FIGURES: [Figure; 10] = [
    figure("open fds (serve)", |b| b),
    figure("open fds (fuse-keeper)", |b| b),
    figure("threads (serve)", |b| b + THREAD_SLACK),
    figure("VmRSS KiB (serve)", |_| (CACHE + (64 << 20)) >> 10),
    figure("VmHWM KiB (serve)", |_| u64::MAX),
    figure("lazycrypt FUSE mounts", |b| b),
    figure("other mounts (uppers, rootfs)", |b| b),
    figure("snapshot dirs", |b| b),
    figure("sealed-file disk bytes", |b| b),
    figure("blob-cache disk bytes", |b| b),
];

/// Where the figures are read: the daemon's process and root, and the
/// test's directory (every mount of the test lies below it).
#[derive(Clone)]
struct Watched {
    pid: u32,
    root: PathBuf,
    dir: PathBuf,
}

impl Watched {
    fn take(&self) -> [u64; FIGURES.len()] {
        let pid = self.pid;
        let keeper = keeper_pids(&self.root).first().copied();
        let (fuse, other) = procfs::mounts_under(&self.dir);
        let snapshots = std::fs::read_dir(self.root.join("snapshots")).map_or(0, |d| d.count());
        let blobs = self.root.join("blobs");
        [
            procfs::open_fds(pid) as u64,
            keeper.map_or(0, |k| procfs::open_fds(k as u32) as u64),
            procfs::status_field(pid, "Threads"),
            procfs::status_field(pid, "VmRSS"),
            procfs::status_field(pid, "VmHWM"),
            fuse as u64,
            other as u64,
            snapshots as u64,
            procfs::open_file_bytes_under(pid, &blobs.join("sealed")),
            procfs::disk_bytes_under(&blobs),
        ]
    }
}

/// The figures that are past what they may be after, given `before`.
fn leaks(before: &[u64], after: &[u64]) -> Vec<String> {
    FIGURES
        .iter()
        .zip(before.iter().zip(after))
        .filter(|(f, (b, a))| **a > (f.allowed_after)(**b))
        .map(|(f, (b, a))| format!("{}: {b} before, {a} after", f.name))
        .collect()
}

/// Samples the figures every second until `stop`; returns each one's peak.
fn sample_peaks(w: &Watched, stop: &AtomicBool) -> [u64; FIGURES.len()] {
    let mut peak = w.take();
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_secs(1));
        for (p, v) in peak.iter_mut().zip(w.take()) {
            *p = (*p).max(v);
        }
    }
    peak
}

/// What the soak did, for the table.
#[derive(Default)]
struct Counts {
    started: usize,
    failures: Vec<String>,
    iterations: usize,
}

/// The figures as a table; `scans`: plaintext files found at rest under
/// load and after.
fn table(
    c: &Counts,
    before: &[u64],
    peak: &[u64],
    after: &[u64],
    leaks: &[String],
    scans: [usize; 2],
) -> String {
    let mut t = format!(
        "containers started                {:>12}\ncontainers failed                 {:>12}\n\
         pull/run/remove iterations        {:>12}\n\n{:<32}{:>13}{:>13}{:>13}{:>14}\n",
        c.started,
        c.failures.len(),
        c.iterations,
        "figure",
        "before",
        "peak",
        "after",
        "allowed after"
    );
    for (i, f) in FIGURES.iter().enumerate() {
        let allowed = match (f.allowed_after)(before[i]) {
            u64::MAX => "-".to_string(),
            n => n.to_string(),
        };
        let peak = peak[i].max(after[i]);
        t += &format!(
            "{:<32}{:>13}{:>13}{:>13}{allowed:>14}\n",
            f.name, before[i], peak, after[i]
        );
    }
    let scanned = format!("{}, {}", scans[0], scans[1]);
    t += &format!(
        "\nplaintext at rest (load, after)    {scanned:>12}\nleaks found                       {:>12}\n",
        leaks.len()
    );
    for l in leaks {
        t += &format!("  {l}\n");
    }
    t
}

/// Plaintext at rest: files under `dir` (lazycrypt's root, containerd's,
/// the daemon's log) and files the daemon holds open that hold a marker.
fn plaintext_at_rest(dir: &Path, pid: u32, images: &[Image]) -> Vec<String> {
    let needles: Vec<&[u8]> = images.iter().map(|i| i.marker.as_bytes()).collect();
    let mut hits: Vec<String> = files_containing(dir, &needles)
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    hits.extend(open_files_containing(pid, &needles));
    hits
}

#[test]
fn forty_containers_then_a_pull_run_remove_loop_give_back_what_they_took() {
    let minutes: f64 = std::env::var("LAZYCRYPT_SOAK_MINUTES")
        .ok()
        .and_then(|m| m.parse().ok())
        .unwrap_or(1.0);
    let d = tmp();
    let reg = Registry::start();
    let k = common::rsa_keys(d.path(), "k");
    let inputs = d.path().join("inputs");
    let noise = common::noise(IMAGES * (9 << 20));
    let images: Vec<Image> = noise
        .chunks(9 << 20)
        .enumerate()
        .map(|(i, n)| push_image(&inputs, &reg, i, n, &k.public))
        .collect();
    drop(noise);
    // Only ciphertext is left: the whole test directory can be scanned.
    std::fs::remove_dir_all(&inputs).unwrap();

    let keys = d.path().join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    std::fs::copy(&k.private, keys.join("k.pem")).unwrap();
    let args = [
        "--keys-dir",
        keys.to_str().unwrap(),
        "--plain-http",
        &reg.addr,
        "--cache-size",
        &CACHE.to_string(),
    ]
    .map(String::from);
    let daemon = Daemon::start_with(d.path(), &args);
    let ctd = Containerd::start(d.path(), &daemon.socket);
    let watched = Watched {
        pid: daemon.pid(),
        root: daemon.root.clone(),
        dir: d.path().to_path_buf(),
    };
    let before = watched.take();
    let stop = AtomicBool::new(false);
    let mut counts = Counts::default();

    let mut under_load = Vec::new();
    let peak = std::thread::scope(|s| {
        let sampler = s.spawn(|| sample_peaks(&watched, &stop));
        let (ctd, images) = (&ctd, &images);
        // Load: every image pulled, then 40 containers at once.
        let pulls: Vec<_> = images
            .iter()
            .map(|i| s.spawn(move || pull(ctd, i)))
            .collect();
        for p in pulls {
            if let Err(e) = p.join().unwrap() {
                counts.failures.push(e);
            }
        }
        let runs: Vec<_> = (0..CONTAINERS)
            .map(|n| {
                let image = &images[n % IMAGES];
                s.spawn(move || check_in_container(ctd, image, &format!("load{n}")))
            })
            .collect();
        counts.started += runs.len();
        for r in runs {
            if let Err(e) = r.join().unwrap() {
                counts.failures.push(e);
            }
        }
        // Scanned while every layer is mounted (asserted once the sampler
        // has stopped).
        under_load = plaintext_at_rest(d.path(), watched.pid, images);

        // Soak: each worker pulls, runs and removes its own images in turn.
        let until = Instant::now() + Duration::from_secs_f64(minutes * 60.0);
        let workers: Vec<_> = (0..WORKERS)
            .map(|w| {
                s.spawn(move || {
                    let mine: Vec<&Image> = images.iter().skip(w).step_by(WORKERS).collect();
                    let mut done = Counts::default();
                    for n in 0.. {
                        let image = mine[n % mine.len()];
                        let step = pull(ctd, image).and_then(|()| {
                            done.started += 1;
                            check_in_container(ctd, image, &format!("soak{w}-{n}"))
                        });
                        let step = step.and_then(|()| remove(ctd, image));
                        done.iterations += 1;
                        done.failures.extend(step.err());
                        if Instant::now() >= until {
                            break;
                        }
                    }
                    done
                })
            })
            .collect();
        for w in workers {
            let done = w.join().unwrap();
            counts.started += done.started;
            counts.iterations += done.iterations;
            counts.failures.extend(done.failures);
        }
        // What the loop left pulled goes too.
        for image in images {
            let _ = run(ctd.ctr().args(["images", "rm", "--sync", &image.name]));
        }
        stop.store(true, Ordering::SeqCst);
        sampler.join().unwrap()
    });

    let left = ok(ctd
        .ctr()
        .args(["snapshots", "--snapshotter", "lazycrypt", "ls"]));
    let deadline = Instant::now() + SETTLE;
    let after = loop {
        let now = watched.take();
        if leaks(&before, &now).is_empty() || Instant::now() > deadline {
            break now;
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    let leaks = leaks(&before, &after);
    let hits = plaintext_at_rest(d.path(), watched.pid, &images);
    let scans = [under_load.len(), hits.len()];
    eprintln!("{}", table(&counts, &before, &peak, &after, &leaks, scans));

    assert!(
        under_load.is_empty(),
        "plaintext at rest under load: {under_load:?}"
    );
    assert!(
        hits.is_empty(),
        "plaintext at rest after the soak: {hits:?}"
    );
    let log = daemon.log();
    for image in &images {
        assert!(!log.contains(&image.marker), "a marker in the daemon's log");
    }
    assert!(
        counts.failures.is_empty(),
        "{} of {} containers failed:\n{}",
        counts.failures.len(),
        counts.started,
        counts.failures.join("\n")
    );
    assert_eq!(left.lines().count(), 1, "snapshots left:\n{left}");
    assert!(leaks.is_empty(), "leaks: {leaks:?}");
    drop(ctd);
    daemon.stop();
}

//! `lazycrypt bench cold-start`: each workload started from a cold node
//! through each path, several times, side by side.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::node::{Node, Registry, Shaping, drop_caches, missing_tools, sh};
use super::workload::{GENERATOR, Generated, Workload, generate};

/// The ways a container can start from an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum StartPath {
    /// (a) lazycrypt, lazily: an encrypted eStargz image.
    A,
    /// (s) path (a) with the image signed (cosign's classic format, by a key
    /// the benchmark makes) and `lazycrypt serve --policy` requiring that
    /// signature: (s) − (a) is what verification adds to a cold start.
    S,
    /// (b) lazycrypt, lazily: a skopeo-encrypted tar.gz (stream index).
    B,
    /// (e) path (b)'s image with a seek index published beside it
    /// (`lazycrypt index`): the same kind of image, started lazily.
    E,
    /// (c) containerd's own: full pull, decrypt (stream processor), unpack.
    C,
    /// (d) containerd's own: full pull and unpack of the unencrypted image.
    D,
}

impl StartPath {
    pub const ALL: [StartPath; 6] = [
        StartPath::A,
        StartPath::S,
        StartPath::B,
        StartPath::E,
        StartPath::C,
        StartPath::D,
    ];

    /// Parses `a`, `b`, `c`, `d`, `e` or `s`.
    pub fn parse(s: &str) -> Result<StartPath, String> {
        match s {
            "a" => Ok(StartPath::A),
            "b" => Ok(StartPath::B),
            "c" => Ok(StartPath::C),
            "d" => Ok(StartPath::D),
            "e" => Ok(StartPath::E),
            "s" => Ok(StartPath::S),
            _ => Err(format!(
                "unknown path {s:?}; the paths are a, b, c, d, e, s"
            )),
        }
    }

    pub fn letter(self) -> char {
        match self {
            StartPath::A => 'a',
            StartPath::S => 's',
            StartPath::B => 'b',
            StartPath::E => 'e',
            StartPath::C => 'c',
            StartPath::D => 'd',
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            StartPath::A => "lazycrypt lazy, encrypted eStargz",
            StartPath::S => "lazycrypt lazy, encrypted eStargz, signed (serve --policy)",
            StartPath::B => "lazycrypt lazy, skopeo-encrypted tar.gz",
            StartPath::E => "lazycrypt lazy, skopeo-encrypted tar.gz + seek index",
            StartPath::C => "containerd pull + decrypt + unpack",
            StartPath::D => "containerd pull + unpack, unencrypted",
        }
    }

    /// Which pushed variant of the workload image the path starts.
    fn tag(self) -> &'static str {
        match self {
            StartPath::A => "esgz",
            StartPath::S => "esgz-signed",
            StartPath::B | StartPath::C => "targz",
            StartPath::E => "targz-indexed",
            StartPath::D => "plain",
        }
    }

    fn lazy(self) -> bool {
        matches!(
            self,
            StartPath::A | StartPath::S | StartPath::B | StartPath::E
        )
    }

    fn signed(self) -> bool {
        self == StartPath::S
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    pub workloads: Vec<String>,
    pub paths: Vec<StartPath>,
    pub runs: usize,
    pub scale: f64,
    pub shaping: Option<Shaping>,
    /// Generated images, registry data and node state.
    pub work: PathBuf,
    /// `results.json`, `results.md`, `chart.svg`.
    pub out: PathBuf,
    /// lazycrypt's chunk cache budget (`--cache-size`).
    pub cache_size: String,
    /// The kernel's read-ahead on lazycrypt's layer mounts (`--read-ahead`).
    pub read_ahead: String,
    /// The eStargz chunk size of path (a)'s image (`encrypt --chunk-size`).
    pub chunk_size: String,
}

/// One repetition of one workload through one path.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sample {
    pub workload: String,
    pub path: StartPath,
    pub run: usize,
    /// Time from the pull command to `ready` on the container's stdout.
    pub ready_ms: Option<f64>,
    /// Of which the pull command took this long.
    #[serde(default)]
    pub pull_ms: Option<f64>,
    /// Bytes the registry sent during the run.
    pub fetched: Option<u64>,
    pub lazycrypt_peak_rss_kib: Option<u64>,
    pub cpu_seconds: Option<f64>,
    /// Images `lazycrypt serve` accepted under its signature policy (lazy
    /// paths; 0 where it has none).
    #[serde(default)]
    pub verdicts_accepted: Option<u64>,
    /// The time `lazycrypt serve` spent reaching those verdicts (its
    /// `lazycrypt_signature_verify_seconds` histogram's sum).
    #[serde(default)]
    pub verify_ms: Option<f64>,
    /// Why the run failed, if it did.
    pub error: Option<String>,
}

/// All runs, with what each workload is.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Results {
    pub machine: String,
    pub shaping: Option<String>,
    pub cache_size: String,
    #[serde(default)]
    pub read_ahead: String,
    #[serde(default)]
    pub chunk_size: String,
    pub workloads: Vec<WorkloadInfo>,
    pub samples: Vec<Sample>,
    /// Problems that stopped whole paths or workloads.
    pub notes: Vec<String>,
}

/// A workload's size and the bytes its start-up reads.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkloadInfo {
    pub name: String,
    pub layers: usize,
    pub files: usize,
    pub image_bytes: u64,
    pub read_bytes: u64,
    /// The seek index artifact's blobs path (e) published, in bytes: what
    /// issue 17's "fetched ≤ 1.5 × read plus the artifact" counts.
    #[serde(default)]
    pub artifact_bytes: Option<u64>,
}

/// Runs the benchmark; results are written to `opts.out` after every run,
/// so an interrupted benchmark keeps what it measured.
pub fn run(opts: &Options, log: &mut dyn FnMut(&str)) -> io::Result<Results> {
    for w in &opts.workloads {
        Workload::builtin(w, opts.scale)?;
    }
    let missing = missing_tools(&["docker-registry", "containerd", "ctr", "runc", "busybox"]);
    if !missing.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("missing: {}", missing.join(", ")),
        ));
    }
    std::fs::create_dir_all(&opts.work)?;
    std::fs::create_dir_all(&opts.out)?;
    let mut res = Results {
        machine: machine(),
        shaping: opts
            .shaping
            .as_ref()
            .map(|s| format!("{} with {} ms delay each way", s.rate, s.delay_ms)),
        cache_size: opts.cache_size.clone(),
        read_ahead: opts.read_ahead.clone(),
        chunk_size: opts.chunk_size.clone(),
        ..Default::default()
    };
    let keys = opts.work.join("keys");
    let public = write_keys(&keys)?;
    log("starting the registry");
    let reg = Registry::start(&opts.work.join("registry"), opts.shaping.as_ref())?;
    let skopeo_missing = missing_tools(&["skopeo"]);
    let signing = if opts.paths.iter().any(|p| p.signed()) {
        Some(SigningKey::write(&opts.work.join("signing"), &reg.addr)?)
    } else {
        None
    };

    for name in &opts.workloads {
        stop_if_asked(opts)?;
        let w = Workload::builtin(name, opts.scale)?;
        log(&format!("generating {name} (scale {})", opts.scale));
        let g = match generated(&w, &opts.work.join("images").join(name), opts.scale) {
            Ok(g) => g,
            Err(e) => {
                res.notes.push(format!("{name}: generating: {e}"));
                continue;
            }
        };
        res.workloads.push(WorkloadInfo {
            name: name.clone(),
            layers: w.layers.len(),
            files: w.layers.iter().map(Vec::len).sum::<usize>() + 3,
            image_bytes: g.image_bytes,
            read_bytes: g.read_bytes,
            artifact_bytes: None,
        });
        // Push each variant the paths need; a failed push fails its paths.
        let mut pushed: Vec<(&str, Pushed)> = Vec::new();
        for p in &opts.paths {
            if pushed.iter().any(|(t, _)| *t == p.tag()) {
                continue;
            }
            stop_if_asked(opts)?;
            log(&format!("pushing {name}:{}", p.tag()));
            let r = push(
                &g,
                p.tag(),
                &reg.addr,
                &public,
                signing.as_ref(),
                &skopeo_missing,
                opts,
            );
            match &r {
                Err(e) => res.notes.push(format!("{name}:{}: {e}", p.tag())),
                Ok((_, Some(bytes))) => {
                    if let Some(info) = res.workloads.last_mut() {
                        info.artifact_bytes = Some(*bytes);
                    }
                }
                Ok(_) => {}
            }
            pushed.push((p.tag(), r));
        }
        for run in 1..=opts.runs {
            for &p in &opts.paths {
                let image = &pushed
                    .iter()
                    .find(|(t, _)| *t == p.tag())
                    .expect("pushed above")
                    .1;
                let s = match image {
                    Ok((image, _)) => {
                        let policy = signing.as_ref().filter(|_| p.signed()).map(|s| &*s.policy);
                        sample(opts, &reg, &keys, policy, &w, p, run, image)
                    }
                    Err(e) => failed(name, p, run, format!("image not pushed: {e}")),
                };
                // A run cut short by a signal measured nothing.
                stop_if_asked(opts)?;
                log(&describe(&s));
                res.samples.push(s);
                super::report::write(&res, &opts.out)?;
            }
        }
    }
    super::report::write(&res, &opts.out)?;
    Ok(res)
}

fn describe(s: &Sample) -> String {
    match (&s.error, s.ready_ms) {
        (Some(e), _) => format!(
            "{} ({}) run {}: failed: {e}",
            s.workload,
            s.path.letter(),
            s.run
        ),
        (None, Some(ms)) => format!(
            "{} ({}) run {}: ready in {ms:.0} ms (pull {:.0} ms), {} fetched{}",
            s.workload,
            s.path.letter(),
            s.run,
            s.pull_ms.unwrap_or(0.0),
            super::report::mib(s.fetched.unwrap_or(0)),
            match (s.verdicts_accepted, s.verify_ms) {
                (Some(n @ 1..), Some(v)) => format!(", {n} signature verdict(s) in {v:.1} ms"),
                _ => String::new(),
            }
        ),
        (None, None) => String::new(),
    }
}

fn failed(workload: &str, path: StartPath, run: usize, error: String) -> Sample {
    Sample {
        workload: workload.to_string(),
        path,
        run,
        ready_ms: None,
        pull_ms: None,
        fetched: None,
        lazycrypt_peak_rss_kib: None,
        cpu_seconds: None,
        verdicts_accepted: None,
        verify_ms: None,
        error: Some(error),
    }
}

/// Fails once a signal has asked the benchmark to stop (see
/// [`super::stop`]), saying where what was measured before it is.
fn stop_if_asked(opts: &Options) -> io::Result<()> {
    super::stop::check().map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "stopped by a signal; the runs before it are in {}",
                opts.out.display()
            ),
        )
    })
}

/// The workload's image, generated unless `dir` already holds it at this
/// scale, with the same files and reads.
fn generated(w: &Workload, dir: &Path, scale: f64) -> io::Result<Generated> {
    let record = dir.join("workload.json");
    if let Ok(b) = std::fs::read(&record)
        && let Ok(g) = serde_json::from_slice::<Generated>(&b)
        && g.scale == scale
        && g.generator == GENERATOR
        && g.workload == *w
    {
        return Ok(g);
    }
    std::fs::create_dir_all(dir)?;
    generate(w, scale, dir)
}

/// The benchmark's own cosign key pair for path (s), and a policy that
/// requires its signature on every image of the benchmark's registry.
struct SigningKey {
    /// `cosign.key`: an `ENCRYPTED SIGSTORE PRIVATE KEY`, as `cosign
    /// generate-key-pair` writes.
    key: PathBuf,
    /// Its passphrase, for `encrypt --sign-passphrase-file`.
    passphrase: PathBuf,
    /// A containers-policy.json(5) for `serve --policy`.
    policy: PathBuf,
}

impl SigningKey {
    /// A fresh key pair and its policy in `dir`, for images on `registry`.
    fn write(dir: &Path, registry: &str) -> io::Result<SigningKey> {
        use crate::oci::signature::{Passphrase, Signer};
        use rand::RngCore as _;
        std::fs::create_dir_all(dir)?;
        let mut pass = zeroize::Zeroizing::new([0u8; 16]);
        rand::rngs::OsRng.fill_bytes(pass.as_mut());
        let pass = zeroize::Zeroizing::new(hex::encode(pass.as_ref()));
        let signer = Signer::generate();
        let sealed = signer.to_cosign_pem(&Passphrase::new(zeroize::Zeroizing::new(
            pass.as_bytes().to_vec(),
        )));
        let private = |name: &str, bytes: &[u8]| -> io::Result<PathBuf> {
            let path = dir.join(name);
            io::Write::write_all(
                &mut crate::private::open(
                    &path,
                    std::fs::OpenOptions::new()
                        .write(true)
                        .create(true)
                        .truncate(true),
                )?,
                bytes,
            )?;
            Ok(path)
        };
        let key = private("cosign.key", sealed.as_bytes())?;
        let passphrase = private("passphrase", pass.as_bytes())?;
        let public = dir.join("cosign.pub");
        std::fs::write(&public, signer.public_key_pem())?;
        // Everything else is refused: a verdict on every image the node
        // starts, none accepted by default.
        let policy = dir.join("policy.json");
        let doc = serde_json::json!({
            "default": [{"type": "reject"}],
            "transports": {"docker": {registry: [{
                "type": "sigstoreSigned",
                "keyPath": public,
                "signedIdentity": {"type": "matchRepository"},
            }]}},
        });
        std::fs::write(
            &policy,
            serde_json::to_vec_pretty(&doc).map_err(io::Error::other)?,
        )?;
        Ok(SigningKey {
            key,
            passphrase,
            policy,
        })
    }
}

/// A pushed image's reference, and the bytes of the seek index artifact
/// published beside it, if one was.
type Pushed = Result<(String, Option<u64>), String>;

/// Pushes the `tag` variant of the workload image to `registry`.
fn push(
    g: &Generated,
    tag: &str,
    registry: &str,
    public: &Path,
    signing: Option<&SigningKey>,
    skopeo_missing: &[String],
    opts: &Options,
) -> Pushed {
    let dst = format!("{registry}/bench/{}:{tag}", g.workload.name);
    // What stargz's `optimize` records by running the image, the workload
    // declares: its start-up reads.
    let list = opts.work.join(format!("{}.prioritized", g.workload.name));
    std::fs::write(&list, g.workload.prioritized().join("\n") + "\n")
        .map_err(|e| format!("{}: {e}", list.display()))?;
    let list = list.to_string_lossy();
    let recipient = format!("jwe:{}", public.display());
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let exe = exe.to_str().ok_or("executable path is not UTF-8")?;
    let r = match tag {
        "esgz" | "esgz-signed" => {
            let mut args = vec![
                "encrypt".to_string(),
                "--plain-http".into(),
                "--estargz".into(),
                "--prioritize".into(),
                list.to_string(),
                "--chunk-size".into(),
                opts.chunk_size.clone(),
                "-r".into(),
                recipient.clone(),
            ];
            if tag == "esgz-signed" {
                let s = signing.ok_or("no signing key")?;
                args.push("--sign-by-sigstore-private-key".into());
                args.push(s.key.to_string_lossy().into_owned());
                args.push("--sign-passphrase-file".into());
                args.push(s.passphrase.to_string_lossy().into_owned());
            }
            args.push(g.image.clone());
            args.push(format!("docker://{dst}"));
            sh(exe, &args.iter().map(String::as_str).collect::<Vec<_>>())
        }
        _ if !skopeo_missing.is_empty() => {
            return Err(format!("missing: {}", skopeo_missing.join(", ")));
        }
        "targz" | "targz-indexed" => sh(
            "skopeo",
            &[
                "copy",
                "--quiet",
                "--dest-tls-verify=false",
                "--encryption-key",
                &recipient,
                &g.image,
                &format!("docker://{dst}"),
            ],
        )
        .and_then(|out| {
            if tag != "targz-indexed" {
                return Ok(out);
            }
            // The publisher's step, not the node's: before any cold start.
            let key = private_of(public);
            sh(
                exe,
                &[
                    "index",
                    "--plain-http",
                    "--prioritize",
                    &list,
                    "--key",
                    &key.to_string_lossy(),
                    &format!("docker://{dst}"),
                ],
            )
        }),
        _ => sh(
            "skopeo",
            &[
                "copy",
                "--quiet",
                "--dest-tls-verify=false",
                &g.image,
                &format!("docker://{dst}"),
            ],
        ),
    };
    r.map(|out| (dst, published_bytes(&out)))
        .map_err(|e| e.to_string())
}

/// The bytes `lazycrypt index` says it published, summed over its
/// "published seek index … (N bytes in M blobs)" lines; `None` if none.
fn published_bytes(out: &str) -> Option<u64> {
    let lines: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("published seek index"))
        .collect();
    if lines.is_empty() {
        return None;
    }
    lines
        .iter()
        .map(|l| {
            let (head, _) = l.rsplit_once(" bytes in ")?;
            head.rsplit_once('(')?.1.parse::<u64>().ok()
        })
        .sum()
}

/// One cold start: a fresh node, caches dropped, then pull and run until
/// the workload says it is ready.
#[allow(clippy::too_many_arguments)]
fn sample(
    opts: &Options,
    reg: &Registry,
    keys: &Path,
    policy: Option<&Path>,
    w: &Workload,
    path: StartPath,
    run: usize,
    image: &str,
) -> Sample {
    let node = match Node::start(
        &opts.work.join("node"),
        &reg.addr,
        keys,
        &opts.cache_size,
        &opts.read_ahead,
        policy,
    ) {
        Ok(n) => n,
        Err(e) => return failed(&w.name, path, run, format!("starting the node: {e}")),
    };
    let r = start_container(&node, w, path, run, image, reg);
    let usage = node.usage();
    // What the daemon's metrics say it verified (lazy paths only: the
    // others do not go through it).
    let verified = path
        .lazy()
        .then(|| node.signature_verdicts().ok())
        .flatten();
    node.stop();
    match r {
        Ok(t) => Sample {
            workload: w.name.clone(),
            path,
            run,
            ready_ms: Some(t.ready_ms),
            pull_ms: Some(t.pull_ms),
            fetched: Some(t.fetched),
            lazycrypt_peak_rss_kib: Some(usage.lazycrypt_peak_rss_kib),
            cpu_seconds: Some(usage.cpu_seconds),
            verdicts_accepted: verified.map(|v| v.accepted),
            verify_ms: verified.map(|v| v.seconds * 1000.0),
            error: None,
        },
        Err(e) => failed(&w.name, path, run, e.to_string()),
    }
}

/// What one cold start measured.
struct Timing {
    ready_ms: f64,
    pull_ms: f64,
    fetched: u64,
}

fn start_container(
    node: &Node,
    w: &Workload,
    path: StartPath,
    run: usize,
    image: &str,
    reg: &Registry,
) -> io::Result<Timing> {
    if let Err(e) = drop_caches() {
        tracing::warn!("caches not dropped: {e}");
    }
    let exe = std::env::current_exe()?;
    let exe = exe.to_string_lossy();
    let sock = node.containerd_socket.to_string_lossy();
    super::stop::check()?;
    let before = reg.served();
    let t0 = Instant::now();
    let ns = if path.lazy() {
        sh(
            &exe,
            &[
                "pull",
                "--plain-http",
                "--address",
                &sock,
                "--namespace",
                "bench",
                image,
            ],
        )?;
        "bench"
    } else {
        sh(&exe, &["cri-pull", "--address", &sock, image])?;
        "k8s.io"
    };
    let pulled = t0.elapsed();
    // runc keeps its state by namespace and id, shared by every containerd
    // on the machine: another benchmark at the same time must not clash.
    let id = format!("{}-{}-{run}-{}", w.name, path.letter(), std::process::id());
    let mut args = vec!["run", "--rm"];
    if path.lazy() {
        args.extend(["--snapshotter", "lazycrypt"]);
    }
    args.extend([image, id.as_str()]);
    // Ready is when the line appears, as HelloBench times the first useful
    // output; removing the container afterwards is not part of the start.
    let want = format!("ready {}", w.name);
    super::stop::check()?;
    let (ready, out) = node.ctr_until(ns, &args, &want)?;
    let Some(ready) = ready else {
        return Err(io::Error::other(format!(
            "the container did not say {want:?}: {}",
            out.trim()
        )));
    };
    Ok(Timing {
        ready_ms: (ready - t0).as_secs_f64() * 1000.0,
        pull_ms: pulled.as_secs_f64() * 1000.0,
        fetched: reg.served() - before,
    })
}

/// A fresh RSA key pair: the private key in `dir` (the node's keys), the
/// public one beside it; returns the public key's path.
/// The private key [`write_keys`] wrote beside `public` (`DIR.pub.pem`):
/// `DIR/bench.pem`.
fn private_of(public: &Path) -> PathBuf {
    public
        .with_extension("")
        .with_extension("")
        .join("bench.pem")
}

fn write_keys(dir: &Path) -> io::Result<PathBuf> {
    use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
    std::fs::create_dir_all(dir)?;
    let public = dir.with_extension("pub.pem");
    let key = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).map_err(io::Error::other)?;
    let pem = key.to_pkcs8_pem(LineEnding::LF).map_err(io::Error::other)?;
    // The node's keys directory refuses a private key others could read.
    io::Write::write_all(
        &mut crate::private::open(
            &dir.join("bench.pem"),
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true),
        )?,
        pem.as_bytes(),
    )?;
    let pubpem = key
        .to_public_key()
        .to_public_key_pem(LineEnding::LF)
        .map_err(io::Error::other)?;
    std::fs::write(&public, pubpem)?;
    Ok(public)
}

/// CPU model and counts, for the report.
fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .unwrap_or(0);
    format!("{cores} × {cpu}, {} GiB", (mem + (1 << 19)) >> 20)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_artifact_size_is_read_from_what_index_says() {
        let out = "linux/amd64 layer 0 sha256:ab: indexed 4 entries (0 prioritized), 1 checkpoints; artifact blobs 4152 bytes (1.00% of the layer); 0.01s, 0.00 GB/s of layer\n\
                   linux/amd64: published seek index sha256:cd for manifest sha256:ef (523262 bytes in 39 blobs)\n\
                   linux/arm64: published seek index sha256:01 for manifest sha256:23 (1000 bytes in 2 blobs)\n";
        assert_eq!(published_bytes(out), Some(524262));
        assert_eq!(published_bytes("nothing published\n"), None);
    }

    /// Images kept in `--work` by a version that made other bytes (gzip
    /// level 1, before the seek index) were used as they were; now their
    /// record names how they were made, and one made otherwise is made
    /// again.
    #[test]
    fn an_image_made_by_another_generator_is_made_again() {
        let d = tempfile::tempdir().unwrap();
        let w = Workload::builtin("many-layers", 0.05).unwrap();
        let dir = d.path().join("many-layers");
        generated(&w, &dir, 0.05).unwrap();
        let record = dir.join("workload.json");
        let mut old: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
        assert_eq!(old["generator"], GENERATOR);
        old.as_object_mut().unwrap().remove("generator");
        std::fs::write(&record, serde_json::to_vec(&old).unwrap()).unwrap();
        let g = generated(&w, &dir, 0.05).unwrap();
        assert_eq!(g.generator, GENERATOR);
        let kept: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
        assert_eq!(kept["generator"], GENERATOR);
    }
}

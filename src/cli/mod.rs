//! The `lazycrypt` command line.

mod bench;
mod build;
mod common;
mod cri_pull;
mod crypt;
mod demo;
mod index;
mod layerinfo;
mod mount;
mod notify;
mod pull;
mod serve;
mod stream;
mod verify;

use clap::{Parser, Subcommand};

/// Run ocicrypt-encrypted OCI images without plaintext at rest.
#[derive(Parser)]
#[command(name = "lazycrypt", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Encrypt an image's layers to recipients (or add recipients to encrypted layers).
    Encrypt(crypt::EncryptArgs),
    /// Decrypt an image's encrypted layers.
    Decrypt(crypt::DecryptArgs),
    /// Show each layer's digest, platform, size, encryption and recipients.
    Layerinfo(layerinfo::Args),
    /// Publish a seek index beside an encrypted image (an OCI referrer
    /// readable only with the layer keys), so its tar and tar+gzip layers
    /// start lazily; the image is not changed.
    Index(index::Args),
    /// Show an image's signatures, which key signed each, and a signature
    /// policy's verdict (exit status 1 if it rejects the image).
    Verify(verify::Args),
    /// Decrypt one layer blob from stdin to stdout, as containerd's stream processor (ctd-decoder).
    StreamDecrypt(stream::Args),
    /// Build a plain image from directories, one layer each.
    Build(build::Args),
    /// Mount an image lazily: one FUSE file system per layer, overlaid; no plaintext on disk.
    Mount(mount::Args),
    /// Unmount what `lazycrypt mount` mounted.
    Umount(mount::UmountArgs),
    /// Register an image with containerd, its layers mounted lazily by `lazycrypt serve`.
    Pull(pull::Args),
    /// One CRI PullImage call, as the kubelet makes it (for benchmarks).
    #[command(hide = true)]
    CriPull(cri_pull::Args),
    /// Serve the containerd snapshots API (a proxy snapshotter plugin) on a unix socket.
    Serve(serve::Args),
    /// Hold `serve`'s FUSE connections open across its restarts (started by `serve`).
    #[command(hide = true)]
    FuseKeeper(serve::KeeperArgs),
    /// Generate keys and an image, then encrypt, inspect, decrypt and verify it.
    Demo(demo::Args),
    /// Cold-start benchmarks: generated workloads, each way of starting them side by side.
    Bench(bench::Args),
}

/// Crates whose log lines may carry secrets: fuser's name files, ureq's
/// trace lines carry registry credentials, and pgp logs a secret key's
/// fields in hex as it parses them. They stay off whatever is asked, even
/// when named (ours say what failed, and where).
const SECRET_CRATES: [&str; 4] = ["fuser", "ureq", "ureq_proto", "pgp"];

/// The log filter for `LAZYCRYPT_LOG` (`warn` when unset). A bare level is
/// lazycrypt's own: the crates below it (the gRPC stack logs each frame)
/// stay at `warn` unless a directive names them; the secret-bearing ones
/// stay off, their directives last so that they win.
fn log_filter(asked: Option<&str>) -> tracing_subscriber::EnvFilter {
    let mut directives = vec!["warn".to_string()];
    for d in asked.unwrap_or("warn").split(',').map(str::trim) {
        if d.parse::<tracing_subscriber::filter::LevelFilter>().is_ok() {
            directives.push(format!("lazycrypt={d}"));
        } else if !d.is_empty() {
            directives.push(d.to_string());
        }
    }
    directives.extend(SECRET_CRATES.iter().map(|c| format!("{c}=off")));
    tracing_subscriber::EnvFilter::new(directives.join(","))
}

/// Runs the command line; returns the process exit code.
pub fn main() -> i32 {
    no_core_dumps();
    fixed_mmap_threshold();
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(log_filter(std::env::var("LAZYCRYPT_LOG").ok().as_deref()))
        .without_time()
        .init();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => return usage_error(e),
    };
    let res = match cli.command {
        Command::Encrypt(a) => crypt::encrypt(a),
        Command::Decrypt(a) => crypt::decrypt(a),
        Command::Layerinfo(a) => layerinfo::run(a),
        Command::Index(a) => index::run(a),
        Command::Verify(a) => match verify::run(a) {
            Ok(true) => Ok(()),
            Ok(false) => return 1,
            Err(e) => Err(e),
        },
        Command::StreamDecrypt(a) => stream::run(a),
        Command::Build(a) => build::run(a),
        Command::Demo(a) => demo::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Mount(a) => mount::run(a),
        Command::Serve(a) => serve::run(a),
        Command::FuseKeeper(a) => serve::keeper(a),
        Command::Pull(a) => pull::run(a),
        Command::CriPull(a) => cri_pull::run(a),
        Command::Umount(a) => mount::umount(a),
    };
    match res {
        Ok(()) => 0,
        Err(e) => {
            // One line: what failed and why, outermost context first.
            eprintln!("lazycrypt: {}", format!("{e:#}").replace('\n', " "));
            1
        }
    }
}

/// Help and version go to stdout as clap prints them; a usage error becomes
/// one line (clap's first paragraph, which says what is wrong), exit code 2.
fn usage_error(e: clap::Error) -> i32 {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        e.exit();
    }
    let text = e.to_string();
    let what: Vec<&str> = text
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect();
    eprintln!(
        "lazycrypt: {} (see --help)",
        what.join(" ").trim_start_matches("error: ")
    );
    2
}

/// glibc raises its mmap threshold to the largest block freed so far. Once a
/// big block (a whole TOC, a blob buffer) has been freed, each FUSE thread's
/// 16 MiB request buffer comes from the heap, where calloc must write every
/// byte of it: 20 layers of 4 FUSE threads took `serve` to 400 MiB peak RSS
/// with 22 MiB decrypted. With the threshold fixed at 4 MiB those buffers
/// stay mapped and untouched (44 MiB), while 1 MiB chunk buffers still come
/// from the heap, as fast as before.
/// A crash must not write the process's memory, plaintext chunks and keys
/// among it, to a core file: no core size, and not dumpable (which also
/// stops a core handler on a pipe, such as systemd-coredump, from getting
/// one).
fn no_core_dumps() {
    let none = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: setrlimit and prctl(PR_SET_DUMPABLE) only change this
    // process's own limits and flags; failure leaves them as they were.
    unsafe {
        libc::setrlimit(libc::RLIMIT_CORE, &none);
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
    }
}

fn fixed_mmap_threshold() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; it runs before any
    // other thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
        // Fixing one threshold also fixes the trim threshold at 128 KiB,
        // which would hand freed chunk buffers back to the kernel only to
        // fault them in again; keep the dynamic default's order instead.
        libc::mallopt(libc::M_TRIM_THRESHOLD, 32 << 20);
        // Each arena keeps up to that much free memory, and glibc makes 8
        // arenas per core for the FUSE, read-ahead and runtime threads:
        // memory freed after a load stayed the daemon's (146 MiB on a
        // 2-core node after its last image was removed). Two arenas cost
        // no measurable contention: the threads mostly wait on I/O.
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

//! `lazycrypt serve`: the containerd snapshotter, on a unix socket, until
//! SIGINT or SIGTERM.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args as ClapArgs;

use crate::fs::ReadAhead;
use crate::snapshotter::checks::DiffIdConfig;
use crate::snapshotter::config::FileConfig;
use crate::snapshotter::remote::RemoteConfig;
use crate::snapshotter::service::{Service, serve};
use crate::snapshotter::store::{Store, UpperConfig};

#[derive(ClapArgs)]
pub struct Args {
    /// Configuration file (TOML); flags override its fields. Read if it
    /// exists at the default path, required when given.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// State directory: snapshot metadata (`metadata.db`), snapshot
    /// directories and the ciphertext blob cache [default: /var/lib/lazycrypt].
    #[arg(long)]
    pub root: Option<PathBuf>,
    /// The unix socket containerd's proxy plugin connects to
    /// [default: /run/lazycrypt/lazycrypt.sock].
    #[arg(long)]
    pub address: Option<PathBuf>,
    /// Private keys that unwrap encrypted layers (like ctd-decoder's
    /// `--decryption-keys-path`); re-read for every container start
    /// [default: /etc/containerd/ocicrypt/keys].
    #[arg(long)]
    pub keys_dir: Option<PathBuf>,
    #[command(flatten)]
    pub key_files: super::common::KeyFileArgs,
    /// A registry (`host[:port]`) to reach over plain HTTP (repeatable).
    #[arg(long = "plain-http", value_name = "HOST")]
    pub plain_http: Vec<String>,
    /// containerd's registry hosts directory: mirrors in `<dir>/<host>/hosts.toml`
    /// are tried first [default: /etc/containerd/certs.d].
    #[arg(long)]
    pub hosts_dir: Option<PathBuf>,
    /// Plaintext chunk cache budget in memory, shared by all layers [default: 256M].
    #[arg(long, value_parser = super::mount::parse_size)]
    pub cache_size: Option<u64>,
    /// Disk the sealed (encrypted) copies of zstd layers' tar streams may
    /// take together [default: 16G].
    #[arg(long, value_parser = super::mount::parse_size)]
    pub sealed_size: Option<u64>,
    /// The kernel's read-ahead on each layer mount, or `auto` [default]:
    /// 4M for a layer whose blob is on this node (fast sequential reads),
    /// 128K for one still fetched lazily (partial reads of big files fetch
    /// less over the network).
    #[arg(long, value_parser = super::mount::parse_read_ahead)]
    pub read_ahead: Option<ReadAhead>,
    /// Where containers over lazily served layers write: a tmpfs per
    /// container (no plaintext reaches the disk) or the disk [default: tmpfs].
    #[arg(long, value_parser = ["tmpfs", "disk"])]
    pub upper: Option<String>,
    /// Size limit of each container's tmpfs upper layer.
    #[arg(long, value_parser = super::mount::parse_size)]
    pub upper_size: Option<u64>,
    /// Serve eStargz layers with no TOC anchor before verifying them whole.
    #[arg(long)]
    pub allow_unverified_lazy: bool,
    /// Do not look for seek indexes published beside images (`lazycrypt
    /// index`); layers without a TOC are then fetched whole.
    #[arg(long)]
    pub no_seek_index: bool,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9187).
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<std::net::SocketAddr>,
    /// Blob bytes a second a background diff-ID check may read (K, M, G
    /// suffixes; 0: no limit). Each lazily mounted layer is hashed whole
    /// once, at low CPU priority, to bind it to the diff ID its image claims
    /// [default: 32M].
    #[arg(long, value_name = "SIZE")]
    pub diff_id_rate: Option<String>,
    /// Seconds after a layer's mount before its diff-ID check starts, so the
    /// container's start has the link to itself [default: 5].
    #[arg(long, value_name = "SECONDS")]
    pub diff_id_delay: Option<u64>,
    /// A containers-policy.json(5) file (e.g. /etc/containers/policy.json):
    /// an image's layers are served, and containers started from them, only
    /// if its manifest digest carries the cosign signatures the policy
    /// requires, checked before any layer byte is fetched or key unwrapped.
    /// Read once at start (restart to change it). Default: any image.
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    #[command(flatten)]
    pub timeouts: super::mount::TimeoutArgs,
}

/// `0` (no limit) or a size.
fn parse_rate(s: &str) -> Result<Option<u64>, String> {
    if s == "0" {
        Ok(None)
    } else {
        super::mount::parse_size(s).map(Some)
    }
}

const DEFAULT_CONFIG: &str = "/etc/lazycrypt/config.toml";

fn size(field: &str, v: &Option<String>) -> Result<Option<u64>> {
    parsed(field, v, super::mount::parse_size)
}

fn parsed<T>(
    field: &str,
    v: &Option<String>,
    parse: fn(&str) -> Result<T, String>,
) -> Result<Option<T>> {
    v.as_deref()
        .map(parse)
        .transpose()
        .map_err(|e| anyhow::anyhow!("config: {field}: {e}"))
}

pub fn run(a: Args) -> Result<()> {
    let file = match &a.config {
        Some(p) => FileConfig::load(p, true),
        None => FileConfig::load(std::path::Path::new(DEFAULT_CONFIG), false),
    }
    .map_err(anyhow::Error::msg)?;
    let root = a
        .root
        .or(file.root)
        .unwrap_or_else(|| "/var/lib/lazycrypt".into());
    let address = a
        .address
        .or(file.address)
        .unwrap_or_else(|| "/run/lazycrypt/lazycrypt.sock".into());
    if let Some(k) = &file.cri_keychain {
        k.check(Some(&address)).map_err(anyhow::Error::msg)?;
    }
    let keychain = file.cri_keychain.as_ref().map(|k| {
        let ttl = std::time::Duration::from_secs(k.ttl.unwrap_or(3600));
        Arc::new(crate::oci::keychain::Keychain::new(ttl))
    });
    let policy = match a.policy.or(file.policy) {
        Some(p) => Some(Arc::new(crate::oci::policy::Policy::load(&p)?)),
        None => None,
    };
    let mut plain_http = file.plain_http;
    plain_http.extend(a.plain_http);
    let remote = RemoteConfig {
        keys_dir: a
            .keys_dir
            .or(file.keys_dir)
            .unwrap_or_else(|| "/etc/containerd/ocicrypt/keys".into()),
        keys: super::common::KeyFileArgs {
            allow_readable_keys: a.key_files.allow_readable_keys
                || file.allow_readable_keys.unwrap_or(false),
            keyprovider_timeout: match a.key_files.keyprovider_timeout {
                Some(t) => Some(t),
                None => parsed(
                    "keyprovider_timeout",
                    &file.keyprovider_timeout.map(|t| t.to_string()),
                    super::common::parse_timeout,
                )?,
            },
        }
        .options(),
        plain_http,
        hosts_dir: Some(
            a.hosts_dir
                .or(file.hosts_dir)
                .unwrap_or_else(|| "/etc/containerd/certs.d".into()),
        ),
        cache_dir: root.join("blobs"),
        cache_bytes: a
            .cache_size
            .or(size("cache_size", &file.cache_size)?)
            .unwrap_or(256 << 20),
        sealed_bytes: a
            .sealed_size
            .or(size("sealed_size", &file.sealed_size)?)
            .unwrap_or(crate::layer::stream::sealed::DEFAULT_SEALED_SIZE),
        allow_unverified_lazy: a.allow_unverified_lazy
            || file.allow_unverified_lazy.unwrap_or(false),
        seek_index: !a.no_seek_index && file.seek_index.unwrap_or(true),
        read_ahead: a
            .read_ahead
            .or(parsed(
                "read_ahead",
                &file.read_ahead,
                super::mount::parse_read_ahead,
            )?)
            .unwrap_or(ReadAhead::Auto),
        keeper_socket: Some(root.join("fuse-keeper.sock")),
        registry_timeouts: a
            .timeouts
            .timeouts(super::mount::TimeoutArgs {
                registry_timeout: file.registry_timeout,
                registry_read_timeout: file.registry_read_timeout,
                registry_connect_timeout: file.registry_connect_timeout,
            })
            .context("config")?,
        keychain: keychain.clone(),
        policy,
    };
    let upper = UpperConfig {
        tmpfs: a.upper.or(file.upper).as_deref() != Some("disk"),
        size: a.upper_size.or(size("upper_size", &file.upper_size)?),
    };
    let defaults = DiffIdConfig::default();
    let diff_id = DiffIdConfig {
        rate: match (&a.diff_id_rate, &file.diff_id_rate) {
            (Some(r), _) => parse_rate(r).map_err(|e| anyhow::anyhow!("--diff-id-rate: {e}"))?,
            (None, f) => parsed("diff_id_rate", f, parse_rate)?.unwrap_or(defaults.rate),
        },
        delay: a
            .diff_id_delay
            .or(file.diff_id_delay)
            .map_or(defaults.delay, std::time::Duration::from_secs),
        ..defaults
    };
    let store = Store::open(&root, remote, upper, diff_id)
        .with_context(|| format!("opening the snapshot store in {}", root.display()))?;
    // Directories a crash left without metadata, then the remote layers.
    store.cleanup().context("cleaning up")?;
    let n = store.restore().context("re-mounting remote layers")?;
    tracing::info!("{n} remote layers mounted again");
    let store = Arc::new(store);
    store.check_diff_ids();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let served: Result<()> = rt.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let stopped = Arc::new(tokio::sync::Notify::new());
        let stop = {
            let stopped = stopped.clone();
            async move {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
                super::notify::tell("STOPPING=1");
                stopped.notify_one();
            }
        };
        let metrics = a.metrics.or(file.metrics);
        if let Some(addr) = metrics {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("metrics address {addr}"))?;
            tokio::spawn(crate::snapshotter::metrics::serve(listener, store.clone()));
        }
        // The keychain's end is serve's: the kubelet's image calls go
        // through it, so a node without it is not ready.
        let mut keychain_task = None;
        if let (Some(k), Some(keychain)) = (&file.cri_keychain, keychain) {
            let (listen, upstream) = (k.listen.clone(), k.upstream.clone());
            let bound = crate::snapshotter::cri_keychain::bind(&listen)
                .with_context(|| format!("CRI keychain on {}", listen.display()))?;
            // Served until the runtime ends: pulls under way at a stop
            // end with it.
            keychain_task = Some(tokio::spawn(async move {
                crate::snapshotter::cri_keychain::serve(bound, &upstream, keychain)
                    .await
                    .with_context(|| format!("CRI keychain on {}", listen.display()))
            }));
            println!("serving the CRI keychain on {}", k.listen.display());
        }
        let keychain_ended = async {
            match keychain_task {
                Some(task) => match task.await {
                    Ok(served) => served.and_then(|()| Err(anyhow::anyhow!("CRI keychain ended"))),
                    Err(e) => Err(anyhow::anyhow!("CRI keychain: {e}")),
                },
                None => std::future::pending().await,
            }
        };
        // Restored layers are served already; systemd hears READY=1 once
        // the socket answers too.
        if std::env::var_os("NOTIFY_SOCKET").is_some() {
            tokio::spawn(ready_when_answering(address.clone()));
        }
        println!("serving snapshots on {}", address.display());
        // A stop lets calls under way finish, for a while: a Prepare
        // fetching a large blob from a slow registry may take minutes.
        let grace = async {
            stopped.notified().await;
            tokio::time::sleep(STOP_GRACE).await;
        };
        tokio::select! {
            served = serve(Service::new(store.clone()), &address, stop) => {
                served.with_context(|| format!("serving on {}", address.display()))
            }
            ended = keychain_ended => ended,
            () = grace => {
                tracing::warn!(
                    "calls still under way {} s after the stop signal are abandoned",
                    STOP_GRACE.as_secs()
                );
                Ok(())
            }
        }
    });
    // Blocking work still running (an abandoned Prepare's download) is not
    // waited for; the layers are unmounted under it.
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    served?;
    store.shutdown();
    let _ = std::fs::remove_file(&address);
    if let Some(k) = &file.cri_keychain {
        let _ = std::fs::remove_file(&k.listen);
    }
    println!("stopped");
    Ok(())
}

/// How long calls under way may go on after SIGTERM or SIGINT.
const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// Sends systemd READY=1 once the snapshots service on `socket` answers a
/// call (a Stat of no snapshot: NotFound is an answer).
async fn ready_when_answering(socket: PathBuf) {
    use crate::containerd::proto::snapshots::StatSnapshotRequest;
    use crate::containerd::proto::snapshots::snapshots_client::SnapshotsClient;
    loop {
        if let Ok(c) = crate::containerd::client::Client::connect(&socket, "lazycrypt").await {
            let answer = SnapshotsClient::new(c.channel)
                .stat(StatSnapshotRequest::default())
                .await;
            match answer {
                Ok(_) => break,
                Err(s) if s.code() == tonic::Code::NotFound => break,
                Err(_) => {}
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    super::notify::tell("READY=1");
}

#[derive(ClapArgs)]
pub struct KeeperArgs {
    /// The unix socket to listen on.
    pub socket: PathBuf,
}

/// The FUSE keeper process `serve` starts (see `mount::keeper`).
pub fn keeper(a: KeeperArgs) -> Result<()> {
    // Whatever the daemon's parent let it inherit (a build's jobserver
    // pipe, a terminal) is not the keeper's to hold open for its lifetime.
    // SAFETY: closes the descriptors above stdio of this fresh process,
    // before anything in it owns one.
    unsafe { libc::close_range(3, u32::MAX, 0) };
    crate::mount::keeper::serve(&a.socket)
        .with_context(|| format!("FUSE keeper at {}", a.socket.display()))
}

//! `lazycrypt serve`: the containerd snapshotter, on a unix socket, until
//! SIGINT or SIGTERM.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args as ClapArgs;

use crate::snapshotter::remote::RemoteConfig;
use crate::snapshotter::service::{Service, serve};
use crate::snapshotter::store::{Store, UpperConfig};

#[derive(ClapArgs)]
pub struct Args {
    /// State directory: snapshot metadata (`metadata.db`), snapshot
    /// directories and the ciphertext blob cache.
    #[arg(long, default_value = "/var/lib/lazycrypt")]
    pub root: PathBuf,
    /// The unix socket containerd's proxy plugin connects to.
    #[arg(long, default_value = "/run/lazycrypt/lazycrypt.sock")]
    pub address: PathBuf,
    /// Private keys that unwrap encrypted layers (like ctd-decoder's
    /// `--decryption-keys-path`); re-read for every container start.
    #[arg(long, default_value = "/etc/containerd/ocicrypt/keys")]
    pub keys_dir: PathBuf,
    /// A registry (`host[:port]`) to reach over plain HTTP (repeatable).
    #[arg(long = "plain-http", value_name = "HOST")]
    pub plain_http: Vec<String>,
    /// Plaintext chunk cache budget in memory, shared by all layers.
    #[arg(long, default_value = "256M", value_parser = super::mount::parse_size)]
    pub cache_size: u64,
    /// Where containers over lazily served layers write: a tmpfs per
    /// container (no plaintext reaches the disk) or the disk.
    #[arg(long, default_value = "tmpfs", value_parser = ["tmpfs", "disk"])]
    pub upper: String,
    /// Size limit of each container's tmpfs upper layer.
    #[arg(long, value_parser = super::mount::parse_size)]
    pub upper_size: Option<u64>,
    /// Serve eStargz layers with no TOC anchor before verifying them whole.
    #[arg(long)]
    pub allow_unverified_lazy: bool,
}

pub fn run(a: Args) -> Result<()> {
    let remote = RemoteConfig {
        keys_dir: a.keys_dir.clone(),
        plain_http: a.plain_http.clone(),
        cache_dir: a.root.join("blobs"),
        cache_bytes: a.cache_size,
        allow_unverified_lazy: a.allow_unverified_lazy,
    };
    let upper = UpperConfig {
        tmpfs: a.upper == "tmpfs",
        size: a.upper_size,
    };
    let store = Store::open(&a.root, remote, upper)
        .with_context(|| format!("opening the snapshot store in {}", a.root.display()))?;
    // Directories a crash left without metadata, then the remote layers.
    store.cleanup().context("cleaning up")?;
    let n = store.restore().context("re-mounting remote layers")?;
    tracing::info!("{n} remote layers mounted again");
    let store = Arc::new(store);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let stop = async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        };
        println!("serving snapshots on {}", a.address.display());
        serve(Service::new(store.clone()), &a.address, stop)
            .await
            .with_context(|| format!("serving on {}", a.address.display()))
    })?;
    store.shutdown();
    let _ = std::fs::remove_file(&a.address);
    println!("stopped");
    Ok(())
}

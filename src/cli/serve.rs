//! `lazycrypt serve`: the containerd snapshotter, on a unix socket, until
//! SIGINT or SIGTERM.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args as ClapArgs;

use crate::snapshotter::service::{Service, serve};
use crate::snapshotter::store::Store;

#[derive(ClapArgs)]
pub struct Args {
    /// State directory: snapshot metadata (`metadata.db`), snapshot
    /// directories and the ciphertext blob cache.
    #[arg(long, default_value = "/var/lib/lazycrypt")]
    pub root: PathBuf,
    /// The unix socket containerd's proxy plugin connects to.
    #[arg(long, default_value = "/run/lazycrypt/lazycrypt.sock")]
    pub address: PathBuf,
}

pub fn run(a: Args) -> Result<()> {
    let store = Store::open(&a.root)
        .with_context(|| format!("opening the snapshot store in {}", a.root.display()))?;
    // Directories a crash left without metadata.
    store.cleanup().context("cleaning up")?;
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
        serve(Service::new(Arc::new(store)), &a.address, stop)
            .await
            .with_context(|| format!("serving on {}", a.address.display()))
    })?;
    let _ = std::fs::remove_file(&a.address);
    println!("stopped");
    Ok(())
}

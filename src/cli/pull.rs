//! `lazycrypt pull`: an image registered with containerd, its layers
//! mounted lazily by `lazycrypt serve` (the `ctr-remote rpull` equivalent).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args as ClapArgs;

use super::common::{PolicyArgs, TransportArgs, verify_image};
use crate::containerd::client::Client;
use crate::containerd::pull::{register, resolve};
use crate::oci::mirrored::open;
use crate::oci::platform::Platform;
use crate::oci::reference::RegistryRef;

#[derive(ClapArgs)]
pub struct Args {
    /// containerd's socket.
    #[arg(long, default_value = "/run/containerd/containerd.sock")]
    pub address: PathBuf,
    /// containerd namespace (`k8s.io` for images Kubernetes runs).
    #[arg(long, default_value = "default")]
    pub namespace: String,
    /// The proxy snapshotter's name in containerd's config.
    #[arg(long, default_value = "lazycrypt")]
    pub snapshotter: String,
    /// Platform to pull (default: this host's).
    #[arg(long)]
    pub platform: Option<String>,
    /// containerd's registry hosts directory: mirrors in
    /// `<dir>/<host>/hosts.toml` are tried first.
    #[arg(long, default_value = "/etc/containerd/certs.d")]
    pub hosts_dir: PathBuf,
    #[command(flatten)]
    pub transport: TransportArgs,
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// The image, `HOST/REPO:TAG` (or `docker://HOST/REPO:TAG`).
    pub image: String,
}

pub fn run(a: Args) -> Result<()> {
    let started = Instant::now();
    let name = a.image.trim_start_matches("docker://").to_string();
    let r = RegistryRef::parse(&name).with_context(|| format!("image {}", a.image))?;
    let policy = a.policy.load()?;
    let src = open(&r, Some(&a.hosts_dir), &a.transport.options().registry)?;
    let platform = match &a.platform {
        Some(p) => Platform::parse(p)?,
        None => Platform::host(),
    };
    let resolved = resolve(src.as_ref(), &name, &platform, |digest| {
        verify_image(policy.as_ref(), &r, digest, src.as_ref())
    })?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let n = rt.block_on(async {
        let mut client = Client::connect(&a.address, &a.namespace)
            .await
            .map_err(anyhow::Error::msg)?;
        register(&mut client, &resolved, &a.snapshotter).await
    })?;
    println!(
        "pulled {name} ({n} layers mounted lazily by {}, {} ms)",
        a.snapshotter,
        started.elapsed().as_millis()
    );
    Ok(())
}

//! `lazycrypt cri-pull` (hidden): one CRI `PullImage` call, as the kubelet
//! makes it, for benchmarks that compare containerd's own pull paths.

use std::path::PathBuf;

use anyhow::{Result, anyhow};
use clap::Args as ClapArgs;

use crate::containerd::client::Client;
use crate::containerd::proto::cri;

#[derive(ClapArgs)]
pub struct Args {
    /// containerd's socket (its CRI service listens on the same one).
    #[arg(long, default_value = "/run/containerd/containerd.sock")]
    pub address: PathBuf,
    /// The image, `HOST/REPO:TAG`.
    pub image: String,
}

pub fn run(a: Args) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let image_ref = rt.block_on(async {
        let c = Client::connect(&a.address, "k8s.io")
            .await
            .map_err(anyhow::Error::msg)?;
        let mut images = cri::image_service_client::ImageServiceClient::new(c.channel);
        images
            .pull_image(cri::PullImageRequest {
                image: Some(cri::ImageSpec {
                    image: a.image.clone(),
                    annotations: Default::default(),
                }),
                auth: None,
            })
            .await
            .map(|r| r.into_inner().image_ref)
            .map_err(|e| anyhow!("CRI PullImage {}: {}", a.image, e.message()))
    })?;
    println!("{image_ref}");
    Ok(())
}

//! `lazycrypt build`: a plain image from directories, one layer each.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args as ClapArgs;

use super::common::{TransportArgs, image_ref};
use crate::oci::build::{BuildSpec, build};
use crate::oci::platform::Platform;
use crate::oci::transport::open_dest;

#[derive(ClapArgs)]
pub struct Args {
    /// A directory that becomes one layer (repeatable; bottom layer first).
    #[arg(long = "layer", value_name = "DIR", required = true)]
    pub layers: Vec<PathBuf>,
    /// Write uncompressed tar layers instead of tar+gzip.
    #[arg(long)]
    pub no_gzip: bool,
    /// Platform recorded in the config (default: this host's).
    #[arg(long)]
    pub platform: Option<String>,
    /// The command the image runs.
    #[arg(long, num_args = 1.., value_name = "ARG")]
    pub cmd: Vec<String>,
    #[command(flatten)]
    pub transport: TransportArgs,
    /// Destination image: oci:DIR[:TAG] or docker://…
    pub dst: String,
}

pub fn run(a: Args) -> Result<()> {
    for l in &a.layers {
        anyhow::ensure!(l.is_dir(), "--layer {}: not a directory", l.display());
    }
    let platform = match &a.platform {
        Some(p) => Platform::parse(p)?,
        None => Platform::host(),
    };
    let spec = BuildSpec {
        layers: a.layers.clone(),
        gzip: !a.no_gzip,
        cmd: a.cmd.clone(),
        platform,
    };
    let dst = open_dest(&image_ref(&a.dst)?, &a.transport.options())?;
    let m = build(&spec, dst.as_ref())?;
    println!("wrote {} ({})", a.dst, m.digest);
    Ok(())
}

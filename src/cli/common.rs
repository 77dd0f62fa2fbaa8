//! Flags and helpers shared by subcommands.

use std::io::{IsTerminal, Read};

use anyhow::{Context, Result};
use clap::Args;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::crypto::KeyRing;
use crate::crypto::keyprovider::ProviderConfig;
use crate::crypto::keys::ReadableKeys;
use crate::oci::copy::Progress;
use crate::oci::reference::ImageRef;
use crate::oci::registry::RegistryOptions;
use crate::oci::transport::TransportOptions;

/// Registry access flags.
#[derive(Args, Clone, Default)]
pub struct TransportArgs {
    /// Use plain HTTP for docker:// registries (for registries on loopback).
    #[arg(long)]
    pub plain_http: bool,
    /// Credentials USER[:PASSWORD] for the image's registry, never sent to
    /// its mirrors or other hosts (default: the docker/containers auth files).
    #[arg(long, value_name = "USER[:PASSWORD]")]
    pub creds: Option<String>,
}

impl TransportArgs {
    pub fn options(&self) -> TransportOptions {
        TransportOptions {
            registry: RegistryOptions {
                plain_http: self.plain_http,
                creds: self.creds.clone(),
            },
        }
    }
}

/// How private key files are checked.
#[derive(Args, Clone, Copy, Default)]
pub struct KeyFileArgs {
    /// Accept private key files that their group or others can read (for
    /// example a Kubernetes secret volume left at mode 0644). By default such
    /// a file is refused, as ssh refuses one; a file owned by another user
    /// or writable by others is refused either way.
    #[arg(long)]
    pub allow_readable_keys: bool,
}

impl KeyFileArgs {
    pub fn readable(self) -> ReadableKeys {
        if self.allow_readable_keys {
            ReadableKeys::Allow
        } else {
            ReadableKeys::Refuse
        }
    }
}

/// Parses an image reference argument.
pub fn image_ref(s: &str) -> Result<ImageRef> {
    Ok(ImageRef::parse(s)?)
}

/// Builds the key ring from `--key` arguments and an optional keys directory.
pub fn key_ring(
    keys: &[String],
    dir: Option<&std::path::Path>,
    files: KeyFileArgs,
) -> Result<KeyRing> {
    let mut ring = KeyRing {
        provider_config: ProviderConfig::from_env()?,
        readable_keys: files.readable(),
        ..Default::default()
    };
    for k in keys {
        ring.add_arg(k)
            .with_context(|| format!("--key {}", k.split(":pass=").next().unwrap_or(k)))?;
    }
    if let Some(d) = dir {
        let none = zeroize::Zeroizing::new(String::new());
        for k in crate::crypto::keys::load_dir(d, files.readable())? {
            ring.add(k, &none);
        }
    }
    Ok(ring)
}

/// Progress bars on stderr, only when stdout is a terminal.
pub struct Bars {
    multi: Option<MultiProgress>,
}

impl Bars {
    pub fn new() -> Self {
        Bars {
            multi: std::io::stdout().is_terminal().then(MultiProgress::new),
        }
    }
}

impl Progress for Bars {
    fn wrap(&self, label: &str, size: u64, r: Box<dyn Read + Send>) -> Box<dyn Read + Send> {
        let Some(m) = &self.multi else { return r };
        let pb = m.add(ProgressBar::new(size));
        pb.set_style(
            ProgressStyle::with_template(
                "{msg:12} {bar:30} {bytes:>10}/{total_bytes:10} {bytes_per_sec:>12}",
            )
            .expect("template"),
        );
        pb.set_message(label.to_string());
        Box::new(pb.wrap_read(r))
    }
}

//! Flags and helpers shared by subcommands.

use std::collections::HashSet;
use std::io::{IsTerminal, Read};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::Args;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::crypto::KeyRing;
use crate::crypto::keyprovider;
use crate::crypto::keys::{KeyArg, ReadableKeys};
use crate::crypto::recipient::KeyOptions;
use crate::layer::tarmeta::clean;
use crate::oci::copy::Progress;
use crate::oci::policy::Policy;
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
    /// Other local users can read a password given here (/proc/PID/cmdline):
    /// prefer the auth files (`docker login`, $REGISTRY_AUTH_FILE).
    #[arg(long, value_name = "USER[:PASSWORD]")]
    pub creds: Option<String>,
}

impl TransportArgs {
    /// The options; warns once when `--creds` carries a password.
    pub fn options(&self) -> TransportOptions {
        static WARNED: std::sync::Once = std::sync::Once::new();
        if let Some(w) = argv_password_warning(&[], self.creds.as_deref()) {
            WARNED.call_once(|| tracing::warn!("{w}"));
        }
        TransportOptions {
            registry: RegistryOptions {
                plain_http: self.plain_http,
                creds: self
                    .creds
                    .as_deref()
                    .map(crate::oci::auth::Credential::from_creds),
                ..Default::default()
            },
        }
    }
}

/// The signature policy an image must satisfy before anything of it is
/// fetched beyond its manifests, or any key unwrapped.
#[derive(Args, Clone, Default)]
pub struct PolicyArgs {
    /// A containers-policy.json(5) file (e.g. /etc/containers/policy.json):
    /// the image's manifest digest must carry the cosign signatures it
    /// requires. Default: any image is accepted.
    #[arg(long, value_name = "FILE")]
    pub policy: Option<std::path::PathBuf>,
}

impl PolicyArgs {
    /// The policy, read and checked; None without `--policy`.
    pub fn load(&self) -> Result<Option<Policy>> {
        Ok(self.policy.as_deref().map(Policy::load).transpose()?)
    }
}

/// Refuses `image` at `manifest` unless `policy` (if any) accepts it; the
/// error is the verdict's one line.
pub fn verify_image(
    policy: Option<&Policy>,
    image: &crate::oci::reference::RegistryRef,
    manifest: &crate::oci::digest::Digest,
    source: &dyn crate::oci::transport::ImageSource,
) -> Result<()> {
    if let Some(p) = policy {
        crate::oci::signature::evaluate(p, image, manifest, source)?;
    }
    Ok(())
}

/// [`verify_image`] for an image argument: a policy applies to registry
/// images only (its scopes name registries), so an OCI layout is refused.
pub fn verify_ref(
    policy: Option<&Policy>,
    image: &ImageRef,
    manifest: &crate::oci::digest::Digest,
    source: &dyn crate::oci::transport::ImageSource,
) -> Result<()> {
    match (policy, image) {
        (None, _) => Ok(()),
        (Some(_), ImageRef::Layout { dir, .. }) => anyhow::bail!(
            "--policy applies to docker:// images; {} is an OCI layout",
            dir.display()
        ),
        (Some(_), ImageRef::Registry(r)) => verify_image(policy, r, manifest, source),
    }
}

/// The keys a command that decrypts is given: key files, a directory of
/// them, and how they are checked.
#[derive(Args)]
pub struct DecryptionKeyArgs {
    #[arg(long = "key", value_name = "FILE", help = KEY_HELP)]
    pub keys: Vec<String>,
    /// Also use every key in this directory (like ctd-decoder).
    #[arg(long)]
    pub decryption_keys_path: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub key_files: KeyFileArgs,
}

impl DecryptionKeyArgs {
    /// The key ring they make.
    pub fn ring(&self) -> anyhow::Result<KeyRing> {
        key_ring(
            &self.keys,
            self.decryption_keys_path.as_deref(),
            self.key_files,
        )
    }
}

/// How private key files are checked and keyproviders called.
#[derive(Args, Clone, Copy, Default)]
pub struct KeyFileArgs {
    /// Accept private key files that their group or others can read (for
    /// example a Kubernetes secret volume left at mode 0644). By default such
    /// a file is refused, as ssh refuses one; a file owned by another user
    /// or writable by others is refused either way.
    #[arg(long)]
    pub allow_readable_keys: bool,
    /// Seconds a keyprovider ($OCICRYPT_KEYPROVIDER_CONFIG) may take to
    /// answer one request; a provider command still running then is killed
    /// [default: 30].
    #[arg(long, value_name = "SECONDS", value_parser = parse_timeout)]
    pub keyprovider_timeout: Option<Duration>,
}

impl KeyFileArgs {
    pub fn readable(self) -> ReadableKeys {
        if self.allow_readable_keys {
            ReadableKeys::Allow
        } else {
            ReadableKeys::Refuse
        }
    }

    pub fn options(self) -> KeyOptions {
        KeyOptions {
            readable_keys: self.readable(),
            provider_timeout: self
                .keyprovider_timeout
                .unwrap_or(keyprovider::DEFAULT_TIMEOUT),
        }
    }
}

/// A timeout in whole seconds, from 1 to a day.
pub fn parse_timeout(s: &str) -> Result<Duration, String> {
    match s.parse::<u64>() {
        Ok(v @ 1..=86_400) => Ok(Duration::from_secs(v)),
        _ => Err(format!("{s:?}: want whole seconds from 1 to 86400")),
    }
}

/// Help of every `--key` flag.
pub const KEY_HELP: &str = "A private key FILE; FILE:file=PWFILE or FILE:fd=N when it has a \
password (repeatable). Every keyprovider in $OCICRYPT_KEYPROVIDER_CONFIG is asked too; \
provider:NAME checks that NAME is one of them. FILE:pass=PW works too (imgcrypt's \
form), but other local users can read a password on the command line (/proc/PID/cmdline): \
prefer file= or fd=";

/// The warning for a password on the command line, if `--key` or `--creds`
/// has one; it names the flag, never the password.
pub fn argv_password_warning(keys: &[String], creds: Option<&str>) -> Option<&'static str> {
    if keys.iter().any(|k| KeyArg::password_in_argv(k)) {
        Some(
            "a --key password given as FILE:pass=… can be read by other local users (/proc/PID/cmdline); prefer FILE:file=PWFILE or FILE:fd=N",
        )
    } else if creds.is_some_and(|c| c.contains(':')) {
        Some(
            "a --creds password can be read by other local users (/proc/PID/cmdline); prefer the auth files (docker login, $REGISTRY_AUTH_FILE)",
        )
    } else {
        None
    }
}

/// Parses an image reference argument.
pub fn image_ref(s: &str) -> Result<ImageRef> {
    Ok(ImageRef::parse(s)?)
}

/// Builds the key ring from `--key` arguments, an optional keys directory
/// and the configured keyproviders ([`KeyRing::load`], as `serve` does).
pub fn key_ring(
    keys: &[String],
    dir: Option<&std::path::Path>,
    files: KeyFileArgs,
) -> Result<KeyRing> {
    if let Some(w) = argv_password_warning(keys, None) {
        tracing::warn!("{w}");
    }
    Ok(KeyRing::load(keys, dir, files.options())?)
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

/// The paths listed in `file` (blank lines and `#` comments skipped), as
/// TOC names.
pub fn prioritized(file: &Path) -> Result<HashSet<String>> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("--prioritize {}", file.display()))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(clean)
        .filter(|n| !n.is_empty())
        .collect())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn a_password_on_the_command_line_is_warned_about_never_quoted() {
        let keys = |k: &[&str]| k.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let w = argv_password_warning(&keys(&["a.pem", "k.pem:pass=hunter2"]), None).unwrap();
        assert!(w.contains("FILE:pass=") && !w.contains("hunter2"), "{w}");
        assert_eq!(
            argv_password_warning(&keys(&["k.pem:file=/run/pw", "j.pem:fd=3"]), None),
            None
        );
        let w = argv_password_warning(&[], Some("bob:hunter2")).unwrap();
        assert!(w.starts_with("a --creds password") && !w.contains("hunter2"));
        assert_eq!(argv_password_warning(&[], Some("bob")), None);
    }

    #[test]
    fn keyprovider_timeouts_are_whole_seconds_from_one_to_a_day() {
        assert_eq!(parse_timeout("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_timeout("86400"), Ok(Duration::from_secs(86_400)));
        for bad in ["0", "-1", "1.5", "86401", "soon"] {
            assert_eq!(
                parse_timeout(bad),
                Err(format!("{bad:?}: want whole seconds from 1 to 86400"))
            );
        }
    }

    #[test]
    fn help_says_a_password_on_the_command_line_is_readable_by_others() {
        let mut cli = super::super::Cli::command();
        for sub in ["encrypt", "decrypt", "layerinfo", "mount"] {
            let help = cli
                .find_subcommand_mut(sub)
                .unwrap()
                .render_help()
                .to_string()
                .replace(char::is_whitespace, "");
            for want in [
                "FILE:file=PWFILEorFILE:fd=Nwhenithasapassword",
                "otherlocaluserscanreadapasswordonthecommandline(/proc/PID/cmdline):preferfile=orfd=",
            ] {
                assert!(help.contains(want), "{sub}: {want}");
            }
            assert!(help.contains("prefertheauthfiles"), "{sub} --creds");
        }
    }
}

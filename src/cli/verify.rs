//! `lazycrypt verify`: the signatures an image has, which key signed each,
//! and a signature policy's verdict.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};

use super::common::{TransportArgs, image_ref};
use crate::oci::policy::Policy;
use crate::oci::reference::ImageRef;
use crate::oci::registry::Registry;
use crate::oci::signature::{Accepted, Outcome, evaluate_found, fetch, inspect};
use crate::oci::transport::ImageSource as _;

#[derive(clap::Args)]
pub struct Args {
    /// The signature policy (containers-policy.json(5)), as `serve --policy` takes it.
    #[arg(long, value_name = "FILE")]
    pub policy: PathBuf,
    #[command(flatten)]
    pub transport: TransportArgs,
    /// The image: docker://HOST/REPO[:TAG|@DIGEST].
    pub image: String,
}

/// Prints each signature found and the verdict; `Ok(false)` if the policy
/// rejects the image.
pub fn run(a: Args) -> Result<bool> {
    let policy = Policy::load(&a.policy)?;
    let ImageRef::Registry(image) = image_ref(&a.image)? else {
        bail!(
            "{}: not a docker:// image; signatures are stored in a registry repository",
            a.image
        );
    };
    let source = Registry::new(image.clone(), &a.transport.options().registry)?;
    let digest = source
        .root()
        .with_context(|| format!("reading {}", a.image))?
        .digest;
    // Named as the verdict line names it: HOST/REPO[:TAG].
    let name = if image.is_digest() {
        format!("{}/{}", image.host, image.repo)
    } else {
        format!("{}/{}:{}", image.host, image.repo, image.reference)
    };
    println!("image {name} {digest}");
    let found = fetch(&source, &digest);
    if found.is_empty() {
        println!("no signatures found");
    }
    for s in inspect(&policy, &image, &digest, &found) {
        match s.outcome {
            Outcome::SignedBy {
                requirement,
                key,
                fingerprint,
                identity,
            } => println!(
                "{}: signed by key {key} (sha256:{fingerprint}) of sigstoreSigned requirement {requirement}, identity {identity:?}, digest {digest}",
                s.what
            ),
            Outcome::Refused(r) => println!("{}: not accepted: {r}", s.what),
            Outcome::NotChecked => println!(
                "{}: not checked (the policy requires no signature for this image)",
                s.what
            ),
        }
    }
    match evaluate_found(&policy, &image, &digest, &found) {
        Ok(v) => {
            match v.accepted {
                Accepted::Unverified => {
                    println!("verdict: accepted {name}@{digest} (the policy accepts it unsigned)")
                }
                Accepted::Signed { .. } => println!("verdict: accepted {name}@{digest} (signed)"),
            }
            Ok(true)
        }
        Err(rejected) => {
            println!("verdict: rejected: {rejected}");
            Ok(false)
        }
    }
}

//! `lazycrypt pull`, the `ctr-remote rpull` equivalent: resolves an image
//! in its registry, prepares every layer through containerd's snapshots
//! service with the labels that make lazycrypt mount it lazily, stores the
//! image's index, manifest and config in containerd's content store meanwhile
//! (layers are never downloaded), and names the image, so `ctr run
//! --snapshotter lazycrypt` starts it.

use std::collections::HashMap;
use std::io::Read;

use anyhow::{Context, Result, anyhow, bail};
use tonic::Code;

use super::client::Client;
use super::proto::{self, content, images, leases, snapshots};
use crate::oci::image::Image;
use crate::oci::platform::Platform;
use crate::oci::transport::{ImageSource, RawManifest};
use crate::oci::{Descriptor, digest::VerifyingReader};
use crate::snapshotter::remote::{IMAGE_LAYERS_LABELS, LAZYCRYPT_LABELS, REF_LABEL};

/// What containerd needs to know of an image to run it lazily.
pub struct Resolved {
    /// The containerd image name (`host/repo:tag`).
    pub name: String,
    pub root: RawManifest,
    /// The chosen platform's manifest (the root itself for a plain manifest).
    pub manifest: RawManifest,
    pub config: Descriptor,
    pub config_bytes: Vec<u8>,
    pub layers: Vec<Descriptor>,
    /// ChainIDs of the layers, bottom first: the committed snapshots' names.
    pub chain: Vec<String>,
}

/// Resolves `name` (`host/repo:tag`) in `src` for `platform`. `check` is
/// given the chosen manifest's digest before any blob is fetched; its error
/// stops the pull.
pub fn resolve(
    src: &dyn ImageSource,
    name: &str,
    platform: &Platform,
    check: impl FnOnce(&crate::oci::digest::Digest) -> Result<()>,
) -> Result<Resolved> {
    let image = Image::load(src, name)?;
    let chosen = match image.manifests.as_slice() {
        [one] => one,
        many => many
            .iter()
            .find(|p| Image::selected(p, Some(platform)))
            .with_context(|| format!("{name}: no manifest for platform {platform}"))?,
    };
    check(&chosen.raw.digest)?;
    let config = chosen.manifest.config().clone();
    let mut config_bytes = Vec::new();
    VerifyingReader::new(
        src.blob(&config)?,
        config.digest().clone(),
        Some(config.size()),
        "config",
    )
    .read_to_end(&mut config_bytes)
    .with_context(|| format!("{name}: config {}", config.digest()))?;
    let cfg: serde_json::Value = serde_json::from_slice(&config_bytes)
        .with_context(|| format!("{name}: config {}", config.digest()))?;
    let diff_ids: Vec<String> = cfg["rootfs"]["diff_ids"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let layers = chosen.manifest.layers().clone();
    if diff_ids.len() != layers.len() || layers.is_empty() {
        bail!(
            "{name}: config lists {} layer diff IDs for {} layers",
            diff_ids.len(),
            layers.len()
        );
    }
    Ok(Resolved {
        name: name.to_string(),
        root: image.root.clone(),
        manifest: chosen.raw.clone(),
        config,
        config_bytes,
        layers,
        chain: chain_ids(&diff_ids),
    })
}

/// The chain IDs of layers with `diff_ids`, bottom first.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let parent = out.last().map_or("", String::as_str);
        out.push(crate::oci::image::chain_id(parent, d));
    }
    out
}

/// Registers `r` with containerd through `client`, its layers prepared by
/// `snapshotter`. Returns how many layers it has mounted (now or by an
/// earlier pull).
pub async fn register(client: &mut Client, r: &Resolved, snapshotter: &str) -> Result<usize> {
    // A lease keeps what we write from the garbage collector until the
    // image record names it; it expires by itself if we die half-way.
    let mut lc = leases::leases_client::LeasesClient::new(client.channel.clone());
    let lease_id = format!("lazycrypt-pull-{}", unique());
    let expire = std::time::SystemTime::now() + std::time::Duration::from_secs(3600);
    lc.create(client.req(leases::CreateRequest {
        id: lease_id.clone(),
        labels: HashMap::from([("containerd.io/gc.expire".to_string(), rfc3339(expire))]),
    }))
    .await
    .map_err(|e| anyhow!("containerd: creating a lease: {}", e.message()))?;
    client.with_lease(Some(lease_id.clone()));
    let result = register_leased(client, r, snapshotter).await;
    client.with_lease(None);
    let _ = lc
        .delete(client.req(leases::DeleteRequest {
            id: lease_id,
            sync: false,
        }))
        .await;
    result
}

async fn register_leased(client: &Client, r: &Resolved, snapshotter: &str) -> Result<usize> {
    // The first Prepare starts the layers' downloads, the pull's long part.
    // Storing the small blobs first delayed it by about 20 ms (measured):
    // containerd commits each write, as each Prepare, in its metadata
    // database one at a time. They are stored while the layers above the
    // first are prepared, under the lease; the image is named once both
    // are done.
    let first = prepare_layers(client, r, snapshotter, 0..1).await?;
    // Both settle before the caller deletes the lease: a call cancelled
    // half-way could still be completed by containerd outside it.
    let (stored, rest) = tokio::join!(
        write_metadata(client, r, snapshotter),
        prepare_layers(client, r, snapshotter, 1..r.layers.len())
    );
    let rest = rest?;
    stored?;
    name_image(client, r).await?;
    Ok(first + rest)
}

/// Stores the image's index, manifest and config, labelled for containerd's
/// garbage collector.
async fn write_metadata(client: &Client, r: &Resolved, snapshotter: &str) -> Result<()> {
    let top = r.chain.last().cloned().unwrap_or_default();
    // What each blob references, for containerd's garbage collector.
    let mut manifest_labels = HashMap::from([(
        "containerd.io/gc.ref.content.config".to_string(),
        r.config.digest().to_string(),
    )]);
    for (i, l) in r.layers.iter().enumerate() {
        manifest_labels.insert(
            format!("containerd.io/gc.ref.content.l.{i}"),
            l.digest().to_string(),
        );
    }
    let config_labels = HashMap::from([(
        format!("containerd.io/gc.ref.snapshot.{snapshotter}"),
        top.clone(),
    )]);
    write_blob(
        client,
        r.config.digest().as_ref(),
        &r.config_bytes,
        config_labels,
    )
    .await?;
    write_blob(
        client,
        r.manifest.digest.as_ref(),
        &r.manifest.bytes,
        manifest_labels,
    )
    .await?;
    if r.root.digest != r.manifest.digest {
        let index_labels = HashMap::from([(
            "containerd.io/gc.ref.content.m.0".to_string(),
            r.manifest.digest.to_string(),
        )]);
        write_blob(client, r.root.digest.as_ref(), &r.root.bytes, index_labels).await?;
    }
    Ok(())
}

/// Prepares layers `which` (bottom first), each on the one below, with
/// lazycrypt's labels; returns how many of them lazycrypt has mounted (now
/// or by an earlier pull).
async fn prepare_layers(
    client: &Client,
    r: &Resolved,
    snapshotter: &str,
    which: std::ops::Range<usize>,
) -> Result<usize> {
    let mut sc = snapshots::snapshots_client::SnapshotsClient::new(client.channel.clone());
    let image_ref = r.name.clone();
    let mut mounted = 0;
    for (i, layer) in r
        .layers
        .iter()
        .enumerate()
        .take(which.end)
        .skip(which.start)
    {
        let parent = if i == 0 {
            String::new()
        } else {
            r.chain[i - 1].clone()
        };
        let target = r.chain[i].clone();
        let [image_label, manifest_label, layer_label] = LAZYCRYPT_LABELS;
        let layers_label = IMAGE_LAYERS_LABELS[1];
        let labels = HashMap::from([
            (REF_LABEL.to_string(), target.clone()),
            (image_label.to_string(), image_ref.clone()),
            (manifest_label.to_string(), r.manifest.digest.to_string()),
            (layer_label.to_string(), layer.digest().to_string()),
            (
                layers_label.to_string(),
                layer_list(&r.layers[i..], 4096 - layers_label.len()),
            ),
        ]);
        let key = format!("lazycrypt-pull-{}-{target}", unique());
        let res = sc
            .prepare(client.req(snapshots::PrepareSnapshotRequest {
                snapshotter: snapshotter.to_string(),
                key: key.clone(),
                parent,
                labels,
            }))
            .await;
        match res {
            Err(e) if e.code() == Code::AlreadyExists => {}
            Err(e) => bail!("layer {i} ({}): {}", layer.digest(), e.message()),
            Ok(_) => {
                let _ = sc
                    .remove(client.req(snapshots::RemoveSnapshotRequest {
                        snapshotter: snapshotter.to_string(),
                        key,
                    }))
                    .await;
                bail!(
                    "layer {i} ({}): snapshotter {snapshotter} prepared it as an empty snapshot \
                     instead of mounting it (is it lazycrypt?)",
                    layer.digest()
                );
            }
        }
        sc.stat(client.req(snapshots::StatSnapshotRequest {
            snapshotter: snapshotter.to_string(),
            key: target.clone(),
        }))
        .await
        .map_err(|e| anyhow!("layer {i} ({}): {}", layer.digest(), e.message()))?;
        mounted += 1;
    }
    Ok(mounted)
}

/// Names the image (or points the name at it again).
async fn name_image(client: &Client, r: &Resolved) -> Result<()> {
    let mut ic = images::images_client::ImagesClient::new(client.channel.clone());
    let image = images::Image {
        name: r.name.clone(),
        labels: HashMap::new(),
        target: Some(proto::Descriptor {
            media_type: r.root.media_type.clone(),
            digest: r.root.digest.to_string(),
            size: r.root.bytes.len() as i64,
            annotations: HashMap::new(),
        }),
        created_at: None,
        updated_at: None,
    };
    match ic
        .create(client.req(images::CreateImageRequest {
            image: Some(image.clone()),
        }))
        .await
    {
        Ok(_) => {}
        Err(e) if e.code() == Code::AlreadyExists => {
            ic.update(client.req(images::UpdateImageRequest {
                image: Some(image),
                update_mask: None,
            }))
            .await
            .map_err(|e| anyhow!("containerd: updating image {}: {}", r.name, e.message()))?;
        }
        Err(e) => bail!("containerd: creating image {}: {}", r.name, e.message()),
    }
    Ok(())
}

/// This layer's digest and those above it, comma-separated, as many as fit
/// in `room` bytes (a label's key and value may hold 4096 together). The
/// snapshotter opens the ones above ahead of their Prepare.
fn layer_list(layers: &[Descriptor], room: usize) -> String {
    let mut out = String::new();
    for l in layers {
        let d = l.digest().to_string();
        if out.len() + d.len() + 1 > room {
            break;
        }
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(&d);
    }
    out
}

/// Stores one small blob (sent in a single commit) with its labels.
async fn write_blob(
    client: &Client,
    digest: &str,
    bytes: &[u8],
    labels: HashMap<String, String>,
) -> Result<()> {
    let mut cc = content::content_client::ContentClient::new(client.channel.clone());
    let msg = content::WriteContentRequest {
        action: content::WriteAction::Commit as i32,
        r#ref: format!("lazycrypt-pull-{digest}"),
        total: bytes.len() as i64,
        expected: digest.to_string(),
        offset: 0,
        data: bytes.to_vec(),
        labels: labels.clone(),
    };
    let res = cc.write(client.req(tokio_stream::iter(vec![msg]))).await;
    let stored = match res {
        Ok(resp) => {
            let mut s = resp.into_inner();
            loop {
                match s.message().await {
                    Ok(Some(_)) => continue,
                    Ok(None) => break Ok(()),
                    Err(e) => break Err(e),
                }
            }
        }
        Err(e) => Err(e),
    };
    match stored {
        Ok(()) => Ok(()),
        // Already stored: only make sure it carries our labels.
        Err(e) if e.code() == Code::AlreadyExists => {
            let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
            cc.update(client.req(content::UpdateRequest {
                info: Some(content::Info {
                    digest: digest.to_string(),
                    labels,
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask { paths }),
            }))
            .await
            .map_err(|e| anyhow!("containerd: labelling {digest}: {}", e.message()))?;
            Ok(())
        }
        Err(e) => bail!("containerd: storing {digest}: {}", e.message()),
    }
}

fn unique() -> String {
    let mut b = [0u8; 6];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut b);
    hex::encode(b)
}

/// RFC 3339 UTC, as containerd parses lease expiry.
fn rfc3339(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    crate::layer::estargz::toc::rfc3339(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_image_spec_and_dates_are_rfc3339() {
        let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        let c = chain_ids(&[d('a'), d('b')]);
        assert_eq!(c[0], d('a'));
        use sha2::{Digest as _, Sha256};
        let want = hex::encode(Sha256::digest(format!("{} {}", d('a'), d('b'))));
        assert_eq!(c[1], format!("sha256:{want}"));
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_795_000_000);
        assert_eq!(rfc3339(t), "2026-11-18T11:06:40Z");
    }
}

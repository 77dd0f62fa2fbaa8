//! Builds a plain image from directories, one layer each, so demos and tests
//! make their own images with no network.

use std::io::{self, Write};
use std::path::PathBuf;

use serde_json::json;

use super::digest::{self, HashingWriter};
use super::platform::Platform;
use super::transport::{ImageDest, RawManifest};
use super::{Error, media};

/// How to build.
#[derive(Debug, Clone)]
pub struct BuildSpec {
    /// One directory per layer, bottom first.
    pub layers: Vec<PathBuf>,
    /// gzip the layers (`tar+gzip`), or leave them plain `tar`.
    pub gzip: bool,
    /// The command the image runs.
    pub cmd: Vec<String>,
    pub platform: Platform,
}

/// Builds the image into `dst` and tags it; returns the manifest.
pub fn build(spec: &BuildSpec, dst: &dyn ImageDest) -> Result<RawManifest, Error> {
    let res = build_inner(spec, dst);
    if res.is_err() {
        dst.abort();
    }
    res
}

fn build_inner(spec: &BuildSpec, dst: &dyn ImageDest) -> Result<RawManifest, Error> {
    let mut layers = Vec::new();
    let mut diff_ids = Vec::new();
    for dir in &spec.layers {
        let what = |e: io::Error| Error::io(format!("archiving {}", dir.display()), e);
        // Stream the tar through an OS pipe: a thread writes it, the destination reads it.
        let (reader, writer) = io::pipe().map_err(what)?;
        let (gzip, d) = (spec.gzip, dir.clone());
        let producer = std::thread::spawn(move || -> io::Result<digest::Digest> {
            if gzip {
                // Level 2, not 1: zlib-rs's level 1 writes one fixed-Huffman
                // block for megabytes of output, and a seek index can only
                // resume at block starts (docs/seek-index.md §5.4). Level 2
                // ends a block every few dozen KiB, as Go's and zlib's do.
                let gz = flate2::write::GzEncoder::new(writer, flate2::Compression::new(2));
                let (diff_id, _, gz) = write_tar(&d, HashingWriter::new(gz))?.finish();
                gz.finish()?;
                Ok(diff_id)
            } else {
                let (diff_id, _, _) = write_tar(&d, HashingWriter::new(writer))?.finish();
                Ok(diff_id)
            }
        });
        let mt = if spec.gzip {
            media::OCI_LAYER_GZIP
        } else {
            media::OCI_LAYER
        };
        // The reader drops before the join, so a failed upload cannot leave the archiver blocked.
        let stored = {
            let mut reader = reader;
            dst.put_blob(&mut reader, mt)
        };
        let produced = producer
            .join()
            .map_err(|_| Error::Malformed("archiver thread panicked".into()))?;
        let (blob_digest, size) = stored?;
        let diff_id = produced.map_err(what)?;
        layers.push(json!({"mediaType": mt, "digest": blob_digest.to_string(), "size": size}));
        diff_ids.push(diff_id.to_string());
    }
    let config = json!({
        "architecture": spec.platform.arch,
        "os": spec.platform.os,
        "config": {"Cmd": spec.cmd, "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": spec.layers.iter().map(|_| json!({"created_by": "lazycrypt build"})).collect::<Vec<_>>(),
    });
    let config_bytes = serde_json::to_vec(&config).expect("json");
    let (cd, cs) = dst.put_blob(&mut &config_bytes[..], media::OCI_CONFIG)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_MANIFEST,
        "config": {"mediaType": media::OCI_CONFIG, "digest": cd.to_string(), "size": cs},
        "layers": layers,
    });
    let bytes = serde_json::to_vec(&manifest).expect("json");
    let raw = RawManifest {
        media_type: media::OCI_MANIFEST.into(),
        digest: digest::of(&bytes),
        bytes,
    };
    dst.commit(&raw)?;
    Ok(raw)
}

fn write_tar<W: Write>(dir: &std::path::Path, w: W) -> io::Result<W> {
    let mut b = tar::Builder::new(w);
    b.follow_symlinks(false);
    b.mode(tar::HeaderMode::Complete);
    b.append_dir_all(".", dir)?;
    b.into_inner()
}

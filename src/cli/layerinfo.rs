//! `lazycrypt layerinfo`: what `ctr-enc images layerinfo` shows, plus `--json`.

use anyhow::Result;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use clap::Args as ClapArgs;
use serde_json::{Value, json};

use super::common::{KeyFileArgs, TransportArgs, image_ref, key_ring};
use crate::crypto::envelope::{self, KEYS_PREFIX};
use crate::oci::image::Image;
use crate::oci::media;
use crate::oci::transport::open_source;

#[derive(ClapArgs)]
pub struct Args {
    #[arg(long = "key", value_name = "FILE", help = super::common::KEY_HELP)]
    pub keys: Vec<String>,
    #[command(flatten)]
    pub key_files: KeyFileArgs,
    #[command(flatten)]
    pub transport: TransportArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    pub image: String,
}

pub fn run(a: Args) -> Result<()> {
    let r = image_ref(&a.image)?;
    let src = open_source(&r, &a.transport.options())?;
    let image = Image::load(src.as_ref(), &a.image)?;
    let ring = if a.keys.is_empty() {
        None
    } else {
        Some(key_ring(&a.keys, None, a.key_files)?)
    };
    let mut rows = Vec::new();
    for pi in &image.manifests {
        for (i, l) in pi.manifest.layers().iter().enumerate() {
            let ann = l.annotations().clone().unwrap_or_default();
            let encrypted = media::is_encrypted(l.media_type().as_ref());
            let schemes = envelope::schemes(&ann);
            let mut recipients = Vec::new();
            for s in &schemes {
                recipients.extend(describe_recipients(s, &ann[&format!("{KEYS_PREFIX}{s}")]));
            }
            let key = ring.as_ref().filter(|_| encrypted).map(|ring| {
                match envelope::unwrap(&ann, ring, l.digest().as_ref()) {
                    Ok(_) => "ok".to_string(),
                    Err(crate::crypto::Error::MissingKey(_)) => "missing".to_string(),
                    Err(e) => format!("error: {e}"),
                }
            });
            rows.push(json!({
                "index": i,
                "digest": l.digest().to_string(),
                "platform": pi.platform,
                "size": l.size(),
                "mediaType": l.media_type().to_string(),
                "encryption": if encrypted { schemes.join(",") } else { String::new() },
                "recipients": recipients,
                "key": key,
            }));
        }
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    let with_key = ring.is_some();
    let mut out = format!(
        "{:>3}  {:<71}  {:<13}  {:>10}  {:<10}  RECIPIENTS",
        "#", "DIGEST", "PLATFORM", "SIZE", "ENCRYPTION"
    );
    if with_key {
        out.push_str("  KEY");
    }
    println!("{out}");
    for r in rows {
        let recips: Vec<&str> = r["recipients"]
            .as_array()
            .map(|v| v.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let mut line = format!(
            "{:>3}  {:<71}  {:<13}  {:>10}  {:<10}  {}",
            r["index"].as_u64().unwrap_or(0),
            r["digest"].as_str().unwrap_or(""),
            r["platform"].as_str().unwrap_or(""),
            r["size"].as_u64().unwrap_or(0),
            r["encryption"]
                .as_str()
                .filter(|s| !s.is_empty())
                .unwrap_or("-"),
            if recips.is_empty() {
                "-".to_string()
            } else {
                recips.join(",")
            },
        );
        if with_key {
            line.push_str(&format!("  {}", r["key"].as_str().unwrap_or("-")));
        }
        println!("{line}");
    }
    Ok(())
}

/// Public facts about a scheme's recipients: JWE algorithms, PGP key ids.
fn describe_recipients(scheme: &str, value: &str) -> Vec<String> {
    let mut out = Vec::new();
    for entry in value.split(',').filter(|e| !e.is_empty()) {
        let Ok(raw) = B64.decode(entry.trim()) else {
            out.push(format!("{scheme}:?"));
            continue;
        };
        match scheme {
            "jwe" => out.extend(jwe_algs(&raw).into_iter().map(|a| format!("jwe:{a}"))),
            "pgp" => out.extend(pgp_key_ids(&raw).into_iter().map(|k| format!("pgp:0x{k}"))),
            _ => out.push(format!("[{scheme}]")),
        }
    }
    out
}

fn jwe_algs(raw: &[u8]) -> Vec<String> {
    let Ok(v) = serde_json::from_slice::<Value>(raw) else {
        return vec!["?".into()];
    };
    if let Some(list) = v["recipients"].as_array() {
        return list
            .iter()
            .map(|r| r["header"]["alg"].as_str().unwrap_or("?").to_string())
            .collect();
    }
    let prot = v["protected"].as_str().and_then(|p| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(p)
            .ok()
    });
    let alg = prot
        .and_then(|p| serde_json::from_slice::<Value>(&p).ok())
        .and_then(|h| h["alg"].as_str().map(str::to_string))
        .or_else(|| v["header"]["alg"].as_str().map(str::to_string));
    vec![alg.unwrap_or_else(|| "?".into())]
}

/// Key ids of the PKESK packets at the start of an OpenPGP message.
fn pgp_key_ids(raw: &[u8]) -> Vec<String> {
    let mut ids = Vec::new();
    let mut p = raw;
    while let Some(&ctb) = p.first() {
        if ctb & 0x80 == 0 {
            break;
        }
        let (tag, hdr, len) = if ctb & 0x40 != 0 {
            let tag = ctb & 0x3f;
            match p.get(1) {
                Some(&l) if l < 192 => (tag, 2, l as usize),
                Some(&l) if l < 224 => (
                    tag,
                    3,
                    ((l as usize - 192) << 8) + *p.get(2).unwrap_or(&0) as usize + 192,
                ),
                Some(255) if p.len() >= 6 => (
                    tag,
                    6,
                    u32::from_be_bytes([p[2], p[3], p[4], p[5]]) as usize,
                ),
                _ => break,
            }
        } else {
            let tag = (ctb >> 2) & 0x0f;
            match ctb & 3 {
                0 => (tag, 2, *p.get(1).unwrap_or(&0) as usize),
                1 if p.len() >= 3 => (tag, 3, u16::from_be_bytes([p[1], p[2]]) as usize),
                2 if p.len() >= 5 => (
                    tag,
                    5,
                    u32::from_be_bytes([p[1], p[2], p[3], p[4]]) as usize,
                ),
                _ => break,
            }
        };
        if tag != 1 || p.len() < hdr + len || len < 9 {
            break;
        }
        ids.push(hex::encode_upper(&p[hdr + 1..hdr + 9]));
        p = &p[hdr + len..];
    }
    ids
}

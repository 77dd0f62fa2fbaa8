//! `lazycrypt stream-decrypt`: a drop-in for imgcrypt's `ctd-decoder`, the
//! stream processor containerd runs to decrypt layers on unpack.
//!
//! Encrypted blob on stdin, decrypted blob on stdout. containerd names the
//! input media type in `STREAM_PROCESSOR_MEDIATYPE` and passes a payload on
//! fd 3: a protobuf `google.protobuf.Any` whose value is the JSON
//! `{"DecryptConfig":{"Parameters":{…}},"Descriptor":{…}}` (the layer's
//! annotations carry the wrapped keys; the parameters may carry keys too).

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use clap::Args as ClapArgs;
use prost::Message;
use serde::Deserialize;
use zeroize::Zeroizing;

use super::common::{KeyFileArgs, key_ring};
use crate::crypto::envelope::layer_keys;
use crate::crypto::keys::parse_key_file;
use crate::crypto::wipe::{self, SecretString, json_error};
use crate::crypto::{KeyRing, cipher::LayerKey};
use crate::oci::{Descriptor, media};

#[derive(ClapArgs)]
pub struct Args {
    /// Directory of private keys (like ctd-decoder's).
    #[arg(long)]
    pub decryption_keys_path: Option<PathBuf>,
    #[command(flatten)]
    pub key_files: KeyFileArgs,
    /// Read the payload from this file instead of fd 3 (for testing).
    #[arg(long, hide = true)]
    pub payload: Option<PathBuf>,
}

pub fn run(a: Args) -> Result<()> {
    let mt = std::env::var("STREAM_PROCESSOR_MEDIATYPE").unwrap_or_default();
    let payload =
        read_payload(a.payload.as_ref()).context("reading the stream processor payload")?;
    let Some(payload) = payload else {
        bail!(
            "no payload on fd 3: the layer descriptor with its encryption annotations is \
             needed; containerd 2.1's transfer service (its CRI pulls by default) passes none \
             to stream processors: set use_local_image_pull = true in \
             [plugins.'io.containerd.cri.v1.images'], or let lazycrypt serve the layers \
             (README, \"Layer labels\")"
        );
    };
    let Payload {
        decrypt_config,
        descriptor: desc,
    } = parse_payload(payload)?;
    if !mt.is_empty()
        && !media::is_encrypted(&mt)
        && !media::is_encrypted(desc.media_type().as_ref())
    {
        bail!("media type {mt} is not encrypted");
    }
    let mut ring = key_ring(&[], a.decryption_keys_path.as_deref(), a.key_files)?;
    add_parameters(&mut ring, &decrypt_config.parameters)?;
    // The keys are in the ring now; their encoded copies go before the layer.
    drop(decrypt_config);

    let layer = desc.digest().to_string();
    let annotations = desc.annotations().clone().unwrap_or_default();
    let (opts, pubopts) = layer_keys(&annotations, &ring, &layer)?;
    let key = LayerKey::from_options(&opts);
    // Authenticated by the HMAC at EOF; see `note_digest` for why the recorded digest is not enforced.
    let mut plain = key.decrypt_reader(io::stdin(), &pubopts.hmac, None, &layer);
    let mut out = io::stdout().lock();
    // Bytes before a failed HMAC may already be out; containerd discards the
    // unpack on our non-zero exit, as with ctd-decoder.
    io::copy(&mut plain, &mut out).with_context(|| format!("decrypting layer {layer}"))?;
    out.flush()?;
    Ok(())
}

/// `{"DecryptConfig":{"Parameters":{…}},"Descriptor":{…}}`: the parameters
/// are Go's `map[string][][]byte`, so base64 strings (or `null`), and may
/// hold private keys and their passwords.
#[derive(Deserialize)]
pub struct Payload {
    /// Go writes `null` for a nil struct pointer or map: taken as empty.
    #[serde(rename = "DecryptConfig", default, deserialize_with = "null_is_empty")]
    pub decrypt_config: DecryptConfig,
    #[serde(rename = "Descriptor")]
    pub descriptor: Descriptor,
}

#[derive(Deserialize, Default)]
pub struct DecryptConfig {
    #[serde(rename = "Parameters", default, deserialize_with = "null_is_empty")]
    pub parameters: BTreeMap<String, Option<Vec<SecretString>>>,
}

/// A field Go may write as `null` (a nil map or pointer): its default then.
fn null_is_empty<'de, D, T>(d: D) -> std::result::Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Parses the payload (consumed, and wiped with every copy made of it).
/// Errors give the JSON position, never a value: the values are keys.
pub fn parse_payload(payload: Zeroizing<Vec<u8>>) -> Result<Payload> {
    let mut any =
        prost_types::Any::decode(&payload[..]).context("payload is not a protobuf Any")?;
    drop(payload);
    let value = Zeroizing::new(std::mem::take(&mut any.value));
    serde_json::from_slice(&value)
        .map_err(|e| anyhow::anyhow!("payload value is not a valid payload ({})", json_error(&e)))
}

fn read_payload(path: Option<&PathBuf>) -> Result<Option<Zeroizing<Vec<u8>>>> {
    let p = match path {
        Some(p) => p.clone(),
        None => {
            let fd3 = PathBuf::from("/proc/self/fd/3");
            if !fd3.exists() {
                return Ok(None);
            }
            fd3
        }
    };
    // A pipe has no size to read up front: the buffer grows, wiping.
    let buf = wipe::read_to_end(std::fs::File::open(&p)?)?;
    Ok(if buf.is_empty() { None } else { Some(buf) })
}

/// Keys containerd passes in the DecryptConfig (Go `[][]byte`, so base64 strings).
fn add_parameters(
    ring: &mut KeyRing,
    params: &BTreeMap<String, Option<Vec<SecretString>>>,
) -> Result<()> {
    let list = |k: &str| -> Vec<Zeroizing<Vec<u8>>> {
        params
            .get(k)
            .and_then(Option::as_ref)
            .map(|v| {
                v.iter()
                    .filter_map(|s| B64.decode(s.as_bytes()).ok())
                    .map(Zeroizing::new)
                    .collect()
            })
            .unwrap_or_default()
    };
    for (keys_k, pw_k) in [
        ("privkeys", "privkeys-passwords"),
        ("gpg-privatekeys", "gpg-privatekeys-passwords"),
    ] {
        let pws = list(pw_k);
        for (i, k) in list(keys_k).iter().enumerate() {
            let pw = Zeroizing::new(
                pws.get(i)
                    .map(|p| String::from_utf8_lossy(p).into_owned())
                    .unwrap_or_default(),
            );
            let pw_opt = (!pw.is_empty()).then_some(pw.as_str());
            let keys = parse_key_file(k, pw_opt)
                .map_err(|e| anyhow::anyhow!("payload {keys_k}[{i}]: {e}"))?;
            for km in keys {
                ring.add(km, &pw);
            }
        }
    }
    for (i, c) in list("x509s").iter().enumerate() {
        for km in parse_key_file(c, None).map_err(|e| anyhow::anyhow!("payload x509s[{i}]: {e}"))? {
            ring.add(km, &Zeroizing::new(String::new()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any(json: &str) -> Zeroizing<Vec<u8>> {
        let a = prost_types::Any {
            type_url: "github.com/containerd/imgcrypt/ctd/decryption/payload".into(),
            value: json.as_bytes().to_vec(),
        };
        Zeroizing::new(a.encode_to_vec())
    }

    /// containerd's unpacker passes `"Parameters":null` when it has no
    /// keys to add (Go's nil map): a payload as valid as any.
    #[test]
    fn null_parameters_and_config_are_empty() {
        let desc = r#"{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip+encrypted","digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000","size":1}"#;
        for dc in [
            r#"{"Parameters":null}"#,
            "null",
            r#"{"Parameters":{"privkeys":null}}"#,
        ] {
            let p = parse_payload(any(&format!(
                r#"{{"DecryptConfig":{dc},"Descriptor":{desc}}}"#
            )))
            .unwrap_or_else(|e| panic!("{dc}: {e}"));
            assert!(
                p.decrypt_config.parameters.values().all(Option::is_none),
                "{dc}"
            );
        }
    }
}

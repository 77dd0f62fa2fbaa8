//! The ocicrypt keyprovider protocol: an external command (JSON on
//! stdin/stdout) or a gRPC service wraps and unwraps the private options.
//! Providers are named in the JSON file `$OCICRYPT_KEYPROVIDER_CONFIG`.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use serde_json::json;
use zeroize::Zeroizing;

use super::Error;
use super::wipe::{self, SecretString, json_error};

/// The generated gRPC client and server for `keyprovider.KeyProviderService`.
pub mod pb {
    tonic::include_proto!("keyprovider");
}

/// The environment variable ocicrypt reads the provider config from.
pub const CONFIG_ENV: &str = "OCICRYPT_KEYPROVIDER_CONFIG";

/// `{"key-providers":{NAME:{"cmd":{…}}|{"grpc":"host:port"}}}`.
#[derive(Debug, Clone, Deserialize)]
pub struct ProviderConfig {
    #[serde(rename = "key-providers", default)]
    pub providers: BTreeMap<String, Provider>,
}

/// How to reach one provider.
#[derive(Debug, Clone, Deserialize)]
pub struct Provider {
    pub cmd: Option<ProviderCommand>,
    pub grpc: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ProviderCommand {
    pub path: PathBuf,
    #[serde(default)]
    pub args: Vec<String>,
}

impl ProviderConfig {
    /// Reads the file named by `$OCICRYPT_KEYPROVIDER_CONFIG`, if set.
    pub fn from_env() -> Result<Option<Self>, Error> {
        match std::env::var_os(CONFIG_ENV) {
            Some(p) if !p.is_empty() => Self::load(Path::new(&p)).map(Some),
            _ => Ok(None),
        }
    }

    pub fn load(path: &Path) -> Result<Self, Error> {
        let raw = std::fs::read(path).map_err(|e| {
            Error::KeyProvider(format!("keyprovider config {}: {e}", path.display()))
        })?;
        serde_json::from_slice(&raw)
            .map_err(|e| Error::KeyProvider(format!("keyprovider config {}: {e}", path.display())))
    }
}

fn provider<'a>(cfg: Option<&'a ProviderConfig>, name: &str) -> Result<&'a Provider, Error> {
    let cfg = cfg.ok_or_else(|| {
        Error::KeyProvider(format!(
            "keyprovider {name:?}: no provider config (set ${CONFIG_ENV})"
        ))
    })?;
    cfg.providers.get(name).ok_or_else(|| {
        Error::KeyProvider(format!(
            "keyprovider {name:?} is not in the provider config"
        ))
    })
}

/// Asks provider `name` to wrap `opts`; returns the bytes that go (base64) into
/// the layer annotation.
pub fn wrap(
    cfg: Option<&ProviderConfig>,
    name: &str,
    arg: Option<&str>,
    opts: &[u8],
) -> Result<Vec<u8>, Error> {
    let p = provider(cfg, name)?;
    let params = json!({ name: [B64.encode(arg.unwrap_or("Enabled"))] });
    // The private options in base64, borrowed into a request that is
    // serialized into a wiped buffer (a `Value` would keep a copy).
    let optsdata = Zeroizing::new(B64.encode(opts));
    let input = wipe::to_json(&WrapRequest {
        op: "keywrap",
        keywrapparams: WrapParams {
            ec: json!({"Parameters": params, "DecryptConfig": {"Parameters": {}}}),
            optsdata: &optsdata,
        },
        keyunwrapparams: json!({"dc": null, "annotation": null}),
    })
    .expect("json");
    let out = call(p, name, &input, Op::Wrap)?;
    wrap_reply(&out, name).map(|z| z.to_vec())
}

/// Asks provider `name` to unwrap an annotation entry; returns private options.
pub fn unwrap(
    cfg: Option<&ProviderConfig>,
    name: &str,
    annotation: &[u8],
) -> Result<Zeroizing<Vec<u8>>, Error> {
    let p = provider(cfg, name)?;
    let input = serde_json::to_vec(&json!({
        "op": "keyunwrap",
        "keywrapparams": {"ec": null, "optsdata": null},
        "keyunwrapparams": {
            "dc": {"Parameters": { name: [B64.encode("Enabled")] }},
            "annotation": B64.encode(annotation),
        },
    }))
    .expect("json");
    let out = call(p, name, &input, Op::Unwrap)?;
    unwrap_reply(&out, name)
}

/// The annotation bytes in provider `name`'s reply to `keywrap`.
pub fn wrap_reply(out: &[u8], name: &str) -> Result<Zeroizing<Vec<u8>>, Error> {
    let reply: WrapReply = parse_reply(out, name)?;
    decode_field(
        reply.keywrapresults.and_then(|r| r.annotation),
        "keywrapresults.annotation",
        name,
    )
}

/// The private options in provider `name`'s reply to `keyunwrap`.
pub fn unwrap_reply(out: &[u8], name: &str) -> Result<Zeroizing<Vec<u8>>, Error> {
    let reply: UnwrapReply = parse_reply(out, name)?;
    decode_field(
        reply.keyunwrapresults.and_then(|r| r.optsdata),
        "keyunwrapresults.optsdata",
        name,
    )
}

/// The `keywrap` request.
#[derive(Serialize)]
struct WrapRequest<'a> {
    op: &'static str,
    keywrapparams: WrapParams<'a>,
    keyunwrapparams: serde_json::Value,
}

#[derive(Serialize)]
struct WrapParams<'a> {
    ec: serde_json::Value,
    optsdata: &'a str,
}

/// `{"keywrapresults":{"annotation":…}}`.
#[derive(Deserialize)]
struct WrapReply {
    keywrapresults: Option<WrapResults>,
}

#[derive(Deserialize)]
struct WrapResults {
    annotation: Option<SecretString>,
}

/// `{"keyunwrapresults":{"optsdata":…}}`: the private options, base64.
#[derive(Deserialize)]
struct UnwrapReply {
    keyunwrapresults: Option<UnwrapResults>,
}

#[derive(Deserialize)]
struct UnwrapResults {
    optsdata: Option<SecretString>,
}

/// Parses a provider's reply; errors give the JSON position, never a value.
fn parse_reply<'de, T: Deserialize<'de>>(out: &'de [u8], name: &str) -> Result<T, Error> {
    serde_json::from_slice(out).map_err(|e| {
        Error::KeyProvider(format!(
            "keyprovider {name:?}: response is not valid ({})",
            json_error(&e)
        ))
    })
}

fn decode_field(
    value: Option<SecretString>,
    field: &str,
    name: &str,
) -> Result<Zeroizing<Vec<u8>>, Error> {
    let s = value.ok_or_else(|| {
        Error::KeyProvider(format!("keyprovider {name:?}: response has no {field}"))
    })?;
    // The decoder's error names a byte of the value: not printed.
    B64.decode(s.as_bytes())
        .map(Zeroizing::new)
        .map_err(|_| Error::KeyProvider(format!("keyprovider {name:?}: {field} is not base64")))
}

#[derive(Clone, Copy)]
enum Op {
    Wrap,
    Unwrap,
}

fn call(p: &Provider, name: &str, input: &[u8], op: Op) -> Result<Zeroizing<Vec<u8>>, Error> {
    if let Some(cmd) = &p.cmd {
        return run_command(cmd, name, input);
    }
    if let Some(addr) = &p.grpc {
        return call_grpc(addr, name, input, op);
    }
    Err(Error::KeyProvider(format!(
        "keyprovider {name:?}: config names neither cmd nor grpc"
    )))
}

fn run_command(
    cmd: &ProviderCommand,
    name: &str,
    input: &[u8],
) -> Result<Zeroizing<Vec<u8>>, Error> {
    let what = format!("keyprovider {name:?} ({})", cmd.path.display());
    let mut child = Command::new(&cmd.path)
        .args(&cmd.args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::KeyProvider(format!("{what}: {e}")))?;
    let (stdin, stdout, stderr) = (child.stdin.take(), child.stdout.take(), child.stderr.take());
    // All three pipes at once, so that a provider that answers before it
    // has read everything cannot block on a full pipe. The answer holds the
    // private options: it is read into a buffer that leaves no copies.
    let (stdout, stderr) = std::thread::scope(|s| {
        s.spawn(move || {
            if let Some(mut stdin) = stdin {
                // A provider that exits without reading gets EPIPE here; its exit status says more.
                let _ = stdin.write_all(input);
            }
        });
        let err = s.spawn(move || {
            // Its first line is all an error quotes; the rest is drained.
            let mut buf = Vec::new();
            if let Some(mut e) = stderr {
                let _ = (&mut e).take(64 << 10).read_to_end(&mut buf);
                let _ = std::io::copy(&mut e, &mut std::io::sink());
            }
            buf
        });
        let out = stdout.map(wipe::read_to_end).transpose();
        (out, err.join().unwrap_or_default())
    });
    let status = child
        .wait()
        .map_err(|e| Error::KeyProvider(format!("{what}: {e}")))?;
    let stdout = stdout
        .map_err(|e| Error::KeyProvider(format!("{what}: {e}")))?
        .unwrap_or_default();
    if !status.success() {
        let err = String::from_utf8_lossy(&stderr);
        let first = err
            .lines()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim();
        return Err(Error::KeyProvider(format!("{what}: {status}: {first}")));
    }
    Ok(stdout)
}

fn call_grpc(addr: &str, name: &str, input: &[u8], op: Op) -> Result<Zeroizing<Vec<u8>>, Error> {
    let what = format!("keyprovider {name:?} (grpc {addr})");
    let uri = if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    };
    let input = input.to_vec();
    // A private runtime on its own thread: callers may be sync code or inside another runtime.
    let res = std::thread::scope(|s| {
        s.spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("runtime: {e}"))?;
            rt.block_on(async {
                let channel = tonic::transport::Endpoint::from_shared(uri)
                    .map_err(|e| e.to_string())?
                    .connect_timeout(std::time::Duration::from_secs(10))
                    .connect()
                    .await
                    .map_err(|e| format!("connect: {e}"))?;
                let mut client =
                    pb::key_provider_service_client::KeyProviderServiceClient::new(channel);
                let req = pb::KeyProviderKeyWrapProtocolInput {
                    key_provider_key_wrap_protocol_input: input,
                };
                let res = match op {
                    Op::Wrap => client.wrap_key(req).await,
                    Op::Unwrap => client.un_wrap_key(req).await,
                };
                res.map(|r| r.into_inner().key_provider_key_wrap_protocol_output)
                    .map_err(|s| format!("{}: {}", s.code(), s.message()))
            })
        })
        .join()
        .unwrap_or_else(|_| Err("client thread panicked".into()))
    });
    res.map(Zeroizing::new)
        .map_err(|e| Error::KeyProvider(format!("{what}: {e}")))
}

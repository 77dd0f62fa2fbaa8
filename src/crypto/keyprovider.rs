//! The ocicrypt keyprovider protocol: an external command (JSON on
//! stdin/stdout) or a gRPC service wraps and unwraps the private options.
//! Providers are named in the JSON file `$OCICRYPT_KEYPROVIDER_CONFIG`.
//!
//! Every call has a deadline ([`ProviderConfig::timeout`]): a command that
//! has not answered and exited by then is killed with its process group, a
//! gRPC provider that has not connected and answered by then is left. A
//! command's stdin, stdout and stderr are served together, so a provider
//! that writes before it reads cannot block on a full pipe. Its stderr is
//! counted and dropped, never quoted: a provider may print key material there.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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

/// How long a keyprovider call may take unless configured otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// The most a provider's answer may hold; the private options are a few
/// hundred bytes, a wrapped annotation a few KiB.
pub const MAX_REPLY: usize = 4 << 20;

/// `{"key-providers":{NAME:{"cmd":{…}}|{"grpc":"host:port"}}}`.
#[derive(Debug, Clone, Deserialize)]
pub struct ProviderConfig {
    #[serde(rename = "key-providers", default)]
    pub providers: BTreeMap<String, Provider>,
    /// How long one call may take (not part of ocicrypt's file: set by
    /// lazycrypt's `keyprovider_timeout`).
    #[serde(skip, default = "default_timeout")]
    pub timeout: Duration,
}

fn default_timeout() -> Duration {
    DEFAULT_TIMEOUT
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

/// Provider `name` in `cfg`, or why there is none.
pub fn provider<'a>(cfg: Option<&'a ProviderConfig>, name: &str) -> Result<&'a Provider, Error> {
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
    let out = call(p, name, &input, Op::Wrap, timeout(cfg))?;
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
    let out = call(p, name, &input, Op::Unwrap, timeout(cfg))?;
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

fn timeout(cfg: Option<&ProviderConfig>) -> Duration {
    cfg.map_or(DEFAULT_TIMEOUT, |c| c.timeout)
}

fn call(
    p: &Provider,
    name: &str,
    input: &[u8],
    op: Op,
    timeout: Duration,
) -> Result<Zeroizing<Vec<u8>>, Error> {
    if let Some(cmd) = &p.cmd {
        return run_command(cmd, name, input, timeout);
    }
    if let Some(addr) = &p.grpc {
        return call_grpc(addr, name, input, op, timeout);
    }
    Err(Error::KeyProvider(format!(
        "keyprovider {name:?}: config names neither cmd nor grpc"
    )))
}

/// Why a command's exchange ended early.
enum Stop {
    Deadline,
    TooLong,
    Io(std::io::Error),
}

fn run_command(
    cmd: &ProviderCommand,
    name: &str,
    input: &[u8],
    timeout: Duration,
) -> Result<Zeroizing<Vec<u8>>, Error> {
    let what = format!("keyprovider {name:?} ({})", cmd.path.display());
    let deadline = Instant::now() + timeout;
    let mut child = Command::new(&cmd.path)
        .args(&cmd.args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so that a timeout stops what it started too.
        .process_group(0)
        .spawn()
        .map_err(|e| Error::KeyProvider(format!("{what}: {e}")))?;
    let res = exchange(&mut child, input, deadline).and_then(|(out, err_bytes)| {
        wait_until(&mut child, deadline).map(|status| (out, err_bytes, status))
    });
    let (out, err_bytes, status) = match res {
        Ok(r) => r,
        Err(stop) => {
            kill_group(&mut child);
            return Err(Error::KeyProvider(match stop {
                Stop::Deadline => format!(
                    "{what}: no answer within {} (keyprovider_timeout); stopped it",
                    secs(timeout)
                ),
                Stop::TooLong => format!(
                    "{what}: answer longer than {} MiB; stopped it",
                    MAX_REPLY >> 20
                ),
                Stop::Io(e) => format!("{what}: {e}"),
            }));
        }
    };
    if !status.success() {
        let stderr = match err_bytes {
            0 => String::new(),
            n => format!(" (its {n} bytes of stderr are not shown: they may hold key material)"),
        };
        return Err(Error::KeyProvider(format!("{what}: {status}{stderr}")));
    }
    Ok(out)
}

/// `5 s`, `0.5 s`.
fn secs(d: Duration) -> String {
    format!("{} s", d.as_secs_f64())
}

/// Feeds `input` to the child's stdin while reading its stdout (the
/// answer, into a buffer that leaves no copies) and draining its stderr,
/// until both reach their end or `deadline` passes. Returns the answer and
/// how many bytes of stderr were dropped.
fn exchange(
    child: &mut Child,
    input: &[u8],
    deadline: Instant,
) -> Result<(Zeroizing<Vec<u8>>, u64), Stop> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let (mut stdin, mut stdout, mut stderr) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take());
    for fd in [
        stdin.as_ref().map(|f| f.as_raw_fd()),
        stdout.as_ref().map(|f| f.as_raw_fd()),
        stderr.as_ref().map(|f| f.as_raw_fd()),
    ]
    .into_iter()
    .flatten()
    {
        set_nonblocking(fd).map_err(Stop::Io)?;
    }
    if input.is_empty() {
        stdin = None;
    }
    let mut out = wipe::SecretBuf::default();
    let mut err_bytes = 0u64;
    let mut block = Zeroizing::new([0u8; 16 << 10]);
    let mut written = 0;
    while stdout.is_some() || stderr.is_some() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Stop::Deadline);
        }
        let wait = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
        // Which of stdin, stdout and stderr are ready (or closed).
        let ready = {
            let out_ev = PollFlags::POLLIN;
            let fds: Vec<(usize, PollFd)> = [
                stdin
                    .as_ref()
                    .map(|f| (0, PollFd::new(f.as_fd(), PollFlags::POLLOUT))),
                stdout.as_ref().map(|f| (1, PollFd::new(f.as_fd(), out_ev))),
                stderr.as_ref().map(|f| (2, PollFd::new(f.as_fd(), out_ev))),
            ]
            .into_iter()
            .flatten()
            .collect();
            let (which, mut polled): (Vec<usize>, Vec<PollFd>) = fds.into_iter().unzip();
            match poll(&mut polled, wait) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(Stop::Io(e.into())),
            }
            let mut ready = [false; 3];
            for (i, p) in which.into_iter().zip(&polled) {
                ready[i] = p.revents().is_some_and(|r| !r.is_empty());
            }
            ready
        };
        if ready[0]
            && let Some(w) = stdin.as_mut()
        {
            let end = input.len().min(written + (64 << 10));
            match w.write(&input[written..end]) {
                Ok(n) => written += n,
                Err(e) if would_block(&e) => {}
                // A provider that stopped reading (EPIPE): its exit status says more.
                Err(_) => written = input.len(),
            }
            if written == input.len() {
                stdin = None;
            }
        }
        if ready[1]
            && let Some(r) = stdout.as_mut()
        {
            match r.read(&mut block[..]) {
                Ok(0) => stdout = None,
                Ok(n) => {
                    if out.len() + n > MAX_REPLY {
                        return Err(Stop::TooLong);
                    }
                    out.extend_from_slice(&block[..n]);
                }
                Err(e) if would_block(&e) => {}
                Err(e) => return Err(Stop::Io(e)),
            }
        }
        if ready[2]
            && let Some(r) = stderr.as_mut()
        {
            // Counted, never kept: see the module documentation.
            match r.read(&mut block[..]) {
                Ok(0) => stderr = None,
                Ok(n) => err_bytes += n as u64,
                Err(e) if would_block(&e) => {}
                Err(e) => return Err(Stop::Io(e)),
            }
        }
    }
    Ok((out.into_inner(), err_bytes))
}

fn would_block(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
    )
}

fn set_nonblocking(fd: std::os::fd::RawFd) -> std::io::Result<()> {
    // SAFETY: F_GETFL/F_SETFL on a pipe this function's caller owns.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Waits for the child to exit, until `deadline`.
fn wait_until(child: &mut Child, deadline: Instant) -> Result<std::process::ExitStatus, Stop> {
    loop {
        if let Some(status) = child.try_wait().map_err(Stop::Io)? {
            return Ok(status);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Stop::Deadline);
        }
        std::thread::sleep(left.min(Duration::from_millis(5)));
    }
}

/// SIGKILLs the child's process group and reaps the child.
fn kill_group(child: &mut Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: kill(2) of the process group this child leads (spawned
        // with process_group(0)); it is not reaped yet, so the id is ours.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn call_grpc(
    addr: &str,
    name: &str,
    input: &[u8],
    op: Op,
    timeout: Duration,
) -> Result<Zeroizing<Vec<u8>>, Error> {
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
            let exchange = async {
                let channel = tonic::transport::Endpoint::from_shared(uri)
                    .map_err(|e| e.to_string())?
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
            };
            // One deadline over connecting and answering together (the
            // endpoint's own timeouts would race it with vaguer errors).
            rt.block_on(async { tokio::time::timeout(timeout, exchange).await })
                .unwrap_or_else(|_| {
                    Err(format!(
                        "no answer within {} (keyprovider_timeout)",
                        secs(timeout)
                    ))
                })
        })
        .join()
        .unwrap_or_else(|_| Err("client thread panicked".into()))
    });
    res.map(Zeroizing::new)
        .map_err(|e| Error::KeyProvider(format!("{what}: {e}")))
}

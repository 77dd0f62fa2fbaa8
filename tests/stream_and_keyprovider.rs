//! `stream-decrypt` fed as containerd feeds a stream processor, and the
//! keyprovider protocol through cmd and gRPC test doubles.

mod common;

use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use common::*;
use prost::Message;
use sha2::{Digest, Sha256};

/// Runs `stream-decrypt` with the encrypted blob on stdin, the media type in
/// the environment and `payload` on fd 3, as containerd does.
fn stream_decrypt(
    args: &[&str],
    blob: &Path,
    payload: &[u8],
    media_type: &str,
) -> std::process::Output {
    stream_decrypt_with_env(args, blob, payload, media_type, &[])
}

/// [`stream_decrypt`] with extra environment.
fn stream_decrypt_with_env(
    args: &[&str],
    blob: &Path,
    payload: &[u8],
    media_type: &str,
    env: &[(&str, &Path)],
) -> std::process::Output {
    let d = tmp();
    let pfile = d.path().join("payload");
    std::fs::write(&pfile, payload).unwrap();
    let fd3 = std::fs::File::open(&pfile).unwrap();
    let raw = fd3.as_raw_fd();
    let mut c = lazycrypt();
    c.arg("stream-decrypt")
        .args(args)
        .envs(env.iter().copied())
        .env("STREAM_PROCESSOR_MEDIATYPE", media_type);
    c.stdin(std::fs::File::open(blob).unwrap())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: dup2 and fcntl are async-signal-safe; they run in the child between fork and exec.
    unsafe {
        c.pre_exec(move || {
            // dup2 onto itself is a no-op that keeps close-on-exec: when the
            // payload already sits on fd 3, clear the flag instead.
            let ok = if raw == 3 {
                libc::fcntl(3, libc::F_SETFD, 0) >= 0
            } else {
                libc::dup2(raw, 3) >= 0
            };
            if !ok {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = c.output().unwrap();
    drop(fd3);
    out
}

/// The digest of what a successful `stream-decrypt` wrote to stdout.
fn decrypted_digest(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    format!("sha256:{}", hex::encode(Sha256::digest(&out.stdout)))
}

/// The payload imgcrypt puts on fd 3: an Any wrapping the JSON payload.
fn payload(descriptor: &serde_json::Value, params: serde_json::Value) -> Vec<u8> {
    let value = serde_json::to_vec(
        &serde_json::json!({"DecryptConfig": {"Parameters": params}, "Descriptor": descriptor}),
    )
    .unwrap();
    prost_types::Any {
        type_url: "github.com/containerd/imgcrypt/images/encryption.Payload".into(),
        value,
    }
    .encode_to_vec()
}

fn encrypted_layer(d: &Path, recipient: &str) -> (String, String, serde_json::Value, PathBuf) {
    let plain = build_image(d, "plain", 1);
    let enc = format!("oci:{}/enc:x", d.display());
    ok(lazycrypt().args(["encrypt", "-r", recipient, &plain, &enc]));
    let desc = layout_manifest(&enc)["layers"][0].clone();
    let blob = blob_path(&split_layout(&enc).0, desc["digest"].as_str().unwrap());
    (plain, enc, desc, blob)
}

#[test]
fn stream_decrypt_as_a_containerd_stream_processor() {
    let d = tmp();
    let k = rsa_keys(d.path(), "k");
    let (plain, _enc, desc, blob) =
        encrypted_layer(d.path(), &format!("jwe:{}", k.public.display()));
    let want = layer_digests(&plain)[0].clone();
    let mt = desc["mediaType"].as_str().unwrap().to_string();

    // Keys from a keys directory, like ctd-decoder --decryption-keys-path.
    let keys = d.path().join("keys");
    std::fs::create_dir_all(keys.join("nested")).unwrap();
    std::fs::copy(&k.private, keys.join("nested/k.pem")).unwrap();
    std::fs::write(keys.join("README"), "not a key").unwrap();
    let out = stream_decrypt(
        &["--decryption-keys-path", keys.to_str().unwrap()],
        &blob,
        &payload(&desc, serde_json::json!({})),
        &mt,
    );
    assert_eq!(decrypted_digest(&out), want);

    // Keys passed by containerd in the payload's DecryptConfig.
    let params = serde_json::json!({"privkeys": [B64.encode(std::fs::read(&k.private).unwrap())], "privkeys-passwords": [""]});
    let out = stream_decrypt(&[], &blob, &payload(&desc, params), &mt);
    assert_eq!(decrypted_digest(&out), want);

    // No key: non-zero exit, imgcrypt's message on stderr.
    let out = stream_decrypt(&[], &blob, &payload(&desc, serde_json::json!({})), &mt);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("missing private key needed for decryption")
    );

    // A tampered blob fails with the layer named, never exit 0.
    let bad = d.path().join("tampered");
    let mut bytes = std::fs::read(&blob).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&bad, bytes).unwrap();
    let out = stream_decrypt(
        &["--decryption-keys-path", keys.to_str().unwrap()],
        &bad,
        &payload(&desc, serde_json::json!({})),
        &mt,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(desc["digest"].as_str().unwrap()) && err.contains("HMAC mismatch"),
        "{err}"
    );
}

/// containerd 2.1's transfer service runs stream processors with no
/// payload: the error says so, and what to change.
#[test]
fn stream_decrypt_without_a_payload_names_the_likely_cause_and_fix() {
    let d = tmp();
    let k = rsa_keys(d.path(), "k");
    let (_plain, _enc, desc, blob) =
        encrypted_layer(d.path(), &format!("jwe:{}", k.public.display()));
    let out = stream_decrypt(&[], &blob, b"", desc["mediaType"].as_str().unwrap());
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let want = "no payload on fd 3: the layer descriptor with its encryption annotations is \
        needed; containerd 2.1's transfer service (its CRI pulls by default) passes none to \
        stream processors: set use_local_image_pull = true in \
        [plugins.'io.containerd.cri.v1.images'], or let lazycrypt serve the layers (README, \
        \"Layer labels\")";
    assert!(err.lines().any(|l| l.ends_with(want)), "{err}");
}

fn provider_config(d: &Path, body: &str) -> PathBuf {
    let p = d.join("ocicrypt-keyprovider.json");
    std::fs::write(&p, body).unwrap();
    p
}

#[test]
fn keyprovider_cmd_wraps_and_unwraps_through_the_protocol() {
    let d = tmp();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/keyprovider.py");
    let cfg = provider_config(
        d.path(),
        &format!(
            r#"{{"key-providers":{{"testkp":{{"cmd":{{"path":"{}","args":[]}}}}}}}}"#,
            script.display()
        ),
    );
    let plain = build_image(d.path(), "plain", 2);
    let enc = format!("oci:{}/enc:kp", d.path().display());
    ok(lazycrypt().env("OCICRYPT_KEYPROVIDER_CONFIG", &cfg).args([
        "encrypt",
        "-r",
        "provider:testkp",
        &plain,
        &enc,
    ]));
    let ann = &layout_manifest(&enc)["layers"][0]["annotations"];
    let wrapped = B64
        .decode(
            ann["org.opencontainers.image.enc.keys.provider.testkp"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
    assert!(
        wrapped.starts_with(b"KPTEST1:"),
        "the annotation is what the provider returned"
    );

    let out = format!("oci:{}/dec:kp", d.path().display());
    ok(lazycrypt().env("OCICRYPT_KEYPROVIDER_CONFIG", &cfg).args([
        "decrypt",
        "--key",
        "provider:testkp",
        &enc,
        &out,
    ]));
    assert_eq!(layer_digests(&out), layer_digests(&plain));

    // Every configured provider is asked, as ocicrypt asks them: no --key needed.
    let out2 = format!("oci:{}/dec2:kp", d.path().display());
    ok(lazycrypt()
        .env("OCICRYPT_KEYPROVIDER_CONFIG", &cfg)
        .args(["decrypt", &enc, &out2]));
    assert_eq!(layer_digests(&out2), layer_digests(&plain));

    // No provider config → imgcrypt's missing-key error; no output.
    let none = format!("oci:{}/none:kp", d.path().display());
    let err = fails(lazycrypt().args(["decrypt", &enc, &none]));
    assert!(
        err.contains("missing private key needed for decryption"),
        "{err}"
    );
    assert!(!d.path().join("none").exists());
    // Naming a provider the config lacks is a clear error.
    let err = fails(lazycrypt().env("OCICRYPT_KEYPROVIDER_CONFIG", &cfg).args([
        "decrypt",
        "--key",
        "provider:other",
        &enc,
        &none,
    ]));
    assert!(
        err.contains("--key provider:other: keyprovider \"other\" is not in the provider config"),
        "{err}"
    );
    // A provider the config does not name.
    let err = fails(lazycrypt().env("OCICRYPT_KEYPROVIDER_CONFIG", &cfg).args([
        "encrypt",
        "-r",
        "provider:other",
        &plain,
        &none,
    ]));
    assert!(
        err.contains("keyprovider \"other\" is not in the provider config"),
        "{err}"
    );
    // A provider that fails.
    let broken = provider_config(
        d.path(),
        r#"{"key-providers":{"testkp":{"cmd":{"path":"/bin/false"}}}}"#,
    );
    let err = fails(
        lazycrypt()
            .env("OCICRYPT_KEYPROVIDER_CONFIG", &broken)
            .args(["decrypt", "--key", "provider:testkp", &enc, &none]),
    );
    assert!(
        err.contains("keyprovider \"testkp\" (/bin/false): exit status: 1"),
        "{err}"
    );
}

mod grpc_double {
    use lazycrypt::crypto::keyprovider::pb::key_provider_service_server::{
        KeyProviderService, KeyProviderServiceServer,
    };
    use lazycrypt::crypto::keyprovider::pb::{
        KeyProviderKeyWrapProtocolInput as In, KeyProviderKeyWrapProtocolOutput as Out,
    };
    use tonic::{Request, Response, Status};

    use super::*;

    /// Reverses the options and prefixes a marker: a protocol double, not encryption.
    pub struct Double;

    fn field(v: &serde_json::Value, path: &[&str]) -> Result<Vec<u8>, Status> {
        let mut v = v;
        for p in path {
            v = &v[*p];
        }
        let s = v
            .as_str()
            .ok_or_else(|| Status::invalid_argument(format!("missing {path:?}")))?;
        B64.decode(s)
            .map_err(|e| Status::invalid_argument(e.to_string()))
    }

    #[tonic::async_trait]
    impl KeyProviderService for Double {
        async fn wrap_key(&self, req: Request<In>) -> Result<Response<Out>, Status> {
            let v: serde_json::Value =
                serde_json::from_slice(&req.into_inner().key_provider_key_wrap_protocol_input)
                    .map_err(|e| Status::invalid_argument(e.to_string()))?;
            assert_eq!(v["op"], "keywrap");
            assert!(v["keywrapparams"]["ec"]["Parameters"]["grpckp"].is_array());
            let mut opts = field(&v, &["keywrapparams", "optsdata"])?;
            opts.reverse();
            let ann = [b"GRPC:".as_slice(), &opts].concat();
            let out = serde_json::json!({"keywrapresults": {"annotation": B64.encode(ann)}});
            Ok(Response::new(Out {
                key_provider_key_wrap_protocol_output: serde_json::to_vec(&out).unwrap(),
            }))
        }

        async fn un_wrap_key(&self, req: Request<In>) -> Result<Response<Out>, Status> {
            let v: serde_json::Value =
                serde_json::from_slice(&req.into_inner().key_provider_key_wrap_protocol_input)
                    .map_err(|e| Status::invalid_argument(e.to_string()))?;
            assert_eq!(v["op"], "keyunwrap");
            let ann = field(&v, &["keyunwrapparams", "annotation"])?;
            let mut opts = ann
                .strip_prefix(b"GRPC:")
                .ok_or_else(|| Status::not_found("not ours"))?
                .to_vec();
            opts.reverse();
            let out = serde_json::json!({"keyunwrapresults": {"optsdata": B64.encode(opts)}});
            Ok(Response::new(Out {
                key_provider_key_wrap_protocol_output: serde_json::to_vec(&out).unwrap(),
            }))
        }
    }

    /// Serves the double on a loopback port in a background runtime.
    pub fn start() -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        l.set_nonblocking(true).unwrap();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let l = tokio::net::TcpListener::from_std(l).unwrap();
                tonic::transport::Server::builder()
                    .add_service(KeyProviderServiceServer::new(Double))
                    .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l))
                    .await
                    .unwrap();
            });
        });
        addr
    }
}

#[test]
fn keyprovider_grpc_wraps_and_unwraps_through_the_protocol() {
    let d = tmp();
    let addr = grpc_double::start();
    let cfg = provider_config(
        d.path(),
        &format!(r#"{{"key-providers":{{"grpckp":{{"grpc":"{addr}"}}}}}}"#),
    );
    let plain = build_image(d.path(), "plain", 1);
    let enc = format!("oci:{}/enc:g", d.path().display());
    ok(lazycrypt().env("OCICRYPT_KEYPROVIDER_CONFIG", &cfg).args([
        "encrypt",
        "-r",
        "provider:grpckp",
        &plain,
        &enc,
    ]));
    let out = format!("oci:{}/dec:g", d.path().display());
    ok(lazycrypt().env("OCICRYPT_KEYPROVIDER_CONFIG", &cfg).args([
        "decrypt",
        "--key",
        "provider:grpckp",
        &enc,
        &out,
    ]));
    assert_eq!(layer_digests(&out), layer_digests(&plain));

    let dead = provider_config(
        d.path(),
        &format!(
            r#"{{"key-providers":{{"grpckp":{{"grpc":"127.0.0.1:{}"}}}}}}"#,
            free_port()
        ),
    );
    let err = fails(lazycrypt().env("OCICRYPT_KEYPROVIDER_CONFIG", &dead).args([
        "decrypt",
        "--key",
        "provider:grpckp",
        &enc,
        &format!("oci:{}/x:y", d.path().display()),
    ]));
    assert!(
        err.contains("keyprovider \"grpckp\" (grpc 127.0.0.1:") && err.contains("connect"),
        "{err}"
    );
}

/// The cmd test provider of `tests/fixtures/keyprovider.py`.
fn fixture_provider() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/keyprovider.py")
}

/// A provider config in `d/file` naming each `(name, command)`.
fn commands_config(d: &Path, file: &str, providers: &[(&str, &Path)]) -> PathBuf {
    let map: serde_json::Map<String, serde_json::Value> = providers
        .iter()
        .map(|(n, p)| {
            let cmd = serde_json::json!({"cmd": {"path": p, "args": []}});
            (n.to_string(), cmd)
        })
        .collect();
    let p = d.join(file);
    std::fs::write(&p, serde_json::json!({ "key-providers": map }).to_string()).unwrap();
    p
}

/// An executable shell script `d/name` with `body`.
fn script(d: &Path, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = d.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

/// An image in `d` whose layers are wrapped by each of `names`, every one
/// played by the test provider at encryption time.
fn wrapped_by_providers(d: &Path, names: &[&str]) -> (String, String) {
    let fixture = fixture_provider();
    let all: Vec<(&str, &Path)> = names.iter().map(|n| (*n, fixture.as_path())).collect();
    let cfg = commands_config(d, "encrypt.json", &all);
    let plain = build_image(d, "plain", 1);
    let enc = format!("oci:{}/enc:x", d.display());
    let mut c = lazycrypt();
    c.env("OCICRYPT_KEYPROVIDER_CONFIG", &cfg).arg("encrypt");
    for n in names {
        c.args(["-r", &format!("provider:{n}")]);
    }
    ok(c.args([&plain, &enc]));
    (plain, enc)
}

/// `lazycrypt decrypt FLAGS… ENC DIR/OUT:x` with the provider config `cfg`.
fn decrypt(cfg: &Path, flags: &[&str], enc: &str, d: &Path, out: &str) -> Command {
    let mut c = lazycrypt();
    c.env("OCICRYPT_KEYPROVIDER_CONFIG", cfg)
        .arg("decrypt")
        .args(flags)
        .arg(enc)
        .arg(format!("oci:{}/{out}:x", d.display()));
    c
}

#[test]
fn stream_decrypt_asks_the_configured_keyprovider() {
    let d = tmp();
    let (plain, enc) = wrapped_by_providers(d.path(), &["testkp"]);
    let cfg = commands_config(d.path(), "kp.json", &[("testkp", &fixture_provider())]);
    let desc = layout_manifest(&enc)["layers"][0].clone();
    let blob = blob_path(&split_layout(&enc).0, desc["digest"].as_str().unwrap());
    let mt = desc["mediaType"].as_str().unwrap().to_string();
    // containerd passes no keys at all: the node's provider is the key.
    let out = stream_decrypt_with_env(
        &[],
        &blob,
        &payload(&desc, serde_json::json!(null)),
        &mt,
        &[("OCICRYPT_KEYPROVIDER_CONFIG", &cfg)],
    );
    assert_eq!(decrypted_digest(&out), layer_digests(&plain)[0]);
}

#[test]
fn a_failing_keyprovider_does_not_stop_the_next_one() {
    let d = tmp();
    let (plain, enc) = wrapped_by_providers(d.path(), &["broken", "testkp"]);
    // "broken" (tried first) fails; "testkp" unwraps.
    let bin_false = Path::new("/bin/false");
    let cfg = commands_config(
        d.path(),
        "kp.json",
        &[("broken", bin_false), ("testkp", &fixture_provider())],
    );
    let keys = ["--key", "provider:broken", "--key", "provider:testkp"];
    ok(&mut decrypt(&cfg, &keys, &enc, d.path(), "dec"));
    let out = format!("oci:{}/dec:x", d.path().display());
    assert_eq!(layer_digests(&out), layer_digests(&plain));

    // When every one fails, one line says why for each.
    let cfg = commands_config(
        d.path(),
        "none.json",
        &[("broken", bin_false), ("testkp", bin_false)],
    );
    let err = fails(&mut decrypt(&cfg, &[], &enc, d.path(), "none"));
    assert!(
        err.contains("no suitable key unwrapper found or none of the private keys could be used for decryption: provider.broken: keyprovider \"broken\" (/bin/false): exit status: 1; provider.testkp: keyprovider \"testkp\" (/bin/false): exit status: 1"),
        "{err}"
    );
}

#[test]
fn a_keyprovider_that_never_answers_is_stopped_at_its_timeout() {
    let d = tmp();
    let (_plain, enc) = wrapped_by_providers(d.path(), &["slow"]);
    // A shell whose child sleeps: the whole process group must go.
    let slow = script(d.path(), "slow.sh", "sleep 987654\nexit 0");
    let cfg = commands_config(d.path(), "kp.json", &[("slow", &slow)]);
    let timeout = ["--keyprovider-timeout", "1"];
    let err = fails(&mut decrypt(&cfg, &timeout, &enc, d.path(), "none"));
    assert!(
        err.contains(&format!(
            "provider.slow: keyprovider \"slow\" ({}): no answer within 1 s (keyprovider_timeout); stopped it",
            slow.display()
        )),
        "{err}"
    );
    let left: Vec<_> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .filter(|c| c.windows(6).any(|w| w == b"987654"))
        .collect();
    assert!(left.is_empty(), "the provider's sleep outlived it");
}

#[test]
fn a_keyprovider_that_floods_its_output_before_reading_is_served() {
    let d = tmp();
    let (plain, enc) = wrapped_by_providers(d.path(), &["testkp"]);
    // 2 MiB of JSON whitespace on stdout and 1 MiB on stderr, far more than
    // a pipe holds, before it reads a byte of its request.
    let flood = script(
        d.path(),
        "flood.sh",
        &format!(
            "head -c 2097152 /dev/zero | tr '\\0' ' '\nhead -c 1048576 /dev/zero >&2\nexec {}",
            fixture_provider().display()
        ),
    );
    let cfg = commands_config(d.path(), "kp.json", &[("testkp", &flood)]);
    ok(&mut decrypt(&cfg, &[], &enc, d.path(), "dec"));
    let out = format!("oci:{}/dec:x", d.path().display());
    assert_eq!(layer_digests(&out), layer_digests(&plain));
}

#[test]
fn a_keyproviders_stderr_is_never_quoted() {
    let d = tmp();
    let (_plain, enc) = wrapped_by_providers(d.path(), &["leaky"]);
    let leaky = script(
        d.path(),
        "leaky.sh",
        "cat >/dev/null\necho 'debug: private key is SECRET-KEY-MATERIAL' >&2\nexit 3",
    );
    let cfg = commands_config(d.path(), "kp.json", &[("leaky", &leaky)]);
    let err = fails(&mut decrypt(&cfg, &[], &enc, d.path(), "none"));
    assert!(!err.contains("SECRET-KEY-MATERIAL"), "{err}");
    assert!(
        err.contains(
            "exit status: 3 (its 42 bytes of stderr are not shown: they may hold key material)"
        ),
        "{err}"
    );
}

#[test]
fn a_grpc_keyprovider_that_never_answers_is_left_at_its_timeout() {
    let d = tmp();
    let (_plain, enc) = wrapped_by_providers(d.path(), &["grpckp"]);
    // Connections queue in the backlog; nothing ever reads or answers them.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    let cfg = provider_config(
        d.path(),
        &format!(r#"{{"key-providers":{{"grpckp":{{"grpc":"{addr}"}}}}}}"#),
    );
    let timeout = ["--keyprovider-timeout", "1"];
    let err = fails(&mut decrypt(&cfg, &timeout, &enc, d.path(), "none"));
    assert!(
        err.contains(&format!(
            "keyprovider \"grpckp\" (grpc {addr}): no answer within 1 s (keyprovider_timeout)"
        )),
        "{err}"
    );
}

//! The same interop through a real registry (`docker://`), registry auth,
//! and registry failures as one-line errors.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::auth_proxy::AuthCountingProxy;
use common::*;

#[test]
fn encrypt_to_registry_and_decrypt_from_it_with_both_tools() {
    let d = tmp();
    let reg = Registry::start();
    let plain = build_image(d.path(), "plain", 2);
    let k = rsa_keys(d.path(), "k");
    let (ec, ec_pub) = ec_keys(d.path(), "ec", "prime256v1");

    // lazycrypt: layout → registry, encrypted; skopeo decrypts from the registry.
    let remote = reg.image("app/enc:v1");
    ok(lazycrypt().args([
        "encrypt",
        "--plain-http",
        "-r",
        &format!("jwe:{}", k.public.display()),
        &plain,
        &remote,
    ]));
    let out = format!("oci:{}/skopeo:x", d.path().display());
    ok(skopeo()
        .args(["copy", "--src-tls-verify=false", "--decryption-key"])
        .arg(&k.private)
        .args([&remote, &out]));
    assert_eq!(layer_digests(&out), layer_digests(&plain));

    // skopeo: layout → registry, encrypted; lazycrypt decrypts registry → registry, then reads it back.
    let sk = reg.image("app/sk:v1");
    skopeo_encrypt(&plain, &sk, &[format!("jwe:{}", ec_pub.display())], None);
    let dec = reg.image("app/dec:v1");
    ok(lazycrypt()
        .args(["decrypt", "--plain-http", "--key"])
        .arg(&ec)
        .args([&sk, &dec]));
    let back = format!("oci:{}/back:x", d.path().display());
    ok(skopeo().args(["copy", "--src-tls-verify=false", &dec, &back]));
    assert_eq!(layer_digests(&back), layer_digests(&plain));

    // By digest, too.
    let digest = serde_json::from_str::<serde_json::Value>(&ok(lazycrypt()
        .args(["decrypt", "--json", "--plain-http", "--key"])
        .arg(&ec)
        .args([&sk, &reg.image("app/dec:v2")])))
    .unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let info = ok(lazycrypt().args([
        "layerinfo",
        "--json",
        "--plain-http",
        &reg.image(&format!("app/dec@{digest}")),
    ]));
    let layers: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(layers.as_array().unwrap().len(), 2);
}

/// Debian's registry behind basic auth, user `tester`, password `s3cret`.
fn registry_with_login(dir: &Path) -> Registry {
    let htpasswd = dir.join("htpasswd");
    ok(Command::new("htpasswd")
        .args(["-Bbc"])
        .arg(&htpasswd)
        .args(["tester", "s3cret"]));
    Registry::start_with(Some(&htpasswd))
}

#[test]
fn basic_auth_with_creds_and_a_clear_401_without() {
    let d = tmp();
    let reg = registry_with_login(d.path());
    let plain = build_image(d.path(), "plain", 1);
    let k = rsa_keys(d.path(), "k");
    let remote = reg.image("auth/enc:v1");
    let rcpt = format!("jwe:{}", k.public.display());

    let err = fails(lazycrypt().env("HOME", d.path()).args([
        "encrypt",
        "--plain-http",
        "-r",
        &rcpt,
        &plain,
        &remote,
    ]));
    assert!(err.contains("401 Unauthorized and no credentials"), "{err}");
    let err = fails(lazycrypt().env("HOME", d.path()).args([
        "encrypt",
        "--plain-http",
        "--creds",
        "tester:wrong",
        "-r",
        &rcpt,
        &plain,
        &remote,
    ]));
    assert!(err.contains("HTTP 401"), "{err}");

    ok(lazycrypt().args([
        "encrypt",
        "--plain-http",
        "--creds",
        "tester:s3cret",
        "-r",
        &rcpt,
        &plain,
        &remote,
    ]));
    // Credentials from ~/.docker/config.json, as docker login writes them.
    let home = d.path().join("home");
    std::fs::create_dir_all(home.join(".docker")).unwrap();
    let auth = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "tester:s3cret");
    std::fs::write(
        home.join(".docker/config.json"),
        format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, reg.addr),
    )
    .unwrap();
    let out = format!("oci:{}/dec:x", d.path().display());
    ok(lazycrypt()
        .env("HOME", &home)
        .args(["decrypt", "--plain-http", "--key"])
        .arg(&k.private)
        .args([&remote, &out]));
    assert_eq!(layer_digests(&out), layer_digests(&plain));
}

#[test]
fn missing_repository_and_tag_are_404s_that_say_where() {
    let reg = Registry::start();
    let err = fails(lazycrypt().args(["layerinfo", "--plain-http", &reg.image("nope/nothing:v9")]));
    assert!(err.contains(&format!("registry {}", reg.addr)), "{err}");
    assert!(
        err.contains("/v2/nope/nothing/manifests/v9: HTTP 404"),
        "{err}"
    );
    let err = fails(lazycrypt().args(["layerinfo", &reg.image("nope/nothing:v9")]));
    assert!(err.contains("use --plain-http"), "{err}");
}

/// A loopback HTTP server that answers every request with `respond`, and counts them.
fn fake_server(
    respond: impl Fn(&str, &str) -> String + Send + Sync + 'static,
) -> (String, Arc<AtomicUsize>) {
    fake_server_on("127.0.0.1", respond)
}

/// [`fake_server`] on loopback address `ip` (127.0.0.2 is another host to
/// a client, but needs no name resolution).
fn fake_server_on(
    ip: &str,
    respond: impl Fn(&str, &str) -> String + Send + Sync + 'static,
) -> (String, Arc<AtomicUsize>) {
    let l = TcpListener::bind((ip, 0)).unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let respond = Arc::new(respond);
    std::thread::spawn(move || {
        for s in l.incoming().take(64) {
            let Ok(mut s) = s else { continue };
            h.fetch_add(1, Ordering::SeqCst);
            let respond = respond.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut line = String::new();
                r.read_line(&mut line).unwrap_or(0);
                let mut auth = String::new();
                let mut len = 0usize;
                loop {
                    let mut h = String::new();
                    if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                        break;
                    }
                    let lower = h.to_ascii_lowercase();
                    if lower.starts_with("authorization:") {
                        auth = h[14..].trim().to_string();
                    }
                    if lower.starts_with("content-length:") {
                        len = h[15..].trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0; len];
                let _ = r.read_exact(&mut body);
                let resp = respond(line.trim(), &auth);
                let _ = s.write_all(resp.as_bytes());
            });
        }
    });
    (addr, hits)
}

#[test]
fn server_errors_are_retried_then_reported_in_one_line() {
    let (addr, hits) = fake_server(|_, _| {
        let body = r#"{"errors":[{"code":"UNAVAILABLE","message":"backend down"}]}"#;
        format!(
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    });
    let err = fails(lazycrypt().args([
        "layerinfo",
        "--plain-http",
        &format!("docker://{addr}/x/y:z"),
    ]));
    assert!(
        err.contains("HTTP 503 Service Unavailable (UNAVAILABLE: backend down)"),
        "{err}"
    );
    assert!(
        err.contains(&format!("registry {addr}: GET /v2/x/y/manifests/z")),
        "{err}"
    );
    assert_eq!(hits.load(Ordering::SeqCst), 4, "one try and three retries");
}

#[test]
fn bearer_token_flow() {
    // A registry double: /token hands out a token for the scope it is asked;
    // the manifest endpoint demands it and then serves an empty image.
    let manifest = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}"#;
    let (addr, _) = {
        let port_holder = Arc::new(std::sync::Mutex::new(String::new()));
        let ph = port_holder.clone();
        let srv = fake_server(move |line, auth| {
            let addr = ph.lock().unwrap().clone();
            let reply = |status: &str, headers: &str, body: &str| {
                format!(
                    "HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
            };
            if line.starts_with("GET /token?") {
                assert!(
                    line.contains("service=test-registry")
                        && line.contains("scope=repository%3Aa%2Fb%3Apull"),
                    "{line}"
                );
                assert_eq!(auth, "Basic dTpw", "token request carries --creds");
                return reply(
                    "200 OK",
                    "Content-Type: application/json\r\n",
                    r#"{"token":"tok123"}"#,
                );
            }
            if auth != "Bearer tok123" {
                let h = format!(
                    "WWW-Authenticate: Bearer realm=\"http://{addr}/token\",service=\"test-registry\",scope=\"repository:a/b:pull\"\r\n"
                );
                return reply("401 Unauthorized", &h, "");
            }
            if line.starts_with("GET /v2/a/b/manifests/t") {
                return reply(
                    "200 OK",
                    "Content-Type: application/vnd.oci.image.manifest.v1+json\r\n",
                    manifest,
                );
            }
            if line.starts_with("GET /v2/a/b/blobs/") {
                return reply("200 OK", "", "{}");
            }
            reply("404 Not Found", "", "")
        });
        *port_holder.lock().unwrap() = srv.0.clone();
        srv
    };
    let out = ok(lazycrypt().args([
        "layerinfo",
        "--json",
        "--plain-http",
        "--creds",
        "u:p",
        &format!("docker://{addr}/a/b:t"),
    ]));
    assert_eq!(out.trim(), "[]");
}

#[test]
fn docker_v2s2_images_encrypt_to_oci_types() {
    let d = tmp();
    let reg = Registry::start();
    let plain = build_image(d.path(), "plain", 2);
    let docker = reg.image("docker/img:v1");
    ok(skopeo().args([
        "copy",
        "--format",
        "v2s2",
        "--dest-tls-verify=false",
        &plain,
        &docker,
    ]));
    let raw = ok(skopeo().args(["inspect", "--raw", "--tls-verify=false", &docker]));
    assert!(
        raw.contains("application/vnd.docker.distribution.manifest.v2+json"),
        "{raw}"
    );

    let k = rsa_keys(d.path(), "k");
    let enc = format!("oci:{}/enc:docker", d.path().display());
    ok(lazycrypt().args([
        "encrypt",
        "--plain-http",
        "-r",
        &format!("jwe:{}", k.public.display()),
        &docker,
        &enc,
    ]));
    let m = layout_manifest(&enc);
    assert_eq!(m["mediaType"], "application/vnd.oci.image.manifest.v1+json");
    assert_eq!(
        m["config"]["mediaType"],
        "application/vnd.oci.image.config.v1+json"
    );
    assert!(
        layer_types(&enc)
            .iter()
            .all(|t| t == "application/vnd.oci.image.layer.v1.tar+gzip+encrypted"),
        "{:?}",
        layer_types(&enc)
    );
    let out = format!("oci:{}/dec:docker", d.path().display());
    ok(skopeo()
        .args(["copy", "--decryption-key"])
        .arg(&k.private)
        .args([&enc, &out]));
    assert_eq!(layer_digests(&out), layer_digests(&plain));
}

/// An HTTP response with `headers` (each ending in CRLF) and `body`.
fn reply(status: &str, headers: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// An image with no layers; its config blob is `{}`.
const EMPTY_MANIFEST: &str = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}"#;

/// A server whose address its own answers need: `respond(addr, line, auth)`.
fn fake_server_knowing_its_addr(
    ip: &str,
    respond: impl Fn(&str, &str, &str) -> String + Send + Sync + 'static,
) -> String {
    let me = Arc::new(std::sync::Mutex::new(String::new()));
    let m = me.clone();
    let (addr, _) = fake_server_on(ip, move |line, auth| {
        let addr = m.lock().unwrap().clone();
        respond(&addr, line, auth)
    });
    *me.lock().unwrap() = addr.clone();
    addr
}

#[test]
fn a_mirror_gets_only_its_own_credentials() {
    use lazycrypt::oci::mirrored;
    use lazycrypt::oci::reference::RegistryRef;
    use lazycrypt::oci::registry::RegistryOptions;

    let d = tmp();
    let reg = registry_with_login(d.path());
    let plain = build_image(d.path(), "plain", 1);
    ok(skopeo().args([
        "copy",
        "--dest-tls-verify=false",
        "--dest-creds",
        "tester:s3cret",
        &plain,
        &reg.image("auth/m:v1"),
    ]));
    let r = RegistryRef::parse(&format!("{}/auth/m:v1", reg.addr)).unwrap();
    let certs = d.path().join("certs.d");
    std::fs::create_dir_all(certs.join(&reg.addr)).unwrap();
    let hosts = |mirror: &str, header: &str| {
        std::fs::write(
            certs.join(&reg.addr).join("hosts.toml"),
            format!(
                "server = \"http://{}\"\n[host.\"http://{mirror}\"]\n  capabilities = [\"pull\", \"resolve\"]\n{header}",
                reg.addr
            ),
        )
        .unwrap();
    };
    let pull = |opts: &RegistryOptions| {
        let src = mirrored::open(&r, Some(&certs), opts).unwrap();
        let root = src.root().unwrap();
        let m: serde_json::Value = serde_json::from_slice(&root.bytes).unwrap();
        let config: lazycrypt::oci::Descriptor =
            serde_json::from_value(m["config"].clone()).unwrap();
        let mut bytes = Vec::new();
        src.blob(&config).unwrap().read_to_end(&mut bytes).unwrap();
        assert_eq!(bytes.len() as u64, config.size());
    };

    // No credentials of its own: the mirror answers 401 and the registry
    // itself serves, with --creds; the mirror never sees them.
    let mirror = AuthCountingProxy::start(&reg.addr);
    hosts(&mirror.addr, "");
    pull(&RegistryOptions {
        plain_http: true,
        creds: Some(lazycrypt::oci::auth::Credential::from_creds(
            "tester:s3cret",
        )),
        ..Default::default()
    });
    assert!(mirror.requests() > 0, "the mirror was tried");
    assert_eq!(
        mirror.authorizations(),
        0,
        "no registry credentials to the mirror"
    );

    // hosts.toml gives the mirror its own: it gets them, on every request,
    // and serves without the registry's.
    let mirror = AuthCountingProxy::start(&reg.addr);
    let basic = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "tester:s3cret");
    hosts(
        &mirror.addr,
        &format!(
            "[host.\"http://{}\".header]\n  Authorization = \"Basic {basic}\"\n",
            mirror.addr
        ),
    );
    pull(&RegistryOptions {
        plain_http: true,
        ..Default::default()
    });
    assert!(
        mirror.requests() >= 2,
        "manifest and config through the mirror"
    );
    assert_eq!(mirror.authorizations(), mirror.requests());
}

#[test]
fn no_basic_credentials_to_a_plain_http_realm_on_another_host() {
    let seen = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let s = seen.clone();
    // The realm, on another host (127.0.0.2), hands out tokens to anyone.
    let realm = fake_server_knowing_its_addr("127.0.0.2", move |_, line, auth| {
        if line.starts_with("GET /token") {
            s.lock().unwrap().push(auth.to_string());
            return reply(
                "200 OK",
                "Content-Type: application/json\r\n",
                r#"{"token":"anon"}"#,
            );
        }
        reply("404 Not Found", "", "")
    });
    let addr = fake_server_knowing_its_addr("127.0.0.1", move |_, line, auth| {
        if auth != "Bearer anon" {
            let h = format!(
                "WWW-Authenticate: Bearer realm=\"http://{realm}/token\",service=\"r\",scope=\"repository:a/b:pull\"\r\n"
            );
            return reply("401 Unauthorized", &h, "");
        }
        if line.starts_with("GET /v2/a/b/manifests/t") {
            let ct = "Content-Type: application/vnd.oci.image.manifest.v1+json\r\n";
            return reply("200 OK", ct, EMPTY_MANIFEST);
        }
        if line.starts_with("GET /v2/a/b/blobs/") {
            return reply("200 OK", "", "{}");
        }
        reply("404 Not Found", "", "")
    });
    let out = ok(lazycrypt().args([
        "layerinfo",
        "--json",
        "--plain-http",
        "--creds",
        "u:p",
        &format!("docker://{addr}/a/b:t"),
    ]));
    assert_eq!(out.trim(), "[]");
    let seen = seen.lock().unwrap();
    assert!(!seen.is_empty(), "the realm was asked for a token");
    assert!(seen.iter().all(String::is_empty), "{seen:?}");
}

#[test]
fn authorization_follows_redirects_only_on_the_same_origin() {
    // Storage on another host (127.0.0.2): it serves /blob to anyone; /private
    // challenges with a realm of its own, hoping for the registry's credentials.
    let seen = Arc::new(std::sync::Mutex::new(Vec::<(String, String)>::new()));
    let s = seen.clone();
    let storage = fake_server_knowing_its_addr("127.0.0.2", move |me, line, auth| {
        s.lock().unwrap().push((line.to_string(), auth.to_string()));
        if line.starts_with("GET /blob") {
            return reply("200 OK", "", "{}");
        }
        if line.starts_with("GET /token") {
            return reply(
                "200 OK",
                "Content-Type: application/json\r\n",
                r#"{"token":"t"}"#,
            );
        }
        let h = format!("WWW-Authenticate: Bearer realm=\"http://{me}/token\"\r\n");
        reply("401 Unauthorized", &h, "")
    });
    // The registry wants basic auth; its manifests live behind a redirect on
    // its own origin, its blobs behind one to the storage.
    let addr = fake_server_knowing_its_addr("127.0.0.1", move |_, line, auth| {
        if auth != "Basic dTpw" {
            return reply(
                "401 Unauthorized",
                "WWW-Authenticate: Basic realm=\"r\"\r\n",
                "",
            );
        }
        let path = line.split(' ').nth(1).unwrap_or("");
        if let Some(rest) = path.strip_prefix("/v2/") {
            let repo = rest.split('/').take(2).collect::<Vec<_>>().join("/");
            if rest.contains("/manifests/") {
                return reply("307 Temporary Redirect", "Location: /real/manifest\r\n", "");
            }
            let target = if repo == "a/private" {
                "private"
            } else {
                "blob"
            };
            let h = format!("Location: http://{storage}/{target}\r\n");
            return reply("307 Temporary Redirect", &h, "");
        }
        if path == "/real/manifest" {
            let ct = "Content-Type: application/vnd.oci.image.manifest.v1+json\r\n";
            return reply("200 OK", ct, EMPTY_MANIFEST);
        }
        reply("404 Not Found", "", "")
    });
    let layerinfo = |repo: &str| {
        let mut c = lazycrypt();
        c.args([
            "layerinfo",
            "--json",
            "--plain-http",
            "--creds",
            "u:p",
            &format!("docker://{addr}/{repo}:t"),
        ]);
        c
    };
    // Same origin: the redirect keeps the credentials (the manifest is
    // served); the storage gets none.
    assert_eq!(ok(&mut layerinfo("a/b")).trim(), "[]");
    // The storage's own challenge goes unanswered (layerinfo reads the
    // config only for its platform, so it still succeeds).
    ok(&mut layerinfo("a/private"));
    let seen = seen.lock().unwrap();
    assert!(
        seen.iter().any(|(l, _)| l.starts_with("GET /blob")),
        "{seen:?}"
    );
    assert!(
        seen.iter().any(|(l, _)| l.starts_with("GET /private")),
        "{seen:?}"
    );
    assert!(seen.iter().all(|(_, auth)| auth.is_empty()), "{seen:?}");
    assert!(
        !seen.iter().any(|(l, _)| l.starts_with("GET /token")),
        "{seen:?}"
    );
}

/// A bearer-token registry double in front of Debian's registry at
/// `upstream`: `/token` hands out `tok1`, `tok2`, … to `u:p`; a token is
/// good for `uses` requests (then it has expired), and tokens after
/// `last_good` are refused. Returns its address and the tokens handed out.
fn expiring_token_registry(
    upstream: &str,
    uses: usize,
    last_good: usize,
) -> (String, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let issued = Arc::new(AtomicUsize::new(0));
    let used = Arc::new(std::sync::Mutex::new(std::collections::HashMap::<
        String,
        usize,
    >::new()));
    let (up, me, iss) = (upstream.to_string(), addr.clone(), issued.clone());
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let (up, me, iss, used) = (up.clone(), me.clone(), iss.clone(), used.clone());
            std::thread::spawn(move || {
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut line = String::new();
                r.read_line(&mut line).unwrap_or(0);
                let (mut auth, mut range) = (String::new(), None);
                loop {
                    let mut h = String::new();
                    if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                        break;
                    }
                    let lower = h.to_ascii_lowercase();
                    if lower.starts_with("authorization:") {
                        auth = h[14..].trim().to_string();
                    } else if lower.starts_with("range:") || lower.starts_with("accept:") {
                        range.get_or_insert_with(String::new).push_str(&h);
                    }
                }
                if line.starts_with("GET /token?") {
                    assert_eq!(
                        auth, "Basic dTpw",
                        "the token request carries the credentials"
                    );
                    let n = iss.fetch_add(1, Ordering::SeqCst) + 1;
                    let body = format!(r#"{{"token":"tok{n}"}}"#);
                    let _ = s.write_all(
                        reply("200 OK", "Content-Type: application/json\r\n", &body).as_bytes(),
                    );
                    return;
                }
                let token = auth.strip_prefix("Bearer ").unwrap_or("").to_string();
                let good = token
                    .strip_prefix("tok")
                    .and_then(|n| n.parse::<usize>().ok())
                    .is_some_and(|n| n <= last_good)
                    && {
                        let mut used = used.lock().unwrap();
                        let u = used.entry(token).or_insert(0);
                        *u += 1;
                        *u <= uses
                    };
                if !good {
                    let h = format!(
                        "WWW-Authenticate: Bearer realm=\"http://{me}/token\",service=\"double\",scope=\"repository:app/x:pull\"\r\n"
                    );
                    let _ = s.write_all(reply("401 Unauthorized", &h, "").as_bytes());
                    return;
                }
                // Authorized: the real registry answers, one request a connection.
                let path = line.split(' ').nth(1).unwrap_or("/");
                let mut u = std::net::TcpStream::connect(&up).unwrap();
                let req = format!(
                    "GET {path} HTTP/1.1\r\nHost: {up}\r\n{}Connection: close\r\n\r\n",
                    range.unwrap_or_default()
                );
                u.write_all(req.as_bytes()).unwrap();
                let _ = std::io::copy(&mut u, &mut s);
            });
        }
    });
    (addr, issued)
}

#[test]
fn an_expired_token_is_renewed_once_mid_run_and_a_refused_renewal_fails_clearly() {
    let d = tmp();
    let reg = Registry::start();
    let plain = build_image(d.path(), "plain", 3);
    let k = rsa_keys(d.path(), "k");
    ok(lazycrypt().args([
        "encrypt",
        "--plain-http",
        "-r",
        &format!("jwe:{}", k.public.display()),
        &plain,
        &reg.image("app/x:v1"),
    ]));
    // u:p, as docker login writes it.
    let decrypt = |addr: &str, out: &str| {
        let auth = d.path().join(format!("auth-{addr}.json"));
        std::fs::write(
            &auth,
            format!(r#"{{"auths":{{"{addr}":{{"auth":"dTpw"}}}}}}"#),
        )
        .unwrap();
        let mut c = lazycrypt();
        c.env("HOME", d.path())
            .env("REGISTRY_AUTH_FILE", &auth)
            .args(["decrypt", "--plain-http", "--key"])
            .arg(&k.private)
            .args([&format!("docker://{addr}/app/x:v1"), out]);
        c
    };
    // Each token expires after two requests: the run renews it as it goes
    // (manifest, config and three layers) and reads on.
    let (addr, issued) = expiring_token_registry(&reg.addr, 2, usize::MAX);
    let out = format!("oci:{}/dec:x", d.path().display());
    ok(&mut decrypt(&addr, &out));
    assert_eq!(layer_digests(&out), layer_digests(&plain));
    assert!(issued.load(Ordering::SeqCst) >= 3, "tokens renewed mid-run");

    // The registry refuses the renewed token: one renewal, then one line
    // naming the registry and repository, no credential.
    let (addr, issued) = expiring_token_registry(&reg.addr, 1, 1);
    let out = format!("oci:{}/dec2:x", d.path().display());
    let err = fails(&mut decrypt(&addr, &out));
    // The first token, then one renewal for each request that found it
    // expired (the config and up to three layers at once), never a loop.
    let n = issued.load(Ordering::SeqCst);
    assert!((2..=5).contains(&n), "{n} tokens: {err}");
    assert!(
        err.contains(&format!("registry {addr}: GET /v2/app/x/"))
            && err.contains("HTTP 401 Unauthorized, even after authenticating afresh"),
        "{err}"
    );
    assert!(!err.contains("tok") && !err.contains("dTpw"), "{err}");
    assert_eq!(
        err.lines().filter(|l| l.contains("401")).count(),
        1,
        "{err}"
    );
}

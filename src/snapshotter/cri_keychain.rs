//! The CRI keychain: a CRI image service in front of containerd (the
//! kubelet's `--image-service-endpoint` names its socket). Every call goes
//! on to containerd unchanged, as bytes, and its answer or status comes
//! back unchanged; a `PullImage`'s image-pull-secret is also kept in the
//! [`Keychain`], so the image's lazily mounted layers can fetch from a
//! private registry that the node has no docker config for.
//!
//! Of a `PullImage`'s `AuthConfig`, as containerd reads it: `username` and
//! `password`, or `auth` (`base64(user:password)`), for the registry that
//! `server_address` names (any, when empty). lazycrypt also sends a
//! `registry_token` as a bearer token. An `identity_token` (an OAuth2
//! refresh token) is not used: such layers fall back to the auth files.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use prost::bytes::{Buf, BufMut, Bytes};
use tokio::net::UnixListener;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder, Streaming};
use tonic::codegen::http;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};
use zeroize::Zeroize;

use crate::containerd::proto::cri;
use crate::oci::auth::{Credential, Secret};
use crate::oci::keychain::{Keychain, Pending};
use crate::oci::reference::RegistryRef;

/// The methods whose request is read for credentials (CRI v1, and the
/// v1alpha2 that containerd 1.6 still serves; same fields).
const PULL_IMAGE: [&str; 2] = [
    "/runtime.v1.ImageService/PullImage",
    "/runtime.v1alpha2.ImageService/PullImage",
];

/// Largest message either way: the kubelet's CRI limit (a node's image
/// list can be large).
const MAX_MESSAGE: usize = 16 << 20;

/// The only calls passed on: CRI's image service (v1, and the v1alpha2
/// that containerd 1.6 still serves). The socket is no way into the rest of
/// containerd.
const FORWARDED: [&str; 2] = [
    "/runtime.v1.ImageService/",
    "/runtime.v1alpha2.ImageService/",
];

/// Upstream deadlines: a containerd that accepts no connection, or one
/// gone silent under a call, is seen as down rather than waited on.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// The keychain's socket at `listen`, which only root may connect to: the
/// kubelet runs as root, and a pull's secrets and every image of the node
/// are behind it.
pub fn bind(listen: &Path) -> std::io::Result<std::os::unix::net::UnixListener> {
    clear_stale(listen)?;
    crate::private::bind_socket(listen, |p| {
        let l = std::os::unix::net::UnixListener::bind(p)?;
        l.set_nonblocking(true)?;
        Ok(l)
    })
}

/// Removes the socket a previous run left at `listen`. Anything else
/// there is refused and left alone: a socket something still answers on
/// (another daemon's), or a file that is no socket.
fn clear_stale(listen: &Path) -> std::io::Result<()> {
    use std::io::{Error, ErrorKind};
    use std::os::unix::fs::FileTypeExt;
    let at = |why: &str| format!("{}: {why}", listen.display());
    match std::fs::symlink_metadata(listen) {
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::new(e.kind(), at(&e.to_string()))),
        Ok(m) if !m.file_type().is_socket() => Err(Error::new(
            ErrorKind::AlreadyExists,
            at("exists and is not a socket"),
        )),
        Ok(_) => match std::os::unix::net::UnixStream::connect(listen) {
            Ok(_) => Err(Error::new(ErrorKind::AddrInUse, at("is in use"))),
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => std::fs::remove_file(listen),
            Err(e) => Err(Error::new(e.kind(), at(&e.to_string()))),
        },
    }
}

/// Serves the keychain on `listener` (from [`bind`]), passing calls on to
/// containerd's socket `upstream`.
pub async fn serve(
    listener: std::os::unix::net::UnixListener,
    upstream: &Path,
    keychain: Arc<Keychain>,
) -> std::io::Result<()> {
    let listener = UnixListener::from_std(listener)?;
    let proxy = Proxy {
        upstream: connect_lazily(upstream)?,
        upstream_path: Arc::new(upstream.to_path_buf()),
        keychain,
    };
    let forward = tower::service_fn(move |req: http::Request<tonic::service::AxumBody>| {
        let proxy = proxy.clone();
        async move { Ok::<_, Infallible>(proxy.forward(req).await) }
    });
    let routes =
        tonic::service::Routes::from(tonic::service::AxumRouter::new().fallback_service(forward));
    tonic::transport::Server::builder()
        .add_routes(routes)
        .serve_with_incoming(UnixListenerStream::new(listener))
        .await
        .map_err(std::io::Error::other)
}

/// A channel to `socket` that connects on its first call, and again after
/// containerd restarts.
fn connect_lazily(socket: &Path) -> std::io::Result<Channel> {
    let path = socket.to_path_buf();
    Ok(Endpoint::try_from("http://containerd.invalid")
        .map_err(std::io::Error::other)?
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .connect_with_connector_lazy(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                // The status the kubelet sees says what is down.
                let s = tokio::net::UnixStream::connect(&path).await.map_err(|e| {
                    std::io::Error::new(
                        e.kind(),
                        format!("CRI keychain: containerd at {}: {e}", path.display()),
                    )
                })?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
            }
        })))
}

#[derive(Clone)]
struct Proxy {
    upstream: Channel,
    upstream_path: Arc<PathBuf>,
    keychain: Arc<Keychain>,
}

impl Proxy {
    /// One call, whatever its method: a stream of messages each way, which
    /// a unary call is a one-message case of.
    async fn forward(
        &self,
        req: http::Request<tonic::service::AxumBody>,
    ) -> http::Response<tonic::body::Body> {
        let path = req.uri().path().to_string();
        let image_service = FORWARDED.iter().any(|p| {
            path.strip_prefix(p)
                .is_some_and(|m| !m.is_empty() && !m.contains('/'))
        });
        if !image_service {
            return Status::unimplemented(format!(
                "CRI keychain: {path}: only CRI's image service is served here"
            ))
            .into_http();
        }
        let mut server = tonic::server::Grpc::new(Raw)
            .apply_max_message_size_config(Some(MAX_MESSAGE), Some(MAX_MESSAGE));
        if PULL_IMAGE.contains(&path.as_str()) {
            server.unary(Pull(self.clone(), path), req).await
        } else {
            server.streaming(Stream(self.clone(), path), req).await
        }
    }

    fn client(&self) -> tonic::client::Grpc<Channel> {
        tonic::client::Grpc::new(self.upstream.clone())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE)
    }

    async fn ready(&self, client: &mut tonic::client::Grpc<Channel>) -> Result<(), Status> {
        client.ready().await.map_err(|e| self.unavailable(e))
    }

    fn unavailable(&self, e: impl std::fmt::Display) -> Status {
        Status::unavailable(format!(
            "CRI keychain: containerd at {}: {e}",
            self.upstream_path.display()
        ))
    }

    /// Holds what `bytes` (a `PullImageRequest`) hands over for its image,
    /// pending until the pull succeeds.
    fn keep(&self, bytes: &[u8]) -> Option<Pending<'_>> {
        let Ok(mut pull) = cri::PullImageRequest::decode(bytes) else {
            // containerd answers what it cannot read.
            return None;
        };
        let image = pull.image.as_ref().map(|i| i.image.as_str()).unwrap_or("");
        let mut pending = None;
        if let (Ok(r), Some(auth)) = (RegistryRef::parse(image), pull.auth.as_ref()) {
            match credential(auth, &r) {
                Some(c) => {
                    pending = Some(self.keychain.hold(&r, c));
                    tracing::debug!("CRI keychain: credentials for {}/{} held", r.host, r.repo);
                }
                None if !auth.identity_token.is_empty() => tracing::info!(
                    "CRI keychain: {}/{}: identity tokens are not supported; its lazy layers use the node's auth files",
                    r.host,
                    r.repo
                ),
                None => {}
            }
        }
        if let Some(a) = pull.auth.as_mut() {
            a.password.zeroize();
            a.auth.zeroize();
            a.identity_token.zeroize();
            a.registry_token.zeroize();
        }
        pending
    }
}

/// The credential a pull's `auth` gives `r`'s registry, read as containerd
/// reads it (a `server_address` naming another registry gives none).
fn credential(auth: &cri::AuthConfig, r: &RegistryRef) -> Option<Credential> {
    if !auth.server_address.is_empty() {
        let named = auth
            .server_address
            .split_once("://")
            .map_or(auth.server_address.as_str(), |(_, rest)| rest);
        let named = named.split('/').next().unwrap_or("");
        let docker_hub = r.host == "docker.io" && named.eq_ignore_ascii_case("index.docker.io");
        if !(named.eq_ignore_ascii_case(&r.host)
            || named.eq_ignore_ascii_case(r.api_host())
            || docker_hub)
        {
            return None;
        }
    }
    if !auth.username.is_empty() {
        return Some(Credential::basic(&auth.username, &auth.password));
    }
    if !auth.auth.is_empty() {
        use base64::Engine;
        let decoded = zeroize::Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(auth.auth.trim())
                .ok()?,
        );
        let text = std::str::from_utf8(&decoded).ok()?;
        let (user, password) = text.split_once(':')?;
        return Some(Credential::basic(user, password.trim_end_matches('\0')));
    }
    if !auth.registry_token.is_empty() {
        return Some(Credential::Bearer(Secret::new(auth.registry_token.clone())));
    }
    None
}

/// A `PullImage`: its credentials are kept, then it goes on.
struct Pull(Proxy, String);

impl tonic::server::UnaryService<Bytes> for Pull {
    type Response = Bytes;
    type Future = tonic::codegen::BoxFuture<Response<Bytes>, Status>;

    fn call(&mut self, req: Request<Bytes>) -> Self::Future {
        let (proxy, path) = (self.0.clone(), self.1.clone());
        Box::pin(async move {
            // Before containerd sees the pull: its Prepares of the image's
            // layers come while the pull is under way. Kept only if the
            // pull succeeds (a wrong secret does not replace a right one).
            let pending = proxy.keep(req.get_ref());
            let mut client = proxy.client();
            proxy.ready(&mut client).await?;
            let path = path.parse().map_err(|_| Status::unimplemented(path))?;
            let answer = client.unary(req, path, Raw).await;
            if let (Ok(_), Some(p)) = (&answer, pending) {
                p.confirm();
            }
            answer
        })
    }
}

/// Any other call, passed on as it comes.
struct Stream(Proxy, String);

impl tonic::server::StreamingService<Bytes> for Stream {
    type Response = Bytes;
    type ResponseStream = Streaming<Bytes>;
    type Future = tonic::codegen::BoxFuture<Response<Streaming<Bytes>>, Status>;

    fn call(&mut self, req: Request<Streaming<Bytes>>) -> Self::Future {
        let (proxy, path) = (self.0.clone(), self.1.clone());
        Box::pin(async move {
            let mut client = proxy.client();
            proxy.ready(&mut client).await?;
            let path = path.parse().map_err(|_| Status::unimplemented(path))?;
            // A request stream that breaks (a message over the limit) ends
            // there, and its own status is the answer, not what containerd
            // makes of the cut stream.
            let broken = Arc::new(std::sync::Mutex::new(None::<Status>));
            let first = broken.clone();
            let req = req.map(|s| {
                s.map_while(move |m| {
                    m.map_err(|e| {
                        crate::sync::lock(&first).get_or_insert(e);
                    })
                    .ok()
                })
            });
            let answer = client.streaming(req, path, Raw).await;
            match crate::sync::lock(&broken).take() {
                Some(e) => Err(e),
                None => answer,
            }
        })
    }
}

/// Messages as their encoded bytes, untouched.
#[derive(Clone, Copy, Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = Raw;
    type Decoder = Raw;

    fn encoder(&mut self) -> Raw {
        Raw
    }

    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> RegistryRef {
        RegistryRef::parse(s).unwrap()
    }

    fn basic(user: &str, password: &str) -> Option<Credential> {
        Some(Credential::basic(user, password))
    }

    #[test]
    fn takes_over_only_a_stale_socket() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("cri.sock");
        // A previous run's socket, nothing listening.
        drop(std::os::unix::net::UnixListener::bind(&p).unwrap());
        drop(bind(&p).expect("a stale socket is replaced"));
        // A live daemon's.
        std::fs::remove_file(&p).unwrap();
        let live = std::os::unix::net::UnixListener::bind(&p).unwrap();
        let e = bind(&p).unwrap_err();
        assert_eq!(e.to_string(), format!("{}: is in use", p.display()));
        std::os::unix::net::UnixStream::connect(&p).expect("still the live daemon's");
        drop(live);
        // Not a socket at all.
        let f = d.path().join("file");
        std::fs::write(&f, "keep me").unwrap();
        let e = bind(&f).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("{}: exists and is not a socket", f.display())
        );
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "keep me");
    }

    #[test]
    fn reads_a_pulls_auth_as_containerd_does() {
        let img = r("reg.example:5000/app/x:v1");
        let a = |f: fn(&mut cri::AuthConfig)| {
            let mut a = cri::AuthConfig::default();
            f(&mut a);
            credential(&a, &img)
        };
        assert_eq!(
            a(|a| {
                a.username = "u".into();
                a.password = "p".into();
            }),
            basic("u", "p")
        );
        // "u:p\0"
        assert_eq!(a(|a| a.auth = "dTpwAA==".into()), basic("u", "p"));
        assert_eq!(a(|a| a.auth = "not base64!".into()), None);
        assert_eq!(a(|a| a.auth = "dXA=".into()), None, "no ':' in \"up\"");
        assert_eq!(
            a(|a| a.registry_token = "tok".into()),
            Some(Credential::Bearer(Secret::new("tok".into())))
        );
        assert_eq!(a(|a| a.identity_token = "refresh".into()), None);
        assert_eq!(a(|_| {}), None);
        for named in [
            "reg.example:5000",
            "https://reg.example:5000",
            "http://reg.example:5000/v2/",
        ] {
            let mut au = cri::AuthConfig {
                username: "u".into(),
                server_address: named.into(),
                ..Default::default()
            };
            assert_eq!(credential(&au, &img), basic("u", ""), "{named}");
            au.server_address = "other.example".into();
            assert_eq!(credential(&au, &img), None);
        }
        let hub = cri::AuthConfig {
            username: "u".into(),
            server_address: "https://index.docker.io/v1/".into(),
            ..Default::default()
        };
        assert_eq!(credential(&hub, &r("nginx")), basic("u", ""));
    }
}

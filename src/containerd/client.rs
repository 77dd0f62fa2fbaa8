//! A gRPC connection to containerd over its unix socket, with the namespace
//! (and optionally a lease) every request carries as metadata.

use std::path::{Path, PathBuf};

use tonic::Request;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};

/// A connection to containerd in one namespace.
#[derive(Clone)]
pub struct Client {
    pub channel: Channel,
    namespace: String,
    lease: Option<String>,
}

impl Client {
    /// Connects to containerd's socket at `socket`.
    pub async fn connect(socket: &Path, namespace: &str) -> Result<Client, String> {
        let path: PathBuf = socket.to_path_buf();
        let channel = Endpoint::try_from("http://containerd.invalid")
            .map_err(|e| e.to_string())?
            .connect_with_connector(tower::service_fn(move |_| {
                let path = path.clone();
                async move {
                    let s = tokio::net::UnixStream::connect(path).await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
                }
            }))
            .await
            .map_err(|e| format!("cannot connect to containerd at {}: {e}", socket.display()))?;
        Ok(Client {
            channel,
            namespace: namespace.to_string(),
            lease: None,
        })
    }

    /// Requests from now on carry `lease`.
    pub fn with_lease(&mut self, lease: Option<String>) {
        self.lease = lease;
    }

    /// Wraps a message with the namespace (and lease) headers.
    pub fn req<T>(&self, msg: T) -> Request<T> {
        let mut r = Request::new(msg);
        if let Ok(v) = MetadataValue::try_from(self.namespace.as_str()) {
            r.metadata_mut().insert("containerd-namespace", v);
        }
        if let Some(l) = &self.lease
            && let Ok(v) = MetadataValue::try_from(l.as_str())
        {
            r.metadata_mut().insert("containerd-lease", v);
        }
        r
    }
}

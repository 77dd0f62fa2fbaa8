//! The snapshots gRPC service: translates requests to [`Store`] calls, each
//! on a blocking thread (the store does disk and database work), and serves
//! them on a unix socket for containerd's proxy plugin.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status};

use super::error::Error;
use super::meta::Kind;
use super::store::{self, Store};
use crate::containerd::proto::snapshots::snapshots_server::{Snapshots, SnapshotsServer};
use crate::containerd::proto::{Mount, snapshots as pb};

/// The gRPC face of a [`Store`].
pub struct Service {
    store: Arc<Store>,
}

impl Service {
    pub fn new(store: Arc<Store>) -> Self {
        Service { store }
    }

    /// Runs `f` on the store off the async runtime.
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Status> {
        let store = Arc::clone(&self.store);
        match tokio::task::spawn_blocking(move || f(&store)).await {
            Ok(r) => r.map_err(Status::from),
            Err(e) => Err(Status::internal(format!("snapshot operation failed: {e}"))),
        }
    }
}

/// Serves `service` on a unix socket at `path` until `shutdown` resolves.
pub async fn serve(
    service: Service,
    path: &Path,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let _ = std::fs::remove_file(path);
    // Only root may connect: containerd runs as root, and the snapshots API
    // mounts, removes and reads out every layer.
    let listener = crate::private::bind_socket(path, |p| {
        let l = std::os::unix::net::UnixListener::bind(p)?;
        l.set_nonblocking(true)?;
        Ok(l)
    })?;
    let listener = UnixListener::from_std(listener)?;
    tonic::transport::Server::builder()
        .add_service(SnapshotsServer::new(service))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await
        .map_err(std::io::Error::other)
}

fn mounts(ms: Vec<store::Mount>) -> Vec<Mount> {
    ms.into_iter()
        .map(|m| Mount {
            r#type: m.kind,
            source: m.source,
            target: String::new(),
            options: m.options,
        })
        .collect()
}

fn info(i: store::Info) -> pb::Info {
    pb::Info {
        name: i.name,
        parent: i.parent,
        kind: match i.kind {
            Kind::View => pb::Kind::View,
            Kind::Active => pb::Kind::Active,
            Kind::Committed => pb::Kind::Committed,
        } as i32,
        created_at: Some(timestamp(i.created)),
        updated_at: Some(timestamp(i.updated)),
        labels: i.labels.into_iter().collect(),
    }
}

fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    prost_types::Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

fn labels(m: std::collections::HashMap<String, String>) -> BTreeMap<String, String> {
    m.into_iter().collect()
}

#[tonic::async_trait]
impl Snapshots for Service {
    async fn prepare(
        &self,
        req: Request<pb::PrepareSnapshotRequest>,
    ) -> Result<Response<pb::PrepareSnapshotResponse>, Status> {
        let r = req.into_inner();
        let ms = self
            .run(move |s| s.prepare(&r.key, &r.parent, labels(r.labels), Kind::Active))
            .await?;
        Ok(Response::new(pb::PrepareSnapshotResponse {
            mounts: mounts(ms),
        }))
    }

    async fn view(
        &self,
        req: Request<pb::ViewSnapshotRequest>,
    ) -> Result<Response<pb::ViewSnapshotResponse>, Status> {
        let r = req.into_inner();
        let ms = self
            .run(move |s| s.prepare(&r.key, &r.parent, labels(r.labels), Kind::View))
            .await?;
        Ok(Response::new(pb::ViewSnapshotResponse {
            mounts: mounts(ms),
        }))
    }

    async fn mounts(
        &self,
        req: Request<pb::MountsRequest>,
    ) -> Result<Response<pb::MountsResponse>, Status> {
        let r = req.into_inner();
        let ms = self.run(move |s| s.mounts(&r.key)).await?;
        Ok(Response::new(pb::MountsResponse { mounts: mounts(ms) }))
    }

    async fn commit(
        &self,
        req: Request<pb::CommitSnapshotRequest>,
    ) -> Result<Response<()>, Status> {
        let r = req.into_inner();
        self.run(move |s| s.commit(&r.name, &r.key, labels(r.labels)))
            .await?;
        Ok(Response::new(()))
    }

    async fn remove(
        &self,
        req: Request<pb::RemoveSnapshotRequest>,
    ) -> Result<Response<()>, Status> {
        let r = req.into_inner();
        self.run(move |s| s.remove(&r.key)).await?;
        Ok(Response::new(()))
    }

    async fn stat(
        &self,
        req: Request<pb::StatSnapshotRequest>,
    ) -> Result<Response<pb::StatSnapshotResponse>, Status> {
        let r = req.into_inner();
        let i = self.run(move |s| s.stat(&r.key)).await?;
        Ok(Response::new(pb::StatSnapshotResponse {
            info: Some(info(i)),
        }))
    }

    async fn update(
        &self,
        req: Request<pb::UpdateSnapshotRequest>,
    ) -> Result<Response<pb::UpdateSnapshotResponse>, Status> {
        let r = req.into_inner();
        let i = r
            .info
            .ok_or_else(|| Status::invalid_argument("update needs the snapshot's info"))?;
        let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
        let i = self
            .run(move |s| s.update(&i.name, labels(i.labels), &paths))
            .await?;
        Ok(Response::new(pb::UpdateSnapshotResponse {
            info: Some(info(i)),
        }))
    }

    type ListStream =
        tokio_stream::Iter<std::vec::IntoIter<Result<pb::ListSnapshotsResponse, Status>>>;

    async fn list(
        &self,
        req: Request<pb::ListSnapshotsRequest>,
    ) -> Result<Response<Self::ListStream>, Status> {
        let r = req.into_inner();
        let all = self.run(move |s| s.list(&r.filters)).await?;
        // containerd reads the listing in batches; 100 per message as it sends.
        let batches: Vec<_> = all
            .chunks(100)
            .map(|b| {
                Ok(pb::ListSnapshotsResponse {
                    info: b.iter().cloned().map(info).collect(),
                })
            })
            .collect();
        Ok(Response::new(tokio_stream::iter(batches)))
    }

    async fn usage(
        &self,
        req: Request<pb::UsageRequest>,
    ) -> Result<Response<pb::UsageResponse>, Status> {
        let r = req.into_inner();
        let (size, inodes) = self.run(move |s| s.usage(&r.key)).await?;
        Ok(Response::new(pb::UsageResponse { size, inodes }))
    }

    async fn cleanup(&self, _req: Request<pb::CleanupRequest>) -> Result<Response<()>, Status> {
        self.run(|s| s.cleanup()).await?;
        Ok(Response::new(()))
    }
}

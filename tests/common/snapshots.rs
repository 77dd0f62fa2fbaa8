//! containerd's calls to lazycrypt's snapshots service, made directly.

use std::collections::HashMap;
use std::path::Path;

use lazycrypt::containerd::proto::snapshots as pb;
use pb::snapshots_client::SnapshotsClient;
use tonic::Code;
use tonic::transport::Channel;

pub type Client = SnapshotsClient<Channel>;

/// The snapshots service at `socket`.
pub async fn connect(socket: &Path) -> Client {
    let c = lazycrypt::containerd::client::Client::connect(socket, "unused")
        .await
        .unwrap();
    SnapshotsClient::new(c.channel)
}

/// A Prepare of `key` on `parent` with `labels`: each mount's options, or
/// the refusal.
pub async fn prepare_labelled(
    c: &mut Client,
    key: &str,
    parent: &str,
    labels: HashMap<String, String>,
) -> Result<Vec<String>, tonic::Status> {
    let r = c
        .prepare(pb::PrepareSnapshotRequest {
            key: key.into(),
            parent: parent.into(),
            labels,
            ..Default::default()
        })
        .await?;
    Ok(r.into_inner()
        .mounts
        .iter()
        .map(|m| m.options.join(","))
        .collect())
}

/// A refusal's code and message.
pub fn code<T: std::fmt::Debug>(r: Result<T, tonic::Status>) -> (Code, String) {
    let e = r.unwrap_err();
    (e.code(), e.message().to_string())
}

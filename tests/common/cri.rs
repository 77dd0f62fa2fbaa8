//! A kubelet's calls to a CRI image service (containerd's CRI plugin, or
//! lazycrypt's CRI keychain in front of it), blocking.

use std::collections::HashMap;
use std::path::Path;

use lazycrypt::containerd::proto::cri;
use tonic::transport::Channel;

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The image service at `socket`, in the kubelet's namespace.
pub async fn images(socket: &Path) -> cri::image_service_client::ImageServiceClient<Channel> {
    let c = lazycrypt::containerd::client::Client::connect(socket, "k8s.io")
        .await
        .unwrap();
    cri::image_service_client::ImageServiceClient::new(c.channel)
}

/// A `PullImage` of `image` sent to `socket`, with an image-pull-secret's
/// `auth` if any; the image ref it answers with.
pub fn pull(
    socket: &Path,
    image: &str,
    auth: Option<cri::AuthConfig>,
) -> Result<String, tonic::Status> {
    rt().block_on(async {
        images(socket)
            .await
            .pull_image(cri::PullImageRequest {
                image: Some(cri::ImageSpec {
                    image: image.to_string(),
                    annotations: HashMap::new(),
                }),
                auth,
            })
            .await
            .map(|r| r.into_inner().image_ref)
    })
}

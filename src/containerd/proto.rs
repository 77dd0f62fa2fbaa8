//! Generated gRPC types for the parts of containerd's API we serve or call
//! (`proto/containerd`). Modules nest as the proto packages do, so
//! cross-package paths resolve.
#![allow(clippy::all, missing_docs)]

pub mod containerd {
    pub mod types {
        tonic::include_proto!("containerd.types");
    }
    pub mod services {
        pub mod snapshots {
            pub mod v1 {
                tonic::include_proto!("containerd.services.snapshots.v1");
            }
        }
        pub mod content {
            pub mod v1 {
                tonic::include_proto!("containerd.services.content.v1");
            }
        }
        pub mod images {
            pub mod v1 {
                tonic::include_proto!("containerd.services.images.v1");
            }
        }
        pub mod leases {
            pub mod v1 {
                tonic::include_proto!("containerd.services.leases.v1");
            }
        }
    }
}

/// Kubernetes' CRI image service (a client for tests and benchmarks).
pub mod cri {
    tonic::include_proto!("runtime.v1");
}

pub use containerd::services::content::v1 as content;
pub use containerd::services::images::v1 as images;
pub use containerd::services::leases::v1 as leases;
pub use containerd::services::snapshots::v1 as snapshots;
pub use containerd::types::{Descriptor, Mount};

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

    /// Names which fields are set, never their values: all but the user
    /// name and server address are secrets.
    impl std::fmt::Debug for AuthConfig {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            let set = |s: &String| if s.is_empty() { "" } else { "…" };
            f.debug_struct("AuthConfig")
                .field("username", &self.username)
                .field("password", &set(&self.password))
                .field("auth", &set(&self.auth))
                .field("server_address", &self.server_address)
                .field("identity_token", &set(&self.identity_token))
                .field("registry_token", &set(&self.registry_token))
                .finish()
        }
    }
}

pub use containerd::services::content::v1 as content;
pub use containerd::services::images::v1 as images;
pub use containerd::services::leases::v1 as leases;
pub use containerd::services::snapshots::v1 as snapshots;
pub use containerd::types::{Descriptor, Mount};

#[cfg(test)]
mod tests {
    #[test]
    fn a_pulls_auth_config_prints_no_secret() {
        let a = super::cri::AuthConfig {
            username: "u".into(),
            password: "hunter2-pw".into(),
            auth: "dTpodW50ZXIy".into(),
            server_address: "reg.example".into(),
            identity_token: "id-tok-9".into(),
            registry_token: "reg-tok-7".into(),
        };
        let printed = format!("{a:?} {:?}", Some(&a));
        for secret in ["hunter2-pw", "dTpodW50ZXIy", "id-tok-9", "reg-tok-7"] {
            assert!(!printed.contains(secret), "{printed}");
        }
        assert!(printed.contains("reg.example"), "{printed}");
    }
}

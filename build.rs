//! Compiles `proto/` with a pure-Rust protobuf compiler, so building needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/keyprovider.proto",
        "proto/containerd/mount.proto",
        "proto/containerd/descriptor.proto",
        "proto/containerd/snapshots.proto",
        "proto/containerd/content.proto",
        "proto/containerd/images.proto",
        "proto/containerd/leases.proto",
        "proto/cri/image.proto",
    ];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // A pull's credentials: a hand-written Debug leaves them out.
        .skip_debug([".runtime.v1.AuthConfig"])
        .compile_fds(fds)?;
    Ok(())
}

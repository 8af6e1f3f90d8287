//! Compiles proto/csi/v1/csi.proto with protox (pure Rust, no protoc), keeps its file
//! descriptor set for gRPC reflection. (The commit the binary reports comes from
//! multisnap-build-info, as for every binary of the workspace.)

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let file = root.join("csi/v1/csi.proto");
    println!("cargo:rerun-if-changed={}", root.join("csi").display());
    let fds = protox::compile([&file], [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("csi_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .build_server(true)
        // Clients too: the kernel guest test calls the driver through them (tests/src/bin).
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}

//! Compiles every .proto file of proto/csi/v1 (csi.proto and the services kept in files of
//! their own, such as snapshot_metadata.proto) with protox (pure Rust, no protoc), keeps their
//! file descriptor set for gRPC reflection. (The commit the binary reports comes from
//! multisnap-build-info, as for every binary of the workspace.)

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let dir = root.join("csi/v1");
    println!("cargo:rerun-if-changed={}", root.join("csi").display());
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "proto") {
            println!("cargo:rerun-if-changed={}", path.display());
            files.push(path);
        }
    }
    // A fixed order, so the descriptor set is the same whatever the directory's order.
    files.sort();
    let fds = protox::compile(&files, [&root])?;
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

//! Compiles proto/ with protox (pure Rust, so no protoc is needed) and keeps the file
//! descriptor set for gRPC server reflection.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let file = root.join("multisnap/v1/multisnap.proto");
    println!("cargo:rerun-if-changed={}", root.display());
    let fds = protox::compile([&file], [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptor_path = out.join("multisnap_descriptor.bin");
    std::fs::write(&descriptor_path, prost::Message::encode_to_vec(&fds))?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Delta stream bytes as `bytes::Bytes`: a received message's data is a slice of the
        // buffer tonic decoded it from rather than a copy, so an agent applying a stream and a
        // CLI relaying one pass each message on without copying it again.
        .bytes(".multisnap.v1.ExportDeltaResponse.data")
        .bytes(".multisnap.v1.ApplyDeltaRequest.data")
        .compile_fds(fds)?;
    Ok(())
}

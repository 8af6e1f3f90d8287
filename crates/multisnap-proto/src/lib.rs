//! multisnap's gRPC API, package `multisnap.v1`, generated from `proto/multisnap/v1/*.proto`.
//! The encoded file descriptor set is exported for server reflection.

pub mod v1 {
    tonic::include_proto!("multisnap.v1");
}

/// The encoded `FileDescriptorSet` of the API (for tonic-reflection).
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/multisnap_descriptor.bin"));

/// Why a connection to an agent failed, in words: `what` (e.g. "cannot connect to URI"),
/// then the error and each of its causes. tonic's own text names some of its causes already:
/// each is said once.
pub fn connect_error(what: &str, e: &tonic::transport::Error) -> String {
    let mut msg = format!("{what}: {e}");
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let text = s.to_string();
        if !msg.contains(&text) {
            msg.push_str(&format!(": {text}"));
        }
        source = s.source();
    }
    msg
}

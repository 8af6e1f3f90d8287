//! multisnap's gRPC API, package `multisnap.v1`, generated from `proto/multisnap/v1/*.proto`.
//! The encoded file descriptor set is exported for server reflection.

pub mod v1 {
    tonic::include_proto!("multisnap.v1");
}

/// The encoded `FileDescriptorSet` of the API (for tonic-reflection).
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/multisnap_descriptor.bin"));

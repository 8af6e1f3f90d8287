//! multisnap-csi: a Kubernetes CSI (v1.12) driver for multisnap volumes. It serves CSI's
//! Identity, Controller, GroupController, Node and SnapshotMetadata services on a unix socket
//! and does every change through the node agent's gRPC API. One instance runs on every node next to that node's agent (the
//! sidecars' per-node mode); ids carry the node that holds the data.

pub mod agent;
pub mod capability;
pub mod catalog;
pub mod controller;
pub mod cross_node;
pub mod group_controller;
pub mod identity;
pub mod ids;
pub mod inflight;
pub mod node;
pub mod pagination;
pub mod params;
pub mod peer;
pub mod retire;
pub mod server;
pub mod snapshot_metadata;
pub mod status;
pub mod topology;

/// CSI v1.12's messages and services (package `csi.v1`), generated from proto/csi/v1/csi.proto.
pub mod csi {
    tonic::include_proto!("csi.v1");
}

/// The encoded `FileDescriptorSet` of the CSI proto (for gRPC reflection).
pub const CSI_FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/csi_descriptor.bin"));

/// The version and commit this binary was built from, in the form every multisnap binary
/// reports (`VERSION (COMMIT)`; the commit honours `MULTISNAP_COMMIT` and follows HEAD).
pub const VERSION: &str = multisnap_build_info::VERSION_LINE;

use std::path::PathBuf;

/// What every service shares.
#[derive(Clone)]
pub struct Driver {
    pub name: String,
    pub node: ids::NodeName,
    pub agent: agent::Agent,
    pub inflight: inflight::InFlight,
    /// The agent's NBD unix socket, for the kernel NBD client.
    pub nbd_socket: PathBuf,
    /// Other nodes' agents, for restores of their snapshots here; None: such a restore is
    /// refused (RESOURCE_EXHAUSTED) and the scheduler tries the snapshot's node.
    pub peers: Option<std::sync::Arc<peer::Peers>>,
    /// The snapshots being pulled from other nodes.
    pub pulls: cross_node::Pulls,
}

//! `csi-call`: one CSI call to a driver on its unix socket, the way kubelet and the sidecars
//! make it, for the kernel guest test (tests/vm/guest-csi.sh), which has no Kubernetes and
//! no Python. Prints the id a create returns, or the numbers NodeGetVolumeStats returns; a
//! failed call prints its gRPC code and message and exits 1.

use clap::{Parser, Subcommand};
use hyper_util::rt::TokioIo;
use multisnap_csi::csi::controller_client::ControllerClient;
use multisnap_csi::csi::node_client::NodeClient;
use multisnap_csi::csi::volume_capability::{access_mode, AccessMode, AccessType};
use multisnap_csi::csi::volume_capability::{BlockVolume, MountVolume};
use multisnap_csi::csi::volume_content_source::{SnapshotSource, Type};
use multisnap_csi::csi::*;
use std::path::PathBuf;
use tonic::transport::{Channel, Endpoint, Uri};

#[derive(Parser)]
struct Args {
    /// The driver's CSI socket.
    #[arg(long)]
    socket: PathBuf,
    /// A raw block volume instead of a filesystem one.
    #[arg(long, global = true)]
    block: bool,
    /// The filesystem of a mount volume (the StorageClass' csi.storage.k8s.io/fstype).
    #[arg(long, global = true, default_value = "ext4")]
    fs_type: String,
    /// Give up on the call after this many milliseconds, as kubelet does after its deadline
    /// (the call is cancelled: the driver sees the stream reset).
    #[arg(long, global = true)]
    timeout_ms: Option<u64>,
    #[command(subcommand)]
    call: Call,
}

#[derive(Subcommand)]
enum Call {
    /// CreateVolume; prints the volume id.
    CreateVolume {
        name: String,
        bytes: i64,
        /// Restore this snapshot into the new volume.
        #[arg(long)]
        snapshot: Option<String>,
    },
    DeleteVolume {
        id: String,
    },
    /// CreateSnapshot; prints the snapshot id once it is ready to use.
    CreateSnapshot {
        volume: String,
        name: String,
    },
    DeleteSnapshot {
        id: String,
    },
    ExpandVolume {
        id: String,
        bytes: i64,
    },
    Stage {
        id: String,
        staging: String,
    },
    Unstage {
        id: String,
        staging: String,
    },
    Publish {
        id: String,
        staging: String,
        target: String,
    },
    Unpublish {
        id: String,
        target: String,
    },
    /// NodeGetVolumeStats; prints `bytes USED TOTAL` (and `inodes USED TOTAL` for a filesystem).
    Stats {
        id: String,
        path: String,
    },
    /// NodeExpandVolume of a staged volume.
    NodeExpand {
        id: String,
        path: String,
        bytes: i64,
    },
}

fn capability(args: &Args) -> VolumeCapability {
    let access_type = if args.block {
        AccessType::Block(BlockVolume {})
    } else {
        AccessType::Mount(MountVolume {
            fs_type: args.fs_type.clone(),
            ..Default::default()
        })
    };
    VolumeCapability {
        access_type: Some(access_type),
        access_mode: Some(AccessMode {
            mode: access_mode::Mode::SingleNodeWriter as i32,
        }),
    }
}

async fn channel(
    socket: PathBuf,
    timeout: Option<std::time::Duration>,
) -> Result<Channel, tonic::transport::Error> {
    let mut endpoint = Endpoint::from_static("http://localhost");
    if let Some(t) = timeout {
        endpoint = endpoint.timeout(t);
    }
    endpoint
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = socket.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await
}

async fn run(args: Args) -> Result<(), tonic::Status> {
    let timeout = args.timeout_ms.map(std::time::Duration::from_millis);
    let ch = channel(args.socket.clone(), timeout)
        .await
        .map_err(|e| tonic::Status::unavailable(format!("cannot connect: {e}")))?;
    let mut ctrl = ControllerClient::new(ch.clone());
    let mut node = NodeClient::new(ch);
    let cap = capability(&args);
    match args.call {
        Call::CreateVolume {
            name,
            bytes,
            snapshot,
        } => {
            let source = snapshot.map(|snapshot_id| VolumeContentSource {
                r#type: Some(Type::Snapshot(SnapshotSource { snapshot_id })),
            });
            let v = ctrl
                .create_volume(CreateVolumeRequest {
                    name,
                    capacity_range: Some(CapacityRange {
                        required_bytes: bytes,
                        limit_bytes: 0,
                    }),
                    volume_capabilities: vec![cap],
                    volume_content_source: source,
                    ..Default::default()
                })
                .await?
                .into_inner()
                .volume
                .unwrap_or_default();
            println!("{}", v.volume_id);
        }
        Call::DeleteVolume { id } => {
            ctrl.delete_volume(DeleteVolumeRequest {
                volume_id: id,
                ..Default::default()
            })
            .await?;
        }
        Call::CreateSnapshot { volume, name } => {
            // As external-snapshotter does: the same call again until the snapshot is ready.
            loop {
                let s = ctrl
                    .create_snapshot(CreateSnapshotRequest {
                        source_volume_id: volume.clone(),
                        name: name.clone(),
                        ..Default::default()
                    })
                    .await?
                    .into_inner()
                    .snapshot
                    .unwrap_or_default();
                if s.ready_to_use {
                    println!("{}", s.snapshot_id);
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        }
        Call::DeleteSnapshot { id } => {
            ctrl.delete_snapshot(DeleteSnapshotRequest {
                snapshot_id: id,
                ..Default::default()
            })
            .await?;
        }
        Call::ExpandVolume { id, bytes } => {
            ctrl.controller_expand_volume(ControllerExpandVolumeRequest {
                volume_id: id,
                capacity_range: Some(CapacityRange {
                    required_bytes: bytes,
                    limit_bytes: 0,
                }),
                volume_capability: Some(cap),
                ..Default::default()
            })
            .await?;
        }
        Call::Stage { id, staging } => {
            node.node_stage_volume(NodeStageVolumeRequest {
                volume_id: id,
                staging_target_path: staging,
                volume_capability: Some(cap),
                ..Default::default()
            })
            .await?;
        }
        Call::Unstage { id, staging } => {
            node.node_unstage_volume(NodeUnstageVolumeRequest {
                volume_id: id,
                staging_target_path: staging,
            })
            .await?;
        }
        Call::Publish {
            id,
            staging,
            target,
        } => {
            node.node_publish_volume(NodePublishVolumeRequest {
                volume_id: id,
                staging_target_path: staging,
                target_path: target,
                volume_capability: Some(cap),
                ..Default::default()
            })
            .await?;
        }
        Call::Unpublish { id, target } => {
            node.node_unpublish_volume(NodeUnpublishVolumeRequest {
                volume_id: id,
                target_path: target,
            })
            .await?;
        }
        Call::Stats { id, path } => {
            let usage = node
                .node_get_volume_stats(NodeGetVolumeStatsRequest {
                    volume_id: id,
                    volume_path: path,
                    ..Default::default()
                })
                .await?
                .into_inner()
                .usage;
            for u in usage {
                let unit = if u.unit == volume_usage::Unit::Inodes as i32 {
                    "inodes"
                } else {
                    "bytes"
                };
                println!("{unit} {} {}", u.used, u.total);
            }
        }
        Call::NodeExpand { id, path, bytes } => {
            node.node_expand_volume(NodeExpandVolumeRequest {
                volume_id: id,
                volume_path: path,
                capacity_range: Some(CapacityRange {
                    required_bytes: bytes,
                    limit_bytes: 0,
                }),
                volume_capability: Some(cap),
                ..Default::default()
            })
            .await?;
        }
    }
    Ok(())
}

fn main() {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    if let Err(s) = rt.block_on(run(args)) {
        eprintln!("csi-call: {:?}: {}", s.code(), s.message());
        std::process::exit(1);
    }
}

//! CSI Node: a volume staged as a kernel block device (and, for a filesystem volume, mounted
//! at the staging path), then published by bind mounts.
//!
//! Staging layout: a filesystem volume's device is mounted at the staging path itself; a block
//! volume's device node is bind-mounted on the file `<staging path>/device`. Publishing
//! bind-mounts one or the other at the target path. Which device a staging holds is read back
//! from the mounts (the mounted filesystem's device number, or the device number the bind
//! mount points at), so no state is kept beside the kernel's own.

pub mod device;
pub mod fs;
pub mod mounts;

use crate::capability::{self, Access, FsType};
use crate::csi::node_server::Node;
use crate::csi::node_service_capability::{rpc, Rpc, Type};
use crate::csi::*;
use crate::status::invalid;
use crate::{catalog, controller, params, topology, Driver};
use std::path::{Path, PathBuf};
use tonic::{Request, Response, Status};

pub struct NodeService(pub Driver);

/// The file a block volume's device is bind-mounted on inside the staging directory.
const BLOCK_DEVICE_FILE: &str = "device";

fn required<'a>(what: &str, v: &'a str) -> Result<&'a str, Status> {
    if v.is_empty() {
        Err(invalid(format!("{what} is required")))
    } else {
        Ok(v)
    }
}

fn access_of(cap: Option<&VolumeCapability>) -> Result<Access, Status> {
    let cap = cap.ok_or_else(|| invalid("volume_capability is required"))?;
    capability::check(cap).map_err(invalid)
}

fn io_status(what: &str) -> impl Fn(std::io::Error) -> Status + '_ {
    move |e| Status::internal(format!("{what}: {e}"))
}

fn staged_device_file(staging: &Path) -> PathBuf {
    staging.join(BLOCK_DEVICE_FILE)
}

/// The device a staging path holds, if it is staged.
fn staged_device(staging: &Path) -> Result<Option<PathBuf>, Status> {
    let file = staged_device_file(staging);
    if mounts::at(&file)
        .map_err(io_status("reading mounts"))?
        .is_some()
    {
        let dev = device::rdev_of(&file).map_err(io_status("reading the staged device"))?;
        return Ok(device::device_of(dev));
    }
    Ok(mounts::at(staging)
        .map_err(io_status("reading mounts"))?
        .and_then(|m| device::device_of(m.dev)))
}

impl NodeService {
    async fn stage(&self, r: NodeStageVolumeRequest) -> Result<(), Status> {
        let id = required("volume_id", &r.volume_id)?;
        let staging = PathBuf::from(required("staging_target_path", &r.staging_target_path)?);
        let access = access_of(r.volume_capability.as_ref())?;
        let vid = controller::local_id(&self.0, id)?;
        let _claim = self.0.inflight.claim(&[format!("node volume {vid}")])?;
        match catalog::entry(&self.0.agent, &vid.volume).await? {
            Some(e) if !e.retired() => {}
            _ => return Err(Status::not_found(format!("volume {id} does not exist"))),
        }
        if staged_device(&staging)?.is_some() {
            return Ok(());
        }
        std::fs::create_dir_all(&staging).map_err(io_status("creating the staging path"))?;
        let dev = device::attach(&self.0.agent, &self.0.nbd_socket, vid.volume.as_str()).await?;
        let done = match &access {
            Access::Block => stage_block(&dev, &staging),
            Access::Mount { fs_type, flags } => {
                let wanted = fs_type
                    .or_else(|| {
                        r.volume_context
                            .get(params::FS_TYPE)
                            .and_then(|f| FsType::parse(f).ok())
                    })
                    .unwrap_or(FsType::DEFAULT);
                stage_filesystem(&dev, &staging, wanted, flags).await
            }
        };
        if let Err(e) = done {
            // Nothing half-made: the device goes again when the staging failed.
            let _ = device::detach(&self.0.agent, &dev).await;
            return Err(e);
        }
        tracing::info!(volume = %vid, device = %dev.display(), staging = %staging.display(), "staged");
        Ok(())
    }

    async fn unstage(&self, r: NodeUnstageVolumeRequest) -> Result<(), Status> {
        let id = required("volume_id", &r.volume_id)?;
        let staging = PathBuf::from(required("staging_target_path", &r.staging_target_path)?);
        let _claim = self.0.inflight.claim(&[format!("node volume {id}")])?;
        let dev = staged_device(&staging)?;
        let file = staged_device_file(&staging);
        mounts::unmount_all(&file).map_err(io_status("unmounting the staged device"))?;
        mounts::unmount_all(&staging).map_err(io_status("unmounting the staging path"))?;
        match std::fs::remove_file(&file) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_status("removing the staged device file")(e)),
        }
        if let Some(dev) = dev {
            device::detach(&self.0.agent, &dev).await?;
            tracing::info!(volume = %id, device = %dev.display(), "unstaged");
        }
        Ok(())
    }

    async fn publish(&self, r: NodePublishVolumeRequest) -> Result<(), Status> {
        let id = required("volume_id", &r.volume_id)?;
        let target = PathBuf::from(required("target_path", &r.target_path)?);
        let access = access_of(r.volume_capability.as_ref())?;
        let staging = PathBuf::from(required("staging_target_path", &r.staging_target_path)?);
        controller::local_id(&self.0, id)?;
        let _claim = self.0.inflight.claim(&[format!("node volume {id}")])?;
        if mounts::at(&target)
            .map_err(io_status("reading mounts"))?
            .is_some()
        {
            return Ok(());
        }
        if staged_device(&staging)?.is_none() {
            return Err(Status::failed_precondition(format!(
                "volume {id} is not staged at {}",
                staging.display()
            )));
        }
        let source = match access {
            Access::Block => {
                create_file(&target)?;
                staged_device_file(&staging)
            }
            Access::Mount { .. } => {
                std::fs::create_dir_all(&target).map_err(io_status("creating the target path"))?;
                staging
            }
        };
        mounts::bind(&source, &target, r.readonly).map_err(io_status("bind-mounting the volume"))
    }

    async fn unpublish(&self, r: NodeUnpublishVolumeRequest) -> Result<(), Status> {
        let id = required("volume_id", &r.volume_id)?;
        let target = PathBuf::from(required("target_path", &r.target_path)?);
        let _claim = self.0.inflight.claim(&[format!("node volume {id}")])?;
        mounts::unmount_all(&target).map_err(io_status("unmounting the target path"))?;
        // The target was made by publish (CSI: the SP creates it and so removes it).
        let removed = match std::fs::symlink_metadata(&target) {
            Ok(m) if m.is_dir() => std::fs::remove_dir(&target),
            Ok(_) => std::fs::remove_file(&target),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        };
        removed.map_err(io_status("removing the target path"))
    }

    async fn stats(
        &self,
        r: NodeGetVolumeStatsRequest,
    ) -> Result<NodeGetVolumeStatsResponse, Status> {
        let id = required("volume_id", &r.volume_id)?;
        let path = PathBuf::from(required("volume_path", &r.volume_path)?);
        let vid = controller::local_id(&self.0, id)?;
        let entry = catalog::entry(&self.0.agent, &vid.volume).await?;
        let Some(e) = entry.filter(|e| !e.retired()) else {
            return Err(Status::not_found(format!("volume {id} does not exist")));
        };
        let meta = std::fs::metadata(&path).map_err(|_| {
            Status::not_found(format!("volume path {} does not exist", path.display()))
        })?;
        let m = mounts::at(&path).map_err(io_status("reading mounts"))?;
        if m.is_none() {
            return Err(Status::not_found(format!(
                "volume {id} is not published at {}",
                path.display()
            )));
        }
        use volume_usage::Unit;
        if !meta.is_dir() {
            // A raw block volume: its size is all there is to tell.
            let total = e.volume.size_bytes as i64;
            return Ok(NodeGetVolumeStatsResponse {
                usage: vec![VolumeUsage {
                    total,
                    unit: Unit::Bytes as i32,
                    ..Default::default()
                }],
                volume_condition: None,
            });
        }
        let [bytes, avail, used, inodes, ifree, iused] =
            fs::usage(&path).map_err(io_status("reading the filesystem's usage"))?;
        Ok(NodeGetVolumeStatsResponse {
            usage: vec![
                VolumeUsage {
                    total: bytes as i64,
                    available: avail as i64,
                    used: used as i64,
                    unit: Unit::Bytes as i32,
                },
                VolumeUsage {
                    total: inodes as i64,
                    available: ifree as i64,
                    used: iused as i64,
                    unit: Unit::Inodes as i32,
                },
            ],
            volume_condition: None,
        })
    }

    async fn expand(&self, r: NodeExpandVolumeRequest) -> Result<NodeExpandVolumeResponse, Status> {
        let id = required("volume_id", &r.volume_id)?;
        let path = PathBuf::from(required("volume_path", &r.volume_path)?);
        let vid = controller::local_id(&self.0, id)?;
        let entry = catalog::entry(&self.0.agent, &vid.volume).await?;
        let Some(e) = entry.filter(|e| !e.retired()) else {
            return Err(Status::not_found(format!("volume {id} does not exist")));
        };
        if let Some(Access::Block) = r
            .volume_capability
            .as_ref()
            .map(|c| access_of(Some(c)))
            .transpose()?
        {
            return Ok(NodeExpandVolumeResponse {
                capacity_bytes: e.volume.size_bytes as i64,
            });
        }
        let _claim = self.0.inflight.claim(&[format!("node volume {vid}")])?;
        let m = mounts::at(&path)
            .map_err(io_status("reading mounts"))?
            .ok_or_else(|| {
                Status::not_found(format!("volume {id} is not mounted at {}", path.display()))
            })?;
        let dev = device::device_of(m.dev).ok_or_else(|| {
            Status::internal(format!("no block device behind {}", path.display()))
        })?;
        fs::grow(&m.fs_type, &dev, &path)
            .await
            .map_err(|e| Status::internal(format!("growing the filesystem of volume {id}: {e}")))?;
        Ok(NodeExpandVolumeResponse {
            capacity_bytes: e.volume.size_bytes as i64,
        })
    }
}

fn create_file(path: &Path) -> Result<(), Status> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io_status("creating the target's directory"))?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map(|_| ())
        .map_err(io_status("creating the target file"))
}

fn stage_block(dev: &Path, staging: &Path) -> Result<(), Status> {
    let file = staged_device_file(staging);
    create_file(&file)?;
    mounts::bind(dev, &file, false).map_err(io_status("bind-mounting the device"))
}

async fn stage_filesystem(
    dev: &Path,
    staging: &Path,
    wanted: FsType,
    flags: &[String],
) -> Result<(), Status> {
    let found = fs::existing(dev).await.map_err(Status::internal)?;
    let fs_type = match found {
        Some(t) => t,
        None => {
            fs::make(dev, wanted).await.map_err(|e| {
                Status::internal(format!(
                    "making {} on {}: {e}",
                    wanted.as_str(),
                    dev.display()
                ))
            })?;
            wanted.as_str().to_string()
        }
    };
    mounts::mount_fs(dev, staging, &fs_type, false, &flags.join(",")).map_err(io_status(&format!(
        "mounting {fs_type} from {}",
        dev.display()
    )))
}

/// Runs a node operation to its end even when its caller goes away. kubelet cancels a call
/// that outlives its deadline (a slow mkfs, say) and retries it; cancelled in place, the
/// operation would stop between attaching a device and mounting it, or between unmounting and
/// detaching, and leave a device attached that nothing records (an NBD device cannot be told
/// apart afterwards). As a task of its own it finishes, or fails and cleans up, either way; the
/// retry meanwhile gets ABORTED from the in-flight claim, then finds the result.
async fn to_completion<F>(op: F) -> Result<(), Status>
where
    F: std::future::Future<Output = Result<(), Status>> + Send + 'static,
{
    tokio::spawn(op)
        .await
        .map_err(|e| Status::internal(format!("the node operation's task failed: {e}")))?
}

#[tonic::async_trait]
impl Node for NodeService {
    async fn node_stage_volume(
        &self,
        req: Request<NodeStageVolumeRequest>,
    ) -> Result<Response<NodeStageVolumeResponse>, Status> {
        let node = NodeService(self.0.clone());
        to_completion(async move { node.stage(req.into_inner()).await }).await?;
        Ok(Response::new(NodeStageVolumeResponse {}))
    }

    async fn node_unstage_volume(
        &self,
        req: Request<NodeUnstageVolumeRequest>,
    ) -> Result<Response<NodeUnstageVolumeResponse>, Status> {
        let node = NodeService(self.0.clone());
        to_completion(async move { node.unstage(req.into_inner()).await }).await?;
        Ok(Response::new(NodeUnstageVolumeResponse {}))
    }

    async fn node_publish_volume(
        &self,
        req: Request<NodePublishVolumeRequest>,
    ) -> Result<Response<NodePublishVolumeResponse>, Status> {
        let node = NodeService(self.0.clone());
        to_completion(async move { node.publish(req.into_inner()).await }).await?;
        Ok(Response::new(NodePublishVolumeResponse {}))
    }

    async fn node_unpublish_volume(
        &self,
        req: Request<NodeUnpublishVolumeRequest>,
    ) -> Result<Response<NodeUnpublishVolumeResponse>, Status> {
        let node = NodeService(self.0.clone());
        to_completion(async move { node.unpublish(req.into_inner()).await }).await?;
        Ok(Response::new(NodeUnpublishVolumeResponse {}))
    }

    async fn node_get_volume_stats(
        &self,
        req: Request<NodeGetVolumeStatsRequest>,
    ) -> Result<Response<NodeGetVolumeStatsResponse>, Status> {
        Ok(Response::new(self.stats(req.into_inner()).await?))
    }

    async fn node_expand_volume(
        &self,
        req: Request<NodeExpandVolumeRequest>,
    ) -> Result<Response<NodeExpandVolumeResponse>, Status> {
        Ok(Response::new(self.expand(req.into_inner()).await?))
    }

    async fn node_get_capabilities(
        &self,
        _req: Request<NodeGetCapabilitiesRequest>,
    ) -> Result<Response<NodeGetCapabilitiesResponse>, Status> {
        let caps = [
            rpc::Type::StageUnstageVolume,
            rpc::Type::GetVolumeStats,
            rpc::Type::ExpandVolume,
        ];
        Ok(Response::new(NodeGetCapabilitiesResponse {
            capabilities: caps
                .iter()
                .map(|t| NodeServiceCapability {
                    r#type: Some(Type::Rpc(Rpc { r#type: *t as i32 })),
                })
                .collect(),
        }))
    }

    async fn node_get_info(
        &self,
        _req: Request<NodeGetInfoRequest>,
    ) -> Result<Response<NodeGetInfoResponse>, Status> {
        Ok(Response::new(NodeGetInfoResponse {
            node_id: self.0.node.to_string(),
            max_volumes_per_node: 0,
            accessible_topology: Some(topology::of_node(&self.0.node)),
        }))
    }
}

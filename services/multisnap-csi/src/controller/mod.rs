//! CSI Controller: volumes and snapshots on this node's agent.

mod capacity;
mod sizes;
mod snapshots;
mod source;
mod volumes;

pub use sizes::Range;
pub use snapshots::{csi_snapshot, restore_size, KUBERNETES_PREFIX};
pub use volumes::local_id;

use crate::csi::controller_server::Controller;
use crate::csi::controller_service_capability::{rpc, Rpc, Type};
use crate::csi::*;
use crate::Driver;
use tonic::{Request, Response, Status};

pub struct ControllerService(pub Driver);

/// What the controller offers. No PUBLISH_UNPUBLISH_VOLUME: a volume is attached on its node
/// by NodeStageVolume, so the CSIDriver object says attachRequired: false.
pub const CAPABILITIES: [rpc::Type; 8] = [
    rpc::Type::CreateDeleteVolume,
    rpc::Type::ListVolumes,
    rpc::Type::GetCapacity,
    rpc::Type::CreateDeleteSnapshot,
    rpc::Type::ListSnapshots,
    rpc::Type::CloneVolume,
    rpc::Type::ExpandVolume,
    rpc::Type::GetSnapshot,
];

#[tonic::async_trait]
impl Controller for ControllerService {
    async fn create_volume(
        &self,
        req: Request<CreateVolumeRequest>,
    ) -> Result<Response<CreateVolumeResponse>, Status> {
        volumes::create(&self.0, req.into_inner()).await
    }

    async fn delete_volume(
        &self,
        req: Request<DeleteVolumeRequest>,
    ) -> Result<Response<DeleteVolumeResponse>, Status> {
        volumes::delete(&self.0, req.into_inner()).await
    }

    async fn validate_volume_capabilities(
        &self,
        req: Request<ValidateVolumeCapabilitiesRequest>,
    ) -> Result<Response<ValidateVolumeCapabilitiesResponse>, Status> {
        volumes::validate(&self.0, req.into_inner()).await
    }

    async fn list_volumes(
        &self,
        req: Request<ListVolumesRequest>,
    ) -> Result<Response<ListVolumesResponse>, Status> {
        volumes::list(&self.0, req.into_inner()).await
    }

    async fn get_capacity(
        &self,
        req: Request<GetCapacityRequest>,
    ) -> Result<Response<GetCapacityResponse>, Status> {
        capacity::get(&self.0, req.into_inner()).await
    }

    async fn controller_get_capabilities(
        &self,
        _req: Request<ControllerGetCapabilitiesRequest>,
    ) -> Result<Response<ControllerGetCapabilitiesResponse>, Status> {
        Ok(Response::new(ControllerGetCapabilitiesResponse {
            capabilities: CAPABILITIES
                .iter()
                .map(|t| ControllerServiceCapability {
                    r#type: Some(Type::Rpc(Rpc { r#type: *t as i32 })),
                })
                .collect(),
        }))
    }

    async fn create_snapshot(
        &self,
        req: Request<CreateSnapshotRequest>,
    ) -> Result<Response<CreateSnapshotResponse>, Status> {
        snapshots::create(&self.0, req.into_inner()).await
    }

    async fn delete_snapshot(
        &self,
        req: Request<DeleteSnapshotRequest>,
    ) -> Result<Response<DeleteSnapshotResponse>, Status> {
        snapshots::delete(&self.0, req.into_inner()).await
    }

    async fn list_snapshots(
        &self,
        req: Request<ListSnapshotsRequest>,
    ) -> Result<Response<ListSnapshotsResponse>, Status> {
        snapshots::list(&self.0, req.into_inner()).await
    }

    async fn controller_expand_volume(
        &self,
        req: Request<ControllerExpandVolumeRequest>,
    ) -> Result<Response<ControllerExpandVolumeResponse>, Status> {
        volumes::expand(&self.0, req.into_inner()).await
    }

    async fn get_snapshot(
        &self,
        req: Request<GetSnapshotRequest>,
    ) -> Result<Response<GetSnapshotResponse>, Status> {
        snapshots::get(&self.0, req.into_inner()).await
    }
}

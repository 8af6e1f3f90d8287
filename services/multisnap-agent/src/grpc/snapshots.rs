//! `multisnap.v1.SnapshotService`.

use super::status::{blocking, from_store};
use crate::volumes::{Volume, Volumes};
use multisnap_proto::v1 as pb;
use multisnap_store::{SnapshotInfo, SnapshotState, StoreError};
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct SnapshotApi {
    pub volumes: Arc<Volumes>,
    pub ublk: Arc<crate::ublk_devices::UblkDevices>,
}

pub fn snapshot_message(volume: &str, s: &SnapshotInfo) -> pb::Snapshot {
    let since = s
        .created_at
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let state = match s.state {
        SnapshotState::Ready => pb::SnapshotState::Ready,
        // The store never lists a receiving (staging) record; if one slipped through it would
        // be on its way out, which is what DELETING tells a client.
        SnapshotState::Deleting | SnapshotState::Receiving => pb::SnapshotState::Deleting,
        SnapshotState::Invalid | SnapshotState::Invalidating => pb::SnapshotState::Invalid,
    };
    pb::Snapshot {
        id: s.id.0,
        name: s.name.clone(),
        volume: volume.to_string(),
        created_at: Some(prost_types::Timestamp {
            seconds: since.as_secs() as i64,
            nanos: since.subsec_nanos() as i32,
        }),
        writable: s.writable,
        state: state as i32,
        nbd_export: format!("{volume}@{}", s.name),
        exclusive_bytes: None,
        source_snapshot_id: s.source_id,
        size_bytes: s.size,
        group: String::new(),
    }
}

/// [`snapshot_message`] naming the group the snapshot is a member of, if any.
pub fn member_message(volumes: &Volumes, volume: &str, s: &SnapshotInfo) -> pb::Snapshot {
    let mut m = snapshot_message(volume, s);
    if let Some(g) = volumes.groups.group_of(volume, s.id.0) {
        m.group = g.to_string();
    }
    m
}

impl SnapshotApi {
    fn volume(&self, name: &str) -> Result<Arc<Volume>, Status> {
        super::status::find_volume(&self.volumes, name)
    }
}

fn require_name(name: &str) -> Result<(), Status> {
    if name.is_empty() {
        return Err(Status::invalid_argument("name is required"));
    }
    Ok(())
}

#[tonic::async_trait]
impl pb::snapshot_service_server::SnapshotService for SnapshotApi {
    #[tracing::instrument(skip_all, fields(volume = %req.get_ref().volume, snapshot = %req.get_ref().name))]
    async fn create_snapshot(
        &self,
        req: Request<pb::CreateSnapshotRequest>,
    ) -> Result<Response<pb::Snapshot>, Status> {
        let r = req.into_inner();
        require_name(&r.name)?;
        let v = self.volume(&r.volume)?;
        let volumes = self.volumes.clone();
        blocking(move || {
            // No group is made or deleted meanwhile, so a group's member names stay its own.
            let _no_group_changes = volumes.groups.hold_off_changes();
            if let Some(g) = volumes.groups.member_of(&v.name, &r.name) {
                return Err(Status::already_exists(format!(
                    "volume {}'s snapshot {:?} is a member of snapshot group {g}",
                    v.name, r.name
                )));
            }
            let existing = |v: &Volume| -> Result<Response<pb::Snapshot>, Status> {
                let s = v.store.snapshot_by_name(&r.name).map_err(from_store)?;
                if s.writable != r.writable {
                    return Err(Status::already_exists(format!(
                        "volume {} already has a snapshot named {:?} with writable={}",
                        v.name, r.name, s.writable
                    )));
                }
                Ok(Response::new(snapshot_message(&v.name, &s)))
            };
            // CSI-style idempotency: the same name on the same volume is the same snapshot.
            if v.store.snapshot_by_name(&r.name).is_ok() {
                return existing(&v);
            }
            match v.store.create_snapshot_with(&r.name, r.writable) {
                Ok(s) => Ok(Response::new(snapshot_message(&v.name, &s))),
                // Lost a race with an identical request.
                Err(StoreError::SnapshotExists(_)) => existing(&v),
                Err(e) => Err(from_store(e)),
            }
        })
        .await
    }

    async fn list_snapshots(
        &self,
        req: Request<pb::ListSnapshotsRequest>,
    ) -> Result<Response<pb::ListSnapshotsResponse>, Status> {
        let v = self.volume(&req.into_inner().volume)?;
        let volumes = self.volumes.clone();
        blocking(move || {
            Ok(Response::new(pb::ListSnapshotsResponse {
                snapshots: v
                    .store
                    .list_snapshots()
                    .iter()
                    .map(|s| member_message(&volumes, &v.name, s))
                    .collect(),
            }))
        })
        .await
    }

    async fn get_snapshot(
        &self,
        req: Request<pb::GetSnapshotRequest>,
    ) -> Result<Response<pb::Snapshot>, Status> {
        let r = req.into_inner();
        require_name(&r.name)?;
        let v = self.volume(&r.volume)?;
        let volumes = self.volumes.clone();
        blocking(move || {
            let s = v.store.snapshot_by_name(&r.name).map_err(from_store)?;
            Ok(Response::new(member_message(&volumes, &v.name, &s)))
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(volume = %req.get_ref().volume, snapshot = %req.get_ref().name))]
    async fn delete_snapshot(
        &self,
        req: Request<pb::DeleteSnapshotRequest>,
    ) -> Result<Response<pb::DeleteSnapshotResponse>, Status> {
        let r = req.into_inner();
        require_name(&r.name)?;
        let v = self.volume(&r.volume)?;
        if let Some(dev) = self.ublk.serving(&r.volume, Some(&r.name)) {
            return Err(Status::failed_precondition(format!(
                "snapshot {}@{} is served as {dev}; detach it first (multisnap ublk detach {dev})",
                r.volume, r.name
            )));
        }
        if let Some(g) = self.volumes.groups.member_of(&r.volume, &r.name) {
            return Err(Status::failed_precondition(format!(
                "snapshot {}@{} is a member of snapshot group {g}; delete the group instead",
                r.volume, r.name
            )));
        }
        blocking(move || {
            let s = v.store.snapshot_by_name(&r.name).map_err(from_store)?;
            v.store.delete_snapshot(s.id).map_err(from_store)?;
            Ok(Response::new(pb::DeleteSnapshotResponse {
                reclaim_pending: v.store.reclaim_progress().pending.len() as u64,
            }))
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(volume = %req.get_ref().volume, snapshot = %req.get_ref().snapshot))]
    async fn revert_volume(
        &self,
        req: Request<pb::RevertVolumeRequest>,
    ) -> Result<Response<pb::RevertVolumeResponse>, Status> {
        let r = req.into_inner();
        require_name(&r.snapshot)?;
        let v = self.volume(&r.volume)?;
        // The kernel caches a ublk device's pages: it would keep serving the pre-rollback data.
        if let Some(dev) = self
            .ublk
            .list()
            .into_iter()
            .find(|d| d.volume == r.volume && d.snapshot.is_none())
        {
            return Err(Status::failed_precondition(format!(
                "the origin of volume {} is served as {}, whose kernel cache would keep the data from before the rollback; detach it first (multisnap ublk detach {})",
                r.volume,
                dev.path(),
                dev.path()
            )));
        }
        blocking(move || {
            let s = v.store.snapshot_by_name(&r.snapshot).map_err(from_store)?;
            let merge = v.store.revert_to(s.id).map_err(from_store)?;
            Ok(Response::new(pb::RevertVolumeResponse {
                merge: Some(super::volumes::merge_message(&merge)),
            }))
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(group = %req.get_ref().name))]
    async fn create_snapshot_group(
        &self,
        req: Request<pb::CreateSnapshotGroupRequest>,
    ) -> Result<Response<pb::SnapshotGroup>, Status> {
        super::snapshot_groups::create(&self.volumes, req.into_inner()).await
    }

    async fn get_snapshot_group(
        &self,
        req: Request<pb::GetSnapshotGroupRequest>,
    ) -> Result<Response<pb::SnapshotGroup>, Status> {
        super::snapshot_groups::get(&self.volumes, req.into_inner()).await
    }

    async fn list_snapshot_groups(
        &self,
        _req: Request<pb::ListSnapshotGroupsRequest>,
    ) -> Result<Response<pb::ListSnapshotGroupsResponse>, Status> {
        super::snapshot_groups::list(&self.volumes).await
    }

    #[tracing::instrument(skip_all, fields(group = %req.get_ref().name))]
    async fn delete_snapshot_group(
        &self,
        req: Request<pb::DeleteSnapshotGroupRequest>,
    ) -> Result<Response<pb::DeleteSnapshotGroupResponse>, Status> {
        super::snapshot_groups::delete(&self.volumes, req.into_inner()).await
    }
}

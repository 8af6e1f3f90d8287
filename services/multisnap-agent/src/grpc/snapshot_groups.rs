//! `SnapshotService`'s group calls: CreateSnapshotGroup, GetSnapshotGroup, ListSnapshotGroups
//! and DeleteSnapshotGroup, over `crate::groups`.

use super::snapshots::member_message;
use super::status::{blocking, from_store, from_volume};
use crate::groups::{GroupName, GroupRecord};
use crate::volumes::Volumes;
use multisnap_proto::v1 as pb;
use std::sync::Arc;
use tonic::{Response, Status};

fn group_name(name: &str) -> Result<GroupName, Status> {
    if name.is_empty() {
        return Err(Status::invalid_argument("name is required"));
    }
    GroupName::parse(name).map_err(Status::invalid_argument)
}

/// The group as the API shows it: its members as they are now.
fn group_message(volumes: &Volumes, rec: &GroupRecord) -> Result<pb::SnapshotGroup, Status> {
    let mut members = Vec::with_capacity(rec.members.len());
    for m in &rec.members {
        let v = volumes.get(&m.volume).ok_or_else(|| {
            Status::internal(format!(
                "volume {} of snapshot group {} is gone",
                m.volume, rec.name
            ))
        })?;
        let s = v
            .store
            .snapshot(multisnap_store::SnapshotId(m.snapshot_id))
            .map_err(from_store)?;
        members.push(member_message(volumes, &m.volume, &s));
    }
    Ok(pb::SnapshotGroup {
        name: rec.name.to_string(),
        created_at: Some(prost_types::Timestamp {
            seconds: (rec.created_at_ns / 1_000_000_000) as i64,
            nanos: (rec.created_at_ns % 1_000_000_000) as i32,
        }),
        members,
    })
}

pub async fn create(
    volumes: &Arc<Volumes>,
    r: pb::CreateSnapshotGroupRequest,
) -> Result<Response<pb::SnapshotGroup>, Status> {
    let name = group_name(&r.name)?;
    if r.volumes.is_empty() {
        return Err(Status::invalid_argument("volumes are required"));
    }
    let volumes = volumes.clone();
    blocking(move || {
        let rec = volumes
            .groups
            .create(&volumes.current(), &name, &r.volumes)
            .map_err(from_volume)?;
        Ok(Response::new(group_message(&volumes, &rec)?))
    })
    .await
}

pub async fn get(
    volumes: &Arc<Volumes>,
    r: pb::GetSnapshotGroupRequest,
) -> Result<Response<pb::SnapshotGroup>, Status> {
    let name = group_name(&r.name)?;
    let volumes = volumes.clone();
    blocking(move || {
        let rec = volumes.groups.get(&name).ok_or_else(|| {
            from_volume(crate::volumes::VolumeError::GroupNotFound(name.to_string()))
        })?;
        Ok(Response::new(group_message(&volumes, &rec)?))
    })
    .await
}

pub async fn list(
    volumes: &Arc<Volumes>,
) -> Result<Response<pb::ListSnapshotGroupsResponse>, Status> {
    let volumes = volumes.clone();
    blocking(move || {
        let groups = volumes
            .groups
            .list()
            .iter()
            .map(|rec| group_message(&volumes, rec))
            .collect::<Result<_, _>>()?;
        Ok(Response::new(pb::ListSnapshotGroupsResponse { groups }))
    })
    .await
}

pub async fn delete(
    volumes: &Arc<Volumes>,
    r: pb::DeleteSnapshotGroupRequest,
) -> Result<Response<pb::DeleteSnapshotGroupResponse>, Status> {
    let name = group_name(&r.name)?;
    let volumes = volumes.clone();
    blocking(move || {
        volumes
            .groups
            .delete(&volumes.current(), &name)
            .map_err(from_volume)?;
        Ok(Response::new(pb::DeleteSnapshotGroupResponse {}))
    })
    .await
}

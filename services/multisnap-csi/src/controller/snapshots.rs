//! CreateSnapshot, DeleteSnapshot, ListSnapshots and GetSnapshot.

use super::volumes::local_id;
use crate::catalog::{self, Entry};
use crate::csi::*;
use crate::ids::{AgentSnapshotName, SnapshotId, VolumeId};
use crate::pagination::page;
use crate::status::{check_name, from_agent, invalid};
use crate::{retire, Driver};
use multisnap_proto::v1 as pb;
use tonic::{Response, Status};

/// Snapshot parameters Kubernetes adds (`--extra-create-metadata`); multisnap takes no others.
pub const KUBERNETES_PREFIX: &str = "csi.storage.k8s.io/";

/// What a restore of a snapshot needs at least: its size when taken. An agent from before
/// snapshots reported their size answers 0; the volume's size is the best guess then (it is
/// exact unless the volume was resized after the snapshot).
pub async fn restore_size(d: &Driver, volume: &VolumeId, s: &pb::Snapshot) -> Result<u64, Status> {
    if s.size_bytes != 0 {
        return Ok(s.size_bytes);
    }
    match d.agent.volume(volume.volume.as_str()).await {
        Ok(Some(v)) => Ok(v.size_bytes),
        Ok(None) => Err(Status::not_found(format!("volume {volume} does not exist"))),
        Err(e) => Err(from_agent(&format!("looking up volume {volume}"), e)),
    }
}

pub fn csi_snapshot(
    volume: &VolumeId,
    name: &AgentSnapshotName,
    s: &pb::Snapshot,
    size: u64,
) -> Snapshot {
    Snapshot {
        size_bytes: size as i64,
        snapshot_id: SnapshotId {
            volume: volume.clone(),
            snapshot: name.clone(),
        }
        .to_string(),
        source_volume_id: volume.to_string(),
        creation_time: s.created_at,
        ready_to_use: s.state == pb::SnapshotState::Ready as i32,
        group_snapshot_id: crate::group_controller::group_id_of(&volume.node, &s.group),
    }
}

/// Every CSI snapshot on this node, in volume then creation order.
fn all_snapshots(d: &Driver, entries: &[Entry]) -> Vec<Snapshot> {
    let mut out = Vec::new();
    for e in entries {
        let id = VolumeId {
            node: d.node.clone(),
            volume: e.name.clone(),
        };
        for (name, s) in e.csi_snapshots() {
            let size = if s.size_bytes != 0 {
                s.size_bytes
            } else {
                e.volume.size_bytes
            };
            out.push(csi_snapshot(&id, &name, s, size));
        }
    }
    out
}

pub async fn create(
    d: &Driver,
    r: CreateSnapshotRequest,
) -> Result<Response<CreateSnapshotResponse>, Status> {
    check_name(&r.name)?;
    if r.source_volume_id.is_empty() {
        return Err(invalid("source_volume_id is required"));
    }
    if let Some(k) = r
        .parameters
        .keys()
        .find(|k| !k.starts_with(KUBERNETES_PREFIX))
    {
        return Err(invalid(format!(
            "unknown parameter {k:?}: multisnap snapshots take no parameters"
        )));
    }
    let name = AgentSnapshotName::for_csi_name(&r.name);
    let source = local_id(d, &r.source_volume_id)?;
    let _claim = d.inflight.claim(&[
        format!("snapshot name {:?}", r.name),
        format!("volume {source}"),
    ])?;
    // Idempotency: the name may already be taken, here or on another volume.
    for e in catalog::entries(&d.agent).await? {
        if let Some((_, s)) = e.csi_snapshots().find(|(n, _)| *n == name) {
            if e.name != source.volume {
                return Err(Status::already_exists(format!(
                    "snapshot {:?} already exists, of volume {}/{}",
                    r.name, d.node, e.name
                )));
            }
            let size = restore_size(d, &source, s).await?;
            let snap = csi_snapshot(&source, &name, s, size);
            return Ok(Response::new(CreateSnapshotResponse {
                snapshot: Some(snap),
            }));
        }
    }
    match catalog::entry(&d.agent, &source.volume).await? {
        Some(e) if !e.retired() => {}
        _ => {
            return Err(Status::not_found(format!(
                "source volume {} does not exist",
                r.source_volume_id
            )))
        }
    }
    // The agent's CreateSnapshot returns once the snapshot is cut: every acknowledged write
    // is in it, so it is ready to use at once.
    let s = d
        .agent
        .snapshots()
        .create_snapshot(pb::CreateSnapshotRequest {
            volume: source.volume.to_string(),
            name: name.to_string(),
            writable: false,
        })
        .await
        .map_err(|s| from_agent(&format!("snapshotting volume {source}"), s))?
        .into_inner();
    tracing::info!(csi_name = %r.name, snapshot = %name, volume = %source, "snapshot created");
    let size = restore_size(d, &source, &s).await?;
    let snap = csi_snapshot(&source, &name, &s, size);
    Ok(Response::new(CreateSnapshotResponse {
        snapshot: Some(snap),
    }))
}

pub async fn delete(
    d: &Driver,
    r: DeleteSnapshotRequest,
) -> Result<Response<DeleteSnapshotResponse>, Status> {
    if r.snapshot_id.is_empty() {
        return Err(invalid("snapshot_id is required"));
    }
    let Some(id) = SnapshotId::parse(&r.snapshot_id) else {
        return Ok(Response::new(DeleteSnapshotResponse {}));
    };
    if id.volume.node != d.node {
        return Err(Status::failed_precondition(format!(
            "snapshot {id} lives on node {}; the driver on that node deletes it",
            id.volume.node
        )));
    }
    let _claim = d.inflight.claim(&[format!("volume {}", id.volume)])?;
    refuse_group_member(d, &id).await?;
    let reply = d
        .agent
        .snapshots()
        .delete_snapshot(pb::DeleteSnapshotRequest {
            volume: id.volume.volume.to_string(),
            name: id.snapshot.to_string(),
        })
        .await;
    crate::agent::absent_as_none(reply)
        .map_err(|s| from_agent(&format!("deleting snapshot {id}"), s))?;
    // Also when the snapshot was gone already: a crash may have come between the two steps.
    retire::reap_if_unused(&d.agent, &id.volume.volume).await?;
    Ok(Response::new(DeleteSnapshotResponse {}))
}

/// A member of a group snapshot goes with its group only: INVALID_ARGUMENT, the spec's code.
async fn refuse_group_member(d: &Driver, id: &SnapshotId) -> Result<(), Status> {
    let snapshot = d
        .agent
        .snapshot(id.volume.volume.as_str(), id.snapshot.as_str())
        .await
        .map_err(|s| from_agent(&format!("looking up snapshot {id}"), s))?;
    match snapshot {
        Some(s) if !s.group.is_empty() => Err(invalid(format!(
            "snapshot {id} is a member of group snapshot {}; delete the group snapshot instead",
            crate::group_controller::group_id_of(&d.node, &s.group)
        ))),
        _ => Ok(()),
    }
}

pub async fn list(
    d: &Driver,
    r: ListSnapshotsRequest,
) -> Result<Response<ListSnapshotsResponse>, Status> {
    let all = if !r.snapshot_id.is_empty() {
        // An unknown id is an empty list, not an error (CSI).
        match SnapshotId::parse(&r.snapshot_id).filter(|id| id.volume.node == d.node) {
            None => vec![],
            Some(id) => match catalog::entry(&d.agent, &id.volume.volume).await? {
                None => vec![],
                Some(e) => all_snapshots(d, std::slice::from_ref(&e))
                    .into_iter()
                    .filter(|s| s.snapshot_id == r.snapshot_id)
                    .collect(),
            },
        }
    } else if !r.source_volume_id.is_empty() {
        match VolumeId::parse(&r.source_volume_id).filter(|v| v.node == d.node) {
            None => vec![],
            Some(v) => match catalog::entry(&d.agent, &v.volume).await? {
                None => vec![],
                Some(e) => all_snapshots(d, std::slice::from_ref(&e)),
            },
        }
    } else {
        all_snapshots(d, &catalog::entries(&d.agent).await?)
    };
    let (entries, next_token) = page(all, r.max_entries, &r.starting_token)?;
    Ok(Response::new(ListSnapshotsResponse {
        entries: entries
            .into_iter()
            .map(|s| list_snapshots_response::Entry { snapshot: Some(s) })
            .collect(),
        next_token,
    }))
}

pub async fn get(
    d: &Driver,
    r: GetSnapshotRequest,
) -> Result<Response<GetSnapshotResponse>, Status> {
    if r.snapshot_id.is_empty() {
        return Err(invalid("snapshot_id is required"));
    }
    let found = list(
        d,
        ListSnapshotsRequest {
            snapshot_id: r.snapshot_id.clone(),
            ..Default::default()
        },
    )
    .await?
    .into_inner()
    .entries
    .pop()
    .and_then(|e| e.snapshot);
    match found {
        Some(s) => Ok(Response::new(GetSnapshotResponse { snapshot: Some(s) })),
        None => Err(Status::not_found(format!(
            "snapshot {:?} does not exist",
            r.snapshot_id
        ))),
    }
}

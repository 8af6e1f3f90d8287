//! CSI GroupController: volume group snapshots over the agent's snapshot groups
//! (`SnapshotService.CreateSnapshotGroup` and friends), which cut every member volume at one
//! instant. A group's members are ordinary CSI snapshots of this driver (ListSnapshots and
//! GetSnapshot show them, with their `group_snapshot_id`; CreateVolume restores from them) that
//! cannot be deleted on their own: DeleteSnapshot of a member is INVALID_ARGUMENT, as the spec
//! says; DeleteVolumeGroupSnapshot deletes them all.

mod ids;

pub use ids::GroupSnapshotId;

use crate::controller::local_id;
use crate::csi::group_controller_server::GroupController;
use crate::csi::group_controller_service_capability::{rpc, Rpc, Type};
use crate::csi::*;
use crate::ids::{AgentSnapshotName, NodeName, SnapshotId, VolumeId};
use crate::status::{check_name, from_agent, invalid};
use crate::{catalog, retire, Driver};
use multisnap_proto::v1 as pb;
use std::collections::BTreeSet;
use tonic::{Request, Response, Status};

pub struct GroupControllerService(pub Driver);

/// The `group_snapshot_id` of a snapshot the agent says belongs to `group` ("" for none).
pub fn group_id_of(node: &NodeName, group: &str) -> String {
    match AgentSnapshotName::parse(group) {
        Some(group) => GroupSnapshotId {
            node: node.clone(),
            group,
        }
        .to_string(),
        None => String::new(),
    }
}

/// The CSI message of an agent group, its members as CSI snapshots.
async fn csi_group(
    d: &Driver,
    id: &GroupSnapshotId,
    g: &pb::SnapshotGroup,
) -> Result<VolumeGroupSnapshot, Status> {
    let mut snapshots = Vec::with_capacity(g.members.len());
    for m in &g.members {
        let volume = VolumeId {
            node: d.node.clone(),
            volume: crate::ids::AgentVolumeName::parse(&m.volume).ok_or_else(|| {
                Status::internal(format!("group {id} has a foreign member {}", m.volume))
            })?,
        };
        let size = crate::controller::restore_size(d, &volume, m).await?;
        snapshots.push(crate::controller::csi_snapshot(&volume, &id.group, m, size));
    }
    let ready_to_use = snapshots.iter().all(|s| s.ready_to_use);
    Ok(VolumeGroupSnapshot {
        group_snapshot_id: id.to_string(),
        snapshots,
        creation_time: g.created_at,
        ready_to_use,
    })
}

/// The agent volume of a CSI source volume id, which must be a live volume of this node.
async fn member_volume(d: &Driver, source: &str) -> Result<VolumeId, Status> {
    let not_found = || Status::not_found(format!("source volume {source} does not exist"));
    let Some(id) = VolumeId::parse(source) else {
        return Err(not_found());
    };
    if id.node != d.node {
        // Each node's agent cuts only its own volumes: there is no one instant across nodes.
        return Err(Status::failed_precondition(format!(
            "volume {source} lives on node {}, not {}: a group snapshot takes volumes of one node",
            id.node, d.node
        )));
    }
    match catalog::entry(&d.agent, &id.volume).await? {
        Some(e) if !e.retired() => Ok(local_id(d, source)?),
        _ => Err(not_found()),
    }
}

async fn create(
    d: &Driver,
    r: CreateVolumeGroupSnapshotRequest,
) -> Result<Response<CreateVolumeGroupSnapshotResponse>, Status> {
    check_name(&r.name)?;
    if r.source_volume_ids.is_empty() {
        return Err(invalid("source_volume_ids is required"));
    }
    if let Some(k) = r
        .parameters
        .keys()
        .find(|k| !k.starts_with(crate::controller::KUBERNETES_PREFIX))
    {
        return Err(invalid(format!(
            "unknown parameter {k:?}: multisnap group snapshots take no parameters"
        )));
    }
    let mut volumes = Vec::with_capacity(r.source_volume_ids.len());
    for source in &r.source_volume_ids {
        volumes.push(member_volume(d, source).await?);
    }
    let id = GroupSnapshotId {
        node: d.node.clone(),
        group: GroupSnapshotId::agent_name(&r.name),
    };
    let mut keys = vec![format!("group snapshot name {:?}", r.name)];
    keys.extend(volumes.iter().map(|v| format!("volume {v}")));
    let _claim = d.inflight.claim(&keys)?;
    let g = d
        .agent
        .snapshots()
        .create_snapshot_group(pb::CreateSnapshotGroupRequest {
            name: id.group.to_string(),
            volumes: volumes.iter().map(|v| v.volume.to_string()).collect(),
        })
        .await
        .map_err(|s| from_agent(&format!("creating group snapshot {:?}", r.name), s))?
        .into_inner();
    tracing::info!(csi_name = %r.name, group = %id, members = g.members.len(), "group snapshot created");
    Ok(Response::new(CreateVolumeGroupSnapshotResponse {
        group_snapshot: Some(csi_group(d, &id, &g).await?),
    }))
}

/// The agent's group behind `raw` (None when the agent has none), after the checks Get and
/// Delete share: the id is required, names this node, and `snapshot_ids`, when given, are the
/// group's members exactly (INVALID_ARGUMENT otherwise, as the spec says).
async fn lookup(
    d: &Driver,
    raw: &str,
    snapshot_ids: &[String],
) -> Result<Option<(GroupSnapshotId, pb::SnapshotGroup)>, Status> {
    if raw.is_empty() {
        return Err(invalid("group_snapshot_id is required"));
    }
    let Some(id) = GroupSnapshotId::parse(raw) else {
        return Ok(None);
    };
    if id.node != d.node {
        return Err(Status::failed_precondition(format!(
            "group snapshot {id} lives on node {}; the driver on that node serves it",
            id.node
        )));
    }
    let reply = d
        .agent
        .snapshots()
        .get_snapshot_group(pb::GetSnapshotGroupRequest {
            name: id.group.to_string(),
        })
        .await
        .map(|r| r.into_inner());
    let Some(g) = crate::agent::absent_as_none(reply)
        .map_err(|s| from_agent(&format!("looking up group snapshot {id}"), s))?
    else {
        return Ok(None);
    };
    if !snapshot_ids.is_empty() {
        let given: BTreeSet<&str> = snapshot_ids.iter().map(String::as_str).collect();
        let members: Vec<String> = member_ids(d, &id, &g);
        let actual: BTreeSet<&str> = members.iter().map(String::as_str).collect();
        if given != actual {
            return Err(invalid(format!(
                "snapshot_ids do not match the members of group snapshot {id}"
            )));
        }
    }
    Ok(Some((id, g)))
}

fn member_ids(d: &Driver, id: &GroupSnapshotId, g: &pb::SnapshotGroup) -> Vec<String> {
    g.members
        .iter()
        .filter_map(|m| crate::ids::AgentVolumeName::parse(&m.volume))
        .map(|volume| {
            SnapshotId {
                volume: VolumeId {
                    node: d.node.clone(),
                    volume,
                },
                snapshot: id.group.clone(),
            }
            .to_string()
        })
        .collect()
}

async fn get(
    d: &Driver,
    r: GetVolumeGroupSnapshotRequest,
) -> Result<Response<GetVolumeGroupSnapshotResponse>, Status> {
    match lookup(d, &r.group_snapshot_id, &r.snapshot_ids).await? {
        Some((id, g)) => Ok(Response::new(GetVolumeGroupSnapshotResponse {
            group_snapshot: Some(csi_group(d, &id, &g).await?),
        })),
        None => Err(Status::not_found(format!(
            "group snapshot {:?} does not exist",
            r.group_snapshot_id
        ))),
    }
}

async fn delete(
    d: &Driver,
    r: DeleteVolumeGroupSnapshotRequest,
) -> Result<Response<DeleteVolumeGroupSnapshotResponse>, Status> {
    // An unknown or already deleted group is deleted: OK.
    let Some((id, g)) = lookup(d, &r.group_snapshot_id, &r.snapshot_ids).await? else {
        return Ok(Response::new(DeleteVolumeGroupSnapshotResponse {}));
    };
    let mut keys = vec![format!("group snapshot {id}")];
    keys.extend(
        g.members
            .iter()
            .map(|m| format!("volume {}/{}", d.node, m.volume)),
    );
    let _claim = d.inflight.claim(&keys)?;
    let reply = d
        .agent
        .snapshots()
        .delete_snapshot_group(pb::DeleteSnapshotGroupRequest {
            name: id.group.to_string(),
        })
        .await;
    crate::agent::absent_as_none(reply)
        .map_err(|s| from_agent(&format!("deleting group snapshot {id}"), s))?;
    // A member's volume deleted for Kubernetes meanwhile goes with its last snapshot.
    for m in &g.members {
        if let Some(volume) = crate::ids::AgentVolumeName::parse(&m.volume) {
            retire::reap_if_unused(&d.agent, &volume).await?;
        }
    }
    tracing::info!(group = %id, "group snapshot deleted");
    Ok(Response::new(DeleteVolumeGroupSnapshotResponse {}))
}

#[tonic::async_trait]
impl GroupController for GroupControllerService {
    async fn group_controller_get_capabilities(
        &self,
        _req: Request<GroupControllerGetCapabilitiesRequest>,
    ) -> Result<Response<GroupControllerGetCapabilitiesResponse>, Status> {
        Ok(Response::new(GroupControllerGetCapabilitiesResponse {
            capabilities: vec![GroupControllerServiceCapability {
                r#type: Some(Type::Rpc(Rpc {
                    r#type: rpc::Type::CreateDeleteGetVolumeGroupSnapshot as i32,
                })),
            }],
        }))
    }

    async fn create_volume_group_snapshot(
        &self,
        req: Request<CreateVolumeGroupSnapshotRequest>,
    ) -> Result<Response<CreateVolumeGroupSnapshotResponse>, Status> {
        create(&self.0, req.into_inner()).await
    }

    async fn delete_volume_group_snapshot(
        &self,
        req: Request<DeleteVolumeGroupSnapshotRequest>,
    ) -> Result<Response<DeleteVolumeGroupSnapshotResponse>, Status> {
        delete(&self.0, req.into_inner()).await
    }

    async fn get_volume_group_snapshot(
        &self,
        req: Request<GetVolumeGroupSnapshotRequest>,
    ) -> Result<Response<GetVolumeGroupSnapshotResponse>, Status> {
        get(&self.0, req.into_inner()).await
    }
}

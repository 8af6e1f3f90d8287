//! Snapshots outlive their volume. Kubernetes deletes a PV while VolumeSnapshots of it remain,
//! and those must stay restorable; but a snapshot reads every chunk nobody overwrote from its
//! volume's origin, so the origin must stay until the last snapshot goes.
//!
//! DeleteVolume of a volume with snapshots therefore retires it: it makes one more snapshot on
//! the agent, named [`RETIRED_MARKER`], and from then on the driver treats the volume as gone
//! (ListVolumes, ValidateVolumeCapabilities, expansion and new snapshots do not see it; a new
//! volume of the same CSI name gets the next agent name). The marker is an ordinary snapshot,
//! so the agent makes it durable before the call returns and nothing else records the state:
//! a crash before it leaves the volume live (Kubernetes retries the delete), a crash after it
//! leaves it retired. Nobody writes to a retired origin, so the marker copies nothing.
//!
//! When a retired volume's last CSI snapshot is deleted, the volume is deleted on the agent.
//! That step is repeated by every DeleteSnapshot of the volume (a retried one too) and by a
//! sweep when the driver starts, so a crash between the two deletions leaves no orphan.

use crate::agent::{absent_as_none, Agent};
use crate::catalog::{self, Entry, RETIRED_MARKER};
use crate::ids::AgentVolumeName;
use crate::status::from_agent;
use multisnap_proto::v1 as pb;
use tonic::Status;

/// Deletes a volume for Kubernetes: at once on the agent when no CSI snapshot needs it,
/// otherwise by retiring it. Repeating it is harmless.
pub async fn delete_or_retire(agent: &Agent, e: &Entry) -> Result<(), Status> {
    if e.csi_snapshots().next().is_none() {
        return delete_on_agent(agent, &e.name).await;
    }
    if e.retired() {
        return Ok(());
    }
    agent
        .snapshots()
        .create_snapshot(pb::CreateSnapshotRequest {
            volume: e.name.to_string(),
            name: RETIRED_MARKER.to_string(),
            writable: false,
        })
        .await
        .map_err(|s| from_agent(&format!("retiring volume {}", e.name), s))?;
    tracing::info!(volume = %e.name, "volume retired: deleted for Kubernetes, kept for its snapshots");
    Ok(())
}

/// Deletes a retired volume once no CSI snapshot of it remains.
pub async fn reap_if_unused(agent: &Agent, name: &AgentVolumeName) -> Result<(), Status> {
    match catalog::entry(agent, name).await? {
        Some(e) if e.retired() && e.csi_snapshots().next().is_none() => {
            delete_on_agent(agent, name).await
        }
        _ => Ok(()),
    }
}

/// Reaps every retired volume without CSI snapshots (run at start: finishes deletions a crash
/// interrupted). Returns how many were deleted.
pub async fn sweep(agent: &Agent) -> Result<usize, Status> {
    let mut reaped = 0;
    for e in catalog::entries(agent).await? {
        if e.retired() && e.csi_snapshots().next().is_none() {
            delete_on_agent(agent, &e.name).await?;
            reaped += 1;
        }
    }
    Ok(reaped)
}

async fn delete_on_agent(agent: &Agent, name: &AgentVolumeName) -> Result<(), Status> {
    // force: the volume may still hold the marker, or snapshots that were deleted and are
    // being reclaimed; none of them is a CSI snapshot anymore.
    let reply = agent
        .volumes()
        .delete_volume(pb::DeleteVolumeRequest {
            name: name.to_string(),
            force: true,
        })
        .await;
    absent_as_none(reply).map_err(|s| from_agent(&format!("deleting volume {name}"), s))?;
    tracing::info!(volume = %name, "volume deleted on the agent");
    Ok(())
}

//! The driver's view of the agent: the volumes it made (agent names `csi-…`), each with its
//! snapshots. Everything the driver knows lives here, in the agent's own records, so the
//! driver keeps no state of its own and a restarted driver sees what the old one did.

use crate::agent::Agent;
use crate::ids::{AgentSnapshotName, AgentVolumeName};
use crate::status::from_agent;
use multisnap_proto::v1 as pb;
use tonic::Status;

/// The snapshot that marks a volume as deleted for Kubernetes while snapshots of it remain
/// (see [`crate::retire`]). Its name cannot collide with a CSI snapshot's (those start `csi-`).
pub const RETIRED_MARKER: &str = "multisnap-csi.retired";

/// Agent volume labels the driver sets at creation, so a repeated CreateVolume can be
/// compared with what the volume was made with (the agent keeps no CSI parameters itself).
/// The filesystem type asked for, absent for a raw block volume or one left to the default.
pub const FS_TYPE_LABEL: &str = "csi.multisnap.dev/fs-type";
/// The content source, as `snapshot <id>` or `volume <id>`; absent for an empty volume.
pub const CONTENT_SOURCE_LABEL: &str = "csi.multisnap.dev/content-source";

pub struct Entry {
    pub name: AgentVolumeName,
    pub volume: pb::Volume,
    /// In creation order, as the agent lists them.
    pub snapshots: Vec<pb::Snapshot>,
}

impl Entry {
    /// Deleted for Kubernetes: hidden from every volume call, kept for its snapshots.
    pub fn retired(&self) -> bool {
        self.snapshots.iter().any(|s| s.name == RETIRED_MARKER)
    }

    /// The CSI snapshots of this volume that exist for Kubernetes: ones this driver made and
    /// that are not being deleted (a deleted snapshot's space is reclaimed in the background).
    pub fn csi_snapshots(&self) -> impl Iterator<Item = (AgentSnapshotName, &pb::Snapshot)> {
        self.snapshots.iter().filter_map(|s| {
            let name = AgentSnapshotName::parse(&s.name)?;
            (s.state != pb::SnapshotState::Deleting as i32).then_some((name, s))
        })
    }
}

async fn entry_for(
    agent: &Agent,
    name: AgentVolumeName,
    volume: pb::Volume,
) -> Result<Entry, Status> {
    let snapshots = agent
        .snapshots_of(name.as_str())
        .await
        .map_err(|s| from_agent(&format!("listing snapshots of {name}"), s))?;
    Ok(Entry {
        name,
        volume,
        snapshots,
    })
}

/// One volume by agent name; None when the agent has none.
pub async fn entry(agent: &Agent, name: &AgentVolumeName) -> Result<Option<Entry>, Status> {
    let volume = agent
        .volume(name.as_str())
        .await
        .map_err(|s| from_agent(&format!("looking up volume {name}"), s))?;
    match volume {
        Some(v) => Ok(Some(entry_for(agent, name.clone(), v).await?)),
        None => Ok(None),
    }
}

/// Every volume this driver made, retired ones included, in agent-name order.
pub async fn entries(agent: &Agent) -> Result<Vec<Entry>, Status> {
    entries_where(agent, |_| true).await
}

async fn entries_where(
    agent: &Agent,
    keep: impl Fn(&AgentVolumeName) -> bool,
) -> Result<Vec<Entry>, Status> {
    let volumes = agent
        .all_volumes()
        .await
        .map_err(|s| from_agent("listing volumes", s))?;
    let mut out = Vec::new();
    for v in volumes {
        let Some(name) = AgentVolumeName::parse(&v.name).filter(|n| keep(n)) else {
            continue;
        };
        out.push(entry_for(agent, name, v).await?);
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// The live volume of a CSI name, if any, and the agent name a new one of that name takes.
pub async fn by_csi_name(
    agent: &Agent,
    csi_name: &str,
) -> Result<(Option<Entry>, AgentVolumeName), Status> {
    let generations = entries_where(agent, |n| n.is_for(csi_name)).await?;
    let taken: Vec<&str> = generations.iter().map(|e| e.name.as_str()).collect();
    let free = (0..)
        .map(|g| AgentVolumeName::for_csi_name(csi_name, g))
        .find(|n| !taken.contains(&n.as_str()))
        .expect("fewer generations than u32 values");
    let live = generations.into_iter().find(|e| !e.retired());
    Ok((live, free))
}

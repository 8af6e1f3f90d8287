//! Restore on another node: a CreateVolume whose source snapshot lives on node A, asked of
//! this node's driver. The snapshot is pulled from A's agent into a replica volume here (one
//! per source volume, see [`ReplicaVolumeName`]) with the agent's delta machinery, and the new
//! volume is then made from the replica's snapshot like any local restore. See docs/CSI.md,
//! "Restore on another node".
//!
//! The pull runs as a task of its own: the CreateVolume that starts it, and every retry while
//! it runs, answers ABORTED with its progress (the external-provisioner retries); a retry after
//! it ends finds the snapshot here and restores it. What the pull has received is the
//! replica's resumable apply, kept by the agent, so a driver restart or a cut connection
//! costs only the bytes not yet received.

mod mirrored;
mod transfer;

use crate::ids::{ReplicaVolumeName, SnapshotId};
use crate::status::from_agent;
use crate::Driver;
use multisnap_proto::v1 as pb;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tonic::{Code, Status};

/// The agent volume label of a replica: the source volume id (`<node>/<agent volume>`).
pub const REPLICA_OF_LABEL: &str = "csi.multisnap.dev/replica-of";

/// How far a running pull is, from the source's ExportDelta progress.
#[derive(Clone, Debug, Default)]
struct Progress {
    chunks_done: u64,
    chunks_total: u64,
    stream_bytes: u64,
    resumed: bool,
}

#[derive(Clone, Debug)]
enum Pull {
    Running {
        snapshot: SnapshotId,
        progress: Progress,
        started: Instant,
    },
    /// How the last pull of `snapshot` failed: reported once, to the next CreateVolume from
    /// it; the one after that starts over (resuming what the replica kept).
    Failed {
        snapshot: SnapshotId,
        status: Status,
    },
}

/// The pulls of this driver, by replica volume; in memory only (a restarted driver finds the
/// replica's apply in the agent and resumes it).
#[derive(Clone, Default)]
pub struct Pulls {
    by_replica: Arc<Mutex<HashMap<ReplicaVolumeName, Pull>>>,
}

impl Pulls {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ReplicaVolumeName, Pull>> {
        self.by_replica.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn update(&self, replica: &ReplicaVolumeName, f: impl FnOnce(&mut Progress)) {
        if let Some(Pull::Running { progress, .. }) = self.lock().get_mut(replica) {
            f(progress);
        }
    }

    fn end(&self, replica: &ReplicaVolumeName, failure: Option<(SnapshotId, Status)>) {
        let mut map = self.lock();
        match failure {
            Some((snapshot, status)) => {
                map.insert(replica.clone(), Pull::Failed { snapshot, status })
            }
            None => map.remove(replica),
        };
    }
}

/// The ABORTED answer while `snapshot` is being pulled.
fn in_progress(id: &SnapshotId, running: &SnapshotId, p: &Progress, started: Instant) -> Status {
    let secs = started.elapsed().as_secs_f64();
    let what = if running == id {
        format!("snapshot {id} is being copied from node {}", id.volume.node)
    } else {
        format!(
            "snapshot {running} of the same source volume is being copied from node {} first",
            id.volume.node
        )
    };
    let pct = (p.chunks_done * 100)
        .checked_div(p.chunks_total)
        .unwrap_or(0);
    Status::aborted(format!(
        "{what}{}: {} of {} chunks ({pct}%), {} stream bytes in {secs:.0} s; retry",
        if p.resumed { " (resumed)" } else { "" },
        p.chunks_done,
        p.chunks_total,
        p.stream_bytes,
    ))
}

/// The local source for restoring `id`, a snapshot of another node, and its size: the
/// replica's copy once it is here. Until then ABORTED with the progress of the pull, which
/// this call starts if none runs; the failure of the last pull is answered once.
pub async fn local_source(d: &Driver, id: &SnapshotId) -> Result<(pb::VolumeSource, u64), Status> {
    let Some(peers) = d.peers.clone() else {
        return Err(Status::resource_exhausted(format!(
            "the source snapshot lives on node {}; a volume is restored on the node that holds its source (this is {}; --peer-agent-endpoint is not set)",
            id.volume.node, d.node
        )));
    };
    let replica = ReplicaVolumeName::of(&id.volume);
    {
        let mut map = d.pulls.lock();
        match map.get(&replica) {
            Some(Pull::Running {
                snapshot,
                progress,
                started,
            }) => return Err(in_progress(id, snapshot, progress, *started)),
            Some(Pull::Failed { snapshot, status }) if snapshot == id => {
                let status = status.clone();
                map.remove(&replica);
                return Err(status);
            }
            _ => {}
        }
    }
    if let Some(found) = held(d, &replica, id).await? {
        return Ok(found);
    }
    if let Some(found) = mirrored::find(d, &peers, id).await? {
        return Ok(found);
    }
    let mut map = d.pulls.lock();
    // Another call may have started it meanwhile: one pull per replica.
    if let Some(Pull::Running {
        snapshot,
        progress,
        started,
    }) = map.get(&replica)
    {
        return Err(in_progress(id, snapshot, progress, *started));
    }
    let started = Instant::now();
    map.insert(
        replica.clone(),
        Pull::Running {
            snapshot: id.clone(),
            progress: Progress::default(),
            started,
        },
    );
    drop(map);
    tokio::spawn(transfer::run(d.clone(), peers, id.clone(), replica));
    Err(in_progress(id, id, &Progress::default(), started))
}

/// The replica's ready copy of `id`, if it holds one.
async fn held(
    d: &Driver,
    replica: &ReplicaVolumeName,
    id: &SnapshotId,
) -> Result<Option<(pb::VolumeSource, u64)>, Status> {
    let snap = d
        .agent
        .snapshot(replica.as_str(), id.snapshot.as_str())
        .await
        .map_err(|s| from_agent(&format!("looking up {id} in replica {replica}"), s))?;
    let Some(snap) = snap.filter(|s| s.state == pb::SnapshotState::Ready as i32) else {
        return Ok(None);
    };
    // A snapshot records its size; one from a store that did not is the replica's.
    let size = match snap.size_bytes {
        0 => d
            .agent
            .volume(replica.as_str())
            .await
            .map_err(|s| from_agent(&format!("looking up replica {replica}"), s))?
            .map_or(0, |v| v.size_bytes),
        n => n,
    };
    let source = pb::VolumeSource {
        volume: replica.to_string(),
        snapshot: snap.name,
    };
    Ok(Some((source, size)))
}

/// After a restore from a replica: its snapshots other than the newest go, unless a volume
/// still hydrating from one needs it (the agent refuses those with FAILED_PRECONDITION; a
/// later restore from the same source tries again). The newest stays as the base of the next,
/// incremental, pull.
pub async fn prune(d: &Driver, replica: &str) {
    let snaps = match d.agent.snapshots_of(replica).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(%replica, error = %e, "replica snapshots not pruned");
            return;
        }
    };
    let ready: Vec<&pb::Snapshot> = snaps
        .iter()
        .filter(|s| s.state == pb::SnapshotState::Ready as i32)
        .collect();
    let Some(newest) = ready.iter().map(|s| s.source_snapshot_id).max() else {
        return;
    };
    for s in ready.iter().filter(|s| s.source_snapshot_id < newest) {
        let r = d
            .agent
            .snapshots()
            .delete_snapshot(pb::DeleteSnapshotRequest {
                volume: replica.to_string(),
                name: s.name.clone(),
            })
            .await;
        match r {
            Ok(_) => tracing::info!(%replica, snapshot = %s.name, "older replica snapshot deleted"),
            Err(e) if e.code() == Code::FailedPrecondition => {
                tracing::debug!(%replica, snapshot = %s.name, reason = %e.message(), "replica snapshot kept: still needed")
            }
            Err(e) => {
                tracing::warn!(%replica, snapshot = %s.name, error = %e, "replica snapshot not deleted")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_says_how_far_and_which_snapshot() {
        let id =
            SnapshotId::parse("node-a/csi-000000000000000000000000@csi-111111111111111111111111")
                .unwrap();
        let other =
            SnapshotId::parse("node-a/csi-000000000000000000000000@csi-222222222222222222222222")
                .unwrap();
        let p = Progress {
            chunks_done: 25,
            chunks_total: 100,
            stream_bytes: 1 << 20,
            resumed: true,
        };
        let s = in_progress(&id, &id, &p, Instant::now());
        assert_eq!(s.code(), Code::Aborted);
        assert!(
            s.message().contains("25 of 100 chunks (25%)"),
            "{}",
            s.message()
        );
        assert!(s.message().contains("(resumed)"));
        let s = in_progress(&id, &other, &Progress::default(), Instant::now());
        assert!(s.message().contains(&other.to_string()), "{}", s.message());
        assert!(s.message().contains("0 of 0 chunks (0%)"));
    }

    #[test]
    fn a_failure_is_reported_once_and_a_success_leaves_nothing() {
        let pulls = Pulls::default();
        let r = ReplicaVolumeName::of(
            &crate::ids::VolumeId::parse("node-a/csi-000000000000000000000000").unwrap(),
        );
        let id =
            SnapshotId::parse("node-a/csi-000000000000000000000000@csi-111111111111111111111111")
                .unwrap();
        pulls.lock().insert(
            r.clone(),
            Pull::Running {
                snapshot: id.clone(),
                progress: Progress::default(),
                started: Instant::now(),
            },
        );
        pulls.update(&r, |p| p.chunks_done = 3);
        assert!(
            matches!(pulls.lock().get(&r), Some(Pull::Running { progress, .. }) if progress.chunks_done == 3)
        );
        pulls.end(&r, Some((id.clone(), Status::data_loss("bad"))));
        assert!(matches!(pulls.lock().get(&r), Some(Pull::Failed { .. })));
        pulls.end(&r, None);
        assert!(pulls.lock().is_empty());
    }
}

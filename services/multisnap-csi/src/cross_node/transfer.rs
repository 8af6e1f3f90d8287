//! One pull: the source node's ExportDelta relayed into this node's ApplyDelta on the
//! replica volume, from the newest snapshot both hold (or a full stream), continuing the
//! replica's interrupted apply of the same snapshot when there is one.

use super::{Progress, Pulls, REPLICA_OF_LABEL};
use crate::ids::{ReplicaVolumeName, SnapshotId};
use crate::peer::Peers;
use crate::status::from_agent;
use crate::Driver;
use multisnap_proto::v1 as pb;
use pb::delta_service_client::DeltaServiceClient;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// ExportDelta sends messages of about 1 MiB; the limit leaves room.
const MAX_MESSAGE: usize = 32 << 20;

/// What a finished pull sent.
struct Sent {
    stream_bytes: u64,
    base: Option<String>,
    resumed: bool,
}

/// What the replica is asked to do.
#[derive(Debug, PartialEq, Eq)]
struct Plan {
    base: Option<String>,
    resume_token: Vec<u8>,
}

/// The pull task: runs to its end whether or not a caller still waits, and leaves its outcome
/// in `d.pulls` for the next CreateVolume.
pub(super) async fn run(d: Driver, peers: Arc<Peers>, id: SnapshotId, replica: ReplicaVolumeName) {
    let started = Instant::now();
    match pull(&d, &peers, &id, &replica).await {
        Ok(sent) => {
            let secs = started.elapsed().as_secs_f64();
            let mib_per_s = sent.stream_bytes as f64 / (1 << 20) as f64 / secs.max(1e-3);
            tracing::info!(
                snapshot = %id, %replica, base = ?sent.base, resumed = sent.resumed,
                stream_bytes = sent.stream_bytes, secs = format!("{secs:.2}"),
                mib_per_s = format!("{mib_per_s:.1}"), "snapshot pulled from node {}", id.volume.node
            );
            d.pulls.end(&replica, None);
        }
        Err(status) => {
            tracing::warn!(snapshot = %id, %replica, code = ?status.code(), error = %status.message(), "pull failed");
            d.pulls.end(&replica, Some((id, status)));
        }
    }
}

/// A failure of a call to the source node's agent.
fn peer(what: String) -> impl Fn(Status) -> Status {
    move |s| {
        let code = match s.code() {
            Code::NotFound => Code::NotFound,
            // Down, unreachable, or (mutual TLS) the handshake refused: all retried.
            Code::Unavailable | Code::Unknown | Code::Cancelled => Code::Unavailable,
            c => c,
        };
        Status::new(code, format!("{what}: source agent: {}", s.message()))
    }
}

async fn pull(
    d: &Driver,
    peers: &Peers,
    id: &SnapshotId,
    replica: &ReplicaVolumeName,
) -> Result<Sent, Status> {
    let node = &id.volume.node;
    let ch = peers
        .connect(node)
        .await
        .map_err(|e| Status::unavailable(format!("node {node}'s agent: {e}")))?;
    let (vol, snap) = (id.volume.volume.to_string(), id.snapshot.to_string());
    let source_volume = pb::volume_service_client::VolumeServiceClient::new(ch.clone())
        .get_volume(pb::GetVolumeRequest { name: vol.clone() })
        .await
        .map_err(peer(format!("looking up the volume of {id}")))?
        .into_inner();
    let source_snaps = pb::snapshot_service_client::SnapshotServiceClient::new(ch.clone())
        .list_snapshots(pb::ListSnapshotsRequest {
            volume: vol.clone(),
        })
        .await
        .map_err(peer(format!("listing the snapshots of {}", id.volume)))?
        .into_inner()
        .snapshots;
    let ready = |s: &&pb::Snapshot| s.state == pb::SnapshotState::Ready as i32;
    let target = source_snaps
        .iter()
        .filter(ready)
        .find(|s| s.name == snap)
        .ok_or_else(|| Status::not_found(format!("source snapshot {id} does not exist")))?;
    ensure_replica(d, replica, &source_volume, id).await?;
    let plan = plan(d, replica, target, &source_snaps).await?;
    let resumed = !plan.resume_token.is_empty();
    tracing::info!(snapshot = %id, %replica, base = ?plan.base, resumed, endpoint = %peers.endpoint(node), "pulling snapshot");
    let request = pb::ExportDeltaRequest {
        volume: vol,
        base_snapshot: plan.base.clone().unwrap_or_default(),
        target_snapshot: snap,
        resume_token: plan.resume_token.clone(),
        compression: peers.compression as i32,
        compression_level: 0,
        bandwidth_limit_bytes_per_sec: peers.bandwidth_limit,
    };
    let stream_bytes = relay(d, ch, request, replica, resumed, id).await?;
    Ok(Sent {
        stream_bytes,
        base: plan.base,
        resumed,
    })
}

/// Makes the replica volume with the source volume's geometry unless it exists; an existing
/// one must have it (a delta addresses chunks by index).
async fn ensure_replica(
    d: &Driver,
    replica: &ReplicaVolumeName,
    source: &pb::Volume,
    id: &SnapshotId,
) -> Result<(), Status> {
    let what = |w: &str| format!("{w} replica volume {replica} of {}", id.volume);
    let existing = d
        .agent
        .volume(replica.as_str())
        .await
        .map_err(|s| from_agent(&what("looking up"), s))?;
    let v = match existing {
        Some(v) => v,
        None => {
            let labels = [(REPLICA_OF_LABEL.to_string(), id.volume.to_string())].into();
            d.agent
                .volumes()
                .create_volume(pb::CreateVolumeRequest {
                    name: replica.to_string(),
                    size_bytes: source.size_bytes,
                    chunk_size_bytes: source.chunk_size_bytes,
                    labels,
                    ..Default::default()
                })
                .await
                .map_err(|s| from_agent(&what("creating"), s))?
                .into_inner()
        }
    };
    if v.size_bytes != source.size_bytes || v.chunk_size_bytes != source.chunk_size_bytes {
        return Err(Status::failed_precondition(format!(
            "replica volume {replica} is {} bytes in chunks of {}, source volume {} {} bytes in chunks of {} (resized since the last restore here?): delete the replica volume to start over",
            v.size_bytes, v.chunk_size_bytes, id.volume, source.size_bytes, source.chunk_size_bytes
        )));
    }
    Ok(())
}

/// What to do with the replica's apply state, decided without a call.
#[derive(Debug, PartialEq, Eq)]
enum Start {
    /// Continue the interrupted apply of the same snapshot from its token and base.
    Resume(Plan),
    /// Past its commit point: it completes by itself; ask again later.
    Wait(String),
    /// An apply of something else (or one that cannot be continued) to drop first.
    DropThenFresh,
    Fresh,
}

fn start(state: &pb::ApplyState, target: &pb::Snapshot) -> Start {
    if !state.in_progress {
        return Start::Fresh;
    }
    let same = state.snapshot_name == target.name && state.source_snapshot_id == target.id;
    if same && state.resumable && !state.committing && !state.resume_token.is_empty() {
        return Start::Resume(Plan {
            base: (!state.base_snapshot.is_empty()).then(|| state.base_snapshot.clone()),
            resume_token: state.resume_token.clone(),
        });
    }
    if state.committing {
        return Start::Wait(state.snapshot_name.clone());
    }
    Start::DropThenFresh
}

/// The base of a fresh pull: the newest ready replica snapshot older than the target that
/// the source still holds under the same name and id; None for a full stream.
fn base(held: &[pb::Snapshot], source: &[pb::Snapshot], target: &pb::Snapshot) -> Option<String> {
    let ready = pb::SnapshotState::Ready as i32;
    held.iter()
        .filter(|h| h.state == ready && h.source_snapshot_id < target.id)
        .filter(|h| {
            source
                .iter()
                .any(|s| s.state == ready && s.id == h.source_snapshot_id && s.name == h.name)
        })
        .max_by_key(|h| h.source_snapshot_id)
        .map(|h| h.name.clone())
}

/// Continue the replica's apply of this snapshot, or start one from the newest snapshot both
/// sides hold; an apply of anything else is dropped first (the replica belongs to this
/// driver).
async fn plan(
    d: &Driver,
    replica: &ReplicaVolumeName,
    target: &pb::Snapshot,
    source_snaps: &[pb::Snapshot],
) -> Result<Plan, Status> {
    let state = d
        .agent
        .deltas()
        .get_apply_state(pb::GetApplyStateRequest {
            volume: replica.to_string(),
        })
        .await
        .map_err(|s| from_agent(&format!("reading the apply state of {replica}"), s))?
        .into_inner();
    match start(&state, target) {
        Start::Resume(plan) => return Ok(plan),
        Start::Wait(name) => {
            return Err(Status::aborted(format!(
                "replica volume {replica} is completing the copy of snapshot {name}; retry"
            )))
        }
        Start::DropThenFresh => {
            abort_apply(d, replica).await?;
            tracing::info!(%replica, dropped = %state.snapshot_name, "unfinished apply dropped");
        }
        Start::Fresh => {}
    }
    let held = d
        .agent
        .snapshots_of(replica.as_str())
        .await
        .map_err(|s| from_agent(&format!("listing the snapshots of {replica}"), s))?;
    Ok(Plan {
        base: base(&held, source_snaps, target),
        resume_token: Vec::new(),
    })
}

async fn abort_apply(d: &Driver, replica: &ReplicaVolumeName) -> Result<(), Status> {
    d.agent
        .deltas()
        .abort_apply(pb::AbortApplyRequest {
            volume: replica.to_string(),
        })
        .await
        .map_err(|s| from_agent(&format!("dropping the unfinished apply of {replica}"), s))?;
    Ok(())
}

/// Streams the export into the replica's ApplyDelta; the stream bytes relayed.
async fn relay(
    d: &Driver,
    ch: Channel,
    request: pb::ExportDeltaRequest,
    replica: &ReplicaVolumeName,
    resumed: bool,
    id: &SnapshotId,
) -> Result<u64, Status> {
    let node = &id.volume.node;
    let mut export = DeltaServiceClient::new(ch)
        .max_decoding_message_size(MAX_MESSAGE)
        .export_delta(request)
        .await
        .map_err(peer(format!("exporting {id}")))?
        .into_inner();
    let (tx, rx) = mpsc::channel(4);
    let first = pb::ApplyDeltaRequest {
        volume: replica.to_string(),
        resumable: true,
        resume: resumed,
        data: Default::default(),
    };
    tx.send(first).await.ok();
    let (pulls, key): (Pulls, ReplicaVolumeName) = (d.pulls.clone(), replica.clone());
    pulls.update(&key, |p| p.resumed = resumed);
    // The export's end or failure ends the apply stream cleanly, so the replica answers
    // with what it kept and the token to continue from.
    let forward = tokio::spawn(async move {
        let mut bytes = 0u64;
        loop {
            match export.message().await {
                Ok(Some(m)) => {
                    bytes += m.data.len() as u64;
                    if let Some(p) = m.progress {
                        pulls.update(&key, |q| {
                            *q = Progress {
                                chunks_done: p.chunks_done,
                                chunks_total: p.chunks_total,
                                stream_bytes: bytes,
                                resumed,
                            }
                        });
                    }
                    let msg = pb::ApplyDeltaRequest {
                        data: m.data,
                        ..Default::default()
                    };
                    if tx.send(msg).await.is_err() {
                        return (bytes, None);
                    }
                }
                Ok(None) => return (bytes, None),
                Err(s) => return (bytes, Some(s)),
            }
        }
    });
    let answer = d
        .agent
        .stream_deltas()
        .apply_delta(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await;
    let (bytes, export_error) = forward
        .await
        .map_err(|e| Status::internal(format!("relay task failed: {e}")))?;
    match answer {
        Ok(r) if r.get_ref().complete => Ok(bytes),
        Ok(r) => {
            let why = match &export_error {
                Some(s)
                    if !matches!(
                        s.code(),
                        Code::Unavailable | Code::Unknown | Code::Cancelled
                    ) =>
                {
                    return Err(peer(format!("exporting {id}"))(s.clone()));
                }
                Some(s) => s.message().to_string(),
                None => "the stream ended early".to_string(),
            };
            Err(Status::unavailable(format!(
                "the copy of {id} from node {node} stopped after {bytes} stream bytes ({why}); this node kept {} bytes of it and the next retry continues from there",
                r.get_ref().bytes_applied
            )))
        }
        Err(s) if matches!(s.code(), Code::DataLoss | Code::InvalidArgument) => {
            discard(d, replica).await;
            Err(Status::new(
                s.code(),
                format!(
                    "the copy of {id} from node {node} was refused by this node's agent and discarded (nothing of it is kept): {}",
                    s.message()
                ),
            ))
        }
        Err(s) => Err(from_agent(&format!("applying {id} to {replica}"), s)),
    }
}

/// After a corrupt stream: the partial apply goes, and the replica too if it holds nothing
/// else, so no half-copied snapshot stays behind.
async fn discard(d: &Driver, replica: &ReplicaVolumeName) {
    if let Err(e) = abort_apply(d, replica).await {
        // A failed apply that was not resumable is already gone.
        tracing::debug!(%replica, error = %e, "no apply to abort");
    }
    match d.agent.snapshots_of(replica.as_str()).await {
        Ok(s) if s.is_empty() => {
            let r = d
                .agent
                .volumes()
                .delete_volume(pb::DeleteVolumeRequest {
                    name: replica.to_string(),
                    ..Default::default()
                })
                .await;
            if let Err(e) = r {
                tracing::warn!(%replica, error = %e, "empty replica volume not deleted");
            }
        }
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(%replica, error = %e, "replica not checked after a refused stream")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(name: &str, id: u64, source_id: u64) -> pb::Snapshot {
        pb::Snapshot {
            name: name.into(),
            id,
            source_snapshot_id: source_id,
            state: pb::SnapshotState::Ready as i32,
            ..Default::default()
        }
    }

    #[test]
    fn the_base_is_the_newest_older_snapshot_both_sides_hold() {
        let source = [
            snap("s1", 1, 0),
            snap("s2", 2, 0),
            snap("s4", 4, 0),
            snap("s5", 5, 0),
        ];
        let target = &source[3];
        // Held here: s1 and s2 (s2 newest), s4 under another name (a different snapshot).
        let held = [snap("s1", 7, 1), snap("s2", 8, 2), snap("other", 9, 4)];
        assert_eq!(base(&held, &source, target).as_deref(), Some("s2"));
        // A snapshot the source deleted cannot be a base; nor one not older than the target.
        assert_eq!(base(&held, &source[2..], target), None);
        assert_eq!(base(&held, &source, &source[0]), None);
        let mut deleting = held.clone();
        deleting[1].state = pb::SnapshotState::Deleting as i32;
        assert_eq!(base(&deleting, &source, target).as_deref(), Some("s1"));
        assert_eq!(base(&[], &source, target), None);
    }

    #[test]
    fn an_interrupted_apply_of_the_same_snapshot_is_continued_anything_else_dropped() {
        let target = snap("s5", 5, 0);
        let state =
            |name: &str, id: u64, resumable: bool, committing: bool, token: &[u8]| pb::ApplyState {
                in_progress: true,
                snapshot_name: name.into(),
                source_snapshot_id: id,
                base_snapshot: "s2".into(),
                resumable,
                committing,
                resume_token: token.to_vec(),
                ..Default::default()
            };
        assert_eq!(start(&pb::ApplyState::default(), &target), Start::Fresh);
        assert_eq!(
            start(&state("s5", 5, true, false, b"t"), &target),
            Start::Resume(Plan {
                base: Some("s2".into()),
                resume_token: b"t".to_vec()
            })
        );
        assert_eq!(
            start(&state("s5", 5, true, true, b"t"), &target),
            Start::Wait("s5".into())
        );
        for other in [
            state("s4", 4, true, false, b"t"),
            state("s5", 6, true, false, b"t"),
            state("s5", 5, false, false, b"t"),
            state("s5", 5, true, false, b""),
        ] {
            assert_eq!(start(&other, &target), Start::DropThenFresh, "{other:?}");
        }
    }
}

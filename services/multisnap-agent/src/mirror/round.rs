//! One mirror round: ask the target what it holds, decide (`plan`), and stream the delta from
//! this volume's store straight into the target's `ApplyDelta`, resumable, so a cut transfer
//! continues from the target's token on the next round.

use super::plan::{self, SourceSnap, Step, TargetApply, TargetSnap};
use super::stream::StreamSettings;
use super::target::MirrorTarget;
use super::{replicated_now, FailureReason, MirrorCounters, MirrorKey, SnapshotRef};
use crate::stream_messages::{message_bytes, MessageCutter};
use crate::volumes::Volume;
use multisnap_delta::Bytes;
use multisnap_proto::v1 as pb;
use multisnap_proto::v1::delta_service_client::DeltaServiceClient;
use multisnap_proto::v1::snapshot_service_client::SnapshotServiceClient;
use multisnap_proto::v1::volume_service_client::VolumeServiceClient;
use multisnap_replication::export::{export, ExportPlan};
use multisnap_replication::throttle::Throttled;
use multisnap_replication::ReplicationError;
use std::io::Write;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tonic::transport::Channel;
use tonic::Code;

/// The target's DeltaService accepts messages up to this size.
const MAX_MESSAGE: usize = 32 << 20;

/// How a round that did its job ended.
#[derive(Debug)]
pub enum Done {
    InSync,
    Sent {
        snapshot: SnapshotRef,
        stream_bytes: u64,
        took: Duration,
        resumed: bool,
    },
}

/// How a round failed.
#[derive(Debug)]
pub struct Failure {
    pub reason: FailureReason,
    pub message: String,
}

fn failure(reason: FailureReason) -> impl Fn(String) -> Failure {
    move |message| Failure { reason, message }
}

fn target_call(what: &str) -> impl Fn(tonic::Status) -> Failure + '_ {
    move |s| {
        match s.code() {
        Code::Unavailable => Failure {
            reason: FailureReason::Connect,
            message: format!("{what}: {}", s.message()),
        },
        // With TLS 1.3 a server that refuses the client's certificate says so after the
        // client's side of the handshake is done: the first call is cut (cancelled, or a bare
        // transport error; the agent itself never answers UNKNOWN).
        Code::Cancelled | Code::Unknown => Failure {
            reason: FailureReason::Connect,
            message: format!(
                "{what}: {} (the target closed the connection; with mutual TLS, check that it trusts this agent's client certificate)",
                s.message()
            ),
        },
        _ => Failure {
            reason: FailureReason::Target,
            message: format!("{what}: {}", s.message()),
        },
    }
    }
}

/// Runs one round for the mirror of `generation`.
pub async fn run(v: Arc<Volume>, target: MirrorTarget, generation: u64) -> Result<Done, Failure> {
    let ch = target
        .connect()
        .await
        .map_err(failure(FailureReason::Connect))?;
    let target_volume = ensure_volume(&ch, &v, &target.volume).await?;
    let replica_of_this = target_volume.replica_of == v.store.volume_uuid().to_string();
    let tv = target.volume.clone();
    let listed = SnapshotServiceClient::new(ch.clone())
        .list_snapshots(pb::ListSnapshotsRequest { volume: tv.clone() })
        .await
        .map_err(target_call("cannot list the target's snapshots"))?
        .into_inner()
        .snapshots;
    let ready = pb::SnapshotState::Ready as i32;
    let on_target: Vec<TargetSnap> = listed
        .into_iter()
        .filter(|s| s.state == ready)
        .map(|s| TargetSnap {
            local_id: s.id,
            name: s.name,
            source_id: s.source_snapshot_id,
        })
        .collect();
    let state = delta_client(&ch)
        .get_apply_state(pb::GetApplyStateRequest { volume: tv.clone() })
        .await
        .map_err(target_call("cannot read the target's apply state"))?
        .into_inner();
    let apply = state.in_progress.then_some(TargetApply {
        snapshot: state.snapshot_name,
        source_id: state.source_snapshot_id,
        base: state.base_snapshot,
        resumable: state.resumable,
        committing: state.committing,
        token: state.resume_token,
    });
    let source: Vec<SourceSnap> = super::ready_snapshots(&v)
        .into_iter()
        .map(|s| SourceSnap {
            id: s.id.0,
            name: s.name,
        })
        .collect();
    let recorded = v.mirror.get(generation).and_then(|a| {
        a.saved.replicated.map(|r| SourceSnap {
            id: r.id,
            name: r.name,
        })
    });
    let mut p = plan::plan(
        replica_of_this,
        &source,
        &on_target,
        apply.as_ref(),
        recorded.as_ref(),
    );
    if let Step::Abandon { snapshot } = &p.step {
        abandon(&ch, &tv, snapshot).await?;
        p = plan::plan(
            replica_of_this,
            &source,
            &on_target,
            None,
            recorded.as_ref(),
        );
    }
    if let Some(held) = p.held.as_ref().filter(|h| Some(*h) != recorded.as_ref()) {
        // The target holds a newer snapshot than recorded (the agent stopped between the
        // target's answer and the record): it becomes the base.
        record(
            &v,
            generation,
            &SnapshotRef {
                id: held.id,
                name: held.name.clone(),
            },
        )?;
    }
    match p.step {
        Step::InSync => Ok(Done::InSync),
        Step::Abandon { snapshot } => Err(Failure {
            reason: FailureReason::Busy,
            message: format!("the apply of {snapshot} on the target was abandoned twice"),
        }),
        Step::Wait(why) => Err(Failure {
            reason: FailureReason::Busy,
            message: why,
        }),
        Step::Diverged(why) => Err(Failure {
            reason: FailureReason::Diverged,
            message: why,
        }),
        Step::Send {
            base,
            target: snap,
            resume_token,
        } => {
            let how = Transfer {
                target_volume: &tv,
                counters: v.mirror.counters_for(&MirrorKey::of(&target)),
                stream: target.stream,
                base,
                resume_token,
            };
            send(&ch, &v, how, generation, snap).await
        }
    }
}

/// Aborts the target's apply of `snapshot`, a snapshot this volume no longer has.
async fn abandon(ch: &Channel, target_volume: &str, snapshot: &str) -> Result<(), Failure> {
    delta_client(ch)
        .abort_apply(pb::AbortApplyRequest {
            volume: target_volume.to_string(),
        })
        .await
        .map_err(target_call("cannot abort the target's apply"))?;
    tracing::warn!(target_volume, snapshot, "aborted the target's apply of a snapshot this volume no longer has; sending the newest instead");
    Ok(())
}

fn delta_client(ch: &Channel) -> DeltaServiceClient<Channel> {
    DeltaServiceClient::new(ch.clone())
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE)
}

/// Makes the target volume with this volume's size and chunk size unless it exists; an
/// existing one must have them (a delta addresses chunks by index).
async fn ensure_volume(ch: &Channel, v: &Volume, name: &str) -> Result<pb::Volume, Failure> {
    let mut volumes = VolumeServiceClient::new(ch.clone());
    let size = v.store.origin_size();
    let chunk = v.store.chunk_size();
    let got = match volumes
        .get_volume(pb::GetVolumeRequest { name: name.into() })
        .await
    {
        Ok(r) => r.into_inner(),
        Err(s) if s.code() == Code::NotFound => {
            tracing::info!(volume = %v.name, target_volume = name, size, "creating the mirror's target volume");
            volumes
                .create_volume(pb::CreateVolumeRequest {
                    name: name.into(),
                    size_bytes: size,
                    chunk_size_bytes: chunk,
                    ..Default::default()
                })
                .await
                .map_err(target_call("cannot create the target volume"))?
                .into_inner()
        }
        Err(s) => return Err(target_call("cannot read the target volume")(s)),
    };
    if got.size_bytes != size || got.chunk_size_bytes != chunk {
        return Err(Failure {
            reason: FailureReason::Target,
            message: format!(
                "target volume {name} is {} bytes in chunks of {}, this volume {size} in chunks of {chunk}; resize one of them",
                got.size_bytes, got.chunk_size_bytes
            ),
        });
    }
    Ok(got)
}

/// Records `snap` as the snapshot the target holds.
fn record(v: &Volume, generation: u64, snap: &SnapshotRef) -> Result<(), Failure> {
    let r = v.mirror.update(generation, |a| {
        a.saved.replicated = Some(replicated_now(snap));
        a.pending_cache = None;
        true
    });
    match r {
        Some(Err(e)) => Err(Failure {
            reason: FailureReason::Persist,
            message: format!("cannot save the mirror: {e}"),
        }),
        _ => Ok(()),
    }
}

/// What a transfer sends and how: where to, its stream settings, the base it goes from (none
/// for a full stream) and the target's resume token (empty to start from the beginning).
struct Transfer<'a> {
    target_volume: &'a str,
    /// The target's counters, which count the stream bytes sent.
    counters: Arc<MirrorCounters>,
    stream: StreamSettings,
    base: Option<SourceSnap>,
    resume_token: Vec<u8>,
}

/// Streams `snap` to the target as `how` says and records it once the target holds it.
async fn send(
    ch: &Channel,
    v: &Arc<Volume>,
    how: Transfer<'_>,
    generation: u64,
    snap: SourceSnap,
) -> Result<Done, Failure> {
    let snapshot = SnapshotRef {
        id: snap.id,
        name: snap.name.clone(),
    };
    v.mirror.update(generation, |a| {
        a.sending = Some(snapshot.clone());
        false
    });
    let resumed = !how.resume_token.is_empty();
    tracing::info!(volume = %v.name, snapshot = %snap.name, base = ?how.base.as_ref().map(|b| &b.name), resumed, compressed = how.stream.compression.is_some(), "mirror sending");
    let started = Instant::now();
    let result = transfer(ch, v, how, &snap.name).await;
    v.mirror.update(generation, |a| {
        a.sending = None;
        false
    });
    let (stream_bytes, resp) = result?;
    if !resp.complete {
        return Err(Failure {
            reason: FailureReason::Transfer,
            message: format!(
                "the transfer of {} stopped before its end after {stream_bytes} bytes; the target kept {} bytes to resume from",
                snap.name, resp.bytes_applied
            ),
        });
    }
    record(v, generation, &snapshot)?;
    Ok(Done::Sent {
        snapshot,
        stream_bytes,
        took: started.elapsed(),
        resumed,
    })
}

/// Cuts the export into ApplyDelta messages.
struct ApplyWriter {
    tx: mpsc::Sender<pb::ApplyDeltaRequest>,
    cutter: MessageCutter,
    counters: Arc<MirrorCounters>,
}

impl ApplyWriter {
    fn send(&mut self, data: Bytes) -> std::io::Result<()> {
        let n = data.len() as u64;
        self.tx
            .blocking_send(pb::ApplyDeltaRequest {
                data,
                ..Default::default()
            })
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the target's apply ended")
            })?;
        self.counters.bytes_sent.fetch_add(n, Relaxed);
        Ok(())
    }
}

impl Write for ApplyWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if let Some(message) = self.cutter.push(data) {
            self.send(message)?;
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        if let Some(message) = self.cutter.rest() {
            self.send(message)?;
        }
        Ok(())
    }
}

/// The export on a blocking thread, its messages relayed to the target's ApplyDelta. Returns
/// the stream bytes sent and the target's answer. The target's failure comes first: an export
/// that stopped because the target hung up is not the cause.
async fn transfer(
    ch: &Channel,
    v: &Arc<Volume>,
    how: Transfer<'_>,
    snapshot: &str,
) -> Result<(u64, pb::ApplyDeltaResponse), Failure> {
    let store_side = v.clone();
    let Transfer {
        target_volume,
        counters,
        stream,
        base,
        resume_token,
    } = how;
    let (snap, token) = (snapshot.to_string(), resume_token.clone());
    let mut plan = tokio::task::spawn_blocking(move || {
        let base = base.as_ref().map(|b| b.name.as_str());
        ExportPlan::new(&store_side.store, base, &snap, &token)
    })
    .await
    .map_err(|e| Failure {
        reason: FailureReason::Export,
        message: format!("export task failed: {e}"),
    })?
    .map_err(|e| Failure {
        reason: FailureReason::Export,
        message: format!("cannot export {snapshot}: {e}"),
    })?;
    plan.compression = stream.compression;
    let message_bytes = message_bytes(stream.bandwidth_limit);
    let (tx, rx) = mpsc::channel(4);
    let first = pb::ApplyDeltaRequest {
        volume: target_volume.to_string(),
        resumable: true,
        resume: !resume_token.is_empty(),
        data: Default::default(),
    };
    tx.send(first).await.ok();
    let vol = v.clone();
    let span = tracing::Span::current();
    let exporter = tokio::task::spawn_blocking(move || {
        let _enter = span.enter();
        let mut out = ApplyWriter {
            tx,
            cutter: MessageCutter::new(message_bytes),
            counters: counters.clone(),
        };
        let before = counters.bytes_sent.load(Relaxed);
        let mut throttled = Throttled::new(&mut out, stream.bandwidth_limit);
        let r = export(&vol.store, &plan, &mut throttled, |_| {}).and_then(|t| {
            throttled
                .flush()
                .map(|()| t)
                .map_err(|e| ReplicationError::Delta(e.into()))
        });
        (r, counters.bytes_sent.load(Relaxed) - before)
    });
    let answer = delta_client(ch)
        .apply_delta(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await;
    let (exported, sent) = exporter.await.map_err(|e| Failure {
        reason: FailureReason::Export,
        message: format!("export task failed: {e}"),
    })?;
    let resp = answer.map_err(|s| apply_failure(snapshot, s))?.into_inner();
    if let Err(e) = exported {
        return Err(Failure {
            reason: FailureReason::Export,
            message: format!("the export of {snapshot} failed after {sent} bytes: {e}"),
        });
    }
    Ok((sent, resp))
}

/// The target's refusals that mean it is no longer a copy of this volume: its origin was
/// written, it holds data a full stream would overwrite, it is another volume's replica, or it
/// lacks the base. Matched on the store's and the delta format's own messages, which
/// FAILED_PRECONDITION carries; any other failure is retried.
const DIVERGED_MESSAGES: [&str; 5] = [
    "origin changed in",
    "needs an empty volume",
    "is a replica of volume",
    "was written to locally",
    "is not held here",
];

fn apply_failure(snapshot: &str, s: tonic::Status) -> Failure {
    let msg = s.message();
    let reason = if s.code() == Code::FailedPrecondition
        && DIVERGED_MESSAGES.iter().any(|m| msg.contains(m))
    {
        FailureReason::Diverged
    } else if matches!(
        s.code(),
        Code::Unavailable | Code::Cancelled | Code::Unknown
    ) {
        FailureReason::Transfer
    } else if s.code() == Code::Aborted {
        FailureReason::Busy
    } else {
        FailureReason::Transfer
    };
    Failure {
        reason,
        message: format!("the target refused {snapshot}: {msg}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use multisnap_store::StoreError;

    /// The phrases matched above are the ones the store and the delta format really say.
    #[test]
    fn divergence_messages_are_the_stores() {
        let id = multisnap_store::VolumeUuid::from_bytes([1; 16]);
        let texts = [
            StoreError::OriginDiverged {
                base: "s1".into(),
                chunks: 3,
            }
            .to_string(),
            StoreError::OriginNotEmpty.to_string(),
            StoreError::ReplicaOfOther {
                expected: id,
                found: id,
            }
            .to_string(),
            StoreError::BaseModified("s1".into()).to_string(),
            multisnap_delta::DeltaError::BaseNotHeld {
                id: 1,
                name: "s1".into(),
            }
            .to_string(),
        ];
        for (phrase, text) in DIVERGED_MESSAGES.iter().zip(&texts) {
            assert!(text.contains(phrase), "{phrase:?} not in {text:?}");
            let f = apply_failure("s2", tonic::Status::failed_precondition(text.clone()));
            assert_eq!(f.reason, FailureReason::Diverged);
        }
        let busy = apply_failure(
            "s2",
            tonic::Status::aborted("another ApplyDelta is running"),
        );
        assert_eq!(busy.reason, FailureReason::Busy);
        let other = apply_failure(
            "s2",
            tonic::Status::failed_precondition("a merge is running"),
        );
        assert_eq!(other.reason, FailureReason::Transfer);
    }
}

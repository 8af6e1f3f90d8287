//! `multisnap.v1.DeltaService`: export and apply delta streams, the apply's resume state.

use super::block_maps::{stream_map, MapRequest, RangesStream};
use super::snapshots::snapshot_message;
use super::status::{blocking, from_replication, from_store};
use crate::mirror::stream::compression_from;
use crate::stream_messages::{message_bytes, MessageCutter};
use crate::volumes::{Volume, Volumes};
use multisnap_delta::{Bytes, ZstdLevel};
use multisnap_proto::v1 as pb;
use multisnap_replication::apply::{Applier, Outcome};
use multisnap_replication::export::{export, ExportPlan};
use multisnap_replication::throttle::{BytesPerSec, Throttled};
use multisnap_replication::{Progress, ReplicationError};
use parking_lot::Mutex;
use std::cell::Cell;
use std::collections::HashSet;
use std::io::Write;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

/// The request's compression: `None` for a version 1 stream, else the zstd level to use.
fn export_compression(r: &pb::ExportDeltaRequest) -> Result<Option<ZstdLevel>, Status> {
    compression_from(r.compression, r.compression_level).map_err(Status::invalid_argument)
}

pub struct DeltaApi {
    pub volumes: Arc<Volumes>,
    /// Volumes with an ApplyDelta call running: one at a time per volume.
    applying: Applying,
}

/// Volumes with an ApplyDelta call running, shared by the TCP and unix listeners.
pub type Applying = Arc<Mutex<HashSet<String>>>;

impl DeltaApi {
    pub fn new(volumes: Arc<Volumes>, applying: Applying) -> DeltaApi {
        DeltaApi { volumes, applying }
    }

    fn volume(&self, name: &str) -> Result<Arc<Volume>, Status> {
        super::status::find_volume(&self.volumes, name)
    }
}

/// Releases a volume's ApplyDelta slot when the call ends, however it ends.
struct ApplySlot {
    set: Arc<Mutex<HashSet<String>>>,
    volume: String,
}

impl Drop for ApplySlot {
    fn drop(&mut self) {
        self.set.lock().remove(&self.volume);
    }
}

/// Cuts the stream into messages, each with the progress as of its last byte.
struct MessageWriter<'a> {
    tx: mpsc::Sender<Result<pb::ExportDeltaResponse, Status>>,
    cutter: MessageCutter,
    sent: u64,
    progress: &'a Cell<Progress>,
}

impl MessageWriter<'_> {
    fn send(&mut self, data: Bytes) -> std::io::Result<()> {
        let p = self.progress.get();
        self.sent += data.len() as u64;
        let msg = pb::ExportDeltaResponse {
            data,
            progress: Some(pb::DeltaProgress {
                chunks_done: p.chunks_done,
                chunks_total: p.chunks_total,
                bytes_sent: self.sent,
            }),
        };
        self.tx.blocking_send(Ok(msg)).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client went away")
        })
    }
}

impl Write for MessageWriter<'_> {
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

type ExportStream = Pin<Box<dyn Stream<Item = Result<pb::ExportDeltaResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::delta_service_server::DeltaService for DeltaApi {
    type ExportDeltaStream = ExportStream;
    type GetChangedRangesStream = RangesStream;
    type GetAllocatedRangesStream = RangesStream;

    #[tracing::instrument(skip_all, fields(volume = %req.get_ref().volume, base = %req.get_ref().base_snapshot, target = %req.get_ref().target_snapshot))]
    async fn export_delta(
        &self,
        req: Request<pb::ExportDeltaRequest>,
    ) -> Result<Response<ExportStream>, Status> {
        let r = req.into_inner();
        if r.target_snapshot.is_empty() {
            return Err(Status::invalid_argument("target_snapshot is required"));
        }
        let compression = export_compression(&r)?;
        let limit = BytesPerSec::new(r.bandwidth_limit_bytes_per_sec);
        let v = self.volume(&r.volume)?;
        let vol = v.clone();
        let mut plan = blocking(move || {
            let base = (!r.base_snapshot.is_empty()).then_some(r.base_snapshot.as_str());
            ExportPlan::new(&vol.store, base, &r.target_snapshot, &r.resume_token)
                .map_err(from_replication)
        })
        .await?;
        plan.compression = compression;
        let message_bytes = message_bytes(limit);
        let (tx, rx) = mpsc::channel(4);
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || {
            let _enter = span.enter();
            let progress = Cell::new(Progress::default());
            let mut out = MessageWriter {
                tx: tx.clone(),
                cutter: MessageCutter::new(message_bytes),
                sent: 0,
                progress: &progress,
            };
            let mut throttled = Throttled::new(&mut out, limit);
            let result =
                export(&v.store, &plan, &mut throttled, |p| progress.set(p)).and_then(|t| {
                    throttled
                        .flush()
                        .map(|()| t)
                        .map_err(|e| ReplicationError::Delta(e.into()))
                });
            v.deltas.exported_bytes.fetch_add(out.sent, Relaxed);
            match result {
                Ok(t) => tracing::info!(
                    records = t.record_count,
                    data_bytes = t.data_bytes,
                    stream_bytes = out.sent,
                    "delta exported"
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "delta export failed");
                    let _ = tx.blocking_send(Err(from_replication(e)));
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    #[tracing::instrument(skip_all, fields(volume = tracing::field::Empty))]
    async fn apply_delta(
        &self,
        req: Request<Streaming<pb::ApplyDeltaRequest>>,
    ) -> Result<Response<pb::ApplyDeltaResponse>, Status> {
        let mut stream = req.into_inner();
        let first = stream
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("empty ApplyDelta stream"))?;
        let v = self.volume(&first.volume)?;
        tracing::Span::current().record("volume", v.name.as_str());
        if !self.applying.lock().insert(v.name.clone()) {
            return Err(Status::aborted(format!(
                "another ApplyDelta is running on volume {}",
                v.name
            )));
        }
        let slot = ApplySlot {
            set: self.applying.clone(),
            volume: v.name.clone(),
        };
        // `None` marks a broken client stream; a closed channel, a clean end.
        let (tx, mut rx) = mpsc::channel::<Option<Bytes>>(8);
        let vol = v.clone();
        let (resumable, resume) = (first.resumable, first.resume);
        let span = tracing::Span::current();
        let worker = tokio::task::spawn_blocking(move || {
            let _enter = span.enter();
            let mut a = Applier::new(vol.store.clone(), resumable, resume)?;
            while let Some(piece) = rx.blocking_recv() {
                let Some(bytes) = piece else {
                    return Err(a.fail(ReplicationError::ReceiverGone));
                };
                if let Err(e) = a.feed_bytes(&bytes) {
                    return Err(a.fail(e));
                }
            }
            let (records, bytes) = (a.records, a.progress.bytes);
            a.finish().map(|o| (o, records, bytes))
        });
        // The outcome is counted by a task of its own: the handler is dropped when the client's
        // connection breaks, and the worker then still ends the apply.
        // The slot too: no second apply may start on the volume before this one has ended.
        let counters = v.clone();
        let worker = tokio::spawn(async move {
            let _slot = slot;
            let result = worker
                .await
                .map_err(|e| Status::internal(format!("apply worker failed: {e}")))?;
            let d = &counters.deltas;
            let ended = match &result {
                Ok((Outcome::Complete(_), ..)) => &d.applies_complete,
                Ok((Outcome::Incomplete { .. }, ..)) => &d.applies_incomplete,
                Err(_) => &d.applies_failed,
            };
            ended.fetch_add(1, Relaxed);
            result.map_err(from_replication)
        });
        let mut next = Some(first.data);
        while let Some(data) = next.take() {
            // Counted as it arrives, so a stream whose client goes away is counted too.
            v.deltas.applied_bytes.fetch_add(data.len() as u64, Relaxed);
            if tx.send(Some(data)).await.is_err() {
                break; // the worker stopped on an error; it reports it
            }
            match stream.message().await {
                Ok(Some(m)) => next = Some(m.data),
                Ok(None) => {}
                Err(status) => {
                    tracing::warn!(%status, "ApplyDelta client stream broke");
                    let _ = tx.send(None).await;
                }
            }
        }
        drop(tx);
        let (outcome, records, bytes) = worker
            .await
            .map_err(|e| Status::internal(format!("apply worker failed: {e}")))??;
        let resp = match outcome {
            Outcome::Complete(s) => pb::ApplyDeltaResponse {
                complete: true,
                snapshot: Some(snapshot_message(&v.name, &s)),
                resume_token: Vec::new(),
                records_applied: records,
                bytes_applied: bytes,
            },
            Outcome::Incomplete { resume_token } => pb::ApplyDeltaResponse {
                complete: false,
                snapshot: None,
                resume_token: resume_token.unwrap_or_default(),
                records_applied: records,
                bytes_applied: bytes,
            },
        };
        Ok(Response::new(resp))
    }

    async fn get_apply_state(
        &self,
        req: Request<pb::GetApplyStateRequest>,
    ) -> Result<Response<pb::ApplyState>, Status> {
        let v = self.volume(&req.into_inner().volume)?;
        blocking(move || {
            let Some(s) = v.store.receive_status().map_err(from_store)? else {
                return Ok(Response::new(pb::ApplyState::default()));
            };
            let base = match s.base {
                Some(id) => v.store.snapshot(id).map(|b| b.name).unwrap_or_default(),
                None => String::new(),
            };
            Ok(Response::new(pb::ApplyState {
                in_progress: true,
                snapshot_name: s.name,
                source_snapshot_id: s.source_snapshot,
                base_snapshot: base,
                resumable: s.resumable,
                committing: s.folding,
                resume_token: s.token,
                staged_chunks: s.staged_chunks,
                staged_bytes: s.staged_bytes,
            }))
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(volume = %req.get_ref().volume))]
    async fn abort_apply(
        &self,
        req: Request<pb::AbortApplyRequest>,
    ) -> Result<Response<pb::AbortApplyResponse>, Status> {
        let v = self.volume(&req.into_inner().volume)?;
        if self.applying.lock().contains(&v.name) {
            return Err(Status::failed_precondition(format!(
                "an ApplyDelta call is still running on volume {}; cancel it first",
                v.name
            )));
        }
        blocking(move || {
            v.store.abort_receive().map_err(from_store)?;
            Ok(Response::new(pb::AbortApplyResponse {}))
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(volume = %req.get_ref().volume, base = %req.get_ref().base_snapshot, target = %req.get_ref().target_snapshot))]
    async fn get_changed_ranges(
        &self,
        req: Request<pb::GetChangedRangesRequest>,
    ) -> Result<Response<RangesStream>, Status> {
        let r = req.into_inner();
        if r.base_snapshot.is_empty() || r.target_snapshot.is_empty() {
            return Err(Status::invalid_argument(
                "base_snapshot and target_snapshot are required",
            ));
        }
        let v = self.volume(&r.volume)?;
        let map = MapRequest {
            base: Some(r.base_snapshot),
            target: r.target_snapshot,
            starting_offset: r.starting_offset,
            max_results: r.max_results,
        };
        Ok(Response::new(stream_map(v, map).await?))
    }

    #[tracing::instrument(skip_all, fields(volume = %req.get_ref().volume, snapshot = %req.get_ref().snapshot))]
    async fn get_allocated_ranges(
        &self,
        req: Request<pb::GetAllocatedRangesRequest>,
    ) -> Result<Response<RangesStream>, Status> {
        let r = req.into_inner();
        if r.snapshot.is_empty() {
            return Err(Status::invalid_argument("snapshot is required"));
        }
        let v = self.volume(&r.volume)?;
        let map = MapRequest {
            base: None,
            target: r.snapshot,
            starting_offset: r.starting_offset,
            max_results: r.max_results,
        };
        Ok(Response::new(stream_map(v, map).await?))
    }
}

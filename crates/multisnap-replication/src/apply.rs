//! Apply: a delta stream, fed in pieces of any size, staged into the store and published as
//! one snapshot once the trailer verified.
//!
//! Durability: staged records are checkpointed (made durable together with the resume token
//! just after them) every `CHECKPOINT_BYTES` or `CHECKPOINT_INTERVAL`, and when the stream
//! stops early. A resumable apply keeps its checkpointed part across interruptions, crashes
//! included; any other apply is discarded when it fails or is cut off, and its space reclaimed.
//!
//! The store's operations (staging batches, checkpoints) run on a thread of their own
//! ([`crate::stager`]), in order, while the caller decodes the next records; the applier
//! waits for them before publishing, stopping or discarding.

use super::stager::{Op, Stager};
use super::{Progress, ReplicationError, Result};
use multisnap_delta::{Bytes, DeltaDecoder, DeltaHeader, Event, Record, ResumePoint, Target};
use multisnap_store::{ReceivePlan, SnapshotInfo, Store};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CHECKPOINT_BYTES: u64 = 64 << 20;
/// Verified records are handed to the store in batches of about this much data, so a direct
/// apply pays one write-ahead commit per batch rather than per record.
const BATCH_BYTES: u64 = 16 << 20;
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(2);

/// How an apply ended.
#[derive(Debug)]
pub enum Outcome {
    /// The stream verified and the snapshot was created.
    Complete(SnapshotInfo),
    /// The stream stopped before its trailer. For a resumable apply, the token to continue
    /// from (everything before it is durable); otherwise the apply was discarded.
    Incomplete { resume_token: Option<Vec<u8>> },
}

pub struct Applier {
    store: Arc<Store>,
    stager: Stager,
    decoder: DeltaDecoder,
    resumable: bool,
    resume: bool,
    /// The store holds an apply this applier began or continues.
    active: bool,
    /// The point just after the last record handed to the stager.
    point: Option<ResumePoint>,
    /// Verified records not yet handed to the store, each with the point just after it.
    pending: Vec<(Record, ResumePoint)>,
    pending_bytes: u64,
    unsaved_bytes: u64,
    batch_bytes: u64,
    checkpoint_bytes: u64,
    last_checkpoint: Instant,
    pub progress: Progress,
    pub records: u64,
}

impl Applier {
    /// A new apply, or (`resume`) the continuation of the store's resumable apply in progress.
    pub fn new(store: Arc<Store>, resumable: bool, resume: bool) -> Result<Applier> {
        let decoder = if resume {
            let status = store
                .receive_status()?
                .filter(|s| s.resumable && !s.folding)
                .ok_or(ReplicationError::NothingToResume)?;
            DeltaDecoder::resume(ResumePoint::from_bytes(&status.token)?)
        } else {
            DeltaDecoder::new()
        };
        Ok(Applier {
            stager: Stager::new(store.clone())?,
            store,
            decoder,
            resumable: resumable || resume,
            resume,
            active: false,
            point: None,
            pending: Vec::new(),
            pending_bytes: 0,
            unsaved_bytes: 0,
            batch_bytes: BATCH_BYTES,
            checkpoint_bytes: CHECKPOINT_BYTES,
            last_checkpoint: Instant::now(),
            progress: Progress::default(),
            records: 0,
        })
    }

    /// Hands verified records to the store in batches of about `batch` bytes and checkpoints
    /// every `checkpoint` bytes, rather than 16 MiB and 64 MiB: tests cross many batch and
    /// checkpoint boundaries with little data this way.
    pub fn with_batching(mut self, batch: u64, checkpoint: u64) -> Self {
        self.batch_bytes = batch;
        self.checkpoint_bytes = checkpoint;
        self
    }

    /// Decodes and applies what `bytes` completes. On error the caller must call
    /// [`fail`](Self::fail).
    pub fn feed(&mut self, bytes: &[u8]) -> Result<()> {
        let events = self.decoder.feed(bytes)?;
        self.apply_events(events)
    }

    /// [`feed`](Self::feed) for a received message: records whose data lies whole in it are
    /// staged from it directly rather than from a copy.
    pub fn feed_bytes(&mut self, bytes: &Bytes) -> Result<()> {
        let events = self.decoder.feed_bytes(bytes)?;
        self.apply_events(events)
    }

    fn apply_events(&mut self, events: Vec<Event>) -> Result<()> {
        for event in events {
            match event {
                Event::Header(h) => self.start(&h)?,
                Event::Record(r, point) => self.record(r, point)?,
                Event::End(_) => {}
            }
        }
        Ok(())
    }

    fn start(&mut self, h: &DeltaHeader) -> Result<()> {
        let cs = u64::from(self.store.chunk_size());
        if u64::from(h.chunk_size) != cs {
            return Err(ReplicationError::Geometry {
                what: "chunk size",
                stream: u64::from(h.chunk_size),
                volume: cs,
            });
        }
        if h.volume_size != self.store.origin_size() {
            return Err(ReplicationError::Geometry {
                what: "volume size",
                stream: h.volume_size,
                volume: self.store.origin_size(),
            });
        }
        let Target::Snapshot(target) = &h.target else {
            return Err(ReplicationError::TargetIsOrigin);
        };
        let bound = self.store.replica_source();
        // A volume that is nobody's replica yet takes the stream's volume as its source.
        h.verify_source(&bound.unwrap_or(h.volume_uuid), |b| {
            self.store
                .snapshot_by_source_id(b.id)
                .is_some_and(|s| s.name == b.name)
        })?;
        self.progress.chunks_total = h.volume_chunks();
        if self.resume {
            let status = self
                .store
                .receive_status()?
                .ok_or(ReplicationError::NothingToResume)?;
            if status.source_snapshot != target.id || status.name != target.name {
                return Err(ReplicationError::ResumeMismatch(format!(
                    "it targets {:?} (id {}), the apply in progress {:?} (id {})",
                    target.name, target.id, status.name, status.source_snapshot
                )));
            }
            self.active = true;
            return Ok(());
        }
        let base = match &h.base {
            Some(b) => self.store.snapshot_by_source_id(b.id).map(|s| s.id),
            None => None,
        };
        self.store.begin_receive(&ReceivePlan {
            name: target.name.clone(),
            source_volume: h.volume_uuid,
            source_snapshot: target.id,
            base,
            resumable: self.resumable,
            token: ResumePoint::start(h).to_bytes().to_vec(),
        })?;
        self.active = true;
        tracing::info!(
            volume = %self.store.volume_name(),
            source = %h.volume_uuid,
            target = %target.name,
            base = ?h.base.as_ref().map(|b| &b.name),
            "applying a delta"
        );
        Ok(())
    }

    fn record(&mut self, r: Record, point: ResumePoint) -> Result<()> {
        let (first, count, len) = match &r {
            Record::Data {
                chunk_index,
                chunk_count,
                bytes,
            } => (*chunk_index, *chunk_count, bytes.len() as u64),
            Record::Zero {
                chunk_index,
                chunk_count,
            } => (*chunk_index, *chunk_count, 0),
        };
        self.pending.push((r, point));
        self.pending_bytes += len;
        self.records += 1;
        self.unsaved_bytes += len;
        self.progress.chunks_done = first + u64::from(count);
        self.progress.bytes += len;
        if self.unsaved_bytes >= self.checkpoint_bytes
            || self.last_checkpoint.elapsed() >= CHECKPOINT_INTERVAL
        {
            self.checkpoint()?;
        } else if self.pending_bytes >= self.batch_bytes {
            self.stage_pending()?;
        }
        Ok(())
    }

    /// Hands the pending records to the stager. If they fail to stage, the apply stands at
    /// the last point staged before them.
    fn stage_pending(&mut self) -> Result<()> {
        let pending = std::mem::take(&mut self.pending);
        self.pending_bytes = 0;
        let Some(&(_, point)) = pending.last() else {
            return Ok(());
        };
        let records = pending.into_iter().map(|(r, _)| r).collect();
        self.stager.submit(Op::Stage { records, point })?;
        self.point = Some(point);
        Ok(())
    }

    /// Queues a checkpoint behind what is staged so far; the caller goes on meanwhile.
    fn checkpoint(&mut self) -> Result<()> {
        self.stage_pending()?;
        if let Some(p) = self.point {
            self.stager.submit(Op::Checkpoint(p))?;
        }
        self.unsaved_bytes = 0;
        self.last_checkpoint = Instant::now();
        Ok(())
    }

    /// The stream ended (the sender closed it): publish if it was whole, else stop here.
    pub fn finish(mut self) -> Result<Outcome> {
        if self.decoder.is_done() {
            return match self.publish() {
                Ok(snap) => Ok(Outcome::Complete(snap)),
                Err(e) => Err(self.fail(e)),
            };
        }
        let token = self.stop()?;
        Ok(Outcome::Incomplete {
            resume_token: token,
        })
    }

    fn publish(&mut self) -> Result<SnapshotInfo> {
        let trailer = self.decoder.finish()?;
        self.stage_pending()?;
        self.stager.settle()?;
        let point = self.decoder.resume_point();
        let token = point.map(|p| p.to_bytes().to_vec()).unwrap_or_default();
        let snap = self.store.finish_receive(&token)?;
        tracing::info!(
            volume = %self.store.volume_name(),
            snapshot = %snap.name,
            records = trailer.record_count,
            bytes = trailer.data_bytes,
            "delta applied"
        );
        self.active = false;
        Ok(snap)
    }

    /// The apply failed (`err`) or was cut off: keep what is durable for a resumable apply,
    /// discard anything else. Returns `err` for the caller to report.
    pub fn fail(mut self, err: ReplicationError) -> ReplicationError {
        if let Err(e) = self.stop() {
            tracing::warn!(error = %e, "could not settle the interrupted delta apply");
        }
        err
    }

    fn stop(&mut self) -> Result<Option<Vec<u8>>> {
        if !self.active {
            return Ok(None);
        }
        self.active = false;
        if self.resumable {
            // What verified but failed to stage is simply not covered by the kept point: the
            // point of the last batch that was staged.
            let handed = self.stage_pending();
            if let Err(e) = handed.and(self.stager.settle()) {
                tracing::warn!(error = %e, "could not stage all the verified records");
            }
            if let Some(p) = self.stager.staged() {
                self.store.checkpoint_receive(&p.to_bytes())?;
            }
            let token = self.store.receive_status()?.map(|s| s.token);
            tracing::info!(volume = %self.store.volume_name(), "delta apply interrupted; kept for resumption");
            return Ok(token);
        }
        // Nothing may still be staging while the apply is undone.
        if let Err(e) = self.stager.settle() {
            tracing::debug!(error = %e, "a batch failed to stage before the apply was discarded");
        }
        self.store.abort_receive()?;
        tracing::info!(volume = %self.store.volume_name(), "delta apply interrupted; discarded");
        Ok(None)
    }
}

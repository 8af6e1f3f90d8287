//! Apply: a delta stream, fed in pieces of any size, staged into the store and published as
//! one snapshot once the trailer verified.
//!
//! Durability: staged records are checkpointed (made durable together with the resume token
//! just after them) every `CHECKPOINT_BYTES` or `CHECKPOINT_INTERVAL`, and when the stream
//! stops early. A resumable apply keeps its checkpointed part across interruptions, crashes
//! included; any other apply is discarded when it fails or is cut off, and its space reclaimed.

use super::{Progress, ReplicationError, Result};
use multisnap_delta::{Bytes, DeltaDecoder, DeltaHeader, Event, Record, ResumePoint, Target};
use multisnap_store::{ReceivePlan, SnapshotInfo, Store};
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

pub struct Applier<'a> {
    store: &'a Store,
    decoder: DeltaDecoder,
    resumable: bool,
    resume: bool,
    /// The store holds an apply this applier began or continues.
    active: bool,
    /// The point just after the last staged record.
    point: Option<ResumePoint>,
    /// Verified records not yet handed to the store, each with the point just after it.
    pending: Vec<(Record, ResumePoint)>,
    pending_bytes: u64,
    unsaved_bytes: u64,
    last_checkpoint: Instant,
    pub progress: Progress,
    pub records: u64,
}

impl<'a> Applier<'a> {
    /// A new apply, or (`resume`) the continuation of the store's resumable apply in progress.
    pub fn new(store: &'a Store, resumable: bool, resume: bool) -> Result<Applier<'a>> {
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
            store,
            decoder,
            resumable: resumable || resume,
            resume,
            active: false,
            point: None,
            pending: Vec::new(),
            pending_bytes: 0,
            unsaved_bytes: 0,
            last_checkpoint: Instant::now(),
            progress: Progress::default(),
            records: 0,
        })
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
        if self.unsaved_bytes >= CHECKPOINT_BYTES
            || self.last_checkpoint.elapsed() >= CHECKPOINT_INTERVAL
        {
            self.checkpoint()?;
        } else if self.pending_bytes >= BATCH_BYTES {
            self.stage_pending()?;
        }
        Ok(())
    }

    /// Hands the pending records to the store. On failure they are dropped: the apply stands
    /// at the last point staged before them.
    fn stage_pending(&mut self) -> Result<()> {
        let pending = std::mem::take(&mut self.pending);
        self.pending_bytes = 0;
        let Some((_, last)) = pending.last() else {
            return Ok(());
        };
        let last = *last;
        let items: Vec<(u64, u32, Option<&[u8]>)> = pending
            .iter()
            .map(|(r, _)| match r {
                Record::Data {
                    chunk_index,
                    chunk_count,
                    bytes,
                } => (*chunk_index, *chunk_count, Some(&bytes[..])),
                Record::Zero {
                    chunk_index,
                    chunk_count,
                } => (*chunk_index, *chunk_count, None),
            })
            .collect();
        self.store.stage_batch(&items)?;
        self.point = Some(last);
        Ok(())
    }

    fn checkpoint(&mut self) -> Result<()> {
        self.stage_pending()?;
        if let Some(p) = self.point {
            self.store.checkpoint_receive(&p.to_bytes())?;
            tracing::debug!(volume = %self.store.volume_name(), next_chunk = p.next_chunk, records = p.records_applied, "delta apply checkpoint");
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
            // What verified but failed to stage is simply not covered by the kept point.
            if let Err(e) = self.stage_pending() {
                tracing::warn!(error = %e, "could not stage the last verified records");
            }
            self.checkpoint()?;
            let token = self.store.receive_status()?.map(|s| s.token);
            tracing::info!(volume = %self.store.volume_name(), "delta apply interrupted; kept for resumption");
            return Ok(token);
        }
        self.store.abort_receive()?;
        tracing::info!(volume = %self.store.volume_name(), "delta apply interrupted; discarded");
        Ok(None)
    }
}

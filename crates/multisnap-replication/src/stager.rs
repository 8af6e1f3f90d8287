//! The store's side of an apply, on a thread of its own.
//!
//! Staging a batch (a write-ahead commit, then the origin or store writes) and checkpointing
//! (a flush and a commit) block on the disk; decoding and verifying the next records needs
//! only the CPU. On one thread each waits for the other, and the sender's stream stalls while
//! the disk is busy. The stager runs the store's operations in the order they were submitted,
//! one at a time, exactly the sequence an apply on one thread would run, while the caller goes
//! on decoding; a bounded queue between them holds the caller back when the disk falls behind.
//!
//! Once an operation fails, every later one is skipped: a checkpoint never records a resume
//! point past a batch that was not staged. The caller learns of the failure at its next
//! submission or when it settles, and the last point staged before it stays known, so a
//! resumable apply can keep exactly what is on disk.

use super::{ReplicationError, Result};
use multisnap_delta::{Record, ResumePoint};
use multisnap_store::Store;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;

/// Operations queued beyond the one running: with 16 MiB batches, the stager holds at most
/// about 48 MiB of records the caller has handed over.
const QUEUE_DEPTH: usize = 2;

/// One store operation of an apply.
pub(crate) enum Op {
    /// Stage these verified records; `point` is the resume point just after the last one.
    Stage {
        records: Vec<Record>,
        point: ResumePoint,
    },
    /// Make everything staged durable with this resume point.
    Checkpoint(ResumePoint),
}

enum Reply {
    Staged(ResumePoint),
    Checkpointed,
    Failed(ReplicationError),
    /// Not run: an earlier operation failed, or the stager is being dropped.
    Skipped,
}

pub(crate) struct Stager {
    ops: Option<SyncSender<Op>>,
    replies: Receiver<Reply>,
    thread: Option<JoinHandle<()>>,
    /// Tells the thread to skip what is still queued (the applier went away mid-stream).
    cancel: Arc<AtomicBool>,
    /// Operations submitted and not yet answered.
    in_flight: usize,
    /// The resume point just after the last batch staged.
    staged: Option<ResumePoint>,
    /// A failure not yet handed to the caller.
    failure: Option<ReplicationError>,
}

impl Stager {
    pub(crate) fn new(store: Arc<Store>) -> Result<Stager> {
        let (ops, queue) = sync_channel::<Op>(QUEUE_DEPTH);
        let (answer, replies) = std::sync::mpsc::channel();
        let cancel = Arc::new(AtomicBool::new(false));
        let cancelled = cancel.clone();
        let span = tracing::Span::current();
        let thread = std::thread::Builder::new()
            .name("multisnap-stage".into())
            .spawn(move || {
                let _enter = span.enter();
                let mut failed = false;
                for op in queue {
                    let reply = if failed || cancelled.load(Ordering::Acquire) {
                        Reply::Skipped
                    } else {
                        match run(&store, op) {
                            Ok(reply) => reply,
                            Err(e) => {
                                failed = true;
                                Reply::Failed(e)
                            }
                        }
                    };
                    if answer.send(reply).is_err() {
                        return;
                    }
                }
            })
            .map_err(|e| ReplicationError::Stager(format!("could not start: {e}")))?;
        Ok(Stager {
            ops: Some(ops),
            replies,
            thread: Some(thread),
            cancel,
            in_flight: 0,
            staged: None,
            failure: None,
        })
    }

    /// Queues `op`, waiting while the queue is full. Fails, without queueing it, if an
    /// earlier operation has failed since the caller last heard.
    pub(crate) fn submit(&mut self, op: Op) -> Result<()> {
        while self.in_flight > 0 {
            match self.replies.try_recv() {
                Ok(reply) => self.take(reply),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return Err(self.lost()),
            }
        }
        if let Some(e) = self.failure.take() {
            return Err(e);
        }
        match &self.ops {
            Some(ops) if ops.send(op).is_ok() => self.in_flight += 1,
            _ => return Err(self.lost()),
        }
        Ok(())
    }

    /// Waits until every submitted operation has run (or been skipped); the first failure the
    /// caller has not heard of yet, if any.
    pub(crate) fn settle(&mut self) -> Result<()> {
        while self.in_flight > 0 {
            match self.replies.recv() {
                Ok(reply) => self.take(reply),
                Err(_) => return Err(self.lost()),
            }
        }
        match self.failure.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// The resume point just after the last batch that was staged.
    pub(crate) fn staged(&self) -> Option<ResumePoint> {
        self.staged
    }

    fn take(&mut self, reply: Reply) {
        self.in_flight -= 1;
        match reply {
            Reply::Staged(p) => self.staged = Some(p),
            Reply::Checkpointed | Reply::Skipped => {}
            Reply::Failed(e) => {
                if self.failure.is_none() {
                    self.failure = Some(e);
                }
            }
        }
    }

    /// The thread is gone without answering (it panicked): nothing more can be staged.
    fn lost(&mut self) -> ReplicationError {
        self.in_flight = 0;
        self.ops = None;
        ReplicationError::Stager("stopped without answering".into())
    }
}

fn run(store: &Store, op: Op) -> Result<Reply> {
    match op {
        Op::Stage { records, point } => {
            let items: Vec<(u64, u32, Option<&[u8]>)> = records
                .iter()
                .map(|r| match r {
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
            store.stage_batch(&items)?;
            Ok(Reply::Staged(point))
        }
        Op::Checkpoint(point) => {
            store.checkpoint_receive(&point.to_bytes())?;
            tracing::debug!(
                volume = %store.volume_name(),
                next_chunk = point.next_chunk,
                records = point.records_applied,
                "delta apply checkpoint"
            );
            Ok(Reply::Checkpointed)
        }
    }
}

impl Drop for Stager {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Release);
        self.ops = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

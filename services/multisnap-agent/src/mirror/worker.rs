//! The mirror task: every [`TICK`] (or at once when a mirror is set) it looks at each volume
//! with a mirror and starts a round where there is something to do — a snapshot newer than the
//! one the target holds, or a retry that is due. One round at a time per volume; rounds of
//! different volumes run side by side.

use super::backoff::Backoff;
use super::round::{self, Done, Failure};
use super::{ready_snapshots, FailureReason};
use crate::volumes::{Volume, Volumes};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// How often the task looks for new snapshots: a snapshot, by policy or by hand, starts its
/// round within this.
const TICK: Duration = Duration::from_millis(250);

pub struct MirrorWorker {
    wake: Notify,
    backoff: Backoff,
}

impl MirrorWorker {
    pub fn new(backoff: Backoff) -> MirrorWorker {
        MirrorWorker {
            wake: Notify::new(),
            backoff,
        }
    }

    /// Has the task look now (a mirror was set).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Runs until `shutdown`; rounds in flight are then dropped (the target keeps what it
    /// checkpointed, and the next start resumes from its token).
    pub async fn run(self: Arc<Self>, volumes: Arc<Volumes>, shutdown: CancellationToken) {
        let mut rounds = tokio::task::JoinSet::new();
        loop {
            for v in volumes.list() {
                if let Some((target, generation)) = self.due(&v) {
                    let span = tracing::info_span!("mirror_round", volume = %v.name, target = %target.endpoint, target_volume = %target.volume);
                    let me = self.clone();
                    rounds.spawn(
                        async move {
                            let result = round::run(v.clone(), target, generation).await;
                            me.settle(&v, generation, result);
                        }
                        .instrument(span),
                    );
                }
            }
            while rounds.try_join_next().is_some() {}
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(TICK) => {}
                _ = self.wake.notified() => {}
            }
        }
        rounds.shutdown().await;
    }

    /// Whether `v` needs a round now; if so, marks it running and returns what the round needs.
    fn due(&self, v: &Volume) -> Option<(super::target::MirrorTarget, u64)> {
        // Most volumes have no mirror: they cost a lock, not a snapshot list.
        if v.mirror.state.lock().is_none() {
            return None;
        }
        let newest = ready_snapshots(v).last().map(|s| s.id.0);
        let mut state = v.mirror.state.lock();
        let a = state.as_mut()?;
        if a.running || a.saved.stopped.is_some() {
            return None;
        }
        let now = SystemTime::now();
        if a.retry_at.is_some_and(|t| now < t) {
            return None;
        }
        let behind = newest.is_some() && newest != a.saved.replicated.as_ref().map(|r| r.id);
        if !behind && a.retry_at.is_none() {
            return None;
        }
        a.running = true;
        Some((a.saved.target.clone(), a.generation))
    }

    /// Records how a round ended: the counters, the state, the next attempt.
    fn settle(&self, v: &Volume, generation: u64, result: Result<Done, Failure>) {
        let counters = &v.mirror.counters;
        match &result {
            Ok(Done::Sent {
                snapshot,
                stream_bytes,
                took,
                resumed,
            }) => {
                counters.syncs.fetch_add(1, Relaxed);
                let mib_s = *stream_bytes as f64 / (1 << 20) as f64 / took.as_secs_f64().max(1e-6);
                tracing::info!(volume = %v.name, snapshot = %snapshot.name, stream_bytes, seconds = took.as_secs_f64(), mib_per_s = format!("{mib_s:.1}"), resumed, "mirror synced");
            }
            Ok(Done::InSync) => {}
            Err(f) => {
                counters.failed(f.reason);
                if f.reason == FailureReason::Diverged {
                    tracing::warn!(volume = %v.name, reason = %f.message, "mirror stopped: the target diverged");
                }
            }
        }
        let backoff = self.backoff;
        let saved = v.mirror.update(generation, |a| {
            a.running = false;
            match result {
                Ok(_) => {
                    a.last_error = None;
                    a.failures_in_row = 0;
                    a.retry_at = None;
                    false
                }
                Err(f) if f.reason == FailureReason::Diverged => {
                    a.last_error = Some(f.message.clone());
                    a.retry_at = None;
                    a.saved.stopped = Some(f.message);
                    true
                }
                Err(f) => {
                    a.failures_in_row = a.failures_in_row.saturating_add(1);
                    let wait = backoff.delay(a.failures_in_row);
                    a.retry_at = Some(SystemTime::now() + wait);
                    tracing::warn!(volume = %v.name, reason = f.reason.label(), error = %f.message, attempt = a.failures_in_row, retry_in_seconds = wait.as_secs_f64(), "mirror round failed; retrying");
                    a.last_error = Some(f.message);
                    false
                }
            }
        });
        if let Some(Err(e)) = saved {
            counters.failed(FailureReason::Persist);
            tracing::warn!(volume = %v.name, error = %e, "cannot save the mirror's stopped state; it stays stopped until the agent restarts");
            v.mirror.update(generation, |a| {
                a.saved.stopped = a.last_error.clone();
                false
            });
        }
    }
}

//! The mirror task: every [`TICK`] (or at once when a mirror is set) it looks at each mirror
//! of each volume and starts a round where there is something to do — a snapshot newer than
//! the one that mirror's target holds, or a retry that is due. One round at a time per mirror;
//! rounds of different mirrors, of one volume or several, run side by side as their own
//! tasks, so a slow or dead target delays nobody else's.

use super::backoff::Backoff;
use super::round::{self, Done, Failure};
use super::{ready_snapshots, FailureReason, MirrorKey};
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
                for (target, generation) in self.due(&v) {
                    let span = tracing::info_span!("mirror_round", volume = %v.name, target = %target.endpoint, target_volume = %target.volume);
                    let me = self.clone();
                    let v = v.clone();
                    let key = MirrorKey::of(&target);
                    rounds.spawn(
                        async move {
                            let result = round::run(v.clone(), target, generation).await;
                            me.settle(&v, &key, generation, result);
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

    /// The mirrors of `v` that need a round now, marked running, with what their rounds need.
    fn due(&self, v: &Volume) -> Vec<(super::target::MirrorTarget, u64)> {
        // Most volumes have no mirror: they cost a lock, not a snapshot list.
        if v.mirror.is_empty() {
            return Vec::new();
        }
        let newest = ready_snapshots(v).last().map(|s| s.id.0);
        let now = SystemTime::now();
        v.mirror.start_rounds(|a| {
            if a.saved.stopped.is_some() || a.retry_at.is_some_and(|t| now < t) {
                return false;
            }
            let behind = newest.is_some() && newest != a.saved.replicated.as_ref().map(|r| r.id);
            behind || a.retry_at.is_some()
        })
    }

    /// Records how a round ended: the counters, the state, the next attempt.
    fn settle(&self, v: &Volume, key: &MirrorKey, generation: u64, result: Result<Done, Failure>) {
        // The target's counters count the round even if its mirror was cleared or set anew
        // meanwhile: it did send.
        let counters = v.mirror.counters_for(key);
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

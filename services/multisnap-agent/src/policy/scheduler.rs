//! The policy thread: looks at every volume with a policy about once a second (or when a
//! policy is set), takes the snapshot due, then prunes what retention lets go.
//!
//! A snapshot is due when the clock is in a later slot than the last one taken (a slot runs
//! from one scheduled time to the next, `policy::timing`): a policy's first look takes one at
//! once, and after the agent was down across many scheduled times the first look takes exactly
//! one (for the slot it wakes up in), not one per missed slot. A failed attempt is retried a
//! minute later (or after the schedule's shortest gap, if sooner); a failed prune likewise.

use super::calendar::UnixSecs;
use super::clock::Clock;
use super::holds::Holds;
use super::persist::Record;
use super::retention::{self, Taken};
use super::{Active, FailureReason};
use crate::volumes::{Volume, Volumes};
use multisnap_store::{ErrorKind, SnapshotId, SnapshotState, StoreError};
use parking_lot::{Condvar, Mutex};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Seconds of the policy clock before a failed snapshot or prune is tried again.
const RETRY_SECS: i64 = 60;

pub struct Scheduler {
    clock: Arc<dyn Clock>,
    holds: Holds,
    wake: Mutex<bool>,
    woken: Condvar,
}

impl Scheduler {
    pub fn new(clock: Arc<dyn Clock>, holds: Holds) -> Scheduler {
        Scheduler {
            clock,
            holds,
            wake: Mutex::new(false),
            woken: Condvar::new(),
        }
    }

    /// The policy clock's time.
    pub fn now(&self) -> Result<UnixSecs, String> {
        self.clock.now()
    }

    /// Has the thread look now (a policy was set).
    pub fn wake(&self) {
        *self.wake.lock() = true;
        self.woken.notify_all();
    }

    /// Runs on a thread of its own until `stop`.
    pub fn spawn(
        self: Arc<Self>,
        volumes: Arc<Volumes>,
        stop: Arc<AtomicBool>,
    ) -> std::thread::JoinHandle<()> {
        std::thread::Builder::new()
            .name("snapshot-policy".into())
            .spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    for v in volumes.list() {
                        self.look(&v);
                    }
                    let mut woken = self.wake.lock();
                    if !*woken {
                        self.woken.wait_for(&mut woken, self.clock.poll_interval());
                    }
                    *woken = false;
                }
            })
            .expect("cannot spawn the snapshot policy thread")
    }

    /// One look at one volume: take the snapshot due, prune, and save what changed.
    pub fn look(&self, v: &Volume) {
        let mut state = v.policy.state.lock();
        let Some(active) = state.as_mut() else {
            return;
        };
        let now = match self.clock.now() {
            Ok(t) => t,
            Err(e) => {
                if active.last_error.as_deref() != Some(e.as_str()) {
                    tracing::warn!(volume = %v.name, error = %e, "snapshot policy cannot read its clock");
                    v.policy.counters.failed(FailureReason::Clock);
                    active.last_error = Some(e);
                }
                return;
            }
        };
        let _span = tracing::info_span!("snapshot_policy", volume = %v.name, now).entered();
        forget_gone(v, active);
        let slot = active.saved.spec.timing.slot_start(now);
        let due = slot.filter(|s| active.saved.last_slot_at.is_none_or(|last| *s > last));
        if let Some(slot) = due {
            if active.retry_at.is_none_or(|t| now >= t) {
                take(v, active, now, slot);
            }
        }
        if active.prune_retry_at.is_none_or(|t| now >= t) {
            self.prune(v, active, now);
        }
        if active.dirty {
            if let Err(e) = v.policy.save(active) {
                fail(
                    v,
                    active,
                    now,
                    FailureReason::Persist,
                    format!("cannot save the policy: {e}"),
                );
            }
        }
        active.evaluated_at = Some(now);
    }

    /// Deletes the policy snapshots retention does not keep and nothing holds.
    #[tracing::instrument(skip_all)]
    fn prune(&self, v: &Volume, active: &mut Active, now: UnixSecs) {
        let mut ready = Vec::new();
        let mut invalid = Vec::new();
        for r in &active.saved.taken {
            match v.store.snapshot(SnapshotId(r.id)) {
                Ok(s) if s.state == SnapshotState::Ready => {
                    ready.push(Taken { at: r.at, id: r.id })
                }
                // Dropped by the store-full policy: unreadable, kept by nothing.
                Ok(s) if s.state == SnapshotState::Invalid => invalid.push(r.id),
                _ => {}
            }
        }
        let keep = retention::kept(&ready, &active.saved.spec.retention, now);
        let doomed: BTreeSet<u64> = ready
            .iter()
            .filter(|t| !keep.contains(t))
            .map(|t| t.id)
            .chain(invalid)
            .collect();
        let mut held = Vec::new();
        let mut pruned = Vec::new();
        for id in doomed {
            let Ok(info) = v.store.snapshot(SnapshotId(id)) else {
                continue;
            };
            if let Some(by) = self.holds.holder(v, &info) {
                held.push(format!("{} (held by {by})", info.name));
                continue;
            }
            match v.store.delete_snapshot(SnapshotId(id)) {
                Ok(()) => {
                    tracing::info!(snapshot = %info.name, "policy snapshot pruned");
                    v.policy.counters.pruned.fetch_add(1, Ordering::Relaxed);
                    pruned.push(id);
                }
                Err(e) if e.kind() == ErrorKind::NotFound => pruned.push(id),
                Err(e) => {
                    let msg = format!("cannot prune snapshot {}: {e}", info.name);
                    fail(v, active, now, FailureReason::Prune, msg);
                    active.prune_retry_at = Some(now + RETRY_SECS);
                    break;
                }
            }
        }
        active.held = held;
        if !pruned.is_empty() {
            active.saved.taken.retain(|r| !pruned.contains(&r.id));
            active.dirty = true;
        }
    }
}

/// Forgets recorded snapshots that are gone (deleted by a user, or reclaimed), or whose id
/// now names something else: the record only ever marks the snapshot it was made for.
fn forget_gone(v: &Volume, active: &mut Active) {
    let before = active.saved.taken.len();
    active.saved.taken.retain(|r| {
        v.store
            .snapshot(SnapshotId(r.id))
            .is_ok_and(|s| s.name == r.name && s.state != SnapshotState::Deleting)
    });
    if active.saved.taken.len() != before {
        active.dirty = true;
    }
}

/// Takes the snapshot due now, for the slot starting at `slot`, and records it.
#[tracing::instrument(skip_all)]
fn take(v: &Volume, active: &mut Active, now: UnixSecs, slot: UnixSecs) {
    let name = active.saved.spec.template.render(now);
    let retry_after = RETRY_SECS.min(active.saved.spec.timing.shortest_gap());
    // Never adopt a snapshot someone else made under the same name.
    if v.store.snapshot_by_name(&name).is_ok() {
        let msg = format!("a snapshot named {name} exists already; the policy did not make it");
        fail(v, active, now, FailureReason::NameTaken, msg);
        active.retry_at = Some(now + retry_after);
        return;
    }
    match v.store.create_snapshot(&name) {
        Ok(info) => {
            tracing::info!(snapshot = %name, id = info.id.0, "policy snapshot taken");
            v.policy.counters.taken.fetch_add(1, Ordering::Relaxed);
            active.saved.taken.push(Record {
                id: info.id.0,
                name,
                at: now,
            });
            active.saved.last_slot_at = Some(slot);
            active.retry_at = None;
            active.last_error = None;
            active.dirty = true;
        }
        Err(e) => {
            let reason = match (&e, e.kind()) {
                (StoreError::SnapshotExists(_), _) => FailureReason::NameTaken,
                (_, ErrorKind::NoSpace) => FailureReason::NoSpace,
                _ => FailureReason::Snapshot,
            };
            let msg = format!("cannot take snapshot {name}: {e}");
            fail(v, active, now, reason, msg);
            active.retry_at = Some(now + retry_after);
        }
    }
}

/// Counts and logs a failed step and shows it in the policy's status.
fn fail(v: &Volume, active: &mut Active, now: UnixSecs, reason: FailureReason, msg: String) {
    tracing::warn!(volume = %v.name, reason = reason.label(), now, error = %msg, "snapshot policy step failed");
    v.policy.counters.failed(reason);
    active.last_error = Some(msg);
}

#[cfg(test)]
mod tests;

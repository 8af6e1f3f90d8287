//! Bringing a failed volume back without restarting the agent.
//!
//! A volume whose journal or metadata write, flush or commit failed refuses writes and flushes
//! (see `multisnap_store::Store::reopen`). Reopening it rebuilds the store's state from its
//! files in place, as a start does, while NBD connections, ublk queues and views keep the same
//! store and go on serving.
//!
//! Who reopens depends on the cause:
//! - a full host filesystem (ENOSPC, EDQUOT on a write): the failed write left nothing behind
//!   and no flush failed, so the agent retries the reopen by itself, first after
//!   [`FIRST_RETRY`], then at doubling intervals up to [`MAX_RETRY`], until space returns;
//! - anything else (EIO, a failed fsync): the disk may be dying, and after a failed fsync a
//!   later one can succeed without the pages it lost, so only an operator who checked the
//!   disk reopens it (`multisnap volume reopen NAME`, gRPC `ReopenVolume`).

use crate::volumes::{Volume, VolumeError, Volumes};
use multisnap_store::FailureCause;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long after a host-full failure the first automatic reopen is tried.
pub const FIRST_RETRY: Duration = Duration::from_secs(5);
/// The longest wait between automatic reopens of one volume.
pub const MAX_RETRY: Duration = Duration::from_secs(60);
/// How often the recovery thread looks for failed volumes.
const POLL: Duration = Duration::from_millis(500);

/// Who asked for a reopen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    Operator,
    Automatic,
}

impl Trigger {
    fn label(self) -> &'static str {
        match self {
            Trigger::Operator => "operator",
            Trigger::Automatic => "automatic",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReopenLabels {
    /// `operator` or `automatic`.
    pub trigger: String,
    /// `ok` or `failed`.
    pub result: String,
}

/// `multisnap_volume_reopens_total`: reopens tried, by trigger and result.
#[derive(Default)]
pub struct Reopens {
    counts: Family<ReopenLabels, Counter>,
}

impl Reopens {
    /// The counter family, for the metrics registry.
    pub fn family(&self) -> Family<ReopenLabels, Counter> {
        self.counts.clone()
    }

    fn count(&self, trigger: Trigger, ok: bool) {
        let labels = ReopenLabels {
            trigger: trigger.label().into(),
            result: if ok { "ok" } else { "failed" }.into(),
        };
        self.counts.get_or_create(&labels).inc();
    }
}

impl Volumes {
    /// Reopens volume `name` in place. FailedPrecondition when it is not failed (nothing to
    /// do, and its state must not be thrown away); the store's error when its files still
    /// fail (it stays failed).
    pub fn reopen(&self, name: &str, trigger: Trigger) -> Result<Arc<Volume>, VolumeError> {
        let v = self
            .get(name)
            .ok_or_else(|| VolumeError::NotFound(name.into()))?;
        let was = v.store.failure();
        match v.store.reopen() {
            Ok(()) => {
                self.reopens().count(trigger, true);
                tracing::info!(volume = %name, trigger = trigger.label(), failure = was.unwrap_or_default(),
                    "volume reopened: it takes writes and flushes again");
                Ok(v)
            }
            Err(multisnap_store::StoreError::NotFailed) => Err(VolumeError::FailedPrecondition(
                format!("volume {name:?} is not failed: it takes writes and flushes, so there is nothing to reopen"),
            )),
            Err(e) => {
                self.reopens().count(trigger, false);
                Err(e.into())
            }
        }
    }
}

/// One volume waiting for space: when it failed, and when and how long before the next try.
struct Waiting {
    since: Instant,
    next: Instant,
    delay: Duration,
}

/// The thread that reopens volumes a full host filesystem stopped, once space returns.
pub fn spawn_recovery(volumes: Arc<Volumes>, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name("volume-recovery".into())
        .spawn(move || {
            let mut waiting = HashMap::new();
            while !stop.load(Ordering::Acquire) {
                recover_some(&volumes, &mut waiting, Instant::now());
                std::thread::sleep(POLL);
            }
        })
        .expect("cannot spawn the volume recovery thread")
}

/// One round: notes newly failed volumes, tries the reopens that are due, forgets volumes
/// that are healthy again (an operator reopened them) or gone.
fn recover_some(volumes: &Volumes, waiting: &mut HashMap<String, Waiting>, now: Instant) {
    let mut seen = Vec::new();
    for v in volumes.list() {
        if v.store.failure_cause() != Some(FailureCause::HostFull) {
            continue;
        }
        seen.push(v.name.clone());
        let w = waiting.entry(v.name.clone()).or_insert_with(|| {
            tracing::warn!(volume = %v.name, retry_in_s = FIRST_RETRY.as_secs(),
                "the volume stopped because its host filesystem is full; it is reopened by itself once there is space");
            Waiting {
                since: now,
                next: now + FIRST_RETRY,
                delay: FIRST_RETRY,
            }
        });
        if now < w.next {
            continue;
        }
        match volumes.reopen(&v.name, Trigger::Automatic) {
            Ok(_) => {
                tracing::info!(volume = %v.name, down_for_s = format!("{:.1}", w.since.elapsed().as_secs_f64()),
                    "the volume recovered by itself: its host filesystem has room again");
                waiting.remove(&v.name);
            }
            Err(e) => {
                w.delay = (w.delay * 2).min(MAX_RETRY);
                w.next = now + w.delay;
                tracing::warn!(volume = %v.name, error = %e, retry_in_s = w.delay.as_secs(),
                    "the volume could not be reopened yet");
            }
        }
    }
    waiting.retain(|name, _| seen.contains(name));
}

//! Continuous mirroring: after each new snapshot of a volume the agent itself sends the
//! incremental delta to a volume on another agent (docs/MIRROR.md).
//!
//! Files by job: `target` (where to, and the connection), `persist` (the mirror file beside
//! the store), `plan` (what a round does, decided from what both agents report), `backoff`
//! (waits after failures), `round` (one round's calls and the stream), `stream` (its
//! compression and bandwidth limit), `worker` (the task that starts rounds when a new snapshot
//! appears or a retry is due).

pub mod backoff;
pub mod persist;
pub mod plan;
pub mod round;
pub mod stream;
pub mod target;
pub mod worker;

use crate::policy::holds::Hold;
use crate::volumes::{Volume, VolumeError};
use multisnap_store::{SnapshotInfo, SnapshotState};
use parking_lot::Mutex;
use persist::{Persisted, Replicated};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use target::MirrorTarget;

/// Why a round failed: the `reason` label of the failures counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureReason {
    /// The target agent could not be reached.
    Connect,
    /// A call to the target failed, or it refused (its volume has another size, ...).
    Target,
    /// The target is busy with an apply the mirror cannot continue.
    Busy,
    /// Reading the delta from this volume failed.
    Export,
    /// The stream was cut, or the target's apply failed.
    Transfer,
    /// The target diverged: the mirror stopped.
    Diverged,
    /// The mirror file could not be written.
    Persist,
}

impl FailureReason {
    pub const ALL: [FailureReason; 7] = [
        FailureReason::Connect,
        FailureReason::Target,
        FailureReason::Busy,
        FailureReason::Export,
        FailureReason::Transfer,
        FailureReason::Diverged,
        FailureReason::Persist,
    ];

    pub fn label(self) -> &'static str {
        match self {
            FailureReason::Connect => "connect",
            FailureReason::Target => "target",
            FailureReason::Busy => "busy",
            FailureReason::Export => "export",
            FailureReason::Transfer => "transfer",
            FailureReason::Diverged => "diverged",
            FailureReason::Persist => "persist",
        }
    }
}

/// Counters since the agent started, for metrics: they go on across a cleared and reset
/// mirror, as Prometheus counters must.
#[derive(Default)]
pub struct MirrorCounters {
    pub bytes_sent: AtomicU64,
    pub syncs: AtomicU64,
    failures: [AtomicU64; FailureReason::ALL.len()],
}

impl MirrorCounters {
    pub fn failed(&self, reason: FailureReason) {
        self.failures[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn failures(&self, reason: FailureReason) -> u64 {
        self.failures[reason as usize].load(Ordering::Relaxed)
    }
}

/// The state shown to users, as in the API's `MirrorState`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Syncing,
    InSync,
    Retrying,
    StoppedDiverged,
}

/// A mirror in force: what is on disk plus what only this run knows.
#[derive(Debug, Clone)]
pub struct Active {
    pub saved: Persisted,
    /// Changes with every SetMirror: a round started for an earlier setting records nothing.
    pub generation: u64,
    /// A round is running.
    pub running: bool,
    /// The snapshot the running round sends (held, like the base, until it ends).
    pub sending: Option<SnapshotRef>,
    pub last_error: Option<String>,
    pub failures_in_row: u32,
    /// No round before this time, after a failed one.
    pub retry_at: Option<SystemTime>,
    /// The last estimate of bytes pending, for (base id, newest id).
    pending_cache: Option<((u64, u64), u64)>,
}

/// A snapshot of this volume, by id and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRef {
    pub id: u64,
    pub name: String,
}

impl Active {
    fn new(saved: Persisted, generation: u64) -> Active {
        Active {
            saved,
            generation,
            running: false,
            sending: None,
            last_error: None,
            failures_in_row: 0,
            retry_at: None,
            pending_cache: None,
        }
    }

    /// The state, given whether the volume has snapshots the target lacks: a mirror between
    /// rounds with something left to send is syncing (its round starts within a tick), not
    /// in sync.
    pub fn phase(&self, lacking: bool) -> Phase {
        if self.saved.stopped.is_some() {
            Phase::StoppedDiverged
        } else if self.retry_at.is_some() && !self.running {
            Phase::Retrying
        } else if self.running || lacking {
            Phase::Syncing
        } else {
            Phase::InSync
        }
    }
}

/// Lag and bytes pending, at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Behind {
    /// Snapshots of the volume the target lacks.
    pub snapshots: u64,
    /// Seconds since the oldest snapshot the target lacks was taken.
    pub lag_seconds: u64,
    /// Estimated delta bytes from the base to the newest snapshot.
    pub bytes_pending: u64,
}

/// One volume's mirror slot: none, or the mirror in force; and its counters.
pub struct MirrorSlot {
    /// The volume's folder, where the mirror file lives; `None` for volumes not on disk
    /// (unit tests), whose mirror is not saved.
    dir: Option<PathBuf>,
    pub state: Mutex<Option<Active>>,
    generations: AtomicU64,
    pub counters: MirrorCounters,
}

impl MirrorSlot {
    pub fn empty(dir: Option<PathBuf>) -> MirrorSlot {
        MirrorSlot {
            dir,
            state: Mutex::new(None),
            generations: AtomicU64::new(0),
            counters: MirrorCounters::default(),
        }
    }

    /// The slot of a volume opened from `dir`, with the mirror saved there, if any. A file that
    /// cannot be read, or that belongs to another volume, leaves the volume without a mirror
    /// (logged); the volume is served all the same.
    pub fn load(dir: &Path, volume: &str, uuid: &str) -> MirrorSlot {
        let slot = MirrorSlot::empty(Some(dir.to_path_buf()));
        match persist::load(dir) {
            Ok(Some(p)) if p.volume_uuid == uuid => {
                tracing::info!(
                    volume,
                    target = %p.target.endpoint,
                    target_volume = %p.target.volume,
                    replicated = ?p.replicated.as_ref().map(|r| &r.name),
                    stopped = ?p.stopped,
                    "mirror loaded"
                );
                *slot.state.lock() = Some(Active::new(p, 0));
            }
            Ok(Some(p)) => {
                tracing::error!(volume, file_uuid = %p.volume_uuid, volume_uuid = uuid, "the mirror file belongs to another volume; ignored (SetMirror replaces it)");
            }
            Ok(None) => {}
            Err(e) => {
                tracing::error!(volume, error = %e, "cannot load the volume's mirror; it has none until SetMirror");
            }
        }
        slot
    }

    fn write(&self, saved: &Persisted) -> std::io::Result<()> {
        match &self.dir {
            Some(dir) => persist::save(dir, saved),
            None => Ok(()),
        }
    }

    /// Sets or replaces the mirror. The same target again keeps what was replicated (and
    /// restarts a stopped mirror); another target starts from nothing.
    pub fn set(&self, target: MirrorTarget, uuid: &str) -> Result<Active, VolumeError> {
        let mut state = self.state.lock();
        let replicated = match state.as_ref() {
            Some(a)
                if a.saved.target.endpoint == target.endpoint
                    && a.saved.target.volume == target.volume =>
            {
                a.saved.replicated.clone()
            }
            _ => None,
        };
        let saved = Persisted {
            volume_uuid: uuid.to_string(),
            target,
            replicated,
            stopped: None,
        };
        self.write(&saved).map_err(|source| VolumeError::Io {
            what: "cannot save the mirror".into(),
            source,
        })?;
        let generation = self.generations.fetch_add(1, Ordering::Relaxed) + 1;
        let active = Active::new(saved, generation);
        *state = Some(active.clone());
        Ok(active)
    }

    /// Removes the mirror; whether there was one. A round still running records nothing.
    pub fn clear(&self) -> Result<bool, VolumeError> {
        let mut state = self.state.lock();
        if let Some(dir) = &self.dir {
            persist::remove(dir).map_err(|source| VolumeError::Io {
                what: "cannot remove the mirror".into(),
                source,
            })?;
        }
        Ok(state.take().is_some())
    }

    /// For a volume being deleted: removes the mirror file and stops the mirror.
    pub fn retire(&self) -> std::io::Result<()> {
        let mut state = self.state.lock();
        *state = None;
        match &self.dir {
            Some(dir) => persist::remove(dir),
            None => Ok(()),
        }
    }

    pub fn get(&self) -> Option<Active> {
        self.state.lock().clone()
    }

    /// Applies `change` to the mirror of `generation` and writes the file if `change` says the
    /// saved part changed. Nothing happens if the mirror was cleared or set anew meanwhile.
    pub fn update(
        &self,
        generation: u64,
        change: impl FnOnce(&mut Active) -> bool,
    ) -> Option<std::io::Result<()>> {
        let mut state = self.state.lock();
        let active = state.as_mut().filter(|a| a.generation == generation)?;
        let before = active.saved.clone();
        if !change(active) {
            return Some(Ok(()));
        }
        let r = self.write(&active.saved);
        if r.is_err() {
            // Memory follows the file, so what is shown and held is what a restart finds.
            active.saved = before;
        }
        Some(r)
    }
}

/// Unix seconds of `t` (0 before the epoch).
pub fn unix_secs(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The volume's ready snapshots, oldest first.
pub fn ready_snapshots(v: &Volume) -> Vec<SnapshotInfo> {
    let mut s: Vec<SnapshotInfo> = v
        .store
        .list_snapshots()
        .into_iter()
        .filter(|s| s.state == SnapshotState::Ready && !s.name.starts_with('.'))
        .collect();
    s.sort_by_key(|s| s.id.0);
    s
}

/// How far the target is behind, at `now`. The lag counts from the oldest snapshot the target
/// lacks, not the newest: a mirror that is stuck must look older with every snapshot taken,
/// not younger.
pub fn behind(v: &Volume, now: SystemTime) -> Behind {
    let (base_id, generation) = {
        let state = v.mirror.state.lock();
        let Some(a) = state.as_ref() else {
            return Behind::default();
        };
        (a.saved.replicated.as_ref().map(|r| r.id), a.generation)
    };
    let snaps = ready_snapshots(v);
    let missing: Vec<&SnapshotInfo> = snaps
        .iter()
        .filter(|s| base_id.is_none_or(|b| s.id.0 > b))
        .collect();
    let (Some(oldest), Some(newest)) = (missing.first(), missing.last()) else {
        return Behind::default();
    };
    let lag_seconds = now
        .duration_since(oldest.created_at)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    let key = (base_id.unwrap_or(0), newest.id.0);
    let cached = v
        .mirror
        .get()
        .and_then(|a| a.pending_cache.filter(|(k, _)| *k == key));
    let bytes_pending = match cached {
        Some((_, n)) => n,
        None => {
            let n = estimate_pending(v, base_id, newest);
            v.mirror.update(generation, |a| {
                a.pending_cache = Some((key, n));
                false
            });
            n
        }
    };
    Behind {
        snapshots: missing.len() as u64,
        lag_seconds,
        bytes_pending,
    }
}

/// Chunks the delta from `base` to `newest` carries, times the chunk size: the export's own
/// chunk list, read from the changed-extent index (cost follows the changes).
fn estimate_pending(v: &Volume, base: Option<u64>, newest: &SnapshotInfo) -> u64 {
    let base = base.and_then(|id| v.store.snapshot(multisnap_store::SnapshotId(id)).ok());
    let plan = multisnap_replication::export::ExportPlan {
        base,
        target: newest.clone(),
        resume: None,
        // Only the chunk list is read: compression does not change which chunks travel.
        compression: None,
    };
    match multisnap_replication::export::chunk_runs(&v.store, &plan) {
        Ok(runs) => runs.iter().map(|(_, n)| n).sum::<u64>() * u64::from(v.store.chunk_size()),
        Err(e) => {
            tracing::debug!(volume = %v.name, error = %e, "cannot estimate the mirror's pending bytes");
            0
        }
    }
}

/// The mirror's base snapshot (and the one a running round sends) stays until the target has
/// a newer one: without it the next incremental could not be made.
pub struct MirrorBase;

impl Hold for MirrorBase {
    fn holder(&self, volume: &Volume, snapshot: &SnapshotInfo) -> Option<String> {
        let state = volume.mirror.state.lock();
        let a = state.as_ref()?;
        let to = format!(
            "the mirror to {} {}",
            a.saved.target.endpoint, a.saved.target.volume
        );
        if a.saved
            .replicated
            .as_ref()
            .is_some_and(|r| r.id == snapshot.id.0)
        {
            Some(format!("{to} (its base)"))
        } else if a.sending.as_ref().is_some_and(|s| s.id == snapshot.id.0) {
            Some(format!("{to} (being sent)"))
        } else {
            None
        }
    }
}

/// The record of a snapshot the target confirmed.
pub fn replicated_now(s: &SnapshotRef) -> Replicated {
    Replicated {
        id: s.id,
        name: s.name.clone(),
        at: unix_secs(SystemTime::now()),
    }
}

#[cfg(test)]
mod tests {
    use super::target::TlsFiles;
    use super::*;

    fn active() -> Active {
        let target = MirrorTarget::check("h:1", "r", TlsFiles::default()).unwrap();
        Active::new(
            Persisted {
                volume_uuid: "u".into(),
                target,
                replicated: None,
                stopped: None,
            },
            1,
        )
    }

    #[test]
    fn the_state_follows_stop_retry_round_and_what_is_lacking() {
        let mut a = active();
        assert_eq!(a.phase(false), Phase::InSync);
        assert_eq!(a.phase(true), Phase::Syncing);
        a.retry_at = Some(SystemTime::now());
        assert_eq!(a.phase(true), Phase::Retrying);
        a.running = true;
        assert_eq!(a.phase(false), Phase::Syncing);
        a.saved.stopped = Some("diverged".into());
        assert_eq!(a.phase(false), Phase::StoppedDiverged);
    }

    /// A round of an earlier setting records nothing into the current one.
    #[test]
    fn updates_of_another_generation_are_dropped() {
        let slot = MirrorSlot::empty(None);
        let target = MirrorTarget::check("h:1", "r", TlsFiles::default()).unwrap();
        let first = slot.set(target.clone(), "u").unwrap().generation;
        let second = slot.set(target, "u").unwrap().generation;
        assert_ne!(first, second);
        assert!(slot
            .update(first, |a| {
                a.running = true;
                true
            })
            .is_none());
        assert!(!slot.get().unwrap().running);
        assert!(slot
            .update(second, |a| {
                a.running = true;
                true
            })
            .is_some());
        assert!(slot.get().unwrap().running);
        assert!(slot.clear().unwrap());
        assert!(slot.update(second, |_| true).is_none());
    }
}

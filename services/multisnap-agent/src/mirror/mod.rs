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
use persist::{MirrorFile, Persisted, Replicated};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
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

/// One target's counters since the agent started, for metrics: they go on across a cleared
/// and reset mirror, as Prometheus counters must.
#[derive(Debug, Default)]
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

/// Which of a volume's mirrors: the target agent's endpoint and the volume there. Two mirrors
/// of one volume never share both, as two streams into one target volume would undo each
/// other; a name beside it would only allow that conflict under two names.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MirrorKey {
    /// The endpoint as the agent writes it (`http://` added to a bare `HOST:PORT`).
    pub endpoint: String,
    pub volume: String,
}

impl MirrorKey {
    pub fn of(t: &MirrorTarget) -> MirrorKey {
        MirrorKey {
            endpoint: t.endpoint.to_string(),
            volume: t.volume.clone(),
        }
    }

    /// The `target` label of the mirror series: `ENDPOINT/VOLUME`.
    pub fn label(&self) -> String {
        format!("{}/{}", self.endpoint, self.volume)
    }
}

impl std::fmt::Display for MirrorKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.endpoint, self.volume)
    }
}

/// The most mirrors one volume may have: each runs its own rounds and holds its own base on
/// the source, so a volume with dozens would mostly cost store space and export reads.
pub const MAX_MIRRORS: usize = 8;

/// Which mirror a GetMirror or ClearMirror means: the parts given must match, and an empty
/// selector matches every mirror (an older client's request names the volume only).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MirrorSelector {
    pub endpoint: Option<target::Endpoint>,
    pub volume: Option<String>,
}

impl MirrorSelector {
    /// From the API's fields (empty: not given); a malformed endpoint names itself.
    pub fn from_api(endpoint: &str, volume: &str) -> Result<MirrorSelector, String> {
        Ok(MirrorSelector {
            endpoint: (!endpoint.is_empty())
                .then(|| target::Endpoint::parse(endpoint))
                .transpose()?,
            volume: (!volume.is_empty()).then(|| volume.to_string()),
        })
    }

    fn matches(&self, t: &MirrorTarget) -> bool {
        self.endpoint.as_ref().is_none_or(|e| *e == t.endpoint)
            && self.volume.as_ref().is_none_or(|v| *v == t.volume)
    }

    fn is_empty(&self) -> bool {
        self.endpoint.is_none() && self.volume.is_none()
    }
}

/// A mirror in force: what is on disk plus what only this run knows.
#[derive(Debug, Clone)]
pub struct Active {
    pub saved: Persisted,
    /// Names this mirror in this run, unique among the volume's mirrors, and changes with
    /// every SetMirror: a round started for an earlier setting (or a cleared mirror) records
    /// nothing.
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

    pub fn key(&self) -> MirrorKey {
        MirrorKey::of(&self.saved.target)
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

    /// The snapshots this mirror needs kept: its base and the one it is sending.
    fn needs(&self, snapshot: u64) -> Option<&'static str> {
        if self
            .saved
            .replicated
            .as_ref()
            .is_some_and(|r| r.id == snapshot)
        {
            Some("its base")
        } else if self.sending.as_ref().is_some_and(|s| s.id == snapshot) {
            Some("being sent")
        } else {
            None
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

/// A volume's mirrors in force, in the order they were first set.
struct Mirrors {
    /// The volume the mirror file belongs to (set with the first mirror).
    volume_uuid: String,
    list: Vec<Active>,
}

impl Mirrors {
    fn file(&self) -> MirrorFile {
        MirrorFile {
            volume_uuid: self.volume_uuid.clone(),
            mirrors: self.list.iter().map(|a| a.saved.clone()).collect(),
        }
    }

    /// The one mirror `sel` picks; `None` when none matches. Several matching is an error
    /// that lists them, for a request that must name one.
    fn pick(&self, sel: &MirrorSelector, volume: &str) -> Result<Option<usize>, VolumeError> {
        let found: Vec<usize> = (0..self.list.len())
            .filter(|i| sel.matches(&self.list[*i].saved.target))
            .collect();
        match found.as_slice() {
            [] => Ok(None),
            [one] => Ok(Some(*one)),
            many => Err(VolumeError::FailedPrecondition(format!(
                "volume {volume:?} has {} mirrors{}: {}; name one with its endpoint and target volume",
                many.len(),
                if sel.is_empty() { "" } else { " matching" },
                many.iter()
                    .map(|i| self.list[*i].key().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }
}

/// One volume's mirrors and their counters.
pub struct MirrorSlot {
    /// The volume's folder, where the mirror file lives; `None` for volumes not on disk
    /// (unit tests), whose mirrors are not saved.
    dir: Option<PathBuf>,
    state: Mutex<Mirrors>,
    generations: AtomicU64,
    /// Every target's counters since the agent started: they go on across a cleared and
    /// reset mirror, as Prometheus counters must.
    counters: Mutex<Vec<(MirrorKey, Arc<MirrorCounters>)>>,
}

impl MirrorSlot {
    pub fn empty(dir: Option<PathBuf>) -> MirrorSlot {
        MirrorSlot {
            dir,
            state: Mutex::new(Mirrors {
                volume_uuid: String::new(),
                list: Vec::new(),
            }),
            generations: AtomicU64::new(0),
            counters: Mutex::new(Vec::new()),
        }
    }

    /// The slot of a volume opened from `dir`, with the mirrors saved there, if any. A file
    /// that cannot be read, or that belongs to another volume, leaves the volume without
    /// mirrors (logged); the volume is served all the same.
    pub fn load(dir: &Path, volume: &str, uuid: &str) -> MirrorSlot {
        let slot = MirrorSlot::empty(Some(dir.to_path_buf()));
        match persist::load(dir) {
            Ok(Some(f)) if f.volume_uuid == uuid => {
                let mut state = slot.state.lock();
                state.volume_uuid = f.volume_uuid;
                for p in f.mirrors {
                    tracing::info!(
                        volume,
                        target = %p.target.endpoint,
                        target_volume = %p.target.volume,
                        replicated = ?p.replicated.as_ref().map(|r| &r.name),
                        stopped = ?p.stopped,
                        "mirror loaded"
                    );
                    // Its series show from the start, not from its first round.
                    slot.counters_for(&MirrorKey::of(&p.target));
                    state.list.push(Active::new(p, slot.next_generation()));
                }
            }
            Ok(Some(f)) => {
                tracing::error!(volume, file_uuid = %f.volume_uuid, volume_uuid = uuid, "the mirror file belongs to another volume; ignored (SetMirror replaces it)");
            }
            Ok(None) => {}
            Err(e) => {
                tracing::error!(volume, error = %e, "cannot load the volume's mirrors; it has none until SetMirror");
            }
        }
        slot
    }

    fn next_generation(&self) -> u64 {
        self.generations.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// The counters of the mirror to `key`, made at its first use.
    pub fn counters_for(&self, key: &MirrorKey) -> Arc<MirrorCounters> {
        let mut all = self.counters.lock();
        if let Some((_, c)) = all.iter().find(|(k, _)| k == key) {
            return c.clone();
        }
        let c = Arc::new(MirrorCounters::default());
        all.push((key.clone(), c.clone()));
        c
    }

    /// Every target this volume mirrored to since the agent started, with its counters.
    pub fn all_counters(&self) -> Vec<(MirrorKey, Arc<MirrorCounters>)> {
        self.counters.lock().clone()
    }

    fn write(&self, mirrors: &MirrorFile) -> std::io::Result<()> {
        match &self.dir {
            Some(dir) => persist::save(dir, mirrors),
            None => Ok(()),
        }
    }

    /// Adds a mirror, or replaces the one to the same endpoint and volume: that keeps what
    /// was replicated (and restarts it if it stopped). A volume has at most [`MAX_MIRRORS`].
    pub fn set(
        &self,
        volume: &str,
        target: MirrorTarget,
        uuid: &str,
    ) -> Result<Active, VolumeError> {
        let mut state = self.state.lock();
        let key = MirrorKey::of(&target);
        let at = state.list.iter().position(|a| a.key() == key);
        if at.is_none() && state.list.len() >= MAX_MIRRORS {
            return Err(VolumeError::FailedPrecondition(format!(
                "volume {volume:?} has {MAX_MIRRORS} mirrors, the most a volume may have ({}); clear one first",
                state.list.iter().map(|a| a.key().to_string()).collect::<Vec<_>>().join(", ")
            )));
        }
        let saved = Persisted {
            replicated: at.and_then(|i| state.list[i].saved.replicated.clone()),
            target,
            stopped: None,
        };
        let mut file = state.file();
        file.volume_uuid = uuid.to_string();
        match at {
            Some(i) => file.mirrors[i] = saved.clone(),
            None => file.mirrors.push(saved.clone()),
        }
        self.write(&file).map_err(|source| VolumeError::Io {
            what: "cannot save the mirror".into(),
            source,
        })?;
        self.counters_for(&key);
        let active = Active::new(saved, self.next_generation());
        state.volume_uuid = file.volume_uuid;
        match at {
            Some(i) => state.list[i] = active.clone(),
            None => state.list.push(active.clone()),
        }
        Ok(active)
    }

    /// The one mirror `sel` picks: NOT_FOUND when none matches, FAILED_PRECONDITION listing
    /// them when several do.
    pub fn select(&self, volume: &str, sel: &MirrorSelector) -> Result<Active, VolumeError> {
        let state = self.state.lock();
        match state.pick(sel, volume)? {
            Some(i) => Ok(state.list[i].clone()),
            None if state.list.is_empty() => Err(VolumeError::NoMirror(volume.to_string())),
            None => Err(VolumeError::NoSuchMirror(format!(
                "volume {volume:?} has no mirror to {}{}; it has: {}",
                sel.endpoint
                    .as_ref()
                    .map_or("any endpoint".into(), |e| e.to_string()),
                sel.volume
                    .as_ref()
                    .map_or(String::new(), |v| format!(" {v}")),
                state
                    .list
                    .iter()
                    .map(|a| a.key().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    /// Removes the mirror `sel` picks; which one, or `None` if none matched. A round still
    /// running for it records nothing.
    pub fn clear(
        &self,
        volume: &str,
        sel: &MirrorSelector,
    ) -> Result<Option<MirrorKey>, VolumeError> {
        let mut state = self.state.lock();
        let Some(i) = state.pick(sel, volume)? else {
            return Ok(None);
        };
        let mut file = state.file();
        file.mirrors.remove(i);
        self.write(&file).map_err(|source| VolumeError::Io {
            what: "cannot remove the mirror".into(),
            source,
        })?;
        Ok(Some(state.list.remove(i).key()))
    }

    /// For a volume being deleted: removes the mirror file and stops every mirror.
    pub fn retire(&self) -> std::io::Result<()> {
        let mut state = self.state.lock();
        state.list.clear();
        match &self.dir {
            Some(dir) => persist::remove(dir),
            None => Ok(()),
        }
    }

    /// Every mirror, in the order they were first set.
    pub fn list(&self) -> Vec<Active> {
        self.state.lock().list.clone()
    }

    pub fn is_empty(&self) -> bool {
        self.state.lock().list.is_empty()
    }

    /// The mirror of `generation`, unless it was cleared or set anew.
    pub fn get(&self, generation: u64) -> Option<Active> {
        let state = self.state.lock();
        state
            .list
            .iter()
            .find(|a| a.generation == generation)
            .cloned()
    }

    /// Marks running, and returns, every mirror `due` says needs a round now.
    pub fn start_rounds(&self, due: impl Fn(&Active) -> bool) -> Vec<(MirrorTarget, u64)> {
        let mut state = self.state.lock();
        state
            .list
            .iter_mut()
            .filter(|a| !a.running && due(a))
            .map(|a| {
                a.running = true;
                (a.saved.target.clone(), a.generation)
            })
            .collect()
    }

    /// Applies `change` to the mirror of `generation` and writes the file if `change` says the
    /// saved part changed. Nothing happens if the mirror was cleared or set anew meanwhile.
    pub fn update(
        &self,
        generation: u64,
        change: impl FnOnce(&mut Active) -> bool,
    ) -> Option<std::io::Result<()>> {
        let mut state = self.state.lock();
        let i = state.list.iter().position(|a| a.generation == generation)?;
        let before = state.list[i].saved.clone();
        if !change(&mut state.list[i]) {
            return Some(Ok(()));
        }
        let r = self.write(&state.file());
        if r.is_err() {
            // Memory follows the file, so what is shown and held is what a restart finds.
            state.list[i].saved = before;
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

/// How far `mirror`'s target is behind, at `now`. The lag counts from the oldest snapshot the
/// target lacks, not the newest: a mirror that is stuck must look older with every snapshot
/// taken, not younger.
pub fn behind(v: &Volume, mirror: &Active, now: SystemTime) -> Behind {
    let base_id = mirror.saved.replicated.as_ref().map(|r| r.id);
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
        .get(mirror.generation)
        .and_then(|a| a.pending_cache.filter(|(k, _)| *k == key));
    let bytes_pending = match cached {
        Some((_, n)) => n,
        None => {
            let n = estimate_pending(v, base_id, newest);
            v.mirror.update(mirror.generation, |a| {
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

/// Every mirror's base snapshot (and the one its running round sends) stays until its target
/// has a newer one: without it that mirror's next incremental could not be made. A snapshot
/// is free to prune only when no mirror needs it; all that need it are named.
pub struct MirrorBase;

impl Hold for MirrorBase {
    fn holder(&self, volume: &Volume, snapshot: &SnapshotInfo) -> Option<String> {
        let state = volume.mirror.state.lock();
        let holders: Vec<String> = state
            .list
            .iter()
            .filter_map(|a| {
                let why = a.needs(snapshot.id.0)?;
                Some(format!("the mirror to {} ({why})", a.key()))
            })
            .collect();
        (!holders.is_empty()).then(|| holders.join(", "))
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
    use proptest::prelude::*;

    fn target(endpoint: &str, volume: &str) -> MirrorTarget {
        MirrorTarget::check(endpoint, volume, TlsFiles::default()).unwrap()
    }

    fn active() -> Active {
        Active::new(
            Persisted {
                target: target("h:1", "r"),
                replicated: None,
                stopped: None,
            },
            1,
        )
    }

    fn sel(endpoint: &str, volume: &str) -> MirrorSelector {
        MirrorSelector::from_api(endpoint, volume).unwrap()
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

    /// A round of an earlier setting records nothing into the current one, nor into another
    /// mirror of the volume.
    #[test]
    fn updates_of_another_generation_are_dropped() {
        let slot = MirrorSlot::empty(None);
        let first = slot.set("v", target("h:1", "r"), "u").unwrap().generation;
        let second = slot.set("v", target("h:1", "r"), "u").unwrap().generation;
        let other = slot.set("v", target("h:2", "r"), "u").unwrap().generation;
        assert_ne!(first, second);
        assert!(slot
            .update(first, |a| {
                a.running = true;
                true
            })
            .is_none());
        assert!(!slot.get(second).unwrap().running);
        assert!(slot
            .update(second, |a| {
                a.running = true;
                true
            })
            .is_some());
        assert!(slot.get(second).unwrap().running);
        assert!(!slot.get(other).unwrap().running);
        assert!(slot.clear("v", &sel("h:1", "r")).unwrap().is_some());
        assert!(slot.update(second, |_| true).is_none());
        assert!(slot.get(other).is_some());
    }

    /// Mirrors are told apart by endpoint and target volume: the same pair replaces (keeping
    /// its progress), another adds; an older client's request without them works while there
    /// is one mirror and is refused, with the list, when there are several.
    #[test]
    fn mirrors_are_picked_by_endpoint_and_target_volume() {
        let slot = MirrorSlot::empty(None);
        slot.set("v", target("h:1", "r"), "u").unwrap();
        let g = slot.list()[0].generation;
        slot.update(g, |a| {
            a.saved.replicated = Some(replicated_now(&SnapshotRef {
                id: 4,
                name: "s4".into(),
            }));
            true
        });
        assert_eq!(
            slot.select("v", &MirrorSelector::default())
                .unwrap()
                .key()
                .endpoint,
            "http://h:1"
        );
        // The same target again, spelled with its scheme: replaced, progress kept.
        let again = slot.set("v", target("http://h:1", "r"), "u").unwrap();
        assert_eq!(again.saved.replicated.map(|r| r.id), Some(4));
        assert_eq!(slot.list().len(), 1);
        slot.set("v", target("h:1", "r2"), "u").unwrap();
        slot.set("v", target("unix:/s", "r"), "u").unwrap();
        assert_eq!(slot.list().len(), 3);
        let e = slot
            .select("v", &MirrorSelector::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("3 mirrors") && e.contains("http://h:1 r2") && e.contains("unix:/s r"),
            "{e}"
        );
        let e = slot.select("v", &sel("h:1", "")).unwrap_err().to_string();
        assert!(e.contains("2 mirrors matching"), "{e}");
        assert_eq!(slot.select("v", &sel("", "r2")).unwrap().key().volume, "r2");
        let e = slot.select("v", &sel("h:9", "r")).unwrap_err();
        assert!(matches!(e, VolumeError::NoSuchMirror(_)), "{e}");
        assert!(e.to_string().contains("no mirror to http://h:9 r"), "{e}");
        assert!(slot.clear("v", &MirrorSelector::default()).is_err());
        assert_eq!(slot.clear("v", &sel("h:9", "r")).unwrap(), None);
        assert!(MirrorSelector::from_api("ftp://x", "")
            .unwrap_err()
            .contains("ftp://x"));
    }

    #[test]
    fn a_volume_has_at_most_eight_mirrors() {
        let slot = MirrorSlot::empty(None);
        for n in 0..MAX_MIRRORS {
            slot.set("v", target(&format!("h:{}", n + 1), "r"), "u")
                .unwrap();
        }
        let e = slot.set("v", target("h:99", "r"), "u").unwrap_err();
        assert!(matches!(e, VolumeError::FailedPrecondition(_)), "{e}");
        assert!(e.to_string().contains("8 mirrors, the most"), "{e}");
        // Replacing one of them is not adding.
        slot.set("v", target("h:3", "r"), "u").unwrap();
        slot.clear("v", &sel("h:1", "r")).unwrap().unwrap();
        slot.set("v", target("h:99", "r"), "u").unwrap();
    }

    /// A snapshot stays while any mirror needs it (as its base or being sent), with every
    /// such mirror named, and is free once none does.
    #[test]
    fn a_snapshot_is_held_while_any_mirror_needs_it() {
        let v = crate::volumes::volume_for_tests();
        for name in ["s1", "s2", "s3"] {
            v.store.create_snapshot(name).unwrap();
        }
        let snaps = ready_snapshots(&v);
        let id = |n: usize| snaps[n].id.0;
        let near = v
            .mirror
            .set("v", target("near:1", "r"), "u")
            .unwrap()
            .generation;
        let far = v
            .mirror
            .set("v", target("far:1", "r"), "u")
            .unwrap()
            .generation;
        let base = |g: u64, n: usize| {
            v.mirror.update(g, |a| {
                a.saved.replicated = Some(replicated_now(&SnapshotRef {
                    id: id(n),
                    name: snaps[n].name.clone(),
                }));
                true
            });
        };
        base(near, 2);
        base(far, 0);
        v.mirror.update(far, |a| {
            a.sending = Some(SnapshotRef {
                id: id(1),
                name: "s2".into(),
            });
            false
        });
        let holds = crate::policy::holds::Holds::store_only().with(Box::new(MirrorBase));
        let held = |n: usize| holds.holder(&v, &snaps[n]);
        assert_eq!(
            held(0).as_deref(),
            Some("the mirror to http://far:1 r (its base)")
        );
        assert_eq!(
            held(1).as_deref(),
            Some("the mirror to http://far:1 r (being sent)")
        );
        assert_eq!(
            held(2).as_deref(),
            Some("the mirror to http://near:1 r (its base)")
        );
        // The far target catches up to the near one's base: both hold it, s1 and s2 are free.
        base(far, 2);
        v.mirror.update(far, |a| {
            a.sending = None;
            false
        });
        assert_eq!(held(0), None);
        assert_eq!(held(1), None);
        assert_eq!(
            held(2).as_deref(),
            Some(
                "the mirror to http://near:1 r (its base), the mirror to http://far:1 r (its base)"
            )
        );
        v.mirror.clear("v", &sel("near:1", "r")).unwrap().unwrap();
        assert_eq!(
            held(2).as_deref(),
            Some("the mirror to http://far:1 r (its base)")
        );
        v.mirror
            .clear("v", &MirrorSelector::default())
            .unwrap()
            .unwrap();
        assert_eq!(held(2), None);
    }

    /// What a model of the mirrors (a list of target, base, stopped) says after any sequence
    /// of sets, records, stops, clears and agent restarts is what the slot shows and what a
    /// restart reads back from its file.
    #[derive(Debug, Clone)]
    enum Op {
        Set(usize),
        Record(usize, u64),
        Stop(usize),
        Clear(usize),
        Restart,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0..10usize).prop_map(Op::Set),
            3 => (0..10usize, 1..100u64).prop_map(|(t, id)| Op::Record(t, id)),
            1 => (0..10usize).prop_map(Op::Stop),
            2 => (0..10usize).prop_map(Op::Clear),
            1 => Just(Op::Restart),
        ]
    }

    type Model = Vec<(MirrorKey, Option<u64>, bool)>;

    fn seen(slot: &MirrorSlot) -> Model {
        slot.list()
            .iter()
            .map(|a| {
                (
                    a.key(),
                    a.saved.replicated.as_ref().map(|r| r.id),
                    a.saved.stopped.is_some(),
                )
            })
            .collect()
    }

    proptest! {
        #[test]
        fn the_slot_and_its_file_follow_a_model(ops in proptest::collection::vec(op(), 1..40)) {
            let dir = tempfile::tempdir().unwrap();
            let mut slot = MirrorSlot::empty(Some(dir.path().to_path_buf()));
            let mut model: Model = Vec::new();
            let t = |n: usize| target(&format!("h:{}", n + 1), "r");
            for op in ops {
                match op {
                    Op::Set(n) => {
                        let key = MirrorKey::of(&t(n));
                        let at = model.iter().position(|m| m.0 == key);
                        let r = slot.set("v", t(n), "u");
                        match at {
                            Some(i) => model[i].2 = false,
                            None if model.len() < MAX_MIRRORS => model.push((key, None, false)),
                            None => {
                                prop_assert!(r.is_err());
                                continue;
                            }
                        }
                        prop_assert!(r.is_ok());
                    }
                    Op::Record(n, _) | Op::Stop(n) if n >= model.len() => {}
                    Op::Record(n, id) => {
                        let g = slot.list()[n].generation;
                        slot.update(g, |a| {
                            a.saved.replicated = Some(replicated_now(&SnapshotRef { id, name: format!("s{id}") }));
                            true
                        }).unwrap().unwrap();
                        model[n].1 = Some(id);
                    }
                    Op::Stop(n) => {
                        let g = slot.list()[n].generation;
                        slot.update(g, |a| {
                            a.saved.stopped = Some("diverged".into());
                            true
                        }).unwrap().unwrap();
                        model[n].2 = true;
                    }
                    Op::Clear(n) => {
                        let key = MirrorKey::of(&t(n));
                        let s = MirrorSelector { endpoint: Some(t(n).endpoint), volume: Some("r".into()) };
                        let got = slot.clear("v", &s).unwrap();
                        let at = model.iter().position(|m| m.0 == key);
                        prop_assert_eq!(got.is_some(), at.is_some());
                        if let Some(i) = at {
                            model.remove(i);
                        }
                    }
                    Op::Restart => slot = MirrorSlot::load(dir.path(), "v", "u"),
                }
                prop_assert_eq!(&seen(&slot), &model);
                prop_assert_eq!(persist::path_in(dir.path()).exists(), !model.is_empty());
            }
            prop_assert_eq!(seen(&MirrorSlot::load(dir.path(), "v", "u")), model);
        }
    }
}

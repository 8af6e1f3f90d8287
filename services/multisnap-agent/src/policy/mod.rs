//! Snapshot policies: per volume, snapshots taken every interval or at the times of a cron-like
//! schedule under a name template, and the ones the policy took pruned by retention classes
//! (docs/POLICY.md).
//!
//! Files by job: `calendar` (UTC dates, ISO weeks, the classes' buckets), `cron` (schedules),
//! `timing` (when snapshots are due, by interval or schedule), `template` (names),
//! `retention` (the kept set), `persist` (the policy file beside the store), `clock` (system
//! or test clock), `holds` (what pruning must leave alone), `scheduler` (the thread that
//! takes and prunes).

pub mod calendar;
pub mod clock;
pub mod cron;
pub mod holds;
pub mod persist;
pub mod retention;
pub mod scheduler;
pub mod template;
pub mod timing;

use crate::volumes::VolumeError;
use calendar::UnixSecs;
use parking_lot::Mutex;
use persist::{Persisted, Record};
use retention::Retention;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use template::NameTemplate;
use timing::Timing;

/// Shortest interval: the scheduler looks once a second, and a snapshot a second would fill
/// a store's snapshot table in hours.
pub const MIN_INTERVAL: i64 = 60;
/// Longest interval: a leap year.
pub const MAX_INTERVAL: i64 = 366 * calendar::DAY;
/// Most snapshots a class may keep.
pub const MAX_KEEP: u32 = 10_000;
/// Longest age limit: a hundred years.
pub const MAX_AGE: u64 = 100 * 366 * calendar::DAY as u64;

/// A checked policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicySpec {
    /// When snapshots are due.
    pub timing: Timing,
    pub template: NameTemplate,
    pub retention: Retention,
}

/// A policy as asked for, before checking.
#[derive(Debug, Clone, Default)]
pub struct PolicyRequest {
    /// 0 when `schedule` is given.
    pub interval_seconds: u64,
    /// A cron-like schedule; empty when `interval_seconds` is given.
    pub schedule: String,
    /// Empty: [`template::DEFAULT_TEMPLATE`].
    pub name_template: String,
    pub retention: Retention,
}

impl PolicySpec {
    /// Checks a requested policy; the error names the field and the limit.
    pub fn check(req: &PolicyRequest) -> Result<PolicySpec, VolumeError> {
        let bad = |m: String| Err(VolumeError::InvalidArgument(m));
        let timing = Self::check_timing(req).map_err(VolumeError::InvalidArgument)?;
        let r = &req.retention;
        for class in calendar::Class::ALL {
            let n = r.count(class);
            if n > MAX_KEEP {
                return bad(format!(
                    "keep_{} {n} is more than the limit of {MAX_KEEP}",
                    class.name()
                ));
            }
        }
        let floor = timing.shortest_gap();
        if r.max_age != 0 && (r.max_age < floor as u64 || r.max_age > MAX_AGE) {
            return bad(format!(
                "max_age_seconds {} is out of range: 0 (no limit) or from the {} ({floor}) to {MAX_AGE} (100 years)",
                r.max_age,
                match timing {
                    Timing::Every(_) => "interval",
                    Timing::Schedule(_) => "schedule's shortest gap",
                }
            ));
        }
        let text = if req.name_template.is_empty() {
            template::DEFAULT_TEMPLATE
        } else {
            &req.name_template
        };
        let template =
            NameTemplate::parse(text, timing.name_gap()).map_err(VolumeError::InvalidArgument)?;
        Ok(PolicySpec {
            timing,
            template,
            retention: *r,
        })
    }

    /// Exactly one of the interval and the schedule, each within its limits.
    fn check_timing(req: &PolicyRequest) -> Result<Timing, String> {
        let interval = req.interval_seconds;
        if !req.schedule.is_empty() {
            if interval != 0 {
                return Err(format!(
                    "interval_seconds {interval} and schedule {:?} are both set: give one",
                    req.schedule
                ));
            }
            return cron::Cron::parse(&req.schedule)
                .map(Timing::Schedule)
                .map_err(|e| format!("schedule {e}"));
        }
        if interval < MIN_INTERVAL as u64 || interval > MAX_INTERVAL as u64 {
            return Err(format!(
                "interval_seconds {interval} is out of range: give {MIN_INTERVAL} (1 minute) to {MAX_INTERVAL} (366 days), or a schedule instead"
            ));
        }
        Ok(Timing::Every(interval as i64))
    }
}

/// Why a policy step failed: the `reason` label of the failures counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureReason {
    /// The template's name for now is taken by another snapshot.
    NameTaken,
    /// The store has no room (or the host filesystem under it is full).
    NoSpace,
    /// Creating the snapshot failed otherwise.
    Snapshot,
    /// Deleting a snapshot retention let go failed.
    Prune,
    /// The policy file could not be written.
    Persist,
    /// The clock could not be read.
    Clock,
}

impl FailureReason {
    pub const ALL: [FailureReason; 6] = [
        FailureReason::NameTaken,
        FailureReason::NoSpace,
        FailureReason::Snapshot,
        FailureReason::Prune,
        FailureReason::Persist,
        FailureReason::Clock,
    ];

    pub fn label(self) -> &'static str {
        match self {
            FailureReason::NameTaken => "name_taken",
            FailureReason::NoSpace => "no_space",
            FailureReason::Snapshot => "snapshot",
            FailureReason::Prune => "prune",
            FailureReason::Persist => "persist",
            FailureReason::Clock => "clock",
        }
    }
}

/// Counters since the agent started, for metrics: they go on across a cleared and reset
/// policy, as Prometheus counters must.
#[derive(Default)]
pub struct PolicyCounters {
    pub taken: AtomicU64,
    pub pruned: AtomicU64,
    failures: [AtomicU64; FailureReason::ALL.len()],
}

impl PolicyCounters {
    pub fn failed(&self, reason: FailureReason) {
        self.failures[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn failures(&self, reason: FailureReason) -> u64 {
        self.failures[reason as usize].load(Ordering::Relaxed)
    }
}

/// A policy in force: what is on disk plus what only this run knows.
#[derive(Debug, Clone)]
pub struct Active {
    pub saved: Persisted,
    /// The policy clock's time of the last look, if any.
    pub evaluated_at: Option<UnixSecs>,
    /// No new snapshot attempt before this time, after a failed one.
    pub retry_at: Option<UnixSecs>,
    /// No new prune before this time, after a failed one.
    pub prune_retry_at: Option<UnixSecs>,
    pub last_error: Option<String>,
    /// Snapshots retention would prune but something holds: `NAME (held by WHAT)`.
    pub held: Vec<String>,
    /// The saved state differs from the file (a write failed); the next look writes it.
    pub dirty: bool,
}

impl Active {
    fn new(saved: Persisted) -> Active {
        Active {
            saved,
            evaluated_at: None,
            retry_at: None,
            prune_retry_at: None,
            last_error: None,
            held: Vec::new(),
            dirty: false,
        }
    }

    /// When the next snapshot is due: the start of the slot after the last one taken (when
    /// the policy was set, if none was), or the retry time of a failed attempt if later.
    pub fn next_due(&self) -> Option<UnixSecs> {
        let timing = &self.saved.spec.timing;
        let slot_start = self.saved.last_slot_at.and_then(|s| timing.next_after(s));
        match (slot_start, self.retry_at) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b).or(Some(self.saved.since)),
        }
    }

    /// Seconds since the newest policy snapshot was taken (or, before the first, since the
    /// policy was set), at `now`.
    pub fn newest_age(&self, now: UnixSecs) -> i64 {
        now - self.newest().map_or(self.saved.since, |r| r.at)
    }

    /// The newest snapshot the policy took that still exists.
    pub fn newest(&self) -> Option<&Record> {
        self.saved.taken.iter().max_by_key(|r| (r.at, r.id))
    }
}

/// One volume's policy slot: none, or the policy in force; and its counters.
pub struct PolicySlot {
    /// The volume's folder, where the policy file lives; `None` for volumes not on disk
    /// (unit tests), whose policy is not saved.
    dir: Option<PathBuf>,
    pub state: Mutex<Option<Active>>,
    pub counters: PolicyCounters,
}

impl PolicySlot {
    /// An empty slot for a volume in `dir`.
    pub fn empty(dir: Option<PathBuf>) -> PolicySlot {
        PolicySlot {
            dir,
            state: Mutex::new(None),
            counters: PolicyCounters::default(),
        }
    }

    /// The slot of a volume opened from `dir`, with the policy saved there, if any. A file
    /// that cannot be read, or that belongs to another volume, leaves the volume without a
    /// policy (logged); the volume is served all the same.
    pub fn load(dir: &Path, volume: &str, uuid: &str) -> PolicySlot {
        let slot = PolicySlot::empty(Some(dir.to_path_buf()));
        match persist::load(dir) {
            Ok(Some(p)) if p.volume_uuid == uuid => {
                tracing::info!(
                    volume,
                    timing = %p.spec.timing.describe(),
                    policy_snapshots = p.taken.len(),
                    "snapshot policy loaded"
                );
                *slot.state.lock() = Some(Active::new(p));
            }
            Ok(Some(p)) => {
                tracing::error!(volume, file_uuid = %p.volume_uuid, volume_uuid = uuid, "the policy file belongs to another volume; ignored (SetPolicy replaces it)");
            }
            Ok(None) => {}
            Err(e) => {
                tracing::error!(volume, error = %e, "cannot load the volume's snapshot policy; it has none until SetPolicy");
            }
        }
        slot
    }

    /// Writes the saved state of `active`; on failure it stays marked for the next look.
    pub fn save(&self, active: &mut Active) -> std::io::Result<()> {
        let r = match &self.dir {
            Some(dir) => persist::save(dir, &active.saved),
            None => Ok(()),
        };
        active.dirty = r.is_err();
        r
    }

    /// Sets or replaces the policy. A replacement keeps the record of the snapshots the old
    /// one took and its last slot, so the new retention applies to them and no extra
    /// snapshot is taken for a slot that already has one.
    pub fn set(&self, spec: PolicySpec, uuid: &str, now: UnixSecs) -> Result<Active, VolumeError> {
        let mut state = self.state.lock();
        let (taken, last_slot_at) = match state.as_ref() {
            Some(a) if a.saved.spec.timing == spec.timing => {
                (a.saved.taken.clone(), a.saved.last_slot_at)
            }
            // Other times: the last slot is the new timing's slot of the newest snapshot.
            Some(a) => (
                a.saved.taken.clone(),
                a.newest().and_then(|r| spec.timing.slot_start(r.at)),
            ),
            None => (Vec::new(), None),
        };
        let mut active = Active::new(Persisted {
            volume_uuid: uuid.to_string(),
            spec,
            since: now,
            last_slot_at,
            taken,
        });
        self.save(&mut active).map_err(|source| VolumeError::Io {
            what: "cannot save the snapshot policy".into(),
            source,
        })?;
        *state = Some(active.clone());
        Ok(active)
    }

    /// Removes the policy; whether there was one.
    pub fn clear(&self) -> Result<bool, VolumeError> {
        let mut state = self.state.lock();
        if let Some(dir) = &self.dir {
            persist::remove(dir).map_err(|source| VolumeError::Io {
                what: "cannot remove the snapshot policy".into(),
                source,
            })?;
        }
        Ok(state.take().is_some())
    }

    /// For a volume being deleted: removes the policy file and stops the policy, after any
    /// look in progress (which holds the lock), so nothing writes into the volume's folder
    /// once this returns.
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(interval: u64) -> PolicyRequest {
        PolicyRequest {
            interval_seconds: interval,
            ..PolicyRequest::default()
        }
    }

    fn refused(r: PolicyRequest) -> String {
        match PolicySpec::check(&r) {
            Err(VolumeError::InvalidArgument(m)) => m,
            other => panic!("accepted or wrong error: {other:?}"),
        }
    }

    #[test]
    fn checks_name_the_field() {
        assert!(refused(req(0)).contains("interval_seconds 0"));
        assert!(refused(req(59)).contains("interval_seconds 59"));
        assert!(refused(req(400 * 86400)).contains("366 days"));
        let mut r = req(3600);
        r.retention.daily = 10_001;
        assert!(refused(r).contains("keep_daily 10001"));
        let mut r = req(3600);
        r.retention.max_age = 60;
        assert!(refused(r).contains("max_age_seconds 60"));
        let mut r = req(60);
        r.name_template = "snap-%Y%m%d-%H".into();
        assert!(refused(r).contains("needs %M"));
        let spec = PolicySpec::check(&req(3600)).unwrap();
        assert_eq!(spec.template.as_str(), template::DEFAULT_TEMPLATE);
        assert_eq!(spec.timing.slot_start(7199), Some(3600));
        assert_eq!(spec.timing.slot_start(-1), Some(-3600));
    }

    fn scheduled(schedule: &str) -> PolicyRequest {
        PolicyRequest {
            schedule: schedule.into(),
            ..PolicyRequest::default()
        }
    }

    #[test]
    fn schedules_are_checked_and_exclusive_with_the_interval() {
        let mut both = scheduled("0 * * * *");
        both.interval_seconds = 3600;
        assert!(
            refused(both).contains("interval_seconds 3600 and schedule \"0 * * * *\" are both set")
        );
        assert!(refused(req(0)).contains("or a schedule instead"));
        let e = refused(scheduled("0 0 31 2 *"));
        assert!(
            e.starts_with("schedule \"0 0 31 2 *\" never matches"),
            "{e}"
        );
        let e = refused(scheduled("0 25 * * *"));
        assert!(
            e.contains("schedule \"0 25 * * *\": hour 25 is out of range"),
            "{e}"
        );
        // The age limit's floor is the shortest gap: 4 hours here, though weekends are longer.
        let mut r = scheduled("0 9-17/4 * * mon-fri");
        r.retention.max_age = 3 * 3600;
        assert!(refused(r.clone()).contains("from the schedule's shortest gap (14400)"));
        r.retention.max_age = 4 * 3600;
        let spec = PolicySpec::check(&r).unwrap();
        assert_eq!(spec.timing.longest_gap(), 64 * 3600);
        // Names: off the hour, the minute is needed even for a daily schedule.
        let mut r = scheduled("15 2 * * *");
        r.name_template = "d-%Y%m%d-%H".into();
        assert!(refused(r.clone()).contains("needs %M"));
        r.name_template = "d-%Y%m%d-%H%M".into();
        assert!(PolicySpec::check(&r).is_ok());
        let mut r = scheduled("0 0 * * *");
        r.name_template = "d-%Y%m%d".into();
        assert!(PolicySpec::check(&r).is_ok());
    }
}

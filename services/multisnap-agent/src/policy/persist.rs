//! A volume's policy on disk: `volumes/NAME/policy.json`, beside its store, so it lives and
//! goes with the volume.
//!
//! Every change is written whole to `policy.json.tmp`, synced, renamed over `policy.json`, and
//! the folder synced: after a power cut the file is the old state or the new one, never a mix
//! (a leftover temporary file is removed at load). The file holds the policy, the last
//! slot a snapshot was taken for, and the snapshots the policy took (id, name, time):
//! that record, not the names, is what marks a snapshot as the policy's, so only those are
//! ever pruned.
//!
//! The order of the steps around a snapshot keeps a power cut on the safe side: a snapshot
//! is created before it is recorded (a cut in between leaves an unrecorded snapshot, which is
//! then the user's and never pruned), and deleted before its record goes (a cut in between
//! leaves a record whose snapshot is gone, which the next pass drops).

use super::calendar::UnixSecs;
use super::cron::Cron;
use super::retention::Retention;
use super::template::NameTemplate;
use super::timing::Timing;
use super::PolicySpec;
use crate::datadir::{load_replaced_json, remove_replaced_file, replace_file_durably};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

pub const POLICY_FILE: &str = "policy.json";
/// Version of the file's layout; a newer one is refused rather than misread. Version 2 added
/// schedules (`policy.schedule`, and the last slot as a time, `last_slot_at`); a policy with an
/// interval is still written as version 1, which agents from before schedules read.
pub const FORMAT_VERSION: u64 = 2;
/// The version interval policies are written in.
const INTERVAL_FORMAT: u64 = 1;

/// A snapshot the policy took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub id: u64,
    pub name: String,
    /// The policy clock's time when it was taken.
    pub at: UnixSecs,
}

/// What the file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Persisted {
    /// The volume the file belongs to: a file found beside another store is ignored.
    pub volume_uuid: String,
    pub spec: PolicySpec,
    /// The policy clock's time when the policy was set: before its first snapshot, the age
    /// metrics and alerts count from here.
    pub since: UnixSecs,
    /// The start of the last slot a snapshot was taken for (a scheduled time).
    pub last_slot_at: Option<UnixSecs>,
    pub taken: Vec<Record>,
}

pub fn path_in(volume_dir: &Path) -> PathBuf {
    volume_dir.join(POLICY_FILE)
}

impl Persisted {
    fn encode(&self) -> std::io::Result<Vec<u8>> {
        crate::datadir::json_file_bytes(&self.to_json())
    }

    pub fn to_json(&self) -> Value {
        let r = &self.spec.retention;
        let mut v = json!({
            "format": INTERVAL_FORMAT,
            "volume_uuid": self.volume_uuid,
            "policy": {
                "name_template": self.spec.template.as_str(),
                "keep_hourly": r.hourly,
                "keep_daily": r.daily,
                "keep_weekly": r.weekly,
                "keep_monthly": r.monthly,
                "max_age_seconds": r.max_age,
            },
            "since": self.since,
            "taken": self.taken.iter().map(|t| json!({"id": t.id, "name": t.name, "at": t.at})).collect::<Vec<_>>(),
        });
        match &self.spec.timing {
            Timing::Every(i) => {
                v["policy"]["interval_seconds"] = json!(i);
                // Slot starts of an interval are its multiples.
                v["last_slot"] = json!(self.last_slot_at.map(|t| t.div_euclid(*i)));
            }
            Timing::Schedule(c) => {
                v["format"] = json!(FORMAT_VERSION);
                v["policy"]["schedule"] = json!(c.as_str());
                v["last_slot_at"] = json!(self.last_slot_at);
            }
        }
        v
    }

    /// The timing and the last slot's start: `policy.schedule` and `last_slot_at` (version 2),
    /// or `policy.interval_seconds` and `last_slot`, the slot's number.
    fn timing_from_json(v: &Value) -> Result<(Timing, Option<UnixSecs>), String> {
        if let Some(text) = v["policy"]["schedule"].as_str() {
            let cron = Cron::parse(text).map_err(|e| format!("policy.schedule {e}"))?;
            return Ok((Timing::Schedule(cron), v["last_slot_at"].as_i64()));
        }
        let interval = v["policy"]["interval_seconds"]
            .as_i64()
            .filter(|i| *i > 0)
            .ok_or("policy.interval_seconds is missing")?;
        let last = match v["last_slot"].as_i64() {
            Some(slot) => Some(
                slot.checked_mul(interval)
                    .ok_or("last_slot is out of range")?,
            ),
            None => None,
        };
        Ok((Timing::Every(interval), last))
    }

    pub fn from_json(v: &Value) -> Result<Persisted, String> {
        let version = v["format"].as_u64().ok_or("no format version")?;
        if version > FORMAT_VERSION {
            return Err(format!(
                "format version {version} is newer than this agent's {FORMAT_VERSION}"
            ));
        }
        let p = &v["policy"];
        let u32_of = |k: &str| -> Result<u32, String> {
            p[k].as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or(format!("policy.{k} is missing or not a count"))
        };
        let (timing, last_slot_at) = Self::timing_from_json(v)?;
        let template = p["name_template"]
            .as_str()
            .ok_or("policy.name_template is missing")?;
        let spec = PolicySpec {
            template: NameTemplate::parse(template, timing.name_gap())?,
            timing,
            retention: Retention {
                hourly: u32_of("keep_hourly")?,
                daily: u32_of("keep_daily")?,
                weekly: u32_of("keep_weekly")?,
                monthly: u32_of("keep_monthly")?,
                max_age: p["max_age_seconds"]
                    .as_u64()
                    .ok_or("policy.max_age_seconds is missing")?,
            },
        };
        let mut taken = Vec::new();
        for t in v["taken"].as_array().ok_or("taken is missing")? {
            taken.push(Record {
                id: t["id"].as_u64().ok_or("a taken snapshot has no id")?,
                name: t["name"]
                    .as_str()
                    .ok_or("a taken snapshot has no name")?
                    .to_string(),
                at: t["at"].as_i64().ok_or("a taken snapshot has no time")?,
            });
        }
        Ok(Persisted {
            volume_uuid: v["volume_uuid"]
                .as_str()
                .ok_or("volume_uuid is missing")?
                .to_string(),
            spec,
            since: v["since"].as_i64().ok_or("since is missing")?,
            last_slot_at,
            taken,
        })
    }
}

/// Writes `state` as the volume's policy file, durably (see the module's comment).
pub fn save(volume_dir: &Path, state: &Persisted) -> std::io::Result<()> {
    replace_file_durably(&path_in(volume_dir), &state.encode()?)
}

/// Removes the volume's policy file, durably.
pub fn remove(volume_dir: &Path) -> std::io::Result<()> {
    remove_replaced_file(&path_in(volume_dir))
}

/// The volume's policy file, if it has one (a save cut short leaves the old one whole).
pub fn load(volume_dir: &Path) -> Result<Option<Persisted>, String> {
    let Some(value) = load_replaced_json(&path_in(volume_dir))? else {
        return Ok(None);
    };
    Persisted::from_json(&value)
        .map(Some)
        .map_err(|e| format!("{}: {e}", path_in(volume_dir).display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datadir::{replace_file_until, temp_path_for, ReplaceStep as Step};

    fn state(slot: i64, taken: u64) -> Persisted {
        Persisted {
            volume_uuid: "0b8f6a8e-0000-4000-8000-000000000001".into(),
            spec: PolicySpec {
                timing: Timing::Every(3600),
                template: NameTemplate::parse("auto-%Y%m%d-%H%M%S", 3600).unwrap(),
                retention: Retention {
                    hourly: 24,
                    daily: 7,
                    weekly: 0,
                    monthly: 3,
                    max_age: 0,
                },
            },
            since: 3600,
            last_slot_at: Some(slot * 3600),
            taken: (1..=taken)
                .map(|id| Record {
                    id,
                    name: format!("auto-{id}"),
                    at: id as i64 * 3600,
                })
                .collect(),
        }
    }

    /// The same state under a schedule: on the hour from 08:00 to 18:00 on weekdays.
    fn scheduled(slot: i64, taken: u64) -> Persisted {
        let mut s = state(slot, taken);
        s.spec.timing = Timing::Schedule(Cron::parse("0 8-18 * * mon-fri").unwrap());
        s
    }

    #[test]
    fn round_trips() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()), Ok(None));
        for s in [state(7, 3), scheduled(7, 3), scheduled(0, 0)] {
            save(dir.path(), &s).unwrap();
            assert_eq!(load(dir.path()), Ok(Some(s)));
        }
        remove(dir.path()).unwrap();
        assert_eq!(load(dir.path()), Ok(None));
        remove(dir.path()).unwrap();
    }

    /// Interval policies keep the layout of version 1, which agents from before schedules
    /// read; a schedule makes the file version 2, which they refuse rather than misread.
    #[test]
    fn intervals_are_written_as_version_1_and_schedules_as_version_2() {
        let v = state(7, 1).to_json();
        assert_eq!(v["format"], 1);
        assert_eq!(v["last_slot"], 7);
        assert_eq!(v["policy"]["interval_seconds"], 3600);
        assert!(v.get("last_slot_at").is_none() && v["policy"].get("schedule").is_none());
        let v = scheduled(7, 1).to_json();
        assert_eq!(v["format"], 2);
        assert_eq!(v["last_slot_at"], 7 * 3600);
        assert_eq!(v["policy"]["schedule"], "0 8-18 * * mon-fri");
        assert!(v.get("last_slot").is_none() && v["policy"].get("interval_seconds").is_none());
    }

    /// A file written before schedules existed, as docs/POLICY.md showed it, reads as an
    /// interval policy whose last slot starts at slot × interval.
    #[test]
    fn a_version_1_file_reads_as_an_interval_policy() {
        let dir = tempfile::tempdir().unwrap();
        let old = r#"{
  "format": 1,
  "volume_uuid": "08e819df-2499-4ba8-872c-2d328b937f6c",
  "policy": {"interval_seconds": 3600, "name_template": "auto-%Y%m%d-%H%M%S",
             "keep_hourly": 24, "keep_daily": 7, "keep_weekly": 0, "keep_monthly": 0,
             "max_age_seconds": 0},
  "since": 1796567314,
  "last_slot": 499046,
  "taken": [{"id": 1, "name": "auto-20261206-142834", "at": 1796567314}]
}"#;
        std::fs::write(path_in(dir.path()), old).unwrap();
        let p = load(dir.path()).unwrap().unwrap();
        assert_eq!(p.spec.timing, Timing::Every(3600));
        assert_eq!(p.last_slot_at, Some(499_046 * 3600));
        assert_eq!(p.taken.len(), 1);
        // Written back as it was.
        assert_eq!(p.to_json(), serde_json::from_str::<Value>(old).unwrap());
    }

    /// A save stopped after each of its steps (the process killed there, or the power cut
    /// once the steps before were on disk), and a temporary file torn at every length: the
    /// next load finds the old state or the new one, never anything else, and no leftover.
    #[test]
    fn a_save_cut_short_leaves_the_old_state_or_the_new() {
        // From an interval to a schedule (version 1 to 2), and between two schedules.
        for (old, new) in [
            (state(1, 1), scheduled(2, 2)),
            (scheduled(1, 1), scheduled(2, 2)),
        ] {
            cut_short(old, new);
        }
    }

    fn cut_short(old: Persisted, new: Persisted) {
        let dir = tempfile::tempdir().unwrap();
        for last in [
            Step::WroteTemp,
            Step::SyncedTemp,
            Step::Renamed,
            Step::SyncedDir,
        ] {
            save(dir.path(), &old).unwrap();
            replace_file_until(&path_in(dir.path()), &new.encode().unwrap(), last).unwrap();
            let got = load(dir.path()).unwrap().unwrap();
            let want = if last >= Step::Renamed { &new } else { &old };
            assert_eq!(&got, want, "cut after {last:?}");
            assert!(!temp_path_for(&path_in(dir.path())).exists());
        }
        save(dir.path(), &old).unwrap();
        let full = new.encode().unwrap();
        for len in (0..full.len()).step_by(7) {
            std::fs::write(temp_path_for(&path_in(dir.path())), &full[..len]).unwrap();
            assert_eq!(load(dir.path()), Ok(Some(old.clone())), "torn at {len}");
        }
    }

    #[test]
    fn a_damaged_or_newer_file_is_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(path_in(dir.path()), "{\"format\": 1, \"policy\": {}").unwrap();
        assert!(load(dir.path()).unwrap_err().contains("not JSON"));
        let mut v = state(1, 1).to_json();
        v["format"] = json!(FORMAT_VERSION + 1);
        std::fs::write(path_in(dir.path()), v.to_string()).unwrap();
        assert!(load(dir.path()).unwrap_err().contains("newer"));
        let mut v = state(1, 1).to_json();
        v["policy"]["name_template"] = json!("x-%q");
        std::fs::write(path_in(dir.path()), v.to_string()).unwrap();
        assert!(load(dir.path())
            .unwrap_err()
            .contains("unknown placeholder"));
        let mut v = scheduled(1, 1).to_json();
        v["policy"]["schedule"] = json!("0 0 31 2 *");
        std::fs::write(path_in(dir.path()), v.to_string()).unwrap();
        let e = load(dir.path()).unwrap_err();
        assert!(
            e.contains("policy.schedule") && e.contains("never matches"),
            "{e}"
        );
        let mut v = scheduled(1, 1).to_json();
        v["policy"]["name_template"] = json!("x-%Y%m%d");
        std::fs::write(path_in(dir.path()), v.to_string()).unwrap();
        assert!(load(dir.path()).unwrap_err().contains("needs %H"));
    }
}

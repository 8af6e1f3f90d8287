//! A volume's policy on disk: `volumes/NAME/policy.json`, beside its store, so it lives and
//! goes with the volume.
//!
//! Every change is written whole to `policy.json.tmp`, synced, renamed over `policy.json`, and
//! the folder synced: after a power cut the file is the old state or the new one, never a mix
//! (a leftover temporary file is removed at load). The file holds the policy, the last
//! interval slot a snapshot was taken for, and the snapshots the policy took (id, name, time):
//! that record, not the names, is what marks a snapshot as the policy's, so only those are
//! ever pruned.
//!
//! The order of the steps around a snapshot keeps a power cut on the safe side: a snapshot
//! is created before it is recorded (a cut in between leaves an unrecorded snapshot, which is
//! then the user's and never pruned), and deleted before its record goes (a cut in between
//! leaves a record whose snapshot is gone, which the next pass drops).

use super::calendar::UnixSecs;
use super::retention::Retention;
use super::template::NameTemplate;
use super::PolicySpec;
use crate::datadir::{load_replaced_json, remove_replaced_file, replace_file_durably};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

pub const POLICY_FILE: &str = "policy.json";
/// Version of the file's layout; a newer one is refused rather than misread.
pub const FORMAT_VERSION: u64 = 1;

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
    /// The last interval slot (time / interval) a snapshot was taken for.
    pub last_slot: Option<i64>,
    pub taken: Vec<Record>,
}

pub fn path_in(volume_dir: &Path) -> PathBuf {
    volume_dir.join(POLICY_FILE)
}

impl Persisted {
    fn encode(&self) -> std::io::Result<Vec<u8>> {
        let mut bytes =
            serde_json::to_vec_pretty(&self.to_json()).map_err(std::io::Error::other)?;
        bytes.push(b'\n');
        Ok(bytes)
    }

    pub fn to_json(&self) -> Value {
        let r = &self.spec.retention;
        json!({
            "format": FORMAT_VERSION,
            "volume_uuid": self.volume_uuid,
            "policy": {
                "interval_seconds": self.spec.interval,
                "name_template": self.spec.template.as_str(),
                "keep_hourly": r.hourly,
                "keep_daily": r.daily,
                "keep_weekly": r.weekly,
                "keep_monthly": r.monthly,
                "max_age_seconds": r.max_age,
            },
            "since": self.since,
            "last_slot": self.last_slot,
            "taken": self.taken.iter().map(|t| json!({"id": t.id, "name": t.name, "at": t.at})).collect::<Vec<_>>(),
        })
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
        let interval = p["interval_seconds"]
            .as_i64()
            .ok_or("policy.interval_seconds is missing")?;
        let template = p["name_template"]
            .as_str()
            .ok_or("policy.name_template is missing")?;
        let spec = PolicySpec {
            interval,
            template: NameTemplate::parse(template, interval)?,
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
            last_slot: v["last_slot"].as_i64(),
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
                interval: 3600,
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
            last_slot: Some(slot),
            taken: (1..=taken)
                .map(|id| Record {
                    id,
                    name: format!("auto-{id}"),
                    at: id as i64 * 3600,
                })
                .collect(),
        }
    }

    #[test]
    fn round_trips() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()), Ok(None));
        let s = state(7, 3);
        save(dir.path(), &s).unwrap();
        assert_eq!(load(dir.path()), Ok(Some(s)));
        remove(dir.path()).unwrap();
        assert_eq!(load(dir.path()), Ok(None));
        remove(dir.path()).unwrap();
    }

    /// A save stopped after each of its steps (the process killed there, or the power cut
    /// once the steps before were on disk), and a temporary file torn at every length: the
    /// next load finds the old state or the new one, never anything else, and no leftover.
    #[test]
    fn a_save_cut_short_leaves_the_old_state_or_the_new() {
        let dir = tempfile::tempdir().unwrap();
        let old = state(1, 1);
        let new = state(2, 2);
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
    }
}

//! A volume's mirror on disk: `volumes/NAME/mirror.json`, beside its store, so it lives and
//! goes with the volume.
//!
//! Every change is written whole to `mirror.json.tmp`, synced, renamed over `mirror.json`, and
//! the folder synced: after a power cut the file is the old state or the new one (a leftover
//! temporary file is removed at load). The file holds where the mirror sends, the newest
//! snapshot the target is known to hold (the base of the next incremental, which the pruner
//! must keep), and why the mirror stopped, if it did.
//!
//! The record of the replicated snapshot is written only after the target answered that it
//! holds it. A cut in between leaves the older base recorded: still held, still on the target,
//! and the next round finds the newer snapshot there and adopts it (see `plan`).

use super::stream::StreamSettings;
use super::target::MirrorTarget;
use crate::datadir::{load_replaced_json, remove_replaced_file, replace_file_durably};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

pub const MIRROR_FILE: &str = "mirror.json";
/// Version of the file's layout; a newer one is refused rather than misread.
/// Version 2 added the stream settings to `target`; a version 1 file reads as an uncompressed
/// stream without a limit.
pub const FORMAT_VERSION: u64 = 2;

/// A snapshot of the source volume the target holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replicated {
    /// The snapshot's id on this (the source) volume; the target records it as its source id.
    pub id: u64,
    pub name: String,
    /// Unix seconds when the target confirmed it.
    pub at: i64,
}

/// What the file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Persisted {
    /// The volume the file belongs to: a file found beside another store is ignored.
    pub volume_uuid: String,
    pub target: MirrorTarget,
    pub replicated: Option<Replicated>,
    /// Why the mirror stopped (the target diverged); `None` while it runs.
    pub stopped: Option<String>,
}

pub fn path_in(volume_dir: &Path) -> PathBuf {
    volume_dir.join(MIRROR_FILE)
}

impl Persisted {
    fn encode(&self) -> std::io::Result<Vec<u8>> {
        let mut bytes =
            serde_json::to_vec_pretty(&self.to_json()).map_err(std::io::Error::other)?;
        bytes.push(b'\n');
        Ok(bytes)
    }

    pub fn to_json(&self) -> Value {
        let t = &self.target;
        let mut target = json!({
            "endpoint": t.endpoint.to_string(),
            "volume": t.volume,
            "tls_ca_file": t.tls.ca,
            "tls_cert_file": t.tls.cert,
            "tls_key_file": t.tls.key,
        });
        if let (Some(fields), Value::Object(stream)) = (target.as_object_mut(), t.stream.to_json())
        {
            fields.extend(stream);
        }
        json!({
            "format": FORMAT_VERSION,
            "volume_uuid": self.volume_uuid,
            "target": target,
            "replicated": self.replicated.as_ref().map(|r| json!({"id": r.id, "name": r.name, "at": r.at})),
            "stopped": self.stopped,
        })
    }

    pub fn from_json(v: &Value) -> Result<Persisted, String> {
        let version = v["format"].as_u64().ok_or("no format version")?;
        if version > FORMAT_VERSION {
            return Err(format!(
                "format version {version} is newer than this agent's {FORMAT_VERSION}"
            ));
        }
        let t = &v["target"];
        let text = |k: &str| -> Result<String, String> {
            t[k].as_str()
                .map(str::to_string)
                .ok_or(format!("target.{k} is missing"))
        };
        let path = |k: &str| t[k].as_str().map(PathBuf::from);
        let mut target = MirrorTarget::check(
            &text("endpoint")?,
            &text("volume")?,
            super::target::TlsFiles {
                ca: path("tls_ca_file"),
                cert: path("tls_cert_file"),
                key: path("tls_key_file"),
            },
        )?;
        target.stream = StreamSettings::from_json(t)?;
        let replicated = match &v["replicated"] {
            Value::Null => None,
            r => Some(Replicated {
                id: r["id"].as_u64().ok_or("replicated.id is missing")?,
                name: r["name"]
                    .as_str()
                    .ok_or("replicated.name is missing")?
                    .to_string(),
                at: r["at"].as_i64().ok_or("replicated.at is missing")?,
            }),
        };
        Ok(Persisted {
            volume_uuid: v["volume_uuid"]
                .as_str()
                .ok_or("volume_uuid is missing")?
                .to_string(),
            target,
            replicated,
            stopped: v["stopped"].as_str().map(str::to_string),
        })
    }
}

/// Writes `state` as the volume's mirror file, durably (see the module's comment).
pub fn save(volume_dir: &Path, state: &Persisted) -> std::io::Result<()> {
    replace_file_durably(&path_in(volume_dir), &state.encode()?)
}

/// Removes the volume's mirror file, durably.
pub fn remove(volume_dir: &Path) -> std::io::Result<()> {
    remove_replaced_file(&path_in(volume_dir))
}

/// The volume's mirror file, if it has one (a save cut short leaves the old one whole).
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
    use super::super::target::TlsFiles;
    use super::*;
    use crate::datadir::{replace_file_until, temp_path_for, ReplaceStep as Step};
    use proptest::prelude::*;

    fn state(id: Option<u64>, stopped: Option<&str>, tls: bool) -> Persisted {
        let tls = if tls {
            TlsFiles {
                ca: Some("/etc/ms/ca.pem".into()),
                cert: Some("/etc/ms/client.pem".into()),
                key: Some("/etc/ms/client.key".into()),
            }
        } else {
            TlsFiles::default()
        };
        let endpoint = if tls.ca.is_some() {
            "https://dr.example:50051"
        } else {
            "unix:/run/dr/grpc.sock"
        };
        Persisted {
            volume_uuid: "0b8f6a8e-0000-4000-8000-000000000001".into(),
            target: MirrorTarget::check(endpoint, "replica", tls).unwrap(),
            replicated: id.map(|id| Replicated {
                id,
                name: format!("s{id}"),
                at: 1_796_000_000 + id as i64,
            }),
            stopped: stopped.map(str::to_string),
        }
    }

    proptest! {
        /// Any state the mirror can be in reads back as itself.
        #[test]
        fn any_state_round_trips(id in proptest::option::of(1u64..u64::MAX), stopped in proptest::option::of("[ -~]{0,40}"), tls: bool) {
            let dir = tempfile::tempdir().unwrap();
            let s = state(id, stopped.as_deref(), tls);
            save(dir.path(), &s).unwrap();
            prop_assert_eq!(load(dir.path()), Ok(Some(s)));
        }
    }

    #[test]
    fn round_trips_and_removes() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()), Ok(None));
        let s = state(Some(3), None, true);
        save(dir.path(), &s).unwrap();
        assert_eq!(load(dir.path()), Ok(Some(s)));
        remove(dir.path()).unwrap();
        assert_eq!(load(dir.path()), Ok(None));
        remove(dir.path()).unwrap();
    }

    /// A save stopped after each of its steps, and a temporary file torn at every length: the
    /// next load finds the old state or the new one, never anything else, and no leftover.
    #[test]
    fn a_save_cut_short_leaves_the_old_state_or_the_new() {
        let dir = tempfile::tempdir().unwrap();
        let old = state(Some(1), None, false);
        let new = state(Some(2), Some("diverged"), false);
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
        for len in 0..full.len() {
            std::fs::write(temp_path_for(&path_in(dir.path())), &full[..len]).unwrap();
            assert_eq!(load(dir.path()), Ok(Some(old.clone())), "torn at {len}");
        }
    }

    #[test]
    fn a_damaged_or_newer_file_is_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(path_in(dir.path()), "{\"format\": 1, \"target\": {}").unwrap();
        assert!(load(dir.path()).unwrap_err().contains("not JSON"));
        let mut v = state(None, None, false).to_json();
        v["format"] = json!(FORMAT_VERSION + 1);
        std::fs::write(path_in(dir.path()), v.to_string()).unwrap();
        assert!(load(dir.path()).unwrap_err().contains("newer"));
        let mut v = state(None, None, false).to_json();
        v["target"]["endpoint"] = json!("ftp://x");
        std::fs::write(path_in(dir.path()), v.to_string()).unwrap();
        assert!(load(dir.path()).unwrap_err().contains("ftp://x"));
        let mut v = state(Some(1), None, false).to_json();
        v["replicated"]["id"] = json!("one");
        std::fs::write(path_in(dir.path()), v.to_string()).unwrap();
        assert!(load(dir.path()).unwrap_err().contains("replicated.id"));
    }
}

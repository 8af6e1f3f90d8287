//! A volume's mirrors on disk: `volumes/NAME/mirror.json`, beside its store, so they live and
//! go with the volume. One file holds every mirror of the volume, so a change of one mirror
//! and the set of mirrors itself are replaced together, atomically.
//!
//! Every change is written whole to `mirror.json.tmp`, synced, renamed over `mirror.json`, and
//! the folder synced: after a power cut the file is the old state or the new one (a leftover
//! temporary file is removed at load). For each mirror the file holds where it sends, the
//! newest snapshot its target is known to hold (the base of its next incremental, which the
//! pruner must keep), and why the mirror stopped, if it did.
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
/// stream without a limit. Version 3 holds a list of mirrors (`mirrors`); a version 1 or 2
/// file, with its one mirror's fields at the top, reads as that one mirror.
pub const FORMAT_VERSION: u64 = 3;

/// A snapshot of the source volume the target holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replicated {
    /// The snapshot's id on this (the source) volume; the target records it as its source id.
    pub id: u64,
    pub name: String,
    /// Unix seconds when the target confirmed it.
    pub at: i64,
}

/// One mirror as the file holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Persisted {
    pub target: MirrorTarget,
    pub replicated: Option<Replicated>,
    /// Why the mirror stopped (the target diverged); `None` while it runs.
    pub stopped: Option<String>,
}

/// What the file holds: the volume it belongs to (a file found beside another store is
/// ignored) and its mirrors, in the order they were first set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorFile {
    pub volume_uuid: String,
    pub mirrors: Vec<Persisted>,
}

pub fn path_in(volume_dir: &Path) -> PathBuf {
    volume_dir.join(MIRROR_FILE)
}

impl Persisted {
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
            "target": target,
            "replicated": self.replicated.as_ref().map(|r| json!({"id": r.id, "name": r.name, "at": r.at})),
            "stopped": self.stopped,
        })
    }

    /// One mirror's object: a version 3 list entry, or a version 1 or 2 file's top level.
    pub fn from_json(v: &Value) -> Result<Persisted, String> {
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
            target,
            replicated,
            stopped: v["stopped"].as_str().map(str::to_string),
        })
    }
}

impl MirrorFile {
    fn encode(&self) -> std::io::Result<Vec<u8>> {
        crate::datadir::json_file_bytes(&self.to_json())
    }

    pub fn to_json(&self) -> Value {
        json!({
            "format": FORMAT_VERSION,
            "volume_uuid": self.volume_uuid,
            "mirrors": self.mirrors.iter().map(Persisted::to_json).collect::<Vec<_>>(),
        })
    }

    pub fn from_json(v: &Value) -> Result<MirrorFile, String> {
        let version = v["format"].as_u64().ok_or("no format version")?;
        if version > FORMAT_VERSION {
            return Err(format!(
                "format version {version} is newer than this agent's {FORMAT_VERSION}"
            ));
        }
        let volume_uuid = v["volume_uuid"]
            .as_str()
            .ok_or("volume_uuid is missing")?
            .to_string();
        let mirrors = if version < 3 {
            vec![Persisted::from_json(v)?]
        } else {
            let list = v["mirrors"].as_array().ok_or("mirrors is missing")?;
            let mut mirrors: Vec<Persisted> = Vec::with_capacity(list.len());
            for (i, m) in list.iter().enumerate() {
                let p = Persisted::from_json(m).map_err(|e| format!("mirrors[{i}]: {e}"))?;
                if mirrors.iter().any(|o| same_target(&o.target, &p.target)) {
                    return Err(format!(
                        "mirrors[{i}]: a second mirror to {} {}",
                        p.target.endpoint, p.target.volume
                    ));
                }
                mirrors.push(p);
            }
            mirrors
        };
        Ok(MirrorFile {
            volume_uuid,
            mirrors,
        })
    }
}

/// Whether two targets are the same mirror: the same endpoint and volume there.
pub fn same_target(a: &MirrorTarget, b: &MirrorTarget) -> bool {
    a.endpoint == b.endpoint && a.volume == b.volume
}

/// Writes `file` as the volume's mirror file, durably (see the module's comment); a volume
/// left without mirrors has no file.
pub fn save(volume_dir: &Path, file: &MirrorFile) -> std::io::Result<()> {
    if file.mirrors.is_empty() {
        return remove(volume_dir);
    }
    replace_file_durably(&path_in(volume_dir), &file.encode()?)
}

/// Removes the volume's mirror file, durably.
pub fn remove(volume_dir: &Path) -> std::io::Result<()> {
    remove_replaced_file(&path_in(volume_dir))
}

/// The volume's mirror file, if it has one (a save cut short leaves the old one whole).
pub fn load(volume_dir: &Path) -> Result<Option<MirrorFile>, String> {
    let Some(value) = load_replaced_json(&path_in(volume_dir))? else {
        return Ok(None);
    };
    MirrorFile::from_json(&value)
        .map(Some)
        .map_err(|e| format!("{}: {e}", path_in(volume_dir).display()))
}

#[cfg(test)]
mod tests {
    use super::super::target::TlsFiles;
    use super::*;
    use crate::datadir::{replace_file_until, temp_path_for, ReplaceStep as Step};
    use proptest::prelude::*;

    const UUID: &str = "0b8f6a8e-0000-4000-8000-000000000001";

    /// Mirror number `n` (each to its own target volume), TLS or a unix socket.
    fn mirror(n: usize, id: Option<u64>, stopped: Option<&str>, tls: bool) -> Persisted {
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
            target: MirrorTarget::check(endpoint, &format!("replica{n}"), tls).unwrap(),
            replicated: id.map(|id| Replicated {
                id,
                name: format!("s{id}"),
                at: 1_796_000_000 + id as i64,
            }),
            stopped: stopped.map(str::to_string),
        }
    }

    fn file(mirrors: Vec<Persisted>) -> MirrorFile {
        MirrorFile {
            volume_uuid: UUID.into(),
            mirrors,
        }
    }

    fn one_mirror() -> impl Strategy<Value = (Option<u64>, Option<String>, bool)> {
        (
            proptest::option::of(1u64..u64::MAX),
            proptest::option::of("[ -~]{0,40}"),
            any::<bool>(),
        )
    }

    proptest! {
        /// Any set of mirrors reads back as itself, in its order; none is no file at all.
        #[test]
        fn any_set_of_mirrors_round_trips(list in proptest::collection::vec(one_mirror(), 0..=8)) {
            let dir = tempfile::tempdir().unwrap();
            let f = file(list.iter().enumerate().map(|(n, (id, stopped, tls))| mirror(n, *id, stopped.as_deref(), *tls)).collect());
            save(dir.path(), &f).unwrap();
            let want = (!f.mirrors.is_empty()).then_some(f);
            prop_assert_eq!(load(dir.path()), Ok(want));
        }
    }

    #[test]
    fn round_trips_and_removes() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()), Ok(None));
        let f = file(vec![
            mirror(0, Some(3), None, true),
            mirror(1, None, None, false),
        ]);
        save(dir.path(), &f).unwrap();
        assert_eq!(load(dir.path()), Ok(Some(f)));
        save(dir.path(), &file(Vec::new())).unwrap();
        assert!(!path_in(dir.path()).exists());
        assert_eq!(load(dir.path()), Ok(None));
        remove(dir.path()).unwrap();
    }

    /// A save stopped after each of its steps, and a temporary file torn at every length: the
    /// next load finds the old set of mirrors or the new one, never anything else, and no
    /// leftover. The new set adds a second mirror and changes the first.
    #[test]
    fn a_save_cut_short_leaves_the_old_mirrors_or_the_new() {
        let dir = tempfile::tempdir().unwrap();
        let old = file(vec![mirror(0, Some(1), None, false)]);
        let new = file(vec![
            mirror(0, Some(2), Some("diverged"), false),
            mirror(1, Some(1), None, true),
        ]);
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

    /// A file of format 2 (one mirror, its fields at the top), as an older agent wrote it,
    /// reads as that one mirror; format 1 lacks the stream settings too.
    #[test]
    fn a_format_2_or_1_file_reads_as_its_one_mirror() {
        let dir = tempfile::tempdir().unwrap();
        let v2 = r#"{
  "format": 2,
  "volume_uuid": "0b8f6a8e-0000-4000-8000-000000000001",
  "target": {"endpoint": "https://dr.example:50051", "volume": "db",
             "tls_ca_file": "/etc/multisnap/ca.pem", "tls_cert_file": null, "tls_key_file": null,
             "compression": "zstd", "compression_level": 3,
             "bandwidth_limit_bytes_per_sec": 52428800},
  "replicated": {"id": 7, "name": "auto-20261206-140000", "at": 1796565602},
  "stopped": null
}"#;
        std::fs::write(path_in(dir.path()), v2).unwrap();
        let got = load(dir.path()).unwrap().unwrap();
        assert_eq!(got.volume_uuid, UUID);
        assert_eq!(got.mirrors.len(), 1);
        let m = &got.mirrors[0];
        assert_eq!(m.target.endpoint.to_string(), "https://dr.example:50051");
        assert_eq!(m.target.volume, "db");
        assert_eq!(m.target.stream.compression.map(|l| l.get()), Some(3));
        assert_eq!(m.replicated.as_ref().map(|r| r.id), Some(7));
        let v1 = r#"{"format": 1, "volume_uuid": "u", "target": {"endpoint": "unix:/s", "volume": "db"}, "replicated": null, "stopped": "diverged"}"#;
        std::fs::write(path_in(dir.path()), v1).unwrap();
        let got = load(dir.path()).unwrap().unwrap();
        assert_eq!(got.mirrors[0].stopped.as_deref(), Some("diverged"));
        assert_eq!(got.mirrors[0].target.stream, StreamSettings::default());
        // Written again, it is a version 3 file with the same mirror.
        save(dir.path(), &got).unwrap();
        let text = std::fs::read_to_string(path_in(dir.path())).unwrap();
        assert!(text.contains("\"format\": 3"), "{text}");
        assert_eq!(load(dir.path()), Ok(Some(got)));
    }

    #[test]
    fn a_damaged_or_newer_file_is_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let write = |v: &Value| std::fs::write(path_in(dir.path()), v.to_string()).unwrap();
        std::fs::write(path_in(dir.path()), "{\"format\": 3, \"mirrors\": [").unwrap();
        assert!(load(dir.path()).unwrap_err().contains("not JSON"));
        let mut v = file(vec![mirror(0, None, None, false)]).to_json();
        v["format"] = json!(FORMAT_VERSION + 1);
        write(&v);
        assert!(load(dir.path()).unwrap_err().contains("newer"));
        let mut v = file(vec![mirror(0, None, None, false)]).to_json();
        v["mirrors"][0]["target"]["endpoint"] = json!("ftp://x");
        write(&v);
        let e = load(dir.path()).unwrap_err();
        assert!(e.contains("ftp://x") && e.contains("mirrors[0]"), "{e}");
        let mut v = file(vec![
            mirror(0, None, None, false),
            mirror(1, Some(1), None, false),
        ])
        .to_json();
        v["mirrors"][1]["replicated"]["id"] = json!("one");
        write(&v);
        assert!(load(dir.path())
            .unwrap_err()
            .contains("mirrors[1]: replicated.id"));
        let v = file(vec![
            mirror(1, None, None, false),
            mirror(1, Some(1), None, false),
        ])
        .to_json();
        write(&v);
        assert!(load(dir.path())
            .unwrap_err()
            .contains("a second mirror to unix:/run/dr/grpc.sock replica1"));
        let mut v = file(vec![mirror(0, None, None, false)]).to_json();
        v["mirrors"] = json!(null);
        write(&v);
        assert!(load(dir.path()).unwrap_err().contains("mirrors is missing"));
    }
}

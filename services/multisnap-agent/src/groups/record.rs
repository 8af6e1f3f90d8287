//! A group's record on disk, `<data-dir>/groups/<name>.group`, and the only code that reads
//! or writes one (the format is in docs/FORMAT.md, "Snapshot group records").
//!
//! A record is small UTF-8 text, one field a line, and ends with a CRC-32C of everything
//! before it, so a damaged file is refused rather than misread. It is replaced whole: written
//! to `<name>.group.tmp`, synced, renamed over the old one and the directory synced, so a
//! power cut leaves the old record or the new one, never a mixture.

use crate::datadir::sync_dir;
use multisnap_store::validate_snapshot_name;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

/// First line of every record, with the format version.
const MAGIC: &str = "multisnap-group 1";
pub const RECORD_SUFFIX: &str = ".group";
pub const TEMP_SUFFIX: &str = ".group.tmp";

/// A group's name: a snapshot name, since every member snapshot carries it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupName(String);

impl GroupName {
    pub fn parse(s: &str) -> Result<GroupName, String> {
        validate_snapshot_name(s).map_err(|e| format!("invalid group name: {e}"))?;
        Ok(GroupName(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for GroupName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a group is in its life. Only `Ready` groups are shown; the other two are what a crash
/// can leave, and the next start finishes them by deleting the members.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupState {
    /// Written before the members are cut: the members the record names may exist or not.
    Creating,
    /// Every member exists.
    Ready,
    /// Written before the members are deleted: some may be gone already.
    Deleting,
}

impl GroupState {
    fn word(self) -> &'static str {
        match self {
            GroupState::Creating => "creating",
            GroupState::Ready => "ready",
            GroupState::Deleting => "deleting",
        }
    }

    fn from_word(w: &str) -> Option<GroupState> {
        [
            GroupState::Creating,
            GroupState::Ready,
            GroupState::Deleting,
        ]
        .into_iter()
        .find(|s| s.word() == w)
    }
}

/// One member: a snapshot named as the group on `volume`; its id is 0 until it is cut.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub volume: String,
    pub snapshot_id: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupRecord {
    pub name: GroupName,
    pub state: GroupState,
    pub created_at_ns: u64,
    /// In volume-name order.
    pub members: Vec<Member>,
}

impl GroupRecord {
    pub fn volumes(&self) -> Vec<&str> {
        self.members.iter().map(|m| m.volume.as_str()).collect()
    }

    pub fn encode(&self) -> String {
        let mut text = format!(
            "{MAGIC}\nname {}\nstate {}\ncreated-at-ns {}\n",
            self.name,
            self.state.word(),
            self.created_at_ns
        );
        for m in &self.members {
            text.push_str(&format!("member {} {}\n", m.volume, m.snapshot_id));
        }
        let crc = crc32c::crc32c(text.as_bytes());
        text.push_str(&format!("crc32c {crc:08x}\n"));
        text
    }

    pub fn decode(text: &str) -> Result<GroupRecord, String> {
        let body_end = text
            .rfind("crc32c ")
            .ok_or("no checksum line (the record is cut short)")?;
        let (body, crc_line) = text.split_at(body_end);
        let want = u32::from_str_radix(crc_line.trim_end().trim_start_matches("crc32c "), 16)
            .map_err(|_| "unreadable checksum line")?;
        if crc32c::crc32c(body.as_bytes()) != want {
            return Err("checksum mismatch".into());
        }
        let mut lines = body.lines();
        if lines.next() != Some(MAGIC) {
            return Err(format!(
                "not a group record of this format (want {MAGIC:?})"
            ));
        }
        let mut field = |key: &str| -> Result<String, String> {
            lines
                .next()
                .and_then(|l| l.strip_prefix(key))
                .and_then(|v| v.strip_prefix(' '))
                .map(str::to_string)
                .ok_or_else(|| format!("missing {key}"))
        };
        let name = GroupName::parse(&field("name")?)?;
        let state = GroupState::from_word(&field("state")?).ok_or("unknown state")?;
        let created_at_ns = field("created-at-ns")?
            .parse()
            .map_err(|_| "bad created-at-ns")?;
        let mut members = Vec::new();
        for line in lines {
            let mut parts = line
                .strip_prefix("member ")
                .ok_or("unknown line")?
                .split(' ');
            let (Some(volume), Some(id), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(format!("bad member line {line:?}"));
            };
            let snapshot_id = id
                .parse()
                .map_err(|_| format!("bad member line {line:?}"))?;
            members.push(Member {
                volume: volume.to_string(),
                snapshot_id,
            });
        }
        if members.is_empty() {
            return Err("no members".into());
        }
        Ok(GroupRecord {
            name,
            state,
            created_at_ns,
            members,
        })
    }
}

pub fn record_path(dir: &Path, name: &GroupName) -> PathBuf {
    dir.join(format!("{name}{RECORD_SUFFIX}"))
}

/// Replaces the group's record with `rec`, durably (see the module comment).
pub fn write_record(dir: &Path, rec: &GroupRecord) -> std::io::Result<()> {
    let temp = dir.join(format!("{}{TEMP_SUFFIX}", rec.name));
    let _ = std::fs::remove_file(&temp);
    let mut file = crate::permissions::create_private_file(&temp)?;
    file.write_all(rec.encode().as_bytes())?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&temp, record_path(dir, &rec.name))?;
    sync_dir(dir)
}

/// Removes the group's record, durably.
pub fn remove_record(dir: &Path, name: &GroupName) -> std::io::Result<()> {
    match std::fs::remove_file(record_path(dir, name)) {
        Ok(()) => sync_dir(dir),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn record(members: Vec<(String, u64)>, state: GroupState) -> GroupRecord {
        GroupRecord {
            name: GroupName::parse("nightly-1").unwrap(),
            state,
            created_at_ns: 1_700_000_000_123_456_789,
            members: members
                .into_iter()
                .map(|(volume, snapshot_id)| Member {
                    volume,
                    snapshot_id,
                })
                .collect(),
        }
    }

    proptest! {
        #[test]
        fn records_round_trip(
            members in proptest::collection::vec(("[a-z][a-z0-9._-]{0,20}", any::<u64>()), 1..6),
            state in 0..3usize,
        ) {
            let state = [GroupState::Creating, GroupState::Ready, GroupState::Deleting][state];
            let rec = record(members, state);
            prop_assert_eq!(GroupRecord::decode(&rec.encode()), Ok(rec));
        }

        #[test]
        fn any_damage_is_refused_never_misread(
            members in proptest::collection::vec(("[a-z]{1,8}", any::<u64>()), 1..4),
            at in any::<prop::sample::Index>(),
            byte in any::<u8>(),
        ) {
            let rec = record(members, GroupState::Ready);
            let mut bytes = rec.encode().into_bytes();
            let i = at.index(bytes.len());
            prop_assume!(bytes[i] != byte);
            bytes[i] = byte;
            if let Ok(text) = String::from_utf8(bytes) {
                // Never panics; a changed record either fails its checksum or (a change in
                // the checksum's own spelling that keeps its value, e.g. case) decodes equal.
                if let Ok(found) = GroupRecord::decode(&text) {
                    prop_assert_eq!(found, rec);
                }
            }
        }
    }

    #[test]
    fn a_record_cut_short_is_refused() {
        let text = record(vec![("db".into(), 3), ("wal".into(), 4)], GroupState::Ready).encode();
        for len in 0..text.len() - 1 {
            assert!(GroupRecord::decode(&text[..len]).is_err(), "{len}");
        }
    }
}

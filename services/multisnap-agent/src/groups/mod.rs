//! Snapshot groups: snapshots of several volumes cut at one instant
//! (`multisnap_store::create_snapshot_group`), each member an ordinary snapshot named as the
//! group, tied together by a record in `<data-dir>/groups/` (see `record.rs`).
//!
//! What a crash or power cut can leave, and what the next start does with it:
//! - a `creating` record: written before the cut, so the members may or may not exist. The
//!   start deletes whichever exist and the record: the group never happened, and the caller,
//!   who got no answer, asks again.
//! - a `deleting` record: written before the first member is deleted. The start deletes the
//!   members left and the record.
//! - a `.tmp` file: a record that was never renamed into place; removed.
//!
//! So a group is shown only once its `ready` record is durable, which is written only after
//! every member is committed in its store: never a half group that looks complete.
//!
//! Names: while a record exists, its members' names are reserved on its volumes: a single
//! CreateSnapshot of that name is refused (ALREADY_EXISTS) and so is deleting a member on its
//! own (FAILED_PRECONDITION). Group changes hold `changes` exclusively and single snapshot
//! creations hold it shared, so the member names a start deletes after a crash in `creating`
//! can only be snapshots the group made: at the time the record was written no volume of the
//! group had a snapshot of that name, and none could be made but by the group until it ended.

mod record;

pub use record::{GroupName, GroupRecord, GroupState, Member};

use crate::volumes::{Volume, VolumeError};
use anyhow::Context;
use parking_lot::{Mutex, RwLock, RwLockReadGuard};
use record::{remove_record, write_record, RECORD_SUFFIX, TEMP_SUFFIX};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

/// The volumes a group operation may touch, by name.
pub type VolumeMap = BTreeMap<String, Arc<Volume>>;

pub struct Groups {
    dir: PathBuf,
    records: Mutex<BTreeMap<GroupName, GroupRecord>>,
    /// Exclusive for a group's creation or deletion, shared for a single snapshot's creation
    /// and a volume's deletion (see the module comment).
    changes: RwLock<()>,
    #[cfg(test)]
    crash_at: Mutex<Option<Step>>,
}

/// The points a test can stop a group operation at, as a crash would.
#[cfg_attr(not(test), allow(dead_code))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    CreatingRecorded,
    MembersCut,
    ReadyRecorded,
    DeletingRecorded,
    FirstMemberDeleted,
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> VolumeError {
    move |source| VolumeError::Io { what, source }
}

/// Deletes the snapshot named `name` of `volume` if it exists (a member of an unfinished or
/// deleted group).
fn delete_member(volume: &Volume, name: &GroupName) -> Result<(), VolumeError> {
    match volume.store.snapshot_by_name(name.as_str()) {
        Ok(s) => match volume.store.delete_snapshot(s.id) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == multisnap_store::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        },
        Err(_) => Ok(()),
    }
}

impl Groups {
    /// Reads `dir`'s records and finishes what a crash interrupted (see the module comment).
    pub fn load(dir: PathBuf, volumes: &VolumeMap) -> anyhow::Result<Groups> {
        crate::permissions::create_private_dir(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let mut records = BTreeMap::new();
        let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
            .with_context(|| format!("cannot list {}", dir.display()))?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()?;
        names.sort();
        for path in names {
            let file = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if file.ends_with(TEMP_SUFFIX) {
                std::fs::remove_file(&path)
                    .with_context(|| format!("cannot remove {}", path.display()))?;
                continue;
            }
            if !file.ends_with(RECORD_SUFFIX) {
                continue;
            }
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read group record {}", path.display()))?;
            let rec = GroupRecord::decode(&text)
                .map_err(|e| anyhow::anyhow!("group record {} is damaged: {e}", path.display()))?;
            if rec.state == GroupState::Ready {
                records.insert(rec.name.clone(), rec);
                continue;
            }
            tracing::warn!(group = %rec.name, state = ?rec.state, "finishing a group operation a stop interrupted: deleting its members");
            for m in &rec.members {
                if let Some(v) = volumes.get(&m.volume) {
                    delete_member(v, &rec.name)?;
                }
            }
            remove_record(&dir, &rec.name)
                .with_context(|| format!("cannot remove {}", path.display()))?;
        }
        crate::datadir::sync_dir(&dir).with_context(|| format!("cannot sync {}", dir.display()))?;
        Ok(Groups {
            dir,
            records: Mutex::new(records),
            changes: RwLock::new(()),
            #[cfg(test)]
            crash_at: Mutex::new(None),
        })
    }

    /// Held while a single snapshot is made or a volume deleted, so no group operation runs
    /// meanwhile.
    pub fn hold_off_changes(&self) -> RwLockReadGuard<'_, ()> {
        self.changes.read()
    }

    pub fn list(&self) -> Vec<GroupRecord> {
        self.records.lock().values().cloned().collect()
    }

    pub fn get(&self, name: &GroupName) -> Option<GroupRecord> {
        self.records.lock().get(name).cloned()
    }

    /// The group whose member `volume@snapshot` is, if any.
    pub fn member_of(&self, volume: &str, snapshot: &str) -> Option<GroupName> {
        let records = self.records.lock();
        let rec = records.values().find(|r| r.name.as_str() == snapshot)?;
        rec.members
            .iter()
            .any(|m| m.volume == volume)
            .then(|| rec.name.clone())
    }

    /// The group whose member snapshot `id` of `volume` is, if any (a deleted snapshot of the
    /// same name, still being reclaimed, is not one).
    pub fn group_of(&self, volume: &str, id: u64) -> Option<GroupName> {
        self.records
            .lock()
            .values()
            .find(|r| {
                r.members
                    .iter()
                    .any(|m| m.volume == volume && m.snapshot_id == id)
            })
            .map(|r| r.name.clone())
    }

    /// The groups with a member on `volume`.
    pub fn groups_of(&self, volume: &str) -> Vec<GroupName> {
        self.records
            .lock()
            .values()
            .filter(|r| r.members.iter().any(|m| m.volume == volume))
            .map(|r| r.name.clone())
            .collect()
    }

    /// Cuts group `name` of `volume_names`. The same name with the same volumes is the same
    /// group (returned as it is); with other volumes, ALREADY_EXISTS.
    pub fn create(
        &self,
        volumes: &VolumeMap,
        name: &GroupName,
        volume_names: &[String],
    ) -> Result<GroupRecord, VolumeError> {
        let mut wanted: Vec<String> = volume_names.to_vec();
        wanted.sort();
        if wanted.is_empty() {
            return Err(VolumeError::InvalidArgument(
                "a snapshot group needs at least one volume".into(),
            ));
        }
        if let Some(w) = wanted.windows(2).find(|w| w[0] == w[1]) {
            return Err(VolumeError::InvalidArgument(format!(
                "volume {} is named more than once",
                w[0]
            )));
        }
        let _changes = self.changes.write();
        if let Some(rec) = self.get(name) {
            if rec.volumes() == wanted {
                return Ok(rec);
            }
            return Err(VolumeError::GroupExists(format!(
                "snapshot group \"{name}\" already exists, of volumes {}",
                rec.volumes().join(", ")
            )));
        }
        let members: Vec<Arc<Volume>> = wanted
            .iter()
            .map(|v| {
                volumes
                    .get(v)
                    .cloned()
                    .ok_or_else(|| VolumeError::NotFound(v.clone()))
            })
            .collect::<Result<_, _>>()?;
        if let Some(v) = members
            .iter()
            .find(|v| v.store.snapshot_by_name(name.as_str()).is_ok())
        {
            return Err(VolumeError::GroupExists(format!(
                "volume {} already has a snapshot named \"{name}\", so it cannot be a member of group \"{name}\"",
                v.name
            )));
        }
        let mut rec = GroupRecord {
            name: name.clone(),
            state: GroupState::Creating,
            created_at_ns: now_ns(),
            members: wanted
                .iter()
                .map(|v| Member {
                    volume: v.clone(),
                    snapshot_id: 0,
                })
                .collect(),
        };
        self.record(&rec)?;
        self.checkpoint(Step::CreatingRecorded)?;
        let stores: Vec<&multisnap_store::Store> = members.iter().map(|v| &*v.store).collect();
        let cut = match multisnap_store::create_snapshot_group(&stores, name.as_str()) {
            Ok(cut) => cut,
            Err(e) => {
                // A name taken meanwhile (a delta apply reserves its snapshot's name) is
                // found before any member is cut: the snapshot of that name is not ours.
                let made_some = !matches!(e, multisnap_store::StoreError::SnapshotExists(_));
                self.abandon(if made_some { &members[..] } else { &[] }, &rec)?;
                return Err(match e {
                    multisnap_store::StoreError::SnapshotExists(_) => VolumeError::GroupExists(
                        format!("a snapshot named \"{name}\" appeared on a volume of the group while it was being cut"),
                    ),
                    e => e.into(),
                });
            }
        };
        self.checkpoint(Step::MembersCut)?;
        for (m, s) in rec.members.iter_mut().zip(&cut) {
            m.snapshot_id = s.id.0;
        }
        rec.created_at_ns = cut
            .first()
            .and_then(|s| s.created_at.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(rec.created_at_ns, |d| d.as_nanos() as u64);
        rec.state = GroupState::Ready;
        self.record(&rec)?;
        self.checkpoint(Step::ReadyRecorded)?;
        tracing::info!(group = %name, volumes = %wanted.join(","), "snapshot group created");
        Ok(rec)
    }

    /// Deletes group `name` and its members.
    pub fn delete(&self, volumes: &VolumeMap, name: &GroupName) -> Result<(), VolumeError> {
        let _changes = self.changes.write();
        let mut rec = self
            .get(name)
            .ok_or_else(|| VolumeError::GroupNotFound(name.to_string()))?;
        rec.state = GroupState::Deleting;
        self.record(&rec)?;
        self.checkpoint(Step::DeletingRecorded)?;
        for m in &rec.members {
            if let Some(v) = volumes.get(&m.volume) {
                delete_member(v, name)?;
            }
            self.checkpoint(Step::FirstMemberDeleted)?;
        }
        remove_record(&self.dir, name).map_err(io(format!("cannot remove group record {name}")))?;
        self.records.lock().remove(name);
        tracing::info!(group = %name, "snapshot group deleted");
        Ok(())
    }

    /// A cut that failed part way: the members made so far go (found by name on `members`;
    /// a delta apply's snapshot still receiving is never deleted), then the record.
    fn abandon(&self, members: &[Arc<Volume>], rec: &GroupRecord) -> Result<(), VolumeError> {
        for v in members {
            delete_member(v, &rec.name)?;
        }
        remove_record(&self.dir, &rec.name)
            .map_err(io(format!("cannot remove group record {}", rec.name)))?;
        self.records.lock().remove(&rec.name);
        Ok(())
    }

    fn record(&self, rec: &GroupRecord) -> Result<(), VolumeError> {
        write_record(&self.dir, rec).map_err(io(format!(
            "cannot write group record {} in {}",
            rec.name,
            self.dir.display()
        )))?;
        self.records.lock().insert(rec.name.clone(), rec.clone());
        Ok(())
    }

    /// In tests, stops the operation at `step` as a crash would: nothing after it runs.
    #[cfg(test)]
    fn checkpoint(&self, step: Step) -> Result<(), VolumeError> {
        if *self.crash_at.lock() == Some(step) {
            return Err(VolumeError::Io {
                what: format!("simulated crash at {step:?}"),
                source: std::io::Error::other("simulated crash"),
            });
        }
        Ok(())
    }

    #[cfg(not(test))]
    fn checkpoint(&self, _step: Step) -> Result<(), VolumeError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests;

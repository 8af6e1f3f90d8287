//! Snapshots: creating, listing, finding, making writable and deleting them, and the
//! reclamation that gives deleted snapshots' space back.

use super::*;
use crate::format::snapshot_record::MAX_NAME;
use crate::meta::ReclaimProgress;

/// Checks a snapshot name: 1..=128 bytes of `[A-Za-z0-9._-]`, not starting with `.` or `-`.
pub fn validate_snapshot_name(name: &str) -> Result<()> {
    let bad = |reason| {
        Err(StoreError::InvalidName {
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > MAX_NAME {
        return bad("longer than 128 bytes");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    {
        return bad("only letters, digits, '.', '_' and '-' are allowed");
    }
    if name.starts_with('.') || name.starts_with('-') {
        return bad("must not start with '.' or '-'");
    }
    Ok(())
}

/// Whether a snapshot name is one users cannot give (see [`Store::create_hidden_snapshot`]).
pub fn is_hidden_snapshot_name(name: &str) -> bool {
    name.starts_with('.')
}

impl Store {
    /// Creates a read-only snapshot with a name users cannot give (a valid name after a
    /// leading `.`), which [`Store::list_snapshots`] leaves out: the snapshot a clone of a
    /// volume's current contents copies. It is an ordinary snapshot otherwise.
    pub fn create_hidden_snapshot(&self, name: &str) -> Result<SnapshotInfo> {
        match name.strip_prefix('.') {
            Some(rest) if validate_snapshot_name(rest).is_ok() => {
                self.create_snapshot_unchecked(name, false)
            }
            _ => Err(StoreError::InvalidName {
                name: name.to_string(),
                reason: "a hidden snapshot's name is '.' followed by a valid name",
            }),
        }
    }

    /// The snapshots [`Store::create_hidden_snapshot`] made that still exist.
    pub fn hidden_snapshots(&self) -> Vec<SnapshotInfo> {
        let m = self.meta.read();
        m.snapshots
            .iter()
            .filter(|(_, r)| is_hidden_snapshot_name(&r.name) && crate::meta::holds_name(r.state))
            .map(|(id, r)| SnapshotInfo::from_record(*id, r))
            .collect()
    }

    /// Creates a read-only snapshot of the origin as of now: every write acknowledged before
    /// this returns is in it, none that starts after. Copies no data.
    pub fn create_snapshot(&self, name: &str) -> Result<SnapshotInfo> {
        self.create_snapshot_with(name, false)
    }

    /// Like [`Store::create_snapshot`]; a writable snapshot takes writes of its own (kept in
    /// chunks private to it), never touching the origin or other snapshots.
    pub fn create_snapshot_with(&self, name: &str, writable: bool) -> Result<SnapshotInfo> {
        validate_snapshot_name(name)?;
        self.create_snapshot_unchecked(name, writable)
    }

    fn create_snapshot_unchecked(&self, name: &str, writable: bool) -> Result<SnapshotInfo> {
        let _barrier = self.exclusive_barrier();
        self.cut_snapshot(name, writable)
    }

    /// The cut itself; the caller holds the write barrier exclusively (one volume's for a
    /// snapshot, every member's for a group, see `group.rs`).
    pub(super) fn cut_snapshot(&self, name: &str, writable: bool) -> Result<SnapshotInfo> {
        // Writes acknowledged but not yet flushed are part of the snapshot; make them durable
        // so a power cut cannot take them out of it. Parked ones go to the origin first: the
        // snapshot reads the origin where it has no copy, and later writes copy from it.
        self.land_parked()?;
        self.sync_origin()?;
        let info = self.transact(|m| {
            m.check_usable()?;
            if m.by_name.contains_key(name) {
                return Err(StoreError::SnapshotExists(name.to_string()));
            }
            // A full delta is being written straight into the origin: a snapshot now would
            // capture (and keep) half of it.
            if let Some(r) = &m.receive {
                if r.flags & crate::format::superblock::RECEIVE_DIRECT != 0 {
                    let name = m.receiving_name();
                    return Err(StoreError::ReceiveInProgress { name });
                }
            }
            let rec = SnapshotRecord {
                created_at_ns: now_ns(),
                writable,
                state: SnapshotState::Ready,
                source_id: 0,
                name: name.to_string(),
                size: m.sb.origin_size,
            };
            let id = m.add_snapshot(rec.clone())?;
            Ok(SnapshotInfo::from_record(id.0, &rec))
        })?;
        tracing::info!(volume = %self.volume_name, snapshot = %name, id = info.id.0, "snapshot created");
        Ok(info)
    }

    /// Every snapshot record users may see (a delta still being applied is not one, nor a
    /// hidden snapshot).
    pub fn list_snapshots(&self) -> Vec<SnapshotInfo> {
        let m = self.meta.read();
        m.snapshots
            .iter()
            .filter(|(_, r)| {
                r.state != SnapshotState::Receiving && !is_hidden_snapshot_name(&r.name)
            })
            .map(|(id, r)| SnapshotInfo::from_record(*id, r))
            .collect()
    }

    pub fn snapshot_by_name(&self, name: &str) -> Result<SnapshotInfo> {
        let m = self.meta.read();
        m.snapshot_by_name(name)
            .map(|(id, r)| SnapshotInfo::from_record(id.0, r))
            .ok_or_else(|| StoreError::SnapshotNotFound(name.to_string()))
    }

    pub fn snapshot(&self, id: SnapshotId) -> Result<SnapshotInfo> {
        let m = self.meta.read();
        m.snapshots
            .get(&id.0)
            .filter(|r| r.state != SnapshotState::Receiving)
            .map(|r| SnapshotInfo::from_record(id.0, r))
            .ok_or(StoreError::SnapshotIdNotFound(id))
    }

    /// Makes a snapshot writable (or read-only again).
    pub fn set_writable(&self, id: SnapshotId, writable: bool) -> Result<SnapshotInfo> {
        let _barrier = self.exclusive_barrier();
        self.transact(|m| {
            m.check_usable()?;
            let rec = match m.snapshots.get(&id.0) {
                Some(r) if m.live.contains(&id.0) => r.clone(),
                _ => return Err(StoreError::SnapshotIdNotFound(id)),
            };
            if writable && m.revert.as_ref().is_some_and(|r| r.target == id.0) {
                self.refuse_during_merge(m, "making its target writable")?;
            }
            if writable {
                self.refuse_if_held(m, id, "making it writable")?;
            }
            let rec = SnapshotRecord { writable, ..rec };
            m.update_snapshot(id, rec.clone())?;
            Ok(SnapshotInfo::from_record(id.0, &rec))
        })
    }

    /// Deletes a snapshot: it disappears at once (no longer readable or counted as live); its
    /// space comes back through reclamation (`reclaim_step`), in the background.
    pub fn delete_snapshot(&self, id: SnapshotId) -> Result<()> {
        let _barrier = self.exclusive_barrier();
        let generation = {
            let mut m = self.meta.write();
            m.check_usable()?;
            let Some(rec) = m.snapshots.get(&id.0).cloned() else {
                return Err(StoreError::SnapshotIdNotFound(id));
            };
            if m.revert.as_ref().is_some_and(|r| r.target == id.0) {
                self.refuse_during_merge(&m, "deleting its target")?;
            }
            self.refuse_if_held(&m, id, "deleting it")?;
            match rec.state {
                // Nothing to change, nothing to wait for.
                SnapshotState::Deleting => return Ok(()),
                // A delta being applied is not a snapshot yet; `abort_receive` drops it.
                SnapshotState::Receiving => return Err(StoreError::SnapshotIdNotFound(id)),
                // Already reclaimed: only the record remains.
                SnapshotState::Invalid => m.drop_snapshot_record(id.0)?,
                SnapshotState::Ready | SnapshotState::Invalidating => {
                    let rec = SnapshotRecord {
                        state: SnapshotState::Deleting,
                        ..rec
                    };
                    m.update_snapshot(id, rec)?;
                }
            }
            m.pager.generation
        };
        self.commit_wait(generation)?;
        tracing::info!(volume = %self.volume_name, id = id.0, "snapshot deleted; reclaiming its space");
        self.wake_reclaimer();
        Ok(())
    }

    /// One bounded batch of space reclamation, committed. Call repeatedly (the agent does so
    /// from a background thread) until the progress says idle.
    pub fn reclaim_step(&self, budget: usize) -> Result<ReclaimProgress> {
        let (progress, generation, dirty) = {
            let mut m = self.meta.write();
            let p = m.reclaim_step(budget)?;
            (p, m.pager.generation, m.dirty)
        };
        if dirty {
            self.commit_wait(generation)?;
        }
        Ok(progress)
    }

    /// Reclaims until nothing is pending.
    pub fn reclaim_all(&self) -> Result<ReclaimProgress> {
        loop {
            let p = self.reclaim_step(4096)?;
            if p.is_idle() {
                return Ok(p);
            }
        }
    }

    pub fn reclaim_progress(&self) -> ReclaimProgress {
        self.meta.read().reclaim_progress()
    }

    pub(super) fn wake_reclaimer(&self) {
        *self.reclaim_wanted.lock() = true;
        self.reclaim_wake.notify_all();
    }

    /// Blocks until a deletion may have left work for `reclaim_step`, or `timeout` passes.
    pub fn wait_for_reclaim_work(&self, timeout: Duration) {
        let mut wanted = self.reclaim_wanted.lock();
        if !*wanted {
            self.reclaim_wake.wait_for(&mut wanted, timeout);
        }
        *wanted = false;
    }
}

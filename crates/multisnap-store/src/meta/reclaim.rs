//! Reclamation: deleting a snapshot only flips its record to `Deleting` (or `Invalidating`);
//! `reclaim_step` then removes, a bounded batch at a time, every private chunk of such a
//! snapshot and every exception whose snapshot range no longer holds a live snapshot, freeing
//! their chunks. A pass ends at the end of the exception index; then the records of the
//! snapshots it covered are dropped (or marked `Invalid`). A power cut mid-pass loses nothing:
//! the records still say what to reclaim, and the next pass redoes what did not commit.

use super::Meta;
use crate::error::Result;
use crate::format::exception::{holds_store_chunk, private_chunk, Exception};
use crate::format::node::Key;
use crate::format::snapshot_record::{SnapshotRecord, SnapshotState};
use crate::ids::SnapshotId;
use crate::pdata::btree;
use std::collections::BTreeSet;

/// Where a reclamation pass stands.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReclaimProgress {
    /// Snapshots whose space is being reclaimed (this pass and the next).
    pub pending: Vec<SnapshotId>,
    /// Origin chunk the exception scan has reached, out of `chunk_count`.
    pub scanned_chunk: u64,
    pub chunk_count: u64,
    /// Store chunks freed by reclamation since the store was opened.
    pub chunks_freed: u64,
}

impl ReclaimProgress {
    pub fn is_idle(&self) -> bool {
        self.pending.is_empty()
    }
}

#[derive(Default)]
pub(super) struct ReclaimPass {
    /// Snapshots this pass covers; empty when no pass runs.
    snapshots: BTreeSet<u64>,
    cursor: Key,
    private_done: bool,
}

fn successor(k: Key) -> Option<Key> {
    match k.lo.checked_add(1) {
        Some(lo) => Some(Key::new(k.hi, lo)),
        None => k.hi.checked_add(1).map(|hi| Key::new(hi, 0)),
    }
}

impl Meta {
    /// Snapshots waiting for their space to be reclaimed.
    fn reclaim_pending(&self) -> BTreeSet<u64> {
        let staging = self.receive.as_ref().map(|r| r.staging);
        self.snapshots
            .iter()
            .filter(|(id, r)| match r.state {
                SnapshotState::Deleting | SnapshotState::Invalidating => true,
                // A staging record no apply owns any more (aborted or discarded).
                SnapshotState::Receiving => Some(**id) != staging,
                SnapshotState::Ready | SnapshotState::Invalid => false,
            })
            .map(|(id, _)| *id)
            .collect()
    }

    pub fn reclaim_progress(&self) -> ReclaimProgress {
        ReclaimProgress {
            pending: self.reclaim_pending().into_iter().map(SnapshotId).collect(),
            scanned_chunk: if self.reclaim.snapshots.is_empty() {
                0
            } else {
                self.reclaim.cursor.hi
            },
            chunk_count: self.sb.origin_size.div_ceil(self.sb.chunk_size as u64),
            chunks_freed: self.chunks_reclaimed,
        }
    }

    /// Does a bounded amount of reclamation: at most `budget` removals and `4 * budget`
    /// entries examined. Returns where things stand.
    pub fn reclaim_step(&mut self, budget: usize) -> Result<ReclaimProgress> {
        self.check_usable()?;
        let budget = budget.max(1);
        if self.reclaim.snapshots.is_empty() {
            let pending = self.reclaim_pending();
            if pending.is_empty() {
                return Ok(self.reclaim_progress());
            }
            self.reclaim = ReclaimPass {
                snapshots: pending,
                cursor: Key::MIN,
                private_done: false,
            };
        }
        if !self.reclaim.private_done {
            let removed = self.reclaim_private(budget)?;
            if removed >= budget {
                return Ok(self.reclaim_progress());
            }
            self.reclaim.private_done = true;
        }
        let finished = self.reclaim_exceptions(budget)?;
        if finished {
            let covered = std::mem::take(&mut self.reclaim.snapshots);
            for id in covered {
                self.private_owners.remove(&id);
                let Some(rec) = self.snapshots.get(&id).cloned() else {
                    continue;
                };
                match rec.state {
                    SnapshotState::Deleting | SnapshotState::Receiving => {
                        self.drop_snapshot_record(id)?
                    }
                    SnapshotState::Invalidating => {
                        let rec = SnapshotRecord {
                            state: SnapshotState::Invalid,
                            ..rec
                        };
                        self.update_snapshot(SnapshotId(id), rec)?;
                    }
                    _ => {}
                }
            }
            self.reclaim = ReclaimPass::default();
        }
        Ok(self.reclaim_progress())
    }

    fn reclaim_private(&mut self, budget: usize) -> Result<usize> {
        let mut victims = Vec::new();
        let root = self.private_root;
        for &id in &self.reclaim.snapshots {
            let room = budget - victims.len();
            if room == 0 {
                break;
            }
            btree::walk(
                &mut self.pager,
                root,
                &Key::new(id, 0),
                &Key::new(id, u64::MAX),
                0,
                &mut |k, v| {
                    victims.push((k, private_chunk(v)));
                    Ok(victims.len() < budget)
                },
            )?;
        }
        for (k, chunk) in &victims {
            self.remove_private(*k)?;
            if holds_store_chunk(*chunk) {
                self.free_chunk(*chunk);
                self.chunks_reclaimed += 1;
            }
        }
        Ok(victims.len())
    }

    /// Scans exceptions from the cursor; returns true when the scan reached the end.
    fn reclaim_exceptions(&mut self, budget: usize) -> Result<bool> {
        let Some(&oldest_pending) = self.reclaim.snapshots.iter().next() else {
            return Ok(true);
        };
        let mut victims = Vec::new();
        let mut examined = 0usize;
        let mut last_seen = None;
        let root = self.exception_root;
        let from = self.reclaim.cursor;
        let live = &self.live;
        let reached_end = btree::walk(
            &mut self.pager,
            root,
            &from,
            &Key::MAX,
            oldest_pending,
            &mut |k, v| {
                let e = Exception::from_entry(k, v);
                examined += 1;
                last_seen = Some(k);
                if live.range(e.first.0..=e.last.0).next().is_none() {
                    victims.push(e);
                }
                Ok(victims.len() < budget && examined < 4 * budget)
            },
        )?;
        for e in &victims {
            self.locations.forget_chunk(e.chunk);
            let root = self.exception_root;
            self.reserve_for_update(root, false)?;
            self.dirty = true;
            match btree::remove(&mut self.pager, root, &e.key()) {
                Ok((new_root, _)) => self.exception_root = new_root,
                Err(err) => return Err(self.poison(err)),
            }
            self.exception_count -= 1;
            self.free_chunk(e.store);
            self.chunks_reclaimed += 1;
        }
        match last_seen.and_then(successor) {
            Some(next) if !reached_end => {
                self.reclaim.cursor = next;
                Ok(false)
            }
            _ => Ok(true),
        }
    }
}

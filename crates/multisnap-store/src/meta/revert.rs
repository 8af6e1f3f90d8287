//! The metadata side of a rollback in place (`store/revert.rs` drives it): the state the
//! superblock keeps (`Meta::revert`), the marks of chunks merged ahead of the cursor (private
//! map entries under [`MERGE_OWNER`], mirrored in a bitmap), which chunks are still pending,
//! and the cursor's advance.
//!
//! Pending chunks are implicit: chunk `c` is pending while `c >= cursor`, `c` carries no mark
//! and the target snapshot has an entry (an exception it sees, or a private chunk) for `c`.
//! Where the target has no entry it reads the origin itself, so the origin already reads as
//! the target there.

use super::Meta;
use crate::error::Result;
use crate::format::exception::{Exception, MERGED_CHUNK, MERGE_OWNER};
use crate::format::node::Key;
use crate::format::superblock::RevertState;
use crate::ids::{OriginChunk, SnapshotId, StoreChunk};
use crate::pdata::btree;

/// Origin chunks merged ahead of the cursor: one bit per chunk (2 KiB per GiB of origin at
/// 64 KiB chunks), kept only while a merge runs. The private map holds the same set durably.
#[derive(Default)]
pub(crate) struct MergeMarks {
    words: Vec<u64>,
}

impl MergeMarks {
    pub(crate) fn for_chunks(chunks: u64) -> MergeMarks {
        MergeMarks {
            words: vec![0; chunks.div_ceil(64) as usize],
        }
    }

    pub(crate) fn contains(&self, c: u64) -> bool {
        self.words
            .get((c / 64) as usize)
            .is_some_and(|w| w & (1 << (c % 64)) != 0)
    }

    pub(crate) fn set(&mut self, c: u64, on: bool) {
        if let Some(w) = self.words.get_mut((c / 64) as usize) {
            if on {
                *w |= 1 << (c % 64);
            } else {
                *w &= !(1 << (c % 64));
            }
        }
    }
}

/// The next stretch of a merge: the pending chunks in `cursor..bound` with where the target
/// keeps each, and the marks in that stretch (which the cursor's advance removes).
pub struct MergeBatch {
    pub pending: Vec<(u64, StoreChunk)>,
    pub bound: u64,
}

impl Meta {
    pub fn chunk_count(&self) -> u64 {
        self.sb.origin_size.div_ceil(u64::from(self.sb.chunk_size))
    }

    /// Loads the merge marks of the rollback in progress (on open).
    pub fn load_merge_marks(&mut self) -> Result<()> {
        self.merged = MergeMarks::default();
        if self.revert.is_some() {
            self.merged = self.load_marks(MERGE_OWNER, self.chunk_count())?;
        }
        Ok(())
    }

    /// The marks under private-map owner `owner`, for an origin of `chunks` chunks.
    pub(super) fn load_marks(&mut self, owner: u64, chunks: u64) -> Result<MergeMarks> {
        let mut marks = MergeMarks::for_chunks(chunks);
        let root = self.private_root;
        btree::walk(
            &mut self.pager,
            root,
            &Key::new(owner, 0),
            &Key::new(owner, u64::MAX),
            0,
            &mut |k, _| {
                marks.set(k.lo, true);
                Ok(true)
            },
        )?;
        Ok(marks)
    }

    /// Removes the marks under `owner` for chunks `from..bound` from the private map, and
    /// returns their chunks.
    pub(super) fn remove_marks(&mut self, owner: u64, from: u64, bound: u64) -> Result<Vec<u64>> {
        if bound <= from {
            return Ok(Vec::new());
        }
        let mut stale = Vec::new();
        let root = self.private_root;
        btree::walk(
            &mut self.pager,
            root,
            &Key::new(owner, from),
            &Key::new(owner, bound - 1),
            0,
            &mut |k, _| {
                stale.push(k);
                Ok(true)
            },
        )?;
        for k in &stale {
            self.remove_private(*k)?;
        }
        Ok(stale.into_iter().map(|k| k.lo).collect())
    }

    /// Starts a rollback to `target` (the caller checked it is a live, read-only snapshot and
    /// no other rollback or delta apply runs).
    pub fn begin_revert(&mut self, target: SnapshotId) {
        self.revert = Some(RevertState {
            target: target.0,
            newest: self.newest_snapshot(),
            cursor: 0,
        });
        self.merged = MergeMarks::for_chunks(self.chunk_count());
        self.dirty = true;
    }

    pub fn is_merged(&self, c: u64) -> bool {
        self.merged.contains(c)
    }

    /// Marks chunk `c` as merged ahead of the cursor. The caller has made the origin hold the
    /// target's data there durably, or the target reads the origin there anyway.
    pub fn mark_merged(&mut self, c: u64) -> Result<()> {
        // Below the cursor a mark would mean nothing and outlive the merge.
        let below_cursor = self.revert.as_ref().is_none_or(|r| c < r.cursor);
        if below_cursor || self.is_merged(c) {
            return Ok(());
        }
        self.insert_private(SnapshotId(MERGE_OWNER), OriginChunk(c), MERGED_CHUNK)?;
        self.merged.set(c, true);
        Ok(())
    }

    /// Where the target keeps chunk `c` if `c` is still pending, `None` otherwise (the origin
    /// already reads as the target there, or no rollback runs).
    pub fn pending_location(&mut self, c: u64) -> Result<Option<StoreChunk>> {
        let Some(r) = self.revert.clone() else {
            return Ok(None);
        };
        if c < r.cursor || self.is_merged(c) {
            return Ok(None);
        }
        let target = SnapshotId(r.target);
        let has_private = self.private_owners.contains(&r.target);
        self.locate(target, has_private, OriginChunk(c))
    }

    /// Whether snapshot `snap` (`None`: the origin) reads pending chunks from the target:
    /// the origin and snapshots taken after the rollback do, older ones read the origin's
    /// pre-rollback data until the chunk is merged.
    pub fn reads_through_merge(&self, snap: Option<SnapshotId>) -> bool {
        match (&self.revert, snap) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(r), Some(s)) => s.0 > r.newest,
        }
    }

    /// The chunks in `from..` where snapshot `snap` has an entry, with the store chunk that
    /// holds its data, in order, and the bound below which the list is complete: at most
    /// `limit` entries, examining a bounded number of index entries. `bound > from` always.
    pub fn snapshot_entries(
        &mut self,
        snap: SnapshotId,
        from: u64,
        limit: usize,
    ) -> Result<(Vec<(u64, StoreChunk)>, u64)> {
        let limit = limit.max(1);
        let mut bound = self.chunk_count();
        let mut found: Vec<(u64, StoreChunk)> = Vec::new();
        let mut examined = 0usize;
        let mut last_chunk = from;
        let root = self.exception_root;
        // Exceptions whose newest snapshot is older than `snap` cannot serve it: the stamps
        // let the walk skip whole subtrees of them.
        let done = btree::walk(
            &mut self.pager,
            root,
            &Key::new(from, 0),
            &Key::MAX,
            snap.0,
            &mut |k, v| {
                let e = Exception::from_entry(k, v);
                examined += 1;
                last_chunk = k.hi;
                if e.first <= snap && snap <= e.last {
                    found.push((k.hi, e.store));
                }
                Ok(found.len() < limit && examined < 4 * limit)
            },
        )?;
        if !done {
            // Stopped on a found entry (no other entry of that chunk serves `snap`), or on
            // the examination limit, where more entries of `last_chunk` may follow.
            bound = if found.len() >= limit {
                last_chunk + 1
            } else {
                last_chunk
            };
            found.retain(|(c, _)| *c < bound);
            if bound <= from {
                // One chunk with more ranges than the limit: look it up on its own.
                bound = from + 1;
                found = self
                    .find_exception(OriginChunk(from), snap)?
                    .map(|e| vec![(from, e.store)])
                    .unwrap_or_default();
            }
        }
        if self.private_owners.contains(&snap.0) {
            let private = self.private_entries(snap, from, limit)?;
            if private.len() >= limit {
                if let Some((last, _)) = private.last() {
                    bound = bound.min(last.0 + 1);
                }
            }
            found.retain(|(c, _)| *c < bound);
            for (c, x) in private.into_iter().filter(|(c, _)| c.0 < bound) {
                // A private chunk hides the exceptions for its snapshot.
                match found.binary_search_by_key(&c.0, |(fc, _)| *fc) {
                    Ok(i) => found[i].1 = x,
                    Err(i) => found.insert(i, (c.0, x)),
                }
            }
        }
        Ok((found, bound))
    }

    /// The next stretch of the merge from the cursor: up to about `limit` pending chunks and
    /// marks. `None` when no rollback runs.
    pub fn merge_batch(&mut self, limit: usize) -> Result<Option<MergeBatch>> {
        let Some(r) = self.revert.clone() else {
            return Ok(None);
        };
        let (mut entries, mut bound) =
            self.snapshot_entries(SnapshotId(r.target), r.cursor, limit)?;
        // The marks count against the limit too: the advance removes them in one commit.
        let marks = self.private_entries(SnapshotId(MERGE_OWNER), r.cursor, limit.max(1))?;
        if marks.len() >= limit.max(1) {
            if let Some((last, _)) = marks.last() {
                bound = bound.min(last.0 + 1);
            }
        }
        entries.retain(|(c, _)| *c < bound && !self.is_merged(*c));
        Ok(Some(MergeBatch {
            pending: entries,
            bound,
        }))
    }

    /// Moves the cursor to `bound` (every pending chunk below it is merged and durable in the
    /// origin) and drops the marks below it; at the end of the origin the rollback is over.
    /// Returns whether it is.
    pub fn advance_merge(&mut self, bound: u64) -> Result<bool> {
        let Some(mut r) = self.revert.clone() else {
            return Ok(true);
        };
        if bound <= r.cursor {
            return Ok(false);
        }
        // Marks added by writers since the batch was chosen are in the range too.
        for c in self.remove_marks(MERGE_OWNER, r.cursor, bound)? {
            self.merged.set(c, false);
        }
        self.dirty = true;
        if bound >= self.chunk_count() {
            self.revert = None;
            self.merged = MergeMarks::default();
            return Ok(true);
        }
        r.cursor = bound;
        self.revert = Some(r);
        Ok(false)
    }

    /// Pending chunks in `first..=last`, for the maps of changed chunks.
    pub fn pending_chunks(&mut self, first: u64, last: u64) -> Result<Vec<u64>> {
        let Some(r) = self.revert.clone() else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        let mut from = first.max(r.cursor);
        while from <= last {
            let (entries, bound) = self.snapshot_entries(SnapshotId(r.target), from, 4096)?;
            out.extend(
                entries
                    .into_iter()
                    .map(|(c, _)| c)
                    .filter(|c| *c <= last && !self.is_merged(*c)),
            );
            from = bound;
        }
        Ok(out)
    }
}

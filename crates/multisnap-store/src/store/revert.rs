//! Rollback in place: the origin becomes what a snapshot holds at once, and the data is
//! copied back into the origin in the background, in bounded, crash-safe steps.
//!
//! `revert_to` commits a small state (target, the newest snapshot id at that moment, a merge
//! cursor at chunk 0) and returns. From then on a chunk is *pending* while it lies at or past
//! the cursor, carries no merge mark, and the target has an entry for it (`Meta::
//! pending_location`); where the target has none, it reads the origin itself, so the origin
//! already reads as the target there. Who reads what:
//! - the origin, and snapshots taken after the revert, read a pending chunk from the target's
//!   store chunk;
//! - snapshots taken before it read the origin's old data, still in place, until the chunk
//!   is merged.
//!
//! Merging chunk `c` (`merge_chunks`): copy out the origin's old data for the older
//! snapshots that still see it (copy before overwrite, capped at the revert's newest id, and
//! committed), write the target's data into the origin, make it durable, and only then record
//! `c` as merged (the cursor passing it, or a mark) in a commit. A power cut before the record
//! leaves `c` pending, read from the target, and nobody reads the half-written origin there;
//! redoing the merge writes the same bytes again.
//!
//! An origin write first merges its pending chunks out of order and marks every chunk it
//! touches at or past the cursor (`ready_for_write`, `merge_ahead`), so the merge never overwrites a
//! write, and a chunk the target gains an exception for by that write's copy-out (it read the
//! origin there) is not mistaken for pending later.

use super::*;

/// Where a rollback's merge stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MergeProgress {
    pub target: SnapshotId,
    pub target_name: String,
    /// Every origin chunk below it is merged: the merge walks the origin in address order, so
    /// `cursor / chunk_count` is its progress (exact, and free to compute; the number of
    /// pending chunks would take a scan of the target's entries).
    pub cursor: u64,
    pub chunk_count: u64,
}

impl Store {
    /// Rolls the origin back to snapshot `id`: from the moment this returns, the origin reads
    /// byte for byte as `id`, every snapshot keeps its contents and `id` stays as it is. Costs
    /// one commit (three on a store of format version 3 or older, which is converted to
    /// version 4 first, as a first resize does); the data is merged into the origin by
    /// [`Store::merge_step`].
    /// Refused while another rollback merges, while a delta apply is in progress, and for a
    /// writable snapshot (its contents could change under the merge).
    pub fn revert_to(&self, id: SnapshotId) -> Result<MergeProgress> {
        let _merge = self.merge_lock.lock();
        let _receive = self.receive_lock.lock();
        // No origin write in flight; the covered-chunk map starts over, since chunks every
        // snapshot had a copy of may now need merging first.
        let _barrier = self.exclusive_barrier();
        // The merge copies into the origin and reads through it: no write may be parked.
        self.land_parked()?;
        // Both superblock slots at version 4 before anything only version 4 describes is
        // written (docs/FORMAT.md, "Versions"); the same conversion a first resize makes.
        self.convert_to_sized_snapshots()?;
        self.commit_now(|m| {
            self.check_revert_allowed(m, id)?;
            m.begin_revert(id);
            Ok(())
        })?;
        self.merge_hint.store(0, Ordering::Release);
        tracing::info!(volume = %self.volume_name, snapshot = id.0, "origin rolled back; merging in the background");
        self.wake_reclaimer();
        self.merge_progress()
            .ok_or(StoreError::SnapshotIdNotFound(id))
    }

    fn check_revert_allowed(&self, m: &Meta, id: SnapshotId) -> Result<()> {
        if let Some(p) = merge_progress_of(m) {
            return Err(merge_in_progress(&p, "another rollback"));
        }
        if m.receive.is_some() {
            return Err(StoreError::ReceiveInProgress {
                name: m.receiving_name(),
            });
        }
        // The merge writes the origin where unhydrated chunks would still read the source.
        self.refuse_during_hydration(m, "a rollback")?;
        m.readable_snapshot(id)?;
        match m.snapshots.get(&id.0) {
            Some(rec) if rec.writable => Err(StoreError::RevertToWritable(rec.name.clone())),
            // Beyond its size such a snapshot has no data to give the origin.
            Some(rec) if rec.size != self.origin_size() => Err(StoreError::Unsupported {
                what: "rolling back to a snapshot taken before the volume was resized",
                why: "the volume would have to shrink to the snapshot's size",
            }),
            Some(_) => Ok(()),
            None => Err(StoreError::SnapshotIdNotFound(id)),
        }
    }

    /// The rollback being merged, if any.
    pub fn merge_progress(&self) -> Option<MergeProgress> {
        merge_progress_of(&self.meta.read())
    }

    /// The error for an operation that must wait for the merge, or `Ok` when none runs.
    pub(super) fn refuse_during_merge(&self, m: &Meta, what: &'static str) -> Result<()> {
        match merge_progress_of(m) {
            Some(p) => Err(merge_in_progress(&p, what)),
            None => Ok(()),
        }
    }

    /// Merges the next stretch of a rollback into the origin: at most `max_chunks` chunks
    /// copied (and about as many index entries examined), then one commit that moves the
    /// cursor. Returns where the merge stands, `None` once it has ended (or none runs).
    pub fn merge_step(&self, max_chunks: usize) -> Result<Option<MergeProgress>> {
        let _merge = self.merge_lock.lock();
        let mut progress = None;
        self.with_full_policy(|| {
            progress = self.try_merge_step(max_chunks)?;
            Ok(())
        })?;
        Ok(progress)
    }

    /// Runs [`Store::merge_step`] until the merge has ended.
    pub fn merge_all(&self) -> Result<()> {
        while self.merge_step(256)?.is_some() {}
        Ok(())
    }

    fn try_merge_step(&self, max_chunks: usize) -> Result<Option<MergeProgress>> {
        let (batch, newest) = {
            let mut m = self.meta.write();
            m.check_usable()?;
            let Some(newest) = m.revert.as_ref().map(|r| r.newest) else {
                return Ok(None);
            };
            let Some(batch) = m.merge_batch(max_chunks)? else {
                return Ok(None);
            };
            (batch, newest)
        };
        if !batch.pending.is_empty() {
            // Like an origin write: the barrier shared, the chunks' stripes exclusive.
            let _barrier = self.barrier.read();
            let _stripes = self.lock_chunk_stripes(batch.pending.iter().map(|(c, _)| *c));
            // Writers may have merged some of them meanwhile.
            let todo: Vec<(u64, StoreChunk)> = {
                let m = self.meta.read();
                batch
                    .pending
                    .into_iter()
                    .filter(|(c, _)| !m.is_merged(*c))
                    .collect()
            };
            self.merge_chunks(&todo, newest)?;
        }
        self.sync_origin()?;
        let ended = self.transact(|m| {
            m.check_usable()?;
            m.advance_merge(batch.bound)
        })?;
        if ended {
            self.merge_hint.store(u64::MAX, Ordering::Release);
            tracing::info!(volume = %self.volume_name, "rollback merged into the origin");
            return Ok(None);
        }
        self.merge_hint.store(batch.bound, Ordering::Release);
        Ok(self.merge_progress())
    }

    /// Copies the target's data of `chunks` (chunk, the target's store chunk) into the origin,
    /// after preserving the origin's old data for the snapshots up to `newest` that still see
    /// it. The caller holds the barrier shared and the chunks' stripes exclusively, and makes
    /// the origin durable before recording the chunks as merged.
    fn merge_chunks(&self, chunks: &[(u64, StoreChunk)], newest: u64) -> Result<()> {
        if chunks.is_empty() {
            return Ok(());
        }
        self.preserve_through(chunks.iter().map(|(c, _)| *c), Some(newest))?;
        let cs = u64::from(self.chunk_size);
        let mut buf = vec![0u8; self.chunk_size as usize];
        for &(c, x) in chunks {
            let len = self.chunk_len(c);
            let at = x.0 * cs;
            self.dev
                .read_at(&mut buf[..len], at)
                .map_err(|e| StoreError::io("store", at, len, e))?;
            self.write_origin_at(&buf[..len], c * cs)?;
        }
        self.chunks_merged
            .fetch_add(chunks.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Under an origin write's barrier and stripes: whether the write may go ahead, that is
    /// none of `chunks` is pending. Marks the chunks at or past the cursor that are not
    /// pending (the origin reads as the target there already): the mark goes into the
    /// transaction this write's copy-out commits (the target, reading the origin there, gets
    /// an exception from it), so such a chunk never turns pending. Pending chunks are left
    /// to [`Store::merge_ahead`], which needs the stripes free.
    pub(super) fn ready_for_write(&self, chunks: std::ops::RangeInclusive<u64>) -> Result<bool> {
        if !self.may_meet_merge(*chunks.end()) {
            return Ok(true);
        }
        let mut m = self.meta.write();
        m.check_usable()?;
        let Some(cursor) = m.revert.as_ref().map(|r| r.cursor) else {
            return Ok(true);
        };
        let mut ready = true;
        for c in chunks {
            if c < cursor || m.is_merged(c) {
                continue;
            }
            match m.pending_location(c)? {
                Some(_) => ready = false,
                None => m.mark_merged(c)?,
            }
        }
        Ok(ready)
    }

    /// Merges the pending chunks among `chunks` ahead of the cursor for a write that is about
    /// to go to them, durably, and marks them, so the background merge leaves the write alone.
    /// The caller holds no lock: the origin sync takes stripes of its own. The merge lock is
    /// held throughout, so the cursor cannot pass the chunks and no new rollback can start
    /// before the marks are in.
    pub(super) fn merge_ahead(&self, chunks: std::ops::RangeInclusive<u64>) -> Result<()> {
        let _merge = self.merge_lock.lock();
        let todo = {
            let _barrier = self.barrier.read();
            let _stripes = self.lock_stripes(chunks.clone());
            let (todo, newest) = {
                let mut m = self.meta.write();
                m.check_usable()?;
                let Some(r) = m.revert.clone() else {
                    return Ok(());
                };
                let mut todo = Vec::new();
                for c in chunks {
                    if c < r.cursor || m.is_merged(c) {
                        continue;
                    }
                    if let Some(x) = m.pending_location(c)? {
                        todo.push((c, x));
                    }
                }
                (todo, r.newest)
            };
            self.merge_chunks(&todo, newest)?;
            todo
        };
        if todo.is_empty() {
            return Ok(());
        }
        // The target's data must be durable in the origin before a commit may carry the marks.
        self.sync_origin()?;
        let mut m = self.meta.write();
        for (c, _) in &todo {
            m.mark_merged(*c)?;
        }
        Ok(())
    }

    /// Whether a request touching chunks up to `last` may meet a pending chunk.
    pub(super) fn may_meet_merge(&self, last: u64) -> bool {
        last >= self.merge_hint.load(Ordering::Acquire)
    }

    /// An origin read while a merge runs: pending chunks come from the target.
    pub(super) fn read_origin_merging(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let cs = u64::from(self.chunk_size);
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let (chunk, within) = (pos / cs, pos % cs);
            let n = ((cs - within) as usize).min(buf.len() - done);
            let located = self.meta.write().pending_location(chunk)?;
            self.read_located(located, chunk, within, &mut buf[done..done + n])?;
            done += n;
        }
        Ok(())
    }

    /// For a snapshot taken after the revert: its chunks that read the origin (`None`) read
    /// the target's data instead while they are pending. `first` is the chunk of `located[0]`.
    pub(super) fn redirect_pending(
        &self,
        snap: SnapshotId,
        first: u64,
        located: &mut [Option<StoreChunk>],
    ) -> Result<()> {
        let mut m = self.meta.write();
        if !m.reads_through_merge(Some(snap)) {
            return Ok(());
        }
        for (i, x) in located.iter_mut().enumerate() {
            if x.is_none() {
                *x = m.pending_location(first + i as u64)?;
            }
        }
        Ok(())
    }

    /// Whether `view` reads `chunk` from the store: its own entry, or the target's while the
    /// chunk is pending and `view` reads through the merge.
    pub(super) fn reads_from_store(&self, view: View, chunk: u64) -> Result<bool> {
        let mut m = self.meta.write();
        let snap = match view {
            View::Origin => None,
            View::Snapshot(id) => {
                let has_private = m.readable_snapshot(id)?;
                if m.locate(id, has_private, OriginChunk(chunk))?.is_some() {
                    return Ok(true);
                }
                Some(id)
            }
        };
        Ok(m.reads_through_merge(snap) && m.pending_location(chunk)?.is_some())
    }
}

fn merge_progress_of(m: &Meta) -> Option<MergeProgress> {
    let r = m.revert.as_ref()?;
    Some(MergeProgress {
        target: SnapshotId(r.target),
        target_name: m
            .snapshots
            .get(&r.target)
            .map(|s| s.name.clone())
            .unwrap_or_default(),
        cursor: r.cursor,
        chunk_count: m.chunk_count(),
    })
}

fn merge_in_progress(p: &MergeProgress, what: &'static str) -> StoreError {
    StoreError::MergeInProgress {
        target: p.target_name.clone(),
        cursor: p.cursor,
        chunks: p.chunk_count,
        what,
    }
}

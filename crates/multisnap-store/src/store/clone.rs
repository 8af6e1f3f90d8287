//! Clones: a new, independent volume whose contents start as a snapshot of another volume (its
//! *source*), usable at once and hydrated in the background, in bounded, crash-safe steps.
//!
//! The clone's own origin starts all zeros. An origin chunk *needs the source* while it lies at
//! or past the hydration cursor, within the source snapshot's size, and carries no mark
//! (`Meta::needs_source`); reads of such a chunk, by the origin or by any of the clone's
//! snapshots that reads the origin there, go to the source snapshot (`read_located`).
//!
//! Hydrating chunk `c` (`copy_from_source`): read the source snapshot's data of `c`, write
//! its non-zero blocks into the origin (the rest is zero already), make the origin durable (a
//! journal batch or an origin sync, as a flush does), and only then record `c` as hydrated,
//! by moving the cursor past it or by a mark, in a commit. A power cut before that commit
//! leaves `c` reading the source; the half-written origin chunk is read by nobody, and redoing
//! the copy writes the same bytes. Chunks the source reads as holes need no copy: the cursor
//! passes them, and the origin reads zeros there as the source does.
//!
//! So an unhydrated chunk of the origin holds, block by block, zeros or the source's data:
//! writes never reach it. An origin write to unhydrated chunks first hydrates them out of
//! order and commits their marks (`hydrate_ahead`), and only then writes. Its copy-out for the
//! clone's own snapshots then preserves the source's data, which those snapshots read there.
//!
//! The source is another volume's store, handed over by whoever opens both
//! (`attach_clone_source`): the store keeps the source's uuid and snapshot id, not a path. The
//! source snapshot is *held* while the clone hydrates: deleting it, making it writable or
//! invalidating it is refused. When the cursor reaches the end of the source snapshot, one
//! commit clears the state; the hold is released and the clone has no tie to its source.

use super::*;
use crate::format::superblock::CloneState;

/// The store a clone reads its unhydrated chunks from, and which of its snapshots.
#[derive(Clone)]
pub struct CloneSource {
    pub store: Arc<Store>,
    pub snapshot: SnapshotId,
}

/// Where a clone's hydration stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HydrationProgress {
    pub source_volume: VolumeUuid,
    /// The source volume's name and the snapshot's, when the source is attached (empty names
    /// otherwise).
    pub source_volume_name: String,
    pub source_snapshot: SnapshotId,
    pub source_snapshot_name: String,
    /// Whether the source is attached, so that reads and the hydration can proceed.
    pub attached: bool,
    /// Every chunk below it is hydrated (the walk is in address order).
    pub cursor: u64,
    /// The chunks the hydration walks: those covering the source snapshot.
    pub chunk_count: u64,
    /// Bytes of source data written into the clone's origin so far (zeros are not written).
    pub hydrated_bytes: u64,
}

/// Chunks of the source's allocation map one hydration step examines at most.
const SCAN_CHUNKS: u64 = 4096;

impl Store {
    /// Formats `dev` as the store of a new clone of snapshot `snapshot` of `source`: from the
    /// moment this returns, `origin` reads as that snapshot (zeros past its size). `origin`
    /// must read as zeros and be at least as large as the snapshot. The snapshot must be a
    /// live, read-only one; it is held (see [`Store::hold_snapshot`]) until the hydration ends.
    pub fn create_clone(
        origin: Arc<dyn BlockDev>,
        dev: Arc<dyn BlockDev>,
        opts: &CreateOptions,
        source: Arc<Store>,
        snapshot: SnapshotId,
    ) -> Result<Store> {
        let info = source.snapshot(snapshot)?;
        if info.state != SnapshotState::Ready {
            return Err(StoreError::SnapshotIdNotFound(snapshot));
        }
        if info.writable {
            return Err(StoreError::CloneOfWritable(info.name));
        }
        let origin_size = origin
            .size()
            .map_err(|e| StoreError::io("origin", 0, 0, e))?;
        if origin_size < info.size {
            return Err(StoreError::InvalidGeometry(format!(
                "a clone of snapshot {:?} ({} bytes) needs an origin at least that large, not {origin_size} bytes",
                info.name, info.size
            )));
        }
        if !reads_as_zeros(&*origin, origin_size)? {
            return Err(StoreError::OriginNotEmpty);
        }
        let state = CloneState {
            source_volume: *source.volume_uuid().as_bytes(),
            source_snapshot: snapshot.0,
            source_size: info.size,
            cursor: 0,
            hydrated_bytes: 0,
        };
        let store = Store::create_with(origin, dev, opts, Some(state))?;
        store.attach_clone_source(source)?;
        tracing::info!(volume = %store.volume_name, source_snapshot = %info.name, "clone created; hydrating in the background");
        Ok(store)
    }

    /// The source volume a hydrating clone needs attached, or `None` when this store is no
    /// clone in progress.
    pub fn clone_source_volume(&self) -> Option<VolumeUuid> {
        let m = self.meta.read();
        m.clone
            .as_ref()
            .map(|c| VolumeUuid::from_bytes(c.source_volume))
    }

    /// Wires a hydrating clone to its source's store (after both are opened): checks it is the
    /// volume recorded and holds the snapshot. Nothing to do for a store that is no clone in
    /// progress.
    pub fn attach_clone_source(&self, source: Arc<Store>) -> Result<()> {
        let Some(state) = self.meta.read().clone.clone() else {
            return Ok(());
        };
        let wanted = VolumeUuid::from_bytes(state.source_volume);
        let missing = |why: String| StoreError::CloneSourceMissing {
            source_volume: wanted,
            snapshot: state.source_snapshot,
            why,
        };
        if source.volume_uuid() != wanted {
            return Err(missing(format!(
                "volume {} ({}) was offered instead",
                source.volume_name(),
                source.volume_uuid()
            )));
        }
        let snapshot = SnapshotId(state.source_snapshot);
        source
            .hold_snapshot(snapshot, &self.volume_name)
            .map_err(|e| missing(e.to_string()))?;
        let old = self.clone_source.write().replace(CloneSource {
            store: source,
            snapshot,
        });
        if let Some(old) = old {
            old.store.release_snapshot(old.snapshot, &self.volume_name);
        }
        self.hydrate_hint.store(state.cursor, Ordering::Release);
        self.wake_reclaimer();
        Ok(())
    }

    /// Lets go of the source (its snapshot's hold released), for a clone about to be deleted.
    /// Reads of unhydrated chunks fail from now on.
    pub fn detach_clone_source(&self) {
        if let Some(old) = self.clone_source.write().take() {
            old.store.release_snapshot(old.snapshot, &self.volume_name);
        }
    }

    /// The hydration in progress, if any.
    pub fn hydration(&self) -> Option<HydrationProgress> {
        let (state, chunk_count) = {
            let m = self.meta.read();
            (m.clone.clone()?, m.source_chunks())
        };
        let source = self.clone_source.read().clone();
        let (source_volume_name, source_snapshot_name) = match &source {
            Some(s) => (
                s.store.volume_name().to_string(),
                s.store
                    .snapshot(s.snapshot)
                    .map(|i| i.name)
                    .unwrap_or_default(),
            ),
            None => (String::new(), String::new()),
        };
        Some(HydrationProgress {
            source_volume: VolumeUuid::from_bytes(state.source_volume),
            source_volume_name,
            source_snapshot: SnapshotId(state.source_snapshot),
            source_snapshot_name,
            attached: source.is_some(),
            cursor: state.cursor,
            chunk_count,
            hydrated_bytes: state.hydrated_bytes,
        })
    }

    /// The error for an operation that must wait for the hydration, or `Ok` when none runs.
    pub(super) fn refuse_during_hydration(&self, m: &Meta, what: &'static str) -> Result<()> {
        match &m.clone {
            Some(c) => Err(StoreError::HydrationInProgress {
                source_volume: VolumeUuid::from_bytes(c.source_volume),
                snapshot: c.source_snapshot,
                cursor: c.cursor,
                chunks: m.source_chunks(),
                what,
            }),
            None => Ok(()),
        }
    }

    /// Holds snapshot `id` for clone `holder`: until released, deleting it, making it writable
    /// and the invalidate-oldest policy leave it alone. Refused for a snapshot that is not live
    /// and read-only.
    pub fn hold_snapshot(&self, id: SnapshotId, holder: &str) -> Result<()> {
        let mut m = self.meta.write();
        let rec = match m.snapshots.get(&id.0) {
            Some(r) if m.live.contains(&id.0) => r.clone(),
            _ => return Err(StoreError::SnapshotIdNotFound(id)),
        };
        if rec.writable {
            return Err(StoreError::CloneOfWritable(rec.name));
        }
        let holders = m.clone_holds.entry(id.0).or_default();
        if !holders.iter().any(|h| h == holder) {
            holders.push(holder.to_string());
        }
        Ok(())
    }

    /// Releases a hold taken by [`Store::hold_snapshot`].
    pub fn release_snapshot(&self, id: SnapshotId, holder: &str) {
        let mut m = self.meta.write();
        if let Some(holders) = m.clone_holds.get_mut(&id.0) {
            holders.retain(|h| h != holder);
            if holders.is_empty() {
                m.clone_holds.remove(&id.0);
            }
        }
    }

    /// The clones holding this store's snapshots: `(snapshot name, clone name)`.
    pub fn clone_holders(&self) -> Vec<(String, String)> {
        let m = self.meta.read();
        m.clone_holds
            .iter()
            .flat_map(|(id, holders)| {
                let name = m
                    .snapshots
                    .get(id)
                    .map(|r| r.name.clone())
                    .unwrap_or_default();
                holders.iter().map(move |h| (name.clone(), h.clone()))
            })
            .collect()
    }

    /// The refusal for changing a held snapshot, or `Ok`.
    pub(super) fn refuse_if_held(
        &self,
        m: &Meta,
        id: SnapshotId,
        what: &'static str,
    ) -> Result<()> {
        match m.clone_holder(id.0) {
            Some(clone) => Err(StoreError::HeldByClone {
                snapshot: m
                    .snapshots
                    .get(&id.0)
                    .map(|r| r.name.clone())
                    .unwrap_or_default(),
                clone: clone.to_string(),
                what,
            }),
            None => Ok(()),
        }
    }

    /// Whether a request touching chunks up to `last` may meet a chunk that needs the source.
    pub(super) fn may_need_source(&self, last: u64) -> bool {
        last >= self.hydrate_hint.load(Ordering::Acquire)
    }

    /// Whether origin chunk `chunk` still reads the source.
    pub(super) fn needs_source(&self, chunk: u64) -> bool {
        self.may_need_source(chunk) && self.meta.read().needs_source(chunk)
    }

    /// Reads `buf.len()` bytes at `offset` of the origin as the source snapshot has them
    /// (zeros past the snapshot's end). False, having read nothing, when the hydration ended
    /// meanwhile: the origin holds the data now.
    pub(super) fn read_source(&self, offset: u64, buf: &mut [u8]) -> Result<bool> {
        let Some((source, size)) = self.source_and_size()? else {
            return Ok(false);
        };
        let n = size.saturating_sub(offset).min(buf.len() as u64) as usize;
        buf[n..].fill(0);
        if n > 0 {
            let read = source
                .store
                .read(View::Snapshot(source.snapshot), offset, &mut buf[..n]);
            // The hydration may have ended and its source snapshot gone since the check.
            if read.is_err() && self.meta.read().clone.is_none() {
                return Ok(false);
            }
            read?;
        }
        Ok(true)
    }

    /// The attached source and the source snapshot's size; `None` when the hydration has
    /// ended. The source is taken before the state, since the end clears the state first.
    fn source_and_size(&self) -> Result<Option<(CloneSource, u64)>> {
        let source = self.clone_source.read().clone();
        let Some(state) = self.meta.read().clone.clone() else {
            return Ok(None);
        };
        match source {
            Some(s) => Ok(Some((s, state.source_size))),
            None => Err(StoreError::CloneSourceMissing {
                source_volume: VolumeUuid::from_bytes(state.source_volume),
                snapshot: state.source_snapshot,
                why: "it is not attached (its volume is not loaded)".into(),
            }),
        }
    }

    /// Allocation of `pos..pos + n` (within one chunk that needs the source) as the source
    /// snapshot has it; past its end, a hole.
    pub(super) fn source_allocation(&self, pos: u64, n: u64) -> Result<Vec<(u64, bool)>> {
        let Some((source, size)) = self.source_and_size()? else {
            return Ok(vec![(n, true)]);
        };
        let mut out = Vec::new();
        let inside = size.saturating_sub(pos).min(n);
        let mut at = pos;
        while at < pos + inside {
            let runs =
                source
                    .store
                    .allocation(View::Snapshot(source.snapshot), at, pos + inside - at)?;
            if runs.is_empty() {
                break;
            }
            for (len, data) in runs {
                out.push((len, data));
                at += len;
            }
        }
        if inside < n {
            out.push((n - inside, false));
        }
        Ok(out)
    }

    /// Copies the source's data of `chunks` into the origin: only its non-zero 4 KiB blocks,
    /// since an unhydrated chunk of the origin holds zeros or the source's data already. The
    /// caller holds the barrier shared and the chunks' stripes exclusively, and makes the
    /// origin durable before recording the chunks as hydrated. Returns the bytes written.
    fn copy_from_source(&self, chunks: &[u64]) -> Result<u64> {
        if chunks.is_empty() {
            return Ok(0);
        }
        let cs = u64::from(self.chunk_size);
        let mut buf = vec![0u8; self.chunk_size as usize];
        let mut written = 0u64;
        for &c in chunks {
            let len = self.chunk_len(c);
            if !self.read_source(c * cs, &mut buf[..len])? {
                continue;
            }
            for (start, end) in nonzero_runs(&buf[..len], BLOCK_SIZE) {
                self.write_origin_at(&buf[start..end], c * cs + start as u64)?;
                written += (end - start) as u64;
            }
        }
        self.chunks_hydrated
            .fetch_add(chunks.len() as u64, Ordering::Relaxed);
        self.bytes_hydrated.fetch_add(written, Ordering::Relaxed);
        Ok(written)
    }

    /// Under an origin write's barrier and stripes: whether none of `chunks` needs the source.
    pub(super) fn ready_for_clone_write(&self, chunks: std::ops::RangeInclusive<u64>) -> bool {
        if !self.may_need_source(*chunks.end()) {
            return true;
        }
        let m = self.meta.read();
        !chunks.into_iter().any(|c| m.needs_source(c))
    }

    /// Hydrates the chunks among `chunks` that still need the source, ahead of the cursor, for
    /// a write about to go to them: copied, durable, and their marks committed, so neither a
    /// power cut nor the background hydration can ever put the source's data over the write.
    /// The caller holds no lock: the origin sync takes stripes of its own.
    pub(super) fn hydrate_ahead(&self, chunks: std::ops::RangeInclusive<u64>) -> Result<()> {
        let _hydrate = self.hydrate_lock.lock();
        let (todo, bytes) = {
            let _barrier = self.barrier.read();
            let _stripes = self.lock_stripes(chunks.clone());
            let todo: Vec<u64> = {
                let m = self.meta.read();
                m.check_usable()?;
                chunks.filter(|c| m.needs_source(*c)).collect()
            };
            let bytes = self.copy_from_source(&todo)?;
            (todo, bytes)
        };
        if todo.is_empty() {
            return Ok(());
        }
        if bytes > 0 {
            self.sync_origin()?;
        }
        self.transact(|m| {
            m.check_usable()?;
            todo.iter().try_for_each(|c| m.mark_hydrated(*c))
        })
    }

    /// Hydrates the next stretch of a clone: at most `max_chunks` chunks with data copied
    /// (and at most 4096 chunks of the source's allocation map examined), then one commit
    /// that moves the cursor. Returns where the hydration stands, `None` once it has ended
    /// (or none runs); on the end, the source's snapshot is released.
    pub fn hydrate_step(&self, max_chunks: usize) -> Result<Option<HydrationProgress>> {
        let _hydrate = self.hydrate_lock.lock();
        let Some((cursor, end, source_size)) = ({
            let m = self.meta.read();
            m.check_usable()?;
            m.clone
                .as_ref()
                .map(|c| (c.cursor, m.source_chunks(), c.source_size))
        }) else {
            return Ok(None);
        };
        let (todo, bound) = self.next_source_chunks(cursor, end, source_size, max_chunks)?;
        let bytes = {
            let _barrier = self.barrier.read();
            let _stripes = self.lock_chunk_stripes(todo.iter().copied());
            // Writers may have hydrated some of them meanwhile.
            let todo: Vec<u64> = {
                let m = self.meta.read();
                todo.into_iter().filter(|c| m.needs_source(*c)).collect()
            };
            self.copy_from_source(&todo)?
        };
        if bytes > 0 {
            self.sync_origin()?;
        }
        let ended = self.transact(|m| {
            m.check_usable()?;
            m.advance_hydration(bound, bytes)
        })?;
        if ended {
            self.hydrate_hint.store(u64::MAX, Ordering::Release);
            self.detach_clone_source();
            tracing::info!(volume = %self.volume_name, "clone hydrated; it no longer depends on its source");
            return Ok(None);
        }
        self.hydrate_hint.store(bound, Ordering::Release);
        Ok(self.hydration())
    }

    /// Runs [`Store::hydrate_step`] until the hydration has ended.
    pub fn hydrate_all(&self) -> Result<()> {
        while self.hydrate_step(256)?.is_some() {}
        Ok(())
    }

    /// The chunks from `cursor` on where the source snapshot holds data, at most `max_chunks`
    /// of them, and the bound below which that list is complete (`> cursor`).
    fn next_source_chunks(
        &self,
        cursor: u64,
        end: u64,
        source_size: u64,
        max_chunks: usize,
    ) -> Result<(Vec<u64>, u64)> {
        let cs = u64::from(self.chunk_size);
        let scan_end = (cursor + SCAN_CHUNKS).min(end);
        let from = cursor * cs;
        let to = (scan_end * cs).min(source_size);
        let runs = self.source_allocation(from, to - from)?;
        let mut todo: Vec<u64> = Vec::new();
        let mut pos = from;
        for (len, data) in runs {
            if data {
                let first = pos / cs;
                let last = (pos + len - 1) / cs;
                for c in first..=last {
                    if todo.last() != Some(&c) {
                        todo.push(c);
                    }
                    if todo.len() >= max_chunks.max(1) {
                        return Ok((todo, c + 1));
                    }
                }
            }
            pos += len;
        }
        // The map may cover less than asked; a chunk it covers only in part is not done.
        let bound = if pos >= to {
            scan_end
        } else {
            (pos / cs).max(cursor + 1)
        };
        if bound == cursor + 1 && pos < to && todo.is_empty() {
            todo.push(cursor);
        }
        todo.retain(|c| *c < bound);
        Ok((todo, bound))
    }
}

/// The runs of `buf` made of `block`-sized pieces holding a non-zero byte, as byte ranges.
fn nonzero_runs(buf: &[u8], block: usize) -> Vec<(usize, usize)> {
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for (i, piece) in buf.chunks(block).enumerate() {
        if piece.iter().all(|&b| b == 0) {
            continue;
        }
        let (start, end) = (i * block, i * block + piece.len());
        match runs.last_mut() {
            Some(last) if last.1 == start => last.1 = end,
            _ => runs.push((start, end)),
        }
    }
    runs
}

/// Whether `dev` reads as zeros over its first `size` bytes: holes per its allocation map, and
/// whatever it reports as data read and checked.
fn reads_as_zeros(dev: &dyn BlockDev, size: u64) -> Result<bool> {
    let mut pos = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    while pos < size {
        let runs = dev
            .allocation(pos, size - pos)
            .map_err(|e| StoreError::io("origin", pos, 0, e))?;
        if runs.is_empty() {
            break;
        }
        for (len, data) in runs {
            if data {
                let mut at = pos;
                while at < pos + len {
                    let n = (pos + len - at).min(buf.len() as u64) as usize;
                    dev.read_at(&mut buf[..n], at)
                        .map_err(|e| StoreError::io("origin", at, n, e))?;
                    if buf[..n].iter().any(|&b| b != 0) {
                        return Ok(false);
                    }
                    at += n as u64;
                }
            }
            pos += len;
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::nonzero_runs;

    #[test]
    fn nonzero_runs_merge_adjacent_blocks_and_skip_zero_ones() {
        let mut buf = vec![0u8; 5 * 8];
        buf[1] = 1;
        buf[9] = 1;
        buf[33] = 1;
        assert_eq!(nonzero_runs(&buf, 8), vec![(0, 16), (32, 40)]);
        assert_eq!(nonzero_runs(&[0u8; 20], 8), Vec::<(usize, usize)>::new());
        assert_eq!(nonzero_runs(&[0, 0, 0, 7], 8), vec![(0, 4)]);
    }
}

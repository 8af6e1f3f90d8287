//! Reads as a view sees them, and the maps of a view: which ranges hold data, and which
//! changed between two snapshots.

use super::*;
use crate::pdata::btree::CachedLookupError;

/// Appends a `(length, flag)` run, merging it into the previous run when the flag matches.
fn push_run(runs: &mut Vec<(u64, bool)>, len: u64, flag: bool) {
    match runs.last_mut() {
        Some((n, f)) if *f == flag => *n += len,
        _ => runs.push((len, flag)),
    }
}

/// Where a chunk of a view reads from, for [`Store::allocation`].
#[derive(Clone, Copy, PartialEq, Eq)]
enum ChunkSource {
    /// A copy in the store: data.
    Store,
    /// A clone's source snapshot, not yet hydrated: as the source maps it.
    CloneSource,
    /// The origin device: as the origin maps it.
    Origin,
}

/// The origin's `(length, data)` runs from a start on, handed out piece by piece in increasing
/// order.
struct OriginRuns {
    runs: std::vec::IntoIter<(u64, bool)>,
    /// Where the next run in `runs` starts.
    next_at: u64,
    /// The run being handed out: start, end and flag.
    current: Option<(u64, u64, bool)>,
}

impl OriginRuns {
    fn new(start: u64, runs: Vec<(u64, bool)>) -> OriginRuns {
        OriginRuns {
            runs: runs.into_iter(),
            next_at: start,
            current: None,
        }
    }

    /// Calls `push` with the runs over `at..at + n`, which must not start before the end of
    /// the last piece taken. What the origin's answer did not cover is data, the answer that
    /// is always true.
    fn take(&mut self, at: u64, n: u64, mut push: impl FnMut(u64, bool)) {
        let end = at + n;
        let mut pos = at;
        while pos < end {
            while !matches!(self.current, Some((_, e, _)) if e > pos) {
                let Some((len, data)) = self.runs.next() else {
                    self.current = None;
                    break;
                };
                self.current = Some((self.next_at, self.next_at + len, data));
                self.next_at += len;
            }
            let piece = match self.current {
                Some((s, _, _)) if s > pos => (s.min(end) - pos, true),
                Some((_, e, data)) => (e.min(end) - pos, data),
                None => (end - pos, true),
            };
            push(piece.0, piece.1);
            pos += piece.0;
        }
    }
}

impl Store {
    /// Reads `buf.len()` bytes at `offset` as `view` sees them.
    pub fn read(&self, view: View, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.check_range(offset, buf.len() as u64)?;
        if buf.is_empty() {
            return Ok(());
        }
        let chunks = self.chunks_of(offset, buf.len() as u64);
        let snap = match view {
            View::Origin if self.has_parked() => return self.read_origin_with_parked(offset, buf),
            View::Origin => return self.read_origin_unparked(offset, buf),
            View::Snapshot(id) => id,
        };
        // Stripes first (lock order), then one metadata section for the liveness check and
        // every chunk's lookup; the data is read with the metadata lock free.
        let _stripes = self.read_stripes(chunks.clone());
        let epoch = self.live_epoch.load(Ordering::Acquire);
        let mut located = match self.locate_shared(snap, chunks.clone(), offset, buf.len())? {
            Some(located) => located,
            None => self.locate_exclusive(snap, chunks.clone())?,
        };
        if self.may_meet_merge(*chunks.end()) {
            self.redirect_pending(snap, *chunks.start(), &mut located)?;
        }
        let cs = self.chunk_size as u64;
        let mut done = 0usize;
        for x in located {
            let pos = offset + done as u64;
            let (chunk, within) = (pos / cs, pos % cs);
            let n = ((cs - within) as usize).min(buf.len() - done);
            self.read_located(x, chunk, within, &mut buf[done..done + n])?;
            done += n;
        }
        // A snapshot deleted mid-read may have had its chunks reclaimed under us: fail rather
        // than return data that might belong to someone else by now. No snapshot stopped being
        // live since the lookup if the epoch did not move.
        if self.live_epoch.load(Ordering::Acquire) != epoch
            && !self.meta.read().live.contains(&snap.0)
        {
            return Err(StoreError::SnapshotIdNotFound(snap));
        }
        Ok(())
    }

    /// Reads the origin as it stands on its device: through a rollback's pending merge or a
    /// clone's source where either may still cover the range, else the device alone. Parked
    /// writes are not laid over it (see `read_origin_with_parked`). `buf` is not empty.
    pub(super) fn read_origin_unparked(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let last = *self.chunks_of(offset, buf.len() as u64).end();
        if self.may_meet_merge(last) || self.may_need_source(last) {
            return self.read_origin_merging(offset, buf);
        }
        self.origin
            .read_at(buf, offset)
            .map_err(|e| StoreError::io("origin", offset, buf.len(), e))
    }

    /// Where live snapshot `snap` finds each of `chunks`, looked up under the metadata lock
    /// held shared, so concurrent snapshot reads do not queue behind one another. `None` when
    /// a node on the way is not cached: loading it changes the cache, which needs the lock
    /// exclusively (`locate_exclusive`).
    /// `offset` and `len` are the read's, checked against the snapshot's size here, where the
    /// lock is held anyway.
    fn locate_shared(
        &self,
        snap: SnapshotId,
        chunks: std::ops::RangeInclusive<u64>,
        offset: u64,
        len: usize,
    ) -> Result<Option<PerChunk<Option<StoreChunk>>>> {
        let m = self.meta.read();
        let has_private = m.readable_snapshot(snap)?;
        check_within(offset, len as u64, m.snapshot_size(snap)?)?;
        let mut out = PerChunk::with_capacity(chunks.size_hint().0);
        let mut lookup = m.shared_lookup();
        for chunk in chunks {
            match m.locate_cached(&mut lookup, snap, has_private, OriginChunk(chunk)) {
                Ok(x) => out.push(x),
                Err(CachedLookupError::NotCached) => return Ok(None),
                Err(CachedLookupError::Store(e)) => return Err(e),
            }
        }
        Ok(Some(out))
    }

    /// `locate_shared` through the pager, loading the nodes the cache lacks.
    fn locate_exclusive(
        &self,
        snap: SnapshotId,
        chunks: std::ops::RangeInclusive<u64>,
    ) -> Result<PerChunk<Option<StoreChunk>>> {
        let mut m = self.meta.write();
        let has_private = m.readable_snapshot(snap)?;
        let mut out = PerChunk::with_capacity(chunks.size_hint().0);
        for chunk in chunks {
            out.push(m.locate(snap, has_private, OriginChunk(chunk))?);
        }
        Ok(out)
    }

    /// Reads part of one chunk as snapshot `snap` sees it. The caller holds the chunk's stripe.
    pub(super) fn read_piece(
        &self,
        snap: SnapshotId,
        has_private: bool,
        chunk: u64,
        within: u64,
        piece: &mut [u8],
    ) -> Result<()> {
        let mut located = [self
            .meta
            .write()
            .locate(snap, has_private, OriginChunk(chunk))?];
        if self.may_meet_merge(chunk) {
            self.redirect_pending(snap, chunk, &mut located)?;
        }
        self.read_located(located[0], chunk, within, piece)
    }

    /// Reads part of `chunk` from where `locate` found it: a store chunk, or the origin (the
    /// source snapshot of a clone, while the chunk is not hydrated).
    pub(super) fn read_located(
        &self,
        located: Option<StoreChunk>,
        chunk: u64,
        within: u64,
        piece: &mut [u8],
    ) -> Result<()> {
        let cs = self.chunk_size as u64;
        let n = piece.len();
        match located {
            Some(x) => {
                let at = x.0 * cs + within;
                self.dev
                    .read_at(piece, at)
                    .map_err(|err| StoreError::io("store", at, n, err))
            }
            None => {
                let at = chunk * cs + within;
                if self.needs_source(chunk) && self.read_source(at, piece)? {
                    return Ok(());
                }
                self.origin
                    .read_at(piece, at)
                    .map_err(|err| StoreError::io("origin", at, n, err))
            }
        }
    }

    /// Allocation of `offset..offset+len` as `view` sees it: `(length, data)` runs, where
    /// `false` means a hole that reads as zeroes. May cover less than `len` (at most 4096
    /// chunks per call), never more.
    pub fn allocation(&self, view: View, offset: u64, len: u64) -> Result<Vec<(u64, bool)>> {
        self.check_view_range(view, offset, len)?;
        if len == 0 {
            return Ok(Vec::new());
        }
        let origin_map = |off: u64, n: u64| {
            self.origin
                .allocation(off, n)
                .map_err(|e| StoreError::io("origin", off, n as usize, e))
        };
        if view == View::Origin {
            // A parked write into a hole must not read as one: land them (rare; block-status
            // maps are not on the write path).
            self.land_parked()?;
        }
        let cs = self.chunk_size as u64;
        let end = offset + len.min(4096 * cs);
        let end = end.min(offset + len);
        let last = (end - 1) / cs;
        if view == View::Origin && !self.may_meet_merge(last) && !self.may_need_source(last) {
            return origin_map(offset, len);
        }
        if let View::Snapshot(snap) = view {
            self.meta.read().readable_snapshot(snap)?;
        }
        // Where each chunk reads from, as runs in order. The origin is then asked once, over
        // the span from the first chunk read from it to the end of the last: a file's
        // SEEK_HOLE may walk every page up to the next hole (tmpfs does), so a question per
        // chunk made a full export of a tmpfs origin cost the square of its size, and even a
        // question per run of origin chunks walked to the file's end once per store copy.
        let mut runs: Vec<(u64, u64, ChunkSource)> = Vec::new();
        let mut pos = offset;
        while pos < end {
            let chunk = pos / cs;
            let n = ((chunk + 1) * cs).min(end) - pos;
            let source = if self.reads_from_store(view, chunk)? {
                ChunkSource::Store
            } else if self.needs_source(chunk) {
                ChunkSource::CloneSource
            } else {
                ChunkSource::Origin
            };
            match runs.last_mut() {
                Some((_, len, s)) if *s == source => *len += n,
                _ => runs.push((pos, n, source)),
            }
            pos += n;
        }
        let from_origin = |r: &&(u64, u64, ChunkSource)| r.2 == ChunkSource::Origin;
        let first = runs.iter().find(from_origin);
        let last = runs.iter().rfind(from_origin);
        let mut origin = match (first, last) {
            (Some(&(from, _, _)), Some(&(at, n, _))) => {
                OriginRuns::new(from, origin_map(from, at + n - from)?)
            }
            _ => OriginRuns::new(offset, Vec::new()),
        };
        let mut out: Vec<(u64, bool)> = Vec::new();
        for (at, n, source) in runs {
            match source {
                ChunkSource::Store => push_run(&mut out, n, true),
                ChunkSource::CloneSource => {
                    for (l, d) in self.source_allocation(at, n)? {
                        push_run(&mut out, l, d);
                    }
                }
                ChunkSource::Origin => {
                    origin.take(at, n, |l, d| push_run(&mut out, l, d));
                }
            }
        }
        Ok(out)
    }

    /// Which parts of `offset..offset+len` differ between snapshot `base` and `view`:
    /// `(length, changed)` runs at chunk granularity, covering at most 65,536 chunks per call
    /// (less than `len` then, never more). Cost follows the number of changes, not the range.
    pub fn changed_extents(
        &self,
        base: SnapshotId,
        view: View,
        offset: u64,
        len: u64,
    ) -> Result<Vec<(u64, bool)>> {
        self.check_view_range(view, offset, len)?;
        if len == 0 {
            return Ok(Vec::new());
        }
        let base_size = self.live_snapshot(base)?.size;
        let target = match view {
            View::Origin => None,
            View::Snapshot(id) => {
                self.live_snapshot(id)?;
                Some(id)
            }
        };
        let cs = self.chunk_size as u64;
        let end = (offset + len).min(offset + 65_536 * cs);
        let mut out: Vec<(u64, bool)> = Vec::new();
        let mut push = |n: u64, changed: bool| push_run(&mut out, n, changed);
        // Bytes past the base's end (the volume grew since) did not exist in it: all changed.
        let base_end = end.min(base_size);
        let mut pos = offset;
        if offset < base_end {
            let changed =
                self.meta
                    .write()
                    .changed_chunks(base, target, offset / cs, (base_end - 1) / cs)?;
            for c in changed {
                let start = (c * cs).max(offset);
                let stop = ((c + 1) * cs).min(base_end);
                if start > pos {
                    push(start - pos, false);
                }
                push(stop - start, true);
                pos = stop;
            }
            if pos < base_end {
                push(base_end - pos, false);
                pos = base_end;
            }
        }
        if pos < end {
            push(end - pos, true);
        }
        Ok(out)
    }
}

//! The write paths and flush. An origin write copies out what live snapshots still need of
//! its chunks, then writes the origin, or parks the write until the commit of its copies lands
//! (`write_behind`): `write_origin -> try_write_origin -> copy_for_write -> copy_out ->
//! park_if_needed | write_origin_at`. A writable snapshot's write goes to chunks private to
//! it. A flush lands what is parked and makes both durable.

use super::*;
use crate::format::exception::Exception;
use crate::meta::CopyNeed;

impl Store {
    /// Writes `data` to the origin at `offset`, first copying out (once) the old contents of
    /// every chunk a live snapshot still needs. Returns once every later read sees the data:
    /// in the origin device's cache, or parked until the commit of its copies lands (see
    /// `write_behind`). Durable after the next `flush` either way.
    pub fn write_origin(&self, offset: u64, data: &[u8]) -> Result<()> {
        let _returned = self.flush_coalescer.count_write();
        self.check_range(offset, data.len() as u64)?;
        if data.is_empty() {
            return Ok(());
        }
        self.with_full_policy(|| self.try_write_origin(offset, data))
    }

    fn try_write_origin(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.make_room_to_park()?;
        let chunks = self.chunks_of(offset, data.len() as u64);
        let (_barrier, _stripes) = loop {
            let barrier = self.barrier.read();
            let stripes = self.lock_stripes(chunks.clone());
            // A rollback's pending chunks are merged first, so its merge never overwrites
            // this write; merging needs the locks free.
            // Likewise a clone's chunks that still read its source are hydrated first.
            let merged = self.ready_for_write(chunks.clone())?;
            let hydrated = self.ready_for_clone_write(chunks.clone());
            if merged && hydrated {
                break (barrier, stripes);
            }
            drop(stripes);
            drop(barrier);
            if !merged {
                self.merge_ahead(chunks.clone())?;
            }
            if !hydrated {
                self.hydrate_ahead(chunks.clone())?;
            }
        };
        // Overwrites of chunks every live snapshot already has a copy of skip the metadata
        // lock altogether.
        let mut unlanded = None;
        if !self.covered.contains_all(chunks.clone()) {
            unlanded = self.copy_for_write(chunks.clone())?;
            // Nothing to copy any more for these chunks: the copies, if any, are durable, or
            // the write parks below until they are (and later writes park behind it).
            for c in chunks {
                self.covered.insert(c);
            }
        }
        if self.park_if_needed(offset, data, unlanded) {
            return Ok(());
        }
        self.write_origin_at(data, offset)
    }

    /// Copies out what live snapshots still need of `chunks` without waiting for the commit
    /// that makes the copies durable: the generation it must wait for, if any. The caller
    /// holds the chunks' stripes exclusively.
    fn copy_for_write(&self, chunks: impl IntoIterator<Item = u64>) -> Result<Option<u64>> {
        let generation = self.copy_needed_through(chunks, None)?;
        Ok(generation.filter(|g| self.durable_generation.load(Ordering::Acquire) < *g))
    }

    /// Copy before overwrite, the store's central rule: gives every live snapshot that still
    /// sees the origin's current contents of `chunks` its own durable copy of them (copied out
    /// and committed). Only then may the caller overwrite those chunks of the origin; it holds
    /// their stripes exclusively, so no other writer changes what they need meanwhile.
    pub(super) fn preserve(&self, chunks: impl IntoIterator<Item = u64>) -> Result<()> {
        self.preserve_through(chunks, None)
    }

    /// [`preserve`](Self::preserve) for the snapshots up to `newest` only (all of them when
    /// `None`): a rollback's merge preserves nothing for the snapshots taken after it.
    pub(super) fn preserve_through(
        &self,
        chunks: impl IntoIterator<Item = u64>,
        newest: Option<u64>,
    ) -> Result<()> {
        if let Some(generation) = self.copy_needed_through(chunks, newest)? {
            self.commit_wait(generation)?;
        }
        Ok(())
    }

    /// Copies out what the snapshots up to `newest` still need of `chunks`; the generation
    /// whose commit makes the copies durable, or `None` when nothing needed copying.
    fn copy_needed_through(
        &self,
        chunks: impl IntoIterator<Item = u64>,
        newest: Option<u64>,
    ) -> Result<Option<u64>> {
        let needs = {
            let mut m = self.meta.write();
            m.check_usable()?;
            let newest = newest.unwrap_or(m.newest_snapshot());
            let mut needs = Vec::new();
            for c in chunks {
                if let Some(need) = m.copy_need_through(OriginChunk(c), newest)? {
                    needs.push(need);
                }
            }
            needs
        };
        if needs.is_empty() {
            return Ok(None);
        }
        self.copy_out(&needs).map(Some)
    }

    /// Copies each needed chunk into a fresh store chunk and records its exception. Returns the
    /// generation whose commit makes them durable.
    fn copy_out(&self, needs: &[CopyNeed]) -> Result<u64> {
        let mut targets: Vec<StoreChunk> = Vec::with_capacity(needs.len());
        {
            let mut m = self.meta.write();
            for _ in needs {
                match m.alloc_chunk() {
                    Some(c) => targets.push(c),
                    None => {
                        for c in targets.drain(..) {
                            m.free_chunk(c);
                        }
                        return Err(m.full_error(needs.len() as u64));
                    }
                }
            }
        }
        let cs = self.chunk_size as u64;
        let mut buf = Vec::new();
        let mut copy_result = Ok(());
        for (need, target) in needs.iter().zip(&targets) {
            let len = self.chunk_len(need.chunk.0);
            copy_result = self.copy_chunk(need.chunk.0 * cs, target.0 * cs, len, &mut buf);
            if copy_result.is_err() {
                break;
            }
        }
        let mut m = self.meta.write();
        if let Err(e) = copy_result {
            for c in targets {
                m.free_chunk(c);
            }
            return Err(e);
        }
        for (inserted, (need, target)) in needs.iter().zip(&targets).enumerate() {
            let e = Exception {
                chunk: need.chunk,
                first: need.first,
                last: need.last,
                store: *target,
            };
            if let Err(err) = m.insert_exception(e) {
                for c in &targets[inserted..] {
                    m.free_chunk(*c);
                }
                return Err(err);
            }
            self.bytes_copied
                .fetch_add(self.chunk_len(need.chunk.0) as u64, Ordering::Relaxed);
        }
        Ok(m.pager.generation)
    }

    /// Copies `len` bytes of the origin at `from` into the store at `to`: by the kernel where
    /// the store found at open that it can (`BlockDev::copy_from`), else through `buf`. Either
    /// way the copy is only in the store device's cache until the commit that records it
    /// flushes the device, before the origin may be overwritten (see `preserve`).
    ///
    /// It reads the origin device, not the parked writes, and that is what the snapshot sees:
    /// a chunk with writes parked has a copy for every live snapshot already (taking a
    /// snapshot lands every parked write first), so no copy-out is ever made of one.
    fn copy_chunk(&self, from: u64, to: u64, len: usize, buf: &mut Vec<u8>) -> Result<()> {
        if self.kernel_copy.load(Ordering::Relaxed) {
            match self.dev.copy_from(&*self.origin, from, to, len) {
                Ok(true) => {
                    self.kernel_copies.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
                Ok(false) => {
                    // Refused though both looked fit at open (a filesystem without it, one
                    // the files moved to): copy through memory from now on.
                    if self.kernel_copy.swap(false, Ordering::Relaxed) {
                        tracing::info!(volume = %self.volume_name, "the kernel refused to copy from the origin into the store; copying through memory");
                    }
                }
                Err(e) => return Err(StoreError::io("store", to, len, e)),
            }
        }
        buf.resize(len, 0);
        self.origin
            .read_at(&mut buf[..len], from)
            .map_err(|e| StoreError::io("origin", from, len, e))?;
        self.dev
            .write_at(&buf[..len], to)
            .map_err(|e| StoreError::io("store", to, len, e))
    }

    /// Writes to a writable snapshot. Each chunk it touches first gets a private copy (the
    /// snapshot's current contents of that chunk), which later writes update in place.
    pub fn write_snapshot(&self, id: SnapshotId, offset: u64, data: &[u8]) -> Result<()> {
        let _returned = self.flush_coalescer.count_write();
        self.check_view_range(View::Snapshot(id), offset, data.len() as u64)?;
        if data.is_empty() {
            return Ok(());
        }
        self.with_full_policy(|| self.try_write_snapshot(id, offset, data))
    }

    /// Runs a write that fails with `StoreFull` before changing anything; first commits the
    /// open transaction and runs it again, if that may free room; then, under the
    /// invalidate-oldest policy, drops the oldest snapshot to make room and runs it again,
    /// until it succeeds or no snapshot is left to drop.
    pub(super) fn with_full_policy(&self, mut write: impl FnMut() -> Result<()>) -> Result<()> {
        let mut committed = false;
        loop {
            match write() {
                Err(StoreError::StoreFull { .. }) if !committed && self.commit_for_room()? => {
                    committed = true;
                }
                Err(e @ StoreError::StoreFull { .. }) => {
                    if self.full_policy() != FullPolicy::InvalidateOldest
                        || !self.invalidate_oldest()?
                    {
                        return Err(e);
                    }
                }
                other => return other,
            }
        }
    }

    /// Commits the open transaction, if there is one: chunks it freed become reusable only
    /// then, and parked writes leave commits to their landing, so a nearly full store may
    /// hold room that no commit has released yet. Whether it committed.
    fn commit_for_room(&self) -> Result<bool> {
        let (generation, dirty) = {
            let m = self.meta.read();
            (m.pager.generation, m.dirty)
        };
        if !dirty {
            return Ok(false);
        }
        self.commit_wait(generation)?;
        Ok(true)
    }

    fn try_write_snapshot(&self, id: SnapshotId, offset: u64, data: &[u8]) -> Result<()> {
        let _barrier = self.barrier.read();
        let _stripes = self.lock_stripes(self.chunks_of(offset, data.len() as u64));
        self.meta.read().check_usable()?;
        if !self.live_snapshot(id)?.writable {
            return Err(StoreError::SnapshotReadOnly(id));
        }
        let cs = self.chunk_size as u64;
        let mut done = 0usize;
        while done < data.len() {
            let pos = offset + done as u64;
            let chunk = pos / cs;
            let within = (pos % cs) as usize;
            let n = (cs as usize - within).min(data.len() - done);
            let piece = &data[done..done + n];
            let private = self.meta.write().find_private(id, OriginChunk(chunk))?;
            match private {
                Some(x) => {
                    let at = x.0 * cs + within as u64;
                    self.dev
                        .write_at(piece, at)
                        .map_err(|e| StoreError::io("store", at, n, e))?;
                    self.private_data_unflushed.store(true, Ordering::Release);
                }
                None => {
                    let len = self.chunk_len(chunk);
                    let mut buf = vec![0u8; len];
                    if n < len {
                        self.read_piece(id, false, chunk, 0, &mut buf)?;
                    }
                    buf[within..within + n].copy_from_slice(piece);
                    self.write_new_private(id, chunk, &buf)?;
                }
            }
            done += n;
        }
        Ok(())
    }

    /// Writes `data`, a whole chunk, into a fresh store chunk and records it as snapshot
    /// `snap`'s private copy of origin chunk `chunk`; the store chunk is freed again if either
    /// step fails.
    pub(super) fn write_new_private(
        &self,
        snap: SnapshotId,
        chunk: u64,
        data: &[u8],
    ) -> Result<()> {
        let x = {
            let mut m = self.meta.write();
            match m.alloc_chunk() {
                Some(x) => x,
                None => return Err(m.full_error(1)),
            }
        };
        let at = x.0 * self.chunk_size as u64;
        let written = self
            .dev
            .write_at(data, at)
            .map_err(|e| StoreError::io("store", at, data.len(), e));
        let mut m = self.meta.write();
        if let Err(e) = written.and_then(|()| m.insert_private(snap, OriginChunk(chunk), x)) {
            m.free_chunk(x);
            return Err(e);
        }
        Ok(())
    }

    /// Makes every write completed before this call durable, on the origin and in the store.
    pub fn flush(&self) -> Result<()> {
        let started = Instant::now();
        self.flush_untimed()?;
        self.flush_latency.lock().record(started.elapsed());
        Ok(())
    }

    /// [`flush`](Self::flush) for a reader in this process that hands what it read to
    /// another system (a delta export of a writable snapshot): nothing it read before this
    /// call can be taken back by a crash after it. Not counted in the flush latency figures,
    /// which are the clients'.
    pub fn flush_for_reader(&self) -> Result<()> {
        self.flush_untimed()
    }

    fn flush_untimed(&self) -> Result<()> {
        self.land_parked()?;
        self.sync_origin()?;
        let private_unflushed = self.private_data_unflushed.swap(false, Ordering::AcqRel);
        let (generation, open) = {
            let m = self.meta.read();
            m.check_usable()?;
            (m.newest_changed_generation(), m.dirty)
        };
        self.commit_wait(generation)?;
        // A commit sealed from now on flushes the store device after any in-place private
        // write that completed before this call; one already sealed or landed may not have.
        if private_unflushed && !open {
            self.dev.flush().map_err(|source| {
                self.fail_durability(StoreError::Flush {
                    device: "store",
                    source,
                })
            })?;
        }
        Ok(())
    }
}

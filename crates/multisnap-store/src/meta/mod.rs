//! The metadata of one store as a transaction: the three B+trees (exceptions, snapshot table,
//! writable snapshots' private chunks), the allocator, the in-memory snapshot table and the
//! reclamation cursor. Everything here runs under the store's metadata lock (exclusive for
//! `&mut self`, shared for the cache-only lookups of `locate_cached`). `meta/commit.rs` makes
//! the open transaction durable; `meta/reclaim.rs` gives deleted snapshots' space back.

mod commit;
mod hydrate;
mod reclaim;
mod revert;

pub use commit::SealedCommit;
use reclaim::ReclaimPass;
pub use reclaim::ReclaimProgress;
pub use revert::MergeBatch;
use revert::MergeMarks;

use crate::blockdev::BlockDev;
use crate::covered::CoveredChunks;
use crate::error::{Result, StoreError};
use crate::format::exception::{private_chunk, private_value, Exception};
use crate::format::node::{Key, Node, TreeKind};
use crate::format::snapshot_record::{SnapshotRecord, SnapshotState};
use crate::format::superblock::{CloneState, ReceiveState, RevertState, Superblock};
use crate::ids::{MetaBlock, OriginChunk, SnapshotId, StoreChunk};
use crate::latency::LatencyHistogram;
use crate::pdata::alloc::ChunkAllocator;
use crate::pdata::btree::{self, CachedLookupError, CachedNodes, NodeSource};
use crate::pdata::cache::NodeCache;
use crate::pdata::locations::LocationCache;
use crate::pdata::pager::Pager;
use smallvec::SmallVec;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Blocks kept free for reclamation: removing entries shadows tree paths, so a completely
/// full store could otherwise never free anything.
pub const RECLAIM_RESERVE_BLOCKS: u64 = 64;

/// The configured cache's bytes per byte of location cache: 2 MiB of the default 64 MiB,
/// room for every chunk of a 2 GiB volume at 64 KiB chunks, for two snapshots at once.
pub const LOCATION_CACHE_SHARE: usize = 32;

/// Lookups of one request under the shared metadata lock ([`Meta::shared_lookup`]). When
/// dropped (before the lock: it borrows from it), it remembers the locations it looked up in
/// the index and adds its counts to the caches', once per request.
pub struct SharedLookup<'m> {
    nodes: CachedNodes<'m>,
    locations: &'m LocationCache,
    location_hits: u64,
    /// Looked up in the index: the location cache's misses, remembered on drop.
    found: SmallVec<[(SnapshotId, OriginChunk, Option<StoreChunk>); 4]>,
}

impl Drop for SharedLookup<'_> {
    fn drop(&mut self) {
        for &(snap, chunk, x) in &self.found {
            self.locations.put(snap, chunk, x);
        }
        self.locations
            .count(self.location_hits, self.found.len() as u64);
    }
}

/// Whether a snapshot in this state owns its name (deleted snapshots give it up at once, and a
/// delta being received has not claimed it yet).
pub fn holds_name(state: SnapshotState) -> bool {
    !matches!(state, SnapshotState::Deleting | SnapshotState::Receiving)
}

/// What an origin write to a chunk must do first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CopyNeed {
    pub chunk: OriginChunk,
    pub first: SnapshotId,
    pub last: SnapshotId,
}

pub struct Meta {
    pub pager: Pager,
    /// The last committed superblock.
    pub sb: Superblock,
    // Private: only this module's methods change the exception index and the private map,
    // and each forgets the chunk it changes from the location cache.
    exception_root: MetaBlock,
    pub snapshot_root: MetaBlock,
    private_root: MetaBlock,
    pub snapshots: BTreeMap<u64, SnapshotRecord>,
    /// Names of snapshots that are not being deleted.
    pub by_name: HashMap<String, u64>,
    /// Ready snapshots: the ones copy-out preserves data for.
    pub live: BTreeSet<u64>,
    /// Snapshots with entries in the private map (writable now or once).
    pub private_owners: BTreeSet<u64>,
    /// Bumped whenever a snapshot stops being live, so readers can tell without the lock
    /// that the snapshot they read is still there.
    pub live_epoch: Arc<AtomicU64>,
    /// The store's covered-chunk map, cleared here when the store is poisoned.
    pub covered: Arc<CoveredChunks>,
    /// Where snapshot reads last found their chunks; forgotten per chunk by every change to
    /// the exception index or the private map.
    locations: LocationCache,
    pub next_snapshot_id: u64,
    pub exception_count: u64,
    pub copies_total: u64,
    pub invalidated_total: u64,
    /// See [`Superblock::replica_source`].
    pub replica_source: [u8; 16],
    /// The delta apply in progress; written with every commit.
    pub receive: Option<ReceiveState>,
    pub chunks_reclaimed: u64,
    /// See [`Superblock::journal_epoch`]; written with every commit.
    pub journal_epoch: u64,
    /// The rollback in place being merged; written with every commit.
    pub revert: Option<RevertState>,
    /// Chunks that rollback merged ahead of its cursor (see `revert`).
    merged: MergeMarks,
    /// The clone hydration in progress; written with every commit.
    pub clone: Option<CloneState>,
    /// Chunks the hydration copied ahead of its cursor (see `hydrate`).
    hydrated: MergeMarks,
    /// Snapshots clones read from while they hydrate, with the clones' names: they may not be
    /// deleted, made writable or invalidated. In memory only; the agent re-establishes them
    /// when it wires each clone to its source on start.
    pub clone_holds: BTreeMap<u64, Vec<String>>,
    pub dirty: bool,
    pub poisoned: Option<crate::error::Failure>,
    pub commit_latency: LatencyHistogram,
    reclaim: ReclaimPass,
}

/// Free blocks a single B+tree update may need: a shadow and a split per level, plus a new
/// root.
fn blocks_for_update(depth: u16) -> u64 {
    2 * (depth as u64 + 2) + 1
}

impl Meta {
    pub fn new(
        dev: Arc<dyn BlockDev>,
        sb: Superblock,
        alloc: ChunkAllocator,
        cache_bytes: usize,
    ) -> Meta {
        let covered = Arc::new(CoveredChunks::new(
            sb.origin_size.div_ceil(u64::from(sb.chunk_size.max(1))),
        ));
        // The location cache's share comes out of the configured budget, so the two caches
        // together stay within it.
        let locations = LocationCache::with_bytes(cache_bytes / LOCATION_CACHE_SHARE);
        let pager = Pager {
            dev,
            cache: NodeCache::with_bytes(cache_bytes.saturating_sub(locations.bytes())),
            alloc,
            generation: sb.generation + 1,
            chunk_size: sb.chunk_size,
            node_blocks: 0,
        };
        Meta {
            exception_root: MetaBlock(sb.exception_root),
            snapshot_root: MetaBlock(sb.snapshot_root),
            private_root: MetaBlock(sb.private_root),
            next_snapshot_id: sb.next_snapshot_id,
            exception_count: sb.exception_count,
            copies_total: sb.copies_total,
            invalidated_total: sb.invalidated_total,
            replica_source: sb.replica_source,
            receive: sb.receive.clone(),
            chunks_reclaimed: 0,
            journal_epoch: sb.journal_epoch,
            revert: sb.revert.clone(),
            merged: MergeMarks::default(),
            clone: sb.clone.clone(),
            hydrated: MergeMarks::default(),
            clone_holds: BTreeMap::new(),
            pager,
            sb,
            snapshots: BTreeMap::new(),
            by_name: HashMap::new(),
            live: BTreeSet::new(),
            private_owners: BTreeSet::new(),
            live_epoch: Arc::new(AtomicU64::new(0)),
            covered,
            locations,
            dirty: false,
            poisoned: None,
            commit_latency: LatencyHistogram::default(),
            reclaim: ReclaimPass::default(),
        }
    }

    pub fn check_usable(&self) -> Result<()> {
        match &self.poisoned {
            Some(failure) => Err(StoreError::Poisoned(failure.why.clone())),
            None => Ok(()),
        }
    }

    /// Reads the snapshot table into memory (it is small: one record per snapshot).
    /// Blocks taken by tree nodes: the trees' own, and replaced ones whose free waits for a
    /// commit.
    pub fn node_blocks_in_use(&self) -> u64 {
        self.pager.node_blocks + self.pager.alloc.meta_frees_in_flight()
    }

    /// Counts the blocks of the three trees into `pager.node_blocks` (on open).
    pub fn count_node_blocks(&mut self) -> Result<()> {
        let mut n = 0;
        for root in [self.exception_root, self.snapshot_root, self.private_root] {
            n += crate::pdata::btree::count_nodes(&mut self.pager, root)?;
        }
        self.pager.node_blocks = n;
        Ok(())
    }

    pub fn load_snapshots(&mut self) -> Result<()> {
        let mut records = Vec::new();
        let root = self.snapshot_root;
        btree::walk(
            &mut self.pager,
            root,
            &Key::MIN,
            &Key::MAX,
            0,
            &mut |k, v| {
                let rec = SnapshotRecord::unpack(v).map_err(|reason| StoreError::CorruptNode {
                    block: root,
                    reason: format!("snapshot {}: {reason}", k.hi),
                })?;
                records.push((k.hi, rec));
                Ok(true)
            },
        )?;
        // Owners of private chunks: one seek per owner, not a scan of the map.
        let root = self.private_root;
        let mut from = Key::MIN;
        while let Some((k, _)) = btree::seek_ge(&mut self.pager, root, &from)? {
            // Owner 0 holds a rollback's merge marks (`revert`), the last owner a clone's
            // hydration marks (`hydrate`), not a snapshot's chunks.
            if !crate::format::exception::is_mark_owner(k.hi) {
                self.private_owners.insert(k.hi);
            }
            match k.hi.checked_add(1) {
                Some(next) => from = Key::new(next, 0),
                None => break,
            }
        }
        for (id, mut rec) in records {
            if !self.sb.sized_snapshots {
                // Before format version 4 the origin never changed size: every snapshot has it.
                rec.size = self.sb.origin_size;
            } else if rec.size == 0 || rec.size > self.sb.origin_size {
                return Err(StoreError::CorruptNode {
                    block: self.snapshot_root,
                    reason: format!(
                        "snapshot {id}: size {} is not within the origin's {}",
                        rec.size, self.sb.origin_size
                    ),
                });
            }
            self.index_record(id, rec);
        }
        self.load_merge_marks()?;
        self.load_hydration_marks()
    }

    /// Bytes live snapshot `snap` reads.
    pub fn snapshot_size(&self, snap: SnapshotId) -> Result<u64> {
        match self.snapshots.get(&snap.0) {
            Some(r) if self.live.contains(&snap.0) => Ok(r.size),
            _ => Err(StoreError::SnapshotIdNotFound(snap)),
        }
    }

    /// Puts snapshot `id`'s record, new or changed, into the in-memory table and its indexes
    /// (the name it holds, whether it is live). A snapshot that stops being live bumps
    /// `live_epoch`, so its readers notice.
    fn index_record(&mut self, id: u64, rec: SnapshotRecord) {
        if rec.state == SnapshotState::Ready {
            self.live.insert(id);
        } else if self.live.remove(&id) {
            self.live_epoch.fetch_add(1, Ordering::AcqRel);
        }
        if holds_name(rec.state) {
            self.by_name.insert(rec.name.clone(), id);
        } else if self.by_name.get(&rec.name) == Some(&id) {
            self.by_name.remove(&rec.name);
        }
        self.snapshots.insert(id, rec);
    }

    /// Takes snapshot `id` out of the in-memory table and its indexes.
    fn unindex_record(&mut self, id: u64) {
        if let Some(rec) = self.snapshots.remove(&id) {
            if self.by_name.get(&rec.name) == Some(&id) {
                self.by_name.remove(&rec.name);
            }
        }
        if self.live.remove(&id) {
            self.live_epoch.fetch_add(1, Ordering::AcqRel);
        }
    }

    fn tree_depth(&mut self, root: MetaBlock) -> Result<u16> {
        Ok(self.pager.read(root)?.level + 1)
    }

    fn free_blocks(&self) -> u64 {
        self.pager.alloc.total_blocks() - self.pager.alloc.used_blocks()
    }

    /// `StoreFull` for an operation that needed `needed` more chunks.
    pub fn full_error(&self, needed: u64) -> StoreError {
        StoreError::StoreFull {
            needed: needed.max(1),
            free: self.pager.alloc.free_chunks(),
            chunk_size: self.sb.chunk_size,
        }
    }

    /// Fails with `StoreFull` unless a tree update on `root` cannot run out of blocks midway
    /// (a half-done copy-on-write update would leak the blocks it took). Updates that grow
    /// the store must also leave the reclamation reserve untouched.
    fn reserve_for_update(&mut self, root: MetaBlock, growing: bool) -> Result<()> {
        let mut need = blocks_for_update(self.tree_depth(root)?);
        if growing {
            need += RECLAIM_RESERVE_BLOCKS;
        }
        if self.free_blocks() < need {
            return Err(self.full_error(1));
        }
        Ok(())
    }

    pub fn newest_snapshot(&self) -> u64 {
        self.next_snapshot_id - 1
    }

    /// The exception that snapshot `snap` sees for `chunk`, if any.
    pub fn find_exception(
        &mut self,
        chunk: OriginChunk,
        snap: SnapshotId,
    ) -> Result<Option<Exception>> {
        find_exception_in(&mut self.pager, self.exception_root, chunk, snap)
    }

    /// The writable snapshot's own copy of `chunk`, if it has one.
    pub fn find_private(
        &mut self,
        snap: SnapshotId,
        chunk: OriginChunk,
    ) -> Result<Option<StoreChunk>> {
        find_private_in(&mut self.pager, self.private_root, snap, chunk)
    }

    /// Whether snapshot `snap` has private chunks, the `has_private` of `locate`; an error
    /// if it is not live (deleted, invalidated, still being received, or never made).
    pub fn readable_snapshot(&self, snap: SnapshotId) -> Result<bool> {
        if !self.live.contains(&snap.0) || !self.snapshots.contains_key(&snap.0) {
            return Err(StoreError::SnapshotIdNotFound(snap));
        }
        Ok(self.private_owners.contains(&snap.0))
    }

    /// Where snapshot `snap` finds `chunk`: its private copy (looked up only when
    /// `has_private`), else the exception it sees, else `None`, the origin.
    pub fn locate(
        &mut self,
        snap: SnapshotId,
        has_private: bool,
        chunk: OriginChunk,
    ) -> Result<Option<StoreChunk>> {
        if let Some(x) = self.locations.get(snap, chunk) {
            self.locations.count(1, 0);
            return Ok(x);
        }
        let roots = (self.exception_root, self.private_root);
        let x = locate_in(&mut self.pager, roots, snap, has_private, chunk)?;
        self.locations.put(snap, chunk, x);
        self.locations.count(0, 1);
        Ok(x)
    }

    /// `locate` from the caches alone, for readers holding the metadata lock shared; a node
    /// on the way that is not cached makes it [`CachedLookupError::NotCached`].
    pub fn locate_cached<'m>(
        &'m self,
        lookup: &mut SharedLookup<'m>,
        snap: SnapshotId,
        has_private: bool,
        chunk: OriginChunk,
    ) -> std::result::Result<Option<StoreChunk>, CachedLookupError> {
        if let Some(x) = self.locations.get(snap, chunk) {
            lookup.location_hits += 1;
            return Ok(x);
        }
        let roots = (self.exception_root, self.private_root);
        match locate_in(&mut lookup.nodes, roots, snap, has_private, chunk) {
            Ok(x) => {
                lookup.found.push((snap, chunk, x));
                Ok(x)
            }
            Err(e) => {
                if matches!(e, CachedLookupError::NotCached) {
                    // The pager retry looks up, counts and remembers every chunk again; had
                    // these been remembered already, it would count them as hits.
                    lookup.location_hits = 0;
                    lookup.found.clear();
                }
                Err(e)
            }
        }
    }

    pub fn location_stats(&self) -> crate::pdata::locations::LocationStats {
        self.locations.stats()
    }

    /// Empties the location cache, for tests that count node lookups.
    #[cfg(test)]
    pub fn forget_all_locations(&mut self) {
        self.locations.clear();
    }

    /// One request's lookups with the metadata lock held shared. One value serves every
    /// chunk of a request, so a request that falls back to the pager counts no hits for its
    /// abandoned attempt.
    pub fn shared_lookup(&self) -> SharedLookup<'_> {
        SharedLookup {
            nodes: CachedNodes::new(&self.pager.cache),
            locations: &self.locations,
            location_hits: 0,
            found: SmallVec::new(),
        }
    }

    /// Chunks in `first..=last` whose contents differ between snapshot `a` and `b` (or the
    /// live origin when `b` is `None`), in order. Only exceptions whose last snapshot lies in
    /// `[min(a,b), max(a,b))` mark a difference, so the scan skips every subtree whose newest
    /// exception is older than both (the per-node stamps). Private chunks of either snapshot
    /// count as differences too.
    pub fn changed_chunks(
        &mut self,
        a: SnapshotId,
        b: Option<SnapshotId>,
        first: u64,
        last: u64,
    ) -> Result<Vec<u64>> {
        let (lo, hi) = match b {
            Some(b) => (a.0.min(b.0), a.0.max(b.0)),
            None => (a.0, u64::MAX),
        };
        let mut out: Vec<u64> = Vec::new();
        if lo != hi {
            let root = self.exception_root;
            btree::walk(
                &mut self.pager,
                root,
                &Key::new(first, 0),
                &Key::new(last, u64::MAX),
                lo,
                &mut |k, _| {
                    if k.lo >= lo && k.lo < hi && out.last() != Some(&k.hi) {
                        out.push(k.hi);
                    }
                    Ok(true)
                },
            )?;
        }
        for snap in [Some(a), b].into_iter().flatten() {
            if !self.private_owners.contains(&snap.0) {
                continue;
            }
            let root = self.private_root;
            btree::walk(
                &mut self.pager,
                root,
                &Key::new(snap.0, first),
                &Key::new(snap.0, last),
                0,
                &mut |k, _| {
                    out.push(k.lo);
                    Ok(true)
                },
            )?;
        }
        // While a rollback merges, the origin and the snapshots taken since read its target's
        // data in the pending chunks, older snapshots the origin's old data: those differ
        // although no exception says so.
        if let Some(r) = &self.revert {
            if lo <= r.newest && r.newest < hi {
                out.extend(self.pending_chunks(first, last)?);
            }
        }
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    /// Whether overwriting `chunk` of the origin must first copy it, and for which snapshots.
    pub fn copy_need(&mut self, chunk: OriginChunk) -> Result<Option<CopyNeed>> {
        self.copy_need_through(chunk, self.newest_snapshot())
    }

    /// `copy_need` for the snapshots up to `newest` only: a rollback's merge preserves the
    /// origin's old data for the snapshots taken before the rollback, not for newer ones
    /// (which read the rollback target's data there, the data the merge writes).
    pub fn copy_need_through(
        &mut self,
        chunk: OriginChunk,
        newest: u64,
    ) -> Result<Option<CopyNeed>> {
        if self.live.is_empty() {
            return Ok(None);
        }
        let root = self.exception_root;
        let latest = btree::seek_le(&mut self.pager, root, &Key::new(chunk.0, u64::MAX))?
            .filter(|(k, _)| k.hi == chunk.0)
            .map(|(k, _)| k.lo)
            .unwrap_or(0);
        // Only snapshots that hold the chunk need it kept: a snapshot of the volume before it
        // grew ends before the chunks added since. Sizes never decrease with the id, so the
        // newest live snapshot in the range holds the chunk if any does.
        if latest >= newest {
            return Ok(None);
        }
        let holder = self.live.range(latest + 1..=newest).next_back();
        let starts_at = chunk.0.saturating_mul(u64::from(self.sb.chunk_size));
        let held = holder
            .and_then(|id| self.snapshots.get(id))
            .is_some_and(|r| r.size > starts_at);
        if !held {
            return Ok(None);
        }
        Ok(Some(CopyNeed {
            chunk,
            first: SnapshotId(latest + 1),
            last: SnapshotId(newest),
        }))
    }

    /// A data chunk for new data, keeping the reclamation reserve free. Commits persist it as
    /// free until an `insert_exception`/`insert_private` references it (or `free_chunk` gives it
    /// back), since the caller writes its data with the metadata lock released.
    pub fn alloc_chunk(&mut self) -> Option<StoreChunk> {
        if self.free_blocks() < self.pager.alloc.chunk_blocks() + RECLAIM_RESERVE_BLOCKS {
            return None;
        }
        let c = self.pager.alloc.alloc_chunk();
        if let Some(c) = c {
            self.pager.alloc.mark_unrecorded(c);
            self.dirty = true;
        }
        c
    }

    pub fn free_chunk(&mut self, c: StoreChunk) {
        self.pager.alloc.free_chunk(c);
        self.dirty = true;
    }

    pub fn insert_exception(&mut self, e: Exception) -> Result<()> {
        self.locations.forget_chunk(e.chunk);
        let root = self.exception_root;
        self.reserve_for_update(root, true)?;
        self.dirty = true;
        match btree::insert(&mut self.pager, root, e.key(), &e.value()) {
            Ok(new_root) => {
                self.exception_root = new_root;
                self.exception_count += 1;
                self.copies_total += 1;
                self.pager.alloc.recorded(e.store);
                Ok(())
            }
            Err(err) => Err(self.poison(err)),
        }
    }

    pub fn insert_private(
        &mut self,
        snap: SnapshotId,
        chunk: OriginChunk,
        at: StoreChunk,
    ) -> Result<()> {
        self.locations.forget_chunk(chunk);
        let root = self.private_root;
        self.reserve_for_update(root, true)?;
        self.dirty = true;
        match btree::insert(
            &mut self.pager,
            root,
            Key::new(snap.0, chunk.0),
            &private_value(at),
        ) {
            Ok(new_root) => {
                self.private_root = new_root;
                if !crate::format::exception::is_mark_owner(snap.0) {
                    self.private_owners.insert(snap.0);
                }
                self.pager.alloc.recorded(at);
                Ok(())
            }
            Err(err) => Err(self.poison(err)),
        }
    }

    /// Removes one private-map entry; the caller frees its chunk.
    pub fn remove_private(&mut self, k: Key) -> Result<()> {
        self.locations.forget_chunk(OriginChunk(k.lo));
        let root = self.private_root;
        self.reserve_for_update(root, false)?;
        self.dirty = true;
        match btree::remove(&mut self.pager, root, &k) {
            Ok((new_root, _)) => {
                self.private_root = new_root;
                Ok(())
            }
            Err(err) => Err(self.poison(err)),
        }
    }

    /// Up to `limit` private-map entries of snapshot `snap` from chunk `from` on, in order.
    pub fn private_entries(
        &mut self,
        snap: SnapshotId,
        from: u64,
        limit: usize,
    ) -> Result<Vec<(OriginChunk, StoreChunk)>> {
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        let root = self.private_root;
        btree::walk(
            &mut self.pager,
            root,
            &Key::new(snap.0, from),
            &Key::new(snap.0, u64::MAX),
            0,
            &mut |k, v| {
                out.push((OriginChunk(k.lo), private_chunk(v)));
                Ok(out.len() < limit)
            },
        )?;
        Ok(out)
    }

    /// Adds a snapshot record (the caller has checked the name).
    pub fn add_snapshot(&mut self, rec: SnapshotRecord) -> Result<SnapshotId> {
        let root = self.snapshot_root;
        self.reserve_for_update(root, true)?;
        let id = self.next_snapshot_id;
        self.dirty = true;
        match btree::insert(&mut self.pager, root, Key::new(id, 0), &rec.pack()) {
            Ok(new_root) => self.snapshot_root = new_root,
            Err(err) => return Err(self.poison(err)),
        }
        self.next_snapshot_id += 1;
        self.index_record(id, rec);
        Ok(SnapshotId(id))
    }

    /// Rewrites a snapshot's record (state or flags changed).
    pub fn update_snapshot(&mut self, id: SnapshotId, rec: SnapshotRecord) -> Result<()> {
        let root = self.snapshot_root;
        self.reserve_for_update(root, false)?;
        self.dirty = true;
        match btree::insert(&mut self.pager, root, Key::new(id.0, 0), &rec.pack()) {
            Ok(new_root) => self.snapshot_root = new_root,
            Err(err) => return Err(self.poison(err)),
        }
        self.index_record(id.0, rec);
        Ok(())
    }

    pub fn drop_snapshot_record(&mut self, id: u64) -> Result<()> {
        let root = self.snapshot_root;
        self.reserve_for_update(root, false)?;
        self.dirty = true;
        match btree::remove(&mut self.pager, root, &Key::new(id, 0)) {
            Ok((new_root, _)) => self.snapshot_root = new_root,
            Err(err) => return Err(self.poison(err)),
        }
        self.unindex_record(id);
        Ok(())
    }

    /// Marks the store unusable after a failure that may have left the in-memory transaction
    /// half-applied; the on-disk state stays the last commit.
    pub fn poison(&mut self, err: StoreError) -> StoreError {
        tracing::error!(volume = %self.sb.volume_name, error = %err, "store update failed; refusing further changes until reopened");
        self.poisoned = Some(crate::error::Failure {
            why: err.to_string(),
            cause: crate::error::FailureCause::of(&err),
        });
        self.covered.clear();
        err
    }

    /// Lays out an empty store's trees; used by `Store::create`.
    pub fn format_empty_trees(&mut self) -> Result<()> {
        self.exception_root = self.pager.write_new(Node::new_leaf(TreeKind::Exceptions))?;
        self.snapshot_root = self.pager.write_new(Node::new_leaf(TreeKind::Snapshots))?;
        self.private_root = self.pager.write_new(Node::new_leaf(TreeKind::Private))?;
        self.dirty = true;
        Ok(())
    }

    /// Name of the snapshot the delta apply in progress will create ("" when none).
    pub fn receiving_name(&self) -> String {
        self.receive
            .as_ref()
            .and_then(|r| self.snapshots.get(&r.staging))
            .map(|s| s.name.clone())
            .unwrap_or_default()
    }

    pub fn snapshot_by_name(&self, name: &str) -> Option<(SnapshotId, &SnapshotRecord)> {
        let id = *self.by_name.get(name)?;
        self.snapshots.get(&id).map(|r| (SnapshotId(id), r))
    }
}

fn find_exception_in<'a, S: NodeSource<'a>>(
    s: &mut S,
    root: MetaBlock,
    chunk: OriginChunk,
    snap: SnapshotId,
) -> std::result::Result<Option<Exception>, S::Error> {
    let found = btree::seek_ge(s, root, &Key::new(chunk.0, snap.0))?;
    Ok(found
        .map(|(k, v)| Exception::from_entry(k, &v))
        .filter(|e| e.chunk == chunk && e.first <= snap))
}

fn find_private_in<'a, S: NodeSource<'a>>(
    s: &mut S,
    root: MetaBlock,
    snap: SnapshotId,
    chunk: OriginChunk,
) -> std::result::Result<Option<StoreChunk>, S::Error> {
    Ok(btree::lookup(s, root, &Key::new(snap.0, chunk.0))?.map(|v| private_chunk(&v)))
}

/// `roots`: the exception index's and the private map's.
fn locate_in<'a, S: NodeSource<'a>>(
    s: &mut S,
    roots: (MetaBlock, MetaBlock),
    snap: SnapshotId,
    has_private: bool,
    chunk: OriginChunk,
) -> std::result::Result<Option<StoreChunk>, S::Error> {
    if has_private {
        if let Some(x) = find_private_in(s, roots.1, snap, chunk)? {
            return Ok(Some(x));
        }
    }
    Ok(find_exception_in(s, roots.0, chunk, snap)?.map(|e| e.store))
}

//! The public face of one volume's store: create/open, snapshots, reads as of a snapshot,
//! origin writes with copy-out, flush.
//!
//! Ordering, the rule everything else serves: an origin chunk is overwritten in place only
//! after its old contents and the exception pointing to them are durable in the store. Writers
//! that need copies do them concurrently and park their writes (`write_behind.rs`): they are
//! acknowledged at once, and land in the origin after one commit takes all their copies (group
//! commit); writers that need none go straight to the origin.
//!
//! Locks, always taken in this order: `barrier` (shared by writers, exclusive for snapshot
//! creation, so a snapshot is a clean cut between acknowledged writes), the landing lock of
//! the parked writes (held by whoever lands them), the chunk stripes (an
//! origin write holds its chunks' stripes exclusively from its copy decision to its origin
//! write; snapshot reads that fall through to the origin hold them shared), `commit_lock`, and
//! `meta`, held only for in-memory work and for sealing a commit (writing its nodes and bitmap
//! copy into the device cache). A commit's flushes and superblock write run under
//! `commit_lock` alone, so the next transaction fills up meanwhile.
//!
//! `meta` is a read-write lock. Everything that changes metadata, or loads a node into the
//! cache, holds it exclusively; snapshot reads whose index nodes are all cached hold it shared
//! (`locate_shared`), so they do not queue behind one another.
//!
//! This file holds the `Store` itself, its locks and the helpers every path shares
//! (`transact`, `commit_wait`, `live_snapshot`, `invalidate_oldest`); each path has its own
//! file under `store/`: `open.rs` (create, open, recovery), `read.rs`, `write.rs` (origin and
//! writable-snapshot writes, flush), `snapshots.rs` (and reclamation), `origin_sync.rs` (the
//! origin write journal), `write_behind.rs` (parked origin writes) and `receive.rs` (delta
//! apply).

use crate::blockdev::BlockDev;
use crate::covered::CoveredChunks;
use crate::error::{Result, StoreError};
use crate::format::snapshot_record::{SnapshotRecord, SnapshotState};
use crate::format::superblock::{FullPolicy, OriginCache};
use crate::format::BLOCK_SIZE;
use crate::ids::{OriginChunk, SnapshotId, StoreChunk, VolumeUuid};
use crate::journal::{DirtyRanges, JournalCursor};
use crate::latency::{LatencyHistogram, LatencyStats};
use crate::meta::Meta;
use crate::pdata::cache::CacheStats;
use crate::pdata::locations::LocationStats;
use parking_lot::{Condvar, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use smallvec::SmallVec;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

mod clone;
mod group;
mod open;
mod origin_sync;
mod read;
mod receive;
mod reopen;
mod resize;
mod revert;
mod snapshots;
mod view;
mod write;
mod write_behind;
pub use clone::{CloneSource, HydrationProgress};
pub use group::create_snapshot_group;
pub use receive::{ReceivePlan, ReceiveStatus};
pub use revert::MergeProgress;
pub use snapshots::{is_hidden_snapshot_name, validate_snapshot_name};
pub use view::VolumeView;

/// How much a store can grow in place: its bitmap area is sized for this multiple of the
/// size it was made with.
pub const GROWTH_FACTOR: u64 = 8;

/// Default node cache size.
pub const DEFAULT_CACHE_BYTES: usize = 64 << 20;
const STRIPES: usize = 1024;

/// One entry per chunk (or stripe) of a request: inline for requests of up to 4 chunks, which
/// is nearly all of them, so the data path does not allocate for its lock guards and lookups
/// (measured with callgrind: a third of what a 4 KiB snapshot read cost beyond an origin read
/// was malloc and free).
type PerChunk<T> = SmallVec<[T; 4]>;

/// Parameters for a new store.
#[derive(Clone, Debug)]
pub struct CreateOptions {
    pub chunk_size: u32,
    pub volume_name: String,
    /// Where the origin lives, recorded so the store can be reopened without being told.
    pub origin_path: String,
    pub full_policy: FullPolicy,
    pub cache_bytes: usize,
    /// Size of the origin write journal (see [`crate::journal`]): at most a quarter of the
    /// store is used, and a store with no room for it (or for 16 blocks of it) gets none.
    pub journal_bytes: u64,
    /// How the origin is opened; recorded in the superblock. A direct store gets no journal.
    pub origin_cache: OriginCache,
}

impl Default for CreateOptions {
    fn default() -> Self {
        CreateOptions {
            chunk_size: 64 * 1024,
            volume_name: "default".into(),
            origin_path: String::new(),
            full_policy: FullPolicy::Error,
            cache_bytes: DEFAULT_CACHE_BYTES,
            journal_bytes: crate::journal::DEFAULT_JOURNAL_BYTES,
            origin_cache: OriginCache::Buffered,
        }
    }
}

/// Which image a read sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    Origin,
    Snapshot(SnapshotId),
}

/// A snapshot as users see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotInfo {
    pub id: SnapshotId,
    pub name: String,
    pub created_at: SystemTime,
    pub writable: bool,
    pub state: SnapshotState,
    /// The snapshot's id on the volume it was replicated from; 0 for local snapshots.
    pub source_id: u64,
    /// Bytes it reads: the origin's size when it was taken (see [`Store::resize`]).
    pub size: u64,
}

impl SnapshotInfo {
    pub(crate) fn from_record(id: u64, r: &SnapshotRecord) -> SnapshotInfo {
        SnapshotInfo {
            id: SnapshotId(id),
            name: r.name.clone(),
            created_at: UNIX_EPOCH + Duration::from_nanos(r.created_at_ns),
            writable: r.writable,
            state: r.state,
            source_id: r.source_id,
            size: r.size,
        }
    }
}

/// Counters for metrics. Cumulative ones end in `_total`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StoreStats {
    pub chunk_size: u32,
    pub origin_size: u64,
    pub copies_total: u64,
    pub bytes_copied_total: u64,
    /// Copy-outs since open that the kernel made (`copy_file_range`), not the store.
    pub kernel_copies_total: u64,
    pub exceptions: u64,
    pub snapshots: u64,
    pub store_bytes: u64,
    /// Every store block in use: `data_bytes + metadata_bytes + journal_size_bytes`.
    pub used_bytes: u64,
    /// Chunks holding data: copies preserved for snapshots, writable snapshots' own chunks,
    /// a delta apply's staged chunks.
    pub data_bytes: u64,
    /// Superblocks, both allocator bitmap copies and the index trees' nodes.
    pub metadata_bytes: u64,
    pub free_chunks: u64,
    pub cache: CacheStats,
    /// Snapshot chunk lookups answered without descending the index, and the memory for it.
    pub locations: LocationStats,
    /// Commits: write the new metadata, flush, flip the superblock, flush.
    pub commits: LatencyStats,
    /// Successful [`Store::flush`] calls: a journal batch of the origin writes since the last
    /// flush (or an `fdatasync` of the origin when they do not fit one), and a commit when
    /// metadata changed since the last one (copy-outs are committed by their writes already);
    /// such a commit is also in `commits`.
    pub flushes: LatencyStats,
    /// Size of the origin write journal; 0 when the store has none.
    pub journal_size_bytes: u64,
    /// Journal batches written since open, and the origin bytes they carried.
    pub journal_batches_total: u64,
    pub journal_written_bytes_total: u64,
    /// Times since open the journal was emptied by a flush that synced the origin itself (one
    /// too big for a batch, or a clean stop).
    pub journal_discards_total: u64,
    /// Journal epochs retired after the background origin sync that follows a filled half.
    pub journal_retired_total: u64,
    /// Times a filled half found the other still waiting for its origin sync, so the flush
    /// waited for it: the journal is too small for the write rate.
    pub journal_waits_total: u64,
    pub generation: u64,
    /// Snapshots dropped by the invalidate-oldest policy, ever.
    pub invalidated_total: u64,
    /// Store chunks freed by reclamation since open.
    pub chunks_reclaimed_total: u64,
    /// Snapshots whose space is still being reclaimed.
    pub reclaim_pending: u64,
    /// Chunks a rollback's merge copied into the origin since open.
    pub chunks_merged_total: u64,
    /// Chunks a clone's hydration copied from its source since open, and the bytes written.
    pub chunks_hydrated_total: u64,
    pub bytes_hydrated_total: u64,
    /// Origin writes acknowledged before the commit of their copy-outs since open (parked
    /// until it lands, see `write_behind`), and their bytes.
    pub parked_writes_total: u64,
    pub parked_bytes_total: u64,
    /// Bytes of origin writes parked now, not yet in the origin.
    pub parked_bytes: u64,
}

pub struct Store {
    origin: Arc<dyn BlockDev>,
    dev: Arc<dyn BlockDev>,
    chunk_size: u32,
    /// Changed only by [`Store::resize`], under the exclusive barrier, after the commit that
    /// records it.
    origin_size: AtomicU64,
    /// The node cache budget the store was opened with, for a reopen in place.
    cache_bytes: usize,
    /// Held by a reopen in place, before every other lock (see `reopen`).
    reopen_lock: Mutex<()>,
    meta: RwLock<Meta>,
    commit_lock: Mutex<()>,
    durable_generation: AtomicU64,
    /// `Meta::live_epoch`, readable without the metadata lock.
    live_epoch: Arc<AtomicU64>,
    /// Origin chunks an overwrite needs no copy for (see `covered`); shared with `Meta`,
    /// which clears it when it poisons itself.
    covered: Arc<CoveredChunks>,
    barrier: RwLock<()>,
    stripes: Vec<RwLock<()>>,
    bytes_copied: AtomicU64,
    /// Copy-outs go through `BlockDev::copy_from` (the kernel copies, or shares the extent):
    /// set at open where the store device says it can copy from the origin, cleared for good
    /// if the kernel refuses (see `copy_chunk`).
    kernel_copy: AtomicBool,
    /// Chunks copied out that way since open.
    kernel_copies: AtomicU64,
    /// Writes went into committed private chunks in place since the last store flush.
    private_data_unflushed: AtomicBool,
    /// Counts the writes that returned, so a burst of flushes shares one (`VolumeView::flush`).
    flush_coalescer: crate::flush_coalescer::FlushCoalescer,
    /// Set once by [`Store::close_views`]: why every view now refuses its requests.
    closed: std::sync::OnceLock<String>,
    /// Successful [`Store::flush`] calls, by how long each took.
    flush_latency: Mutex<LatencyHistogram>,
    /// Origin ranges written since a flush last took them (see `origin_sync`).
    dirty_origin: DirtyRanges,
    /// How the origin is opened (fixed when the store was made).
    origin_cache: OriginCache,
    /// Where the next journal batch goes; held by the flush writing one.
    journal: Mutex<JournalCursor>,
    journal_start: u64,
    journal_blocks: u64,
    journal_batches: AtomicU64,
    journal_bytes: AtomicU64,
    journal_discards: AtomicU64,
    /// Epochs retired after a background origin sync, and switches of half that had to wait
    /// for one.
    journal_retired: AtomicU64,
    journal_waits: AtomicU64,
    syncer: origin_sync::OriginSyncer,
    reclaim_wanted: Mutex<bool>,
    reclaim_wake: Condvar,
    /// Serializes the steps of a delta apply (see `receive`).
    receive_lock: Mutex<()>,
    /// Serializes a rollback's start and its merge steps (see `revert`).
    merge_lock: Mutex<()>,
    /// Origin chunks below it are not pending in a rollback's merge (`u64::MAX` when none
    /// runs), so reads and writes below it skip the merge's checks without the metadata lock.
    /// Raised only after the cursor moved, lowered only under the exclusive barrier.
    merge_hint: AtomicU64,
    /// Chunks a rollback's merge copied into the origin since open.
    chunks_merged: AtomicU64,
    /// A hydrating clone's source, once attached (see `clone`).
    clone_source: RwLock<Option<clone::CloneSource>>,
    /// Serializes a clone's hydration steps and the hydration ahead of writes.
    hydrate_lock: Mutex<()>,
    /// Origin chunks below it need nothing from a clone's source (`u64::MAX` when the store is
    /// no clone in progress), so reads and writes below it skip the check.
    hydrate_hint: AtomicU64,
    chunks_hydrated: AtomicU64,
    bytes_hydrated: AtomicU64,
    /// Origin writes acknowledged before their copies are committed (see `write_behind`).
    parked: Arc<write_behind::ParkedWrites>,
    volume_name: String,
    volume_uuid: VolumeUuid,
    origin_path: String,
}

/// `offset..offset + len` lies within `size` bytes.
fn check_within(offset: u64, len: u64, size: u64) -> Result<()> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(StoreError::OutOfRange { offset, len, size }),
    }
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

impl Store {
    /// Why the store refuses changes until it is reopened (a failed flush, a failed commit),
    /// or `None` while it is healthy. Reads still work when it is `Some`.
    pub fn failure(&self) -> Option<String> {
        self.meta.read().check_usable().err().map(|e| e.to_string())
    }

    /// What made the store stop taking changes, or `None` while it is healthy: whether a
    /// reopen may be retried without an operator (see [`crate::FailureCause`]).
    pub fn failure_cause(&self) -> Option<crate::FailureCause> {
        // A background origin sync that failed makes any failure a device one, even before a
        // flush has found it: a later sync may succeed without the pages it lost.
        if self.syncer.failure().is_some() {
            return Some(crate::FailureCause::Device);
        }
        self.meta.read().poisoned.as_ref().map(|f| f.cause)
    }

    /// `Closed` once `VolumeView::close_all` ran: checked by every view request.
    fn check_open(&self) -> Result<()> {
        match self.closed.get() {
            Some(why) => Err(StoreError::Closed(why.clone())),
            None => Ok(()),
        }
    }

    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }
    pub fn origin_size(&self) -> u64 {
        self.origin_size.load(Ordering::Acquire)
    }

    /// Bytes `view` reads: the origin's size, or the snapshot's own (smaller when the volume
    /// grew after it was taken).
    pub fn view_size(&self, view: View) -> Result<u64> {
        match view {
            View::Origin => Ok(self.origin_size()),
            View::Snapshot(id) => self.meta.read().snapshot_size(id),
        }
    }
    pub fn volume_name(&self) -> &str {
        &self.volume_name
    }
    pub fn volume_uuid(&self) -> VolumeUuid {
        self.volume_uuid
    }
    pub fn origin_path(&self) -> &str {
        &self.origin_path
    }
    /// Whether the origin is to be opened with `O_DIRECT` ([`crate::DirectDev`]); the caller
    /// that opens the origin reads this from the superblock before opening the store.
    pub fn origin_cache(&self) -> OriginCache {
        self.origin_cache
    }
    pub fn full_policy(&self) -> FullPolicy {
        self.meta.read().sb.full_policy
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<()> {
        check_within(offset, len, self.origin_size())
    }

    /// `check_range` against what `view` reads.
    fn check_view_range(&self, view: View, offset: u64, len: u64) -> Result<()> {
        check_within(offset, len, self.view_size(view)?)
    }

    fn chunks_of(&self, offset: u64, len: u64) -> std::ops::RangeInclusive<u64> {
        let cs = self.chunk_size as u64;
        offset / cs..=(offset + len - 1) / cs
    }

    fn stripe_of(chunk: u64) -> usize {
        (chunk.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 54) as usize % STRIPES
    }

    /// Stripe indices covering a chunk range, in lock order (all of them for a long range).
    fn stripes_of_range(chunks: std::ops::RangeInclusive<u64>) -> PerChunk<usize> {
        if chunks.end() - chunks.start() >= STRIPES as u64 {
            return (0..STRIPES).collect();
        }
        Self::stripes_in_order(chunks)
    }

    /// Stripe indices of any set of chunks, sorted and deduplicated: taking them in this
    /// order cannot deadlock.
    fn stripes_in_order(chunks: impl IntoIterator<Item = u64>) -> PerChunk<usize> {
        let mut idx: PerChunk<usize> = chunks.into_iter().map(Self::stripe_of).collect();
        idx.sort_unstable();
        idx.dedup();
        idx
    }

    fn lock_stripes(
        &self,
        chunks: std::ops::RangeInclusive<u64>,
    ) -> PerChunk<RwLockWriteGuard<'_, ()>> {
        Self::stripes_of_range(chunks)
            .into_iter()
            .map(|i| self.stripes[i].write())
            .collect()
    }

    /// Exclusive stripes of any set of chunks, taken in stripe order (no deadlock).
    fn lock_chunk_stripes(
        &self,
        chunks: impl IntoIterator<Item = u64>,
    ) -> PerChunk<RwLockWriteGuard<'_, ()>> {
        Self::stripes_in_order(chunks)
            .into_iter()
            .map(|i| self.stripes[i].write())
            .collect()
    }

    /// Shared stripes of a chunk range, in stripe order.
    fn read_stripes(
        &self,
        chunks: std::ops::RangeInclusive<u64>,
    ) -> PerChunk<RwLockReadGuard<'_, ()>> {
        Self::stripes_of_range(chunks)
            .into_iter()
            .map(|i| self.stripes[i].read())
            .collect()
    }

    /// The write barrier, exclusively: no origin write in flight. Whatever the caller changes
    /// may make copies necessary again, so the covered-chunk map starts over.
    fn exclusive_barrier(&self) -> RwLockWriteGuard<'_, ()> {
        let guard = self.barrier.write();
        self.covered.clear();
        guard
    }

    fn chunk_len(&self, chunk: u64) -> usize {
        let cs = self.chunk_size as u64;
        (self.origin_size() - chunk * cs).min(cs) as usize
    }

    fn live_snapshot(&self, id: SnapshotId) -> Result<SnapshotRecord> {
        let m = self.meta.read();
        match m.snapshots.get(&id.0) {
            Some(r) if m.live.contains(&id.0) => Ok(r.clone()),
            _ => Err(StoreError::SnapshotIdNotFound(id)),
        }
    }

    /// Drops the oldest live snapshot to make room (store-full policy `invalidate-oldest`) and
    /// reclaims its space at once. False when there is no snapshot left to drop.
    fn invalidate_oldest(&self) -> Result<bool> {
        {
            let _barrier = self.exclusive_barrier();
            let mut m = self.meta.write();
            m.check_usable()?;
            // A rollback's target is needed until its merge ends, a clone's source until its
            // hydration does.
            let target = m.revert.as_ref().map(|r| r.target);
            let Some(&oldest) = m
                .live
                .iter()
                .find(|id| Some(**id) != target && m.clone_holder(**id).is_none())
            else {
                return Ok(false);
            };
            let Some(rec) = m.snapshots.get(&oldest).cloned() else {
                return Ok(false);
            };
            tracing::warn!(volume = %self.volume_name, snapshot = %rec.name, id = oldest,
                "store full: invalidating the oldest snapshot (policy invalidate-oldest)");
            let rec = SnapshotRecord {
                state: SnapshotState::Invalidating,
                ..rec
            };
            m.update_snapshot(SnapshotId(oldest), rec)?;
            m.invalidated_total += 1;
        }
        self.reclaim_all()?;
        Ok(true)
    }

    /// Waits until `generation` is durable, committing it if no one else is.
    ///
    /// Group commit, pipelined: the committer seals the open transaction under the metadata
    /// lock, then releases it for the two flushes, so writers keep copying and inserting into
    /// the next generation meanwhile and the next commit takes all of them at once.
    fn commit_wait(&self, generation: u64) -> Result<()> {
        if self.durable_generation.load(Ordering::Acquire) >= generation {
            return Ok(());
        }
        let _c = self.commit_lock.lock();
        if self.durable_generation.load(Ordering::Acquire) >= generation {
            return Ok(());
        }
        // Holding `commit_lock`, nothing is in flight: everything sealed has landed, so
        // `generation` is still open and the transaction is dirty.
        let sealed = self.meta.write().seal()?;
        self.land(sealed)
    }

    /// Changes the metadata (superblock fields included) with `change` and commits it at once,
    /// as one commit of its own: holding `commit_lock` throughout, so no commit sealed before
    /// the change can land after it and put back the superblock it replaced.
    fn commit_now(&self, change: impl FnOnce(&mut Meta) -> Result<()>) -> Result<()> {
        let _c = self.commit_lock.lock();
        let sealed = {
            let mut m = self.meta.write();
            m.check_usable()?;
            change(&mut m)?;
            m.dirty = true;
            m.seal()?
        };
        self.land(sealed)
    }

    /// Lands a sealed commit (flush, superblock, flush) and makes it the one in force. The
    /// caller holds `commit_lock`.
    fn land(&self, sealed: Option<crate::meta::SealedCommit>) -> Result<()> {
        let Some(sealed) = sealed else {
            return Ok(());
        };
        let landed = sealed.land(&*self.dev);
        let landed_generation = sealed.generation();
        self.meta.write().finish_commit(sealed, landed)?;
        self.durable_generation
            .store(landed_generation, Ordering::Release);
        Ok(())
    }

    /// Changes the metadata with `change` under the exclusive metadata lock, then waits until
    /// the change is durable (committing it, unless a concurrent commit takes it along). If
    /// `change` fails, its error is returned without waiting.
    fn transact<T>(&self, change: impl FnOnce(&mut Meta) -> Result<T>) -> Result<T> {
        let (value, generation) = {
            let mut m = self.meta.write();
            let value = change(&mut m)?;
            (value, m.pager.generation)
        };
        self.commit_wait(generation)?;
        Ok(value)
    }

    pub fn stats(&self) -> StoreStats {
        let parked = self.parked.stats();
        let m = self.meta.read();
        StoreStats {
            chunk_size: self.chunk_size,
            origin_size: self.origin_size(),
            copies_total: m.copies_total,
            bytes_copied_total: self.bytes_copied.load(Ordering::Relaxed),
            kernel_copies_total: self.kernel_copies.load(Ordering::Relaxed),
            exceptions: m.exception_count,
            snapshots: m.live.len() as u64,
            store_bytes: m.pager.alloc.total_blocks() * BLOCK_SIZE as u64,
            used_bytes: m.pager.alloc.used_blocks() * BLOCK_SIZE as u64,
            data_bytes: m
                .pager
                .alloc
                .used_blocks()
                .saturating_sub(m.sb.reserved_end() + m.node_blocks_in_use())
                * BLOCK_SIZE as u64,
            metadata_bytes: (m.sb.reserved_end() - self.journal_blocks + m.node_blocks_in_use())
                * BLOCK_SIZE as u64,
            free_chunks: m.pager.alloc.free_chunks(),
            cache: m.pager.cache.stats(),
            locations: m.location_stats(),
            commits: m.commit_latency.stats(),
            flushes: self.flush_latency.lock().stats(),
            journal_size_bytes: self.journal_blocks * BLOCK_SIZE as u64,
            journal_batches_total: self.journal_batches.load(Ordering::Relaxed),
            journal_written_bytes_total: self.journal_bytes.load(Ordering::Relaxed),
            journal_discards_total: self.journal_discards.load(Ordering::Relaxed),
            journal_retired_total: self.journal_retired.load(Ordering::Relaxed),
            journal_waits_total: self.journal_waits.load(Ordering::Relaxed),
            generation: m.sb.generation,
            invalidated_total: m.invalidated_total,
            chunks_reclaimed_total: m.chunks_reclaimed,
            reclaim_pending: m.reclaim_progress().pending.len() as u64,
            chunks_merged_total: self.chunks_merged.load(Ordering::Relaxed),
            chunks_hydrated_total: self.chunks_hydrated.load(Ordering::Relaxed),
            bytes_hydrated_total: self.bytes_hydrated.load(Ordering::Relaxed),
            parked_writes_total: parked.writes_total,
            parked_bytes_total: parked.bytes_total,
            parked_bytes: parked.bytes_now,
        }
    }

    /// Whether copy-outs go through the kernel (`copy_file_range`) now.
    pub fn kernel_copy(&self) -> bool {
        self.kernel_copy.load(Ordering::Relaxed)
    }

    /// Lets copy-outs go through the kernel where the devices allow it (the default), or makes
    /// them read and write through memory (`false`), e.g. to compare the two. Returns whether
    /// they go through the kernel now.
    pub fn allow_kernel_copy(&self, allowed: bool) -> bool {
        let on = allowed
            && self
                .dev
                .can_copy_from(&*self.origin, self.chunk_size as u64);
        self.kernel_copy.store(on, Ordering::Relaxed);
        on
    }

    /// The store device (for `verify` of an open store in tests).
    pub fn store_dev(&self) -> &Arc<dyn BlockDev> {
        &self.dev
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // Best effort: a clean shutdown should have called flush(); losing the open
        // transaction here is what a power cut would do, which the format survives.
        // Parked writes go to the origin first, so the close-time sync below covers them.
        self.parked.stop();
        if let Err(e) = self.land_parked() {
            tracing::warn!(error = %e, "landing parked origin writes on close failed");
        }
        self.syncer.stop();
        self.detach_clone_source();
        let cursor = self.journal.get_mut();
        let m = self.meta.get_mut();
        let journal_used = cursor.next_block > 0 || m.journal_epoch < cursor.epoch;
        if (m.dirty || journal_used) && m.poisoned.is_none() {
            // An emptied journal leaves the origin complete on its own, readable without
            // multisnap; it may be emptied only once the origin sync succeeded.
            if self.origin.flush().is_ok() && journal_used {
                m.journal_epoch = cursor.epoch + 1;
                m.dirty = true;
            }
            if let Err(e) = m.commit() {
                tracing::warn!(error = %e, "final commit on close failed");
            }
        }
    }
}

#[cfg(test)]
mod tests;

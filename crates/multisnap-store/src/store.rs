//! The public face of one volume's store: create/open, snapshots, reads as of a snapshot,
//! origin writes with copy-out, flush.
//!
//! Ordering, the rule everything else serves: an origin chunk is overwritten in place only
//! after its old contents and the exception pointing to them are durable in the store. Writers
//! that need copies do them concurrently and share one commit (group commit); writers that need
//! none go straight to the origin.
//!
//! Locks, always taken in this order: `barrier` (shared by writers, exclusive for snapshot
//! creation, so a snapshot is a clean cut between acknowledged writes), the chunk stripes (an
//! origin write holds its chunks' stripes exclusively from its copy decision to its origin
//! write; snapshot reads that fall through to the origin hold them shared), `commit_lock`, and
//! `meta`, held only for in-memory work and for sealing a commit (writing its nodes and bitmap
//! copy into the device cache). A commit's flushes and superblock write run under
//! `commit_lock` alone, so the next transaction fills up meanwhile.
//!
//! `meta` is a read-write lock. Everything that changes metadata, or loads a node into the
//! cache, holds it exclusively; snapshot reads whose index nodes are all cached hold it shared
//! (`locate_shared`), so they do not queue behind one another.

use crate::alloc::{bitmap_blocks_for, ChunkAllocator};
use crate::blockdev::BlockDev;
use crate::btree::CachedLookupError;
use crate::cache::CacheStats;
use crate::covered::CoveredChunks;
use crate::error::{Result, StoreError};
use crate::format::exception::Exception;
use crate::format::snapshot_record::{SnapshotRecord, SnapshotState, MAX_NAME};
use crate::format::superblock::{FullPolicy, Superblock, MAX_VOLUME_NAME};
use crate::format::superblock_io::read_superblock;
use crate::format::{BLOCK_SIZE, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE};
use crate::ids::{OriginChunk, SnapshotId, StoreChunk, VolumeUuid};
use crate::journal::{self, journal_blocks_for, DirtyRanges, JournalCursor};
use crate::latency::{LatencyHistogram, LatencyStats};
use crate::locations::LocationStats;
use crate::meta::{Meta, ReclaimProgress};
use parking_lot::{Condvar, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use smallvec::SmallVec;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

mod origin_sync;
mod receive;
mod view;
pub use receive::{ReceivePlan, ReceiveStatus};
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
    pub exceptions: u64,
    pub snapshots: u64,
    pub store_bytes: u64,
    pub used_bytes: u64,
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
}

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

pub struct Store {
    origin: Arc<dyn BlockDev>,
    dev: Arc<dyn BlockDev>,
    chunk_size: u32,
    origin_size: u64,
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
    /// Writes went into committed private chunks in place since the last store flush.
    private_data_unflushed: AtomicBool,
    /// Counts the writes that returned, so a burst of flushes shares one (`VolumeView::flush`).
    flush_coalescer: crate::flush_coalescer::FlushCoalescer,
    /// Successful [`Store::flush`] calls, by how long each took.
    flush_latency: Mutex<LatencyHistogram>,
    /// Origin ranges written since a flush last took them (see `origin_sync`).
    dirty_origin: DirtyRanges,
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
    volume_name: String,
    volume_uuid: VolumeUuid,
    origin_path: String,
}

/// Appends a `(length, flag)` run, merging it into the previous run when the flag matches.
fn push_run(runs: &mut Vec<(u64, bool)>, len: u64, flag: bool) {
    match runs.last_mut() {
        Some((n, f)) if *f == flag => *n += len,
        _ => runs.push((len, flag)),
    }
}

fn m_full(m: &Meta, chunk_size: u32) -> StoreError {
    StoreError::StoreFull {
        needed: 1,
        free: m.pager.alloc.free_chunks(),
        chunk_size,
    }
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

impl Store {
    /// Formats `dev` as a new, empty store for `origin`. Everything `dev` held is lost.
    pub fn create(
        origin: Arc<dyn BlockDev>,
        dev: Arc<dyn BlockDev>,
        opts: &CreateOptions,
    ) -> Result<Store> {
        let cs = opts.chunk_size;
        if !cs.is_power_of_two() || !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&cs) {
            return Err(StoreError::InvalidGeometry(format!(
                "chunk size {cs} must be a power of two from 4096 to 1048576"
            )));
        }
        if opts.volume_name.len() > MAX_VOLUME_NAME {
            return Err(StoreError::InvalidGeometry(
                "volume name longer than 63 bytes".into(),
            ));
        }
        let origin_size = origin
            .size()
            .map_err(|e| StoreError::io("origin", 0, 0, e))?;
        let store_bytes = dev.size().map_err(|e| StoreError::io("store", 0, 0, e))?;
        let total_blocks = store_bytes / BLOCK_SIZE as u64;
        // Room in the bitmap for the store to grow to 8x its size in place (see `open`).
        let bitmap_blocks = bitmap_blocks_for(total_blocks.saturating_mul(GROWTH_FACTOR));
        let bitmap_end = 2 + 2 * bitmap_blocks;
        let chunk_blocks = cs as u64 / BLOCK_SIZE as u64;
        // Room for the reserved area, a few tree nodes and at least one data chunk.
        let minimum = bitmap_end + 16 + 2 * chunk_blocks + crate::meta::RECLAIM_RESERVE_BLOCKS;
        // The journal only speeds flushes up: a store with no room for it goes without.
        let mut journal_blocks = journal_blocks_for(opts.journal_bytes, total_blocks);
        if total_blocks < minimum + journal_blocks {
            journal_blocks = 0;
        }
        let reserved = bitmap_end + journal_blocks;
        if total_blocks < minimum {
            return Err(StoreError::InvalidGeometry(format!(
                "store of {store_bytes} bytes is too small: at least {} bytes are needed",
                minimum * BLOCK_SIZE as u64
            )));
        }
        let alloc = ChunkAllocator::new(total_blocks, chunk_blocks, reserved);
        let sb = Superblock {
            generation: 0,
            volume_uuid: *VolumeUuid::new_random().as_bytes(),
            chunk_size: cs,
            origin_size,
            store_blocks: total_blocks,
            bitmap_start: 2,
            bitmap_blocks,
            bitmap_copy: 1,
            full_policy: opts.full_policy,
            exception_root: 0,
            snapshot_root: 0,
            next_snapshot_id: 1,
            exception_count: 0,
            used_blocks: 0,
            copies_total: 0,
            created_at_ns: now_ns(),
            private_root: 0,
            invalidated_total: 0,
            replica_source: [0; 16],
            receive: None,
            volume_name: opts.volume_name.clone(),
            origin_path: opts.origin_path.clone(),
            journal_start: if journal_blocks > 0 { bitmap_end } else { 0 },
            journal_blocks,
            journal_epoch: 1,
        };
        // Written once now, so flushes later overwrite allocated blocks: on a sparse file the
        // first write into a hole would make every journal flush a file system commit too.
        let zeros = vec![0u8; 1 << 20];
        let mut at = bitmap_end * BLOCK_SIZE as u64;
        let journal_end = (bitmap_end + journal_blocks) * BLOCK_SIZE as u64;
        while at < journal_end {
            let n = (journal_end - at).min(zeros.len() as u64) as usize;
            dev.write_at(&zeros[..n], at)
                .map_err(|e| StoreError::io("store", at, n, e))?;
            at += n as u64;
        }
        let mut meta = Meta::new(dev.clone(), sb, alloc, opts.cache_bytes);
        meta.format_empty_trees()?;
        meta.commit()?;
        // Both bitmap copies must hold a whole bitmap before incremental writes may start.
        meta.pager.alloc.force_full_write();
        meta.dirty = true;
        meta.commit()?;
        Ok(Store::assemble(origin, dev, meta))
    }

    /// Opens an existing store. Refuses a foreign, newer, corrupt or truncated store, and one
    /// made for an origin of another size.
    pub fn open(
        origin: Arc<dyn BlockDev>,
        dev: Arc<dyn BlockDev>,
        cache_bytes: usize,
    ) -> Result<Store> {
        let sb = read_superblock(&*dev)?;
        let store_bytes = dev.size().map_err(|e| StoreError::io("store", 0, 0, e))?;
        let expected = sb.store_blocks * BLOCK_SIZE as u64;
        if store_bytes < expected {
            return Err(StoreError::Truncated {
                expected,
                found: store_bytes,
            });
        }
        let origin_size = origin
            .size()
            .map_err(|e| StoreError::io("origin", 0, 0, e))?;
        if origin_size != sb.origin_size {
            return Err(StoreError::OriginMismatch {
                detail: format!(
                    "the store was made for an origin of {} bytes, this one has {origin_size}",
                    sb.origin_size
                ),
            });
        }
        let chunk_blocks = sb.chunk_size as u64 / BLOCK_SIZE as u64;
        let copy_start = sb.bitmap_start + sb.bitmap_copy as u64 * sb.bitmap_blocks;
        let alloc = ChunkAllocator::load(
            &*dev,
            sb.store_blocks,
            chunk_blocks,
            copy_start,
            sb.bitmap_blocks,
        )?;
        if alloc.used_blocks() != sb.used_blocks {
            return Err(StoreError::NoValidSuperblock {
                detail: format!(
                    "superblock counts {} used blocks, its bitmap {}",
                    sb.used_blocks,
                    alloc.used_blocks()
                ),
            });
        }
        let mut meta = Meta::new(dev.clone(), sb, alloc, cache_bytes);
        meta.load_snapshots()?;
        Store::grow_if_bigger(&mut meta, store_bytes)?;
        Store::replay_journal(&*origin, &mut meta)?;
        let store = Store::assemble(origin, dev, meta);
        if let Err(e) = store.recover_receive() {
            // The volume stays usable; the apply's state is kept and `finish_receive` (or the
            // next open) carries it on.
            tracing::error!(volume = %store.volume_name, error = %e, "could not complete an interrupted delta apply");
        }
        Ok(store)
    }

    /// Applies what the origin write journal holds (flushed writes the origin may not have
    /// yet after a power cut), syncs the origin and empties the journal.
    fn replay_journal(origin: &dyn BlockDev, meta: &mut Meta) -> Result<()> {
        let replayed = journal::replay(origin, &*meta.pager.dev, &meta.sb)?;
        if replayed.batches == 0 {
            return Ok(());
        }
        tracing::info!(volume = %meta.sb.volume_name, batches = replayed.batches, bytes = replayed.bytes, "replayed the origin write journal");
        origin.flush().map_err(|source| StoreError::Flush {
            device: "origin",
            source,
        })?;
        // Past both epochs replay read, into a fresh one.
        meta.journal_epoch += 2;
        meta.dirty = true;
        meta.commit()
    }

    /// A store file or device made bigger while closed is taken in on open, up to what the
    /// bitmap area can describe (`GROWTH_FACTOR` times the original size).
    fn grow_if_bigger(meta: &mut Meta, store_bytes: u64) -> Result<()> {
        let dev_blocks = store_bytes / BLOCK_SIZE as u64;
        let capacity = meta.sb.bitmap_blocks * crate::format::bitmap::BITS_PER_BLOCK;
        let new_total = dev_blocks.min(capacity);
        if new_total <= meta.sb.store_blocks {
            return Ok(());
        }
        if dev_blocks > capacity {
            tracing::warn!(
                volume = %meta.sb.volume_name,
                usable_bytes = capacity * BLOCK_SIZE as u64,
                device_bytes = store_bytes,
                "store device is larger than its bitmap can describe; using only the first part"
            );
        }
        tracing::info!(volume = %meta.sb.volume_name, from_blocks = meta.sb.store_blocks, to_blocks = new_total, "store grew; taking in the new space");
        meta.pager.alloc.grow(new_total);
        meta.sb.store_blocks = new_total;
        meta.dirty = true;
        meta.commit()
    }

    fn assemble(origin: Arc<dyn BlockDev>, dev: Arc<dyn BlockDev>, meta: Meta) -> Store {
        Store {
            chunk_size: meta.sb.chunk_size,
            origin_size: meta.sb.origin_size,
            durable_generation: AtomicU64::new(meta.sb.generation),
            live_epoch: meta.live_epoch.clone(),
            covered: meta.covered.clone(),
            volume_name: meta.sb.volume_name.clone(),
            volume_uuid: VolumeUuid::from_bytes(meta.sb.volume_uuid),
            origin_path: meta.sb.origin_path.clone(),
            journal_start: meta.sb.journal_start,
            journal_blocks: meta.sb.journal_blocks,
            journal: Mutex::new(JournalCursor::at(meta.journal_epoch)),
            syncer: origin_sync::OriginSyncer::start(origin.clone(), meta.sb.journal_blocks > 0),
            origin,
            dev,
            meta: RwLock::new(meta),
            commit_lock: Mutex::new(()),
            barrier: RwLock::new(()),
            stripes: (0..STRIPES).map(|_| RwLock::new(())).collect(),
            bytes_copied: AtomicU64::new(0),
            private_data_unflushed: AtomicBool::new(false),
            flush_coalescer: Default::default(),
            flush_latency: Mutex::new(LatencyHistogram::default()),
            dirty_origin: DirtyRanges::default(),
            journal_batches: AtomicU64::new(0),
            journal_bytes: AtomicU64::new(0),
            journal_discards: AtomicU64::new(0),
            journal_retired: AtomicU64::new(0),
            journal_waits: AtomicU64::new(0),
            reclaim_wanted: Mutex::new(true),
            reclaim_wake: Condvar::new(),
            receive_lock: Mutex::new(()),
        }
    }

    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }
    pub fn origin_size(&self) -> u64 {
        self.origin_size
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
    pub fn full_policy(&self) -> FullPolicy {
        self.meta.read().sb.full_policy
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.origin_size => Ok(()),
            _ => Err(StoreError::OutOfRange {
                offset,
                len,
                size: self.origin_size,
            }),
        }
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
        (self.origin_size - chunk * cs).min(cs) as usize
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
        let _barrier = self.exclusive_barrier();
        // Writes acknowledged but not yet flushed are part of the snapshot; make them durable
        // so a power cut cannot take them out of it.
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
            };
            let id = m.add_snapshot(rec.clone())?;
            Ok(SnapshotInfo::from_record(id.0, &rec))
        })?;
        tracing::info!(volume = %self.volume_name, snapshot = %name, id = info.id.0, "snapshot created");
        Ok(info)
    }

    /// Every snapshot record users may see (a delta still being applied is not one).
    pub fn list_snapshots(&self) -> Vec<SnapshotInfo> {
        let m = self.meta.read();
        m.snapshots
            .iter()
            .filter(|(_, r)| r.state != SnapshotState::Receiving)
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

    /// Reads `buf.len()` bytes at `offset` as `view` sees them.
    pub fn read(&self, view: View, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.check_range(offset, buf.len() as u64)?;
        if buf.is_empty() {
            return Ok(());
        }
        let snap = match view {
            View::Origin => {
                return self
                    .origin
                    .read_at(buf, offset)
                    .map_err(|e| StoreError::io("origin", offset, buf.len(), e));
            }
            View::Snapshot(id) => id,
        };
        // Stripes first (lock order), then one metadata section for the liveness check and
        // every chunk's lookup; the data is read with the metadata lock free.
        let chunks = self.chunks_of(offset, buf.len() as u64);
        let _stripes = self.read_stripes(chunks.clone());
        let epoch = self.live_epoch.load(Ordering::Acquire);
        let located = match self.locate_shared(snap, chunks.clone())? {
            Some(located) => located,
            None => self.locate_exclusive(snap, chunks)?,
        };
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

    /// Where live snapshot `snap` finds each of `chunks`, looked up under the metadata lock
    /// held shared, so concurrent snapshot reads do not queue behind one another. `None` when
    /// a node on the way is not cached: loading it changes the cache, which needs the lock
    /// exclusively (`locate_exclusive`).
    fn locate_shared(
        &self,
        snap: SnapshotId,
        chunks: std::ops::RangeInclusive<u64>,
    ) -> Result<Option<PerChunk<Option<StoreChunk>>>> {
        let m = self.meta.read();
        let has_private = m.readable_snapshot(snap)?;
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

    fn live_snapshot(&self, id: SnapshotId) -> Result<SnapshotRecord> {
        let m = self.meta.read();
        match m.snapshots.get(&id.0) {
            Some(r) if m.live.contains(&id.0) => Ok(r.clone()),
            _ => Err(StoreError::SnapshotIdNotFound(id)),
        }
    }

    /// Reads part of one chunk as snapshot `snap` sees it. The caller holds the chunk's stripe.
    fn read_piece(
        &self,
        snap: SnapshotId,
        has_private: bool,
        chunk: u64,
        within: u64,
        piece: &mut [u8],
    ) -> Result<()> {
        let located = self
            .meta
            .write()
            .locate(snap, has_private, OriginChunk(chunk))?;
        self.read_located(located, chunk, within, piece)
    }

    /// Reads part of `chunk` from where `locate` found it: a store chunk, or the origin.
    fn read_located(
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
        self.check_range(offset, len)?;
        if len == 0 {
            return Ok(Vec::new());
        }
        let origin_map = |off: u64, n: u64| {
            self.origin
                .allocation(off, n)
                .map_err(|e| StoreError::io("origin", off, n as usize, e))
        };
        let snap = match view {
            View::Origin => return origin_map(offset, len),
            View::Snapshot(id) => id,
        };
        let has_private = self.meta.read().readable_snapshot(snap)?;
        let cs = self.chunk_size as u64;
        let end = offset + len.min(4096 * cs);
        let end = end.min(offset + len);
        let mut out: Vec<(u64, bool)> = Vec::new();
        let mut push = |n: u64, data: bool| push_run(&mut out, n, data);
        let mut pos = offset;
        while pos < end {
            let chunk = pos / cs;
            let n = ((chunk + 1) * cs).min(end) - pos;
            let in_store = self
                .meta
                .write()
                .locate(snap, has_private, OriginChunk(chunk))?
                .is_some();
            if in_store {
                push(n, true);
            } else {
                for (l, d) in origin_map(pos, n)? {
                    push(l, d);
                }
            }
            pos += n;
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
        self.check_range(offset, len)?;
        if len == 0 {
            return Ok(Vec::new());
        }
        self.live_snapshot(base)?;
        let target = match view {
            View::Origin => None,
            View::Snapshot(id) => {
                self.live_snapshot(id)?;
                Some(id)
            }
        };
        let cs = self.chunk_size as u64;
        let first = offset / cs;
        let end = (offset + len).min(offset + 65_536 * cs);
        let last = (end - 1) / cs;
        let changed = self
            .meta
            .write()
            .changed_chunks(base, target, first, last)?;
        let mut out: Vec<(u64, bool)> = Vec::new();
        let mut push = |n: u64, changed: bool| push_run(&mut out, n, changed);
        let mut pos = offset;
        for c in changed {
            let start = (c * cs).max(offset);
            let stop = ((c + 1) * cs).min(end);
            if start > pos {
                push(start - pos, false);
            }
            push(stop - start, true);
            pos = stop;
        }
        if pos < end {
            push(end - pos, false);
        }
        Ok(out)
    }

    /// Writes to a writable snapshot. Each chunk it touches first gets a private copy (the
    /// snapshot's current contents of that chunk), which later writes update in place.
    pub fn write_snapshot(&self, id: SnapshotId, offset: u64, data: &[u8]) -> Result<()> {
        let _returned = self.flush_coalescer.count_write();
        self.check_range(offset, data.len() as u64)?;
        if data.is_empty() {
            return Ok(());
        }
        self.with_full_policy(|| self.try_write_snapshot(id, offset, data))
    }

    /// Runs a write that fails with `StoreFull` before changing anything; under the
    /// invalidate-oldest policy, drops the oldest snapshot to make room and runs it again,
    /// until it succeeds or no snapshot is left to drop.
    fn with_full_policy(&self, mut write: impl FnMut() -> Result<()>) -> Result<()> {
        loop {
            match write() {
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
                    let x = {
                        let mut m = self.meta.write();
                        match m.alloc_chunk() {
                            Some(x) => x,
                            None => return Err(m_full(&m, self.chunk_size)),
                        }
                    };
                    let at = x.0 * cs;
                    let written = self
                        .dev
                        .write_at(&buf, at)
                        .map_err(|e| StoreError::io("store", at, len, e));
                    let mut m = self.meta.write();
                    if let Err(e) =
                        written.and_then(|()| m.insert_private(id, OriginChunk(chunk), x))
                    {
                        m.free_chunk(x);
                        return Err(e);
                    }
                }
            }
            done += n;
        }
        Ok(())
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

    /// Drops the oldest live snapshot to make room (store-full policy `invalidate-oldest`) and
    /// reclaims its space at once. False when there is no snapshot left to drop.
    fn invalidate_oldest(&self) -> Result<bool> {
        {
            let _barrier = self.exclusive_barrier();
            let mut m = self.meta.write();
            m.check_usable()?;
            let Some(&oldest) = m.live.iter().next() else {
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

    fn wake_reclaimer(&self) {
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

    /// Writes `data` to the origin at `offset`, first preserving (once) the old contents of
    /// every chunk a live snapshot still needs. Returns once the data is in the origin device's
    /// cache (durable after the next `flush`); the copies it needed are already durable.
    pub fn write_origin(&self, offset: u64, data: &[u8]) -> Result<()> {
        let _returned = self.flush_coalescer.count_write();
        self.check_range(offset, data.len() as u64)?;
        if data.is_empty() {
            return Ok(());
        }
        self.with_full_policy(|| self.try_write_origin(offset, data))
    }

    fn try_write_origin(&self, offset: u64, data: &[u8]) -> Result<()> {
        let _barrier = self.barrier.read();
        let chunks = self.chunks_of(offset, data.len() as u64);
        let _stripes = self.lock_stripes(chunks.clone());
        // Overwrites of chunks every live snapshot already has a copy of skip the metadata
        // lock altogether.
        if !self.covered.contains_all(chunks.clone()) {
            self.preserve(chunks.clone())?;
            // Nothing to copy any more for these chunks (the copies, if any, are durable).
            for c in chunks {
                self.covered.insert(c);
            }
        }
        self.write_origin_at(data, offset)
    }

    /// Copy before overwrite, the store's central rule: gives every live snapshot that still
    /// sees the origin's current contents of `chunks` its own durable copy of them (copied out
    /// and committed). Only then may the caller overwrite those chunks of the origin; it holds
    /// their stripes exclusively, so no other writer changes what they need meanwhile.
    fn preserve(&self, chunks: impl IntoIterator<Item = u64>) -> Result<()> {
        let needs = {
            let mut m = self.meta.write();
            m.check_usable()?;
            let mut needs = Vec::new();
            for c in chunks {
                if let Some(need) = m.copy_need(OriginChunk(c))? {
                    needs.push(need);
                }
            }
            needs
        };
        if !needs.is_empty() {
            let generation = self.copy_out(&needs)?;
            self.commit_wait(generation)?;
        }
        Ok(())
    }

    /// Copies each needed chunk into a fresh store chunk and records its exception. Returns the
    /// generation whose commit makes them durable.
    fn copy_out(&self, needs: &[crate::meta::CopyNeed]) -> Result<u64> {
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
                        let mut e = m_full(&m, self.chunk_size);
                        if let StoreError::StoreFull { needed, .. } = &mut e {
                            *needed = needs.len() as u64;
                        }
                        return Err(e);
                    }
                }
            }
        }
        let cs = self.chunk_size as u64;
        let mut buf = vec![0u8; self.chunk_size as usize];
        let mut copy_result = Ok(());
        for (need, target) in needs.iter().zip(&targets) {
            let len = self.chunk_len(need.chunk.0);
            let from = need.chunk.0 * cs;
            let to = target.0 * cs;
            copy_result = self
                .origin
                .read_at(&mut buf[..len], from)
                .map_err(|e| StoreError::io("origin", from, len, e))
                .and_then(|()| {
                    self.dev
                        .write_at(&buf[..len], to)
                        .map_err(|e| StoreError::io("store", to, len, e))
                });
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

    /// Makes every write completed before this call durable, on the origin and in the store.
    pub fn flush(&self) -> Result<()> {
        let started = Instant::now();
        self.flush_untimed()?;
        self.flush_latency.lock().record(started.elapsed());
        Ok(())
    }

    fn flush_untimed(&self) -> Result<()> {
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
            self.dev.flush().map_err(|source| StoreError::Flush {
                device: "store",
                source,
            })?;
        }
        Ok(())
    }

    pub fn stats(&self) -> StoreStats {
        let m = self.meta.read();
        StoreStats {
            chunk_size: self.chunk_size,
            origin_size: self.origin_size,
            copies_total: m.copies_total,
            bytes_copied_total: self.bytes_copied.load(Ordering::Relaxed),
            exceptions: m.exception_count,
            snapshots: m.live.len() as u64,
            store_bytes: m.pager.alloc.total_blocks() * BLOCK_SIZE as u64,
            used_bytes: m.pager.alloc.used_blocks() * BLOCK_SIZE as u64,
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
        }
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
        self.syncer.stop();
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

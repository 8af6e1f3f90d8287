//! Making a store and opening one: the layout of a new store, the checks an existing one must
//! pass, and what opening recovers (a grown device, the origin write journal, an interrupted
//! delta apply).

use super::*;
use crate::format::superblock::{OriginCache, Superblock, MAX_VOLUME_NAME};
use crate::format::superblock_io::read_superblock;
use crate::format::{MAX_CHUNK_SIZE, MIN_CHUNK_SIZE};
use crate::journal::{self, journal_blocks_for};
use crate::pdata::alloc::{bitmap_blocks_for, ChunkAllocator};

impl Store {
    /// Formats `dev` as a new, empty store for `origin`. Everything `dev` held is lost.
    pub fn create(
        origin: Arc<dyn BlockDev>,
        dev: Arc<dyn BlockDev>,
        opts: &CreateOptions,
    ) -> Result<Store> {
        Store::create_with(origin, dev, opts, None)
    }

    /// [`Store::create`], with the state of a clone's hydration in the first commit (so a new
    /// store is a clone from its first durable superblock on).
    pub(super) fn create_with(
        origin: Arc<dyn BlockDev>,
        dev: Arc<dyn BlockDev>,
        opts: &CreateOptions,
        clone: Option<crate::format::superblock::CloneState>,
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
        // A direct origin has nothing in the page cache for a journal to spare a flush from
        // (see `Store::sync_origin`), so its store keeps the space.
        let direct = opts.origin_cache == OriginCache::Direct;
        let journal_bytes = if direct { 0 } else { opts.journal_bytes };
        let mut journal_blocks = journal_blocks_for(journal_bytes, total_blocks);
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
            // Written as version 2 or 3 until the first resize (see `Store::resize`), unless
            // the origin is direct (version 6, which has every older version's fields).
            sized_snapshots: direct,
            revert: None,
            clone_format: direct,
            clone: None,
            origin_cache: opts.origin_cache,
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
        if let Some(state) = clone {
            meta.begin_clone(state);
        }
        meta.format_empty_trees()?;
        meta.commit()?;
        // Both bitmap copies must hold a whole bitmap before incremental writes may start.
        meta.pager.alloc.force_full_write();
        meta.dirty = true;
        meta.commit()?;
        Ok(Store::assemble(origin, dev, meta, opts.cache_bytes))
    }

    /// Opens an existing store. Refuses a foreign, newer, corrupt or truncated store, and one
    /// made for an origin of another size.
    pub fn open(
        origin: Arc<dyn BlockDev>,
        dev: Arc<dyn BlockDev>,
        cache_bytes: usize,
    ) -> Result<Store> {
        let meta = Store::load_meta(&origin, &dev, cache_bytes)?;
        let store = Store::assemble(origin, dev, meta, cache_bytes);
        if let Err(e) = store.recover_receive() {
            // The volume stays usable; the apply's state is kept and `finish_receive` (or the
            // next open) carries it on.
            tracing::error!(volume = %store.volume_name, error = %e, "could not complete an interrupted delta apply");
        }
        Ok(store)
    }

    /// What opening reads and recovers from the devices: the last landed generation, a grown
    /// store, the origin write journal replayed into the origin. Shared by [`Store::open`]
    /// and [`Store::reopen`], so a reopen in place recovers exactly what a start does.
    pub(super) fn load_meta(
        origin: &Arc<dyn BlockDev>,
        dev: &Arc<dyn BlockDev>,
        cache_bytes: usize,
    ) -> Result<Meta> {
        let sb = read_superblock(&**dev)?;
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
        // Longer is accepted: a resize extends the origin durably before the commit that
        // records the new size, so a power cut between the two leaves it longer. The volume
        // keeps the recorded size until it is resized (again).
        if origin_size > sb.origin_size {
            tracing::warn!(volume = %sb.volume_name, recorded = sb.origin_size, found = origin_size,
                "the origin is longer than the store records (an interrupted resize, or it grew); using the recorded size");
        }
        if origin_size < sb.origin_size {
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
            &**dev,
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
        meta.count_node_blocks()?;
        Store::grow_if_bigger(&mut meta, store_bytes)?;
        Store::replay_journal(&**origin, &mut meta)?;
        Ok(meta)
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

    fn assemble(
        origin: Arc<dyn BlockDev>,
        dev: Arc<dyn BlockDev>,
        meta: Meta,
        cache_bytes: usize,
    ) -> Store {
        let merge_hint = meta.revert.as_ref().map_or(u64::MAX, |r| r.cursor);
        let hydrate_hint = meta.clone.as_ref().map_or(u64::MAX, |c| c.cursor);
        let kernel_copy = dev.can_copy_from(&*origin, meta.sb.chunk_size as u64);
        Store {
            chunk_size: meta.sb.chunk_size,
            origin_size: AtomicU64::new(meta.sb.origin_size),
            durable_generation: AtomicU64::new(meta.sb.generation),
            live_epoch: meta.live_epoch.clone(),
            covered: meta.covered.clone(),
            volume_name: meta.sb.volume_name.clone(),
            volume_uuid: VolumeUuid::from_bytes(meta.sb.volume_uuid),
            origin_path: meta.sb.origin_path.clone(),
            journal_start: meta.sb.journal_start,
            journal_blocks: meta.sb.journal_blocks,
            origin_cache: meta.sb.origin_cache,
            journal: Mutex::new(JournalCursor::at(meta.journal_epoch)),
            syncer: origin_sync::OriginSyncer::start(origin.clone(), meta.sb.journal_blocks > 0),
            origin,
            dev,
            cache_bytes,
            reopen_lock: Mutex::new(()),
            meta: RwLock::new(meta),
            commit_lock: Mutex::new(()),
            barrier: RwLock::new(()),
            stripes: (0..STRIPES).map(|_| RwLock::new(())).collect(),
            bytes_copied: AtomicU64::new(0),
            kernel_copy: AtomicBool::new(kernel_copy),
            kernel_copies: AtomicU64::new(0),
            private_data_unflushed: AtomicBool::new(false),
            flush_coalescer: Default::default(),
            closed: Default::default(),
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
            merge_lock: Mutex::new(()),
            merge_hint: AtomicU64::new(merge_hint),
            chunks_merged: AtomicU64::new(0),
            // Until the source is attached, reads of unhydrated chunks fail rather than read
            // the origin's zeros there.
            clone_source: RwLock::new(None),
            hydrate_lock: Mutex::new(()),
            hydrate_hint: AtomicU64::new(hydrate_hint),
            chunks_hydrated: AtomicU64::new(0),
            bytes_hydrated: AtomicU64::new(0),
            parked: Default::default(),
        }
    }
}

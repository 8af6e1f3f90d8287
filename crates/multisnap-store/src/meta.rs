//! The metadata of one store as a transaction: the two B+trees, the allocator, the snapshot
//! table and the superblock to write next. Everything here runs under the store's metadata
//! lock; `commit` makes the open transaction durable.

use crate::alloc::ChunkAllocator;
use crate::blockdev::BlockDev;
use crate::btree;
use crate::cache::NodeCache;
use crate::error::{Result, StoreError};
use crate::format::node::{Key, Node, TreeKind};
use crate::format::snapshot_record::{SnapshotRecord, SnapshotState};
use crate::format::superblock::Superblock;
use crate::format::{get_u64, put_u64, BLOCK_SIZE};
use crate::ids::{MetaBlock, OriginChunk, SnapshotId, StoreChunk};
use crate::pager::Pager;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One exception: chunk `chunk` as snapshots `first..=last` see it lives at `store`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exception {
    pub chunk: OriginChunk,
    pub first: SnapshotId,
    pub last: SnapshotId,
    pub store: StoreChunk,
}

impl Exception {
    pub fn key(&self) -> Key {
        Key::new(self.chunk.0, self.last.0)
    }
    pub fn value(&self) -> [u8; 16] {
        let mut v = [0u8; 16];
        put_u64(&mut v, 0, self.first.0);
        put_u64(&mut v, 8, self.store.0);
        v
    }
    pub fn from_entry(key: Key, value: &[u8]) -> Exception {
        Exception {
            chunk: OriginChunk(key.hi),
            last: SnapshotId(key.lo),
            first: SnapshotId(get_u64(value, 0)),
            store: StoreChunk(get_u64(value, 8)),
        }
    }
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
    pub exception_root: MetaBlock,
    pub snapshot_root: MetaBlock,
    pub snapshots: BTreeMap<u64, SnapshotRecord>,
    pub by_name: HashMap<String, u64>,
    pub live: BTreeSet<u64>,
    pub next_snapshot_id: u64,
    pub exception_count: u64,
    pub copies_total: u64,
    pub dirty: bool,
    pub poisoned: Option<String>,
    pub commits_total: u64,
    pub commit_time_total: Duration,
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
        let pager = Pager {
            dev,
            cache: NodeCache::with_bytes(cache_bytes),
            alloc,
            generation: sb.generation + 1,
            chunk_size: sb.chunk_size,
        };
        Meta {
            exception_root: MetaBlock(sb.exception_root),
            snapshot_root: MetaBlock(sb.snapshot_root),
            next_snapshot_id: sb.next_snapshot_id,
            exception_count: sb.exception_count,
            copies_total: sb.copies_total,
            pager,
            sb,
            snapshots: BTreeMap::new(),
            by_name: HashMap::new(),
            live: BTreeSet::new(),
            dirty: false,
            poisoned: None,
            commits_total: 0,
            commit_time_total: Duration::ZERO,
        }
    }

    pub fn check_usable(&self) -> Result<()> {
        match &self.poisoned {
            Some(why) => Err(StoreError::Poisoned(why.clone())),
            None => Ok(()),
        }
    }

    /// Reads the snapshot table into memory (it is small: one record per snapshot).
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
        for (id, rec) in records {
            self.by_name.insert(rec.name.clone(), id);
            if rec.state == SnapshotState::Ready {
                self.live.insert(id);
            }
            self.snapshots.insert(id, rec);
        }
        Ok(())
    }

    fn tree_depth(&mut self, root: MetaBlock) -> Result<u16> {
        Ok(self.pager.read(root)?.level + 1)
    }

    /// Fails with `StoreFull` unless a tree update on `root` cannot run out of blocks midway
    /// (a half-done copy-on-write update would leak the blocks it took).
    fn reserve_for_update(&mut self, root: MetaBlock, extra_chunks: u64) -> Result<()> {
        let need = blocks_for_update(self.tree_depth(root)?);
        let free_blocks = self.pager.alloc.total_blocks() - self.pager.alloc.used_blocks();
        if free_blocks < need {
            return Err(StoreError::StoreFull {
                needed: extra_chunks.max(1),
                free: self.pager.alloc.free_chunks(),
                chunk_size: self.sb.chunk_size,
            });
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
        let root = self.exception_root;
        let found = btree::seek_ge(&mut self.pager, root, &Key::new(chunk.0, snap.0))?;
        Ok(found
            .map(|(k, v)| Exception::from_entry(k, &v))
            .filter(|e| e.chunk == chunk && e.first <= snap))
    }

    /// Whether overwriting `chunk` of the origin must first copy it, and for which snapshots.
    pub fn copy_need(&mut self, chunk: OriginChunk) -> Result<Option<CopyNeed>> {
        let newest = self.newest_snapshot();
        if self.live.is_empty() {
            return Ok(None);
        }
        let root = self.exception_root;
        let latest = btree::seek_le(&mut self.pager, root, &Key::new(chunk.0, u64::MAX))?
            .filter(|(k, _)| k.hi == chunk.0)
            .map(|(k, _)| k.lo)
            .unwrap_or(0);
        if latest >= newest || self.live.range(latest + 1..=newest).next().is_none() {
            return Ok(None);
        }
        Ok(Some(CopyNeed {
            chunk,
            first: SnapshotId(latest + 1),
            last: SnapshotId(newest),
        }))
    }

    pub fn alloc_chunk(&mut self) -> Option<StoreChunk> {
        let c = self.pager.alloc.alloc_chunk();
        if c.is_some() {
            self.dirty = true;
        }
        c
    }

    pub fn free_chunk(&mut self, c: StoreChunk) {
        self.pager.alloc.free_chunk(c);
        self.dirty = true;
    }

    pub fn insert_exception(&mut self, e: Exception) -> Result<()> {
        let root = self.exception_root;
        self.reserve_for_update(root, 0)?;
        self.dirty = true;
        match btree::insert(&mut self.pager, root, e.key(), &e.value()) {
            Ok(new_root) => {
                self.exception_root = new_root;
                self.exception_count += 1;
                self.copies_total += 1;
                Ok(())
            }
            Err(err) => Err(self.poison(err)),
        }
    }

    /// Adds a snapshot record (the caller has checked the name).
    pub fn add_snapshot(&mut self, rec: SnapshotRecord) -> Result<SnapshotId> {
        let root = self.snapshot_root;
        self.reserve_for_update(root, 0)?;
        let id = self.next_snapshot_id;
        self.dirty = true;
        match btree::insert(&mut self.pager, root, Key::new(id, 0), &rec.pack()) {
            Ok(new_root) => self.snapshot_root = new_root,
            Err(err) => return Err(self.poison(err)),
        }
        self.next_snapshot_id += 1;
        self.by_name.insert(rec.name.clone(), id);
        if rec.state == SnapshotState::Ready {
            self.live.insert(id);
        }
        self.snapshots.insert(id, rec);
        Ok(SnapshotId(id))
    }

    /// Marks the store unusable after a failure that may have left the in-memory transaction
    /// half-applied; the on-disk state stays the last commit.
    pub fn poison(&mut self, err: StoreError) -> StoreError {
        tracing::error!(error = %err, "store metadata update failed; refusing further changes until reopened");
        self.poisoned = Some(err.to_string());
        err
    }

    /// Makes the open transaction durable: new nodes and the bitmap copy, flush, then the
    /// superblock in the other slot, flush.
    pub fn commit(&mut self) -> Result<()> {
        self.check_usable()?;
        if !self.dirty {
            return Ok(());
        }
        let started = Instant::now();
        match self.try_commit() {
            Ok(()) => {
                self.commits_total += 1;
                self.commit_time_total += started.elapsed();
                Ok(())
            }
            Err(e) => Err(self.poison(e)),
        }
    }

    fn try_commit(&mut self) -> Result<()> {
        self.pager.write_dirty()?;
        self.pager.alloc.prepare_commit();
        let next_copy = 1 - self.sb.bitmap_copy;
        let copy_start = self.sb.bitmap_start + next_copy as u64 * self.sb.bitmap_blocks;
        self.pager
            .alloc
            .write_copy(&*self.pager.dev, copy_start, self.sb.bitmap_blocks)?;
        let dev = self.pager.dev.clone();
        dev.flush().map_err(|source| StoreError::Flush {
            device: "store",
            source,
        })?;
        let mut sb = self.sb.clone();
        sb.generation = self.pager.generation;
        sb.bitmap_copy = next_copy;
        sb.exception_root = self.exception_root.0;
        sb.snapshot_root = self.snapshot_root.0;
        sb.next_snapshot_id = self.next_snapshot_id;
        sb.exception_count = self.exception_count;
        sb.used_blocks = self.pager.alloc.used_blocks();
        sb.copies_total = self.copies_total;
        let slot = sb.generation % 2;
        let off = slot * BLOCK_SIZE as u64;
        dev.write_at(&sb.pack(), off)
            .map_err(|e| StoreError::io("store", off, BLOCK_SIZE, e))?;
        dev.flush().map_err(|source| StoreError::Flush {
            device: "store",
            source,
        })?;
        self.sb = sb;
        self.pager.alloc.commit_done();
        self.pager.generation = self.sb.generation + 1;
        self.dirty = false;
        Ok(())
    }

    /// Lays out an empty store's trees; used by `Store::create`.
    pub fn format_empty_trees(&mut self) -> Result<()> {
        self.exception_root = self.pager.write_new(Node::new_leaf(TreeKind::Exceptions))?;
        self.snapshot_root = self.pager.write_new(Node::new_leaf(TreeKind::Snapshots))?;
        self.dirty = true;
        Ok(())
    }

    pub fn snapshot_by_name(&self, name: &str) -> Option<(SnapshotId, &SnapshotRecord)> {
        let id = *self.by_name.get(name)?;
        self.snapshots.get(&id).map(|r| (SnapshotId(id), r))
    }
}

//! Offline consistency check of a store: walks every tree straight from the device (no cache,
//! no trust in the in-memory state) and cross-checks what it reaches against the allocator.
//!
//! It reports: unreadable or corrupt blocks (checksum, misdirected, unsorted, wrong level or
//! kind, stale subtree stamps), exceptions that are malformed, overlap another of the same
//! chunk, point outside the store, chunks or blocks reachable twice ("doubly owned"), blocks
//! the allocator marks used that nothing reaches ("leaked"), blocks reached that the allocator
//! marks free, and counters that disagree with what was found. Memory: one bit per store
//! block plus one tree path.

use crate::blockdev::BlockDev;
use crate::error::Result;
use crate::format::exception::{
    holds_store_chunk, private_chunk, Exception, HYDRATED_CHUNK, HYDRATE_OWNER, MERGED_CHUNK,
    MERGE_OWNER,
};
use crate::format::node::{Key, TreeKind};
use crate::format::snapshot_record::SnapshotRecord;
use crate::format::snapshot_record::SnapshotState;
use crate::format::superblock::Superblock;
use crate::format::superblock_io::read_superblock;
use crate::format::BLOCK_SIZE;
use crate::ids::{MetaBlock, StoreChunk};
use crate::pdata::alloc::ChunkAllocator;
use crate::pdata::pager::read_node;
use std::collections::{BTreeMap, BTreeSet, HashSet};

/// Problems reported per kind before the report says "and N more".
const MAX_LISTED: usize = 20;

#[derive(Debug, Default, Clone)]
pub struct VerifyReport {
    pub generation: u64,
    pub exceptions: u64,
    pub snapshots: u64,
    pub nodes: u64,
    pub used_blocks: u64,
    pub referenced_blocks: u64,
    /// Batches of flushed origin writes in the origin write journal, and their bytes: not a
    /// problem, but the origin lacks them until the store is next opened (which replays them).
    pub journal_batches: u64,
    pub journal_bytes: u64,
    /// Chunks a rollback in progress merged ahead of its cursor.
    pub merge_marks: u64,
    /// A clone in progress: `(hydrated chunks below the cursor, chunks its hydration walks)`,
    /// and the chunks it hydrated ahead of its cursor.
    pub hydration: Option<(u64, u64)>,
    pub hydration_marks: u64,
    /// Things that are wrong.
    pub problems: Vec<String>,
}

impl VerifyReport {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

struct Walker<'a> {
    dev: &'a dyn BlockDev,
    sb: &'a Superblock,
    referenced: Vec<u64>,
    report: VerifyReport,
    prev_exception: Option<Exception>,
    names: HashSet<String>,
    reserved_end: u64,
    /// Snapshot id -> record, filled by the snapshot-table walk (done first).
    records: BTreeMap<u64, SnapshotRecord>,
    live: BTreeSet<u64>,
    /// Records staging a delta apply.
    receiving: BTreeSet<u64>,
    reclaim_pending: bool,
}

impl Walker<'_> {
    fn problem(&mut self, p: String) {
        self.report.problems.push(p);
    }

    /// Records that `block` is reachable as `what`.
    fn claim(&mut self, block: u64, what: &dyn Fn() -> String) {
        if block < self.reserved_end || block >= self.sb.store_blocks {
            self.problem(format!(
                "{} points to block {block}, outside the allocatable area",
                what()
            ));
            return;
        }
        let (w, bit) = ((block / 64) as usize, 1u64 << (block % 64));
        if self.referenced[w] & bit != 0 {
            self.problem(format!(
                "block {block} is doubly owned (again reached as {})",
                what()
            ));
            return;
        }
        self.referenced[w] |= bit;
        self.report.referenced_blocks += 1;
    }

    /// Walks the subtree at `block`; returns its max stamp.
    fn walk(
        &mut self,
        kind: TreeKind,
        block: u64,
        level: Option<u16>,
        lo: Option<Key>,
        hi: Option<Key>,
    ) -> u64 {
        let node = match read_node(self.dev, MetaBlock(block), self.sb.store_blocks) {
            Ok((node, generation)) => {
                if generation > self.sb.generation {
                    self.problem(format!(
                        "node at block {block} claims generation {generation}, newer than the superblock's {}",
                        self.sb.generation
                    ));
                }
                node
            }
            Err(e) => {
                self.problem(format!("{kind:?} tree: {e}"));
                return 0;
            }
        };
        self.report.nodes += 1;
        self.claim(block, &|| format!("{kind:?} tree node"));
        if node.kind != kind {
            self.problem(format!(
                "block {block} is a {:?} node inside the {kind:?} tree",
                node.kind
            ));
            return 0;
        }
        if let Some(l) = level {
            if node.level != l {
                self.problem(format!(
                    "block {block} is at level {} where {l} was expected",
                    node.level
                ));
                return 0;
            }
        }
        if !node.is_leaf() && node.is_empty() {
            self.problem(format!("internal node at block {block} has no children"));
            return 0;
        }
        for k in &node.keys {
            let below = lo.is_some_and(|lo| *k < lo);
            let above = hi.is_some_and(|hi| *k >= hi);
            if below || above {
                self.problem(format!(
                    "block {block}: key {k:?} lies outside its parent's range"
                ));
            }
        }
        if node.is_leaf() {
            for i in 0..node.len() {
                self.entry(kind, node.keys[i], node.value(i));
            }
            return node.max_stamp();
        }
        let mut max = 0;
        for i in 0..node.len() {
            let child = node.children[i];
            let child_hi = node.keys.get(i + 1).copied().or(hi);
            let stamp = self.walk(
                kind,
                child.block,
                Some(node.level - 1),
                Some(node.keys[i]),
                child_hi,
            );
            if stamp != child.stamp && self.report.problems.len() < 10_000 {
                self.problem(format!(
                    "block {block}: child {} carries stamp {} but its subtree's newest is {stamp}",
                    child.block, child.stamp
                ));
            }
            max = max.max(child.stamp);
        }
        max
    }

    fn entry(&mut self, kind: TreeKind, key: Key, value: &[u8]) {
        match kind {
            TreeKind::Exceptions => self.exception(Exception::from_entry(key, value)),
            TreeKind::Snapshots => {
                self.report.snapshots += 1;
                match SnapshotRecord::unpack(value) {
                    Ok(rec) => {
                        if key.hi == 0 || key.hi >= self.sb.next_snapshot_id {
                            self.problem(format!(
                                "snapshot id {} is outside 1..{}",
                                key.hi, self.sb.next_snapshot_id
                            ));
                        }
                        // A snapshot being deleted gives up its name at once.
                        if crate::meta::holds_name(rec.state)
                            && !self.names.insert(rec.name.clone())
                        {
                            self.problem(format!("snapshot name {:?} is used twice", rec.name));
                        }
                        match rec.state {
                            SnapshotState::Ready => {
                                self.live.insert(key.hi);
                            }
                            SnapshotState::Deleting | SnapshotState::Invalidating => {
                                self.reclaim_pending = true
                            }
                            SnapshotState::Invalid => {}
                            SnapshotState::Receiving => {
                                self.receiving.insert(key.hi);
                            }
                        }
                        self.records.insert(key.hi, rec);
                    }
                    Err(e) => self.problem(format!("snapshot {}: {e}", key.hi)),
                }
            }
            TreeKind::Private => self.private(key, private_chunk(value).0),
        }
    }

    /// A merge mark of a rollback in progress: only then, at or past its cursor.
    fn merge_mark(&mut self, chunk: u64, value: u64) {
        self.report.merge_marks += 1;
        let chunk_count = self.sb.origin_size.div_ceil(self.sb.chunk_size as u64);
        match &self.sb.revert {
            None => self.problem(format!(
                "merge mark for origin chunk {chunk}, but no rollback is in progress (leaked)"
            )),
            Some(r) if chunk < r.cursor || chunk >= chunk_count => self.problem(format!(
                "merge mark for origin chunk {chunk} outside the merge's remaining chunks {}..{chunk_count}",
                r.cursor
            )),
            Some(_) => {}
        }
        if StoreChunk(value) != MERGED_CHUNK {
            self.problem(format!(
                "merge mark for origin chunk {chunk} holds {value:#x}, not the merge marker"
            ));
        }
    }

    fn hydration_mark(&mut self, chunk: u64, value: u64) {
        self.report.hydration_marks += 1;
        match (&self.sb.clone, self.report.hydration) {
            (Some(c), Some((_, end))) if chunk >= c.cursor && chunk < end => {}
            (Some(c), Some((_, end))) => self.problem(format!(
                "hydration mark for origin chunk {chunk} outside the clone's remaining chunks {}..{end}",
                c.cursor
            )),
            _ => self.problem(format!(
                "hydration mark for origin chunk {chunk}, but no clone is hydrating (leaked)"
            )),
        }
        if StoreChunk(value) != HYDRATED_CHUNK {
            self.problem(format!(
                "hydration mark for origin chunk {chunk} holds {value:#x}, not the hydration marker"
            ));
        }
    }

    fn private(&mut self, key: Key, store: u64) {
        let (snap, chunk) = (key.hi, key.lo);
        if snap == MERGE_OWNER {
            return self.merge_mark(chunk, store);
        }
        if snap == HYDRATE_OWNER {
            return self.hydration_mark(chunk, store);
        }
        let chunk_count = self.sb.origin_size.div_ceil(self.sb.chunk_size as u64);
        if chunk >= chunk_count {
            self.problem(format!(
                "private chunk of snapshot {snap} for origin chunk {chunk}, beyond the origin"
            ));
        }
        match self.records.get(&snap) {
            None => self.problem(format!(
                "private chunks of snapshot {snap}, which does not exist (leaked)"
            )),
            Some(r) if !r.writable && r.state == SnapshotState::Ready => {
                // Made read-only after writes: its private chunks still hold its contents.
            }
            Some(r) if r.state == SnapshotState::Invalid => self.problem(format!(
                "private chunks of snapshot {snap}, invalidated and already reclaimed (leaked)"
            )),
            Some(_) => {}
        }
        if !holds_store_chunk(crate::ids::StoreChunk(store)) {
            if !self.receiving.contains(&snap) {
                self.problem(format!(
                    "snapshot {snap} has a delta-apply marker for origin chunk {chunk} but is not receiving a delta"
                ));
            }
            return;
        }
        let cb = self.sb.chunk_size as u64 / BLOCK_SIZE as u64;
        let start = store.saturating_mul(cb);
        for b in start..start.saturating_add(cb) {
            self.claim(b, &|| {
                format!("private chunk of snapshot {snap} for origin chunk {chunk}")
            });
        }
    }

    fn exception(&mut self, e: Exception) {
        self.report.exceptions += 1;
        let chunk_count = self.sb.origin_size.div_ceil(self.sb.chunk_size as u64);
        if e.chunk.0 >= chunk_count {
            self.problem(format!(
                "exception for {} beyond the origin's {chunk_count} chunks",
                e.chunk
            ));
        }
        if e.first.0 == 0 || e.first > e.last || e.last.0 >= self.sb.next_snapshot_id {
            self.problem(format!(
                "exception for {} has an impossible snapshot range {}..={}",
                e.chunk, e.first.0, e.last.0
            ));
        }
        if let Some(prev) = self.prev_exception {
            if prev.chunk == e.chunk && e.first <= prev.last {
                self.problem(format!(
                    "exceptions for {} overlap: {}..={} and {}..={}",
                    e.chunk, prev.first.0, prev.last.0, e.first.0, e.last.0
                ));
            }
        }
        self.prev_exception = Some(e);
        if !self.reclaim_pending && self.live.range(e.first.0..=e.last.0).next().is_none() {
            self.problem(format!(
                "exception for {} (snapshots {}..={}) serves no live snapshot: space not reclaimed",
                e.chunk, e.first.0, e.last.0
            ));
        }
        let cb = self.sb.chunk_size as u64 / BLOCK_SIZE as u64;
        let start = e.store.0.saturating_mul(cb);
        for b in start..start.saturating_add(cb) {
            self.claim(b, &|| {
                format!("data of the exception for {} ({})", e.chunk, e.store)
            });
        }
    }
}

/// In a version-4 store every record carries its size: within the origin, and never smaller
/// than an older snapshot's (a volume only grows). Older stores' records carry none.
fn check_snapshot_sizes(w: &mut Walker<'_>) {
    if !w.sb.sized_snapshots {
        return;
    }
    let mut largest = 0;
    let mut problems = Vec::new();
    for (id, rec) in &w.records {
        if rec.size == 0 || rec.size > w.sb.origin_size {
            problems.push(format!(
                "snapshot {id} has size {}, outside 1..={} (the origin's)",
                rec.size, w.sb.origin_size
            ));
        } else if rec.size < largest {
            problems.push(format!(
                "snapshot {id} has size {}, smaller than an older snapshot's {largest}",
                rec.size
            ));
        }
        largest = largest.max(rec.size);
    }
    for p in problems {
        w.problem(p);
    }
}

/// Checks the store on `dev`. `origin_size`, when given, must be at least the store's (the
/// recorded size is what counts; a longer origin is left by a power cut during a resize). Returns an
/// error only when no store can be found at all (no superblock, newer format, unreadable).
pub fn verify(dev: &dyn BlockDev, origin_size: Option<u64>) -> Result<VerifyReport> {
    let sb = read_superblock(dev)?;
    let mut report = VerifyReport {
        generation: sb.generation,
        used_blocks: sb.used_blocks,
        ..Default::default()
    };
    let dev_bytes = dev
        .size()
        .map_err(|e| crate::error::StoreError::io("store", 0, 0, e))?;
    if dev_bytes < sb.store_blocks * BLOCK_SIZE as u64 {
        report.problems.push(format!(
            "store is truncated: {dev_bytes} bytes, the superblock needs {}",
            sb.store_blocks * BLOCK_SIZE as u64
        ));
        return Ok(report);
    }
    match crate::journal::scan(dev, &sb, |_, _| Ok(())) {
        Ok(found) => {
            report.journal_batches = found.batches;
            report.journal_bytes = found.bytes;
        }
        Err(e) => report
            .problems
            .push(format!("cannot read the origin write journal: {e}")),
    }
    // Longer is what a power cut during a resize leaves, and opening accepts it.
    if let Some(size) = origin_size {
        if size < sb.origin_size {
            report.problems.push(format!(
                "origin is {size} bytes, shorter than the {} the store records",
                sb.origin_size
            ));
        }
    }
    let cb = sb.chunk_size as u64 / BLOCK_SIZE as u64;
    let copy_start = sb.bitmap_start + sb.bitmap_copy as u64 * sb.bitmap_blocks;
    let alloc = match ChunkAllocator::load(dev, sb.store_blocks, cb, copy_start, sb.bitmap_blocks) {
        Ok(a) => Some(a),
        Err(e) => {
            report.problems.push(e.to_string());
            None
        }
    };
    let reserved_end = sb.reserved_end();
    let mut w = Walker {
        dev,
        sb: &sb,
        referenced: vec![0; sb.store_blocks.div_ceil(64) as usize],
        report,
        prev_exception: None,
        names: HashSet::new(),
        reserved_end,
        records: BTreeMap::new(),
        live: BTreeSet::new(),
        receiving: BTreeSet::new(),
        reclaim_pending: false,
    };
    // The snapshot table first: the other trees are checked against it.
    w.walk(TreeKind::Snapshots, sb.snapshot_root, None, None, None);
    check_snapshot_sizes(&mut w);
    // A receiving record no apply owns was aborted: reclamation drops it.
    let staging = sb.receive.as_ref().map(|r| r.staging);
    if w.receiving.iter().any(|id| Some(*id) != staging) {
        w.reclaim_pending = true;
    }
    if let Some(r) = &sb.receive {
        if !w.receiving.contains(&r.staging) {
            w.problem(format!(
                "the superblock records a delta apply staged in snapshot {}, which is not a receiving record",
                r.staging
            ));
        }
        if r.base != 0 && !w.live.contains(&r.base) {
            w.problem(format!(
                "the delta apply in progress is based on snapshot {}, which is not live",
                r.base
            ));
        }
    }
    if let Some(r) = &sb.revert {
        match w.records.get(&r.target) {
            Some(rec) if w.live.contains(&r.target) && !rec.writable => {}
            _ => w.problem(format!(
                "the rollback in progress merges snapshot {}, which is not a live read-only snapshot",
                r.target
            )),
        }
    }
    if let Some(c) = &sb.clone {
        let end = c
            .source_size
            .div_ceil(u64::from(sb.chunk_size))
            .min(sb.origin_size.div_ceil(u64::from(sb.chunk_size)));
        w.report.hydration = Some((c.cursor, end));
    }
    w.walk(TreeKind::Exceptions, sb.exception_root, None, None, None);
    w.walk(TreeKind::Private, sb.private_root, None, None, None);
    if w.report.exceptions != sb.exception_count {
        let found = w.report.exceptions;
        w.problem(format!(
            "superblock counts {} exceptions, the index holds {found}",
            sb.exception_count
        ));
    }
    let Some(alloc) = alloc else {
        return Ok(w.report);
    };
    let mut leaked = Vec::new();
    let mut used_but_free = Vec::new();
    let (mut n_leaked, mut n_free) = (0u64, 0u64);
    for b in reserved_end..sb.store_blocks {
        let reached = w.referenced[(b / 64) as usize] & (1 << (b % 64)) != 0;
        match (alloc.is_used(b), reached) {
            (true, false) => {
                n_leaked += 1;
                if leaked.len() < MAX_LISTED {
                    leaked.push(b);
                }
            }
            (false, true) => {
                n_free += 1;
                if used_but_free.len() < MAX_LISTED {
                    used_but_free.push(b);
                }
            }
            _ => {}
        }
    }
    if n_leaked > 0 {
        w.problem(format!(
            "{n_leaked} leaked block(s): marked used but unreachable, e.g. {leaked:?}"
        ));
    }
    if n_free > 0 {
        w.problem(format!(
            "{n_free} block(s) in use but marked free (would be handed out twice), e.g. {used_but_free:?}"
        ));
    }
    if alloc.used_blocks() != sb.used_blocks {
        let used = alloc.used_blocks();
        w.problem(format!(
            "superblock counts {} used blocks, the bitmap {used}",
            sb.used_blocks
        ));
    }
    Ok(w.report)
}

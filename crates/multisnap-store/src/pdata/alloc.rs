//! The persistent chunk allocator: one bit per 4 KiB store block, kept whole in memory (32 KiB
//! of RAM per GiB of store; it grows with the store's size, never with the number of
//! exceptions) and persisted as two alternating on-disk copies.
//!
//! Invariants:
//! - A block that a durable or sealed generation may reference is never handed out before the
//!   commit freeing it has landed: frees of blocks from an earlier transaction are deferred
//!   (`pending_free`), sealed into the next commit by [`ChunkAllocator::prepare_commit`] (its
//!   bitmap copy shows them free) and only made allocatable by [`ChunkAllocator::commit_done`],
//!   because until that commit's superblock is durable the previous generation is the recovery
//!   point. Blocks allocated and freed within one transaction are reused at once.
//! - A data chunk is written outside the metadata lock, between its allocation and the insert
//!   that references it; a commit sealed in between must not persist it as used, or a cut right
//!   after would leak it. Such chunks are `unrecorded` until [`ChunkAllocator::recorded`] and
//!   bitmap copies show them free.
//! - Commits are pipelined: once a commit is sealed ([`ChunkAllocator::seal_done`]), the next
//!   transaction allocates while it lands, so the sealed commit's blocks count as committed
//!   (later transactions shadow them and defer their frees).
//! - Data chunks are `chunk_blocks` blocks aligned to their size ("groups"). Metadata blocks are
//!   packed into groups already holding metadata before a fresh group is broken up, so metadata
//!   does not fragment the space data chunks need.
//! - The on-disk copy the next commit writes equals the previous-but-one generation, so only
//!   bitmap blocks dirtied by the last two transactions need writing (all of them after an open,
//!   since a crashed commit may have left that copy half-written).

use crate::blockdev::BlockDev;
use crate::error::{Result, StoreError};
use crate::format::bitmap::{self, BITS_PER_BLOCK};
use crate::format::BLOCK_SIZE;
use crate::ids::{MetaBlock, StoreChunk};
use std::collections::{BTreeMap, BTreeSet, HashSet};

const WORDS_PER_BITMAP_BLOCK: usize = (BITS_PER_BLOCK / 64) as usize;

pub struct ChunkAllocator {
    words: Vec<u64>,
    total_blocks: u64,
    chunk_blocks: u64,
    /// Groups with some but not all blocks used: where metadata goes first.
    partial_groups: BTreeSet<u64>,
    used: u64,
    /// Groups with no block used (only maintained when `chunk_blocks > 1`).
    free_groups: u64,
    fresh_meta: HashSet<u64>,
    fresh_chunks: HashSet<u64>,
    pending_free_meta: Vec<u64>,
    pending_free_chunks: Vec<u64>,
    /// Frees sealed into the commit in flight: free in its bitmap copy, still taken in memory.
    sealed_free_meta: Vec<u64>,
    sealed_free_chunks: Vec<u64>,
    /// Chunks allocated for data not yet referenced by any tree: free in bitmap copies.
    unrecorded: HashSet<u64>,
    dirty: BTreeSet<u64>,
    prev_dirty: BTreeSet<u64>,
    force_full_write: bool,
    data_cursor: u64,
}

impl ChunkAllocator {
    /// A fresh allocator for a store of `total_blocks`, with blocks `0..reserved` in use.
    pub fn new(total_blocks: u64, chunk_blocks: u64, reserved: u64) -> ChunkAllocator {
        let nwords = total_blocks.div_ceil(64) as usize;
        let ngroups = total_blocks / chunk_blocks;
        let mut a = ChunkAllocator {
            words: vec![0; nwords],
            total_blocks,
            chunk_blocks,
            partial_groups: BTreeSet::new(),
            used: 0,
            free_groups: if chunk_blocks > 1 { ngroups } else { 0 },
            fresh_meta: HashSet::new(),
            fresh_chunks: HashSet::new(),
            pending_free_meta: Vec::new(),
            pending_free_chunks: Vec::new(),
            sealed_free_meta: Vec::new(),
            sealed_free_chunks: Vec::new(),
            unrecorded: HashSet::new(),
            dirty: BTreeSet::new(),
            prev_dirty: BTreeSet::new(),
            force_full_write: true,
            data_cursor: 0,
        };
        for b in 0..reserved.min(total_blocks) {
            a.set(b, true);
        }
        a
    }

    /// Loads the bitmap copy named by the superblock, checking every block.
    pub fn load(
        dev: &dyn BlockDev,
        total_blocks: u64,
        chunk_blocks: u64,
        copy_start: u64,
        bitmap_blocks: u64,
    ) -> Result<ChunkAllocator> {
        let mut a = ChunkAllocator::new(total_blocks, chunk_blocks, 0);
        let mut buf = vec![0u8; BLOCK_SIZE];
        for index in 0..bitmap_blocks {
            let at = copy_start + index;
            dev.read_at(&mut buf, at * BLOCK_SIZE as u64)
                .map_err(|e| StoreError::io("store", at * BLOCK_SIZE as u64, BLOCK_SIZE, e))?;
            let bits =
                bitmap::unpack(&buf, at, index).map_err(|reason| StoreError::CorruptBitmap {
                    index,
                    block: MetaBlock(at),
                    reason,
                })?;
            let first_word = index as usize * WORDS_PER_BITMAP_BLOCK;
            for (w, bytes) in bits.chunks_exact(8).enumerate() {
                let word_index = first_word + w;
                let mut arr = [0u8; 8];
                arr.copy_from_slice(bytes);
                let word = u64::from_le_bytes(arr);
                if word_index < a.words.len() {
                    a.words[word_index] = word;
                } else if word != 0 {
                    return Err(StoreError::CorruptBitmap {
                        index,
                        block: MetaBlock(at),
                        reason: "bits set past the end of the store".into(),
                    });
                }
            }
        }
        if !total_blocks.is_multiple_of(64) {
            let last = a.words.len() - 1;
            if a.words[last] >> (total_blocks % 64) != 0 {
                return Err(StoreError::CorruptBitmap {
                    index: bitmap_blocks.saturating_sub(1),
                    block: MetaBlock(copy_start + bitmap_blocks.saturating_sub(1)),
                    reason: "bits set past the end of the store".into(),
                });
            }
        }
        a.recount();
        Ok(a)
    }

    fn recount(&mut self) {
        self.used = self.words.iter().map(|w| w.count_ones() as u64).sum();
        if self.chunk_blocks > 1 {
            self.partial_groups.clear();
            let mut free = 0;
            for g in 0..self.ngroups() {
                let n = self.group_count(g);
                if n == 0 {
                    free += 1;
                }
                if n > 0 && n < self.chunk_blocks {
                    self.partial_groups.insert(g);
                }
            }
            self.free_groups = free;
        }
    }

    /// Used blocks of whole group `g`, counted from the bitmap rather than kept per group (a
    /// count per group would cost as much memory as the bitmap itself). Chunk sizes are powers
    /// of two, so a group is a bit field inside one word or a run of whole words.
    fn group_count(&self, g: u64) -> u64 {
        let cb = self.chunk_blocks;
        let first = g * cb;
        let word = (first / 64) as usize;
        if cb < 64 {
            let field = (self.words[word] >> (first % 64)) & ((1u64 << cb) - 1);
            u64::from(field.count_ones())
        } else {
            self.words[word..word + (cb / 64) as usize]
                .iter()
                .map(|w| u64::from(w.count_ones()))
                .sum()
        }
    }

    pub fn is_used(&self, block: u64) -> bool {
        self.words[(block / 64) as usize] & (1 << (block % 64)) != 0
    }

    fn set(&mut self, block: u64, on: bool) {
        let (w, bit) = ((block / 64) as usize, 1u64 << (block % 64));
        let was = self.words[w] & bit != 0;
        if was == on {
            return;
        }
        if on {
            self.words[w] |= bit;
            self.used += 1;
        } else {
            self.words[w] &= !bit;
            self.used -= 1;
        }
        self.dirty.insert(block / BITS_PER_BLOCK);
        if self.chunk_blocks > 1 {
            let g = block / self.chunk_blocks;
            if g < self.ngroups() {
                let n = self.group_count(g);
                match (on, n) {
                    (true, 1) => self.free_groups -= 1,
                    (false, 0) => self.free_groups += 1,
                    _ => {}
                }
                if n > 0 && n < self.chunk_blocks {
                    self.partial_groups.insert(g);
                } else {
                    self.partial_groups.remove(&g);
                }
            }
        }
    }

    fn group_is_free(&self, g: u64) -> bool {
        if self.chunk_blocks == 1 {
            !self.is_used(g)
        } else {
            g < self.ngroups() && self.group_count(g) == 0
        }
    }

    fn ngroups(&self) -> u64 {
        self.total_blocks / self.chunk_blocks
    }

    /// The blocks of group (data chunk) `g`.
    fn group_blocks(&self, g: u64) -> std::ops::Range<u64> {
        g * self.chunk_blocks..(g + 1) * self.chunk_blocks
    }

    /// Blocks freed by the sealed commit: free in its bitmap copy, taken in memory until it
    /// has landed.
    fn sealed_free_blocks(&self) -> impl Iterator<Item = u64> + '_ {
        let chunks = self.sealed_free_chunks.iter();
        let chunk_blocks = chunks.flat_map(|&g| self.group_blocks(g));
        self.sealed_free_meta.iter().copied().chain(chunk_blocks)
    }

    fn find_free_group(&mut self) -> Option<u64> {
        let n = self.ngroups();
        if n == 0 {
            return None;
        }
        let mut g = self.data_cursor % n;
        let mut scanned = 0u64;
        while scanned < n {
            let whole_word_used = self.chunk_blocks == 1
                && g.is_multiple_of(64)
                && g + 64 <= n
                && self.words[(g / 64) as usize] == u64::MAX;
            if whole_word_used {
                g += 64;
                scanned += 64;
            } else {
                if self.group_is_free(g) {
                    self.data_cursor = g + 1;
                    return Some(g);
                }
                g += 1;
                scanned += 1;
            }
            if g >= n {
                g = 0;
            }
        }
        None
    }

    /// Allocates a data chunk; `None` when no whole chunk is free.
    pub fn alloc_chunk(&mut self) -> Option<StoreChunk> {
        let g = self.find_free_group()?;
        for b in self.group_blocks(g) {
            self.set(b, true);
        }
        self.fresh_chunks.insert(g);
        Some(StoreChunk(g))
    }

    /// Allocates one metadata block; `None` when the store is full.
    pub fn alloc_meta(&mut self) -> Option<MetaBlock> {
        let block = if let Some(&g) = self.partial_groups.iter().next() {
            self.group_blocks(g).find(|&b| !self.is_used(b))?
        } else if let Some(g) = self.find_free_group() {
            g * self.chunk_blocks
        } else {
            // Blocks in a trailing partial group can still hold metadata.
            (self.ngroups() * self.chunk_blocks..self.total_blocks).find(|&b| !self.is_used(b))?
        };
        self.set(block, true);
        self.fresh_meta.insert(block);
        Some(MetaBlock(block))
    }

    /// True if `block` was allocated in the current transaction (so it may be rewritten).
    pub fn is_fresh_meta(&self, block: MetaBlock) -> bool {
        self.fresh_meta.contains(&block.0)
    }

    pub fn free_meta(&mut self, block: MetaBlock) {
        if self.fresh_meta.remove(&block.0) {
            self.set(block.0, false);
        } else {
            self.pending_free_meta.push(block.0);
        }
    }

    /// Marks a chunk allocated for data that will be written before anything references it
    /// (see the module invariants).
    pub fn mark_unrecorded(&mut self, chunk: StoreChunk) {
        self.unrecorded.insert(chunk.0);
    }

    /// A tree now references `chunk`: the next bitmap copies show it used.
    pub fn recorded(&mut self, chunk: StoreChunk) {
        if self.unrecorded.remove(&chunk.0) {
            for b in self.group_blocks(chunk.0) {
                self.dirty.insert(b / BITS_PER_BLOCK);
            }
        }
    }

    pub fn free_chunk(&mut self, chunk: StoreChunk) {
        self.unrecorded.remove(&chunk.0);
        if self.fresh_chunks.remove(&chunk.0) {
            for b in self.group_blocks(chunk.0) {
                self.set(b, false);
            }
        } else {
            self.pending_free_chunks.push(chunk.0);
        }
    }

    /// Seals the deferred frees into the commit about to be written: its bitmap copy will show
    /// them free, but they stay taken in memory until [`ChunkAllocator::commit_done`].
    pub fn prepare_commit(&mut self) {
        debug_assert!(
            self.sealed_free_meta.is_empty() && self.sealed_free_chunks.is_empty(),
            "a commit sealed before the previous one landed"
        );
        self.sealed_free_meta = std::mem::take(&mut self.pending_free_meta);
        self.sealed_free_chunks = std::mem::take(&mut self.pending_free_chunks);
        let touched: Vec<u64> = self
            .sealed_free_blocks()
            .map(|b| b / BITS_PER_BLOCK)
            .collect();
        self.dirty.extend(touched);
    }

    /// Blocks taken in memory that the bitmap copy shows free (sealed frees and unrecorded
    /// chunks), by bitmap block index, as bit positions within that block.
    fn copy_clears(&self) -> BTreeMap<u64, Vec<u64>> {
        let mut out: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        let unrecorded = self.unrecorded.iter().flat_map(|&g| self.group_blocks(g));
        for b in self.sealed_free_blocks().chain(unrecorded) {
            out.entry(b / BITS_PER_BLOCK)
                .or_default()
                .push(b % BITS_PER_BLOCK);
        }
        out
    }

    /// Writes this generation's bitmap into the copy starting at `copy_start`.
    pub fn write_copy(
        &self,
        dev: &dyn BlockDev,
        copy_start: u64,
        bitmap_blocks: u64,
    ) -> Result<()> {
        let indices: Vec<u64> = if self.force_full_write {
            (0..bitmap_blocks).collect()
        } else {
            self.dirty.union(&self.prev_dirty).copied().collect()
        };
        let clears = self.copy_clears();
        let mut bytes = vec![0u8; WORDS_PER_BITMAP_BLOCK * 8];
        for index in indices {
            let first = index as usize * WORDS_PER_BITMAP_BLOCK;
            for (i, chunk) in bytes.chunks_exact_mut(8).enumerate() {
                let w = self.words.get(first + i).copied().unwrap_or(0);
                chunk.copy_from_slice(&w.to_le_bytes());
            }
            // Words are little-endian, so bit k of the block is bit k % 8 of byte k / 8.
            for &bit in clears.get(&index).map(Vec::as_slice).unwrap_or(&[]) {
                if let Some(byte) = bytes.get_mut((bit / 8) as usize) {
                    *byte &= !(1u8 << (bit % 8));
                }
            }
            let at = copy_start + index;
            let block = bitmap::pack(at, index, &bytes);
            dev.write_at(&block, at * BLOCK_SIZE as u64)
                .map_err(|e| StoreError::io("store", at * BLOCK_SIZE as u64, BLOCK_SIZE, e))?;
        }
        Ok(())
    }

    /// Takes in blocks `total_blocks..new_total` (the store grew). The caller has checked the
    /// bitmap area can describe them.
    pub fn grow(&mut self, new_total: u64) {
        if new_total <= self.total_blocks {
            return;
        }
        self.words.resize(new_total.div_ceil(64) as usize, 0);
        self.total_blocks = new_total;
        // Counts everything again, including a formerly trailing partial group now whole.
        self.recount();
        self.force_full_write = true;
    }

    /// Makes the next commit write every bitmap block (needed until both copies are whole).
    pub fn force_full_write(&mut self) {
        self.force_full_write = true;
    }

    /// Call once the commit's bitmap copy is written: what this transaction allocated now
    /// belongs to the sealed generation (later transactions must shadow it and defer its frees),
    /// and the next commit writes the other copy.
    pub fn seal_done(&mut self) {
        self.prev_dirty = std::mem::take(&mut self.dirty);
        self.force_full_write = false;
        self.fresh_meta.clear();
        self.fresh_chunks.clear();
    }

    /// Call once the sealed commit has landed: its frees become allocatable. Marking them free
    /// dirties their bitmap blocks again, so the next commit updates the other copy too.
    pub fn commit_done(&mut self) {
        let freed: Vec<u64> = self.sealed_free_blocks().collect();
        self.sealed_free_meta.clear();
        self.sealed_free_chunks.clear();
        for b in freed {
            self.set(b, false);
        }
    }

    /// Blocks counted in [`Self::used_blocks`] that bitmap copies show free: frees of the
    /// commit in flight, and unrecorded chunks.
    pub fn used_in_memory_only(&self) -> u64 {
        self.sealed_free_meta.len() as u64
            + (self.sealed_free_chunks.len() + self.unrecorded.len()) as u64 * self.chunk_blocks
    }

    pub fn used_blocks(&self) -> u64 {
        self.used
    }
    pub fn total_blocks(&self) -> u64 {
        self.total_blocks
    }
    /// Whole data chunks that could be allocated now.
    pub fn free_chunks(&self) -> u64 {
        if self.chunk_blocks == 1 {
            self.total_blocks - self.used
        } else {
            self.free_groups
        }
    }
    pub fn chunk_blocks(&self) -> u64 {
        self.chunk_blocks
    }
    /// Metadata blocks freed but still in use until a commit lands (see `pending_frees`).
    pub fn meta_frees_in_flight(&self) -> u64 {
        (self.pending_free_meta.len() + self.sealed_free_meta.len()) as u64
    }

    /// Blocks whose free waits for a commit to land (the open transaction's and the sealed
    /// one's).
    pub fn pending_frees(&self) -> usize {
        let cb = self.chunk_blocks as usize;
        self.pending_free_meta.len()
            + self.sealed_free_meta.len()
            + (self.pending_free_chunks.len() + self.sealed_free_chunks.len()) * cb
    }
}

/// Bitmap blocks needed per copy for a store of `total_blocks`.
pub fn bitmap_blocks_for(total_blocks: u64) -> u64 {
    total_blocks.div_ceil(BITS_PER_BLOCK).max(1)
}

#[cfg(test)]
mod tests;

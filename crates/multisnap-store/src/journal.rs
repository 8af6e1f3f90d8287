//! The origin write journal: how a volume flush makes the origin writes before it durable
//! with one sequential write to the store instead of an `fdatasync` of the origin.
//!
//! Why: a flush after a few dozen small random writes used to wait for the disk to write each
//! dirty origin page back on its own; on the disks measured that costs ~35 µs per page, while
//! the same pages written contiguously cost a third of it (docs/BENCHMARKS.md, History, 2026-11-25).
//! Origin writes still go to the origin in place (reads never look at the journal); the
//! journal only carries their durability until the origin itself is synced.
//!
//! Invariants:
//! - Every origin write is noted in [`DirtyRanges`] before it is acknowledged, and a flush
//!   either journals every noted range with its current contents or syncs the origin.
//! - The journal has two halves; epoch `e` writes half `e % 2`. A batch is one write,
//!   followed by a flush of the store device before the volume flush returns; batches of one
//!   epoch are numbered and laid end to end, and replay stops at the first one that is
//!   missing, torn or stale, so what it applies of each epoch is a durable prefix.
//! - At most two epochs are live: the superblock's `journal_epoch` and the one after it.
//!   Replay applies the older first.
//! - `journal_epoch` moves past an epoch only in a commit made after an `fdatasync` of the
//!   origin that followed every write that epoch holds (a filled half is synced in the
//!   background while flushes go on into the other half).
//! - Replay runs on open, before anything reads the origin, and ends by syncing the origin
//!   and moving past both epochs; replaying twice is harmless (it writes the same bytes).
//!
//! A store whose origin is direct (`OriginCache::Direct`, opened with `O_DIRECT`) is made
//! without a journal. Its origin writes leave no dirty pages: each one is in the device (or the
//! device's volatile cache) when it returns, so the write-back the journal spares a flush does
//! not exist, and journaling would only read every range back and write it twice. Its flush is
//! an `fdatasync` of the origin (the device cache flush, plus the file's block allocations for
//! writes into holes) and the store's commit. After a power cut, every write a flush
//! acknowledged is on the origin; a write after the last flush may or may not be, in whole
//! logical blocks, as on a disk. Copy before overwrite is unchanged: the store commits the
//! copy before the origin write is issued, which matters more here, since a direct write can
//! reach the disk the moment it is issued.

use crate::blockdev::BlockDev;
use crate::error::{Result, StoreError};
use crate::format::journal::{BatchFault, BatchHeader, JournalEntry, MAX_ENTRIES};
use crate::format::superblock::Superblock;
use crate::format::BLOCK_SIZE;
use parking_lot::Mutex;

/// Journal size `Store::create` uses unless told otherwise.
pub const DEFAULT_JOURNAL_BYTES: u64 = 256 << 20;
/// A journal smaller than this is not made at all (a tiny store keeps its space).
pub const MIN_JOURNAL_BLOCKS: u64 = 16;
/// Flushes with more dirty bytes than this sync the origin instead: big writes are sequential
/// already, and copying them twice would cost more than it saves.
pub const MAX_BATCH_DATA: u64 = 1 << 20;

/// Journal blocks for a new store of `total_blocks` when `requested` bytes are asked for: at
/// most a quarter of the store, and none below [`MIN_JOURNAL_BLOCKS`].
pub fn journal_blocks_for(requested: u64, total_blocks: u64) -> u64 {
    let blocks = (requested / BLOCK_SIZE as u64).min(total_blocks / 4);
    if blocks < MIN_JOURNAL_BLOCKS {
        0
    } else {
        blocks
    }
}

/// What a flush finds noted.
#[derive(Debug, PartialEq, Eq)]
pub enum Dirty {
    Nothing,
    /// Sorted, merged ranges.
    Ranges(Vec<(u64, u64)>),
    /// More than one batch could hold, or the store has no journal: the flush syncs the
    /// origin.
    TooMany,
}

/// Origin byte ranges written since the last flush took them. Bounded: once the ranges could
/// not go into one batch any more it stops noting and says so, which costs the next flush an
/// origin sync, as without a journal.
#[derive(Default)]
pub struct DirtyRanges {
    noted: Mutex<Noted>,
}

#[derive(Default)]
struct Noted {
    ranges: Vec<(u64, u64)>,
    too_many: bool,
}

/// Noted ranges are merged when there are this many.
const MERGE_AT: usize = 2 * MAX_ENTRIES;

impl Noted {
    fn push(&mut self, offset: u64, len: u64) {
        if self.too_many || len == 0 {
            return;
        }
        self.ranges.push((offset, len));
        if self.ranges.len() >= MERGE_AT {
            merge(&mut self.ranges);
            if batch_blocks(&self.ranges).is_none() {
                self.too_many = true;
                self.ranges = Vec::new();
            }
        }
    }
}

impl DirtyRanges {
    pub fn note(&self, offset: u64, len: u64) {
        self.noted.lock().push(offset, len);
    }

    /// Notes a write a flush makes durable by syncing the origin, not by journaling it.
    pub fn note_unjournaled(&self) {
        let mut n = self.noted.lock();
        n.too_many = true;
        n.ranges = Vec::new();
    }

    /// Takes everything noted.
    pub fn take(&self) -> Dirty {
        let mut n = self.noted.lock();
        if std::mem::take(&mut n.too_many) {
            n.ranges = Vec::new();
            return Dirty::TooMany;
        }
        let mut v = std::mem::take(&mut n.ranges);
        drop(n);
        merge(&mut v);
        if v.is_empty() {
            Dirty::Nothing
        } else {
            Dirty::Ranges(v)
        }
    }

    /// Gives back what a flush took and failed to make durable.
    pub fn restore(&self, dirty: Dirty) {
        let mut n = self.noted.lock();
        match dirty {
            Dirty::Nothing => {}
            Dirty::TooMany => n.too_many = true,
            Dirty::Ranges(v) => {
                for (offset, len) in v {
                    n.push(offset, len);
                }
            }
        }
    }
}

/// Sorts `(offset, len)` ranges and merges those that overlap or touch.
pub fn merge(v: &mut Vec<(u64, u64)>) {
    v.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(v.len());
    for &(off, len) in v.iter() {
        match out.last_mut() {
            Some((o, l)) if off <= *o + *l => *l = (*l).max(off + len - *o),
            _ => out.push((off, len)),
        }
    }
    *v = out;
}

/// Where the next batch goes: epoch `epoch` writes the half `epoch % 2` of the journal.
#[derive(Debug, Default)]
pub struct JournalCursor {
    pub epoch: u64,
    /// Blocks of the half used in this epoch.
    pub next_block: u64,
    pub sequence: u64,
}

impl JournalCursor {
    /// The start of `epoch`'s half, nothing written yet.
    pub fn at(epoch: u64) -> JournalCursor {
        JournalCursor {
            epoch,
            next_block: 0,
            sequence: 0,
        }
    }
}

/// Blocks of each of the journal's two halves.
pub fn half_blocks(journal_blocks: u64) -> u64 {
    journal_blocks / 2
}

/// First block (in the store) of the half that epoch `epoch` writes.
pub fn half_start(journal_start: u64, journal_blocks: u64, epoch: u64) -> u64 {
    journal_start + (epoch % 2) * half_blocks(journal_blocks)
}

/// A batch ready to be written: header block, then the entries' data, padded.
pub struct BatchImage {
    pub bytes: Vec<u8>,
    pub data_len: u64,
}

impl BatchImage {
    /// Room for the given ranges' data after a header block; [`BatchImage::data_mut`] hands
    /// out each range's slot in order.
    pub fn for_ranges(ranges: &[(u64, u64)]) -> BatchImage {
        let data_len: u64 = ranges.iter().map(|r| r.1).sum();
        let blocks = 1 + data_len.div_ceil(BLOCK_SIZE as u64);
        BatchImage {
            bytes: vec![0u8; (blocks as usize) * BLOCK_SIZE],
            data_len,
        }
    }

    pub fn blocks(&self) -> u64 {
        (self.bytes.len() / BLOCK_SIZE) as u64
    }

    /// The data slot at `at` bytes into the data area, `len` long.
    pub fn data_mut(&mut self, at: u64, len: u64) -> &mut [u8] {
        let start = BLOCK_SIZE + at as usize;
        &mut self.bytes[start..start + len as usize]
    }

    /// Stamps the header once every slot is filled.
    pub fn seal(&mut self, epoch: u64, sequence: u64, ranges: &[(u64, u64)]) {
        let data_end = BLOCK_SIZE + self.data_len as usize;
        let header = BatchHeader {
            epoch,
            sequence,
            data_crc: crc32c::crc32c(&self.bytes[BLOCK_SIZE..data_end]),
            entries: ranges
                .iter()
                .map(|&(offset, len)| JournalEntry {
                    offset,
                    len: len as u32,
                })
                .collect(),
        };
        self.bytes[..BLOCK_SIZE].copy_from_slice(&header.pack());
    }
}

/// Blocks one batch of these ranges takes (header included), or `None` when they cannot go
/// into one batch: too many ranges, or more than [`MAX_BATCH_DATA`] bytes.
pub fn batch_blocks(ranges: &[(u64, u64)]) -> Option<u64> {
    let data: u64 = ranges.iter().map(|r| r.1).sum();
    (!ranges.is_empty() && ranges.len() <= MAX_ENTRIES && data <= MAX_BATCH_DATA)
        .then(|| 1 + data.div_ceil(BLOCK_SIZE as u64))
}

/// What a scan of the journal found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct JournalContents {
    pub batches: u64,
    pub bytes: u64,
}

/// Walks the batches the journal may still need, oldest first: epoch `journal_epoch` in its
/// half, then epoch `journal_epoch + 1` in the other; within each, batches 0, 1, 2 ... until
/// one is missing, torn or stale. Hands each to `visit` with its data (the entries' bytes back
/// to back).
pub fn scan(
    dev: &dyn BlockDev,
    sb: &Superblock,
    mut visit: impl FnMut(&BatchHeader, &[u8]) -> Result<()>,
) -> Result<JournalContents> {
    let mut found = JournalContents::default();
    for epoch in [sb.journal_epoch, sb.journal_epoch + 1] {
        scan_epoch(dev, sb, epoch, &mut found, &mut visit)?;
    }
    Ok(found)
}

fn scan_epoch(
    dev: &dyn BlockDev,
    sb: &Superblock,
    epoch: u64,
    found: &mut JournalContents,
    visit: &mut impl FnMut(&BatchHeader, &[u8]) -> Result<()>,
) -> Result<()> {
    let half = half_blocks(sb.journal_blocks);
    let start = half_start(sb.journal_start, sb.journal_blocks, epoch);
    let mut pos = 0u64;
    let mut sequence = 0u64;
    let mut header_block = vec![0u8; BLOCK_SIZE];
    let mut data = Vec::new();
    while pos < half {
        let at = (start + pos) * BLOCK_SIZE as u64;
        dev.read_at(&mut header_block, at)
            .map_err(|e| StoreError::io("store", at, BLOCK_SIZE, e))?;
        let header = match BatchHeader::unpack(&header_block, epoch, sequence, sb.origin_size) {
            Ok(h) => h,
            Err(BatchFault::Corrupt(why)) => {
                tracing::warn!(volume = %sb.volume_name, epoch, batch = sequence, reason = %why, "journal ends at a checksummed but malformed batch");
                break;
            }
            Err(_) => break,
        };
        let blocks = header.data_blocks();
        if pos + 1 + blocks > half {
            tracing::warn!(volume = %sb.volume_name, epoch, batch = sequence, "journal batch runs past its half's end; ignoring it");
            break;
        }
        let len = header.data_len() as usize;
        data.resize(blocks as usize * BLOCK_SIZE, 0);
        let data_at = at + BLOCK_SIZE as u64;
        dev.read_at(&mut data, data_at)
            .map_err(|e| StoreError::io("store", data_at, data.len(), e))?;
        if crc32c::crc32c(&data[..len]) != header.data_crc {
            break; // torn: the flush that wrote it never returned
        }
        visit(&header, &data[..len])?;
        found.batches += 1;
        found.bytes += len as u64;
        pos += 1 + blocks;
        sequence += 1;
    }
    Ok(())
}

/// Writes every batch the journal holds into the origin, in order. The caller syncs the
/// origin and moves the epoch on afterwards.
pub fn replay(
    origin: &dyn BlockDev,
    dev: &dyn BlockDev,
    sb: &Superblock,
) -> Result<JournalContents> {
    scan(dev, sb, |header, data| {
        let mut at = 0usize;
        for e in &header.entries {
            let len = e.len as usize;
            origin
                .write_at(&data[at..at + len], e.offset)
                .map_err(|err| StoreError::io("origin", e.offset, len, err))?;
            at += len;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests;

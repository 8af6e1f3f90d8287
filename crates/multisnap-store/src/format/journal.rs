//! A batch of the origin write journal: one header block, then the data of its entries packed
//! back to back and padded to a whole block. A volume flush writes one batch (one sequential
//! write) instead of waiting for the origin's scattered dirty pages.

use super::*;
use crate::checksum::{is_sealed, seal, JOURNAL_SALT};

const OFF_ENTRY_COUNT: usize = 4;
const OFF_EPOCH: usize = 8;
const OFF_SEQUENCE: usize = 16;
const OFF_DATA_BLOCKS: usize = 24;
const OFF_DATA_CRC: usize = 28;
const OFF_ENTRIES: usize = 32;
const ENTRY_SIZE: usize = 16;

/// Entries one header block holds.
pub const MAX_ENTRIES: usize = (BLOCK_SIZE - OFF_ENTRIES) / ENTRY_SIZE;

/// One origin byte range whose contents follow in the batch's data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JournalEntry {
    pub offset: u64,
    pub len: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchHeader {
    /// The superblock's `journal_epoch` when the batch was written.
    pub epoch: u64,
    /// Batches of one epoch are numbered 0, 1, 2 ... in journal order.
    pub sequence: u64,
    /// crc32c of the entries' data (their lengths summed, padding excluded).
    pub data_crc: u32,
    pub entries: Vec<JournalEntry>,
}

/// Why a block is not the batch replay expects next: the journal ends there.
#[derive(Debug, PartialEq, Eq)]
pub enum BatchFault {
    Checksum,
    /// Valid, but from another epoch or out of sequence: left over from before.
    Stale,
    /// Checksummed, yet its fields make no sense (a bug wrote it).
    Corrupt(String),
}

impl BatchHeader {
    /// Bytes of data the entries carry.
    pub fn data_len(&self) -> u64 {
        self.entries.iter().map(|e| u64::from(e.len)).sum()
    }

    /// Blocks the data takes after the header.
    pub fn data_blocks(&self) -> u64 {
        self.data_len().div_ceil(BLOCK_SIZE as u64)
    }

    /// Panics if there are more than [`MAX_ENTRIES`] entries (the writer splits first).
    pub fn pack(&self) -> Vec<u8> {
        assert!(
            self.entries.len() <= MAX_ENTRIES,
            "too many journal entries"
        );
        let mut b = vec![0u8; BLOCK_SIZE];
        put_u32(&mut b, OFF_ENTRY_COUNT, self.entries.len() as u32);
        put_u64(&mut b, OFF_EPOCH, self.epoch);
        put_u64(&mut b, OFF_SEQUENCE, self.sequence);
        put_u32(&mut b, OFF_DATA_BLOCKS, self.data_blocks() as u32);
        put_u32(&mut b, OFF_DATA_CRC, self.data_crc);
        for (i, e) in self.entries.iter().enumerate() {
            let at = OFF_ENTRIES + i * ENTRY_SIZE;
            put_u64(&mut b, at, e.offset);
            put_u32(&mut b, at + 8, e.len);
        }
        seal(&mut b, JOURNAL_SALT);
        b
    }

    /// Reads the header of the batch expected as number `sequence` of `epoch`, whose entries
    /// must lie inside an origin of `origin_size` bytes.
    pub fn unpack(
        b: &[u8],
        epoch: u64,
        sequence: u64,
        origin_size: u64,
    ) -> Result<BatchHeader, BatchFault> {
        if b.len() != BLOCK_SIZE || !is_sealed(b, JOURNAL_SALT) {
            return Err(BatchFault::Checksum);
        }
        if get_u64(b, OFF_EPOCH) != epoch || get_u64(b, OFF_SEQUENCE) != sequence {
            return Err(BatchFault::Stale);
        }
        let count = get_u32(b, OFF_ENTRY_COUNT) as usize;
        if count == 0 || count > MAX_ENTRIES {
            return Err(BatchFault::Corrupt(format!("{count} entries")));
        }
        let entries: Vec<JournalEntry> = (0..count)
            .map(|i| {
                let at = OFF_ENTRIES + i * ENTRY_SIZE;
                JournalEntry {
                    offset: get_u64(b, at),
                    len: get_u32(b, at + 8),
                }
            })
            .collect();
        for e in &entries {
            let inside = e
                .offset
                .checked_add(u64::from(e.len))
                .is_some_and(|end| end <= origin_size);
            if e.len == 0 || !inside {
                return Err(BatchFault::Corrupt(format!(
                    "entry {}+{} is empty or outside the origin of {origin_size} bytes",
                    e.offset, e.len
                )));
            }
        }
        let h = BatchHeader {
            epoch,
            sequence,
            data_crc: get_u32(b, OFF_DATA_CRC),
            entries,
        };
        if u64::from(get_u32(b, OFF_DATA_BLOCKS)) != h.data_blocks() {
            return Err(BatchFault::Corrupt(
                "data block count does not match the entries".into(),
            ));
        }
        Ok(h)
    }
}

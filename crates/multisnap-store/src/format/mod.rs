//! On-disk format, version 6. Every byte is documented in docs/FORMAT.md; this module is the
//! only code that knows where fields live. Integers are little-endian.
//!
//! Store layout (4 KiB metadata blocks, data chunks of `chunk_size` aligned to their size):
//! block 0 and 1: the two superblock slots; then two copies of the allocator bitmap; then the
//! origin write journal (absent in version 2); the rest is allocated on demand to B+tree nodes
//! and data chunks.

pub mod bitmap;
pub mod exception;
pub mod journal;
pub mod node;
pub mod snapshot_record;
pub mod superblock;
pub mod superblock_io;

/// Size of every metadata block (superblocks, B+tree nodes, bitmap blocks).
pub const BLOCK_SIZE: usize = 4096;
/// The newest on-disk format version this build reads and writes: a store whose origin is
/// read and written with `O_DIRECT` (see `Superblock::origin_cache`). Other stores keep the
/// oldest version that describes them.
pub const FORMAT_VERSION: u32 = 6;
/// The version of a store made as a clone (see `Superblock::clone_format`).
pub const CLONE_VERSION: u32 = 5;
/// The version whose snapshot records carry their own size and which may hold a rollback in
/// place (see `Superblock::sized_snapshots`).
pub const SIZED_VERSION: u32 = 4;
/// The version of a store whose snapshot records may omit their size (every snapshot has the
/// origin's size) and that has an origin write journal; written until a store's first resize.
pub const JOURNAL_VERSION: u32 = 3;
/// The oldest version this build reads. Version 2 is version 3 without the origin write
/// journal (its journal fields are zero); stores without a journal are written as version 2
/// until they are first resized (then version 4, see `Superblock::sized_snapshots`).
pub const OLDEST_READABLE_VERSION: u32 = 2;
/// Smallest and largest chunk sizes.
pub const MIN_CHUNK_SIZE: u32 = 4096;
pub const MAX_CHUNK_SIZE: u32 = 1 << 20;

pub(crate) fn get_u16(b: &[u8], at: usize) -> u16 {
    let mut a = [0u8; 2];
    a.copy_from_slice(&b[at..at + 2]);
    u16::from_le_bytes(a)
}
pub(crate) fn get_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}
pub(crate) fn get_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}
pub(crate) fn put_u16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
pub(crate) fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
pub(crate) fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

#[cfg(test)]
pub(crate) mod tests;

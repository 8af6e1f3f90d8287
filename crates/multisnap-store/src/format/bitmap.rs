//! Allocator bitmap blocks. One bit per 4 KiB store block (1 = in use), least significant bit
//! first. Two full copies exist; the superblock names the one that matches its generation.

use super::*;
use crate::checksum::{is_sealed, seal, BITMAP_SALT};

const OFF_SELF: usize = 8;
const OFF_INDEX: usize = 16;
/// Where the bits start inside a bitmap block.
pub const BITS_OFFSET: usize = 24;
/// Store blocks described by one bitmap block.
pub const BITS_PER_BLOCK: u64 = ((BLOCK_SIZE - BITS_OFFSET) * 8) as u64;

/// Packs bitmap block number `index` of a copy, to be written at `self_block`.
pub fn pack(self_block: u64, index: u64, bits: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8; BLOCK_SIZE];
    put_u64(&mut b, OFF_SELF, self_block);
    put_u64(&mut b, OFF_INDEX, index);
    let n = bits.len().min(BLOCK_SIZE - BITS_OFFSET);
    b[BITS_OFFSET..BITS_OFFSET + n].copy_from_slice(&bits[..n]);
    seal(&mut b, BITMAP_SALT);
    b
}

/// Checks a bitmap block and returns its bit bytes.
pub fn unpack(b: &[u8], self_block: u64, index: u64) -> Result<&[u8], String> {
    if b.len() != BLOCK_SIZE || !is_sealed(b, BITMAP_SALT) {
        return Err("checksum mismatch".into());
    }
    if get_u64(b, OFF_SELF) != self_block {
        return Err(format!(
            "written for block {}, found at {self_block}",
            get_u64(b, OFF_SELF)
        ));
    }
    if get_u64(b, OFF_INDEX) != index {
        return Err(format!(
            "holds bitmap index {}, expected {index}",
            get_u64(b, OFF_INDEX)
        ));
    }
    Ok(&b[BITS_OFFSET..])
}

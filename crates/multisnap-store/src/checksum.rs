//! The one place checksums are computed. Every metadata block carries a crc32c of its bytes
//! (with the checksum field itself read as zero) xored with a salt that names the block's
//! kind, so a valid block of one kind can never be mistaken for another kind.

/// Salt for superblocks.
pub const SUPERBLOCK_SALT: u32 = 0x5355_5052; // "SUPR"
/// Salt for exception-index and snapshot-table B+tree nodes.
pub const NODE_SALT: u32 = 0x4E4F_4445; // "NODE"
/// Salt for allocator bitmap blocks.
pub const BITMAP_SALT: u32 = 0x424D_4150; // "BMAP"
/// Salt for origin write journal batch headers.
pub const JOURNAL_SALT: u32 = 0x4A52_4E4C; // "JRNL"

/// Offset of the 4-byte checksum field inside every checksummed block.
pub const CSUM_OFFSET: usize = 0;

/// Checksum of `block`, treating bytes `CSUM_OFFSET..CSUM_OFFSET+4` as zero.
pub fn block_checksum(block: &[u8], salt: u32) -> u32 {
    let head = &block[..CSUM_OFFSET];
    let tail = &block[CSUM_OFFSET + 4..];
    let mut c = crc32c::crc32c(head);
    c = crc32c::crc32c_append(c, &[0u8; 4]);
    c = crc32c::crc32c_append(c, tail);
    c ^ salt
}

/// Stamps the checksum into `block`.
pub fn seal(block: &mut [u8], salt: u32) {
    let c = block_checksum(block, salt);
    block[CSUM_OFFSET..CSUM_OFFSET + 4].copy_from_slice(&c.to_le_bytes());
}

/// True when the stored checksum matches the contents.
pub fn is_sealed(block: &[u8], salt: u32) -> bool {
    if block.len() < CSUM_OFFSET + 4 {
        return false;
    }
    let mut stored = [0u8; 4];
    stored.copy_from_slice(&block[CSUM_OFFSET..CSUM_OFFSET + 4]);
    u32::from_le_bytes(stored) == block_checksum(block, salt)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_then_check_and_detect_flip() {
        let mut b = vec![7u8; 4096];
        seal(&mut b, NODE_SALT);
        assert!(is_sealed(&b, NODE_SALT));
        assert!(
            !is_sealed(&b, BITMAP_SALT),
            "a node must not pass as a bitmap block"
        );
        b[100] ^= 1;
        assert!(!is_sealed(&b, NODE_SALT));
    }
}

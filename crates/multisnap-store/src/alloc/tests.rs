use super::*;
use crate::blockdev::MemDev;

#[test]
fn committed_blocks_are_not_reused_before_commit() {
    let mut a = ChunkAllocator::new(64, 1, 4);
    let b = a.alloc_meta().unwrap();
    a.commit_done();
    a.free_meta(b);
    assert!(
        a.is_used(b.0),
        "a committed block stays used until the next commit"
    );
    let other = a.alloc_meta().unwrap();
    assert_ne!(other, b);
    a.prepare_commit();
    assert!(!a.is_used(b.0));
}

#[test]
fn fresh_blocks_are_reused_at_once() {
    let mut a = ChunkAllocator::new(64, 1, 4);
    let b = a.alloc_meta().unwrap();
    a.free_meta(b);
    assert!(!a.is_used(b.0));
    assert_eq!(a.used_blocks(), 4);
}

#[test]
fn metadata_packs_into_partial_groups() {
    // 16 blocks per chunk: metadata should fill one group before breaking another.
    let mut a = ChunkAllocator::new(16 * 10, 16, 2);
    let blocks: Vec<u64> = (0..14).map(|_| a.alloc_meta().unwrap().0).collect();
    assert!(blocks.iter().all(|&b| b < 16), "{blocks:?}");
    assert_eq!(a.free_chunks(), 9);
    let c = a.alloc_chunk().unwrap();
    assert!(c.0 >= 1);
    assert_eq!(a.free_chunks(), 8);
}

#[test]
fn full_store_says_none() {
    let mut a = ChunkAllocator::new(16 * 3, 16, 16);
    assert!(a.alloc_chunk().is_some());
    assert!(a.alloc_chunk().is_some());
    assert!(a.alloc_chunk().is_none());
    assert_eq!(a.free_chunks(), 0);
}

#[test]
fn bitmap_round_trips_through_disk() {
    let total = BITS_PER_BLOCK * 2 + 100;
    let dev = MemDev::new((4 + total) * BLOCK_SIZE as u64);
    let mut a = ChunkAllocator::new(total, 1, 10);
    for _ in 0..40_000 {
        a.alloc_chunk().unwrap();
    }
    let nb = bitmap_blocks_for(total);
    a.write_copy(&dev, 1, nb).unwrap();
    let b = ChunkAllocator::load(&dev, total, 1, 1, nb).unwrap();
    assert_eq!(b.used_blocks(), a.used_blocks());
    for blk in 0..total {
        assert_eq!(a.is_used(blk), b.is_used(blk), "block {blk}");
    }
}

#[test]
fn corrupt_bitmap_is_refused() {
    let total = 1000;
    let dev = MemDev::new(64 * BLOCK_SIZE as u64);
    let a = ChunkAllocator::new(total, 1, 10);
    a.write_copy(&dev, 2, 1).unwrap();
    dev.write_at(&[0xff], 2 * BLOCK_SIZE as u64 + 100).unwrap();
    assert!(matches!(
        ChunkAllocator::load(&dev, total, 1, 2, 1),
        Err(StoreError::CorruptBitmap { .. })
    ));
}

use super::*;
use crate::blockdev::MemDev;

#[test]
fn committed_blocks_are_not_reused_before_commit() {
    let mut a = ChunkAllocator::new(64, 1, 4);
    let b = a.alloc_meta().unwrap();
    a.prepare_commit();
    a.seal_done();
    a.commit_done();
    a.free_meta(b);
    assert!(
        a.is_used(b.0),
        "a committed block stays used until the next commit"
    );
    let other = a.alloc_meta().unwrap();
    assert_ne!(other, b);
    a.prepare_commit();
    a.seal_done();
    // Sealed but not landed: the previous generation is still the recovery point.
    assert!(
        a.is_used(b.0),
        "a sealed free stays taken until its commit lands"
    );
    assert_eq!(a.used_in_memory_only(), 1);
    let during = (0..58).filter_map(|_| a.alloc_meta()).collect::<Vec<_>>();
    assert!(
        !during.contains(&b),
        "{b} handed out while its commit was landing"
    );
    assert!(a.alloc_meta().is_none(), "only the sealed free is left");
    a.commit_done();
    assert!(!a.is_used(b.0));
    assert_eq!(a.alloc_meta(), Some(b));
}

#[test]
fn sealed_frees_are_free_in_the_bitmap_copy() {
    let total = BITS_PER_BLOCK + 64;
    let nb = bitmap_blocks_for(total);
    let dev = MemDev::new((4 + 2 * nb + total) * BLOCK_SIZE as u64);
    let mut a = ChunkAllocator::new(total, 16, 16);
    let chunks: Vec<_> = (0..100).map(|_| a.alloc_chunk().unwrap()).collect();
    let meta = a.alloc_meta().unwrap();
    a.prepare_commit();
    a.seal_done();
    a.commit_done();
    a.free_chunk(chunks[3]);
    a.free_chunk(chunks[70]);
    a.free_meta(meta);
    a.prepare_commit();
    a.force_full_write();
    a.write_copy(&dev, 1, nb).unwrap();
    a.seal_done();
    let on_disk = ChunkAllocator::load(&dev, total, 16, 1, nb).unwrap();
    assert_eq!(
        on_disk.used_blocks(),
        a.used_blocks() - a.used_in_memory_only()
    );
    assert_eq!(a.used_in_memory_only(), 2 * 16 + 1);
    for c in [chunks[3], chunks[70]] {
        for blk in c.0 * 16..(c.0 + 1) * 16 {
            assert!(!on_disk.is_used(blk) && a.is_used(blk), "block {blk}");
        }
    }
    assert!(!on_disk.is_used(meta.0) && a.is_used(meta.0));
    a.commit_done();
    for blk in 0..total {
        assert_eq!(a.is_used(blk), on_disk.is_used(blk), "block {blk}");
    }
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

#[test]
fn unrecorded_chunks_are_free_in_the_bitmap_copy_until_recorded() {
    let total = 16 * 64;
    let nb = bitmap_blocks_for(total);
    let dev = MemDev::new((4 + 2 * nb + total) * BLOCK_SIZE as u64);
    let mut a = ChunkAllocator::new(total, 16, 16);
    let kept = a.alloc_chunk().unwrap();
    let writing = a.alloc_chunk().unwrap();
    a.mark_unrecorded(writing);
    a.prepare_commit();
    a.force_full_write();
    a.write_copy(&dev, 1, nb).unwrap();
    a.seal_done();
    a.commit_done();
    let on_disk = ChunkAllocator::load(&dev, total, 16, 1, nb).unwrap();
    assert!(on_disk.is_used(kept.0 * 16));
    assert!(
        !on_disk.is_used(writing.0 * 16) && a.is_used(writing.0 * 16),
        "a chunk nothing references yet must not be persisted as used"
    );
    assert_eq!(
        on_disk.used_blocks(),
        a.used_blocks() - a.used_in_memory_only()
    );
    a.recorded(writing);
    a.prepare_commit();
    a.force_full_write();
    a.write_copy(&dev, 1 + nb, nb).unwrap();
    a.seal_done();
    a.commit_done();
    let second = ChunkAllocator::load(&dev, total, 16, 1 + nb, nb).unwrap();
    assert!(
        second.is_used(writing.0 * 16),
        "a recorded chunk is shown used"
    );
    assert_eq!(second.used_blocks(), a.used_blocks());
}

/// Group bookkeeping (free groups, groups open to metadata) follows the bitmap through random
/// allocations and frees, for every chunk size from one block (4 KiB) to 256 blocks (1 MiB).
#[test]
fn group_accounting_matches_a_recount() {
    use rand::{Rng, SeedableRng};
    for cb in [1u64, 2, 16, 64, 128, 256] {
        let total = cb * 40 + cb / 2 + 3; // a trailing partial group too
        let mut a = ChunkAllocator::new(total, cb, 5);
        let mut rng = rand::rngs::StdRng::seed_from_u64(cb);
        let (mut chunks, mut metas) = (Vec::new(), Vec::new());
        for step in 0..3000 {
            match rng.gen_range(0..10) {
                0..=2 => chunks.extend(a.alloc_chunk()),
                3..=5 => metas.extend(a.alloc_meta()),
                6 | 7 if !chunks.is_empty() => {
                    let c = chunks.swap_remove(rng.gen_range(0..chunks.len()));
                    a.free_chunk(c);
                }
                8 if !metas.is_empty() => {
                    let m = metas.swap_remove(rng.gen_range(0..metas.len()));
                    a.free_meta(m);
                }
                _ => {
                    a.prepare_commit();
                    a.seal_done();
                    a.commit_done();
                }
            }
            let free_groups = a.free_groups;
            let partial = a.partial_groups.clone();
            let used = a.used;
            a.recount();
            assert_eq!(a.free_groups, free_groups, "chunk blocks {cb}, step {step}");
            assert_eq!(a.partial_groups, partial, "chunk blocks {cb}, step {step}");
            assert_eq!(a.used, used, "chunk blocks {cb}, step {step}");
            if step % 100 == 0 {
                for g in 0..total / cb {
                    let bits = (g * cb..(g + 1) * cb).filter(|&b| a.is_used(b)).count();
                    assert_eq!(
                        a.group_count(g),
                        bits as u64,
                        "chunk blocks {cb}, group {g}"
                    );
                }
            }
        }
    }
}

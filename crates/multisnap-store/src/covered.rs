//! Which origin chunks need no copy before an overwrite, known without the metadata lock.
//!
//! A set bit says: every live snapshot already has its own copy of this chunk (or there is no
//! live snapshot), so an origin write may go straight to the origin. Bits are only ever set by
//! an origin writer holding the write barrier shared and the chunk's stripe exclusively, after
//! the copy decision for that chunk found nothing to do or its copies were committed. Anything
//! that can make a snapshot live (or change which copies exist for a live one) takes the
//! barrier exclusively, and every exclusive barrier section starts by clearing the whole map
//! (`Store::exclusive_barrier`); so a set bit can be stale only in the safe direction
//! (deleting snapshots never makes a copy necessary). A poisoned store clears it too, so that
//! its writers meet the refusal in the slow path. 1 bit per chunk: 2 KiB per GiB of origin at
//! 64 KiB chunks.

use std::sync::atomic::{AtomicU64, Ordering};

pub struct CoveredChunks {
    words: Vec<AtomicU64>,
}

impl CoveredChunks {
    pub fn new(chunks: u64) -> CoveredChunks {
        CoveredChunks {
            words: (0..chunks.div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
        }
    }

    // Relaxed is enough: the barrier and the stripes order every set against every clear and
    // every check that matters (see the module doc).
    pub fn contains_all(&self, chunks: std::ops::RangeInclusive<u64>) -> bool {
        chunks.into_iter().all(|c| {
            self.words
                .get((c / 64) as usize)
                .is_some_and(|w| w.load(Ordering::Relaxed) & (1 << (c % 64)) != 0)
        })
    }

    pub fn insert(&self, chunk: u64) {
        if let Some(w) = self.words.get((chunk / 64) as usize) {
            w.fetch_or(1 << (chunk % 64), Ordering::Relaxed);
        }
    }

    pub fn clear(&self) {
        for w in &self.words {
            w.store(0, Ordering::Relaxed);
        }
    }
}

//! [`LocationCache`]: where snapshot reads last found their chunks, so that reading a chunk
//! again skips the descent of the exception index (and of the private map).
//!
//! Invariants:
//! - An entry is written only with a location looked up under the metadata lock, while that
//!   lock is still held (shared or exclusive): it matches the index as it stands.
//! - Every change to the exception index or the private map forgets the changed chunk's
//!   entries, under the exclusive lock, before that lock is released (`Meta` does it in the
//!   only methods that change those trees). So an entry a reader finds under the lock is what
//!   the index would answer.
//! - Snapshot ids are never reused, so an entry of a deleted snapshot is never mistaken for a
//!   later one; readers check liveness before they ask.
//! - Nothing here is persisted: it starts empty on every open, and a lost entry costs one
//!   descent.
//! - Readers fill entries concurrently under the shared lock. Each way has a sequence number
//!   (odd while being written), so a reader never takes a half-written entry; a fill that finds
//!   its way busy is dropped.

use crate::ids::{OriginChunk, SnapshotId, StoreChunk};
use std::sync::atomic::{fence, AtomicU64, Ordering};

/// Entries per set: two snapshots can have the same chunk cached at once.
const WAYS: usize = 2;
/// `snap` of an empty way. Snapshot ids stay far below it.
const EMPTY: u64 = u64::MAX;
/// `location` meaning "the snapshot sees the origin's chunk".
const ORIGIN: u64 = u64::MAX;
/// Memory of one set: a cache line, so a lookup touches one.
pub const SET_BYTES: usize = std::mem::size_of::<Set>();

struct Way {
    seq: AtomicU64,
    snap: AtomicU64,
    chunk: AtomicU64,
    location: AtomicU64,
}

impl Way {
    fn empty() -> Way {
        Way {
            seq: AtomicU64::new(0),
            snap: AtomicU64::new(EMPTY),
            chunk: AtomicU64::new(0),
            location: AtomicU64::new(0),
        }
    }
}

#[repr(align(64))]
struct Set {
    ways: [Way; WAYS],
}

/// Hits and misses of [`LocationCache::get`] since open.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LocationStats {
    pub hits: u64,
    pub misses: u64,
    pub bytes: u64,
}

pub struct LocationCache {
    sets: Box<[Set]>,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl LocationCache {
    /// A cache of at most `bytes` (at least one set): the largest power of two of sets that
    /// fits, so a chunk's set is its number masked.
    pub fn with_bytes(bytes: usize) -> LocationCache {
        let sets = (bytes / SET_BYTES).max(1);
        let sets = 1usize << (usize::BITS - 1 - sets.leading_zeros());
        LocationCache {
            sets: (0..sets)
                .map(|_| Set {
                    ways: std::array::from_fn(|_| Way::empty()),
                })
                .collect(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    pub fn bytes(&self) -> usize {
        self.sets.len() * SET_BYTES
    }

    // Consecutive chunks land in different sets, and a snapshot keeps to one way of each:
    // a sequential pass over one snapshot evicts nothing of the snapshot in the other way.
    fn way(&self, snap: SnapshotId, chunk: OriginChunk) -> &Way {
        let set = &self.sets[(chunk.0 as usize) & (self.sets.len() - 1)];
        &set.ways[(snap.0 as usize) % WAYS]
    }

    /// Where `snap` finds `chunk`, if cached: `Some(None)` is the origin.
    pub fn get(&self, snap: SnapshotId, chunk: OriginChunk) -> Option<Option<StoreChunk>> {
        let way = self.way(snap, chunk);
        let seq = way.seq.load(Ordering::Acquire);
        if seq & 1 != 0 {
            return None;
        }
        let (s, c, at) = (
            way.snap.load(Ordering::Relaxed),
            way.chunk.load(Ordering::Relaxed),
            way.location.load(Ordering::Relaxed),
        );
        // The loads above must complete before the second look at the sequence number.
        fence(Ordering::Acquire);
        if way.seq.load(Ordering::Relaxed) != seq || s != snap.0 || c != chunk.0 {
            return None;
        }
        Some((at != ORIGIN).then_some(StoreChunk(at)))
    }

    /// Records where `snap` finds `chunk`. The caller holds the metadata lock and looked the
    /// location up under that same hold.
    pub fn put(&self, snap: SnapshotId, chunk: OriginChunk, location: Option<StoreChunk>) {
        let at = location.map_or(ORIGIN, |x| x.0);
        if snap.0 == EMPTY || location.is_some_and(|x| x.0 == ORIGIN) {
            return;
        }
        let way = self.way(snap, chunk);
        let seq = way.seq.load(Ordering::Relaxed);
        if seq & 1 != 0
            || way
                .seq
                .compare_exchange(
                    seq,
                    seq.wrapping_add(1),
                    Ordering::Acquire,
                    Ordering::Relaxed,
                )
                .is_err()
        {
            return; // another reader is filling this way
        }
        // The odd sequence number must be visible before any of the fields change.
        fence(Ordering::Release);
        way.snap.store(snap.0, Ordering::Relaxed);
        way.chunk.store(chunk.0, Ordering::Relaxed);
        way.location.store(at, Ordering::Relaxed);
        way.seq.store(seq.wrapping_add(2), Ordering::Release);
    }

    /// Forgets every snapshot's entry for `chunk`. Needs `&mut`: the caller holds the metadata
    /// lock exclusively, so no reader is between its lookup and its fill.
    pub fn forget_chunk(&mut self, chunk: OriginChunk) {
        let n = self.sets.len();
        for way in &mut self.sets[(chunk.0 as usize) & (n - 1)].ways {
            if *way.chunk.get_mut() == chunk.0 {
                *way.snap.get_mut() = EMPTY;
            }
        }
    }

    #[cfg(test)]
    pub fn clear(&mut self) {
        for set in self.sets.iter_mut() {
            for way in &mut set.ways {
                *way.snap.get_mut() = EMPTY;
            }
        }
    }

    /// Adds one request's hits and misses (one atomic add each at most, not one per chunk).
    pub fn count(&self, hits: u64, misses: u64) {
        if hits > 0 {
            self.hits.fetch_add(hits, Ordering::Relaxed);
        }
        if misses > 0 {
            self.misses.fetch_add(misses, Ordering::Relaxed);
        }
    }

    pub fn stats(&self) -> LocationStats {
        LocationStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            bytes: self.bytes() as u64,
        }
    }
}

#[cfg(test)]
mod tests;

use super::*;
use std::sync::Arc;

fn s(id: u64) -> SnapshotId {
    SnapshotId(id)
}

fn c(n: u64) -> OriginChunk {
    OriginChunk(n)
}

#[test]
fn a_cached_location_is_found_and_the_origin_is_told_apart_from_a_miss() {
    let cache = LocationCache::with_bytes(64 * SET_BYTES);
    assert_eq!(cache.get(s(1), c(5)), None);
    cache.put(s(1), c(5), Some(StoreChunk(42)));
    cache.put(s(1), c(6), None);
    assert_eq!(cache.get(s(1), c(5)), Some(Some(StoreChunk(42))));
    assert_eq!(cache.get(s(1), c(6)), Some(None));
    // Same set, other chunk; same chunk, other snapshot: misses, not someone else's answer.
    assert_eq!(cache.get(s(1), c(5 + 64)), None);
    assert_eq!(cache.get(s(3), c(5)), None);
}

#[test]
fn two_snapshots_keep_the_same_chunk_side_by_side() {
    let cache = LocationCache::with_bytes(64 * SET_BYTES);
    cache.put(s(1), c(9), Some(StoreChunk(1)));
    cache.put(s(2), c(9), Some(StoreChunk(2)));
    assert_eq!(cache.get(s(1), c(9)), Some(Some(StoreChunk(1))));
    assert_eq!(cache.get(s(2), c(9)), Some(Some(StoreChunk(2))));
    // A third snapshot takes the way of the one with its parity.
    cache.put(s(3), c(9), None);
    assert_eq!(cache.get(s(1), c(9)), None);
    assert_eq!(cache.get(s(3), c(9)), Some(None));
    assert_eq!(cache.get(s(2), c(9)), Some(Some(StoreChunk(2))));
}

#[test]
fn forgetting_a_chunk_drops_every_snapshots_entry_for_it_and_nothing_else() {
    let mut cache = LocationCache::with_bytes(64 * SET_BYTES);
    cache.put(s(1), c(9), Some(StoreChunk(1)));
    cache.put(s(2), c(9), None);
    cache.put(s(1), c(10), Some(StoreChunk(3)));
    cache.forget_chunk(c(9));
    assert_eq!(cache.get(s(1), c(9)), None);
    assert_eq!(cache.get(s(2), c(9)), None);
    assert_eq!(cache.get(s(1), c(10)), Some(Some(StoreChunk(3))));
    // A chunk sharing the set but not cached leaves the set's entry alone.
    cache.put(s(2), c(9 + 64), Some(StoreChunk(7)));
    cache.forget_chunk(c(9));
    assert_eq!(cache.get(s(2), c(9 + 64)), Some(Some(StoreChunk(7))));
    // Refilled after forgetting, it is found again.
    cache.put(s(1), c(9), Some(StoreChunk(8)));
    assert_eq!(cache.get(s(1), c(9)), Some(Some(StoreChunk(8))));
}

#[test]
fn locations_that_cannot_be_told_from_the_markers_are_not_cached() {
    let cache = LocationCache::with_bytes(SET_BYTES);
    cache.put(s(u64::MAX), c(1), Some(StoreChunk(1)));
    assert_eq!(cache.get(s(u64::MAX), c(1)), None);
    cache.put(s(1), c(1), Some(StoreChunk(u64::MAX)));
    assert_eq!(cache.get(s(1), c(1)), None);
}

#[test]
fn the_size_is_the_largest_power_of_two_of_sets_within_the_budget() {
    assert_eq!(SET_BYTES, 64);
    assert_eq!(LocationCache::with_bytes(0).bytes(), SET_BYTES);
    assert_eq!(
        LocationCache::with_bytes(SET_BYTES * 3).bytes(),
        SET_BYTES * 2
    );
    assert_eq!(LocationCache::with_bytes(2 << 20).bytes(), 2 << 20);
    assert_eq!(LocationCache::with_bytes((2 << 20) - 1).bytes(), 1 << 20);
}

#[test]
fn hits_and_misses_are_counted_per_call() {
    let cache = LocationCache::with_bytes(SET_BYTES);
    cache.count(3, 0);
    cache.count(0, 2);
    cache.count(0, 0);
    let st = cache.stats();
    assert_eq!((st.hits, st.misses, st.bytes), (3, 2, SET_BYTES as u64));
}

/// Readers fill and read the same few ways from several threads at once, each filling with a
/// location that is a function of the snapshot and chunk. A torn entry (one fill's snapshot
/// with another's location) would show as a hit with the wrong location.
#[test]
fn concurrent_fills_never_show_a_torn_entry() {
    let cache = Arc::new(LocationCache::with_bytes(4 * SET_BYTES));
    let expected = |snap: u64, chunk: u64| StoreChunk(snap * 1_000_003 + chunk * 7);
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let cache = cache.clone();
            std::thread::spawn(move || {
                let mut hits = 0u64;
                let mut x = t + 1;
                for _ in 0..400_000 {
                    // xorshift: cheap, different per thread
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let (snap, chunk) = (1 + (x % 4), (x >> 8) % 16);
                    match cache.get(s(snap), c(chunk)) {
                        Some(found) => {
                            assert_eq!(found, Some(expected(snap, chunk)), "torn entry");
                            hits += 1;
                        }
                        None => cache.put(s(snap), c(chunk), Some(expected(snap, chunk))),
                    }
                }
                hits
            })
        })
        .collect();
    let hits: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert!(hits > 0, "the stress test never hit, so it checked nothing");
}

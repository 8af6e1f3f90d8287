use super::*;
use crate::format::node::TreeKind;

fn leaf() -> Node {
    Node::new_leaf(TreeKind::Exceptions)
}

/// The smallest cache, full with blocks `0..CAP`, block 0 the oldest.
fn full_cache() -> NodeCache {
    let mut c = NodeCache::with_bytes(0);
    for b in 0..cap() {
        assert!(c.put(b, leaf(), false).is_empty());
    }
    c
}

fn cap() -> u64 {
    NodeCache::with_bytes(0).stats().capacity_nodes
}

fn evicted_blocks(e: Vec<(u64, CachedNode)>) -> Vec<u64> {
    e.into_iter().map(|(b, _)| b).collect()
}

#[test]
fn a_node_readers_peeked_gets_a_second_chance() {
    let mut c = full_cache();
    assert!(c.peek(0).is_some());
    // Block 0 is the oldest but was read under the shared lock: block 1 goes instead.
    assert_eq!(evicted_blocks(c.put(1000, leaf(), false)), vec![1]);
    assert!(c.peek(0).is_some(), "the peeked node stayed cached");
}

#[test]
fn the_second_chance_is_used_up_by_sparing() {
    let mut c = full_cache();
    assert!(c.peek(0).is_some());
    assert_eq!(evicted_blocks(c.put(1000, leaf(), false)), vec![1]);
    // Spared once and not read since: it ages out like any other node after a full round.
    let mut evicted = Vec::new();
    for b in 0..cap() {
        evicted.extend(evicted_blocks(c.put(2000 + b, leaf(), false)));
    }
    assert!(evicted.contains(&0), "block 0 never evicted: {evicted:?}");
}

#[test]
fn eviction_ends_when_every_node_was_peeked() {
    let mut c = full_cache();
    for b in 0..cap() {
        assert!(c.peek(b).is_some());
    }
    let evicted = c.put(1000, leaf(), false);
    assert_eq!(evicted.len(), 1, "exactly one node makes room");
    assert_eq!(c.stats().nodes, cap());
}

#[test]
fn peek_counts_nothing_its_callers_add_their_hits() {
    let c = full_cache();
    assert!(c.peek(3).is_some());
    assert!(c.peek(99_999).is_none());
    assert_eq!((c.stats().hits, c.stats().misses), (0, 0));
    c.count_hits(2);
    assert_eq!(c.stats().hits, 2, "a miss is counted by the retry's get");
}

#[test]
fn a_dirty_node_that_was_peeked_is_still_written_when_evicted() {
    let mut c = NodeCache::with_bytes(0);
    assert!(c.put(0, leaf(), true).is_empty());
    for b in 1..cap() {
        assert!(c.put(b, leaf(), false).is_empty());
    }
    assert!(c.peek(0).is_some());
    let mut evicted = Vec::new();
    for b in 0..=cap() {
        evicted.extend(c.put(5000 + b, leaf(), false));
    }
    let zero: Vec<_> = evicted.iter().filter(|(b, _)| *b == 0).collect();
    assert_eq!(zero.len(), 1);
    assert!(
        zero[0].1.dirty,
        "the caller must see it dirty and write it out"
    );
}

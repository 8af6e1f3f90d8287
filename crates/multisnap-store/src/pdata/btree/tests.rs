use super::*;
use crate::blockdev::MemDev;
use crate::format::node::TreeKind;
use crate::pdata::alloc::ChunkAllocator;
use crate::pdata::cache::NodeCache;
use std::collections::BTreeMap;
use std::sync::Arc;

fn pager(cache_nodes: usize) -> Pager {
    let blocks = 20_000u64;
    Pager {
        dev: Arc::new(MemDev::new(blocks * 4096)),
        cache: NodeCache::with_bytes(cache_nodes * crate::pdata::cache::NODE_MEMORY),
        alloc: ChunkAllocator::new(blocks, 1, 2),
        generation: 1,
        chunk_size: 4096,
        node_blocks: 0,
    }
}

fn val(x: u64) -> [u8; 16] {
    let mut v = [0u8; 16];
    v[..8].copy_from_slice(&x.to_le_bytes());
    v
}

#[test]
fn insert_lookup_seek_against_a_map() {
    let mut p = pager(64); // small cache: forces dirty evictions
    let mut root = p.write_new(Node::new_leaf(TreeKind::Exceptions)).unwrap();
    let mut model = BTreeMap::new();
    let mut x = 12345u64;
    for i in 0..20_000u64 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let k = Key::new(x % 5000, i % 7);
        root = insert(&mut p, root, k, &val(i)).unwrap();
        model.insert(k, i);
    }
    for (k, v) in &model {
        assert_eq!(lookup(&mut p, root, k).unwrap().unwrap(), val(*v));
    }
    for probe in [
        Key::new(0, 0),
        Key::new(17, 3),
        Key::new(4999, 9),
        Key::new(6000, 0),
    ] {
        let ge = model
            .range(probe..)
            .next()
            .map(|(k, v)| (*k, SeekValue::from_slice(&val(*v))));
        assert_eq!(seek_ge(&mut p, root, &probe).unwrap(), ge);
        let le = model
            .range(..=probe)
            .next_back()
            .map(|(k, v)| (*k, SeekValue::from_slice(&val(*v))));
        assert_eq!(seek_le(&mut p, root, &probe).unwrap(), le);
    }
    let mut seen = Vec::new();
    walk(&mut p, root, &Key::MIN, &Key::MAX, 0, &mut |k, _| {
        seen.push(k);
        Ok(true)
    })
    .unwrap();
    assert_eq!(seen, model.keys().copied().collect::<Vec<_>>());
}

#[test]
fn walk_prunes_by_stamp() {
    let mut p = pager(1000);
    let mut root = p.write_new(Node::new_leaf(TreeKind::Exceptions)).unwrap();
    for c in 0..5000u64 {
        let last = if c == 4321 { 99 } else { 1 };
        root = insert(&mut p, root, Key::new(c, last), &val(c)).unwrap();
    }
    let misses_before = p.cache.stats().hits + p.cache.stats().misses;
    let mut found = Vec::new();
    walk(&mut p, root, &Key::MIN, &Key::MAX, 50, &mut |k, _| {
        found.push(k);
        Ok(true)
    })
    .unwrap();
    let visited = p.cache.stats().hits + p.cache.stats().misses - misses_before;
    assert_eq!(found, vec![Key::new(4321, 99)]);
    assert!(visited < 10, "pruned walk visited {visited} nodes");
}

#[test]
fn remove_everything_in_random_order() {
    let mut p = pager(128);
    let mut root = p.write_new(Node::new_leaf(TreeKind::Exceptions)).unwrap();
    let n = 3000u64;
    for i in 0..n {
        root = insert(&mut p, root, Key::new(i, 0), &val(i)).unwrap();
    }
    let used_full = p.alloc.used_blocks();
    let mut order: Vec<u64> = (0..n).collect();
    let mut x = 99u64;
    for i in (1..order.len()).rev() {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        order.swap(i, (x % (i as u64 + 1)) as usize);
    }
    for (done, i) in order.iter().enumerate() {
        let (r, v) = remove(&mut p, root, &Key::new(*i, 0)).unwrap();
        root = r;
        assert_eq!(v.unwrap(), val(*i));
        if done % 500 == 0 {
            assert!(lookup(&mut p, root, &Key::new(*i, 0)).unwrap().is_none());
        }
    }
    let node = p.read(root).unwrap();
    assert!(node.is_leaf() && node.is_empty());
    assert!(p.alloc.used_blocks() < used_full);
    assert_eq!(
        p.alloc.used_blocks(),
        3,
        "only the reserved blocks and the empty root remain"
    );
}

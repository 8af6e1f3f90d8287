//! Deleting snapshots frees their space for reuse, in the background, crash-safely.

mod common;

use common::{assert_clean, chunk_opts, mem_store, read};
use multisnap_store::{verify, CreateOptions, MemDev, SnapshotId, Store, View};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::sync::Arc;

const CHUNK: usize = 4096;

fn new_store(origin: usize, store: usize) -> (Arc<MemDev>, Arc<MemDev>, Store) {
    let opts = CreateOptions {
        cache_bytes: 256 << 10,
        ..chunk_opts(CHUNK as u32)
    };
    mem_store(origin as u64, store as u64, &opts)
}

#[test]
fn delete_oldest_middle_newest_frees_space() {
    let size = 64 * CHUNK;
    let (_o, _d, store) = new_store(size, 4 << 20);
    let baseline = store.stats().used_bytes;
    let mut ids = Vec::new();
    let mut images = Vec::new();
    for round in 0..5u8 {
        ids.push(store.create_snapshot(&format!("s{round}")).unwrap().id);
        images.push(read(&store, View::Origin, 0, size));
        store.write_origin(0, &vec![round + 1; size]).unwrap();
    }
    assert_eq!(store.stats().exceptions, 5 * 64);
    // Middle, then oldest, then newest.
    for &i in &[2usize, 0, 4] {
        store.delete_snapshot(ids[i]).unwrap();
        assert!(
            store.read(View::Snapshot(ids[i]), 0, &mut [0; 10]).is_err(),
            "deleted snapshot still readable"
        );
        assert!(store.snapshot_by_name(&format!("s{i}")).is_err());
        store.reclaim_all().unwrap();
        assert_clean(&store, None);
        for &j in &[1usize, 3] {
            assert_eq!(
                read(&store, View::Snapshot(ids[j]), 0, size),
                images[j],
                "snapshot s{j} changed"
            );
        }
    }
    assert_eq!(store.stats().exceptions, 2 * 64);
    assert_eq!(store.list_snapshots().len(), 2);
    // Freed chunks are reused: more rounds fit without growing past the earlier peak.
    let used_now = store.stats().used_bytes;
    store.delete_snapshot(ids[1]).unwrap();
    store.delete_snapshot(ids[3]).unwrap();
    store.reclaim_all().unwrap();
    assert_clean(&store, None);
    assert_eq!(store.stats().exceptions, 0);
    assert!(store.stats().used_bytes < used_now);
    assert_eq!(store.stats().used_bytes, baseline, "all space returned");
}

#[test]
fn deleted_names_can_be_reused_and_ids_are_not() {
    let (_o, _d, store) = new_store(16 * CHUNK, 2 << 20);
    let a = store.create_snapshot("x").unwrap();
    store.delete_snapshot(a.id).unwrap();
    let b = store.create_snapshot("x").unwrap();
    assert!(b.id > a.id);
    store.reclaim_all().unwrap();
    assert_eq!(store.snapshot_by_name("x").unwrap().id, b.id);
    assert_clean(&store, None);
}

#[test]
fn reclamation_resumes_after_reopen() {
    let size = 512 * CHUNK;
    let (o, d, store) = new_store(size, 16 << 20);
    let keep = store.create_snapshot("keep").unwrap();
    store.write_origin(0, &vec![1; size]).unwrap();
    let gone = store.create_snapshot("gone").unwrap();
    store.write_origin(0, &vec![2; size]).unwrap();
    store.delete_snapshot(gone.id).unwrap();
    // A few small steps, then "crash" (drop without finishing).
    for _ in 0..3 {
        let p = store.reclaim_step(16).unwrap();
        assert!(!p.is_idle());
        assert_eq!(p.pending, vec![gone.id]);
    }
    store.flush().unwrap();
    drop(store);
    let store = Store::open(o, d, 256 << 10).unwrap();
    assert_eq!(store.reclaim_progress().pending, vec![gone.id]);
    let verify_mid = verify(&**store.store_dev(), None).unwrap();
    assert!(
        verify_mid.is_clean(),
        "mid-reclamation store must verify: {:?}",
        verify_mid.problems
    );
    store.reclaim_all().unwrap();
    assert!(store.reclaim_progress().is_idle());
    assert_eq!(
        store.stats().exceptions,
        512,
        "only keep's exceptions remain"
    );
    assert_eq!(
        read(&store, View::Snapshot(keep.id), 0, size),
        vec![0; size]
    );
    assert_clean(&store, None);
}

/// 1,000+ snapshots created and deleted in random order while writes continue; at the end
/// the space in use is what the remaining snapshots need, and deleting those returns the
/// store to empty.
#[test]
fn thousand_snapshots_created_and_deleted_randomly_under_writes() {
    let chunks = 96usize;
    let size = chunks * CHUNK;
    let (_o, _d, store) = new_store(size, 64 << 20);
    let baseline = store.stats().used_bytes;
    let mut rng = StdRng::seed_from_u64(7);
    let mut origin = vec![0u8; size];
    let mut live: BTreeMap<u64, (SnapshotId, Vec<u8>)> = BTreeMap::new();
    let mut created = 0u64;
    while created < 1000 || !live.is_empty() {
        let r = rng.gen_range(0..10);
        if r < 4 && created < 1000 {
            created += 1;
            let info = store.create_snapshot(&format!("snap-{created}")).unwrap();
            live.insert(info.id.0, (info.id, origin.clone()));
        } else if r < 7 && !live.is_empty() {
            let keys: Vec<u64> = live.keys().copied().collect();
            let k = keys[rng.gen_range(0..keys.len())];
            let (id, _) = live.remove(&k).unwrap();
            store.delete_snapshot(id).unwrap();
        } else {
            let c = rng.gen_range(0..chunks - 2);
            let len = rng.gen_range(1..2 * CHUNK);
            let byte = rng.gen::<u8>();
            let off = c * CHUNK + rng.gen_range(0..CHUNK);
            store.write_origin(off as u64, &vec![byte; len]).unwrap();
            origin[off..off + len].fill(byte);
        }
        if rng.gen_range(0..20) == 0 {
            store.reclaim_step(64).unwrap();
        }
        if created.is_multiple_of(250) && !live.is_empty() && rng.gen_range(0..10) == 0 {
            // Spot-check a random live snapshot.
            let keys: Vec<u64> = live.keys().copied().collect();
            let (id, image) = &live[&keys[rng.gen_range(0..keys.len())]];
            assert_eq!(read(&store, View::Snapshot(*id), 0, size), *image);
        }
        if created == 600 && live.len() > 50 {
            // Midway: with reclamation caught up, everything verifies, including "every
            // exception serves a live snapshot".
            store.reclaim_all().unwrap();
            assert_clean(&store, None);
            for (id, image) in live.values() {
                assert_eq!(
                    read(&store, View::Snapshot(*id), 0, size),
                    *image,
                    "snapshot {id:?}"
                );
            }
            // Drain a few more so this block runs once.
            let ks: Vec<u64> = live.keys().copied().take(live.len() / 2).collect();
            for k in ks {
                let (id, _) = live.remove(&k).unwrap();
                store.delete_snapshot(id).unwrap();
            }
        }
    }
    store.reclaim_all().unwrap();
    assert_clean(&store, None);
    assert_eq!(store.stats().exceptions, 0);
    assert_eq!(
        store.stats().used_bytes,
        baseline,
        "space back to an empty store's"
    );
    assert_eq!(read(&store, View::Origin, 0, size), origin);
}

//! The store-full policies: `error` fails copying writes and changes nothing; `invalidate-oldest`
//! drops the oldest snapshots to make room, counting each drop.

mod common;

use common::assert_clean;
use multisnap_store::{
    CreateOptions, ErrorKind, FullPolicy, MemDev, SnapshotState, Store, StoreError, View,
};
use std::sync::Arc;

const CHUNK: usize = 4096;

fn store(policy: FullPolicy) -> Store {
    let o = Arc::new(MemDev::new((256 * CHUNK) as u64));
    // Room for roughly 150 data chunks after metadata and the reclamation reserve.
    let d = Arc::new(MemDev::new(900 * 1024));
    let opts = CreateOptions {
        chunk_size: CHUNK as u32,
        full_policy: policy,
        journal_bytes: 0, // the store's room is counted in chunks
        ..Default::default()
    };
    Store::create(o, d, &opts).unwrap()
}

#[test]
fn error_policy_fails_with_store_full_and_keeps_everything() {
    let store = store(FullPolicy::Error);
    let s = store.create_snapshot("s").unwrap();
    let mut failed = None;
    for c in 0..256u64 {
        match store.write_origin(c * CHUNK as u64, &[9; CHUNK]) {
            Ok(()) => {}
            Err(e @ StoreError::StoreFull { .. }) => {
                assert_eq!(e.kind(), ErrorKind::NoSpace);
                failed = Some(c);
                break;
            }
            Err(e) => panic!("{e}"),
        }
    }
    let c = failed.expect("the store should fill");
    let mut b = vec![1u8; CHUNK];
    store.read(View::Origin, c * CHUNK as u64, &mut b).unwrap();
    assert_eq!(b, vec![0; CHUNK], "the failed write changed nothing");
    store.read(View::Snapshot(s.id), 0, &mut b).unwrap();
    assert_eq!(b, vec![0; CHUNK]);
    // Writes needing no copy still work.
    store.write_origin(0, &[3; 100]).unwrap();
    assert_eq!(store.snapshot(s.id).unwrap().state, SnapshotState::Ready);
    assert_clean(&store, None);
}

#[test]
fn invalidate_oldest_drops_snapshots_to_make_room() {
    let store = store(FullPolicy::InvalidateOldest);
    let mut ids = Vec::new();
    for round in 0..4u8 {
        ids.push(store.create_snapshot(&format!("r{round}")).unwrap().id);
        // Each round rewrites 100 chunks: 100 copies per round, more than the store holds in two.
        for c in 0..100u64 {
            store
                .write_origin(c * CHUNK as u64, &[round + 1; CHUNK])
                .unwrap();
        }
    }
    let stats = store.stats();
    assert!(stats.invalidated_total >= 1, "something had to be dropped");
    let states: Vec<SnapshotState> = ids
        .iter()
        .map(|id| store.snapshot(*id).unwrap().state)
        .collect();
    // The oldest went first; the newest is still there and intact.
    assert_eq!(states[0], SnapshotState::Invalid);
    assert_eq!(*states.last().unwrap(), SnapshotState::Ready);
    assert!(
        store.read(View::Snapshot(ids[0]), 0, &mut [0; 8]).is_err(),
        "invalidated snapshot is not readable"
    );
    let mut b = vec![0u8; CHUNK];
    store
        .read(View::Snapshot(*ids.last().unwrap()), 0, &mut b)
        .unwrap();
    assert_eq!(b, vec![3; CHUNK]);
    assert_clean(&store, None);
    // Deleting an invalidated snapshot removes its record.
    store.delete_snapshot(ids[0]).unwrap();
    assert!(store.snapshot(ids[0]).is_err());
    assert_clean(&store, None);
}

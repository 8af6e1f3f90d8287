//! Writes to a writable snapshot stay in that snapshot.

mod common;

use common::{chunk_opts, mem_store, read};
use multisnap_store::{verify, MemDev, Store, StoreError, View};
use std::sync::Arc;

const CHUNK: usize = 16384;

fn setup() -> (Arc<MemDev>, Arc<MemDev>, Store) {
    mem_store(
        (40 * CHUNK + 700) as u64,
        8 << 20,
        &chunk_opts(CHUNK as u32),
    )
}

#[test]
fn writes_to_a_writable_snapshot_touch_nothing_else() {
    let (o, d, store) = setup();
    let size = store.origin_size() as usize;
    store.write_origin(0, &vec![1; size]).unwrap();
    let ro = store.create_snapshot("ro").unwrap();
    let rw = store.create_snapshot_with("rw", true).unwrap();
    assert!(rw.writable);
    // Unaligned, multi-chunk, and into the last partial chunk.
    store
        .write_snapshot(rw.id, 100, &vec![7; CHUNK + 50])
        .unwrap();
    store
        .write_snapshot(rw.id, (size - 300) as u64, &[8; 300])
        .unwrap();
    store.write_snapshot(rw.id, 120, &[9; 10]).unwrap(); // in place, into a private chunk
    assert!(matches!(
        store.write_snapshot(ro.id, 0, &[1]),
        Err(StoreError::SnapshotReadOnly(_))
    ));
    let mut expect = vec![1u8; size];
    expect[100..100 + CHUNK + 50].fill(7);
    expect[120..130].fill(9);
    expect[size - 300..].fill(8);
    assert_eq!(read(&store, View::Snapshot(rw.id), 0, size), expect);
    assert_eq!(read(&store, View::Origin, 0, size), vec![1; size]);
    assert_eq!(read(&store, View::Snapshot(ro.id), 0, size), vec![1; size]);
    // The origin moves on; the writable snapshot keeps its own view of untouched chunks.
    store.write_origin(0, &vec![2; size]).unwrap();
    assert_eq!(read(&store, View::Snapshot(rw.id), 0, size), expect);
    assert_eq!(read(&store, View::Snapshot(ro.id), 0, size), vec![1; size]);
    store.flush().unwrap();
    drop(store);
    let store = Store::open(o, d, 1 << 20).unwrap();
    assert_eq!(
        read(&store, View::Snapshot(rw.id), 0, size),
        expect,
        "after reopen"
    );
    let r = verify(&**store.store_dev(), None).unwrap();
    assert!(r.is_clean(), "{:?}", r.problems);
    // Deleting it frees its private chunks too.
    let used = store.stats().used_bytes;
    store.delete_snapshot(rw.id).unwrap();
    store.reclaim_all().unwrap();
    store.flush().unwrap();
    assert!(store.stats().used_bytes < used);
    let r = verify(&**store.store_dev(), None).unwrap();
    assert!(r.is_clean(), "{:?}", r.problems);
    assert_eq!(read(&store, View::Snapshot(ro.id), 0, size), vec![1; size]);
}

#[test]
fn a_snapshot_can_be_made_writable_later() {
    let (_o, _d, store) = setup();
    let s = store.create_snapshot("later").unwrap();
    assert!(store.write_snapshot(s.id, 0, &[1; 10]).is_err());
    store.set_writable(s.id, true).unwrap();
    store.write_snapshot(s.id, 0, &[1; 10]).unwrap();
    assert_eq!(read(&store, View::Snapshot(s.id), 0, 10), vec![1; 10]);
    assert_eq!(read(&store, View::Origin, 0, 10), vec![0; 10]);
    store.set_writable(s.id, false).unwrap();
    assert_eq!(
        read(&store, View::Snapshot(s.id), 0, 10),
        vec![1; 10],
        "read-only again, same contents"
    );
    store.flush().unwrap();
    let r = verify(&**store.store_dev(), None).unwrap();
    assert!(r.is_clean(), "{:?}", r.problems);
}

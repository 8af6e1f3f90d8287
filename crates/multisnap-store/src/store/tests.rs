use super::*;
use crate::blockdev::MemDev;
use std::sync::mpsc;

const CHUNK: usize = 4096;

/// A store whose one snapshot sees 16 chunks of 1s, the first 8 of them copied out.
fn store_with_copies() -> (Arc<Store>, SnapshotId) {
    let origin = Arc::new(MemDev::new(4 << 20));
    let dev = Arc::new(MemDev::new(8 << 20));
    let opts = CreateOptions {
        chunk_size: CHUNK as u32,
        ..Default::default()
    };
    let store = Store::create(origin, dev, &opts).unwrap();
    store.write_origin(0, &[1u8; 16 * CHUNK]).unwrap();
    let snap = store.create_snapshot("s").unwrap().id;
    store.write_origin(0, &[2u8; 8 * CHUNK]).unwrap();
    (Arc::new(store), snap)
}

/// Holds the metadata lock shared, as another reader would, while a snapshot read runs on
/// another thread: the read must finish (within 10 s) and see the snapshot's 1s.
fn assert_reads_beside_a_shared_holder(store: &Arc<Store>, snap: SnapshotId, why: &str) {
    let held = store.meta.read();
    let (tx, rx) = mpsc::channel();
    let reader = store.clone();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 16 * CHUNK];
        let r = reader.read(View::Snapshot(snap), 0, &mut buf).map(|_| buf);
        let _ = tx.send(r);
    });
    let got = rx.recv_timeout(Duration::from_secs(10)).ok();
    drop(held);
    let data = got.unwrap_or_else(|| panic!("{why}"));
    assert_eq!(data.unwrap(), vec![1u8; 16 * CHUNK]);
}

#[test]
fn snapshot_reads_hold_the_metadata_lock_shared() {
    let (store, snap) = store_with_copies();
    let mut warm = vec![0u8; 16 * CHUNK];
    store.read(View::Snapshot(snap), 0, &mut warm).unwrap();
    assert_reads_beside_a_shared_holder(
        &store,
        snap,
        "the snapshot read waited behind a shared holder of the lock",
    );
}

#[test]
fn a_read_missing_nodes_loads_them_then_later_reads_share_the_lock() {
    let (store, snap) = store_with_copies();
    store.flush().unwrap();
    // Nothing dirty after the commit, so the cache may be emptied as if the store were cold.
    store.meta.write().pager.cache.clear();
    let misses = store.stats().cache.misses;
    let mut buf = vec![0u8; 16 * CHUNK];
    store.read(View::Snapshot(snap), 0, &mut buf).unwrap();
    assert_eq!(buf, vec![1u8; 16 * CHUNK]);
    assert!(
        store.stats().cache.misses > misses,
        "the cold read loaded nodes"
    );
    assert_reads_beside_a_shared_holder(
        &store,
        snap,
        "the nodes the cold read loaded should serve the next read shared",
    );
}

#[test]
fn a_cold_read_of_a_deleted_snapshot_is_not_found() {
    let (store, snap) = store_with_copies();
    store.flush().unwrap();
    store.meta.write().pager.cache.clear();
    store.delete_snapshot(snap).unwrap();
    let mut buf = vec![0u8; CHUNK];
    assert!(matches!(
        store.read(View::Snapshot(snap), 0, &mut buf),
        Err(StoreError::SnapshotIdNotFound(id)) if id == snap
    ));
}

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

/// Reads the snapshot on another thread; `None` if it has not returned within 10 s.
fn read_elsewhere(store: &Arc<Store>, snap: SnapshotId) -> Option<Result<Vec<u8>>> {
    let (tx, rx) = mpsc::channel();
    let store = store.clone();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 16 * CHUNK];
        let r = store.read(View::Snapshot(snap), 0, &mut buf).map(|_| buf);
        let _ = tx.send(r);
    });
    rx.recv_timeout(Duration::from_secs(10)).ok()
}

#[test]
fn snapshot_reads_hold_the_metadata_lock_shared() {
    let (store, snap) = store_with_copies();
    let mut warm = vec![0u8; 16 * CHUNK];
    store.read(View::Snapshot(snap), 0, &mut warm).unwrap();
    // Another reader holds the metadata lock shared: a snapshot read must not wait for it.
    let held = store.meta.read();
    let got = read_elsewhere(&store, snap);
    drop(held);
    let data = got.expect("the snapshot read waited behind a shared holder of the lock");
    assert_eq!(data.unwrap(), vec![1u8; 16 * CHUNK]);
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
    let held = store.meta.read();
    let got = read_elsewhere(&store, snap);
    drop(held);
    let data = got.expect("the nodes the cold read loaded should serve the next read shared");
    assert_eq!(data.unwrap(), vec![1u8; 16 * CHUNK]);
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

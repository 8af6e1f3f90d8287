//! A store made bigger while closed is picked up on open.

use multisnap_store::{verify, CreateOptions, MemDev, Store, StoreError, View};
use std::sync::Arc;

const CHUNK: usize = 4096;

#[test]
fn a_full_store_grown_on_disk_takes_more_copies_after_reopen() {
    let origin = Arc::new(MemDev::new((512 * CHUNK) as u64));
    let small = Arc::new(MemDev::new(700 * 1024));
    let opts = CreateOptions {
        chunk_size: CHUNK as u32,
        journal_bytes: 0, // the store's room is counted in chunks
        ..Default::default()
    };
    let store = Store::create(origin.clone(), small.clone(), &opts).unwrap();
    let snap = store.create_snapshot("s").unwrap();
    let mut written = 0u64;
    loop {
        match store.write_origin(written * CHUNK as u64, &[5; CHUNK]) {
            Ok(()) => written += 1,
            Err(StoreError::StoreFull { .. }) => break,
            Err(e) => panic!("{e}"),
        }
    }
    store.flush().unwrap();
    let before = store.stats();
    drop(store);

    // "Grow the file": same bytes, four times the size.
    let mut bytes = small.contents();
    bytes.resize(4 * bytes.len(), 0);
    let big = Arc::new(MemDev::from_vec(bytes));
    let store = Store::open(origin.clone(), big.clone(), 1 << 20).unwrap();
    let after = store.stats();
    assert!(
        after.store_bytes > 3 * before.store_bytes,
        "{before:?} -> {after:?}"
    );
    assert!(after.free_chunks > before.free_chunks + 300);
    let r = verify(&*big, None).unwrap();
    assert!(r.is_clean(), "{:?}", r.problems);
    // The copy that failed now fits, and more.
    for c in written..written + 200 {
        store.write_origin(c * CHUNK as u64, &[6; CHUNK]).unwrap();
    }
    let mut b = vec![1u8; CHUNK];
    store
        .read(View::Snapshot(snap.id), written * CHUNK as u64, &mut b)
        .unwrap();
    assert_eq!(b, vec![0; CHUNK]);
    store.flush().unwrap();
    drop(store);
    let r = verify(&*big, None).unwrap();
    assert!(r.is_clean(), "{:?}", r.problems);
    // Reopening again is stable.
    let store = Store::open(origin, big, 1 << 20).unwrap();
    assert_eq!(store.stats().store_bytes, after.store_bytes);
}

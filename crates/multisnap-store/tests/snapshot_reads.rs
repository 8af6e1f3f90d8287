//! Snapshots see the origin as it was; the origin sees its writes; one copy per chunk.

mod common;

use common::{chunk_opts, mem_store, read};
use multisnap_store::fault::Delayed;
use multisnap_store::{CreateOptions, MemDev, SnapshotId, Store, StoreError, View};
use std::sync::Arc;
use std::time::Duration;

const MIB: u64 = 1 << 20;

fn new_store(origin_size: u64, store_size: u64, chunk: u32) -> (Arc<MemDev>, Arc<MemDev>, Store) {
    mem_store(origin_size, store_size, &chunk_opts(chunk))
}

#[test]
fn snapshot_keeps_old_data_and_copies_once() {
    let (_o, _d, store) = new_store(4 * MIB, 8 * MIB, 4096);
    store.write_origin(0, &[1u8; 8192]).unwrap();
    let s1 = store.create_snapshot("s1").unwrap();
    let s2 = store.create_snapshot("s2").unwrap();
    store.write_origin(100, &[2u8; 5000]).unwrap();
    assert_eq!(
        store.stats().copies_total,
        2,
        "two chunks touched, copied once each"
    );
    store.write_origin(100, &[3u8; 5000]).unwrap();
    assert_eq!(store.stats().copies_total, 2, "overwrite needs no new copy");
    for s in [s1.id, s2.id] {
        assert_eq!(read(&store, View::Snapshot(s), 0, 8192), vec![1u8; 8192]);
    }
    let now = read(&store, View::Origin, 0, 8192);
    assert_eq!(&now[..100], &[1u8; 100][..]);
    assert_eq!(&now[100..5100], &[3u8; 5000][..]);
    let s3 = store.create_snapshot("s3").unwrap();
    store.write_origin(0, &[4u8; 4096]).unwrap();
    assert_eq!(store.stats().copies_total, 3);
    let s3_view = read(&store, View::Snapshot(s3.id), 0, 8192);
    assert_eq!(s3_view, now);
    assert_eq!(
        read(&store, View::Snapshot(s1.id), 0, 8192),
        vec![1u8; 8192]
    );
}

#[test]
fn reopen_keeps_everything() {
    let (o, d, store) = new_store(2 * MIB, 4 * MIB, 65536);
    store.write_origin(0, &[9u8; 70000]).unwrap();
    let s = store.create_snapshot("before").unwrap();
    store.write_origin(65536, &[8u8; 100]).unwrap();
    store.flush().unwrap();
    drop(store);
    let store = Store::open(o, d, 1 << 20).unwrap();
    assert_eq!(store.snapshot_by_name("before").unwrap().id, s.id);
    assert_eq!(
        read(&store, View::Snapshot(s.id), 0, 70000),
        vec![9u8; 70000]
    );
    assert_eq!(read(&store, View::Origin, 65536, 100), vec![8u8; 100]);
    let report = multisnap_store::verify(&**store.store_dev(), None).unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    assert_eq!(report.exceptions, 1);
}

#[test]
fn bad_input_is_a_typed_error() {
    let (o, d, store) = new_store(MIB + 1000, 4 * MIB, 4096);
    assert!(matches!(
        store.write_origin(MIB + 999, &[0; 2]),
        Err(StoreError::OutOfRange { .. })
    ));
    assert!(matches!(
        store.read(View::Origin, u64::MAX, &mut [0; 2]),
        Err(StoreError::OutOfRange { .. })
    ));
    assert!(matches!(
        store.create_snapshot("a@b"),
        Err(StoreError::InvalidName { .. })
    ));
    store.create_snapshot("x").unwrap();
    assert!(matches!(
        store.create_snapshot("x"),
        Err(StoreError::SnapshotExists(_))
    ));
    // The last, partial chunk works.
    store.write_origin(MIB + 500, &[5; 500]).unwrap();
    assert_eq!(read(&store, View::Origin, MIB + 500, 500), vec![5; 500]);
    assert_eq!(
        read(
            &store,
            View::Snapshot(multisnap_store::SnapshotId(1)),
            MIB + 500,
            500
        ),
        vec![0; 500]
    );
    drop(store);
    // A shorter origin: refused. A longer one (what a power cut during a resize leaves) opens
    // at the recorded size.
    let shorter = Arc::new(MemDev::new(MIB / 2));
    assert!(matches!(
        Store::open(shorter, d.clone(), 1 << 20),
        Err(StoreError::OriginMismatch { .. })
    ));
    let longer = Arc::new(MemDev::new(2 * MIB));
    let recorded = Store::open(longer, d.clone(), 1 << 20).unwrap();
    assert!(recorded.origin_size() < 2 * MIB);
    drop(recorded);
    // A foreign file.
    let foreign = Arc::new(MemDev::new(4 * MIB));
    assert!(matches!(
        Store::open(o.clone(), foreign, 1 << 20),
        Err(StoreError::NotAStore)
    ));
    // A truncated store.
    let mut img = d.contents();
    img.truncate(MIB as usize);
    assert!(matches!(
        Store::open(o.clone(), Arc::new(MemDev::from_vec(img)), 1 << 20),
        Err(StoreError::Truncated { .. })
    ));
    // A corrupt store (both superblocks).
    let mut img = d.contents();
    img[300] ^= 1;
    img[4096 + 300] ^= 1;
    assert!(matches!(
        Store::open(o, Arc::new(MemDev::from_vec(img)), 1 << 20),
        Err(StoreError::NoValidSuperblock { .. })
    ));
}

#[test]
fn full_store_fails_copying_writes_but_not_others() {
    // A store with room for only a few chunks.
    let (_o, _d, store) = new_store(4 * MIB, 600 * 1024, 4096);
    store.create_snapshot("s").unwrap();
    let mut failed_at = None;
    for c in 0..1000u64 {
        match store.write_origin(c * 4096, &[7; 4096]) {
            Ok(()) => {}
            Err(StoreError::StoreFull { .. }) => {
                failed_at = Some(c);
                break;
            }
            Err(e) => panic!("unexpected {e}"),
        }
    }
    let c = failed_at.expect("store should fill up");
    // The failed chunk is untouched on the origin and the snapshot.
    assert_eq!(read(&store, View::Origin, c * 4096, 4096), vec![0; 4096]);
    // Chunks already copied can still be overwritten.
    store.write_origin(0, &[8; 4096]).unwrap();
    store.flush().unwrap();
    let report = multisnap_store::verify(&**store.store_dev(), None).unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    assert_eq!(
        read(
            &store,
            View::Snapshot(multisnap_store::SnapshotId(1)),
            0,
            4096
        ),
        vec![0; 4096]
    );
}

/// Readers of a snapshot that is deleted, reclaimed and whose chunks are reused by new copies
/// get either the snapshot's data or "not found", never someone else's bytes.
#[test]
fn reads_racing_a_delete_get_the_data_or_not_found() {
    const CHUNK: u32 = 4096;
    let origin = Arc::new(MemDev::new(MIB));
    // Slow store reads keep readers between their lookup and their data for a while.
    // Small enough that the copies after the delete reuse its freed chunks.
    let dev = Arc::new(Delayed::new(MemDev::new(3 * MIB / 2)).reads(Duration::from_micros(500)));
    let opts = CreateOptions {
        chunk_size: CHUNK,
        journal_bytes: 0, // the store's size is counted in chunks
        ..Default::default()
    };
    let store = Store::create(origin, dev, &opts).unwrap();
    let before: Vec<u8> = (0..MIB as usize).map(|i| (i / 4096) as u8 | 1).collect();
    store.write_origin(0, &before).unwrap();
    let doomed = store.create_snapshot("doomed").unwrap();
    // Every chunk copied: the snapshot reads only from the store.
    store.write_origin(0, &vec![0xAA; MIB as usize]).unwrap();
    let store = Arc::new(store);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..3u64)
        .map(|r| {
            let (store, stop, before) = (store.clone(), stop.clone(), before.clone());
            std::thread::spawn(move || {
                let (mut ok, mut gone) = (0u64, 0u64);
                let mut i = r;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    i = i
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let off = (i >> 33) % (MIB - 3 * CHUNK as u64);
                    let mut b = vec![0u8; 3 * CHUNK as usize - 7];
                    match store.read(View::Snapshot(doomed.id), off, &mut b) {
                        Ok(()) => {
                            let o = off as usize;
                            assert!(b == before[o..o + b.len()], "wrong bytes at {off}");
                            ok += 1;
                        }
                        Err(StoreError::SnapshotIdNotFound(_)) => gone += 1,
                        Err(e) => panic!("read failed: {e}"),
                    }
                }
                (ok, gone)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(50));
    store.delete_snapshot(doomed.id).unwrap();
    store.reclaim_all().unwrap();
    // Reuse the freed chunks with other data, one chunk at a time so that the copies can
    // land between a reader's lookup and its data read (one big write would wait for every
    // reader's stripes).
    store.create_snapshot("next").unwrap();
    for c in (0..MIB / CHUNK as u64).rev() {
        store
            .write_origin(c * CHUNK as u64, &[0x55; CHUNK as usize])
            .unwrap();
    }
    std::thread::sleep(Duration::from_millis(50));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut ok, mut gone) = (0, 0);
    for r in readers {
        let (o, g) = r.join().expect("reader");
        ok += o;
        gone += g;
    }
    assert!(
        ok > 0 && gone > 0,
        "{ok} reads succeeded, {gone} found it gone"
    );
}

/// Once a chunk is copied for every live snapshot, overwriting it again does not walk the
/// index (the covered-chunk map answers); a new snapshot makes the next write copy again.
#[test]
fn overwrites_of_copied_chunks_skip_the_index_until_the_next_snapshot() {
    let (_o, _d, store) = new_store(MIB, 4 * MIB, 4096);
    store.write_origin(0, &[1u8; 8192]).unwrap();
    let s1 = store.create_snapshot("s1").unwrap();
    store.write_origin(0, &[2u8; 8192]).unwrap();
    let lookups = |s: &Store| {
        let c = s.stats().cache;
        c.hits + c.misses
    };
    let before = lookups(&store);
    for i in 0..100u8 {
        store.write_origin(4096, &[i; 100]).unwrap();
    }
    assert_eq!(
        lookups(&store),
        before,
        "overwrites of a copied chunk walked the index"
    );
    assert_eq!(store.stats().copies_total, 2);
    let s2 = store.create_snapshot("s2").unwrap();
    store.write_origin(0, &[3u8; 8192]).unwrap();
    assert_eq!(store.stats().copies_total, 4, "s2 got its own copies");
    assert_eq!(
        read(&store, View::Snapshot(s1.id), 0, 4096),
        vec![1u8; 4096]
    );
    let mut want = vec![2u8; 8192];
    want[4096..4196].fill(99);
    assert_eq!(read(&store, View::Snapshot(s2.id), 0, 8192), want);
    assert_eq!(read(&store, View::Origin, 0, 8192), vec![3u8; 8192]);
}

/// Reads remember where a snapshot found each chunk (the location cache). Whatever moves a
/// chunk for a snapshot afterwards, a copy-out of the origin or the delete of a newer snapshot
/// sharing the exception, must show in the next read of every snapshot that had it cached.
#[test]
fn remembered_locations_follow_copy_outs_and_deletes() {
    let (_o, _d, store) = new_store(4 * MIB, 8 * MIB, 4096);
    store.write_origin(0, &[1u8; 16384]).unwrap();
    let s1 = store.create_snapshot("s1").unwrap().id;
    // Cached: s1 sees chunks 0..4 on the origin.
    assert_view(&store, s1, &[1u8; 16384]);
    store.write_origin(0, &[2u8; 8192]).unwrap();
    assert_view(&store, s1, &[1u8; 16384]);
    let s2 = store.create_snapshot("s2").unwrap().id;
    // s2 caches chunks 0..2 on the origin, 2..4 not yet copied either.
    let s2_view = [vec![2u8; 8192], vec![1u8; 8192]].concat();
    assert_view(&store, s2, &s2_view);
    // One copy now serves s1 and s2 for chunks 2..4; chunks 0..2 get a copy for s2 alone.
    store.write_origin(0, &[3u8; 16384]).unwrap();
    assert_view(&store, s2, &s2_view);
    assert_view(&store, s1, &[1u8; 16384]);
    // Deleting s1 reclaims what only it saw; s2 still reads its own view.
    store.delete_snapshot(s1).unwrap();
    store.flush().unwrap();
    assert!(matches!(
        store.read(View::Snapshot(s1), 0, &mut [0u8; 4096]),
        Err(StoreError::SnapshotIdNotFound(_))
    ));
    assert_view(&store, s2, &s2_view);
    let st = store.stats().locations;
    assert!(st.hits > 0 && st.misses > 0, "{st:?}");
}

/// Compares a snapshot's first 16 KiB, naming the first byte that differs rather than
/// printing both buffers.
fn assert_view(store: &Store, snap: SnapshotId, want: &[u8]) {
    let got = read(store, View::Snapshot(snap), 0, want.len());
    if let Some(at) = got.iter().zip(want).position(|(g, w)| g != w) {
        panic!("{snap} byte {at}: read {}, expected {}", got[at], want[at]);
    }
}

use super::*;
use crate::blockdev::{FileDev, MemDev};
use std::sync::mpsc;

const CHUNK: usize = 4096;

/// A store whose one snapshot sees `chunks` chunks of 1s, the first `copied` of them copied
/// out (the origin holds 2s there).
fn store_with_copies_of(chunks: usize, copied: usize) -> (Arc<Store>, SnapshotId) {
    let origin = Arc::new(MemDev::new(4 << 20));
    let dev = Arc::new(MemDev::new(8 << 20));
    let opts = CreateOptions {
        chunk_size: CHUNK as u32,
        ..Default::default()
    };
    let store = Store::create(origin, dev, &opts).unwrap();
    store.write_origin(0, &vec![1u8; chunks * CHUNK]).unwrap();
    let snap = store.create_snapshot("s").unwrap().id;
    store.write_origin(0, &vec![2u8; copied * CHUNK]).unwrap();
    (Arc::new(store), snap)
}

/// 16 chunks, the first 8 copied out.
fn store_with_copies() -> (Arc<Store>, SnapshotId) {
    store_with_copies_of(16, 8)
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

/// A read that misses the cache tries shared, gives up and descends again with the lock held
/// exclusively; the cache statistics must count each node on its path once, as a warm read
/// of the same chunk does, not the abandoned attempt's hits as well.
#[test]
fn a_read_that_falls_back_counts_each_node_once() {
    // 512 exceptions: several leaves under an inner root.
    let (store, snap) = store_with_copies_of(512, 512);
    store.flush().unwrap();
    store.meta.write().pager.cache.clear();
    let mut buf = vec![0u8; CHUNK];
    // Caches the root and the first leaf only.
    store.read(View::Snapshot(snap), 0, &mut buf).unwrap();

    let lookups = |s: &Store| {
        let c = s.stats().cache;
        (c.hits, c.misses)
    };
    let (h0, m0) = lookups(&store);
    store
        .read(View::Snapshot(snap), 500 * CHUNK as u64, &mut buf)
        .unwrap();
    let (h1, m1) = lookups(&store);
    assert!(m1 > m0, "the last leaf should not have been cached");
    // Else the location cache answers the next read without a node lookup.
    store.meta.write().forget_all_locations();
    store
        .read(View::Snapshot(snap), 500 * CHUNK as u64, &mut buf)
        .unwrap();
    let (h2, m2) = lookups(&store);
    assert_eq!(m2, m1, "the second read is warm");
    assert!(h1 - h0 > 0, "the root was cached for the first read");
    assert_eq!(
        (h1 - h0) + (m1 - m0),
        h2 - h1,
        "a read that fell back counted the nodes of its abandoned attempt"
    );
    assert_eq!(buf, vec![1u8; CHUNK]);

    // The same for a read of many chunks whose first chunks are cached and later ones not:
    // the whole request falls back, so none of its shared lookups may count.
    store.meta.write().pager.cache.clear();
    store.read(View::Snapshot(snap), 0, &mut buf).unwrap();
    store.meta.write().forget_all_locations();
    let mut all = vec![0u8; 512 * CHUNK];
    let (h0, m0) = lookups(&store);
    store.read(View::Snapshot(snap), 0, &mut all).unwrap();
    let (h1, m1) = lookups(&store);
    assert!(m1 > m0, "later leaves should not have been cached");
    store.meta.write().forget_all_locations();
    store.read(View::Snapshot(snap), 0, &mut all).unwrap();
    let (h2, m2) = lookups(&store);
    assert_eq!(m2, m1);
    assert_eq!(
        (h1 - h0) + (m1 - m0),
        h2 - h1,
        "a many-chunk read that fell back counted its cached chunks twice"
    );
    assert_eq!(all, vec![1u8; 512 * CHUNK]);
}

/// The location cache's counts, like the node cache's, must not include the abandoned shared
/// attempt of a read that falls back; a read it answers whole descends no tree at all.
#[test]
fn a_read_that_falls_back_counts_each_location_once() {
    let (store, snap) = store_with_copies_of(512, 512);
    store.flush().unwrap();
    store.meta.write().pager.cache.clear();
    let mut buf = vec![0u8; CHUNK];
    store.read(View::Snapshot(snap), 0, &mut buf).unwrap();
    let locations = |s: &Store| {
        let l = s.stats().locations;
        (l.hits, l.misses)
    };
    let nodes = |s: &Store| {
        let c = s.stats().cache;
        c.hits + c.misses
    };
    assert_eq!(locations(&store), (0, 1));

    // Chunk 0 is a location hit in the shared attempt and again in the exclusive retry.
    let mut all = vec![0u8; 512 * CHUNK];
    store.read(View::Snapshot(snap), 0, &mut all).unwrap();
    assert_eq!(
        locations(&store),
        (1, 512),
        "one count per chunk of the read"
    );
    assert_eq!(all, vec![1u8; 512 * CHUNK]);

    let n0 = nodes(&store);
    store.read(View::Snapshot(snap), 0, &mut all).unwrap();
    assert_eq!(locations(&store), (513, 512));
    assert_eq!(
        nodes(&store),
        n0,
        "every chunk was answered without the index"
    );
    assert_eq!(all, vec![1u8; 512 * CHUNK]);
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

/// An origin whose flushes fail while `failing` is set.
struct FlakyFlush {
    inner: MemDev,
    failing: AtomicBool,
}

impl BlockDev for FlakyFlush {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.inner.write_at(buf, offset)
    }
    fn flush(&self) -> std::io::Result<()> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(std::io::Error::other("injected flush failure"));
        }
        self.inner.flush()
    }
    fn size(&self) -> std::io::Result<u64> {
        self.inner.size()
    }
    fn grow_to(&self, size: u64) -> std::io::Result<()> {
        self.inner.grow_to(size)
    }
}

#[test]
fn flushes_are_counted_once_each_and_only_when_they_succeed() {
    let origin = Arc::new(FlakyFlush {
        inner: MemDev::new(1 << 20),
        failing: AtomicBool::new(false),
    });
    let dev = Arc::new(MemDev::new(4 << 20));
    // Without a journal every flush syncs the origin, whose flushes this test makes fail.
    let opts = CreateOptions {
        chunk_size: CHUNK as u32,
        journal_bytes: 0,
        ..Default::default()
    };
    let store = Store::create(origin.clone(), dev.clone(), &opts).unwrap();
    let flushes = |s: &Store| s.stats().flushes;
    assert_eq!(flushes(&store).count, 0, "creating a store is not a flush");

    store.write_origin(0, &[1u8; CHUNK]).unwrap();
    store.flush().unwrap();
    assert_eq!(flushes(&store).count, 1);

    origin.failing.store(true, Ordering::SeqCst);
    store.write_origin(0, &[2u8; CHUNK]).unwrap();
    assert!(matches!(
        store.flush(),
        Err(StoreError::Flush {
            device: "origin",
            ..
        })
    ));
    assert_eq!(flushes(&store).count, 1, "a failed flush is not counted");
    origin.failing.store(false, Ordering::SeqCst);
    // The device would sync now, but what the failed sync lost cannot be: refused, and not
    // counted, until the store is reopened.
    assert!(matches!(store.flush(), Err(StoreError::Poisoned(_))));
    assert_eq!(flushes(&store).count, 1);
    drop(store);
    let store = Store::open(origin.clone(), dev, 1 << 20).unwrap();
    assert_eq!(flushes(&store).count, 0, "opening a store is not a flush");
    store.write_origin(0, &[1u8; CHUNK]).unwrap();
    store.flush().unwrap();

    // After a copy-out (committed by the write itself), still one flush per call.
    store.create_snapshot("s").unwrap();
    store.write_origin(CHUNK as u64, &[3u8; CHUNK]).unwrap();
    store.flush().unwrap();
    let after = store.stats();
    assert_eq!(after.flushes.count, 2);
    assert_eq!(
        after.flushes.buckets.iter().map(|(_, n)| n).sum::<u64>(),
        2,
        "every counted flush sits in one bucket"
    );
}

/// A store whose 16 origin chunks of 1s are kept by snapshot `s`, the first 8 overwritten
/// with 2s (copied out): returns it and checks what every view reads.
fn copy_out_half(origin: Arc<dyn BlockDev>, dev: Arc<dyn BlockDev>) -> (Store, SnapshotId) {
    let opts = CreateOptions {
        chunk_size: CHUNK as u32,
        ..Default::default()
    };
    let store = Store::create(origin, dev, &opts).unwrap();
    store.write_origin(0, &vec![1u8; 16 * CHUNK]).unwrap();
    let snap = store.create_snapshot("s").unwrap().id;
    store.write_origin(0, &vec![2u8; 8 * CHUNK]).unwrap();
    store.flush().unwrap();
    let mut buf = vec![0u8; 16 * CHUNK];
    store.read(View::Snapshot(snap), 0, &mut buf).unwrap();
    assert!(buf.iter().all(|&b| b == 1), "the snapshot lost its data");
    store.read(View::Origin, 0, &mut buf).unwrap();
    assert!(buf[..8 * CHUNK].iter().all(|&b| b == 2));
    assert!(buf[8 * CHUNK..].iter().all(|&b| b == 1));
    let report = crate::verify(&*store.dev, Some(store.origin_size())).unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    (store, snap)
}

#[test]
fn copy_outs_go_through_the_kernel_between_files_of_one_filesystem() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Arc::new(FileDev::create_sparse(&dir.path().join("origin"), 1 << 20).unwrap());
    let dev = Arc::new(FileDev::create_sparse(&dir.path().join("store"), 8 << 20).unwrap());
    let (store, _) = copy_out_half(origin, dev);
    assert!(store.kernel_copy());
    assert_eq!(store.stats().kernel_copies_total, 8);
    assert_eq!(store.stats().copies_total, 8);
}

#[test]
fn a_memory_origin_is_copied_through_memory_into_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Arc::new(MemDev::new(1 << 20));
    let dev = Arc::new(FileDev::create_sparse(&dir.path().join("store"), 8 << 20).unwrap());
    let (store, _) = copy_out_half(origin, dev);
    assert!(!store.kernel_copy());
    assert_eq!(store.stats().kernel_copies_total, 0);
}

/// A store device that looks fit for kernel copies at open, then refuses each one after
/// scribbling over part of the target (as a copy cut short would leave it).
struct RefusesCopies {
    inner: MemDev,
    refused: AtomicU64,
}

impl BlockDev for RefusesCopies {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.inner.write_at(buf, offset)
    }
    fn flush(&self) -> std::io::Result<()> {
        self.inner.flush()
    }
    fn size(&self) -> std::io::Result<u64> {
        self.inner.size()
    }
    fn grow_to(&self, size: u64) -> std::io::Result<()> {
        self.inner.grow_to(size)
    }
    fn can_copy_from(&self, _source: &dyn BlockDev, _granularity: u64) -> bool {
        true
    }
    fn copy_from(&self, _: &dyn BlockDev, _: u64, to: u64, len: usize) -> std::io::Result<bool> {
        self.refused.fetch_add(1, Ordering::SeqCst);
        self.inner.write_at(&vec![0xee; len / 2], to)?;
        Ok(false)
    }
}

#[test]
fn a_refused_kernel_copy_falls_back_to_memory_for_good() {
    let dev = Arc::new(RefusesCopies {
        inner: MemDev::new(8 << 20),
        refused: AtomicU64::new(0),
    });
    let origin = Arc::new(MemDev::new(1 << 20));
    let (store, _) = copy_out_half(origin, dev.clone());
    assert!(!store.kernel_copy());
    assert_eq!(store.stats().kernel_copies_total, 0);
    // Asked once: the first refusal turned the kernel path off.
    assert_eq!(dev.refused.load(Ordering::SeqCst), 1);
}

#[test]
fn kernel_copies_can_be_turned_off_and_on() {
    let origin = Arc::new(MemDev::new(1 << 20));
    let dev = Arc::new(MemDev::new(8 << 20).copying());
    let opts = CreateOptions {
        chunk_size: CHUNK as u32,
        ..Default::default()
    };
    let store = Store::create(origin, dev, &opts).unwrap();
    assert!(
        store.kernel_copy(),
        "a copying device is used from the start"
    );
    store.write_origin(0, &vec![1u8; 4 * CHUNK]).unwrap();
    let snap = store.create_snapshot("s").unwrap().id;
    // Off: the first two copies go through memory.
    assert!(!store.allow_kernel_copy(false));
    store.write_origin(0, &vec![2u8; 2 * CHUNK]).unwrap();
    assert_eq!(store.stats().kernel_copies_total, 0);
    // On again: the other two through the device.
    assert!(store.allow_kernel_copy(true));
    store
        .write_origin(2 * CHUNK as u64, &vec![2u8; 2 * CHUNK])
        .unwrap();
    assert_eq!(store.stats().kernel_copies_total, 2);
    let mut buf = vec![0u8; 4 * CHUNK];
    store.read(View::Snapshot(snap), 0, &mut buf).unwrap();
    assert!(buf.iter().all(|&b| b == 1));
}

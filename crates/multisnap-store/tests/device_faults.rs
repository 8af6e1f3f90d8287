//! What the store does when the devices under it fail: a failed flush (origin or store) stops
//! the store taking writes and flushes until it is reopened, because after a failed fsync a
//! later one may succeed without the lost pages ("fsyncgate"); a failed read fails that read
//! only; a full host filesystem (ENOSPC on a write) fails that write only, and writes work
//! again once there is space. Nothing acknowledged by a successful flush is lost.

mod common;
use common::*;
use multisnap_store::fault::{CrashDev, FailOp, Failing, PowerRail};
use multisnap_store::{verify, CreateOptions, ErrorKind, MemDev, Store, View};
use std::sync::Arc;

const CHUNK: usize = 4096;
const ORIGIN: usize = 64 * CHUNK;

struct Rig {
    origin: Arc<Failing<CrashDev>>,
    dev: Arc<Failing<CrashDev>>,
    store: Store,
}

fn rig(journal_bytes: u64) -> Rig {
    let rail = PowerRail::new();
    let origin = Arc::new(Failing::new(CrashDev::new(rail.clone(), ORIGIN)));
    let dev = Arc::new(Failing::new(CrashDev::new(rail, 2 << 20)));
    let opts = CreateOptions {
        journal_bytes,
        ..chunk_opts(CHUNK as u32)
    };
    let store = Store::create(origin.clone(), dev.clone(), &opts).unwrap();
    store.flush().unwrap();
    Rig { origin, dev, store }
}

impl Rig {
    /// The store reopened on what the disks hold durably (as after a power cut now).
    fn reopen_durable(self) -> Store {
        let origin = Arc::new(MemDev::from_vec(self.origin.inner().durable_image()));
        let dev = Arc::new(MemDev::from_vec(self.dev.inner().durable_image()));
        drop(self.store);
        let report = verify(&*dev, Some(ORIGIN as u64)).unwrap();
        assert!(report.is_clean(), "{:?}", report.problems);
        Store::open(origin, dev, 1 << 20).unwrap()
    }
}

fn kind(r: Result<(), multisnap_store::StoreError>) -> ErrorKind {
    r.expect_err("should fail").kind()
}

/// After the origin's fsync failed once, no later flush is acknowledged even though the
/// device would now report success, writes are refused, reads go on; reopening brings back
/// everything an earlier flush acknowledged.
#[test]
fn a_failed_origin_fsync_stops_writes_and_flushes_until_reopen() {
    for journal in [0u64, 64 << 10] {
        let r = rig(journal);
        r.store.write_origin(0, &[1u8; CHUNK]).unwrap();
        r.store.flush().unwrap();
        r.store
            .write_origin(CHUNK as u64, &[2u8; CHUNK * 40])
            .unwrap();
        // The fault fires once: a second fsync would "succeed" on the device.
        r.origin.fail(FailOp::Flush, 0, libc::EIO, false);
        r.dev.fail(FailOp::Flush, 0, libc::EIO, false);
        assert_eq!(kind(r.store.flush()), ErrorKind::Io, "journal {journal}");
        assert!(r.origin.failures() + r.dev.failures() >= 1);
        assert_eq!(kind(r.store.flush()), ErrorKind::Unavailable);
        assert_eq!(
            kind(r.store.write_origin(0, &[3u8; CHUNK])),
            ErrorKind::Unavailable
        );
        let why = r.store.failure().expect("the store says why it refuses");
        assert!(why.contains("flush"), "{why}");
        assert_eq!(read(&r.store, View::Origin, 0, CHUNK), vec![1u8; CHUNK]);

        let store = r.reopen_durable();
        assert_eq!(store.failure(), None);
        assert_eq!(read(&store, View::Origin, 0, CHUNK), vec![1u8; CHUNK]);
        store.write_origin(0, &[4u8; CHUNK]).unwrap();
        store.flush().unwrap();
    }
}

/// A failed write of the journal (the store device) is the same: the flush fails and stays
/// failed.
#[test]
fn a_failed_journal_write_stops_flushes() {
    let r = rig(64 << 10);
    r.store.write_origin(0, &[1u8; CHUNK]).unwrap();
    r.dev.fail(FailOp::Write, 0, libc::EIO, false);
    assert_eq!(kind(r.store.flush()), ErrorKind::Io);
    assert_eq!(kind(r.store.flush()), ErrorKind::Unavailable);
    let store = r.reopen_durable();
    // The write was never acknowledged as durable: either content is allowed, but the store
    // opens, verifies clean and takes writes again.
    store.write_origin(0, &[5u8; CHUNK]).unwrap();
    store.flush().unwrap();
    assert_eq!(read(&store, View::Origin, 0, CHUNK), vec![5u8; CHUNK]);
}

/// A read error fails that read only; the store stays healthy.
#[test]
fn a_failed_read_fails_only_that_read() {
    let r = rig(0);
    r.store.write_origin(0, &[1u8; CHUNK * 4]).unwrap();
    let snap = r.store.create_snapshot("s").unwrap().id;
    r.store.write_origin(0, &[2u8; CHUNK * 4]).unwrap();
    r.store.flush().unwrap();
    r.dev.fail(FailOp::Read, 0, libc::EIO, false);
    r.origin.fail(FailOp::Read, 0, libc::EIO, false);
    let mut buf = vec![0u8; CHUNK];
    let first = r.store.read(View::Snapshot(snap), 0, &mut buf);
    let second = r.store.read(View::Origin, 0, &mut buf);
    assert!(first.is_err() || second.is_err());
    for e in [first, second].into_iter().filter_map(|r| r.err()) {
        assert_eq!(e.kind(), ErrorKind::Io, "{e}");
    }
    assert_eq!(r.store.failure(), None);
    assert_eq!(
        read(&r.store, View::Snapshot(snap), 0, CHUNK),
        vec![1u8; CHUNK]
    );
    assert_eq!(read(&r.store, View::Origin, 0, CHUNK), vec![2u8; CHUNK]);
    r.store.write_origin(0, &[3u8; CHUNK]).unwrap();
    r.store.flush().unwrap();
}

/// A full host filesystem fails the write that met it, with NoSpace; the snapshot keeps its
/// data, and once there is space again writes and flushes work without a reopen.
#[test]
fn enospc_on_a_write_fails_that_write_and_recovers_when_space_returns() {
    let r = rig(64 << 10);
    r.store.write_origin(0, &[1u8; CHUNK * 8]).unwrap();
    let snap = r.store.create_snapshot("s").unwrap().id;
    r.store.flush().unwrap();
    // The origin's filesystem is full. A first write since the snapshot is parked until its
    // copy is committed, so the landing meets it: the flush says so, the store stays
    // healthy, reads see the write, and it lands once there is room.
    r.origin.fail(FailOp::Write, 0, libc::ENOSPC, true);
    r.store.write_origin(0, &[2u8; CHUNK]).unwrap();
    assert_eq!(kind(r.store.flush()), ErrorKind::NoSpace);
    assert_eq!(r.store.failure(), None);
    assert_eq!(read(&r.store, View::Origin, 0, CHUNK), vec![2u8; CHUNK]);
    r.origin.heal();
    r.store.flush().unwrap();
    assert_eq!(r.store.stats().parked_bytes, 0);
    // An overwrite of a chunk copied already goes straight to the origin and fails alone.
    r.origin.fail(FailOp::Write, 0, libc::ENOSPC, true);
    assert_eq!(
        kind(r.store.write_origin(0, &[2u8; CHUNK])),
        ErrorKind::NoSpace
    );
    // The store's filesystem is full: the copy-out cannot be written.
    r.origin.heal();
    r.dev.fail(FailOp::Write, 0, libc::ENOSPC, true);
    assert_eq!(
        kind(r.store.write_origin(CHUNK as u64 * 4, &[2u8; CHUNK])),
        ErrorKind::NoSpace
    );
    assert_eq!(
        read(&r.store, View::Snapshot(snap), 0, CHUNK * 8),
        vec![1u8; CHUNK * 8]
    );
    r.dev.heal();
    assert_eq!(r.store.failure(), None);
    r.store.write_origin(0, &[3u8; CHUNK * 8]).unwrap();
    r.store.flush().unwrap();
    assert_eq!(
        read(&r.store, View::Snapshot(snap), 0, CHUNK * 8),
        vec![1u8; CHUNK * 8]
    );
    assert_eq!(
        read(&r.store, View::Origin, 0, CHUNK * 8),
        vec![3u8; CHUNK * 8]
    );
    let store = r.reopen_durable();
    assert_eq!(
        read(&store, View::Snapshot(snap), 0, CHUNK * 8),
        vec![1u8; CHUNK * 8]
    );
    assert_eq!(
        read(&store, View::Origin, 0, CHUNK * 8),
        vec![3u8; CHUNK * 8]
    );
}

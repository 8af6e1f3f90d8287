//! Reopening a failed store in place (`Store::reopen`): after a write of the journal or the
//! metadata failed (a full host filesystem, a dying disk), the same `Store` rebuilds its state
//! from the devices the way an open does, and then takes writes again. Every write a
//! successful flush acknowledged is there, every snapshot reads as it was taken, and writes
//! acknowledged but never flushed read either as they were written or as at the last flush,
//! as after a power cut. A power cut during the reopen itself loses nothing flushed either.

mod common;
use common::*;
use multisnap_store::fault::{CrashDev, FailOp, Failing, PowerRail};
use multisnap_store::{
    verify, CreateOptions, ErrorKind, FailureCause, MemDev, SnapshotId, Store, StoreError, View,
};
use proptest::prelude::*;
use std::sync::Arc;

const CHUNK: usize = 4096;
const CHUNKS: usize = 32;
const ORIGIN: usize = CHUNKS * CHUNK;

struct Rig {
    rail: Arc<PowerRail>,
    origin: Arc<Failing<CrashDev>>,
    dev: Arc<Failing<CrashDev>>,
    store: Store,
}

fn rig() -> Rig {
    let rail = PowerRail::new();
    let origin = Arc::new(Failing::new(CrashDev::new(rail.clone(), ORIGIN)));
    let dev = Arc::new(Failing::new(CrashDev::new(rail.clone(), 2 << 20)));
    let opts = CreateOptions {
        journal_bytes: 64 << 10,
        ..chunk_opts(CHUNK as u32)
    };
    let store = Store::create(origin.clone(), dev.clone(), &opts).unwrap();
    store.flush().unwrap();
    Rig {
        rail,
        origin,
        dev,
        store,
    }
}

fn kind<T: std::fmt::Debug>(r: Result<T, StoreError>) -> ErrorKind {
    r.expect_err("should fail").kind()
}

fn read_all(store: &Store, view: View, len: usize) -> Vec<u8> {
    read(store, view, 0, len)
}

/// A volume with a snapshot, a flushed image, and one write acknowledged but not flushed.
struct Written {
    image: Image,
    snap: SnapshotId,
    snap_image: Vec<u8>,
}

fn write_and_flush(r: &Rig) -> Written {
    let mut image = Image::new(vec![0u8; ORIGIN]);
    let first = pattern(1, 8 * CHUNK);
    r.store.write_origin(0, &first).unwrap();
    image.acknowledged(0, &first);
    let snap = r.store.create_snapshot("s").unwrap().id;
    let snap_image = image.current.clone();
    // Overwrites half of what the snapshot keeps (copy-outs), then a flush: a journal batch.
    let second = pattern(2, 4 * CHUNK);
    r.store.write_origin(0, &second).unwrap();
    image.acknowledged(0, &second);
    r.store.flush().unwrap();
    image.flushed();
    let unflushed = pattern(3, CHUNK);
    let at = 10 * CHUNK as u64;
    image.issue(at, &unflushed);
    r.store.write_origin(at, &unflushed).unwrap();
    image.acknowledged(at, &unflushed);
    Written {
        image,
        snap,
        snap_image,
    }
}

/// What every reopen must show: flushed writes there, the snapshot as taken, and writes and
/// flushes working again; and the same after a power cut right after.
fn check_recovered(r: Rig, w: &Written) {
    assert_eq!(r.store.failure(), None);
    w.image.check(
        &read_all(&r.store, View::Origin, ORIGIN),
        "after the reopen",
    );
    assert_eq!(
        read_all(&r.store, View::Snapshot(w.snap), ORIGIN),
        w.snap_image
    );
    let after = pattern(4, 2 * CHUNK);
    r.store.write_origin(2 * CHUNK as u64, &after).unwrap();
    r.store.flush().unwrap();
    let expected = read_all(&r.store, View::Origin, ORIGIN);
    assert_eq!(&expected[2 * CHUNK..4 * CHUNK], &after[..]);
    let origin = Arc::new(MemDev::from_vec(r.origin.inner().durable_image()));
    let dev = Arc::new(MemDev::from_vec(r.dev.inner().durable_image()));
    drop(r.store);
    let report = verify(&*dev, Some(ORIGIN as u64)).unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    let store = Store::open(origin, dev, 1 << 20).unwrap();
    assert_eq!(read_all(&store, View::Origin, ORIGIN), expected);
    assert_eq!(
        read_all(&store, View::Snapshot(w.snap), ORIGIN),
        w.snap_image
    );
}

#[test]
fn enospc_on_a_journal_write_fails_the_volume_until_a_reopen_after_space_returns() {
    let r = rig();
    let w = write_and_flush(&r);
    r.dev.fail(FailOp::Write, 0, libc::ENOSPC, true);
    // Into a chunk already copied out for the snapshot: only the journal write meets ENOSPC.
    r.store
        .write_origin(CHUNK as u64, &pattern(5, CHUNK))
        .unwrap();
    assert_eq!(kind(r.store.flush()), ErrorKind::NoSpace);
    assert_eq!(r.store.failure_cause(), Some(FailureCause::HostFull));
    assert_eq!(
        kind(r.store.write_origin(0, &[9u8; CHUNK])),
        ErrorKind::Unavailable
    );
    // Still full: the reopen's replay commit cannot be written, and the store stays failed.
    assert_eq!(kind(r.store.reopen()), ErrorKind::NoSpace);
    assert_eq!(r.store.failure_cause(), Some(FailureCause::HostFull));
    assert_eq!(
        kind(r.store.write_origin(0, &[9u8; CHUNK])),
        ErrorKind::Unavailable
    );
    r.dev.heal();
    r.store.reopen().unwrap();
    let mut w = w;
    // The write made while the journal could not be written was acknowledged too.
    w.image.issue(CHUNK as u64, &pattern(5, CHUNK));
    check_recovered(r, &w);
}

#[test]
fn enospc_on_a_metadata_write_fails_the_volume_until_a_reopen_after_space_returns() {
    let r = rig();
    let w = write_and_flush(&r);
    r.dev.fail(FailOp::Write, 0, libc::ENOSPC, true);
    assert_eq!(kind(r.store.create_snapshot("t")), ErrorKind::NoSpace);
    assert_eq!(r.store.failure_cause(), Some(FailureCause::HostFull));
    r.dev.heal();
    r.store.reopen().unwrap();
    // Never acknowledged, so it may be there or not; if it is, it reads as the origin did.
    if let Ok(t) = r.store.snapshot_by_name("t") {
        w.image.check(
            &read_all(&r.store, View::Snapshot(t.id), ORIGIN),
            "the unacknowledged snapshot",
        );
    }
    check_recovered(r, &w);
}

#[test]
fn eio_on_a_metadata_write_is_a_device_failure_and_an_operator_reopen_recovers_it() {
    let r = rig();
    let w = write_and_flush(&r);
    r.dev.fail(FailOp::Write, 0, libc::EIO, false);
    assert_eq!(kind(r.store.create_snapshot("t")), ErrorKind::Io);
    assert_eq!(r.store.failure_cause(), Some(FailureCause::Device));
    r.store.reopen().unwrap();
    check_recovered(r, &w);
}

#[test]
fn a_failed_fsync_is_a_device_failure_even_when_it_says_enospc() {
    let r = rig();
    let w = write_and_flush(&r);
    r.store
        .write_origin(20 * CHUNK as u64, &vec![6u8; 20 * CHUNK / 2])
        .unwrap();
    r.origin.fail(FailOp::Flush, 0, libc::ENOSPC, false);
    assert!(r.store.flush().is_err());
    assert_eq!(r.store.failure_cause(), Some(FailureCause::Device));
    r.store.reopen().unwrap();
    let mut w = w;
    w.image.issue(20 * CHUNK as u64, &vec![6u8; 20 * CHUNK / 2]);
    check_recovered(r, &w);
}

#[test]
fn a_healthy_store_is_not_reopened() {
    let r = rig();
    r.store.write_origin(0, &[1u8; CHUNK]).unwrap();
    assert_eq!(kind(r.store.reopen()), ErrorKind::FailedPrecondition);
    // Its unflushed write was not thrown away.
    r.store.flush().unwrap();
    assert_eq!(read(&r.store, View::Origin, 0, CHUNK), vec![1u8; CHUNK]);
    assert_eq!(r.store.failure_cause(), None);
}

/// A view opened before the failure serves again after the reopen, without being reopened.
#[test]
fn views_held_across_a_reopen_keep_working() {
    let r = rig();
    let w = write_and_flush(&r);
    let store = Arc::new(r.store);
    let view = multisnap_store::VolumeView::origin(store.clone());
    r.dev.fail(FailOp::Write, 0, libc::ENOSPC, true);
    view.write(CHUNK as u64, &[7u8; CHUNK]).unwrap();
    assert_eq!(kind(view.flush()), ErrorKind::NoSpace);
    assert_eq!(kind(view.write(0, &[7u8; CHUNK])), ErrorKind::Unavailable);
    r.dev.heal();
    store.reopen().unwrap();
    view.write(0, &[8u8; CHUNK]).unwrap();
    view.flush().unwrap();
    let mut buf = vec![0u8; CHUNK];
    view.read(0, &mut buf).unwrap();
    assert_eq!(buf, vec![8u8; CHUNK]);
    assert_eq!(
        read_all(&store, View::Snapshot(w.snap), ORIGIN),
        w.snap_image
    );
}

/// A power cut at every write the reopen makes (the journal replay into the origin, its
/// commit): the store opens on what the disks hold, with every flushed write and the snapshot.
#[test]
fn power_cut_at_every_write_of_a_reopen() {
    let writes_of_reopen = |cut: Option<u64>| {
        let r = rig();
        let w = write_and_flush(&r);
        r.dev.fail(FailOp::Write, 0, libc::ENOSPC, true);
        assert!(r.store.flush().is_err());
        r.dev.heal();
        let before = r.rail.writes();
        if let Some(k) = cut {
            r.rail.cut_at_write(before + k);
        }
        let reopened = r.store.reopen();
        let writes = r.rail.writes() - before;
        (r, w, reopened, writes)
    };
    let (_, _, reopened, total) = writes_of_reopen(None);
    reopened.unwrap();
    assert!(total >= 3, "the reopen replays and commits: {total} writes");
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0x5e0e);
    let mut cases = 0;
    for k in 1..=total {
        let (r, w, reopened, _) = writes_of_reopen(Some(k));
        assert!(reopened.is_err(), "cut at write {k} of {total}");
        for (keep, tear) in [(0.0, 0.0), (1.0, 0.0), (0.5, 0.3)] {
            let origin = Arc::new(MemDev::from_vec(
                r.origin.inner().crash_image(&mut rng, keep, tear),
            ));
            let dev = Arc::new(MemDev::from_vec(
                r.dev.inner().crash_image(&mut rng, keep, tear),
            ));
            let what = format!("cut at write {k} of {total}, keep {keep} tear {tear}");
            let report = verify(&*dev, Some(ORIGIN as u64)).unwrap();
            assert!(report.is_clean(), "{what}: {:?}", report.problems);
            let store = Store::open(origin, dev, 1 << 20).unwrap();
            w.image
                .check(&read_all(&store, View::Origin, ORIGIN), &what);
            assert_eq!(
                read_all(&store, View::Snapshot(w.snap), ORIGIN),
                w.snap_image,
                "{what}"
            );
            cases += 1;
        }
    }
    println!("reopen power-cut cases: {cases} ({total} writes per reopen)");
}

#[derive(Clone, Debug)]
enum Op {
    Write {
        chunk: usize,
        len: usize,
        fill: u8,
    },
    Flush,
    Snapshot,
    /// The store's filesystem is full for the next write after `pass` of them.
    Full {
        pass: u64,
    },
    /// Space returns, and the store is reopened if it failed.
    FreeAndReopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..CHUNKS, 1..4usize, any::<u8>()).prop_map(|(chunk, len, fill)| Op::Write {
            chunk,
            len: len.min(CHUNKS - chunk),
            fill,
        }),
        3 => Just(Op::Flush),
        1 => Just(Op::Snapshot),
        2 => (0..4u64).prop_map(|pass| Op::Full { pass }),
        2 => Just(Op::FreeAndReopen),
    ]
}

/// The reference: the origin as flushes and writes since left it, and each snapshot the store
/// acknowledged (or may have made, when its creation failed) with its image.
struct Model {
    image: Image,
    snaps: Vec<(String, Vec<u8>, bool)>,
}

impl Model {
    fn check(&self, store: &Store, what: &str) {
        self.image
            .check(&read_all(store, View::Origin, ORIGIN), what);
        for (name, image, acknowledged) in &self.snaps {
            match store.snapshot_by_name(name) {
                Ok(s) => assert_eq!(
                    &read_all(store, View::Snapshot(s.id), ORIGIN),
                    image,
                    "{what}: snapshot {name}"
                ),
                Err(_) => assert!(!acknowledged, "{what}: snapshot {name} is gone"),
            }
        }
    }
}

fn run_model(ops: &[Op]) {
    let r = rig();
    let mut m = Model {
        image: Image::new(vec![0u8; ORIGIN]),
        snaps: Vec::new(),
    };
    for (i, op) in ops.iter().enumerate() {
        let what = format!("op {i} {op:?}");
        match op {
            Op::Write { chunk, len, fill } => {
                let data = pattern(*fill, len * CHUNK);
                let at = (chunk * CHUNK) as u64;
                m.image.issue(at, &data);
                if r.store.write_origin(at, &data).is_ok() {
                    m.image.acknowledged(at, &data);
                }
            }
            Op::Flush => {
                if r.store.flush().is_ok() {
                    // What a reader sees now is what the flush made durable (a write that
                    // failed may have changed some bytes).
                    m.image = Image::new(read_all(&r.store, View::Origin, ORIGIN));
                }
            }
            Op::Snapshot => {
                let name = format!("s{i}");
                let image = read_all(&r.store, View::Origin, ORIGIN);
                let made = r.store.create_snapshot(&name).is_ok();
                m.snaps.push((name, image, made));
            }
            Op::Full { pass } => r.dev.fail(FailOp::Write, *pass, libc::ENOSPC, true),
            Op::FreeAndReopen => {
                r.dev.heal();
                match r.store.failure_cause() {
                    Some(cause) => {
                        assert_eq!(cause, FailureCause::HostFull, "{what}");
                        r.store.reopen().unwrap();
                        m.check(&r.store, &what);
                        // From here on the origin reads as it does now until the next write.
                        let now = read_all(&r.store, View::Origin, ORIGIN);
                        m.image = Image::new(now);
                    }
                    None => assert_eq!(
                        kind(r.store.reopen()),
                        ErrorKind::FailedPrecondition,
                        "{what}"
                    ),
                }
            }
        }
        m.check(&r.store, &what);
    }
    r.dev.heal();
    if r.store.failure().is_some() {
        r.store.reopen().unwrap();
    }
    r.store.flush().unwrap();
    let expected = read_all(&r.store, View::Origin, ORIGIN);
    let origin = Arc::new(MemDev::from_vec(r.origin.inner().durable_image()));
    let dev = Arc::new(MemDev::from_vec(r.dev.inner().durable_image()));
    drop(r.store);
    let store = Store::open(origin, dev, 1 << 20).unwrap();
    assert_eq!(read_all(&store, View::Origin, ORIGIN), expected);
    m.image = Image::new(expected);
    m.check(&store, "after a power cut at the end");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(proptest_cases(64)))]

    /// Writes, flushes, snapshots, a full store filesystem at random points and reopens: the
    /// origin never reads older than its last successful flush, snapshots never change, and
    /// only a host-full failure happens (so an automatic reopen would be allowed).
    #[test]
    fn reopens_after_enospc_keep_every_flushed_write(ops in proptest::collection::vec(op(), 1..60)) {
        run_model(&ops);
    }
}

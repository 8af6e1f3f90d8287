//! Write-behind: origin writes that needed copy-outs are acknowledged before the commit of
//! their copies ("parked"). Every read sees them at once, a snapshot taken after one holds
//! it, the origin device gets them only after that commit, and many of them share a commit.

mod common;

use common::{assert_clean, chunk_opts, mem_store, read};
use multisnap_store::fault::{FailOp, Failing};
use multisnap_store::{MemDev, SnapshotId, Store, View};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
const CHUNK: u32 = 4096;
/// What a dying disk answers.
const EIO: i32 = 5;

fn store() -> (Arc<MemDev>, Arc<MemDev>, Store) {
    let (origin, dev, store) = mem_store(4 * MIB, 16 * MIB, &chunk_opts(CHUNK));
    store.write_origin(0, &vec![1u8; 64 * 1024]).unwrap();
    store.flush().unwrap();
    (origin, dev, store)
}

#[test]
fn a_parked_write_reads_back_before_any_flush_and_a_later_snapshot_holds_it() {
    let (origin, _dev, store) = store();
    let s1 = store.create_snapshot("s1").unwrap();
    store.write_origin(4096 + 100, &[2u8; 200]).unwrap();
    let stats = store.stats();
    assert_eq!(
        stats.parked_writes_total, 1,
        "a first write after a snapshot parks"
    );
    assert_eq!(stats.parked_bytes, 200);
    // Parked, not written: the origin device still holds the old bytes.
    assert_eq!(origin.contents()[4096 + 100], 1);
    // Every read sees it; the snapshot does not.
    let mut want = vec![1u8; 8192];
    want[4096 + 100..4096 + 300].fill(2);
    assert_eq!(read(&store, View::Origin, 0, 8192), want);
    assert_eq!(
        read(&store, View::Snapshot(s1.id), 0, 8192),
        vec![1u8; 8192]
    );
    // A later write to the parked chunk parks behind it, in order, even though it needs no
    // copy; one to a chunk with nothing parked and a copy already goes straight to the origin.
    store.write_origin(4096 + 250, &[3u8; 100]).unwrap();
    want[4096 + 250..4096 + 350].fill(3);
    assert_eq!(store.stats().parked_writes_total, 2);
    assert_eq!(read(&store, View::Origin, 4096, 4096), want[4096..]);
    assert_eq!(origin.contents()[4096 + 250], 1);
    // Reads that start or end inside the parked bytes.
    assert_eq!(
        read(&store, View::Origin, 4096 + 120, 200),
        want[4096 + 120..4096 + 320]
    );
    // A snapshot taken now holds both writes: taking it landed them in the origin.
    let s2 = store.create_snapshot("s2").unwrap();
    assert_eq!(store.stats().parked_bytes, 0);
    assert_eq!(origin.contents()[4096..8192], want[4096..]);
    assert_eq!(read(&store, View::Snapshot(s2.id), 0, 8192), want);
    assert_eq!(
        read(&store, View::Snapshot(s1.id), 0, 8192),
        vec![1u8; 8192]
    );
    // Overwriting now copies for s2 and parks again; s2 keeps the landed bytes.
    store.write_origin(4096, &[4u8; 4096]).unwrap();
    assert_eq!(store.stats().parked_writes_total, 3);
    assert_eq!(read(&store, View::Snapshot(s2.id), 0, 8192), want);
    assert_eq!(read(&store, View::Origin, 4096, 4096), vec![4u8; 4096]);
    assert_clean(&store, Some(4 * MIB));
    assert_eq!(store.stats().parked_bytes, 0, "a flush lands everything");
    assert_eq!(origin.contents()[4096..8192], vec![4u8; 4096][..]);
    // Copied and nothing parked: straight to the origin.
    store.write_origin(4096, &[6u8; 100]).unwrap();
    assert_eq!(store.stats().parked_writes_total, 3);
    assert_eq!(origin.contents()[4096..4196], [6u8; 100][..]);
}

#[test]
fn a_write_across_chunks_parks_each_piece_and_reads_whole() {
    let (_origin, _dev, store) = store();
    let s1 = store.create_snapshot("s1").unwrap();
    // Three chunks: the middle one whole, the others in part.
    let data: Vec<u8> = (0..3 * CHUNK as usize).map(|i| (i % 251) as u8).collect();
    store
        .write_origin(2048, &data[..3 * CHUNK as usize - 4096])
        .unwrap();
    let mut want = vec![1u8; 16384];
    want[2048..2048 + 8192].copy_from_slice(&data[..8192]);
    assert_eq!(read(&store, View::Origin, 0, 16384), want);
    assert_eq!(
        read(&store, View::Snapshot(s1.id), 0, 16384),
        vec![1u8; 16384]
    );
    assert_clean(&store, Some(4 * MIB));
    assert_eq!(read(&store, View::Origin, 0, 16384), want);
}

#[test]
fn parked_first_writes_share_one_commit() {
    let (_origin, _dev, store) = store();
    store.create_snapshot("s1").unwrap();
    let before = store.stats().commits.count;
    for i in 0..16u64 {
        store.write_origin(i * 4096, &[9u8; 4096]).unwrap();
    }
    assert_eq!(store.stats().parked_writes_total, 16);
    assert_eq!(
        store.stats().commits.count,
        before,
        "no writer waited for a commit"
    );
    store.flush().unwrap();
    assert_eq!(
        store.stats().commits.count,
        before + 1,
        "one commit took all 16 copy-outs"
    );
    assert_eq!(
        read(&store, View::Origin, 0, 16 * 4096),
        vec![9u8; 16 * 4096]
    );
}

#[test]
fn the_background_lander_lands_without_a_flush() {
    let (origin, _dev, store) = store();
    let store = Arc::new(store);
    store.start_landing();
    store.create_snapshot("s1").unwrap();
    store.write_origin(0, &[5u8; 4096]).unwrap();
    assert_eq!(store.stats().parked_writes_total, 1);
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.stats().parked_bytes > 0 {
        assert!(Instant::now() < deadline, "the parked write never landed");
        std::thread::sleep(Duration::from_millis(5));
    }
    // In the origin device, and the commit of its copy came first.
    assert_eq!(origin.contents()[..4096], [5u8; 4096][..]);
    let report = multisnap_store::verify(&**store.store_dev(), Some(4 * MIB)).unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    assert_eq!(report.exceptions, 1, "the copy is committed");
}

/// A store whose store device (or origin) fails the way a dying disk does, with one parked
/// write of 7s over chunk 0 and a snapshot that must keep seeing 1s there.
fn failing_store() -> (
    Arc<Failing<MemDev>>,
    Arc<Failing<MemDev>>,
    Store,
    SnapshotId,
) {
    let origin = Arc::new(Failing::new(MemDev::from_vec(vec![1u8; 4 * MIB as usize])));
    let dev = Arc::new(Failing::new(MemDev::new(16 * MIB)));
    let store = Store::create(origin.clone(), dev.clone(), &chunk_opts(CHUNK)).unwrap();
    let s1 = store.create_snapshot("s1").unwrap().id;
    store.write_origin(0, &[7u8; 4096]).unwrap();
    assert_eq!(store.stats().parked_bytes, 4096);
    (origin, dev, store, s1)
}

/// The failed store: refuses writes and flushes, still reads the parked write; a reopen
/// after the disk heals forgets it (it was never flushed) and the store works again.
fn check_failed_then_reopen(
    store: &Store,
    origin: &Failing<MemDev>,
    dev: &Failing<MemDev>,
    s1: SnapshotId,
) {
    assert!(store.failure().is_some());
    assert_eq!(read(store, View::Origin, 0, 4096), vec![7u8; 4096]);
    assert_eq!(read(store, View::Snapshot(s1), 0, 4096), vec![1u8; 4096]);
    assert!(store.write_origin(8192, &[1u8; 512]).is_err());
    assert!(store.flush().is_err(), "later flushes report it too");
    origin.heal();
    dev.heal();
    store.reopen().unwrap();
    assert_eq!(store.stats().parked_bytes, 0);
    assert_eq!(read(store, View::Origin, 0, 4096), vec![1u8; 4096]);
    assert_eq!(read(store, View::Snapshot(s1), 0, 4096), vec![1u8; 4096]);
    store.write_origin(0, &[8u8; 4096]).unwrap();
    store.flush().unwrap();
    assert_eq!(read(store, View::Origin, 0, 4096), vec![8u8; 4096]);
    assert_eq!(read(store, View::Snapshot(s1), 0, 4096), vec![1u8; 4096]);
}

#[test]
fn a_failed_landing_commit_fails_the_store_and_reads_still_see_the_write() {
    let (origin, dev, store, s1) = failing_store();
    dev.fail(FailOp::Flush, 0, EIO, true);
    assert!(
        store.flush().is_err(),
        "the landing's commit cannot succeed"
    );
    // The origin never got the write: its copy was not durable.
    assert_eq!(origin.inner().contents()[..4096], [1u8; 4096][..]);
    check_failed_then_reopen(&store, &origin, &dev, s1);
}

#[test]
fn a_failed_landing_origin_write_fails_the_store_and_reads_still_see_the_write() {
    let (origin, dev, store, s1) = failing_store();
    origin.fail(FailOp::Write, 0, EIO, true);
    assert!(store.land_parked().is_err());
    check_failed_then_reopen(&store, &origin, &dev, s1);
}

/// Parked bytes are bounded: a writer that finds 64 MiB parked lands them itself first, so
/// memory does not grow with the writes, and they reach the origin without a flush.
#[test]
fn a_writer_over_the_bound_lands_first() {
    const BOUND: u64 = 64 * MIB;
    const WRITE: usize = MIB as usize;
    let (origin, _dev, store) = mem_store(80 * MIB, 200 * MIB, &chunk_opts(64 * 1024));
    store.create_snapshot("s1").unwrap();
    let mut peak = 0;
    for i in 0..72u64 {
        store
            .write_origin(i * MIB, &vec![(i % 250) as u8 + 1; WRITE])
            .unwrap();
        peak = peak.max(store.stats().parked_bytes);
    }
    assert_eq!(store.stats().parked_writes_total, 72);
    assert!(peak <= BOUND + MIB, "{peak} bytes parked");
    assert!(peak >= BOUND, "the bound was never reached: {peak}");
    // The first writes landed (no flush ran), the last ones may still be parked.
    assert_eq!(origin.contents()[..WRITE], vec![1u8; WRITE][..]);
    assert!(store.stats().parked_bytes < 72 * MIB);
    for i in [0u64, 40, 71] {
        assert_eq!(
            read(&store, View::Origin, i * MIB, WRITE),
            vec![(i % 250) as u8 + 1; WRITE]
        );
    }
}

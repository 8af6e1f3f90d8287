//! The origin write journal end to end: a flush of small writes lands in the store's journal,
//! not in an origin sync; an origin that lost every unsynced write gets them back on open; a
//! failed flush leaves its writes for the next one; a clean close leaves the origin complete.

mod common;

use multisnap_store::{verify, BlockDev, CreateOptions, MemDev, Store, StoreError, View};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

const CHUNK: usize = 4096;
const ORIGIN: u64 = 1 << 20;
const STORE: u64 = 4 << 20;

/// A device that counts flushes and can be made to fail writes and flushes.
#[derive(Default)]
struct Watched {
    inner: Option<MemDev>,
    flushes: AtomicU64,
    failing: AtomicBool,
}

impl Watched {
    fn new(size: u64) -> Arc<Watched> {
        Arc::new(Watched {
            inner: Some(MemDev::new(size)),
            ..Default::default()
        })
    }
    fn mem(&self) -> &MemDev {
        self.inner.as_ref().expect("device")
    }
}

impl BlockDev for Watched {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.mem().read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(std::io::Error::other("injected write failure"));
        }
        self.mem().write_at(buf, offset)
    }
    fn flush(&self) -> std::io::Result<()> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(std::io::Error::other("injected flush failure"));
        }
        self.flushes.fetch_add(1, Ordering::SeqCst);
        self.mem().flush()
    }
    fn size(&self) -> std::io::Result<u64> {
        self.mem().size()
    }
    fn grow_to(&self, size: u64) -> std::io::Result<()> {
        self.mem().grow_to(size)
    }
}

fn opts() -> CreateOptions {
    common::chunk_opts(CHUNK as u32)
}

/// Reopens the store image with an origin that kept nothing written since `kept` was taken.
fn reopen_with(kept: Vec<u8>, store_image: Vec<u8>) -> Store {
    let dev = Arc::new(MemDev::from_vec(store_image));
    let report = verify(&*dev, Some(ORIGIN)).expect("verify");
    assert!(report.is_clean(), "{:?}", report.problems);
    Store::open(Arc::new(MemDev::from_vec(kept)), dev, 1 << 20).expect("open")
}

fn read_origin(store: &Store, offset: u64, len: usize) -> Vec<u8> {
    common::read(store, View::Origin, offset, len)
}

#[test]
fn flushed_small_writes_come_back_from_the_journal_when_the_origin_lost_them() {
    let origin = Watched::new(ORIGIN);
    let dev = Watched::new(STORE);
    let store = Store::create(origin.clone(), dev.clone(), &opts()).unwrap();
    let before = origin.mem().contents();
    let origin_flushes = origin.flushes.load(Ordering::SeqCst);
    for i in 0..20u64 {
        store
            .write_origin(i * 3 * CHUNK as u64 + 100, &[i as u8 + 1; 5000])
            .unwrap();
    }
    store.flush().unwrap();
    let stats = store.stats();
    assert_eq!(stats.journal_batches_total, 1);
    assert_eq!(stats.journal_written_bytes_total, 20 * 5000);
    assert_eq!(
        origin.flushes.load(Ordering::SeqCst),
        origin_flushes,
        "a journaled flush does not sync the origin"
    );
    // Written after the flush and never flushed: may be lost, and is, with the origin.
    store.write_origin(0, &[0xEE; 100]).unwrap();

    let again = reopen_with(before, dev.mem().contents());
    for i in 0..20u64 {
        let at = i * 3 * CHUNK as u64 + 100;
        assert_eq!(
            read_origin(&again, at, 5000),
            vec![i as u8 + 1; 5000],
            "write {i}"
        );
    }
    assert_eq!(read_origin(&again, 0, 100), vec![0; 100]);
    assert_eq!(again.stats().journal_batches_total, 0);
}

#[test]
fn a_flush_too_big_for_one_batch_syncs_the_origin_and_empties_the_journal() {
    let origin = Watched::new(ORIGIN);
    let dev = Watched::new(STORE);
    let store = Store::create(origin.clone(), dev.clone(), &opts()).unwrap();
    store.write_origin(0, &[1; 4096]).unwrap();
    store.flush().unwrap();
    assert_eq!(store.stats().journal_batches_total, 1);
    let origin_flushes = origin.flushes.load(Ordering::SeqCst);
    // 1 MiB of data plus the block above: more than one batch carries.
    store.write_origin(0, &vec![2; ORIGIN as usize]).unwrap();
    store.flush().unwrap();
    let stats = store.stats();
    assert_eq!(stats.journal_batches_total, 1);
    assert_eq!(stats.journal_discards_total, 1);
    assert_eq!(origin.flushes.load(Ordering::SeqCst), origin_flushes + 1);
    // The older batch must not come back over the newer data: the journal was emptied.
    let again = reopen_with(origin.mem().contents(), dev.mem().contents());
    assert_eq!(read_origin(&again, 0, 4096), vec![2; 4096]);
}

/// A journal batch that could not be made durable fails its flush, and every later flush is
/// refused until the store is reopened: the device may have lost what the failed flush was
/// writing, so retrying could acknowledge writes that are gone. The write was never
/// acknowledged as durable; after the reopen the store is consistent and takes writes again.
#[test]
fn a_failed_journal_flush_refuses_later_flushes_until_reopen() {
    let origin = Watched::new(ORIGIN);
    let dev = Watched::new(STORE);
    let store = Store::create(origin.clone(), dev.clone(), &opts()).unwrap();
    let before = origin.mem().contents();
    store.write_origin(8192, &[7; 4096]).unwrap();
    dev.failing.store(true, Ordering::SeqCst);
    assert!(store.flush().is_err());
    dev.failing.store(false, Ordering::SeqCst);
    assert!(matches!(store.flush(), Err(StoreError::Poisoned(_))));
    assert!(store.write_origin(0, &[8; 4096]).is_err());
    drop(store);
    let again = reopen_with(before, dev.mem().contents());
    again.write_origin(8192, &[9; 4096]).unwrap();
    again.flush().unwrap();
    assert_eq!(read_origin(&again, 8192, 4096), vec![9; 4096]);
}

#[test]
fn a_clean_close_leaves_the_origin_complete_and_the_journal_empty() {
    let origin = Watched::new(ORIGIN);
    let dev = Watched::new(STORE);
    let store = Store::create(origin.clone(), dev.clone(), &opts()).unwrap();
    store.write_origin(4096, &[9; 4096]).unwrap();
    store.flush().unwrap();
    assert_eq!(store.stats().journal_batches_total, 1);
    drop(store);
    let image = origin.mem().contents();
    assert_eq!(&image[4096..8192], &[9; 4096][..]);
    // Nothing left to replay: a stale batch would be applied over this newer byte otherwise.
    let mut edited = image.clone();
    edited[4096] = 0x55;
    let again = reopen_with(edited, dev.mem().contents());
    assert_eq!(read_origin(&again, 4096, 1), vec![0x55]);
}

#[test]
fn a_snapshot_holds_writes_made_durable_through_the_journal() {
    let origin = Watched::new(ORIGIN);
    let dev = Watched::new(STORE);
    let store = Store::create(origin.clone(), dev.clone(), &opts()).unwrap();
    let before = origin.mem().contents();
    store.write_origin(0, &[3; 4096]).unwrap();
    let snap = store.create_snapshot("s").unwrap();
    store.write_origin(0, &[4; 4096]).unwrap();
    store.flush().unwrap();
    let again = reopen_with(before, dev.mem().contents());
    let mut b = vec![0u8; 4096];
    again.read(View::Snapshot(snap.id), 0, &mut b).unwrap();
    assert_eq!(b, vec![3; 4096]);
    assert_eq!(read_origin(&again, 0, 4096), vec![4; 4096]);
}

#[test]
fn verify_counts_the_batches_waiting_in_the_journal() {
    let origin = Watched::new(ORIGIN);
    let dev = Watched::new(STORE);
    let store = Store::create(origin.clone(), dev.clone(), &opts()).unwrap();
    for i in 0..3u64 {
        store.write_origin(i * 8192, &[1; 4096]).unwrap();
        store.flush().unwrap();
    }
    let report = verify(dev.mem(), Some(ORIGIN)).unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    assert_eq!(
        (report.journal_batches, report.journal_bytes),
        (3, 3 * 4096)
    );
    let origin_flushes = origin.flushes.load(Ordering::SeqCst);
    store.write_origin(65536, &[2; 512]).unwrap();
    store.empty_journal().unwrap();
    assert_eq!(origin.flushes.load(Ordering::SeqCst), origin_flushes + 1);
    let report = verify(dev.mem(), Some(ORIGIN)).unwrap();
    assert_eq!(report.journal_batches, 0, "emptied while open");
    assert_eq!(store.stats().journal_discards_total, 1);
    assert_eq!(&origin.mem().contents()[65536..66048], &[2; 512][..]);
    // Journaling starts over at the journal's start, in the new epoch.
    store.write_origin(0, &[3; 4096]).unwrap();
    store.flush().unwrap();
    assert_eq!(verify(dev.mem(), Some(ORIGIN)).unwrap().journal_batches, 1);
    drop(store);
    let report = verify(dev.mem(), Some(ORIGIN)).unwrap();
    assert_eq!(
        report.journal_batches, 0,
        "a clean close empties the journal"
    );
}

#[test]
fn flushes_go_on_into_the_other_half_while_the_origin_syncs_and_both_halves_replay() {
    use multisnap_store::fault::{CrashDev, FlushGate, PowerRail};
    use rand::SeedableRng;
    const SLOT: u64 = 16384;
    let rail = PowerRail::new();
    let origin = Arc::new(CrashDev::new(rail.clone(), ORIGIN as usize));
    let gate = Arc::new(FlushGate::new(origin.clone()));
    let dev = Arc::new(CrashDev::new(rail.clone(), STORE as usize));
    let store = Store::create(gate.clone(), dev.clone(), &opts()).unwrap();
    // A quarter of the 4 MiB store: halves of 128 blocks, 25 batches of one 16 KiB write each.
    assert_eq!(store.stats().journal_size_bytes, 1 << 20);
    gate.close();
    let mut last = [0u8; 16];
    for i in 0..40u64 {
        let slot = (i % 16) as usize;
        last[slot] = i as u8 + 1;
        store
            .write_origin(slot as u64 * SLOT, &[last[slot]; SLOT as usize])
            .unwrap();
        // Never waits for the origin: batch 26 goes into the other half while the
        // background sync of the first waits at the closed gate.
        store.flush().unwrap();
    }
    assert!(
        gate.wait_for_waiting_flush(Duration::from_secs(10)),
        "the filled half's origin sync is under way"
    );
    let stats = store.stats();
    assert_eq!(stats.journal_batches_total, 40);
    assert_eq!(
        (stats.journal_retired_total, stats.journal_waits_total),
        (0, 0)
    );
    assert_eq!(stats.journal_discards_total, 0);

    // Power cut with that sync still pending: the origin keeps nothing written since it was
    // made, and both halves must be replayed, the older first.
    rail.cut_now();
    let mut rng = rand::rngs::StdRng::seed_from_u64(8);
    let origin_image = origin.crash_image(&mut rng, 0.0, 0.0);
    let store_image = dev.crash_image(&mut rng, 0.0, 0.0);
    gate.open();
    drop(store);
    assert!(
        origin_image.iter().all(|&b| b == 0),
        "the origin was never synced"
    );
    let again = reopen_with(origin_image, store_image);
    for (slot, &want) in last.iter().enumerate() {
        assert_eq!(
            read_origin(&again, slot as u64 * SLOT, SLOT as usize),
            vec![want; SLOT as usize],
            "slot {slot}"
        );
    }
}

//! Power cuts while several writers share pipelined commits.
//!
//! A commit is sealed under the metadata lock and lands (flush, superblock, flush) after the
//! lock is released, so other writers copy chunks, allocate blocks, evict index nodes and free
//! shadowed ones while it lands. `power_cut.rs` runs one thread and never reaches that window;
//! here four writer threads make first writes (every one a copy-out) while a fifth deletes a
//! snapshot and reclaims its chunks, on a store device whose flushes are slow enough that the
//! next transaction fills up during each landing. The power is cut at write k for k spread over
//! the whole run, and every cut is rebuilt with all, none and a random half of the unflushed
//! writes. Whatever the interleaving:
//! - the store opens and `verify` finds nothing wrong;
//! - the snapshot taken before the writers started reads exactly as it was;
//! - the snapshot being deleted is either gone or exactly as it was;
//! - every origin byte is its old value or one a write put there, and every write that its
//!   thread saw acknowledged before one of its own flushes completed is there whole.

use multisnap_store::fault::{CrashDev, Delayed, FlushGate, PowerRail};
use multisnap_store::{verify, CreateOptions, MemDev, SnapshotState, Store, View};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::{Arc, Barrier};
use std::time::Duration;

const CHUNK: usize = 4096;
const WRITERS: usize = 4;
const CHUNKS_PER_WRITER: usize = 48;
const ORIGIN: usize = WRITERS * CHUNKS_PER_WRITER * CHUNK;
/// Room for every copy the writers make even if the reclaimer has not freed a single chunk of
/// `old` by then, above the reclamation reserve and what landing commits hold: the writers'
/// progress must not depend on how the threads are scheduled (a store that ran within a few
/// blocks of its reserve refused the last writes on a loaded machine).
const STORE: usize = 1792 << 10;
/// Chunks written between the old snapshot and the one the writers copy for, so deleting the
/// old one has chunks to reclaim.
const OLD_CHUNKS: usize = 40;
const FLUSH_EVERY: usize = 6;

/// The store device's flushes are slowed so commits spend long enough landing for the other
/// threads to fill the next transaction meanwhile (a real disk's cache flush takes
/// milliseconds; the RAM disk's takes nothing).
const SLOW_FLUSH: Duration = Duration::from_micros(300);

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..len).map(|_| rng.gen()).collect()
}

/// The images before the writers start: the origin, and the contents of snapshots `old` and
/// `base` (the origin when each was taken).
struct Base {
    origin: Vec<u8>,
    store: Vec<u8>,
    old: Vec<u8>,
    base: Vec<u8>,
}

fn prepare() -> Base {
    // Dirty index nodes are written out mid-transaction, so the next transaction writes into
    // blocks while the previous commit lands.
    multisnap_store::fault::set_min_cache_nodes(1);
    let origin = Arc::new(MemDev::from_vec(pattern(1, ORIGIN)));
    let dev = Arc::new(MemDev::new(STORE as u64));
    let opts = CreateOptions {
        chunk_size: CHUNK as u32,
        cache_bytes: 0, // the minimum: dirty nodes are evicted mid-transaction too
        ..Default::default()
    };
    let store = Store::create(origin.clone(), dev.clone(), &opts).expect("format");
    let old = origin.contents();
    store.create_snapshot("old").expect("old snapshot");
    for i in 0..OLD_CHUNKS {
        let at = (i * 5 % (ORIGIN / CHUNK)) * CHUNK;
        store
            .write_origin(at as u64, &pattern(1000 + i as u64, CHUNK))
            .expect("write before base");
    }
    // Parked until landed: the image below is the origin device's.
    store.land_parked().expect("land");
    let base = origin.contents();
    store.create_snapshot("base").expect("base snapshot");
    store.flush().expect("flush");
    drop(store);
    Base {
        origin: origin.contents(),
        store: dev.contents(),
        old,
        base,
    }
}

/// One writer's record: every write it issued, and how many were covered by a completed flush.
#[derive(Default, Clone)]
struct WriterLog {
    issued: Vec<(usize, Vec<u8>)>,
    flushed: usize,
    /// Why the writer stopped early, if it did.
    error: Option<String>,
}

struct Outcome {
    writers: Vec<WriterLog>,
    deleted: bool,
}

fn run(
    base: &Base,
    seed: u64,
    cut_at: Option<u64>,
) -> (Arc<PowerRail>, Arc<CrashDev>, Arc<CrashDev>, Outcome) {
    let rail = PowerRail::new();
    if let Some(k) = cut_at {
        rail.cut_at_write(k);
    }
    let origin = Arc::new(CrashDev::from_image(rail.clone(), base.origin.clone()));
    // Odd seeds copy out through the store device (`BlockDev::copy_from`), even ones through
    // memory: both orderings meet pipelined commits.
    let kernel_copy = seed % 2 == 1;
    let dev = CrashDev::from_image(rail.clone(), base.store.clone());
    let dev = Arc::new(if kernel_copy { dev.copying() } else { dev });
    let store = Arc::new(
        Store::open(
            origin.clone(),
            Arc::new(Delayed::new(dev.clone()).flushes(SLOW_FLUSH)),
            0,
        )
        .expect("open base"),
    );
    // First writes park until their copies are committed; the background lander commits
    // and lands them while the writers go on, beside the writers' own flushes.
    store.start_landing();
    let old = store.snapshot_by_name("old").expect("old").id;
    let start = Arc::new(Barrier::new(WRITERS + 1));

    let mut handles = Vec::new();
    for w in 0..WRITERS {
        let store = store.clone();
        let start = start.clone();
        handles.push(std::thread::spawn(move || {
            let mut rng = StdRng::seed_from_u64(seed * 100 + w as u64);
            let mut log = WriterLog::default();
            // Each writer owns every WRITERS-th chunk and writes each once, in random order,
            // so every write is a first write since `base` and copies.
            let mut chunks: Vec<usize> = (0..CHUNKS_PER_WRITER).map(|i| i * WRITERS + w).collect();
            for i in (1..chunks.len()).rev() {
                chunks.swap(i, rng.gen_range(0..=i));
            }
            start.wait();
            for (n, c) in chunks.into_iter().enumerate() {
                let data = pattern(seed << 32 | (c as u64), CHUNK);
                let at = c * CHUNK;
                log.issued.push((at, data.clone()));
                if let Err(e) = store.write_origin(at as u64, &data) {
                    log.error = Some(format!("write at {at}: {e}"));
                    break;
                }
                if n % FLUSH_EVERY == FLUSH_EVERY - 1 {
                    if let Err(e) = store.flush() {
                        log.error = Some(format!("flush: {e}"));
                        break;
                    }
                    log.flushed = log.issued.len();
                }
            }
            log
        }));
    }
    start.wait();
    let mut deleted = false;
    if store.delete_snapshot(old).is_ok() {
        deleted = true;
        for _ in 0..200 {
            match store.reclaim_step(2) {
                Ok(p) if p.pending.is_empty() => break,
                Ok(_) => std::thread::sleep(Duration::from_micros(200)),
                Err(_) => break,
            }
        }
    }
    let writers = handles
        .into_iter()
        .map(|h| h.join().expect("writer thread"))
        .collect();
    if cut_at.is_none() {
        let copies = store.stats().kernel_copies_total;
        assert_eq!(
            copies > 0,
            kernel_copy,
            "seed {seed}: {copies} kernel copies"
        );
    }
    // Power off without a clean close.
    rail.cut_now();
    drop(store);
    (rail, origin, dev, Outcome { writers, deleted })
}

fn check(base: &Base, origin_img: Vec<u8>, store_img: Vec<u8>, out: &Outcome, what: &str) {
    let origin = Arc::new(MemDev::from_vec(origin_img));
    let dev = Arc::new(MemDev::from_vec(store_img));
    let report = verify(&*dev, Some(ORIGIN as u64)).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(report.is_clean(), "{what}: verify: {:?}", report.problems);
    let store = Store::open(origin, dev, 1 << 20).unwrap_or_else(|e| panic!("{what}: open: {e}"));
    let read = |id| {
        let mut b = vec![0u8; ORIGIN];
        store.read(View::Snapshot(id), 0, &mut b).expect("read");
        b
    };

    let b = store.snapshot_by_name("base").expect("base snapshot lost");
    assert!(read(b.id) == base.base, "{what}: snapshot base changed");
    match store.snapshot_by_name("old") {
        Ok(s) if s.state == SnapshotState::Ready => {
            assert!(!out.deleted, "{what}: acknowledged delete undone");
            assert!(read(s.id) == base.old, "{what}: snapshot old changed");
        }
        _ => {}
    }

    let mut now = vec![0u8; ORIGIN];
    store.read(View::Origin, 0, &mut now).expect("read origin");
    for (w, log) in out.writers.iter().enumerate() {
        for (i, (at, data)) in log.issued.iter().enumerate() {
            let found = &now[*at..*at + CHUNK];
            let old = &base.base[*at..*at + CHUNK];
            if i < log.flushed {
                assert!(
                    found == &data[..],
                    "{what}: writer {w}'s flushed write at {at} lost"
                );
            } else {
                for (j, byte) in found.iter().enumerate() {
                    assert!(
                        *byte == old[j] || *byte == data[j],
                        "{what}: origin byte {} is {byte:#x}, which no write put there",
                        at + j
                    );
                }
            }
        }
    }
    // The recovered store keeps working.
    store.reclaim_all().expect("reclaim after recovery");
    store
        .write_origin(0, &vec![0x5a; CHUNK * 3])
        .expect("write after recovery");
    store.flush().expect("flush after recovery");
    assert!(
        read(b.id) == base.base,
        "{what}: base changed after recovery"
    );
}

#[test]
fn power_cut_during_pipelined_commits() {
    let base = prepare();
    let mut cases = 0;
    let mut rng = StdRng::seed_from_u64(7);
    for seed in 0..3u64 {
        let (rail, origin, dev, out) = run(&base, seed, None);
        let total = rail.writes();
        let copies: usize = out.writers.iter().map(|l| l.issued.len()).sum();
        let errors: Vec<&String> = out
            .writers
            .iter()
            .filter_map(|l| l.error.as_ref())
            .collect();
        assert_eq!(
            copies,
            WRITERS * CHUNKS_PER_WRITER,
            "seed {seed}: uncut run stopped early: {errors:?}"
        );
        check(
            &base,
            origin.current_image(),
            dev.current_image(),
            &out,
            "no cut",
        );
        // About 60 cut points per seed, spread over the whole run (`MULTISNAP_CUT_POINTS`
        // raises that for a soak).
        let points: u64 = std::env::var("MULTISNAP_CUT_POINTS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(60);
        let step = (total / points.max(1)).max(1);
        let mut k = 1 + seed % step;
        while k <= total {
            let (rail, origin, dev, out) = run(&base, seed, Some(k));
            assert!(rail.is_cut());
            for keep in [0.0, 1.0, 0.5] {
                let o = origin.crash_image(&mut rng, keep, 0.3);
                let s = dev.crash_image(&mut rng, keep, 0.3);
                check(
                    &base,
                    o,
                    s,
                    &out,
                    &format!("seed {seed}, cut at write {k} of about {total}, keep {keep}"),
                );
                cases += 1;
            }
            k += step;
        }
    }
    println!("pipelined-commit power-cut cases checked: {cases}");
    assert!(cases >= 400, "only {cases} cases ran");
}

/// The window this file is about exists: while a commit's flush is stuck, the metadata lock
/// is free (stats answer, and a second writer's copy goes into the next transaction, its write
/// acknowledged without waiting); the second write's commit follows once the first lands.
#[test]
fn a_landing_commit_does_not_hold_the_metadata_lock() {
    let base = prepare();
    let origin = Arc::new(MemDev::from_vec(base.origin.clone()));
    let mem = Arc::new(MemDev::from_vec(base.store.clone()));
    let gate = Arc::new(FlushGate::new(mem.clone()));
    let store = Arc::new(Store::open(origin, gate.clone(), 0).expect("open"));
    let before = store.stats();
    gate.close();

    // Parked: acknowledged before its copy's commit, which the landing below runs.
    store.write_origin(0, &[1; CHUNK]).expect("first write");
    let first = {
        let store = store.clone();
        std::thread::spawn(move || store.land_parked())
    };
    assert!(
        gate.wait_for_waiting_flush(Duration::from_secs(10)),
        "the first write's landing never reached its commit's flush"
    );
    // Needs no commit to return either, although one is stuck.
    store
        .write_origin(CHUNK as u64, &[2; CHUNK])
        .expect("second write");
    // Both copies recorded while the first commit is stuck in its flush.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (tx, rx) = std::sync::mpsc::channel();
        let s = store.clone();
        std::thread::spawn(move || {
            let _ = tx.send(s.stats());
        });
        let stats = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("stats blocked behind a landing commit: the metadata lock is held");
        if stats.exceptions == before.exceptions + 2 {
            assert_eq!(
                stats.commits.count, before.commits.count,
                "nothing landed yet"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the second writer could not record its copy while the first commit landed"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(!first.is_finished());
    gate.open();
    first.join().expect("first").expect("first landing");
    store.land_parked().expect("second landing");
    let after = store.stats();
    assert_eq!(after.commits.count, before.commits.count + 2);
    drop(store);
    let report = verify(&*mem, Some(ORIGIN as u64)).expect("verify");
    assert!(report.is_clean(), "{:?}", report.problems);
}

//! Power cuts at every write of a workload, over the origin and the store together.
//!
//! For each seed, a workload of origin writes, snapshot creations and flushes runs once to
//! count its device writes; then, for every write number k, it runs again with the power cut
//! at write k, and the surviving disks are rebuilt several ways (every unflushed write lost,
//! every one kept, random subsets with torn sectors). Each image must open, pass `verify`,
//! show every acknowledged snapshot byte for byte as it was, hold every origin write that a
//! completed flush covered, and keep working afterwards.
//!
//! Recovery is cut too: images left by a first cut are opened, reclaimed and flushed (what an
//! agent does on start) with the power cut at every write of that, and what survives must
//! pass the same checks.
//!
//! Every workload runs twice: with copy-outs read and written through memory, and with the
//! store device taking them as kernel copies (`BlockDev::copy_from`, what `copy_file_range`
//! does between files of one filesystem), each a write into its volatile cache.
//!
//! `MULTISNAP_CRASH_SEEDS=N` raises the number of workloads for a soak.

mod common;

use common::Image;

use multisnap_store::fault::{CrashDev, PowerRail};
use multisnap_store::{
    verify, CreateOptions, FullPolicy, MemDev, OriginCache, SnapshotState, Store, StoreError, View,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::sync::Arc;

const ORIGIN: usize = 192 * 1024 + 1536; // not a chunk multiple: the last chunk is partial
const STORE: usize = 1024 * 1024;
/// A store that fills up within a workload: the store-full paths run under power cuts too.
const SMALL_STORE: usize = 440 * 1024;

#[derive(Clone, Copy, Debug)]
struct Setup {
    store: usize,
    policy: FullPolicy,
    /// Copy-outs through `BlockDev::copy_from` rather than a read and a write.
    kernel_copy: bool,
    /// How the store is told the origin is opened: a direct one has no journal and every
    /// flush syncs the origin. The simulated origin keeps its writes in a volatile cache
    /// until flushed either way, which is what a direct origin's device does too.
    origin_cache: OriginCache,
}

const ROOMY: Setup = Setup {
    store: STORE,
    policy: FullPolicy::Error,
    kernel_copy: false,
    origin_cache: OriginCache::Buffered,
};

/// The same, with a direct origin (`OriginCache::Direct`).
const ROOMY_DIRECT: Setup = Setup {
    origin_cache: OriginCache::Direct,
    ..ROOMY
};

/// The same, with copy-outs made by the store device (`CrashDev::copying`).
const ROOMY_KERNEL_COPY: Setup = Setup {
    kernel_copy: true,
    ..ROOMY
};
const CHUNK: u32 = 4096;

#[derive(Clone, Debug)]
enum Op {
    Write {
        offset: u64,
        data: Vec<u8>,
    },
    Snapshot {
        name: String,
        writable: bool,
    },
    SnapshotWrite {
        name: String,
        offset: u64,
        data: Vec<u8>,
    },
    Delete(String),
    Reclaim,
    /// Lands the parked origin writes (`Store::land_parked`): their copies' commit, then
    /// the origin writes, without the flush that would make those durable.
    Land,
    Flush,
}

fn random_write(rng: &mut StdRng) -> (u64, Vec<u8>) {
    let len = rng.gen_range(1..3 * CHUNK as usize);
    let offset = rng.gen_range(0..(ORIGIN - len) as u64);
    (offset, vec![rng.gen(); len])
}

fn workload(seed: u64, ops: usize) -> Vec<Op> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = Vec::new();
    let mut snaps = 0;
    let mut live: Vec<(String, bool)> = Vec::new();
    for _ in 0..ops {
        match rng.gen_range(0..100) {
            0..=44 => {
                let (offset, data) = random_write(&mut rng);
                out.push(Op::Write { offset, data });
            }
            45..=56 => {
                snaps += 1;
                let writable = rng.gen_range(0..3) == 0;
                let name = format!("s{snaps}");
                live.push((name.clone(), writable));
                out.push(Op::Snapshot { name, writable });
            }
            57..=69 => {
                let writable: Vec<&String> =
                    live.iter().filter(|(_, w)| *w).map(|(n, _)| n).collect();
                if let Some(name) = writable.get(rng.gen_range(0..writable.len().max(1))) {
                    let (offset, data) = random_write(&mut rng);
                    out.push(Op::SnapshotWrite {
                        name: name.to_string(),
                        offset,
                        data,
                    });
                }
            }
            70..=79 if !live.is_empty() => {
                let (name, _) = live.remove(rng.gen_range(0..live.len()));
                out.push(Op::Delete(name));
            }
            80..=84 => out.push(Op::Reclaim),
            85..=89 => out.push(Op::Land),
            _ => out.push(Op::Flush),
        }
    }
    out
}

/// What the workload knows when the power goes.
struct Outcome {
    setup: Setup,
    /// Creation order of the snapshots in `snapshots` (oldest first).
    order: Vec<String>,
    /// Operations refused with StoreFull, and snapshots dropped by invalidate-oldest.
    full_hits: usize,
    invalidations: usize,
    origin: Image,
    /// Acknowledged, not deleted snapshots.
    snapshots: BTreeMap<String, Image>,
    /// A snapshot whose creation was interrupted: it may exist, and then must look like this.
    maybe_created: Option<(String, Vec<u8>)>,
    /// A snapshot whose deletion was interrupted: it may still exist, intact.
    maybe_deleted: Option<(String, Image)>,
    /// Copy-outs the store device made itself (`StoreStats::kernel_copies_total`).
    kernel_copies: u64,
    /// Origin writes acknowledged before their copies were committed
    /// (`StoreStats::parked_writes_total`).
    parked_writes: u64,
}

struct Rig {
    rail: Arc<PowerRail>,
    origin: Arc<CrashDev>,
    store_dev: Arc<CrashDev>,
}

fn format_rig(setup: Setup) -> (Vec<u8>, Vec<u8>) {
    // Below the production floor of 64 nodes, so these small workloads write dirty nodes out
    // mid-transaction too (a store with millions of exceptions does).
    multisnap_store::fault::set_min_cache_nodes(2);
    let origin = Arc::new(MemDev::new(ORIGIN as u64));
    let dev = Arc::new(MemDev::new(setup.store as u64));
    let opts = CreateOptions {
        chunk_size: CHUNK,
        full_policy: setup.policy,
        cache_bytes: 0, // the minimum: dirty nodes get evicted mid-transaction too
        origin_cache: setup.origin_cache,
        ..Default::default()
    };
    drop(Store::create(origin.clone(), dev.clone(), &opts).expect("format"));
    let sb = multisnap_store::read_superblock(&*dev).expect("superblock");
    assert_eq!(sb.origin_cache, setup.origin_cache);
    // The journal is what a direct origin does without; a buffered one of the roomy size has
    // one (the small store has no room for it).
    if setup.origin_cache == OriginCache::Direct {
        assert_eq!(sb.journal_blocks, 0, "a direct origin has no journal");
    } else if setup.store == STORE {
        assert!(sb.journal_blocks > 0, "a buffered roomy store journals");
    }
    (origin.contents(), dev.contents())
}

fn is_full(r: &Result<(), StoreError>) -> bool {
    matches!(r, Err(StoreError::StoreFull { .. }))
}

fn run(ops: &[Op], base: &(Vec<u8>, Vec<u8>), setup: Setup, cut_at: Option<u64>) -> (Rig, Outcome) {
    let rail = PowerRail::new();
    if let Some(k) = cut_at {
        rail.cut_at_write(k);
    }
    let store_dev = CrashDev::from_image(rail.clone(), base.1.clone());
    let rig = Rig {
        origin: Arc::new(CrashDev::from_image(rail.clone(), base.0.clone())),
        store_dev: Arc::new(if setup.kernel_copy {
            store_dev.copying()
        } else {
            store_dev
        }),
        rail,
    };
    let mut out = Outcome {
        setup,
        order: Vec::new(),
        full_hits: 0,
        invalidations: 0,
        origin: Image::new(base.0.clone()),
        snapshots: BTreeMap::new(),
        maybe_created: None,
        maybe_deleted: None,
        kernel_copies: 0,
        parked_writes: 0,
    };
    let store = match Store::open(rig.origin.clone(), rig.store_dev.clone(), 0) {
        Ok(s) => s,
        Err(_) => return (rig, out),
    };
    for op in ops {
        let ok = match op {
            Op::Write { offset, data } => {
                out.origin.issue(*offset, data);
                let r = store.write_origin(*offset, data);
                if r.is_ok() {
                    out.origin.acknowledged(*offset, data);
                }
                // A full store refuses the write and changes nothing: the workload goes on.
                out.full_hits += is_full(&r) as usize;
                r.is_ok() || is_full(&r)
            }
            Op::Snapshot { name, writable } => match store.create_snapshot_with(name, *writable) {
                Ok(_) => {
                    // Creation flushes the origin: everything acknowledged is now durable.
                    out.origin.flushed();
                    out.snapshots
                        .insert(name.clone(), Image::new(out.origin.current.clone()));
                    out.order.push(name.clone());
                    true
                }
                Err(StoreError::StoreFull { .. }) => {
                    out.origin.flushed();
                    out.full_hits += 1;
                    true
                }
                Err(_) => {
                    out.maybe_created = Some((name.clone(), out.origin.current.clone()));
                    false
                }
            },
            Op::SnapshotWrite { name, offset, data } => {
                let Some(img) = out.snapshots.get_mut(name) else {
                    continue;
                };
                img.issue(*offset, data);
                let id = store.snapshot_by_name(name).map(|s| s.id);
                let r = id.and_then(|id| store.write_snapshot(id, *offset, data));
                if r.is_ok() {
                    img.acknowledged(*offset, data);
                }
                out.full_hits += is_full(&r) as usize;
                r.is_ok() || is_full(&r)
            }
            Op::Delete(name) => {
                let Some(img) = out.snapshots.remove(name) else {
                    continue;
                };
                let id = store.snapshot_by_name(name).map(|s| s.id);
                let ok = id.and_then(|id| store.delete_snapshot(id)).is_ok();
                if !ok {
                    out.maybe_deleted = Some((name.clone(), img));
                }
                ok
            }
            Op::Reclaim => store.reclaim_step(8).is_ok(),
            Op::Land => store.land_parked().is_ok(),
            Op::Flush => {
                let ok = store.flush().is_ok();
                if ok {
                    out.origin.flushed();
                    for img in out.snapshots.values_mut() {
                        img.flushed();
                    }
                }
                ok
            }
        };
        if !ok {
            break;
        }
        // invalidate-oldest may have dropped snapshots to make room; they are gone for good
        // (the drop is committed before the write that needed it returns).
        let dropped: Vec<String> = out
            .snapshots
            .keys()
            .filter(|n| {
                store
                    .snapshot_by_name(n)
                    .map(|s| s.state != SnapshotState::Ready)
                    .unwrap_or(true)
            })
            .cloned()
            .collect();
        for n in dropped {
            assert_eq!(
                setup.policy,
                FullPolicy::InvalidateOldest,
                "snapshot {n} vanished under the error policy"
            );
            out.snapshots.remove(&n);
            out.invalidations += 1;
        }
    }
    out.kernel_copies = store.stats().kernel_copies_total;
    out.parked_writes = store.stats().parked_writes_total;
    // Power off without a clean close: the Drop's final commit fails on a cut rail, and on an
    // uncut one it is cut first so nothing after the workload lands.
    rig.rail.cut_now();
    drop(store);
    (rig, out)
}

fn read_all(store: &Store, view: View) -> Vec<u8> {
    common::read(store, view, 0, ORIGIN)
}

fn check_recovered(origin_img: Vec<u8>, store_img: Vec<u8>, out: &Outcome, what: &str) {
    let origin = Arc::new(MemDev::from_vec(origin_img));
    let dev = Arc::new(MemDev::from_vec(store_img));
    let report =
        verify(&*dev, Some(ORIGIN as u64)).unwrap_or_else(|e| panic!("{what}: no store: {e}"));
    assert!(report.is_clean(), "{what}: verify: {:?}", report.problems);
    let store = Store::open(origin.clone(), dev.clone(), 1 << 20)
        .unwrap_or_else(|e| panic!("{what}: open: {e}"));

    let live: Vec<String> = store
        .list_snapshots()
        .into_iter()
        .filter(|s| s.state == SnapshotState::Ready)
        .map(|s| s.name)
        .collect();
    // An interrupted write under invalidate-oldest may have dropped the oldest snapshots, and
    // only those: whatever is missing must be a prefix of the creation order.
    let mut missing_prefix = true;
    for name in out.order.iter().filter(|n| out.snapshots.contains_key(*n)) {
        let image = &out.snapshots[name];
        match store.snapshot_by_name(name) {
            Ok(info) if info.state == SnapshotState::Ready => {
                missing_prefix = false;
                let found = read_all(&store, View::Snapshot(info.id));
                image.check(&found, &format!("{what}: snapshot {name}"));
            }
            _ => assert!(
                out.setup.policy == FullPolicy::InvalidateOldest && missing_prefix,
                "{what}: acknowledged snapshot {name} lost"
            ),
        }
    }
    for name in &live {
        if out.snapshots.contains_key(name) {
            continue;
        }
        let info = store.snapshot_by_name(name).expect("listed snapshot");
        let found = read_all(&store, View::Snapshot(info.id));
        match (&out.maybe_created, &out.maybe_deleted) {
            (Some((n, image)), _) if n == name => {
                assert!(
                    found == *image,
                    "{what}: half-created snapshot {name} has wrong contents"
                )
            }
            (_, Some((n, image))) if n == name => {
                image.check(&found, &format!("{what}: half-deleted {name}"))
            }
            _ => panic!("{what}: snapshot {name} should not exist (deleted or never made)"),
        }
    }
    out.origin
        .check(&read_all(&store, View::Origin), &format!("{what}: origin"));

    // The recovered store keeps working: reclamation, copy-out, commit, reopen, verify.
    store.reclaim_all().expect("reclaim after recovery");
    let now = read_all(&store, View::Origin);
    let snap = store
        .create_snapshot("after-recovery")
        .expect("snapshot after recovery");
    match store.write_origin(0, &vec![0xee; 3 * CHUNK as usize]) {
        Ok(()) => {}
        // A store that was full before the cut may still be full under the error policy.
        Err(StoreError::StoreFull { .. }) if out.setup.policy == FullPolicy::Error => {}
        Err(e) => panic!("{what}: write after recovery: {e}"),
    }
    store.flush().expect("flush after recovery");
    assert_eq!(
        read_all(&store, View::Snapshot(snap.id)),
        now,
        "{what}: post-recovery snapshot"
    );
    drop(store);
    let report = verify(&*dev, Some(ORIGIN as u64)).expect("verify after recovery");
    assert!(
        report.is_clean(),
        "{what}: verify after more work: {:?}",
        report.problems
    );
}

fn crash_every_write(seed: u64, ops: usize, setup: Setup) -> u64 {
    let base = format_rig(setup);
    let work = workload(seed, ops);
    let (dry, dry_out) = run(&work, &base, setup, None);
    let total = dry.rail.writes();
    assert!(
        total > 20,
        "workload too small to be interesting ({total} writes)"
    );
    // The copy path under test is the one that ran.
    assert_eq!(
        dry_out.kernel_copies > 0,
        setup.kernel_copy,
        "seed {seed}: {} kernel copies in the uncut run",
        dry_out.kernel_copies
    );
    // Writes were acknowledged before their copies' commit, so the cuts fall between the
    // two as well.
    assert!(
        dry_out.parked_writes > 0,
        "seed {seed}: no write parked in the uncut run"
    );
    let mut cases = 0;
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    for k in 1..=total {
        let (rig, out) = run(&work, &base, setup, Some(k));
        assert!(rig.rail.is_cut());
        // Every unflushed write lost; every one kept; two random subsets with tearing.
        let variants: [(f64, f64); 4] = [(0.0, 0.0), (1.0, 0.0), (0.5, 0.3), (0.5, 0.8)];
        for (keep, tear) in variants {
            let o = rig.origin.crash_image(&mut rng, keep, tear);
            let s = rig.store_dev.crash_image(&mut rng, keep, tear);
            check_recovered(
                o,
                s,
                &out,
                &format!("seed {seed}, cut at write {k}/{total}, keep {keep} tear {tear}"),
            );
            cases += 1;
        }
    }
    cases
}

/// What an agent does with a store after a crash: open it, finish reclaiming what deleted
/// snapshots left, flush, close. Runs on the images `origin`/`store` with the power cut at
/// write `cut_at` of that.
fn recover(origin: &[u8], store: &[u8], cut_at: Option<u64>) -> Rig {
    let rail = PowerRail::new();
    if let Some(k) = cut_at {
        rail.cut_at_write(k);
    }
    let rig = Rig {
        origin: Arc::new(CrashDev::from_image(rail.clone(), origin.to_vec())),
        store_dev: Arc::new(CrashDev::from_image(rail.clone(), store.to_vec())),
        rail,
    };
    if let Ok(s) = Store::open(rig.origin.clone(), rig.store_dev.clone(), 0) {
        let reclaimed = s.reclaim_all();
        let flushed = s.flush();
        if cut_at.is_none() {
            reclaimed.expect("uncut recovery: reclaim");
            flushed.expect("uncut recovery: flush");
        }
        drop(s);
    } else {
        assert!(cut_at.is_some(), "uncut recovery could not open the store");
    }
    rig
}

#[test]
fn power_cut_during_recovery() {
    let base = format_rig(ROOMY);
    let mut rng = StdRng::seed_from_u64(0x2ec0);
    let (mut cases, mut recoveries_with_writes) = (0, 0);
    for seed in 0..2 {
        let work = workload(seed, 50);
        let total = run(&work, &base, ROOMY, None).0.rail.writes();
        // Every other first cut, rebuilt with a random half of its unflushed writes kept.
        for k in (1..=total).step_by(2) {
            let (rig, out) = run(&work, &base, ROOMY, Some(k));
            let o = rig.origin.crash_image(&mut rng, 0.5, 0.3);
            let s = rig.store_dev.crash_image(&mut rng, 0.5, 0.3);
            let writes = recover(&o, &s, None).rail.writes();
            if writes == 0 {
                continue;
            }
            recoveries_with_writes += 1;
            for k2 in 1..=writes {
                let again = recover(&o, &s, Some(k2));
                for (keep, tear) in [(0.0, 0.0), (1.0, 0.0), (0.5, 0.3)] {
                    check_recovered(
                        again.origin.crash_image(&mut rng, keep, tear),
                        again.store_dev.crash_image(&mut rng, keep, tear),
                        &out,
                        &format!(
                            "seed {seed}, cut at write {k}/{total}, recovery cut at write \
                             {k2}/{writes}, keep {keep} tear {tear}"
                        ),
                    );
                    cases += 1;
                }
            }
        }
    }
    println!(
        "recovery power-cut cases checked: {cases} ({recoveries_with_writes} recoveries that write)"
    );
    assert!(
        recoveries_with_writes >= 10 && cases >= 100,
        "recovery wrote too rarely to test: {recoveries_with_writes} recoveries, {cases} cases"
    );
}

/// Cuts at every write of `MULTISNAP_CRASH_SEEDS` (default 6) workloads on `setup`.
fn crash_every_write_of_every_seed(setup: Setup) {
    let seeds: u64 = std::env::var("MULTISNAP_CRASH_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6);
    let mut cases = 0;
    for seed in 0..seeds {
        cases += crash_every_write(seed, 50, setup);
    }
    println!("power-cut cases checked ({setup:?}): {cases}");
    assert!(cases >= 2000, "only {cases} crash cases ran");
}

#[test]
fn power_cut_at_every_write() {
    crash_every_write_of_every_seed(ROOMY);
}

/// A direct origin: no journal, each flush an origin sync; the copy-before-overwrite order
/// and what a flush acknowledged must survive every cut just the same.
#[test]
fn power_cut_at_every_write_with_a_direct_origin() {
    crash_every_write_of_every_seed(ROOMY_DIRECT);
}

#[test]
fn power_cut_at_every_write_with_kernel_copies() {
    crash_every_write_of_every_seed(ROOMY_KERNEL_COPY);
}

#[test]
fn uncut_run_matches_the_model() {
    for setup in [ROOMY, ROOMY_KERNEL_COPY, ROOMY_DIRECT] {
        let base = format_rig(setup);
        let mut work = workload(99, 80);
        work.push(Op::Flush);
        let (rig, mut out) = run(&work, &base, setup, None);
        assert_eq!(out.kernel_copies > 0, setup.kernel_copy, "{setup:?}");
        // Nothing lost: the images with every write applied.
        out.origin.flushed();
        for img in out.snapshots.values_mut() {
            img.flushed();
        }
        check_recovered(
            rig.origin.current_image(),
            rig.store_dev.current_image(),
            &out,
            &format!("no crash, {setup:?}"),
        );
    }
}

/// The store fills up during the workload: with the error policy copying writes fail and the
/// workload goes on; with invalidate-oldest the oldest snapshots are dropped. Power cuts at
/// every write of both.
#[test]
fn power_cut_with_a_full_store() {
    let mut cases = 0;
    for policy in [FullPolicy::Error, FullPolicy::InvalidateOldest] {
        let setup = Setup {
            store: SMALL_STORE,
            policy,
            // One policy each way: both paths meet a full store.
            kernel_copy: policy == FullPolicy::InvalidateOldest,
            origin_cache: OriginCache::Buffered,
        };
        let base = format_rig(setup);
        // Workloads that really hit the full store (or this test proves nothing): the first
        // two seeds whose uncut run is refused for space (error) or drops a snapshot.
        let mut chosen = Vec::new();
        for seed in 100..200 {
            let work = workload(seed, 80);
            let (_, out) = run(&work, &base, setup, None);
            let hit = match policy {
                FullPolicy::Error => out.full_hits > 0,
                FullPolicy::InvalidateOldest => out.invalidations > 0,
            };
            if hit {
                println!(
                    "{policy:?} seed {seed}: {} refusals for space, {} snapshots invalidated, {} made",
                    out.full_hits,
                    out.invalidations,
                    out.order.len()
                );
                chosen.push(seed);
                if chosen.len() == 2 {
                    break;
                }
            }
        }
        assert_eq!(chosen.len(), 2, "{policy:?}: no workload filled the store");
        for seed in chosen {
            cases += crash_every_write(seed, 80, setup);
        }
    }
    println!("full-store power-cut cases checked: {cases}");
    assert!(cases >= 1000, "only {cases} crash cases ran");
}

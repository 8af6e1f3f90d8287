//! Power cuts at every write of a clone's hydration, with writes to the clone, flushes and
//! snapshots of the clone interleaved between the hydration's steps.
//!
//! The source volume lives in memory, untouched by the cuts (it is another volume's store).
//! For each seed a workload runs once on the clone to count its device writes, then again
//! with the power cut at each write k; the surviving disks are rebuilt several ways (unflushed
//! writes all lost, all kept, random subsets with torn sectors). Each image must pass
//! `verify`, open, be wired to its source again, show every acknowledged snapshot of the clone
//! exactly as it was and the origin as the source snapshot plus the clone's writes (each byte
//! as the last completed flush left it or as a write since put it); then the hydration must
//! resume and complete without changing any of that, leave the clone's origin device holding
//! the data on its own, release the source snapshot and pass `verify` again.
//!
//! `MULTISNAP_CRASH_SEEDS=N` raises the number of workloads for a soak.

mod common;

use common::{rig, Image, Rig};

use multisnap_store::fault::PowerRail;
use multisnap_store::{verify, CreateOptions, MemDev, SnapshotId, Store, View};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::sync::Arc;

const SOURCE: usize = 96 * 1024 + 1536; // the last chunk is partial
const CLONE: usize = SOURCE + 10_000; // larger than the source: zeros past it
const STORE: usize = 1024 * 1024;
const CHUNK: u32 = 4096;

#[derive(Clone, Debug)]
enum Op {
    Write { offset: u64, data: Vec<u8> },
    Snapshot(String),
    HydrateStep(usize),
    Flush,
}

fn random_write(rng: &mut StdRng) -> (u64, Vec<u8>) {
    let len = rng.gen_range(1..3 * CHUNK as usize);
    let offset = rng.gen_range(0..(CLONE - len) as u64);
    (offset, vec![rng.gen_range(1..=255); len])
}

/// Writes, flushes and snapshots of the clone between small hydration steps, until the
/// hydration may have ended.
fn workload(seed: u64) -> Vec<Op> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = Vec::new();
    let mut n = 0;
    for _ in 0..36 {
        match rng.gen_range(0..12) {
            0..=4 => out.push(Op::HydrateStep(rng.gen_range(1..4))),
            5..=8 => {
                let (offset, data) = random_write(&mut rng);
                out.push(Op::Write { offset, data });
            }
            9 => {
                n += 1;
                out.push(Op::Snapshot(format!("c{n}")));
            }
            _ => out.push(Op::Flush),
        }
    }
    out
}

/// The source: a store in memory whose snapshot "base" the clone copies, holding a pattern
/// with zero stretches (chunks and blocks the hydration need not write), and its image.
fn source() -> (Arc<Store>, SnapshotId, Vec<u8>) {
    let image: Vec<u8> = (0..SOURCE)
        .map(|i| {
            if (i / 6000) % 3 == 1 {
                0
            } else {
                (i / 512) as u8 | 1
            }
        })
        .collect();
    let origin = Arc::new(MemDev::from_vec(image.clone()));
    let dev = Arc::new(MemDev::new(STORE as u64));
    let opts = CreateOptions {
        chunk_size: CHUNK,
        volume_name: "source".into(),
        cache_bytes: 0,
        ..Default::default()
    };
    let store = Arc::new(Store::create(origin, dev, &opts).expect("source"));
    let snap = store.create_snapshot("base").unwrap();
    // Changes after the snapshot the clone must never see.
    store.write_origin(0, &[0xEE; 20_000]).unwrap();
    (store, snap.id, image)
}

/// The clone's devices right after `create_clone`, as images.
fn format_clone(source: &Arc<Store>, snap: SnapshotId) -> (Vec<u8>, Vec<u8>) {
    multisnap_store::fault::set_min_cache_nodes(2);
    let origin = Arc::new(MemDev::new(CLONE as u64));
    let dev = Arc::new(MemDev::new(STORE as u64));
    let opts = CreateOptions {
        chunk_size: CHUNK,
        volume_name: "clone".into(),
        cache_bytes: 0,
        ..Default::default()
    };
    let store =
        Store::create_clone(origin.clone(), dev.clone(), &opts, source.clone(), snap).unwrap();
    drop(store);
    (origin.contents(), dev.contents())
}

struct Outcome {
    origin: Image,
    snapshots: BTreeMap<String, Vec<u8>>,
    maybe_created: Option<(String, Vec<u8>)>,
}

struct Fixture {
    source: Arc<Store>,
    initial: Vec<u8>,
    base: (Vec<u8>, Vec<u8>),
}

fn fixture() -> Fixture {
    let (source, snap, mut initial) = source();
    let base = format_clone(&source, snap);
    initial.resize(CLONE, 0);
    Fixture {
        source,
        initial,
        base,
    }
}

fn run(ops: &[Op], fx: &Fixture, cut_at: Option<u64>) -> (Rig, Outcome) {
    let rail = PowerRail::new();
    if let Some(k) = cut_at {
        rail.cut_at_write(k);
    }
    let rig = rig(rail, fx.base.0.clone(), fx.base.1.clone());
    let mut out = Outcome {
        origin: Image::new(fx.initial.clone()),
        snapshots: BTreeMap::new(),
        maybe_created: None,
    };
    let Ok(store) = Store::open(rig.origin.clone(), rig.store_dev.clone(), 0) else {
        return (rig, out);
    };
    store.attach_clone_source(fx.source.clone()).unwrap();
    for op in ops {
        let ok = match op {
            Op::Write { offset, data } => {
                out.origin.issue(*offset, data);
                let ok = store.write_origin(*offset, data).is_ok();
                if ok {
                    out.origin.acknowledged(*offset, data);
                }
                ok
            }
            Op::Snapshot(name) => match store.create_snapshot(name) {
                Ok(_) => {
                    out.origin.flushed();
                    out.snapshots
                        .insert(name.clone(), out.origin.current.clone());
                    true
                }
                Err(_) => {
                    out.maybe_created = Some((name.clone(), out.origin.current.clone()));
                    false
                }
            },
            Op::HydrateStep(n) => (0..*n).all(|_| store.hydrate_step(2).is_ok()),
            Op::Flush => {
                let ok = store.flush().is_ok();
                if ok {
                    out.origin.flushed();
                }
                ok
            }
        };
        if !ok {
            break;
        }
    }
    rig.rail.cut_now();
    drop(store);
    (rig, out)
}

fn read_all(store: &Store, view: View) -> Vec<u8> {
    common::read(store, view, 0, CLONE)
}

/// Every view as it must read, given what survived.
fn check_views(store: &Store, out: &Outcome, what: &str) -> BTreeMap<String, Vec<u8>> {
    let mut views = BTreeMap::new();
    for (name, image) in &out.snapshots {
        let info = store
            .snapshot_by_name(name)
            .unwrap_or_else(|_| panic!("{what}: acknowledged snapshot {name} lost"));
        let found = read_all(store, View::Snapshot(info.id));
        assert!(found == *image, "{what}: snapshot {name} changed");
        views.insert(name.clone(), found);
    }
    for info in store.list_snapshots() {
        if out.snapshots.contains_key(&info.name) {
            continue;
        }
        let found = read_all(store, View::Snapshot(info.id));
        let expected = out
            .maybe_created
            .as_ref()
            .filter(|(n, _)| *n == info.name)
            .unwrap_or_else(|| panic!("{what}: snapshot {} should not exist", info.name));
        assert!(found == expected.1, "{what}: snapshot {} wrong", info.name);
        views.insert(info.name.clone(), found);
    }
    let origin = read_all(store, View::Origin);
    if let Some(i) = out.origin.unexplained(&origin) {
        panic!(
            "{what}: origin byte {i} is {:#x}, which neither the source nor a write explains (hydration {:?})",
            origin[i],
            store.hydration()
        );
    }
    views.insert(String::new(), origin);
    views
}

/// Opens the surviving images, wires the clone to its source, checks it, completes the
/// hydration and checks that nothing a view reads changed, that the origin device holds the
/// origin on its own, that the source is released, and that the store verifies clean.
fn check_recovered(fx: &Fixture, images: (Vec<u8>, Vec<u8>), out: &Outcome, what: &str) {
    let origin = Arc::new(MemDev::from_vec(images.0));
    let dev = Arc::new(MemDev::from_vec(images.1));
    let report = verify(&*dev, Some(CLONE as u64)).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(report.is_clean(), "{what}: verify: {:?}", report.problems);
    let store = Store::open(origin.clone(), dev.clone(), 1 << 20)
        .unwrap_or_else(|e| panic!("{what}: open: {e}"));
    if store.clone_source_volume().is_some() {
        store
            .attach_clone_source(fx.source.clone())
            .unwrap_or_else(|e| panic!("{what}: attach: {e}"));
    }
    let before = check_views(&store, out, what);
    store
        .hydrate_all()
        .unwrap_or_else(|e| panic!("{what}: hydrate: {e}"));
    assert_eq!(store.hydration(), None);
    assert!(fx.source.clone_holders().is_empty(), "{what}: source held");
    let after = check_views(&store, out, &format!("{what}, hydrated"));
    assert!(before == after, "{what}: a view changed while hydrating");
    store.flush().unwrap();
    drop(store);
    assert!(
        origin.contents() == before[""],
        "{what}: after the hydration the origin device does not hold the origin"
    );
    let report = verify(&*dev, Some(CLONE as u64)).unwrap();
    assert!(
        report.is_clean(),
        "{what}: verify after: {:?}",
        report.problems
    );
    assert_eq!(
        (report.hydration, report.hydration_marks),
        (None, 0),
        "{what}: hydration state outlived the hydration"
    );
}

fn crash_every_write(seed: u64) -> u64 {
    let fx = fixture();
    let work = workload(seed);
    let (dry, out) = run(&work, &fx, None);
    let total = dry.rail.writes();
    assert!(
        !out.snapshots.is_empty() || seed > 0,
        "seed {seed}: workload made no snapshot"
    );
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    let mut cases = 0;
    for k in 1..=total {
        let (rig, out) = run(&work, &fx, Some(k));
        for (keep, tear) in [(0.0, 0.0), (1.0, 0.0), (0.5, 0.3)] {
            let images = (
                rig.origin.crash_image(&mut rng, keep, tear),
                rig.store_dev.crash_image(&mut rng, keep, tear),
            );
            check_recovered(
                &fx,
                images,
                &out,
                &format!("seed {seed}, cut at write {k}/{total}, keep {keep} tear {tear}"),
            );
            cases += 1;
        }
    }
    cases
}

#[test]
fn power_cut_at_every_write_of_a_hydration_with_writes() {
    let seeds: u64 = std::env::var("MULTISNAP_CRASH_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let mut cases = 0;
    for seed in 0..seeds {
        cases += crash_every_write(seed);
    }
    println!("clone hydration power-cut cases checked: {cases}");
    assert!(cases >= 600, "only {cases} crash cases ran");
}

//! Power cuts at every write of a rollback in place and its merge, with origin writes,
//! flushes, snapshot creations and deletions interleaved between the merge's steps.
//!
//! For each seed a workload runs once to count its device writes, then again with the power
//! cut at each write k; the surviving disks are rebuilt several ways (unflushed writes all
//! lost, all kept, random subsets with torn sectors). Each image must pass `verify`, open, show
//! every acknowledged snapshot exactly as it was and the origin as the rollback target plus
//! the writes made since (each byte as the last completed flush left it or as a write since
//! put it), and then the merge must resume and complete without changing any of that, leave
//! the origin device holding the data on its own, and pass `verify` again. Recovery is cut
//! too: the merge that an opened store resumes is cut at every write, and what survives
//! must pass the same checks.
//!
//! `MULTISNAP_CRASH_SEEDS=N` raises the number of workloads for a soak.

mod common;

use common::{rig, Image, Rig};

use multisnap_store::fault::PowerRail;
use multisnap_store::{verify, CreateOptions, MemDev, SnapshotState, Store, View};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::sync::Arc;

const ORIGIN: usize = 96 * 1024 + 1536; // the last chunk is partial
const STORE: usize = 1024 * 1024;
const CHUNK: u32 = 4096;

#[derive(Clone, Debug)]
enum Op {
    Write { offset: u64, data: Vec<u8> },
    Snapshot(String),
    Delete(String),
    Revert(String),
    MergeStep(usize),
    Flush,
}

fn random_write(rng: &mut StdRng) -> (u64, Vec<u8>) {
    let len = rng.gen_range(1..3 * CHUNK as usize);
    let offset = rng.gen_range(0..(ORIGIN - len) as u64);
    (offset, vec![rng.gen_range(1..=255); len])
}

/// Writes and snapshots, a rollback to one of the snapshots, then writes, flushes, new
/// snapshots and deletions of other snapshots between small merge steps, and a second
/// rollback once the first may have ended.
fn workload(seed: u64) -> Vec<Op> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = Vec::new();
    let mut live: Vec<String> = Vec::new();
    let mut n = 0;
    let mut snapshot = |out: &mut Vec<Op>, live: &mut Vec<String>| {
        n += 1;
        live.push(format!("s{n}"));
        out.push(Op::Snapshot(format!("s{n}")));
    };
    for round in 0..2 {
        for _ in 0..12 {
            match rng.gen_range(0..10) {
                0..=5 => {
                    let (offset, data) = random_write(&mut rng);
                    out.push(Op::Write { offset, data });
                }
                6..=7 => snapshot(&mut out, &mut live),
                _ => out.push(Op::Flush),
            }
        }
        if live.is_empty() {
            snapshot(&mut out, &mut live);
        }
        let target = live[rng.gen_range(0..live.len())].clone();
        out.push(Op::Revert(target.clone()));
        for _ in 0..if round == 0 { 24 } else { 10 } {
            match rng.gen_range(0..12) {
                0..=4 => out.push(Op::MergeStep(rng.gen_range(1..4))),
                5..=7 => {
                    let (offset, data) = random_write(&mut rng);
                    out.push(Op::Write { offset, data });
                }
                8 => snapshot(&mut out, &mut live),
                9 => {
                    let others: Vec<&String> = live.iter().filter(|s| **s != target).collect();
                    if !others.is_empty() {
                        let name = others[rng.gen_range(0..others.len())].clone();
                        live.retain(|s| *s != name);
                        out.push(Op::Delete(name));
                    }
                }
                _ => out.push(Op::Flush),
            }
        }
        // Let the first merge end before the second rollback (which is refused otherwise).
        out.push(Op::MergeStep(64));
    }
    out
}

struct Outcome {
    origin: Image,
    /// An interrupted rollback: the origin is either `origin` or exactly this.
    maybe_reverted: Option<Vec<u8>>,
    snapshots: BTreeMap<String, Vec<u8>>,
    maybe_created: Option<(String, Vec<u8>)>,
    maybe_deleted: Option<(String, Vec<u8>)>,
}

fn format_rig() -> (Vec<u8>, Vec<u8>) {
    multisnap_store::fault::set_min_cache_nodes(2);
    let origin = Arc::new(MemDev::from_vec(
        (0..ORIGIN).map(|i| (i / 512) as u8).collect(),
    ));
    let dev = Arc::new(MemDev::new(STORE as u64));
    let opts = CreateOptions {
        chunk_size: CHUNK,
        cache_bytes: 0,
        ..Default::default()
    };
    drop(Store::create(origin.clone(), dev.clone(), &opts).expect("format"));
    (origin.contents(), dev.contents())
}

fn run(ops: &[Op], base: &(Vec<u8>, Vec<u8>), cut_at: Option<u64>) -> (Rig, Outcome) {
    let rail = PowerRail::new();
    if let Some(k) = cut_at {
        rail.cut_at_write(k);
    }
    let rig = rig(rail, base.0.clone(), base.1.clone());
    let mut out = Outcome {
        origin: Image::new(base.0.clone()),
        maybe_reverted: None,
        snapshots: BTreeMap::new(),
        maybe_created: None,
        maybe_deleted: None,
    };
    let Ok(store) = Store::open(rig.origin.clone(), rig.store_dev.clone(), 0) else {
        return (rig, out);
    };
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
            Op::Delete(name) => {
                let image = out.snapshots.remove(name).expect("deletes a live snapshot");
                let id = store.snapshot_by_name(name).map(|s| s.id);
                let ok = id.and_then(|id| store.delete_snapshot(id)).is_ok();
                if !ok {
                    out.maybe_deleted = Some((name.clone(), image));
                }
                ok
            }
            Op::Revert(name) => {
                let target = out.snapshots[name].clone();
                let id = store.snapshot_by_name(name).expect("target exists").id;
                match store.revert_to(id) {
                    Ok(_) => {
                        out.origin = Image::new(target);
                        true
                    }
                    Err(e) if e.kind() == multisnap_store::ErrorKind::FailedPrecondition => {
                        // The first merge had not ended: refused, nothing changed.
                        true
                    }
                    Err(_) => {
                        out.maybe_reverted = Some(target);
                        false
                    }
                }
            }
            Op::MergeStep(n) => {
                let mut ok = true;
                for _ in 0..*n {
                    ok &= store.merge_step(2).is_ok();
                }
                ok
            }
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
    common::read(store, view, 0, ORIGIN)
}

/// Every view as it must read, given what survived: checked on the recovered store, and again
/// after its merge completed.
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
        if out.snapshots.contains_key(&info.name) || info.state != SnapshotState::Ready {
            continue;
        }
        let found = read_all(store, View::Snapshot(info.id));
        let expected = [&out.maybe_created, &out.maybe_deleted]
            .into_iter()
            .flatten()
            .find(|(n, _)| *n == info.name)
            .unwrap_or_else(|| panic!("{what}: snapshot {} should not exist", info.name));
        assert!(
            found == expected.1,
            "{what}: snapshot {} has wrong contents",
            info.name
        );
        views.insert(info.name.clone(), found);
    }
    let origin = read_all(store, View::Origin);
    let reverted = out.maybe_reverted.as_ref().is_some_and(|t| *t == origin);
    if !reverted {
        if let Some(i) = out.origin.unexplained(&origin) {
            panic!(
                "{what}: origin byte {i} is {:#x}, which neither the rollback nor a write explains (merge {:?})",
                origin[i],
                store.merge_progress()
            );
        }
    }
    views.insert(String::new(), origin);
    views
}

/// Opens the surviving images, checks them, completes the merge and checks that nothing a
/// view reads changed, that the origin device holds the origin on its own, and that the store
/// verifies clean throughout.
fn check_recovered(origin_img: Vec<u8>, store_img: Vec<u8>, out: &Outcome, what: &str) {
    let origin = Arc::new(MemDev::from_vec(origin_img));
    let dev = Arc::new(MemDev::from_vec(store_img));
    let report = verify(&*dev, Some(ORIGIN as u64)).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(report.is_clean(), "{what}: verify: {:?}", report.problems);
    let store = Store::open(origin.clone(), dev.clone(), 1 << 20)
        .unwrap_or_else(|e| panic!("{what}: open: {e}"));
    let before = check_views(&store, out, what);
    store
        .merge_all()
        .unwrap_or_else(|e| panic!("{what}: merge: {e}"));
    assert_eq!(store.merge_progress(), None);
    let after = check_views(&store, out, &format!("{what}, merged"));
    assert!(
        before == after,
        "{what}: a view changed while the merge completed"
    );
    store.flush().unwrap();
    drop(store);
    assert!(
        origin.contents() == before[""],
        "{what}: after the merge the origin device does not hold the origin"
    );
    let report = verify(&*dev, Some(ORIGIN as u64)).unwrap();
    assert!(
        report.is_clean(),
        "{what}: verify after merge: {:?}",
        report.problems
    );
    assert_eq!(
        report.merge_marks, 0,
        "{what}: merge marks outlived the merge"
    );
}

fn crash_every_write(seed: u64) -> u64 {
    let base = format_rig();
    let work = workload(seed);
    let (dry, out) = run(&work, &base, None);
    assert!(
        out.snapshots.len() > 1,
        "seed {seed}: workload made too few snapshots"
    );
    let total = dry.rail.writes();
    let mut rng = StdRng::seed_from_u64(seed ^ 0x7e7e);
    let mut cases = 0;
    for k in 1..=total {
        let (rig, out) = run(&work, &base, Some(k));
        for (keep, tear) in [(0.0, 0.0), (1.0, 0.0), (0.5, 0.3)] {
            check_recovered(
                rig.origin.crash_image(&mut rng, keep, tear),
                rig.store_dev.crash_image(&mut rng, keep, tear),
                &out,
                &format!("seed {seed}, cut at write {k}/{total}, keep {keep} tear {tear}"),
            );
            cases += 1;
        }
    }
    cases
}

#[test]
fn power_cut_at_every_write_of_a_rollback_and_its_merge() {
    let seeds: u64 = std::env::var("MULTISNAP_CRASH_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let mut cases = 0;
    for seed in 0..seeds {
        cases += crash_every_write(seed);
    }
    println!("rollback power-cut cases checked: {cases}");
    assert!(cases >= 1000, "only {cases} crash cases ran");
}

/// The merge a reopened store resumes, cut at every write: what survives opens, reads the
/// same and completes.
#[test]
fn power_cut_while_a_reopened_store_resumes_its_merge() {
    let base = format_rig();
    let work = workload(7);
    let total = run(&work, &base, None).0.rail.writes();
    let mut rng = StdRng::seed_from_u64(0xabc);
    let mut resumed = 0;
    for k in (1..=total).step_by(5) {
        let (rig, out) = run(&work, &base, Some(k));
        let o = rig.origin.crash_image(&mut rng, 0.5, 0.3);
        let s = rig.store_dev.crash_image(&mut rng, 0.5, 0.3);
        // Resume uncut first, to count the writes of the resumption.
        let dry = rig_resume(&o, &s, None);
        let Some(writes) = dry else { continue };
        if writes == 0 {
            continue;
        }
        resumed += 1;
        for k2 in 1..=writes {
            let rail = PowerRail::new();
            rail.cut_at_write(k2);
            let again = common::rig(rail, o.clone(), s.clone());
            if let Ok(store) = Store::open(again.origin.clone(), again.store_dev.clone(), 0) {
                let _ = store.merge_all();
                again.rail.cut_now();
                drop(store);
            }
            check_recovered(
                again.origin.crash_image(&mut rng, 0.5, 0.3),
                again.store_dev.crash_image(&mut rng, 0.5, 0.3),
                &out,
                &format!("cut at write {k}/{total}, resumption cut at write {k2}/{writes}"),
            );
        }
    }
    assert!(
        resumed >= 5,
        "only {resumed} first cuts left a merge to resume"
    );
}

/// Opens the images and completes the merge without a cut; the number of device writes that
/// took, or `None` when no merge was left to resume.
fn rig_resume(origin: &[u8], store: &[u8], cut_at: Option<u64>) -> Option<u64> {
    let rail = PowerRail::new();
    if let Some(k) = cut_at {
        rail.cut_at_write(k);
    }
    let r = rig(rail, origin.to_vec(), store.to_vec());
    let store = Store::open(r.origin.clone(), r.store_dev.clone(), 0).ok()?;
    store.merge_progress()?;
    store.merge_all().expect("uncut resumption");
    // Counted from the open: the cuts replay it too.
    let writes = r.rail.writes();
    drop(store);
    Some(writes)
}

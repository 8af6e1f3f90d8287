//! Power cuts at every write of a workload, over the origin and the store together.
//!
//! For each seed, a workload of origin writes, snapshot creations and flushes runs once to
//! count its device writes; then, for every write number k, it runs again with the power cut
//! at write k, and the surviving disks are rebuilt several ways (every unflushed write lost,
//! every one kept, random subsets with torn sectors). Each image must open, pass `verify`,
//! show every acknowledged snapshot byte for byte as it was, hold every origin write that a
//! completed flush covered, and keep working afterwards.
//!
//! `MULTISNAP_CRASH_SEEDS=N` raises the number of workloads for a soak.

use multisnap_store::fault::{CrashDev, PowerRail};
use multisnap_store::{verify, BlockDev, CreateOptions, MemDev, Store, View};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::Arc;

const ORIGIN: usize = 192 * 1024 + 1536; // not a chunk multiple: the last chunk is partial
const STORE: usize = 1024 * 1024;
const CHUNK: u32 = 4096;

#[derive(Clone, Debug)]
enum Op {
    Write { offset: u64, data: Vec<u8> },
    Snapshot(String),
    Flush,
}

fn workload(seed: u64, ops: usize) -> Vec<Op> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = Vec::new();
    let mut snaps = 0;
    for _ in 0..ops {
        match rng.gen_range(0..10) {
            0..=5 => {
                let len = rng.gen_range(1..3 * CHUNK as usize);
                let offset = rng.gen_range(0..(ORIGIN - len) as u64);
                let byte: u8 = rng.gen();
                out.push(Op::Write {
                    offset,
                    data: vec![byte; len],
                });
            }
            6..=7 => {
                snaps += 1;
                out.push(Op::Snapshot(format!("s{snaps}")));
            }
            _ => out.push(Op::Flush),
        }
    }
    out
}

/// What the workload knows when the power goes.
struct Outcome {
    /// The origin as of the last flush known to have completed.
    durable_origin: Vec<u8>,
    /// Writes issued since then (acknowledged or interrupted), any of which may have landed.
    unflushed: Vec<(u64, Vec<u8>)>,
    /// Acknowledged snapshots and their contents.
    snapshots: Vec<(String, Vec<u8>)>,
    /// A snapshot whose creation was interrupted: it may exist, and then must look like this.
    maybe_snapshot: Option<(String, Vec<u8>)>,
}

struct Rig {
    rail: Arc<PowerRail>,
    origin: Arc<CrashDev>,
    store_dev: Arc<CrashDev>,
}

fn format_rig() -> (Vec<u8>, Vec<u8>) {
    let origin = Arc::new(MemDev::new(ORIGIN as u64));
    let dev = Arc::new(MemDev::new(STORE as u64));
    let opts = CreateOptions {
        chunk_size: CHUNK,
        cache_bytes: 0, // the minimum: dirty nodes get evicted mid-transaction too
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
    let rig = Rig {
        origin: Arc::new(CrashDev::from_image(rail.clone(), base.0.clone())),
        store_dev: Arc::new(CrashDev::from_image(rail.clone(), base.1.clone())),
        rail,
    };
    let mut out = Outcome {
        durable_origin: base.0.clone(),
        unflushed: Vec::new(),
        snapshots: Vec::new(),
        maybe_snapshot: None,
    };
    let mut current = base.0.clone();
    let store = match Store::open(rig.origin.clone(), rig.store_dev.clone(), 0) {
        Ok(s) => s,
        Err(_) => return (rig, out),
    };
    for op in ops {
        match op {
            Op::Write { offset, data } => {
                out.unflushed.push((*offset, data.clone()));
                if store.write_origin(*offset, data).is_err() {
                    break;
                }
                let o = *offset as usize;
                current[o..o + data.len()].copy_from_slice(data);
            }
            Op::Snapshot(name) => match store.create_snapshot(name) {
                Ok(_) => {
                    out.durable_origin = current.clone();
                    out.unflushed.clear();
                    out.snapshots.push((name.clone(), current.clone()));
                }
                Err(_) => {
                    out.maybe_snapshot = Some((name.clone(), current.clone()));
                    break;
                }
            },
            Op::Flush => {
                if store.flush().is_err() {
                    break;
                }
                out.durable_origin = current.clone();
                out.unflushed.clear();
            }
        }
    }
    // Power off without a clean close: the Drop's final commit fails on a cut rail, and on an
    // uncut one it is cut first so nothing after the workload lands.
    rig.rail.cut_now();
    drop(store);
    (rig, out)
}

fn read_all(store: &Store, view: View) -> Vec<u8> {
    let mut b = vec![0u8; ORIGIN];
    store.read(view, 0, &mut b).expect("read after recovery");
    b
}

fn check_recovered(origin_img: Vec<u8>, store_img: Vec<u8>, out: &Outcome, what: &str) {
    let origin = Arc::new(MemDev::from_vec(origin_img));
    let dev = Arc::new(MemDev::from_vec(store_img));
    let report =
        verify(&*dev, Some(ORIGIN as u64)).unwrap_or_else(|e| panic!("{what}: no store: {e}"));
    assert!(report.is_clean(), "{what}: verify: {:?}", report.problems);
    let store = Store::open(origin.clone(), dev.clone(), 1 << 20)
        .unwrap_or_else(|e| panic!("{what}: open: {e}"));

    let listed = store.list_snapshots();
    for (name, image) in &out.snapshots {
        let info = store
            .snapshot_by_name(name)
            .unwrap_or_else(|_| panic!("{what}: acknowledged snapshot {name} lost"));
        assert!(
            read_all(&store, View::Snapshot(info.id)) == *image,
            "{what}: snapshot {name} changed"
        );
    }
    let mut expected = out.snapshots.len();
    if let Some((name, image)) = &out.maybe_snapshot {
        if let Ok(info) = store.snapshot_by_name(name) {
            expected += 1;
            assert!(
                read_all(&store, View::Snapshot(info.id)) == *image,
                "{what}: half-created snapshot {name} exists with wrong contents"
            );
        }
    }
    assert_eq!(
        listed.len(),
        expected,
        "{what}: unexpected snapshots {listed:?}"
    );

    // Each origin byte is either what the last completed flush left or what one of the
    // writes since then put there.
    let now = read_all(&store, View::Origin);
    for (i, &b) in now.iter().enumerate() {
        if b == out.durable_origin[i] {
            continue;
        }
        let explained = out.unflushed.iter().any(|(off, d)| {
            (*off as usize..*off as usize + d.len()).contains(&i) && d[i - *off as usize] == b
        });
        assert!(
            explained,
            "{what}: origin byte {i} is {b:#x}, which no write put there"
        );
    }

    // The recovered store keeps working: copy-out, commit, reopen, verify.
    let snap = store
        .create_snapshot("after-recovery")
        .expect("snapshot after recovery");
    store
        .write_origin(0, &vec![0xee; 3 * CHUNK as usize])
        .expect("write after recovery");
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

fn crash_every_write(seed: u64, ops: usize) -> u64 {
    let base = format_rig();
    let work = workload(seed, ops);
    let (dry, _) = run(&work, &base, None);
    let total = dry.rail.writes();
    assert!(
        total > 20,
        "workload too small to be interesting ({total} writes)"
    );
    let mut cases = 0;
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    for k in 1..=total {
        let (rig, out) = run(&work, &base, Some(k));
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

#[test]
fn power_cut_at_every_write() {
    let seeds: u64 = std::env::var("MULTISNAP_CRASH_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    let mut cases = 0;
    for seed in 0..seeds {
        cases += crash_every_write(seed, 40);
    }
    println!("power-cut cases checked: {cases}");
    assert!(cases >= 1000, "only {cases} crash cases ran");
}

#[test]
fn uncut_run_matches_the_model() {
    let base = format_rig();
    let work = workload(99, 60);
    let (rig, out) = run(&work, &base, None);
    // Nothing lost: the images with every write applied.
    let full = Outcome {
        durable_origin: rig.origin.current_image(),
        unflushed: Vec::new(),
        snapshots: out.snapshots.clone(),
        maybe_snapshot: None,
    };
    let _ = rig.store_dev.size();
    check_recovered(
        rig.origin.current_image(),
        rig.store_dev.current_image(),
        &full,
        "no crash",
    );
}

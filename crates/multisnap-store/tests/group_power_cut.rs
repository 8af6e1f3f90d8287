//! Power cuts during a group snapshot of two volumes (`create_snapshot_group`).
//!
//! Both volumes' origins and stores hang on one power rail, as they would on one machine. Each
//! volume takes acknowledged (unflushed) writes, then the group is cut; the power goes at the
//! k-th device write of the cut, for every k the uncut run makes, and each cut is rebuilt with
//! none, all and a random half of the unflushed writes. Whatever survives:
//! - both stores open and `verify` finds nothing wrong;
//! - a member that survived reads exactly what its volume held when the cut began (every
//!   acknowledged write, made durable by the cut before the member's record);
//! - when the call returned success, every member survived.
//!
//! Which members survive a cut that the call did not finish is the agent's business: its group
//! record is written only after every member exists (see the agent's `groups` module).

mod common;
use common::{pattern, rig, Rig};
use multisnap_store::fault::PowerRail;
use multisnap_store::{create_snapshot_group, verify, CreateOptions, MemDev, Store, View};
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::sync::Arc;

const CHUNK: usize = 4096;
const ORIGIN: usize = 64 * CHUNK;
const STORE: usize = 1 << 20;
const VOLUMES: usize = 2;

struct Base {
    origins: Vec<Vec<u8>>,
    stores: Vec<Vec<u8>>,
}

fn prepare() -> Base {
    let opts = CreateOptions {
        chunk_size: CHUNK as u32,
        ..Default::default()
    };
    let mut base = Base {
        origins: vec![],
        stores: vec![],
    };
    for v in 0..VOLUMES {
        let origin = Arc::new(MemDev::from_vec(pattern(v as u8, ORIGIN)));
        let dev = Arc::new(MemDev::new(STORE as u64));
        let store = Store::create(origin.clone(), dev.clone(), &opts).expect("format");
        // An older snapshot, so the writes below copy out and the cut has metadata to sync.
        store.create_snapshot("older").expect("older");
        store.flush().expect("flush");
        drop(store);
        base.origins.push(origin.contents());
        base.stores.push(dev.contents());
    }
    base
}

struct Run {
    rail: Arc<PowerRail>,
    rigs: Vec<Rig>,
    /// What each volume held once its writes were acknowledged: what every member must read.
    expected: Vec<Vec<u8>>,
    /// The group call succeeded.
    ok: bool,
    /// Device writes the group call made.
    group_writes: u64,
}

fn run(base: &Base, cut_at: Option<u64>) -> Run {
    let rail = PowerRail::new();
    let rigs: Vec<Rig> = (0..VOLUMES)
        .map(|v| {
            rig(
                rail.clone(),
                base.origins[v].clone(),
                base.stores[v].clone(),
            )
        })
        .collect();
    let stores: Vec<Store> = rigs
        .iter()
        .map(|r| Store::open(r.origin.clone(), r.store_dev.clone(), 0).expect("open"))
        .collect();
    let mut expected = Vec::new();
    for (v, store) in stores.iter().enumerate() {
        let mut image = base.origins[v].clone();
        for c in [1usize, 7, 30] {
            let data = pattern(0x40 + (v * 16 + c) as u8, CHUNK);
            store
                .write_origin((c * CHUNK) as u64, &data)
                .expect("write");
            image[c * CHUNK..(c + 1) * CHUNK].copy_from_slice(&data);
        }
        expected.push(image);
    }
    // The cut point counts from here: only the group's own writes are cut.
    let before = rail.writes();
    if let Some(k) = cut_at {
        rail.cut_at_write(before + k);
    }
    let refs: Vec<&Store> = stores.iter().collect();
    let ok = create_snapshot_group(&refs, "g").is_ok();
    let group_writes = rail.writes() - before;
    rail.cut_now();
    drop(stores);
    Run {
        rail,
        rigs,
        expected,
        ok,
        group_writes,
    }
}

fn check(images: &[(Vec<u8>, Vec<u8>)], expected: &[Vec<u8>], ok: bool, what: &str) {
    for (v, (origin, store)) in images.iter().enumerate() {
        let dev = Arc::new(MemDev::from_vec(store.clone()));
        let report = verify(&*dev, Some(ORIGIN as u64)).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(
            report.is_clean(),
            "{what}: volume {v}: {:?}",
            report.problems
        );
        let store = Store::open(Arc::new(MemDev::from_vec(origin.clone())), dev, 1 << 20)
            .unwrap_or_else(|e| panic!("{what}: volume {v}: open: {e}"));
        match store.snapshot_by_name("g") {
            Ok(member) => {
                let mut buf = vec![0u8; ORIGIN];
                store.read(View::Snapshot(member.id), 0, &mut buf).unwrap();
                assert!(
                    buf == expected[v],
                    "{what}: volume {v}'s member lacks a write acknowledged before the cut"
                );
            }
            Err(_) => assert!(!ok, "{what}: volume {v} lost a member of a finished group"),
        }
    }
}

#[test]
fn power_cut_at_every_write_of_a_group_snapshot() {
    let base = prepare();
    let uncut = run(&base, None);
    assert!(uncut.ok, "the uncut group failed");
    let total = uncut.group_writes;
    let done: Vec<_> = uncut
        .rigs
        .iter()
        .map(|r| (r.origin.current_image(), r.store_dev.current_image()))
        .collect();
    check(&done, &uncut.expected, true, "no cut");
    let mut rng = StdRng::seed_from_u64(11);
    let mut cases = 0;
    for k in 1..=total {
        let r = run(&base, Some(k));
        assert!(r.rail.is_cut());
        for keep in [0.0, 1.0, 0.5] {
            let images: Vec<_> = r
                .rigs
                .iter()
                .map(|r| {
                    (
                        r.origin.crash_image(&mut rng, keep, 0.0),
                        r.store_dev.crash_image(&mut rng, keep, 0.2),
                    )
                })
                .collect();
            let what = format!("cut at write {k} of {total}, keep {keep}");
            check(&images, &r.expected, r.ok, &what);
            cases += 1;
        }
    }
    eprintln!("group power cut: {total} cut points, {cases} crash images checked");
    assert!(
        cases >= 3 * 4,
        "too few cut points ({cases}) to mean anything"
    );
}

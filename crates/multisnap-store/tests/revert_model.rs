//! Model-based tests of rollback in place: random sequences of origin writes, snapshot
//! creations (read-only and writable) and deletions, writes to writable snapshots, rollbacks,
//! merge steps of random sizes, flushes and reopens, checked against a model that keeps the
//! origin and every snapshot as plain byte vectors.
//!
//! The model's rule for a rollback is the whole specification: the origin becomes the target's
//! image at once, and nothing else changes, ever: no view changes during a merge step, a
//! reopen, or the merge's end. Every view is read whole after every rollback and merge step
//! (and the views a write touched after every write), and every flush and reopen runs
//! `verify`. Operations the store must refuse while a merge runs (a second rollback,
//! deleting the target, making it writable) and rollbacks to writable snapshots are checked to
//! be refused with a failed precondition and to change nothing.
//!
//! `MULTISNAP_PROPTEST_CASES` raises the number of random cases for soak runs.

mod common;

use common::pattern;

use multisnap_store::{
    verify, CreateOptions, ErrorKind, MemDev, SnapshotId, Store, StoreError, View,
};
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::sync::Arc;

const DEFAULT_CASES: u32 = 128;

fn cases() -> u32 {
    common::proptest_cases(DEFAULT_CASES)
}

#[derive(Clone, Debug)]
enum Op {
    /// Origin write at chunk `chunk % chunks`, `shift` bytes in, `len` bytes (clamped).
    Write {
        chunk: u32,
        shift: u16,
        len: u32,
        fill: u8,
    },
    Snapshot {
        writable: bool,
    },
    /// Writes into the writable snapshot `pick % count`, if any.
    SnapshotWrite {
        pick: usize,
        chunk: u32,
        len: u32,
        fill: u8,
    },
    Delete {
        pick: usize,
    },
    /// Rolls back to snapshot `pick % count`.
    Revert {
        pick: usize,
    },
    MergeStep {
        chunks: u8,
    },
    Flush,
    Reopen {
        flush: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (any::<u32>(), any::<u16>(), 1u32..40_000, any::<u8>())
            .prop_map(|(chunk, shift, len, fill)| Op::Write { chunk, shift, len, fill }),
        3 => prop::bool::weighted(0.3).prop_map(|writable| Op::Snapshot { writable }),
        2 => (any::<usize>(), any::<u32>(), 1u32..20_000, any::<u8>())
            .prop_map(|(pick, chunk, len, fill)| Op::SnapshotWrite { pick, chunk, len, fill }),
        1 => any::<usize>().prop_map(|pick| Op::Delete { pick }),
        3 => any::<usize>().prop_map(|pick| Op::Revert { pick }),
        5 => (1u8..6).prop_map(|chunks| Op::MergeStep { chunks }),
        1 => Just(Op::Flush),
        1 => any::<bool>().prop_map(|flush| Op::Reopen { flush }),
    ]
}

struct Snap {
    writable: bool,
    image: Vec<u8>,
}

struct Harness {
    cs: u64,
    origin_dev: Arc<MemDev>,
    dev: Arc<MemDev>,
    store: Option<Store>,
    origin: Vec<u8>,
    snaps: BTreeMap<u64, Snap>,
    step: usize,
}

impl Harness {
    fn new(cs: u32, size: u64, seed: u8) -> Harness {
        let initial = pattern(seed, size as usize);
        let origin_dev = Arc::new(MemDev::from_vec(initial.clone()));
        let dev = Arc::new(MemDev::new(8 << 20));
        let opts = CreateOptions {
            chunk_size: cs,
            cache_bytes: 0,
            ..Default::default()
        };
        let store = Store::create(origin_dev.clone(), dev.clone(), &opts).unwrap();
        Harness {
            cs: cs as u64,
            origin_dev,
            dev,
            store: Some(store),
            origin: initial,
            snaps: BTreeMap::new(),
            step: 0,
        }
    }

    fn store(&self) -> &Store {
        self.store.as_ref().unwrap()
    }

    fn size(&self) -> u64 {
        self.origin.len() as u64
    }

    fn image(&self, view: View) -> &[u8] {
        match view {
            View::Origin => &self.origin,
            View::Snapshot(id) => &self.snaps[&id.0].image,
        }
    }

    fn check(&self, view: View, off: u64, len: usize) {
        let got = common::read(self.store(), view, off, len);
        let want = &self.image(view)[off as usize..off as usize + len];
        if got != want {
            let first = got.iter().zip(want).position(|(a, b)| a != b).unwrap_or(0);
            panic!(
                "step {}: {view:?} differs from the model in {off}+{len}, first at byte {} (merge {:?})",
                self.step,
                off + first as u64,
                self.store().merge_progress()
            );
        }
    }

    fn check_all(&self) {
        self.check(View::Origin, 0, self.size() as usize);
        for id in self.snaps.keys() {
            self.check(View::Snapshot(SnapshotId(*id)), 0, self.size() as usize);
        }
        // The allocation map marks every byte that reads as non-zero as data.
        for view in std::iter::once(View::Origin)
            .chain(self.snaps.keys().map(|id| View::Snapshot(SnapshotId(*id))))
        {
            let mut pos = 0u64;
            while pos < self.size() {
                let runs = self
                    .store()
                    .allocation(view, pos, self.size() - pos)
                    .unwrap();
                for (n, data) in runs {
                    if !data {
                        let img = &self.image(view)[pos as usize..(pos + n) as usize];
                        assert!(
                            img.iter().all(|&b| b == 0),
                            "step {}: {view:?} reports a hole at {pos}+{n} over data",
                            self.step
                        );
                    }
                    pos += n;
                }
            }
        }
    }

    fn verify_clean(&self) {
        let r = verify(&*self.dev, Some(self.size())).unwrap();
        assert!(r.is_clean(), "step {}: verify: {:?}", self.step, r.problems);
    }

    fn pick(&self, pick: usize, writable: Option<bool>) -> Option<u64> {
        let ids: Vec<u64> = self
            .snaps
            .iter()
            .filter(|(_, s)| writable.is_none_or(|w| s.writable == w))
            .map(|(id, _)| *id)
            .collect();
        (!ids.is_empty()).then(|| ids[pick % ids.len()])
    }

    fn expect_refused(&self, r: Result<impl std::fmt::Debug, StoreError>, what: &str) {
        match r {
            Err(e) => assert_eq!(
                e.kind(),
                ErrorKind::FailedPrecondition,
                "step {}: {what}: {e}",
                self.step
            ),
            Ok(v) => panic!("step {}: {what} was accepted: {v:?}", self.step),
        }
    }

    fn merging_target(&self) -> Option<u64> {
        self.store().merge_progress().map(|p| p.target.0)
    }

    fn apply(&mut self, op: &Op) {
        let (size, cs) = (self.size(), self.cs);
        let chunks = size.div_ceil(cs);
        match *op {
            Op::Write {
                chunk,
                shift,
                len,
                fill,
            } => {
                let off = ((chunk as u64 % chunks) * cs + shift as u64 % cs).min(size - 1);
                let n = (len as u64).min(size - off) as usize;
                let data = pattern(fill, n);
                self.store().write_origin(off, &data).unwrap();
                self.origin[off as usize..off as usize + n].copy_from_slice(&data);
                let first = off / cs * cs;
                let end = ((off + n as u64).div_ceil(cs) * cs).min(size);
                self.check(View::Origin, first, (end - first) as usize);
                for id in self.snaps.keys() {
                    self.check(
                        View::Snapshot(SnapshotId(*id)),
                        first,
                        (end - first) as usize,
                    );
                }
            }
            Op::Snapshot { writable } => {
                let name = format!("s{}", self.step);
                let info = self.store().create_snapshot_with(&name, writable).unwrap();
                self.snaps.insert(
                    info.id.0,
                    Snap {
                        writable,
                        image: self.origin.clone(),
                    },
                );
                self.check(View::Snapshot(info.id), 0, size as usize);
            }
            Op::SnapshotWrite {
                pick,
                chunk,
                len,
                fill,
            } => {
                let Some(id) = self.pick(pick, Some(true)) else {
                    return;
                };
                let off = (chunk as u64 % chunks) * cs + 100;
                let off = off.min(size - 1);
                let n = (len as u64).min(size - off) as usize;
                let data = pattern(fill, n);
                self.store()
                    .write_snapshot(SnapshotId(id), off, &data)
                    .unwrap();
                let img = &mut self.snaps.get_mut(&id).unwrap().image;
                img[off as usize..off as usize + n].copy_from_slice(&data);
                self.check(View::Snapshot(SnapshotId(id)), 0, size as usize);
                self.check(View::Origin, 0, size as usize);
            }
            Op::Delete { pick } => {
                let Some(id) = self.pick(pick, None) else {
                    return;
                };
                if self.merging_target() == Some(id) {
                    let r = self.store().delete_snapshot(SnapshotId(id));
                    self.expect_refused(r, "deleting the rollback's target");
                    let r = self.store().set_writable(SnapshotId(id), true);
                    self.expect_refused(r, "making the rollback's target writable");
                } else {
                    self.store().delete_snapshot(SnapshotId(id)).unwrap();
                    self.store().reclaim_all().unwrap();
                    self.snaps.remove(&id);
                }
                self.check_all();
            }
            Op::Revert { pick } => {
                let Some(id) = self.pick(pick, None) else {
                    return;
                };
                let merging = self.merging_target();
                let r = self.store().revert_to(SnapshotId(id));
                if merging.is_some() {
                    self.expect_refused(r, "a second rollback during a merge");
                } else if self.snaps[&id].writable {
                    self.expect_refused(r, "a rollback to a writable snapshot");
                } else {
                    let p = r.unwrap_or_else(|e| panic!("step {}: revert: {e}", self.step));
                    assert_eq!((p.target.0, p.cursor), (id, 0));
                    self.origin = self.snaps[&id].image.clone();
                }
                self.check_all();
            }
            Op::MergeStep { chunks } => {
                let before = self.store().merge_progress();
                let after = self.store().merge_step(chunks as usize).unwrap();
                if let (Some(b), Some(a)) = (&before, &after) {
                    assert!(
                        a.cursor > b.cursor,
                        "step {}: the cursor must move",
                        self.step
                    );
                }
                self.check_all();
            }
            Op::Flush => {
                self.store().flush().unwrap();
                self.verify_clean();
            }
            Op::Reopen { flush } => self.reopen(flush),
        }
        self.step += 1;
    }

    fn reopen(&mut self, flush: bool) {
        let store = self.store.take().unwrap();
        let merging = store.merge_progress();
        if flush {
            store.flush().unwrap();
        }
        drop(store);
        self.verify_clean();
        self.store = Some(Store::open(self.origin_dev.clone(), self.dev.clone(), 0).unwrap());
        assert_eq!(
            self.store().merge_progress(),
            merging,
            "step {}: the merge state after reopen",
            self.step
        );
        self.check_all();
    }
}

fn run(cs: u32, size: u64, seed: u8, ops: &[Op]) {
    let mut h = Harness::new(cs, size, seed);
    for op in ops {
        h.apply(op);
    }
    h.store().merge_all().unwrap();
    assert_eq!(h.store().merge_progress(), None);
    h.check_all();
    h.reopen(true);
    let r = verify(&*h.dev, Some(size)).unwrap();
    assert_eq!(r.merge_marks, 0, "no merge marks outlive the merge");
    // The merge left the origin alone holding the data: the origin device itself, read
    // without the store, is the model's origin once flushed.
    h.store().flush().unwrap();
    assert!(
        h.origin_dev.contents() == h.origin,
        "the origin device after the merge differs from the model"
    );
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn revert_model_4k(seed in any::<u8>(), extra in 0u64..9000, ops in prop::collection::vec(op(), 1..60)) {
        run(4096, 160 * 1024 + extra, seed, &ops);
    }

    #[test]
    fn revert_model_64k(seed in any::<u8>(), extra in 0u64..70_000, ops in prop::collection::vec(op(), 1..60)) {
        run(65536, 512 * 1024 + extra, seed, &ops);
    }
}

/// A revert on a store of an older format version converts it to version 4 first (both
/// slots), and the converted store stays version 4 after the merge ends.
#[test]
fn revert_converts_the_store_to_version_4() {
    let (origin, dev, store) = common::mem_store(
        256 * 1024,
        4 << 20,
        &CreateOptions {
            chunk_size: 4096,
            ..Default::default()
        },
    );
    let version = |dev: &MemDev| u32::from_le_bytes(dev.contents()[4..8].try_into().unwrap());
    let slot_versions = |dev: &MemDev| {
        let c = dev.contents();
        (
            u32::from_le_bytes(c[4..8].try_into().unwrap()),
            u32::from_le_bytes(c[4096 + 4..4096 + 8].try_into().unwrap()),
        )
    };
    store.write_origin(0, &[1u8; 8192]).unwrap();
    let s = store.create_snapshot("a").unwrap();
    store.write_origin(4096, &[2u8; 8192]).unwrap();
    store.flush().unwrap();
    assert!(
        version(&dev) < 4,
        "a new store is written as an older version"
    );
    store.revert_to(s.id).unwrap();
    assert_eq!(slot_versions(&dev), (4, 4), "both slots converted");
    assert_eq!(common::read(&store, View::Origin, 0, 12288), {
        let mut v = vec![1u8; 8192];
        v.extend([0u8; 4096]);
        v
    });
    store.merge_all().unwrap();
    store.flush().unwrap();
    drop(store);
    assert_eq!(
        slot_versions(&dev),
        (4, 4),
        "version 4 is kept after the merge"
    );
    let store = Store::open(origin, dev.clone(), 0).unwrap();
    assert_eq!(store.merge_progress(), None);
    common::assert_clean(&store, None);
}

/// Writers on four threads write into the origin while a fifth runs the merge and a sixth
/// reads the snapshots whole: every write lands on top of the rollback (each thread's chunks
/// end as its own model says), the snapshot taken before the rollback and the target never
/// change, and the store verifies clean, before and after a reopen.
#[test]
fn concurrent_writes_during_a_merge() {
    use rand::{Rng, SeedableRng};
    const CS: u64 = 4096;
    const SIZE: u64 = 2 << 20;
    let (origin, dev, store) = common::mem_store(
        SIZE,
        32 << 20,
        &CreateOptions {
            chunk_size: CS as u32,
            cache_bytes: 0,
            ..Default::default()
        },
    );
    let a = pattern(1, SIZE as usize);
    let b = pattern(2, SIZE as usize);
    store.write_origin(0, &a).unwrap();
    let target = store.create_snapshot("target").unwrap().id;
    // Most chunks change, some stay: both kinds of chunk meet the merge.
    for c in (0..SIZE / CS).filter(|c| c % 5 != 0) {
        let at = (c * CS) as usize;
        store
            .write_origin(c * CS, &b[at..at + CS as usize])
            .unwrap();
    }
    let mut before = a.clone();
    for c in (0..SIZE / CS).filter(|c| c % 5 != 0) {
        let at = (c * CS) as usize;
        before[at..at + CS as usize].copy_from_slice(&b[at..at + CS as usize]);
    }
    let older = store.create_snapshot("older").unwrap().id;
    store.revert_to(target).unwrap();
    let store = Arc::new(store);
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..4u64)
        .map(|t| {
            let store = store.clone();
            let mut image = a.clone();
            std::thread::spawn(move || {
                let mut rng = rand::rngs::StdRng::seed_from_u64(t);
                for i in 0..300 {
                    let c = rng.gen_range(0..SIZE / CS / 4) * 4 + t;
                    let off = c * CS + rng.gen_range(0..CS);
                    let len = rng.gen_range(1..=(c * CS + CS - off)) as usize;
                    let data = pattern((t * 50 + i % 50) as u8, len);
                    store.write_origin(off, &data).unwrap();
                    image[off as usize..off as usize + len].copy_from_slice(&data);
                    if i % 60 == 0 {
                        store.flush().unwrap();
                    }
                }
                (t, image)
            })
        })
        .collect();
    let merger = {
        let store = store.clone();
        std::thread::spawn(move || while store.merge_step(8).unwrap().is_some() {})
    };
    let reader = {
        let (store, done, a, before) = (store.clone(), done.clone(), a.clone(), before.clone());
        std::thread::spawn(move || {
            let mut rounds = 0;
            while !done.load(std::sync::atomic::Ordering::Acquire) || rounds == 0 {
                assert!(common::read(&store, View::Snapshot(target), 0, SIZE as usize) == a);
                assert!(common::read(&store, View::Snapshot(older), 0, SIZE as usize) == before);
                rounds += 1;
            }
            rounds
        })
    };
    let mut expected = a.clone();
    for w in writers {
        let (t, image) = w.join().unwrap();
        for c in (0..SIZE / CS).filter(|c| c % 4 == t) {
            let at = (c * CS) as usize;
            expected[at..at + CS as usize].copy_from_slice(&image[at..at + CS as usize]);
        }
    }
    merger.join().unwrap();
    store.merge_all().unwrap();
    done.store(true, std::sync::atomic::Ordering::Release);
    assert!(reader.join().unwrap() > 0);
    assert!(common::read(&store, View::Origin, 0, SIZE as usize) == expected);
    common::assert_clean(&store, Some(SIZE));
    drop(store);
    let store = Store::open(origin.clone(), dev, 0).unwrap();
    assert!(common::read(&store, View::Origin, 0, SIZE as usize) == expected);
    assert!(common::read(&store, View::Snapshot(older), 0, SIZE as usize) == before);
    store.flush().unwrap();
    assert!(origin.contents() == expected);
}

/// A resize and a rollback exclude each other: the merge walks the chunks of the size it
/// started with, and a snapshot taken before the volume grew has no data for the new part.
#[test]
fn rollback_and_resize_exclude_each_other() {
    let opts = CreateOptions {
        chunk_size: 4096,
        cache_bytes: 0,
        journal_bytes: 64 * 1024,
        ..Default::default()
    };
    let (_origin, _dev, store) = common::mem_store(256 * 1024, 2 << 20, &opts);
    store.write_origin(0, &[3u8; 65536]).unwrap();
    let small = store.create_snapshot("small").unwrap();
    store.resize(512 * 1024, 3 << 20).unwrap();
    let e = store.revert_to(small.id).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::FailedPrecondition, "{e}");
    assert_eq!(store.merge_progress(), None);

    let full = store.create_snapshot("full").unwrap();
    store.write_origin(0, &[4u8; 8192]).unwrap();
    store.revert_to(full.id).unwrap();
    let e = store.resize(1 << 20, 4 << 20).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::FailedPrecondition, "{e}");
    assert!(e.to_string().contains("resizing the volume"), "{e}");
    assert_eq!(common::read(&store, View::Origin, 0, 8192), vec![3u8; 8192]);
    store.merge_all().unwrap();
    store.resize(1 << 20, 4 << 20).unwrap();
    assert_eq!(common::read(&store, View::Origin, 0, 8192), vec![3u8; 8192]);
    common::assert_clean(&store, Some(1 << 20));
}

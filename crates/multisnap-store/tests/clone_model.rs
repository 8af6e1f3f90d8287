//! Model-based tests of clones: a source volume with a snapshot, a clone of it (of the same or
//! another chunk size, as large as the snapshot or larger), then random sequences of writes to
//! the clone and to the source, snapshots of the clone (read-only and writable) and writes to
//! them, deletions, hydration steps of random sizes, flushes, reopens and power cuts, checked
//! against a model that keeps every image as a plain byte vector.
//!
//! The model's rule for a clone is the whole specification: it reads as the source snapshot
//! (zeros past its end) from the moment it is made, it changes only by its own writes, and
//! nothing the source does, no hydration step, no reopen and no power cut changes what any
//! view of the clone reads. Every view is read whole after every hydration step, reopen and
//! power cut (and the views a write touched after every write), the allocation map never
//! reports a hole over data, and every flush and reopen runs `verify`. While the clone
//! hydrates, deleting the source snapshot or making it writable must be refused with a failed
//! precondition naming the clone; once it has ended, the source snapshot can go and the clone
//! keeps its contents.
//!
//! A power cut here keeps every write the devices took (memory devices have no cache): the
//! store is abandoned without its closing commit and reopened from copies of both devices.
//! Each view must then read, byte for byte, what the last flush left or what a write since
//! put there (replaying the origin write journal may take back an unflushed write), and the
//! model adopts what it reads. `clone_power_cut.rs` cuts at every single write instead.
//!
//! `MULTISNAP_PROPTEST_CASES` raises the number of random cases for soak runs.

mod common;

use common::{pattern, Image};
use multisnap_store::{
    verify, CreateOptions, ErrorKind, MemDev, SnapshotId, Store, StoreError, View,
};
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::sync::Arc;

const DEFAULT_CASES: u32 = 96;
const SOURCE_CHUNK: u32 = 4096;

fn cases() -> u32 {
    common::proptest_cases(DEFAULT_CASES)
}

#[derive(Clone, Debug)]
enum Op {
    /// Clone origin write at chunk `chunk % chunks`, `shift` bytes in, `len` bytes (clamped).
    Write {
        chunk: u32,
        shift: u16,
        len: u32,
        fill: u8,
    },
    /// A write to the source's origin, which the clone must never see.
    SourceWrite {
        at: u32,
        len: u32,
        fill: u8,
    },
    Snapshot {
        writable: bool,
    },
    SnapshotWrite {
        pick: usize,
        chunk: u32,
        len: u32,
        fill: u8,
    },
    Delete {
        pick: usize,
    },
    /// Deletes (or tries to) the source snapshot.
    DeleteSource,
    HydrateStep {
        chunks: u8,
    },
    Flush,
    Reopen {
        flush: bool,
    },
    PowerCut,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (any::<u32>(), any::<u16>(), 1u32..40_000, any::<u8>())
            .prop_map(|(chunk, shift, len, fill)| Op::Write { chunk, shift, len, fill }),
        2 => (any::<u32>(), 1u32..20_000, any::<u8>())
            .prop_map(|(at, len, fill)| Op::SourceWrite { at, len, fill }),
        3 => prop::bool::weighted(0.3).prop_map(|writable| Op::Snapshot { writable }),
        2 => (any::<usize>(), any::<u32>(), 1u32..20_000, any::<u8>())
            .prop_map(|(pick, chunk, len, fill)| Op::SnapshotWrite { pick, chunk, len, fill }),
        1 => any::<usize>().prop_map(|pick| Op::Delete { pick }),
        1 => Just(Op::DeleteSource),
        6 => (1u8..6).prop_map(|chunks| Op::HydrateStep { chunks }),
        1 => Just(Op::Flush),
        1 => any::<bool>().prop_map(|flush| Op::Reopen { flush }),
        1 => Just(Op::PowerCut),
    ]
}

struct Snap {
    writable: bool,
    image: Image,
}

struct Harness {
    cs: u64,
    source: Arc<Store>,
    source_snapshot: Option<SnapshotId>,
    source_size: u64,
    origin_dev: Arc<MemDev>,
    dev: Arc<MemDev>,
    store: Option<Store>,
    origin: Image,
    snaps: BTreeMap<u64, Snap>,
    step: usize,
}

impl Harness {
    /// A source of `source_size` bytes holding a pattern with zero stretches, snapshotted
    /// after a few writes, and a clone of `clone_size` bytes with chunks of `cs` bytes.
    fn new(cs: u32, source_size: u64, clone_size: u64, seed: u8) -> Harness {
        let mut initial = pattern(seed, source_size as usize);
        // Zero stretches, so whole chunks and blocks of the source read as zeros.
        for (i, piece) in initial.chunks_mut(12_288).enumerate() {
            if (i + seed as usize).is_multiple_of(3) {
                piece.fill(0);
            }
        }
        let source_origin = Arc::new(MemDev::from_vec(initial.clone()));
        let (_, _, source) = {
            let dev = Arc::new(MemDev::new(8 << 20));
            let opts = CreateOptions {
                chunk_size: SOURCE_CHUNK,
                volume_name: "source".into(),
                cache_bytes: 0,
                ..Default::default()
            };
            let s = Store::create(source_origin.clone(), dev.clone(), &opts).unwrap();
            (source_origin, dev, s)
        };
        let source = Arc::new(source);
        let mut image = initial;
        let patch = pattern(seed ^ 0x5A, 5000);
        let at = (source_size / 3) as usize;
        let n = patch.len().min(source_size as usize - at);
        source.write_origin(at as u64, &patch[..n]).unwrap();
        image[at..at + n].copy_from_slice(&patch[..n]);
        let snap = source.create_snapshot("base").unwrap();
        let origin_dev = Arc::new(MemDev::new(clone_size));
        let dev = Arc::new(MemDev::new(8 << 20));
        let opts = CreateOptions {
            chunk_size: cs,
            volume_name: "clone".into(),
            cache_bytes: 0,
            ..Default::default()
        };
        let store = Store::create_clone(
            origin_dev.clone(),
            dev.clone(),
            &opts,
            source.clone(),
            snap.id,
        )
        .unwrap();
        image.resize(clone_size as usize, 0);
        Harness {
            cs: cs as u64,
            source,
            source_snapshot: Some(snap.id),
            source_size,
            origin_dev,
            dev,
            store: Some(store),
            origin: Image::new(image),
            snaps: BTreeMap::new(),
            step: 0,
        }
    }

    fn store(&self) -> &Store {
        self.store.as_ref().unwrap()
    }

    fn size(&self) -> u64 {
        self.origin.current.len() as u64
    }

    fn image(&self, view: View) -> &[u8] {
        match view {
            View::Origin => &self.origin.current,
            View::Snapshot(id) => &self.snaps[&id.0].image.current,
        }
    }

    fn check(&self, view: View, off: u64, len: usize) {
        let got = common::read(self.store(), view, off, len);
        let want = &self.image(view)[off as usize..off as usize + len];
        if got != want {
            let first = got.iter().zip(want).position(|(a, b)| a != b).unwrap_or(0);
            panic!(
                "step {}: {view:?} differs from the model in {off}+{len}, first at byte {} (hydration {:?})",
                self.step,
                off + first as u64,
                self.store().hydration()
            );
        }
    }

    fn views(&self) -> Vec<View> {
        std::iter::once(View::Origin)
            .chain(self.snaps.keys().map(|id| View::Snapshot(SnapshotId(*id))))
            .collect()
    }

    fn check_all(&self) {
        for view in self.views() {
            self.check(view, 0, self.size() as usize);
        }
        // The allocation map marks every byte that reads as non-zero as data.
        for view in self.views() {
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

    fn verify_clean(&self) -> multisnap_store::VerifyReport {
        let r = verify(&*self.dev, Some(self.size())).unwrap();
        assert!(r.is_clean(), "step {}: verify: {:?}", self.step, r.problems);
        r
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

    fn expect_refused_naming_clone(&self, r: Result<impl std::fmt::Debug, StoreError>, what: &str) {
        match r {
            Err(e) => {
                assert_eq!(
                    e.kind(),
                    ErrorKind::FailedPrecondition,
                    "step {}: {what}: {e}",
                    self.step
                );
                assert!(
                    e.to_string().contains("\"clone\""),
                    "step {}: {what}: the refusal must name the clone: {e}",
                    self.step
                );
            }
            Ok(v) => panic!("step {}: {what} was accepted: {v:?}", self.step),
        }
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
                self.origin.issue(off, &data);
                self.store().write_origin(off, &data).unwrap();
                self.origin.acknowledged(off, &data);
                let first = off / cs * cs;
                let end = ((off + n as u64).div_ceil(cs) * cs).min(size);
                for view in self.views() {
                    self.check(view, first, (end - first) as usize);
                }
            }
            Op::SourceWrite { at, len, fill } => {
                let off = at as u64 % self.source_size;
                let n = (len as u64).min(self.source_size - off) as usize;
                self.source.write_origin(off, &pattern(fill, n)).unwrap();
                self.check(View::Origin, 0, size as usize);
            }
            Op::Snapshot { writable } => {
                let name = format!("s{}", self.step);
                let info = self.store().create_snapshot_with(&name, writable).unwrap();
                // Taking a snapshot makes the origin's writes durable (they are in it).
                self.origin.flushed();
                self.snaps.insert(
                    info.id.0,
                    Snap {
                        writable,
                        image: Image::new(self.origin.current.clone()),
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
                let off = ((chunk as u64 % chunks) * cs + 100).min(size - 1);
                let n = (len as u64).min(size - off) as usize;
                let data = pattern(fill, n);
                let img = &mut self.snaps.get_mut(&id).unwrap().image;
                img.issue(off, &data);
                self.store()
                    .write_snapshot(SnapshotId(id), off, &data)
                    .unwrap();
                let img = &mut self.snaps.get_mut(&id).unwrap().image;
                img.acknowledged(off, &data);
                self.check(View::Snapshot(SnapshotId(id)), 0, size as usize);
                self.check(View::Origin, 0, size as usize);
            }
            Op::Delete { pick } => {
                let Some(id) = self.pick(pick, None) else {
                    return;
                };
                self.store().delete_snapshot(SnapshotId(id)).unwrap();
                self.store().reclaim_all().unwrap();
                self.snaps.remove(&id);
                self.check_all();
            }
            Op::DeleteSource => {
                let Some(id) = self.source_snapshot else {
                    return;
                };
                if self.store().hydration().is_some() {
                    let r = self.source.delete_snapshot(id);
                    self.expect_refused_naming_clone(r, "deleting the clone's source snapshot");
                    let r = self.source.set_writable(id, true);
                    self.expect_refused_naming_clone(r, "making the clone's source writable");
                    assert_eq!(
                        self.source.clone_holders(),
                        vec![("base".to_string(), "clone".to_string())]
                    );
                } else {
                    assert!(self.source.clone_holders().is_empty());
                    self.source.delete_snapshot(id).unwrap();
                    self.source.reclaim_all().unwrap();
                    self.source_snapshot = None;
                }
                self.check_all();
            }
            Op::HydrateStep { chunks } => {
                let before = self.store().hydration();
                let after = self.store().hydrate_step(chunks as usize).unwrap();
                if let (Some(b), Some(a)) = (&before, &after) {
                    assert!(
                        a.cursor > b.cursor,
                        "step {}: the cursor must move",
                        self.step
                    );
                    assert!(a.hydrated_bytes >= b.hydrated_bytes);
                }
                self.check_all();
            }
            Op::Flush => {
                self.store().flush().unwrap();
                self.all_flushed();
                self.verify_clean();
            }
            Op::Reopen { flush } => self.reopen(flush),
            Op::PowerCut => self.power_cut(),
        }
        self.step += 1;
    }

    /// Wires a reopened clone to its source if it still hydrates.
    fn attach(&mut self, store: Store) {
        if let Some(source) = store.clone_source_volume() {
            assert_eq!(source, self.source.volume_uuid());
            store.attach_clone_source(self.source.clone()).unwrap();
        }
        self.store = Some(store);
    }

    fn all_flushed(&mut self) {
        self.origin.flushed();
        for s in self.snaps.values_mut() {
            s.image.flushed();
        }
    }

    fn reopen(&mut self, flush: bool) {
        if flush {
            self.store().flush().unwrap();
        }
        // A clean close makes everything durable.
        self.all_flushed();
        let hydrating = self.store().hydration();
        drop(self.store.take());
        self.verify_clean();
        let store = Store::open(self.origin_dev.clone(), self.dev.clone(), 0).unwrap();
        let reopened = store.hydration();
        assert_eq!(
            reopened.as_ref().map(|h| (h.cursor, h.hydrated_bytes)),
            hydrating.as_ref().map(|h| (h.cursor, h.hydrated_bytes)),
            "step {}: the hydration state after reopen",
            self.step
        );
        if let Some(h) = &reopened {
            assert!(!h.attached, "a reopened clone waits for its source");
            // Unwired, a chunk that needs the source cannot be read: an error, never zeros.
            let at = h.cursor * self.cs;
            let mut buf = vec![0u8; 1];
            match store.read(View::Origin, at, &mut buf) {
                Err(e) => assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}"),
                Ok(()) => assert_eq!(
                    buf[0], self.origin.current[at as usize],
                    "step {}",
                    self.step
                ),
            }
        }
        self.attach(store);
        self.check_all();
    }

    /// The devices as a power cut leaves them (every write they took), the store abandoned
    /// without its closing commit.
    fn power_cut(&mut self) {
        let origin = Arc::new(MemDev::from_vec(self.origin_dev.contents()));
        let dev = Arc::new(MemDev::from_vec(self.dev.contents()));
        let hydrating = self.store().hydration().map(|h| h.cursor);
        let r = verify(&*dev, Some(self.size())).unwrap();
        assert!(
            r.is_clean(),
            "step {}: verify after a power cut: {:?}",
            self.step,
            r.problems
        );
        drop(self.store.take());
        self.origin_dev = origin;
        self.dev = dev;
        let store = Store::open(self.origin_dev.clone(), self.dev.clone(), 0).unwrap();
        // A power cut may lose the last cursor move, never invent one.
        let reopened = store.hydration().map(|h| h.cursor);
        assert!(
            reopened <= hydrating || hydrating.is_none(),
            "step {}: cursor {reopened:?} after the cut, {hydrating:?} before",
            self.step
        );
        self.attach(store);
        // Every view reads what the last flush left or what a write since put there; the
        // model takes what survived.
        let size = self.size() as usize;
        let found = common::read(self.store(), View::Origin, 0, size);
        self.origin
            .check(&found, &format!("step {}: the origin", self.step));
        self.origin = Image::new(found);
        let ids: Vec<u64> = self.snaps.keys().copied().collect();
        for id in ids {
            let found = common::read(self.store(), View::Snapshot(SnapshotId(id)), 0, size);
            let snap = self.snaps.get_mut(&id).unwrap();
            snap.image
                .check(&found, &format!("step {}: snapshot {id}", self.step));
            snap.image = Image::new(found);
        }
        self.check_all();
    }
}

fn run(cs: u32, source_size: u64, extra: u64, seed: u8, ops: &[Op]) {
    let mut h = Harness::new(cs, source_size, source_size + extra, seed);
    h.check_all();
    for op in ops {
        h.apply(op);
    }
    h.store().hydrate_all().unwrap();
    assert_eq!(h.store().hydration(), None);
    assert!(
        h.source.clone_holders().is_empty(),
        "the hold ends with the hydration"
    );
    h.check_all();
    h.reopen(true);
    let r = h.verify_clean();
    assert_eq!(
        (r.hydration, r.hydration_marks),
        (None, 0),
        "nothing outlives the hydration"
    );
    // No tie left: the source snapshot can go, and the clone's origin device alone holds
    // its contents.
    if let Some(id) = h.source_snapshot {
        h.source.delete_snapshot(id).unwrap();
        h.source.reclaim_all().unwrap();
    }
    h.check_all();
    h.store().flush().unwrap();
    assert!(
        h.origin_dev.contents() == h.origin.current,
        "the clone's origin device after hydration differs from the model"
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
    fn clone_model_4k(seed in any::<u8>(), odd in 0u64..9000, extra in prop::sample::select(vec![0u64, 4096, 70_000]), ops in prop::collection::vec(op(), 1..60)) {
        run(4096, 160 * 1024 + odd, extra, seed, &ops);
    }

    #[test]
    fn clone_model_16k(seed in any::<u8>(), odd in 0u64..30_000, extra in prop::sample::select(vec![0u64, 5000]), ops in prop::collection::vec(op(), 1..60)) {
        run(16384, 256 * 1024 + odd, extra, seed, &ops);
    }
}

/// A clone store is version 5 from its first superblock on and stays so; a clone of a
/// writable snapshot, or into an origin that holds data, is refused.
#[test]
fn clone_is_version_5_and_refuses_unsuitable_sources() {
    let opts = CreateOptions {
        chunk_size: 4096,
        ..Default::default()
    };
    let (_, _, source) = common::mem_store(64 * 1024, 2 << 20, &opts);
    let source = Arc::new(source);
    source.write_origin(0, &[7u8; 10_000]).unwrap();
    let snap = source.create_snapshot("a").unwrap();
    let w = source.create_snapshot_with("w", true).unwrap();
    let new_clone = |origin: Vec<u8>, id| {
        Store::create_clone(
            Arc::new(MemDev::from_vec(origin)),
            Arc::new(MemDev::new(2 << 20)),
            &opts,
            source.clone(),
            id,
        )
    };
    let e = new_clone(vec![0; 64 * 1024], w.id).err().unwrap();
    assert_eq!(e.kind(), ErrorKind::FailedPrecondition, "{e}");
    let e = new_clone(vec![1; 64 * 1024], snap.id).err().unwrap();
    assert_eq!(e.kind(), ErrorKind::FailedPrecondition, "{e}");
    let e = new_clone(vec![0; 32 * 1024], snap.id).err().unwrap();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");

    let origin = Arc::new(MemDev::new(64 * 1024));
    let dev = Arc::new(MemDev::new(2 << 20));
    let clone =
        Store::create_clone(origin.clone(), dev.clone(), &opts, source.clone(), snap.id).unwrap();
    let version = |dev: &MemDev| {
        let c = dev.contents();
        (
            u32::from_le_bytes(c[4..8].try_into().unwrap()),
            u32::from_le_bytes(c[4096 + 4..4096 + 8].try_into().unwrap()),
        )
    };
    assert_eq!(version(&dev), (5, 5));
    assert_eq!(common::read(&clone, View::Origin, 0, 4), vec![7u8; 4]);
    let e = clone
        .revert_to(clone.create_snapshot("c").unwrap().id)
        .err()
        .unwrap();
    assert_eq!(e.kind(), ErrorKind::FailedPrecondition, "{e}");
    clone.hydrate_all().unwrap();
    clone.flush().unwrap();
    assert_eq!(version(&dev), (5, 5));
    // Hydrated: the source's origin is ignored from now on, and the clone's holds the data.
    source.write_origin(0, &[9u8; 100]).unwrap();
    assert_eq!(common::read(&clone, View::Origin, 0, 4), vec![7u8; 4]);
    assert_eq!(&origin.contents()[..10_000], &[7u8; 10_000][..]);
    assert!(origin.contents()[10_000..].iter().all(|&b| b == 0));
}

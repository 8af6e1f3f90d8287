//! Model-based tests: random sequences of origin writes, snapshot creations and deletions, reads,
//! flushes and reopens, checked after every step against a plain in-memory model that keeps the
//! origin and a full copy of every snapshot image.
//!
//! The model also predicts the exact number of copy-outs ("one copy, not N"): each origin chunk
//! remembers the newest snapshot whose view of it has been preserved; a write needs a copy iff a
//! snapshot newer than that exists. `copies_total` must match the prediction after every step,
//! so an extra copy (N copies for N snapshots) or a missed one both fail.
//!
//! Resizes grow the origin (zeros past the old end) and keep every snapshot at the size it was
//! taken with: the model's snapshot images keep their length, and a write to a chunk wholly
//! past a snapshot's end copies nothing for it.
//!
//! `MULTISNAP_PROPTEST_CASES` raises the number of random cases for soak runs.

use multisnap_store::{CreateOptions, MemDev, SnapshotId, Store, View};
use proptest::prelude::*;
use std::collections::BTreeSet;
use std::sync::Arc;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

/// Cases per chunk size when `MULTISNAP_PROPTEST_CASES` is unset: keeps the whole file well
/// under a minute in CI.
const DEFAULT_CASES: u32 = 256;

fn cases() -> u32 {
    std::env::var("MULTISNAP_PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_CASES)
}

/// The reference: nothing but byte vectors and the copy rule.
struct Model {
    cs: u64,
    origin: Vec<u8>,
    /// (id, full image as of creation), oldest first.
    snaps: Vec<(u64, Vec<u8>)>,
    newest: u64,
    /// Every live snapshot id (also those without an image in `snaps`).
    live: BTreeSet<u64>,
    /// Sizes of live snapshots taken since a resize; the others have the origin's size.
    sizes: std::collections::BTreeMap<u64, u64>,
    /// Per origin chunk: the newest snapshot id whose view of the chunk is already preserved
    /// (0: none).
    preserved: Vec<u64>,
    /// Per origin chunk: the snapshot ranges of its exceptions, as the store should hold them
    /// once reclamation has run.
    ranges: Vec<Vec<(u64, u64)>>,
    copies: u64,
}

impl Model {
    fn new(cs: u64, origin: Vec<u8>) -> Model {
        let chunks = (origin.len() as u64).div_ceil(cs) as usize;
        Model {
            cs,
            origin,
            snaps: Vec::new(),
            newest: 0,
            live: BTreeSet::new(),
            sizes: Default::default(),
            preserved: vec![0; chunks],
            ranges: vec![Vec::new(); chunks],
            copies: 0,
        }
    }

    fn size(&self) -> u64 {
        self.origin.len() as u64
    }

    fn write(&mut self, off: u64, data: &[u8]) {
        let first = off / self.cs;
        let last = (off + data.len() as u64 - 1) / self.cs;
        for c in first..=last {
            let p = self.preserved[c as usize];
            // A copy is needed iff a live snapshot newer than the last preservation exists
            // that holds the chunk (a snapshot from before a resize ends before the new ones).
            let holds = |id: &u64| self.snap_size(*id) > c * self.cs;
            if self.live.range(p + 1..).any(holds) {
                self.copies += 1;
                self.ranges[c as usize].push((p + 1, self.newest));
                self.preserved[c as usize] = self.newest;
            }
        }
        self.origin[off as usize..off as usize + data.len()].copy_from_slice(data);
    }

    /// Deletes a snapshot and applies what a full reclamation pass must do: drop every range
    /// left without a live snapshot.
    fn snap_size(&self, id: u64) -> u64 {
        self.sizes.get(&id).copied().unwrap_or(self.size())
    }

    /// Grows the origin with zeros; snapshots keep their images, and their sizes are pinned.
    fn resize(&mut self, new_size: u64) {
        for &id in &self.live {
            self.sizes.entry(id).or_insert(self.origin.len() as u64);
        }
        self.origin.resize(new_size as usize, 0);
        let chunks = new_size.div_ceil(self.cs) as usize;
        self.preserved.resize(chunks, 0);
        self.ranges.resize(chunks, Vec::new());
    }

    fn delete(&mut self, id: u64) {
        self.snaps.retain(|(s, _)| *s != id);
        self.live.remove(&id);
        self.sizes.remove(&id);
        for r in &mut self.ranges {
            r.retain(|&(first, last)| self.live.range(first..=last).next().is_some());
        }
    }

    fn exceptions(&self) -> u64 {
        self.ranges.iter().map(|r| r.len() as u64).sum()
    }

    fn snapshot(&mut self) -> u64 {
        self.newest += 1;
        self.live.insert(self.newest);
        self.sizes.insert(self.newest, self.size());
        self.snaps.push((self.newest, self.origin.clone()));
        self.newest
    }

    fn image(&self, view: View) -> &[u8] {
        match view {
            View::Origin => &self.origin,
            View::Snapshot(id) => {
                let i = self
                    .snaps
                    .iter()
                    .position(|(s, _)| *s == id.0)
                    .expect("model knows every snapshot");
                &self.snaps[i].1
            }
        }
    }
}

/// Where an offset falls, resolved against the origin size and chunk size at run time so that
/// boundaries and the last partial chunk are hit far more often than uniform offsets would.
#[derive(Clone, Debug)]
enum Pos {
    Anywhere(u64),
    /// Near the start of chunk `index` (wrapped), `delta` bytes off (may be negative).
    NearChunk(u32, i16),
    /// `back` bytes before the end of the origin.
    NearEnd(u32),
}

#[derive(Clone, Debug)]
enum Len {
    Small(u16),
    /// Whole chunks' worth of bytes.
    Chunks(u8),
    /// Up to three chunks, any length.
    Any(u32),
    /// Up to the whole origin: grows the exception index past what the smallest node cache
    /// holds, so nodes are evicted (and dirty ones written early) within a transaction.
    Wide(u32),
}

#[derive(Clone, Debug)]
enum Op {
    Write {
        pos: Pos,
        len: Len,
        fill: u8,
    },
    Snapshot,
    ReadOrigin {
        pos: Pos,
        len: Len,
    },
    /// Reads the snapshot `pick % count` (the origin when none exists yet).
    ReadSnapshot {
        pick: usize,
        pos: Pos,
        len: Len,
    },
    /// Deletes the snapshot `pick % count` (nothing when none exists) and reclaims its space.
    Delete {
        pick: usize,
    },
    Flush,
    /// Lands the parked origin writes (commit, then origin writes) without a flush. Writes
    /// that needed copies stay parked until then (or a flush, snapshot, resize or reopen),
    /// and every read in between must see them.
    Land,
    /// Grows the volume by `1 + grow % 70_000` bytes (past chunk boundaries, or within the
    /// partial last chunk); with `store`, the store device grows by twice that.
    Resize {
        grow: u32,
        store: bool,
    },
    /// Drops the store and opens it again from the same devices. `flush` says whether the
    /// store is flushed first (otherwise the close-time commit must do it); `tiny_cache` opens
    /// with the smallest node cache so nodes are evicted and read back.
    Reopen {
        flush: bool,
        tiny_cache: bool,
    },
}

fn pos() -> impl Strategy<Value = Pos> {
    prop_oneof![
        any::<u64>().prop_map(Pos::Anywhere),
        (any::<u32>(), -3i16..=3).prop_map(|(c, d)| Pos::NearChunk(c, d)),
        (any::<u32>(), -600i16..=600).prop_map(|(c, d)| Pos::NearChunk(c, d)),
        (1u32..=70_000).prop_map(Pos::NearEnd),
    ]
}

fn len() -> impl Strategy<Value = Len> {
    prop_oneof![
        3 => (1u16..=600).prop_map(Len::Small),
        3 => (1u8..=3).prop_map(Len::Chunks),
        3 => any::<u32>().prop_map(Len::Any),
        1 => any::<u32>().prop_map(Len::Wide),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    ops_weighted(8, len().boxed())
}

/// Mostly wide writes and snapshots: thousands of exceptions, so the index outgrows the
/// smallest node cache and the tree is several levels deep.
fn op_heavy() -> impl Strategy<Value = Op> {
    ops_weighted(
        12,
        prop_oneof![
            1 => len(),
            4 => any::<u32>().prop_map(Len::Wide),
        ]
        .boxed(),
    )
}

fn ops_weighted(writes: u32, write_len: BoxedStrategy<Len>) -> impl Strategy<Value = Op> {
    prop_oneof![
        writes => (pos(), write_len, any::<u8>()).prop_map(|(pos, len, fill)| Op::Write { pos, len, fill }),
        3 => Just(Op::Snapshot),
        2 => (pos(), len()).prop_map(|(pos, len)| Op::ReadOrigin { pos, len }),
        4 => (any::<usize>(), pos(), len())
            .prop_map(|(pick, pos, len)| Op::ReadSnapshot { pick, pos, len }),
        1 => any::<usize>().prop_map(|pick| Op::Delete { pick }),
        1 => Just(Op::Flush),
        1 => Just(Op::Land),
        1 => (any::<u32>(), any::<bool>()).prop_map(|(grow, store)| Op::Resize { grow, store }),
        1 => (any::<bool>(), any::<bool>())
            .prop_map(|(flush, tiny_cache)| Op::Reopen { flush, tiny_cache }),
    ]
}

/// Turns a position and a length into a non-empty range inside the origin.
fn resolve(pos: &Pos, len: &Len, size: u64, cs: u64) -> (u64, usize) {
    let chunks = size.div_ceil(cs);
    let off = match *pos {
        Pos::Anywhere(x) => x % size,
        Pos::NearChunk(c, d) => {
            let start = (c as u64 % chunks) * cs;
            start.saturating_add_signed(d as i64).min(size - 1)
        }
        Pos::NearEnd(back) => size.saturating_sub(back as u64),
    };
    let want = match *len {
        Len::Small(n) => n as u64,
        Len::Chunks(n) => n as u64 * cs,
        Len::Any(x) => 1 + x as u64 % (3 * cs),
        Len::Wide(x) => 1 + x as u64 % size,
    };
    (off, want.clamp(1, size - off) as usize)
}

/// Bytes that depend on their position within the write, so a misplaced piece shows.
fn pattern(fill: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| fill.wrapping_add((i as u8).wrapping_mul(31)) ^ (i >> 9) as u8)
        .collect()
}

struct Harness {
    origin: Arc<MemDev>,
    dev: Arc<MemDev>,
    store: Option<Store>,
    model: Model,
    step: usize,
    /// The store device takes copy-outs itself (`MemDev::copying`).
    kernel_copy: bool,
}

impl Harness {
    fn new(cs: u32, origin_size: u64, store_size: u64, seed: u8) -> Harness {
        // A non-zero starting origin, so a snapshot read that wrongly returns zeros (or the
        // wrong chunk) cannot pass by accident.
        let initial = pattern(seed, origin_size as usize);
        let origin = Arc::new(MemDev::from_vec(initial.clone()));
        // Odd seeds copy out through the store device (`BlockDev::copy_from`), as between two
        // files of one filesystem; even ones through memory.
        let dev = MemDev::new(store_size);
        let dev = Arc::new(if seed % 2 == 1 { dev.copying() } else { dev });
        let opts = CreateOptions {
            chunk_size: cs,
            cache_bytes: 0,
            ..Default::default()
        };
        let store = Store::create(origin.clone(), dev.clone(), &opts).unwrap();
        Harness {
            origin,
            dev,
            store: Some(store),
            model: Model::new(cs as u64, initial),
            step: 0,
            kernel_copy: seed % 2 == 1,
        }
    }

    fn store(&self) -> &Store {
        self.store.as_ref().expect("store is open")
    }

    fn read(&self, view: View, off: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        self.store()
            .read(view, off, &mut buf)
            .unwrap_or_else(|e| panic!("step {}: read {view:?} {off}+{len}: {e}", self.step));
        buf
    }

    fn check_range(&self, view: View, off: u64, len: usize) {
        let got = self.read(view, off, len);
        let want = &self.model.image(view)[off as usize..off as usize + len];
        if got != want {
            let first_bad = got.iter().zip(want).position(|(a, b)| a != b).unwrap_or(0);
            panic!(
                "step {}: {view:?} differs from the model in {off}+{len}, first at byte {}",
                self.step,
                off + first_bad as u64
            );
        }
    }

    fn views(&self) -> Vec<View> {
        let mut v = vec![View::Origin];
        v.extend(
            self.model
                .snaps
                .iter()
                .map(|(id, _)| View::Snapshot(SnapshotId(*id))),
        );
        v
    }

    fn check_all(&self) {
        for view in self.views() {
            let size = self.model.image(view).len();
            self.check_range(view, 0, size);
            // Nothing past a view's end: a snapshot from before a resize ends where it did.
            let mut past = [0u8; 1];
            let err = self.store().read(view, size as u64, &mut past);
            assert!(
                err.is_err(),
                "step {}: {view:?} read past its end {size}",
                self.step
            );
        }
    }

    fn check_counters(&self) {
        let stats = self.store().stats();
        // Copy-outs went the way this case chose.
        assert_eq!(
            self.store().kernel_copy(),
            self.kernel_copy,
            "step {}",
            self.step
        );
        if !self.kernel_copy {
            assert_eq!(stats.kernel_copies_total, 0, "step {}", self.step);
        }
        assert_eq!(
            stats.copies_total, self.model.copies,
            "step {}: copies_total disagrees with the model",
            self.step
        );
        assert_eq!(
            stats.exceptions,
            self.model.exceptions(),
            "step {}",
            self.step
        );
        assert_eq!(
            stats.snapshots,
            self.model.snaps.len() as u64,
            "step {}",
            self.step
        );
    }

    fn verify_clean(&self) {
        let report = multisnap_store::verify(&*self.dev, Some(self.model.size())).unwrap();
        assert!(
            report.is_clean(),
            "step {}: verify found {:?}",
            self.step,
            report.problems
        );
        assert_eq!(
            report.exceptions,
            self.model.exceptions(),
            "step {}",
            self.step
        );
        assert_eq!(
            report.snapshots,
            self.model.snaps.len() as u64,
            "step {}",
            self.step
        );
    }

    fn reopen(&mut self, flush: bool, tiny_cache: bool) {
        let store = self.store.take().expect("store is open");
        if flush {
            store.flush().unwrap();
        }
        drop(store);
        self.verify_clean();
        let cache = if tiny_cache { 0 } else { 8 << 20 };
        self.store = Some(Store::open(self.origin.clone(), self.dev.clone(), cache).unwrap());
        let names: Vec<(u64, String)> = self
            .store()
            .list_snapshots()
            .into_iter()
            .map(|s| (s.id.0, s.name))
            .collect();
        let want: Vec<(u64, String)> = self
            .model
            .snaps
            .iter()
            .map(|(id, _)| (*id, format!("s{id}")))
            .collect();
        assert_eq!(
            names, want,
            "step {}: snapshot table after reopen",
            self.step
        );
        self.check_all();
    }

    fn apply(&mut self, op: &Op) {
        let size = self.model.size();
        let cs = self.model.cs;
        match op {
            Op::Write { pos, len, fill } => {
                let (off, n) = resolve(pos, len, size, cs);
                let data = pattern(*fill, n);
                self.store().write_origin(off, &data).unwrap();
                self.model.write(off, &data);
                // Every image may only change inside the chunks this write touched: check them
                // whole in every view (the origin must change, snapshots must not).
                let first = off / cs * cs;
                let end = ((off + n as u64).div_ceil(cs) * cs).min(size);
                for view in self.views() {
                    let view_end = end.min(self.model.image(view).len() as u64);
                    if view_end > first {
                        self.check_range(view, first, (view_end - first) as usize);
                    }
                }
            }
            Op::Snapshot => {
                let id = self.model.snapshot();
                let info = self.store().create_snapshot(&format!("s{id}")).unwrap();
                assert_eq!(info.id, SnapshotId(id), "snapshot ids are issued in order");
                self.check_range(View::Snapshot(info.id), 0, size as usize);
            }
            Op::ReadOrigin { pos, len } => {
                let (off, n) = resolve(pos, len, size, cs);
                self.check_range(View::Origin, off, n);
            }
            Op::ReadSnapshot { pick, pos, len } => {
                let view = match self.model.snaps.len() {
                    0 => View::Origin,
                    k => View::Snapshot(SnapshotId(self.model.snaps[pick % k].0)),
                };
                let view_size = self.model.image(view).len() as u64;
                let (off, n) = resolve(pos, len, view_size, cs);
                self.check_range(view, off, n);
            }
            Op::Resize { grow, store } => {
                let new_size = size + 1 + *grow as u64 % 70_000;
                let before = self.store().stats().store_bytes;
                let grown = (2 * (new_size - size)).next_multiple_of(4096);
                let store_bytes = before + if *store { grown } else { 0 };
                self.store().resize(new_size, store_bytes).unwrap();
                self.model.resize(new_size);
                assert_eq!(self.store().origin_size(), new_size);
                assert!(self.store().stats().store_bytes >= store_bytes);
                assert!(
                    self.store().resize(size, store_bytes).is_err(),
                    "step {}: a resize back to {size} must be refused",
                    self.step
                );
                self.check_all();
            }
            Op::Delete { pick } => {
                if !self.model.snaps.is_empty() {
                    let id = self.model.snaps[pick % self.model.snaps.len()].0;
                    self.store().delete_snapshot(SnapshotId(id)).unwrap();
                    self.store().reclaim_all().unwrap();
                    self.model.delete(id);
                    let mut buf = [0u8; 1];
                    assert!(
                        self.store()
                            .read(View::Snapshot(SnapshotId(id)), 0, &mut buf)
                            .is_err(),
                        "step {}: a deleted snapshot must not be readable",
                        self.step
                    );
                    self.check_all();
                }
            }
            Op::Flush => {
                self.store().flush().unwrap();
                // After a flush the committed state on disk is the whole truth.
                self.verify_clean();
            }
            Op::Land => {
                self.store().land_parked().unwrap();
                assert_eq!(self.store().stats().parked_bytes, 0, "step {}", self.step);
                self.check_all();
            }
            Op::Reopen { flush, tiny_cache } => self.reopen(*flush, *tiny_cache),
        }
        self.check_counters();
        self.step += 1;
    }
}

/// Store size that can never fill up for `ops`: every chunk a write touches may need a copy,
/// plus generous room for metadata (shadowed tree paths, bitmap).
fn store_size_for(ops: &[Op], origin_size: u64, cs: u64, extra: u64) -> u64 {
    let largest = origin_size
        + ops
            .iter()
            .map(|op| match op {
                Op::Resize { grow, .. } => 1 + *grow as u64 % 70_000,
                _ => 0,
            })
            .sum::<u64>();
    let mut copies = 0u64;
    for op in ops {
        if let Op::Write { pos, len, .. } = op {
            // Where the write lands depends on the size when it runs: bound its chunks by its
            // length at the largest size.
            let (_, n) = resolve(pos, len, largest, cs);
            copies += n as u64 / cs + 2;
        }
    }
    // Not a multiple of the chunk size (nor of 4 KiB) on purpose: the trailing partial group
    // must be handled.
    2 * MIB + 2 * copies * cs + (copies + 64) * 4 * KIB + extra
}

fn run(cs: u32, origin_size: u64, extra: u64, seed: u8, ops: &[Op]) {
    let store_size = store_size_for(ops, origin_size, cs as u64, extra);
    let mut h = Harness::new(cs, origin_size, store_size, seed);
    h.check_counters();
    for op in ops {
        h.apply(op);
    }
    h.check_all();
    h.reopen(true, true);
    h.check_counters();
}

/// Origin sizes near 1 MiB, most of them not a multiple of any chunk size.
fn origin_size() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(MIB),
        Just(MIB + 1),
        Just(MIB - 512),
        (MIB - 70_000..MIB + 70_000),
    ]
}

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        // Integration tests have no lib.rs for proptest to file regressions next to; a failure
        // prints the minimal case instead.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config(cases()))]

    #[test]
    fn model_4k_chunks(
        origin_size in origin_size(),
        extra in 0u64..20_000,
        seed in any::<u8>(),
        ops in prop::collection::vec(op(), 1..80),
    ) {
        run(4096, origin_size, extra, seed, &ops);
    }

    #[test]
    fn model_64k_chunks(
        origin_size in origin_size(),
        extra in 0u64..200_000,
        seed in any::<u8>(),
        ops in prop::collection::vec(op(), 1..80),
    ) {
        run(65536, origin_size, extra, seed, &ops);
    }
}

proptest! {
    // Each case copies thousands of chunks: fewer cases, same soak knob.
    #![proptest_config(config(cases().div_ceil(16)))]

    #[test]
    fn model_4k_chunks_large_index(
        origin_size in origin_size(),
        seed in any::<u8>(),
        ops in prop::collection::vec(op_heavy(), 100..200),
    ) {
        run(4096, origin_size, 0, seed, &ops);
    }
}

/// Many snapshots of one chunk, then one write: exactly one copy, and every snapshot sees the
/// old data.
#[test]
fn ten_snapshots_one_write_one_copy() {
    let mut h = Harness::new(4096, MIB + 100, 8 * MIB, 1);
    for _ in 0..10 {
        h.apply(&Op::Snapshot);
    }
    h.apply(&Op::Write {
        pos: Pos::NearChunk(3, 0),
        len: Len::Chunks(1),
        fill: 9,
    });
    assert_eq!(h.store().stats().copies_total, 1);
    h.check_all();
}

/// First writes after snapshots park until a landing: overwrites of parked chunks (in part,
/// across chunk ends), reads of them, snapshots, a delete, a landing and a flush in between,
/// each checked against the model; the run really parked.
#[test]
fn parked_writes_interleaved_with_reads_snapshots_and_flushes() {
    let mut h = Harness::new(4096, MIB + 100, 8 * MIB, 2);
    let write = |chunk, len, fill| Op::Write {
        pos: Pos::NearChunk(chunk, 17),
        len,
        fill,
    };
    let ops = [
        Op::Snapshot,
        write(3, Len::Small(500), 1),
        write(3, Len::Small(100), 2),
        Op::ReadOrigin {
            pos: Pos::NearChunk(3, -5),
            len: Len::Chunks(2),
        },
        write(3, Len::Chunks(2), 3),
        Op::Snapshot,
        write(4, Len::Small(9), 4),
        Op::ReadSnapshot {
            pick: 1,
            pos: Pos::NearChunk(3, 0),
            len: Len::Chunks(3),
        },
        Op::Delete { pick: 0 },
        write(5, Len::Any(10_000), 5),
        Op::Land,
        write(5, Len::Small(3), 6),
        Op::Snapshot,
        write(6, Len::Small(300), 7),
        Op::Flush,
        write(7, Len::Small(30), 8),
    ];
    for op in &ops {
        h.apply(op);
    }
    assert!(h.store().stats().parked_writes_total >= 6);
    assert!(
        h.store().stats().parked_bytes > 0,
        "the last write is parked"
    );
    h.check_all();
    h.reopen(false, false);
}

/// More than 1,000 live snapshots on one volume, with writes between them. Full images are
/// kept only for a sample of the snapshots (1,000 full images would be a gigabyte); the copy
/// count is modelled for all of them.
#[test]
fn over_a_thousand_snapshots() {
    const SNAPSHOTS: u64 = 1100;
    const SAMPLE_EVERY: u64 = 61;
    let cs = 4096u64;
    let size = MIB + 1234;
    let chunks = size.div_ceil(cs);
    let mut h = Harness::new(cs as u32, size, 48 * MIB, 7);
    let mut sampled: Vec<u64> = Vec::new();
    for i in 0..SNAPSHOTS {
        let id = h.model.newest + 1;
        let info = h.store().create_snapshot(&format!("s{id}")).unwrap();
        assert_eq!(info.id, SnapshotId(id));
        h.model.newest = id;
        h.model.live.insert(id);
        let keep = id % SAMPLE_EVERY == 1 || id == SNAPSHOTS;
        if keep {
            h.model.snaps.push((id, h.model.origin.clone()));
            sampled.push(id);
        }
        // A few chunks per round, spread so that some chunks are hit often (many exceptions per
        // chunk) and some rarely; one write straddles a chunk boundary and one the last,
        // partial chunk.
        let writes = [
            ((i * 7) % chunks * cs, 4096usize),
            (((i * 13 + 5) % chunks) * cs + 1000, 6000),
            (size - 1 - (i % 2000), 1 + (i % 2000) as usize),
            ((i % 5) * cs + 17, 100),
        ];
        for (k, (off, n)) in writes.into_iter().enumerate() {
            let n = n.min((size - off) as usize);
            let data = pattern((i as u8).wrapping_mul(3).wrapping_add(k as u8), n);
            h.store().write_origin(off, &data).unwrap();
            h.model.write(off, &data);
        }
        // Exactness of the counter, not just "at most": the model tracks every snapshot.
        assert_eq!(h.store().stats().copies_total, h.model.copies, "round {i}");
    }
    assert_eq!(h.store().list_snapshots().len() as u64, SNAPSHOTS);
    // Only the sampled snapshots have images in the model; reads of the others are checked to
    // succeed.
    h.check_all();
    for id in (1..=SNAPSHOTS).step_by(97) {
        let mut buf = vec![0u8; 3 * cs as usize];
        h.store()
            .read(View::Snapshot(SnapshotId(id)), 0, &mut buf)
            .unwrap();
    }
    let store = h.store.take().unwrap();
    store.flush().unwrap();
    drop(store);
    h.verify_clean_many(SNAPSHOTS);
    let store = Store::open(h.origin.clone(), h.dev.clone(), 0).unwrap();
    assert_eq!(store.list_snapshots().len() as u64, SNAPSHOTS);
    assert_eq!(store.stats().copies_total, h.model.copies);
    h.store = Some(store);
    h.check_all();
    let evictions = h.store().stats().cache.evictions;
    assert!(
        evictions > 0,
        "the tiny cache should have evicted nodes during the read-back"
    );
}

impl Harness {
    /// `verify_clean` for a model that keeps only a sample of the snapshots.
    fn verify_clean_many(&self, snapshots: u64) {
        let report = multisnap_store::verify(&*self.dev, Some(self.model.size())).unwrap();
        assert!(report.is_clean(), "verify found {:?}", report.problems);
        assert_eq!(report.exceptions, self.model.exceptions());
        assert_eq!(report.snapshots, snapshots);
    }
}

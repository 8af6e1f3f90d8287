//! Applying deltas at the store level: staged, verified, folded, published as one snapshot.
//! A replica built from a full apply and incrementals reads exactly as the source; aborted and
//! interrupted applies leave nothing visible and give their space back; a power cut at any
//! write of an apply leaves either no new snapshot or the whole of it.

mod common;

use multisnap_store::fault::{CrashDev, PowerRail};
use multisnap_store::{
    verify, BlockDev, CreateOptions, MemDev, ReceivePlan, SnapshotId, SnapshotInfo, Store,
    StoreError, View, VolumeUuid,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::Arc;

const CHUNK: u64 = 4096;
const CHUNKS: u64 = 48;
/// Not a whole number of chunks: the last chunk is short.
const SIZE: u64 = CHUNKS * CHUNK - 1000;
const STORE_BYTES: u64 = 4 << 20;
const SOURCE_UUID: VolumeUuid = VolumeUuid::from_bytes([0x5a; 16]);

fn opts() -> CreateOptions {
    CreateOptions {
        cache_bytes: 0,
        ..common::chunk_opts(CHUNK as u32)
    }
}

fn mem_store() -> Store {
    common::mem_store(SIZE, STORE_BYTES, &opts()).2
}

fn read_all(store: &Store, view: View) -> Vec<u8> {
    common::read(store, view, 0, SIZE as usize)
}

/// One record of a delta at store level: its first chunk and the bytes of its chunks (one, or
/// several back to back), or `None` for one chunk of zeros.
type Rec = (u64, Option<Vec<u8>>);

/// Chunks a record covers.
fn rec_chunks((_, data): &Rec) -> u32 {
    data.as_ref()
        .map_or(1, |d| d.len().div_ceil(CHUNK as usize) as u32)
}

/// `recs` as a sender with larger records would send them: runs of consecutive chunks merged
/// into records of up to `per_record` chunks. A zero chunk next to data chunks goes in as
/// zero bytes, as the store must take it (a zero chunk alone stays a zero record).
fn merged(recs: &[Rec], per_record: usize) -> Vec<Rec> {
    let mut out: Vec<(u64, Vec<Option<Vec<u8>>>)> = Vec::new();
    for (c, data) in recs {
        match out.last_mut() {
            Some((first, parts))
                if *first + parts.len() as u64 == *c && parts.len() < per_record =>
            {
                parts.push(data.clone());
            }
            _ => out.push((*c, vec![data.clone()])),
        }
    }
    out.into_iter()
        .flat_map(|(first, parts)| {
            if parts.iter().all(Option::is_none) {
                return (first..first + parts.len() as u64)
                    .map(|c| (c, None))
                    .collect();
            }
            let mut bytes = Vec::new();
            for (i, part) in parts.iter().enumerate() {
                let c = first + i as u64;
                let len = (((c + 1) * CHUNK).min(SIZE) - c * CHUNK) as usize;
                match part {
                    Some(d) => bytes.extend_from_slice(d),
                    None => bytes.resize(bytes.len() + len, 0),
                }
            }
            vec![(first, Some(bytes))]
        })
        .collect()
}

fn chunks_in(runs: Vec<(u64, bool)>) -> Vec<u64> {
    let mut out = Vec::new();
    let mut pos = 0;
    for (len, flag) in runs {
        if flag {
            out.extend(pos / CHUNK..=(pos + len - 1) / CHUNK);
        }
        pos += len;
    }
    out.dedup();
    out
}

/// What a sender would put in a stream from `base` to `target`.
fn delta(src: &Store, base: Option<SnapshotId>, target: SnapshotId) -> Vec<Rec> {
    let view = View::Snapshot(target);
    let chunks = match base {
        Some(b) => chunks_in(src.changed_extents(b, view, 0, SIZE).unwrap()),
        None => chunks_in(src.allocation(view, 0, SIZE).unwrap()),
    };
    chunks
        .into_iter()
        .map(|c| {
            let len = ((c + 1) * CHUNK).min(SIZE) - c * CHUNK;
            let mut b = vec![0u8; len as usize];
            src.read(view, c * CHUNK, &mut b).unwrap();
            (c, b.iter().any(|&x| x != 0).then_some(b))
        })
        .collect()
}

fn token(next_chunk: u64) -> Vec<u8> {
    next_chunk.to_le_bytes().to_vec()
}

fn plan(
    name: &str,
    source: &SnapshotInfo,
    base: Option<SnapshotId>,
    resumable: bool,
) -> ReceivePlan {
    ReceivePlan {
        name: name.to_string(),
        source_volume: SOURCE_UUID,
        source_snapshot: source.id.0,
        base,
        resumable,
        token: token(0),
    }
}

/// Stages `recs` (skipping chunks below `from`), checkpointing every `every` records.
/// Records go to the store in batches of `every` (`stage_batch`, as the applier does), each
/// batch followed by a checkpoint; a lone record goes through `stage`.
fn stage_all(dst: &Store, recs: &[Rec], from: u64, every: usize) -> Result<(), StoreError> {
    let todo: Vec<&Rec> = recs.iter().filter(|(c, _)| *c >= from).collect();
    for batch in todo.chunks(every.max(1)) {
        match batch {
            [r] => dst.stage(r.0, rec_chunks(r), r.1.as_deref())?,
            _ => {
                let items: Vec<(u64, u32, Option<&[u8]>)> = batch
                    .iter()
                    .map(|r| (r.0, rec_chunks(r), r.1.as_deref()))
                    .collect();
                dst.stage_batch(&items)?;
            }
        }
        if batch.len() == every {
            let last = batch[batch.len() - 1];
            dst.checkpoint_receive(&token(last.0 + u64::from(rec_chunks(last))))?;
        }
    }
    Ok(())
}

fn apply(
    dst: &Store,
    p: &ReceivePlan,
    recs: &[Rec],
    every: usize,
) -> Result<SnapshotInfo, StoreError> {
    dst.begin_receive(p)?;
    stage_all(dst, recs, 0, every)?;
    dst.finish_receive(&token(CHUNKS))
}

fn random_writes(src: &Store, rng: &mut StdRng, n: usize) {
    for _ in 0..n {
        let len = rng.gen_range(1..2 * CHUNK);
        let off = rng.gen_range(0..SIZE - len);
        // Some writes are zeros, so deltas carry zero records too.
        let byte: u8 = if rng.gen_bool(0.2) { 0 } else { rng.gen() };
        src.write_origin(off, &vec![byte; len as usize]).unwrap();
    }
}

/// A source volume's two snapshots, what a sender would send of them and how they read.
struct Source {
    s0: SnapshotInfo,
    s1: SnapshotInfo,
    /// The full stream of `s0`.
    full: Vec<Rec>,
    /// The incremental stream from `s0` to `s1`.
    inc: Vec<Rec>,
    want0: Vec<u8>,
    want1: Vec<u8>,
    /// The generator as the writes left it, for a test's further random choices.
    rng: StdRng,
}

/// `first` random writes (seeded by `seed`), snapshot `s0`, `then` more, snapshot `s1`.
fn source_with_two_snapshots(seed: u64, first: usize, then: usize) -> Source {
    let mut rng = StdRng::seed_from_u64(seed);
    let src = mem_store();
    random_writes(&src, &mut rng, first);
    let s0 = src.create_snapshot("s0").unwrap();
    random_writes(&src, &mut rng, then);
    let s1 = src.create_snapshot("s1").unwrap();
    Source {
        full: delta(&src, None, s0.id),
        inc: delta(&src, Some(s0.id), s1.id),
        want0: read_all(&src, View::Snapshot(s0.id)),
        want1: read_all(&src, View::Snapshot(s1.id)),
        s0,
        s1,
        rng,
    }
}

fn assert_clean(store: &Store, what: &str) {
    store.reclaim_all().unwrap();
    store.flush().unwrap();
    let report = verify(&**store.store_dev(), Some(SIZE)).unwrap();
    assert!(report.is_clean(), "{what}: {:?}", report.problems);
}

#[test]
fn full_then_incrementals_recreate_every_snapshot() {
    let mut rng = StdRng::seed_from_u64(11);
    let src = mem_store();
    let dst = mem_store();
    random_writes(&src, &mut rng, 30);
    let mut sent: Vec<SnapshotInfo> = vec![src.create_snapshot("s0").unwrap()];
    let recs = delta(&src, None, sent[0].id);
    let first = apply(&dst, &plan("s0", &sent[0], None, false), &recs, 4).unwrap();
    assert_eq!(first.source_id, sent[0].id.0);
    assert_eq!(dst.replica_source(), Some(SOURCE_UUID));
    for round in 1..=5 {
        random_writes(&src, &mut rng, 6);
        let name = format!("s{round}");
        let target = src.create_snapshot(&name).unwrap();
        let prev = sent.last().unwrap();
        let base = dst
            .snapshot_by_source_id(prev.id.0)
            .expect("base on the replica");
        let recs = delta(&src, Some(prev.id), target.id);
        assert!(
            recs.len() < CHUNKS as usize,
            "an incremental carries only changes"
        );
        let made = apply(&dst, &plan(&name, &target, Some(base.id), false), &recs, 3).unwrap();
        assert_eq!(made.name, name);
        sent.push(target);
        // Every replicated snapshot still reads as its source; the origin is the newest.
        for s in &sent {
            let r = dst.snapshot_by_source_id(s.id.0).unwrap();
            assert_eq!(
                read_all(&dst, View::Snapshot(r.id)),
                read_all(&src, View::Snapshot(s.id)),
                "round {round}: replica of {} differs",
                s.name
            );
        }
        assert_eq!(
            read_all(&dst, View::Origin),
            read_all(&src, View::Snapshot(sent.last().unwrap().id))
        );
        assert!(dst.receive_status().unwrap().is_none());
    }
    assert_clean(&dst, "replica after 6 applies");
}

#[test]
fn aborted_applies_leave_nothing_and_return_their_space() {
    let src = source_with_two_snapshots(12, 40, 10);
    let zeros = vec![0u8; SIZE as usize];

    // A full stream into an empty volume goes straight into the origin; aborting zeroes it.
    let dst = mem_store();
    let used_empty = dst.stats().used_bytes;
    dst.begin_receive(&plan("s0", &src.s0, None, true)).unwrap();
    stage_all(&dst, &src.full[..src.full.len() / 2], 0, 2).unwrap();
    let status = dst.receive_status().unwrap().expect("apply in progress");
    assert_eq!(status.name, "s0");
    assert!(status.direct && status.resumable && !status.folding);
    assert!(status.staged_chunks > 0 && status.staged_bytes == 0);
    assert_ne!(
        read_all(&dst, View::Origin),
        zeros,
        "a direct apply writes the origin"
    );
    assert!(
        dst.list_snapshots().is_empty(),
        "an apply is not a snapshot"
    );
    assert!(dst.snapshot_by_name("s0").is_err());
    assert!(
        matches!(
            dst.create_snapshot("x"),
            Err(StoreError::ReceiveInProgress { .. })
        ),
        "no snapshot of a half-written origin"
    );
    dst.abort_receive().unwrap();
    assert_eq!(
        read_all(&dst, View::Origin),
        zeros,
        "abort zeroes what it wrote"
    );
    dst.reclaim_all().unwrap();
    assert_eq!(dst.stats().used_bytes, used_empty);
    assert!(dst.list_snapshots().is_empty());
    assert_eq!(
        dst.replica_source(),
        None,
        "an abandoned first apply binds nothing"
    );
    assert!(matches!(dst.abort_receive(), Err(StoreError::NoReceive)));
    assert_clean(&dst, "after aborting a direct apply");

    // The name is free again and the full apply works.
    let r0 = apply(&dst, &plan("s0", &src.s0, None, false), &src.full, 5).unwrap();
    assert_eq!(read_all(&dst, View::Snapshot(r0.id)), src.want0);
    dst.reclaim_all().unwrap();
    let used_replica = dst.stats().used_bytes;

    // An incremental is staged in the store; aborting frees it, the origin never moved.
    dst.begin_receive(&plan("s1", &src.s1, Some(r0.id), true))
        .unwrap();
    stage_all(&dst, &src.inc[..src.inc.len() / 2 + 1], 0, 2).unwrap();
    let status = dst.receive_status().unwrap().unwrap();
    assert!(!status.direct && status.staged_bytes > 0);
    assert!(dst.stats().used_bytes > used_replica);
    assert_eq!(read_all(&dst, View::Origin), src.want0);
    dst.abort_receive().unwrap();
    dst.reclaim_all().unwrap();
    assert_eq!(dst.stats().used_bytes, used_replica);
    assert_eq!(read_all(&dst, View::Origin), src.want0);
    assert_eq!(dst.list_snapshots().len(), 1);
    assert_clean(&dst, "after aborting a staged apply");
    let r1 = apply(&dst, &plan("s1", &src.s1, Some(r0.id), false), &src.inc, 3).unwrap();
    assert_eq!(read_all(&dst, View::Snapshot(r1.id)), src.want1);
}

#[test]
fn applies_that_cannot_recreate_the_target_are_refused() {
    let src = source_with_two_snapshots(13, 20, 5);
    let dst = mem_store();
    let r0 = apply(&dst, &plan("s0", &src.s0, None, false), &src.full, 8).unwrap();

    // A full stream needs an empty origin.
    let other = ReceivePlan {
        name: "again".into(),
        ..plan("again", &src.s0, None, false)
    };
    assert!(matches!(
        dst.begin_receive(&other),
        Err(StoreError::OriginNotEmpty)
    ));
    // Deltas of another volume.
    let foreign = ReceivePlan {
        source_volume: VolumeUuid::from_bytes([1; 16]),
        ..plan("s1", &src.s1, Some(r0.id), false)
    };
    assert!(matches!(
        dst.begin_receive(&foreign),
        Err(StoreError::ReplicaOfOther { .. })
    ));
    // A name already taken.
    assert!(matches!(
        dst.begin_receive(&plan("s0", &src.s1, Some(r0.id), false)),
        Err(StoreError::SnapshotExists(_))
    ));
    // One apply at a time; bad staging input.
    dst.begin_receive(&plan("s1", &src.s1, Some(r0.id), false))
        .unwrap();
    assert!(matches!(
        dst.begin_receive(&plan("s1b", &src.s1, Some(r0.id), false)),
        Err(StoreError::ReceiveInProgress { .. })
    ));
    assert!(matches!(
        dst.stage(CHUNKS, 1, None),
        Err(StoreError::BadStage(_))
    ));
    assert!(matches!(
        dst.stage(u64::MAX, 2, None),
        Err(StoreError::BadStage(_))
    ));
    assert!(matches!(
        dst.stage(0, 1, Some(&[1u8; 100])),
        Err(StoreError::BadStage(_))
    ));
    // The replica's origin written after its base: the delta would not give the target.
    dst.write_origin(5, b"local write").unwrap();
    stage_all(&dst, &src.inc, 0, 100).unwrap();
    assert!(matches!(
        dst.finish_receive(&token(CHUNKS)),
        Err(StoreError::OriginDiverged { chunks: 1, .. })
    ));
    dst.abort_receive().unwrap();
    assert!(matches!(
        dst.begin_receive(&plan("s1", &src.s1, Some(r0.id), false)),
        Err(StoreError::OriginDiverged { .. })
    ));
    assert_eq!(dst.replica_source(), Some(SOURCE_UUID));
    assert_clean(&dst, "after refusals");
}

#[test]
fn reopening_keeps_a_resumable_apply_and_drops_any_other() {
    let src = source_with_two_snapshots(14, 40, 10);
    for incremental in [false, true] {
        for resumable in [false, true] {
            let what = format!("incremental {incremental}, resumable {resumable}");
            let (origin, dev, dst) = common::mem_store(SIZE, STORE_BYTES, &opts());
            let (recs, p, want, before) = if incremental {
                let r0 = apply(&dst, &plan("s0", &src.s0, None, false), &src.full, 4).unwrap();
                (
                    &src.inc,
                    plan("s1", &src.s1, Some(r0.id), resumable),
                    &src.want1,
                    src.want0.clone(),
                )
            } else {
                (
                    &src.full,
                    plan("s0", &src.s0, None, resumable),
                    &src.want0,
                    vec![0u8; SIZE as usize],
                )
            };
            dst.reclaim_all().unwrap();
            let used_before = dst.stats().used_bytes;
            let half = recs.len() / 2;
            dst.begin_receive(&p).unwrap();
            stage_all(&dst, &recs[..half], 0, 1).unwrap();
            drop(dst);
            let dst = Store::open(origin.clone(), dev.clone(), 0).unwrap();
            assert_eq!(
                dst.list_snapshots().len(),
                usize::from(incremental),
                "{what}"
            );
            match dst.receive_status().unwrap() {
                None => {
                    assert!(!resumable, "{what}");
                    dst.reclaim_all().unwrap();
                    assert_eq!(
                        dst.stats().used_bytes,
                        used_before,
                        "{what}: space returned"
                    );
                    assert_eq!(read_all(&dst, View::Origin), before, "{what}: origin back");
                }
                Some(st) => {
                    assert!(resumable, "{what}");
                    assert_eq!(st.direct, !incremental, "{what}");
                    // A direct apply records only the chunks it wrote (zeros need nothing).
                    let expect = if incremental {
                        half
                    } else {
                        recs[..half].iter().filter(|r| r.1.is_some()).count()
                    };
                    assert_eq!(st.staged_chunks, expect as u64, "{what}");
                    let next = u64::from_le_bytes(st.token.as_slice().try_into().unwrap());
                    assert_eq!(next, recs[half - 1].0 + 1, "{what}");
                    stage_all(&dst, recs, next, 4).unwrap();
                    let made = dst.finish_receive(&token(CHUNKS)).unwrap();
                    assert_eq!(&read_all(&dst, View::Snapshot(made.id)), want, "{what}");
                    assert_eq!(&read_all(&dst, View::Origin), want, "{what}");
                }
            }
            assert_clean(&dst, &what);
        }
    }
}

struct Rig {
    rail: Arc<PowerRail>,
    origin: Arc<CrashDev>,
    dev: Arc<CrashDev>,
}

/// A power cut at every write of an apply (resumable, checkpointing every 2 records), for a
/// staged incremental and for a direct full stream: after recovery the new snapshot is either
/// wholly there (and the origin is it) or absent; then the base still reads as before, and
/// resuming (from the kept token) or restarting completes the apply. A staged apply never
/// moves the origin before its commit point; a direct one that cannot be resumed leaves the
/// origin all zeros again.
///
/// `per_record` chunks at most go in one record (consecutive chunks merged, see [`merged`]).
fn crash_every_write_of_an_apply(incremental: bool, resumable: bool, per_record: usize) {
    let mut src = source_with_two_snapshots(15, 40, 12);
    src.full = merged(&src.full, per_record);
    src.inc = merged(&src.inc, per_record);
    if per_record > 1 {
        let zero_among_data = |r: &Rec| {
            r.1.as_ref()
                .is_some_and(|d| d.chunks(CHUNK as usize).any(|c| c.iter().all(|&b| b == 0)))
        };
        assert!(
            src.full.iter().any(zero_among_data),
            "no record of the full stream holds a zero chunk among its data chunks"
        );
    }
    let zeros = vec![0u8; SIZE as usize];

    // The replica as it stands before the apply: holding s0, or empty.
    let (origin, dev, dst) = common::mem_store(SIZE, STORE_BYTES, &opts());
    if incremental {
        apply(&dst, &plan("s0", &src.s0, None, false), &src.full, 8).unwrap();
    }
    dst.flush().unwrap();
    drop(dst);
    let base = (origin.contents(), dev.contents());
    let (target, recs, want, before) = if incremental {
        (&src.s1, &src.inc, &src.want1, &src.want0)
    } else {
        (&src.s0, &src.full, &src.want0, &zeros)
    };
    let the_plan = |dst: &Store| {
        let b = incremental.then(|| dst.snapshot_by_source_id(src.s0.id.0).unwrap().id);
        plan(&target.name, target, b, resumable)
    };

    let run = |cut: Option<u64>| -> Rig {
        let rail = PowerRail::new();
        let rig = Rig {
            origin: Arc::new(CrashDev::from_image(rail.clone(), base.0.clone())),
            dev: Arc::new(CrashDev::from_image(rail.clone(), base.1.clone())),
            rail,
        };
        if let Some(k) = cut {
            rig.rail.cut_at_write(k);
        }
        let o: Arc<dyn BlockDev> = rig.origin.clone();
        let d: Arc<dyn BlockDev> = rig.dev.clone();
        if let Ok(dst) = Store::open(o, d, 0) {
            let result = apply(&dst, &the_plan(&dst), recs, 2);
            if cut.is_none() {
                result.unwrap();
            }
            std::mem::forget(dst); // a cut machine runs no destructor
        }
        rig
    };
    let total = run(None).rail.writes();
    assert!(
        total > 30,
        "apply too small to be interesting ({total} writes)"
    );
    // Rebuilds one crash image pair and checks it: the target wholly there or absent, the
    // base intact, and the apply completes from there. Says how it got there.
    let check = |o: Vec<u8>, d: Vec<u8>, what: &str| -> Recovered {
        let (o, d) = (Arc::new(MemDev::from_vec(o)), Arc::new(MemDev::from_vec(d)));
        let report = verify(&*d, Some(SIZE)).unwrap();
        assert!(report.is_clean(), "{what}: verify: {:?}", report.problems);
        let dst = Store::open(o, d, 0).unwrap_or_else(|e| panic!("{what}: open: {e}"));
        let base_snap = incremental.then(|| dst.snapshot_by_source_id(src.s0.id.0).unwrap());
        if let Some(r0) = &base_snap {
            assert_eq!(
                read_all(&dst, View::Snapshot(r0.id)),
                src.want0,
                "{what}: base"
            );
        }
        let (made, how) = match dst.snapshot_by_source_id(target.id.0) {
            Some(made) => (made, Recovered::Published),
            None => {
                assert!(dst.snapshot_by_name(&target.name).is_err(), "{what}");
                match dst.receive_status().unwrap() {
                    Some(st) => {
                        assert!(resumable, "{what}: a non-resumable apply survived");
                        if incremental {
                            assert_eq!(&read_all(&dst, View::Origin), before, "{what}");
                        }
                        let next = u64::from_le_bytes(st.token.as_slice().try_into().unwrap());
                        stage_all(&dst, recs, next, 2).unwrap();
                        let made = dst
                            .finish_receive(&token(CHUNKS))
                            .unwrap_or_else(|e| panic!("{what}: resume: {e}"));
                        (made, Recovered::Resumed)
                    }
                    None => {
                        assert_eq!(&read_all(&dst, View::Origin), before, "{what}: origin");
                        let made = apply(&dst, &the_plan(&dst), recs, 2)
                            .unwrap_or_else(|e| panic!("{what}: restart: {e}"));
                        (made, Recovered::Restarted)
                    }
                }
            }
        };
        assert_eq!(
            &read_all(&dst, View::Snapshot(made.id)),
            want,
            "{what}: target"
        );
        assert_eq!(&read_all(&dst, View::Origin), want, "{what}: origin");
        if let Some(r0) = &base_snap {
            assert_eq!(
                read_all(&dst, View::Snapshot(r0.id)),
                src.want0,
                "{what}: base after"
            );
        }
        assert_clean(&dst, what);
        how
    };
    // Opening a store whose apply passed its commit point folds it into the origin, and one
    // whose direct apply cannot be resumed zeroes the origin again: that recovery is itself
    // cut at each of its writes.
    let reopen = |o: &[u8], d: &[u8], cut: Option<u64>| -> Rig {
        let rail = PowerRail::new();
        let rig = Rig {
            origin: Arc::new(CrashDev::from_image(rail.clone(), o.to_vec())),
            dev: Arc::new(CrashDev::from_image(rail.clone(), d.to_vec())),
            rail,
        };
        if let Some(k) = cut {
            rig.rail.cut_at_write(k);
        }
        let (o2, d2): (Arc<dyn BlockDev>, Arc<dyn BlockDev>) =
            (rig.origin.clone(), rig.dev.clone());
        match Store::open(o2, d2, 0) {
            Ok(dst) => {
                // Recovery is the open; the power goes before the close (a forgotten store
                // would keep its images alive for the rest of the test).
                rig.rail.cut_now();
                drop(dst);
            }
            Err(e) => assert!(cut.is_some(), "uncut reopen: {e}"),
        }
        rig
    };
    let mut cases = 0;
    let (mut published, mut resumed, mut restarted, mut reopen_cuts) = (0, 0, 0, 0);
    let mut count = |how: Recovered| match how {
        Recovered::Published => published += 1,
        Recovered::Resumed => resumed += 1,
        Recovered::Restarted => restarted += 1,
    };
    for k in 1..=total {
        let rig = run(Some(k));
        for (keep, tear) in [(0.0, 0.0), (1.0, 0.0), (0.5, 0.3), (0.5, 0.8)] {
            let what = format!(
                "incremental {incremental}, resumable {resumable}, {per_record} chunks a record: cut at write {k}/{total}, keep {keep} tear {tear}"
            );
            let o = rig.origin.crash_image(&mut src.rng, keep, tear);
            let d = rig.dev.crash_image(&mut src.rng, keep, tear);
            let writes = reopen(&o, &d, None).rail.writes();
            // The reopen layer on every 8th first cut, one rebuild each: enough to reach every
            // write of a fold (and of a direct apply's zeroing) without an hour of checks.
            if k % 8 == 0 && keep == 0.5 && tear == 0.3 {
                for k2 in 1..=writes {
                    let again = reopen(&o, &d, Some(k2));
                    for keep2 in [0.0, 1.0] {
                        let what =
                            format!("{what}, reopen cut at write {k2}/{writes}, keep {keep2}");
                        count(check(
                            again.origin.crash_image(&mut src.rng, keep2, 0.0),
                            again.dev.crash_image(&mut src.rng, keep2, 0.0),
                            &what,
                        ));
                        reopen_cuts += 1;
                    }
                }
            }
            count(check(o, d, &what));
            cases += 1;
        }
    }
    println!(
        "apply power-cut cases (incremental {incremental}, resumable {resumable}, up to {per_record} chunks a record): {cases}, and {reopen_cuts} with the reopen cut too; over both, {published} published, {resumed} resumed, {restarted} restarted"
    );
    assert!(published > 0 && restarted > 0 && (resumed > 0) == resumable);
    // A staged apply folds after its commit point, so some cuts leave a fold for the reopen.
    assert!(
        !incremental || reopen_cuts > 0,
        "no reopen had a fold to cut"
    );
}

/// How a crashed apply came through recovery.
enum Recovered {
    /// The target snapshot was there.
    Published,
    /// The kept apply state was resumed and finished.
    Resumed,
    /// Nothing was kept; the apply ran again.
    Restarted,
}

#[test]
fn power_cut_at_every_write_of_a_staged_incremental_apply() {
    crash_every_write_of_an_apply(true, true, 1);
    crash_every_write_of_an_apply(true, false, 1);
}

#[test]
fn power_cut_at_every_write_of_a_direct_full_apply() {
    crash_every_write_of_an_apply(false, true, 1);
    crash_every_write_of_an_apply(false, false, 1);
}

/// Records of several chunks, as the exporter sends (up to 1 MiB), some with zero chunks among
/// their data chunks: each batch of a direct apply then covers a wider origin range, which
/// the store hands to the device to start writing back before the checkpoint's flush.
#[test]
fn power_cut_at_every_write_of_a_direct_apply_of_multi_chunk_records() {
    crash_every_write_of_an_apply(false, true, 5);
    crash_every_write_of_an_apply(false, false, 5);
}

//! Export from one store, apply to another, through the real stream bytes: the replica reads
//! exactly as the source, however the stream is cut into pieces; a stream with any byte
//! flipped is refused and leaves nothing behind.

use multisnap_replication::apply::{Applier, Outcome};
use multisnap_replication::export::{export, ExportPlan};
use multisnap_replication::ReplicationError;
mod common;

use multisnap_store::{verify, Store, View};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::Arc;

const CHUNK: u64 = 4096;
const SIZE: u64 = 200 * CHUNK - 300;

fn store() -> Arc<Store> {
    Arc::new(common::mem_store(SIZE, CHUNK))
}

fn read_all(s: &Store, v: View) -> Vec<u8> {
    common::read_all(s, v, SIZE)
}

fn writes(s: &Store, rng: &mut StdRng, n: usize) {
    for _ in 0..n {
        let len = rng.gen_range(1..3 * CHUNK);
        let off = rng.gen_range(0..SIZE - len);
        let byte: u8 = if rng.gen_bool(0.25) { 0 } else { rng.gen() };
        s.write_origin(off, &vec![byte; len as usize]).unwrap();
    }
}

fn stream(src: &Store, base: Option<&str>, target: &str) -> Vec<u8> {
    let plan = ExportPlan::new(src, base, target, &[]).unwrap();
    let mut out = Vec::new();
    export(src, &plan, &mut out, |_| {}).unwrap();
    out
}

/// Feeds `bytes` in random pieces; returns the outcome or the error.
fn apply(dst: &Arc<Store>, bytes: &[u8], rng: &mut StdRng) -> Result<Outcome, ReplicationError> {
    let mut a = Applier::new(dst.clone(), false, false)?
        // Small batches and checkpoints: several are on the staging thread at once.
        .with_batching(rng.gen_range(1..32) * 1024, rng.gen_range(16..256) * 1024);
    let mut at = 0;
    while at < bytes.len() {
        let n = rng.gen_range(1..=(bytes.len() - at).min(70_000));
        if let Err(e) = a.feed(&bytes[at..at + n]) {
            return Err(a.fail(e));
        }
        at += n;
    }
    a.finish()
}

#[test]
fn replica_reads_as_the_source_after_full_and_incremental_streams() {
    let mut rng = StdRng::seed_from_u64(3);
    let src = store();
    let dst = store();
    writes(&src, &mut rng, 40);
    src.create_snapshot("s0").unwrap();
    let full = stream(&src, None, "s0");
    let Outcome::Complete(made) = apply(&dst, &full, &mut rng).unwrap() else {
        panic!("full stream incomplete")
    };
    assert_eq!(made.name, "s0");
    let mut prev = "s0".to_string();
    for round in 1..=4 {
        writes(&src, &mut rng, 5);
        let name = format!("s{round}");
        src.create_snapshot(&name).unwrap();
        let inc = stream(&src, Some(&prev), &name);
        assert!(
            inc.len() < full.len(),
            "an incremental carries less than a full stream"
        );
        let Outcome::Complete(made) = apply(&dst, &inc, &mut rng).unwrap() else {
            panic!("incremental incomplete")
        };
        let s = src.snapshot_by_name(&name).unwrap();
        assert_eq!(made.source_id, s.id.0);
        assert_eq!(
            read_all(&dst, View::Snapshot(made.id)),
            read_all(&src, View::Snapshot(s.id))
        );
        prev = name;
    }
    // Applying the same incremental again: its target exists already.
    let again = stream(&src, Some("s3"), "s4");
    assert!(apply(&dst, &again, &mut rng).is_err());
    dst.reclaim_all().unwrap();
    assert!(verify(&**dst.store_dev(), Some(SIZE)).unwrap().is_clean());
}

#[test]
fn every_flipped_byte_is_refused_and_leaves_nothing() {
    let mut rng = StdRng::seed_from_u64(4);
    let src = store();
    writes(&src, &mut rng, 12);
    src.create_snapshot("s0").unwrap();
    let full = stream(&src, None, "s0");
    let dst = store();
    let used = dst.stats().used_bytes;
    let step = (full.len() / 300).max(1);
    let mut checked = 0;
    for at in (0..full.len()).step_by(step).chain([full.len() - 1]) {
        let mut bad = full.clone();
        bad[at] ^= 1 << rng.gen_range(0..8);
        let r = apply(&dst, &bad, &mut rng);
        assert!(r.is_err(), "flip at byte {at} was accepted");
        assert!(
            dst.list_snapshots().is_empty(),
            "flip at {at}: a snapshot appeared"
        );
        assert!(
            dst.receive_status().unwrap().is_none(),
            "flip at {at}: apply left behind"
        );
        checked += 1;
    }
    dst.reclaim_all().unwrap();
    assert_eq!(
        dst.stats().used_bytes,
        used,
        "space of failed applies returned"
    );
    assert!(verify(&**dst.store_dev(), Some(SIZE)).unwrap().is_clean());
    // A truncated stream is incomplete, not an error, and is discarded (not resumable).
    let cut = &full[..full.len() / 2];
    match apply(&dst, cut, &mut rng).unwrap() {
        Outcome::Incomplete { resume_token } => assert!(resume_token.is_none()),
        Outcome::Complete(_) => panic!("half a stream completed"),
    }
    assert!(dst.receive_status().unwrap().is_none());
    println!("flipped-byte streams refused: {checked}");
}

/// A snapshot taken before the source grew streams at its own size: it applies into a volume of
/// that size and reads there as on the source; the grown origin's newer snapshot does not fit.
#[test]
fn a_snapshot_from_before_a_resize_streams_at_its_own_size() {
    let mut rng = StdRng::seed_from_u64(19);
    let src = store();
    writes(&src, &mut rng, 30);
    src.create_snapshot("small").unwrap();
    src.resize(SIZE + 5 * CHUNK + 77, 8 << 20).unwrap();
    src.write_origin(SIZE - 10, &[0x5a; 20_000]).unwrap();
    src.create_snapshot("big").unwrap();

    let small = src.snapshot_by_name("small").unwrap();
    let dst = store();
    let Outcome::Complete(made) = apply(&dst, &stream(&src, None, "small"), &mut rng).unwrap()
    else {
        panic!("full stream incomplete")
    };
    assert_eq!(made.size, SIZE);
    assert_eq!(
        read_all(&dst, View::Snapshot(made.id)),
        read_all(&src, View::Snapshot(small.id))
    );
    let other = store();
    let refused = apply(&other, &stream(&src, None, "big"), &mut rng);
    assert!(
        matches!(refused, Err(ReplicationError::Geometry { .. })),
        "{refused:?}"
    );
}

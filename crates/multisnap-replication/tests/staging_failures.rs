//! A write that fails while the staging thread is several batches behind the decoder.
//!
//! The applier decodes ahead while its stager writes earlier batches, so when a write fails
//! the decoder has already moved past it. Whatever the failing write, batch size and
//! checkpoint interval, a resumable apply must keep a resume point no later than the first
//! chunk that was not written, everything before that point must be on the replica, and
//! resuming from it must give a replica identical to the source.

mod common;

use multisnap_delta::ResumePoint;
use multisnap_replication::apply::{Applier, Outcome};
use multisnap_replication::export::{export, ExportPlan};
use multisnap_store::fault::{FailOp as Op, Failing};
use multisnap_store::{verify, BlockDev, MemDev, Store, View};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::Arc;

const CHUNK: u64 = 4096;
const CHUNKS: u64 = 384;
const SIZE: u64 = CHUNKS * CHUNK;
const ENOSPC: i32 = 28;

fn read_all(s: &Store, v: View) -> Vec<u8> {
    common::read_all(s, v, SIZE)
}

/// An empty replica whose origin device fails what the test arms.
fn failing_replica() -> (Arc<Failing<MemDev>>, Arc<Store>) {
    let origin = Arc::new(Failing::new(MemDev::new(SIZE)));
    let store = Store::create(
        origin.clone() as Arc<dyn BlockDev>,
        Arc::new(MemDev::new(8 << 20)),
        &common::options(CHUNK),
    )
    .unwrap();
    (origin, Arc::new(store))
}

/// A source volume whose snapshot `s0` holds random chunks with runs of zero chunks between
/// them (which a full stream sends as zero records); its contents and the indexes of its
/// non-zero chunks, in the order a full apply writes them.
fn source(rng: &mut StdRng) -> (Store, Vec<u8>, Vec<u64>) {
    let src = common::mem_store(SIZE, CHUNK);
    let mut written = Vec::new();
    let mut c = 0;
    while c < CHUNKS {
        let run = rng.gen_range(1..24).min(CHUNKS - c);
        if rng.gen_bool(0.8) {
            let data: Vec<u8> = (0..run * CHUNK).map(|_| rng.gen_range(1..=255)).collect();
            src.write_origin(c * CHUNK, &data).unwrap();
            written.extend(c..c + run);
        }
        c += run;
    }
    src.create_snapshot("s0").unwrap();
    let image = read_all(&src, View::Origin);
    (src, image, written)
}

fn stream(src: &Store, token: &[u8]) -> Vec<u8> {
    let plan = ExportPlan::new(src, None, "s0", token).unwrap();
    let mut out = Vec::new();
    export(src, &plan, &mut out, |_| {}).unwrap();
    out
}

/// Feeds `bytes` in random pieces, then ends the stream.
fn feed(mut a: Applier, bytes: &[u8], rng: &mut StdRng) -> Result<Outcome, String> {
    let mut at = 0;
    while at < bytes.len() {
        let n = rng.gen_range(1..=(bytes.len() - at).min(20_000));
        if let Err(e) = a.feed(&bytes[at..at + n]) {
            return Err(a.fail(e).to_string());
        }
        at += n;
    }
    a.finish().map_err(|e| e.to_string())
}

#[test]
fn a_failed_write_behind_the_decoder_keeps_only_what_was_staged_and_resumes_to_the_source() {
    let mut rng = StdRng::seed_from_u64(24);
    for case in 0..40 {
        let (src, image, written) = source(&mut rng);
        let (origin, dst) = failing_replica();
        // A full stream into an empty volume writes its non-zero chunks into the origin in
        // ascending order, each once: the `fail_at`-th write is that of chunk `failed`.
        let fail_at = rng.gen_range(0..written.len());
        let failed = written[fail_at];
        origin.fail(Op::Write, fail_at as u64, ENOSPC, false);
        let batch = rng.gen_range(1..48) * 1024;
        let checkpoint = rng.gen_range(8..192) * 1024;
        let what = format!("case {case}: write {fail_at} (chunk {failed}) fails, batches of {batch}, checkpoints every {checkpoint}");

        let a = Applier::new(dst.clone(), true, false)
            .unwrap()
            .with_batching(batch, checkpoint);
        let err = match feed(a, &stream(&src, &[]), &mut rng) {
            Err(e) => e,
            Ok(o) => panic!("{what}: the apply ended without the failure: {o:?}"),
        };
        assert!(err.contains("No space left"), "{what}: {err}");
        assert_eq!(origin.failures(), 1, "{what}");

        let status = dst
            .receive_status()
            .unwrap()
            .unwrap_or_else(|| panic!("{what}: the apply was not kept for resumption"));
        let kept = ResumePoint::from_bytes(&status.token).unwrap();
        assert!(
            kept.next_chunk <= failed,
            "{what}: kept a resume point at chunk {} past the chunk whose write failed",
            kept.next_chunk
        );
        // Everything before the kept point is on the replica's origin.
        let mut got = vec![0u8; (kept.next_chunk * CHUNK) as usize];
        origin.read_at(&mut got, 0).unwrap();
        assert!(
            got == image[..got.len()],
            "{what}: the origin below the kept point (chunk {}) differs from the source",
            kept.next_chunk
        );

        let a = Applier::new(dst.clone(), true, true)
            .unwrap()
            .with_batching(batch, checkpoint);
        let made = match feed(a, &stream(&src, &status.token), &mut rng) {
            Ok(Outcome::Complete(made)) => made,
            other => panic!("{what}: the resumed apply did not complete: {other:?}"),
        };
        assert!(
            read_all(&dst, View::Snapshot(made.id)) == image,
            "{what}: the replica's snapshot differs from the source"
        );
        assert!(
            read_all(&dst, View::Origin) == image,
            "{what}: the replica's origin differs from the source"
        );
        dst.reclaim_all().unwrap();
        let report = verify(&**dst.store_dev(), Some(SIZE)).unwrap();
        assert!(report.is_clean(), "{what}: {:?}", report.problems);
    }
}

/// The same failure in an apply that is not resumable: the apply is discarded once nothing
/// is staging any more, and the volume is left as it was (empty, no snapshot, no apply).
#[test]
fn a_failed_write_behind_the_decoder_discards_an_apply_that_is_not_resumable() {
    let mut rng = StdRng::seed_from_u64(25);
    for case in 0..20 {
        let (src, _, written) = source(&mut rng);
        let (origin, dst) = failing_replica();
        let fail_at = rng.gen_range(0..written.len());
        origin.fail(Op::Write, fail_at as u64, ENOSPC, false);
        let a = Applier::new(dst.clone(), false, false)
            .unwrap()
            .with_batching(rng.gen_range(1..48) * 1024, rng.gen_range(8..192) * 1024);
        let err = feed(a, &stream(&src, &[]), &mut rng).expect_err("the write failure");
        assert!(err.contains("No space left"), "case {case}: {err}");
        assert!(dst.receive_status().unwrap().is_none(), "case {case}");
        assert!(dst.list_snapshots().is_empty(), "case {case}");
        assert!(
            read_all(&dst, View::Origin).iter().all(|&b| b == 0),
            "case {case}: the discarded apply left data in the origin"
        );
        dst.reclaim_all().unwrap();
        let report = verify(&**dst.store_dev(), Some(SIZE)).unwrap();
        assert!(report.is_clean(), "case {case}: {:?}", report.problems);
    }
}

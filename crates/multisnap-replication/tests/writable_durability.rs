//! What a delta carries of a writable snapshot must survive a power cut on the source: the
//! receiver keeps it as the base of the next incremental, which sends only what differs from
//! the source's own copy of that base. A write the stream carried but the source then lost
//! would stay on the receiver under every later snapshot, where the source has other data.

mod common;

use multisnap_replication::apply::{Applier, Outcome};
use multisnap_replication::export::{export, ExportPlan};
use multisnap_store::fault::{CrashDev, PowerRail};
use multisnap_store::{CreateOptions, MemDev, SnapshotId, Store, View};
use std::sync::Arc;

const CHUNK: u64 = 4096;
const SIZE: u64 = 64 * CHUNK;
const STORE_BYTES: usize = 8 << 20;

fn options() -> CreateOptions {
    common::options(CHUNK)
}

fn read_all(s: &Store, v: View) -> Vec<u8> {
    common::read_all(s, v, SIZE)
}

/// The first byte where `a` and `b` differ, with what each holds there.
fn first_difference(a: &[u8], b: &[u8]) -> Option<(usize, u8, u8)> {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .map(|i| (i, a[i], b[i]))
}

/// Exports `base..target` from `src` and applies it to `dst`; the new snapshot's id on `dst`.
fn send(src: &Store, dst: &Arc<Store>, base: Option<&str>, target: &str) -> SnapshotId {
    let plan = ExportPlan::new(src, base, target, &[]).unwrap();
    let mut bytes = Vec::new();
    export(src, &plan, &mut bytes, |_| {}).unwrap();
    let mut a = Applier::new(dst.clone(), false, false).unwrap();
    a.feed(&bytes).unwrap();
    match a.finish().unwrap() {
        Outcome::Complete(made) => made.id,
        Outcome::Incomplete { .. } => panic!("the stream of {target} ended early"),
    }
}

#[test]
fn an_unflushed_write_to_a_writable_snapshot_sent_in_a_delta_survives_a_power_cut() {
    let rail = PowerRail::new();
    let origin = Arc::new(CrashDev::new(rail.clone(), SIZE as usize));
    let dev = Arc::new(CrashDev::new(rail.clone(), STORE_BYTES));
    let src = Store::create(origin.clone(), dev.clone(), &options()).unwrap();
    let dst = Arc::new(
        Store::create(
            Arc::new(MemDev::new(SIZE)),
            Arc::new(MemDev::new(STORE_BYTES as u64)),
            &options(),
        )
        .unwrap(),
    );

    src.write_origin(0, &vec![0x11; SIZE as usize]).unwrap();
    src.create_snapshot("a").unwrap();
    send(&src, &dst, None, "a");
    let w = src.create_snapshot_with("w", true).unwrap();
    // Written, never flushed: a power cut may take it back, unless the export kept it.
    src.write_snapshot(w.id, 5 * CHUNK, &vec![0x77; CHUNK as usize])
        .unwrap();
    let w_on_dst = send(&src, &dst, Some("a"), "w");
    assert_eq!(
        read_all(&dst, View::Snapshot(w_on_dst))[(5 * CHUNK) as usize],
        0x77
    );

    rail.cut_now();
    drop(src);
    let src = Store::open(
        Arc::new(MemDev::from_vec(origin.durable_image())),
        Arc::new(MemDev::from_vec(dev.durable_image())),
        0,
    )
    .unwrap();
    let w = src.snapshot_by_name("w").unwrap();
    let lost = first_difference(
        &read_all(&src, View::Snapshot(w.id)),
        &read_all(&dst, View::Snapshot(w_on_dst)),
    );
    assert_eq!(
        lost, None,
        "the source's writable snapshot lost what its delta carried (offset, source, replica)"
    );

    let b = src.create_snapshot("b").unwrap();
    let b_on_dst = send(&src, &dst, Some("w"), "b");
    let wrong = first_difference(
        &read_all(&src, View::Snapshot(b.id)),
        &read_all(&dst, View::Snapshot(b_on_dst)),
    );
    assert_eq!(
        wrong, None,
        "the replica's snapshot differs from the source's (offset, source, replica)"
    );
}

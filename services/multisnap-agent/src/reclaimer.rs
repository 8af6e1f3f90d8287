//! One background thread per agent that reclaims the space of deleted snapshots, merges
//! rollbacks (RevertVolume) into their origins and hydrates clones, in bounded steps, so neither holds up I/O for
//! long. Progress goes to the log (and,
//! through the store's counters, to metrics).

use crate::volumes::Volumes;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Removals per step: small enough that the metadata lock is held for milliseconds.
const STEP_BUDGET: usize = 512;
/// Chunks a rollback's merge copies per step (each step ends with an origin flush and a
/// commit), and steps per volume per round, so reclamation and other volumes take turns.
const MERGE_STEP_CHUNKS: usize = 64;
const MERGE_STEPS_PER_ROUND: usize = 16;

pub fn spawn(
    volumes: Arc<Volumes>,
    stop: Arc<AtomicBool>,
    mut throttle: crate::clones::Throttle,
) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name("reclaimer".into())
        .spawn(move || run(&volumes, &stop, &mut throttle))
        .expect("cannot spawn the reclaimer thread")
}

fn run(volumes: &Volumes, stop: &AtomicBool, throttle: &mut crate::clones::Throttle) {
    while !stop.load(Ordering::Acquire) {
        let mut worked = false;
        throttle.refill();
        for v in volumes.list() {
            if stop.load(Ordering::Acquire) {
                return;
            }
            // A failed volume refuses every step until it is reopened (`volume_reopen`);
            // trying would only log the same error every second.
            if v.store.failure().is_some() {
                continue;
            }
            worked |= merge_some(&v);
            worked |= crate::clones::hydrate_some(volumes, &v, throttle);
            let mut last_log = Instant::now();
            loop {
                if stop.load(Ordering::Acquire) {
                    return;
                }
                match v.store.reclaim_step(STEP_BUDGET) {
                    Ok(p) if p.is_idle() => break,
                    Ok(p) => {
                        worked = true;
                        if last_log.elapsed() > Duration::from_secs(2) {
                            last_log = Instant::now();
                            tracing::info!(volume = %v.name, pending = p.pending.len(), scanned_chunk = p.scanned_chunk,
                                chunk_count = p.chunk_count, chunks_freed = p.chunks_freed, "reclaiming deleted snapshots");
                        }
                    }
                    Err(e) => {
                        tracing::error!(volume = %v.name, error = %e, "reclamation failed; will retry");
                        break;
                    }
                }
            }
        }
        if !worked {
            // Sleep on one volume's wake-up; deletions elsewhere are seen within a second.
            match volumes.list().first() {
                Some(v) => v.store.wait_for_reclaim_work(Duration::from_secs(1)),
                None => std::thread::sleep(Duration::from_secs(1)),
            }
        }
    }
}

/// A few steps of the volume's rollback merge, if one runs; whether any work was done.
fn merge_some(v: &crate::volumes::Volume) -> bool {
    for step in 0..MERGE_STEPS_PER_ROUND {
        match v.store.merge_step(MERGE_STEP_CHUNKS) {
            Ok(Some(p)) => {
                if step == 0 {
                    tracing::debug!(volume = %v.name, snapshot = %p.target_name, merged_chunks = p.cursor,
                        total_chunks = p.chunk_count, "merging a rollback into the origin");
                }
            }
            Ok(None) => return step > 0,
            Err(e) => {
                tracing::error!(volume = %v.name, error = %e, "rollback merge failed; will retry");
                return false;
            }
        }
    }
    true
}

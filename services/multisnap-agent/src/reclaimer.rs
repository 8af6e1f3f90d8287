//! One background thread per agent that reclaims the space of deleted snapshots, in bounded
//! steps, so a large deletion never holds up I/O for long. Progress goes to the log (and,
//! through the store's counters, to metrics).

use crate::volumes::Volumes;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Removals per step: small enough that the metadata lock is held for milliseconds.
const STEP_BUDGET: usize = 512;

pub fn spawn(volumes: Arc<Volumes>, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name("reclaimer".into())
        .spawn(move || run(&volumes, &stop))
        .expect("cannot spawn the reclaimer thread")
}

fn run(volumes: &Volumes, stop: &AtomicBool) {
    while !stop.load(Ordering::Acquire) {
        let mut worked = false;
        for v in volumes.list() {
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

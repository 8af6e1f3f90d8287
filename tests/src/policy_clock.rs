//! The policy clock the scenarios control: an agent started with `--test-clock-file FILE` reads
//! the time for its snapshot policies from FILE, so a test walks through hours and days
//! without sleeping (`tests/snapshot_policy.rs`, `tests/mirror.rs`, `tests/mirror_fanout.rs`).

use crate::{cli_ok, Agent};
use std::path::Path;

/// 2026-01-01T00:00:00Z, a Thursday: where every scenario's clock starts.
pub const START: i64 = 1_767_225_600;
pub const HOUR: i64 = 3600;

/// Sets the clock file to `t` (seconds since the epoch). Written aside and renamed over, so
/// the agent never reads a half-written time.
pub fn set_clock(clock: &Path, t: i64) {
    let new = clock.with_extension("new");
    std::fs::write(&new, format!("{t}\n")).unwrap();
    std::fs::rename(&new, clock).unwrap();
}

/// An hourly policy on the default volume keeping `keep` hourly snapshots and nothing else.
pub fn hourly_policy(a: &Agent, keep: u32) {
    let keep = keep.to_string();
    cli_ok(
        a,
        &[
            "policy",
            "set",
            "default",
            "--every",
            "1h",
            "--keep-hourly",
            &keep,
        ],
    );
}

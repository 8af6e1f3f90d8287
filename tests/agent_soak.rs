//! Crash soak of the real agent (tests/soak/soak.py): random writes, flushes, snapshot creates
//! and deletes, writable-snapshot writes, rollbacks, clones (written, flushed and deleted while
//! they hydrate), qemu-io pattern writes and fio runs with verify over NBD and gRPC, and the
//! volume mirrored to a second agent (incremental deltas, resumed after cuts); the source
//! killed with SIGKILL at a random moment of each cycle, the target in half of them (often
//! while it applies), and restarted. After every restart each image must read exactly what
//! the model says (every acknowledged write, every snapshot unchanged, every snapshot on the
//! target as the source's read when taken, every region fio finished as fio wrote it) and
//! `verify` must pass on both data directories. 20 cycles here; `MULTISNAP_SOAK_CYCLES=500`
//! for a soak, and `MULTISNAP_SOAK_SEED` to replay one.

use multisnap_tests::{self as common, require_grpcio, require_tools};

#[test]
fn kill_9_at_random_moments_loses_nothing_acknowledged() {
    require_grpcio!();
    require_tools!("qemu-io", "fio");
    if !common::python_has(&["nbd"]) {
        multisnap_tests::missing_dependency!("python cannot import nbd");
        return;
    }
    let cycles = std::env::var("MULTISNAP_SOAK_CYCLES").unwrap_or_else(|_| "20".into());
    let seed = std::env::var("MULTISNAP_SOAK_SEED").unwrap_or_else(|_| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap();
        (now.as_nanos() % 1_000_000_007).to_string()
    });
    eprintln!("soak: {cycles} cycles, seed {seed} (MULTISNAP_SOAK_SEED={seed} replays it)");
    let tmp = tempfile::tempdir().unwrap();
    let out = common::python()
        .arg(common::repo_root().join("tests/soak/soak.py"))
        .arg(common::agent_bin())
        .arg(tmp.path().join("data"))
        .args([&cycles, &seed])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let log_tail = |name: &str| {
        let text = std::fs::read_to_string(tmp.path().join(name)).unwrap_or_default();
        let mut lines: Vec<&str> = text.lines().rev().take(30).collect();
        lines.reverse();
        lines.join("\n")
    };
    assert!(
        out.status.success() && text.contains("SOAK OK"),
        "seed {seed}:\n{text}\nsource agent log: {}\ntarget agent log: {}",
        log_tail("agent.log"),
        log_tail("target.log")
    );
    eprintln!("{}", text.lines().last().unwrap_or_default());
}

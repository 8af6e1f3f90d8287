//! Crash soak of the real agent (tests/soak/soak.py): random writes, flushes, snapshot creates
//! and deletes, writable-snapshot writes, rollbacks, clones (written, flushed and deleted while
//! they hydrate) and qemu-io pattern writes over NBD and gRPC, the agent killed with SIGKILL
//! at a random moment of each cycle and restarted; after every restart each image must read
//! exactly what the model says (every acknowledged write, every snapshot unchanged) and
//! `verify` must pass. 20 cycles here; `MULTISNAP_SOAK_CYCLES=500` for a soak, and
//! `MULTISNAP_SOAK_SEED` to replay one.

use multisnap_tests::{self as common, require_grpcio, require_tools};

#[test]
fn kill_9_at_random_moments_loses_nothing_acknowledged() {
    require_grpcio!();
    require_tools!("qemu-io");
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
    assert!(
        out.status.success() && text.contains("SOAK OK"),
        "seed {seed}:\n{text}\nagent log: {}",
        std::fs::read_to_string(tmp.path().join("agent.log"))
            .unwrap_or_default()
            .lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .join("\n")
    );
    eprintln!("{}", text.lines().last().unwrap_or_default());
}

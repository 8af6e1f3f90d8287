//! Clones with real clients: patterns written to a volume with qemu-io, a snapshot, the source
//! changed afterwards, `multisnap volume create c1 --from default@base` on an agent whose
//! hydration is throttled so that it is still running while the test looks: nbdcopy of the
//! clone (its sha256) equals the snapshot's while it hydrates; writes to the clone land and
//! survive; deleting the source snapshot or the source volume is refused naming the clone; a
//! snapshot of the clone, a clone of that snapshot and a clone of the clone's current contents
//! work; the agent restarted mid-hydration wires the clone to its source again and the
//! hydration resumes and ends (`--wait`); afterwards the source snapshot can go, the clone
//! keeps its data, its hidden source snapshot is gone, and `verify` passes.

use common::*;
use multisnap_tests::{self as common, require_tools};
use serde_json::Value;
use std::process::Output;
use std::time::{Duration, Instant};

fn volume(agent: &Agent, name: &str) -> Value {
    let out = cli_ok(agent, &["--output", "json", "volume", "show", name]);
    serde_json::from_str(&out).unwrap()
}

/// Refused with exit 5 (FAILED_PRECONDITION), naming the clone.
fn assert_refused_naming(out: Output, clone: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "failed precondition: {err}");
    assert!(
        err.contains(&format!("\"{clone}\"")),
        "names the clone: {err}"
    );
}

fn wait_hydrated(agent: &Agent, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !volume(agent, name)["hydration"].is_null() {
        assert!(Instant::now() < deadline, "{name} never finished hydrating");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn clone_with_qemu_io_and_nbdcopy() {
    require_tools!("qemu-io", "nbdcopy", "sha256sum");
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // 2 MiB/s: the 49 MiB of data below take about 25 s to hydrate.
    let slow = [
        "--default-volume-size",
        "268435456",
        "--hydration-bytes-per-sec",
        "2097152",
    ];
    let agent = Agent::start(&data, &slow);

    qemu_io(
        &agent.uri("default"),
        &[
            "write -P 0xaa 0 32M",
            "write -P 0xbb 96M 16M",
            "write -P 0x11 200M 1M",
        ],
    );
    cli_ok(&agent, &["snapshot", "create", "default", "base"]);
    // The source changes after the snapshot; the clone must not see it.
    qemu_io(&agent.uri("default"), &["write -P 0xcc 0 24M"]);
    let base_sha = copy_sha(&agent, "default@base", &tmp.path().join("base.raw"));

    let out = cli_ok(
        &agent,
        &[
            "--output",
            "json",
            "volume",
            "create",
            "c1",
            "--from",
            "default@base",
        ],
    );
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["sizeBytes"], 268435456u64, "{out}");
    assert_eq!(v["hydration"]["sourceVolume"], "default", "{out}");
    assert_eq!(v["hydration"]["sourceSnapshot"], "base", "{out}");

    // Usable at once: the clone reads as the snapshot, byte for byte, while it hydrates.
    let clone_img = tmp.path().join("c1.raw");
    assert_eq!(copy_sha(&agent, "c1", &clone_img), base_sha);
    let read = qemu_io(
        &agent.uri("c1"),
        &[
            "read -P 0xaa 0 32M",
            "read -P 0x00 32M 64M",
            "read -P 0xbb 96M 16M",
            "read -P 0x11 200M 1M",
        ],
    );
    assert!(!read.contains("Pattern verification failed"), "{read}");
    let h = &volume(&agent, "c1")["hydration"];
    assert!(h.is_object(), "hydration ended too soon for the test");
    let table = cli_ok(&agent, &["volume", "show", "c1"]);
    assert!(table.contains("from default@base:"), "{table}");

    // The source is protected while the clone hydrates.
    assert_refused_naming(
        cli(&agent, &["snapshot", "delete", "default", "base"]),
        "c1",
    );
    assert_refused_naming(
        cli(&agent, &["volume", "delete", "default", "--force"]),
        "c1",
    );

    // Writes to the clone during the hydration: over source data and over a source hole.
    qemu_io(
        &agent.uri("c1"),
        &["write -P 0x5a 1M 64K", "write -P 0x66 150M 2M"],
    );
    // A snapshot of the clone, a clone of it, and a clone of the clone's current contents.
    cli_ok(&agent, &["snapshot", "create", "c1", "s1"]);
    let s1_sha = copy_sha(&agent, "c1@s1", &tmp.path().join("s1.raw"));
    cli_ok(&agent, &["volume", "create", "c2", "--from", "c1@s1"]);
    cli_ok(&agent, &["volume", "create", "c3", "--from", "c1"]);
    assert_eq!(copy_sha(&agent, "c2", &tmp.path().join("c2.raw")), s1_sha);
    assert_eq!(copy_sha(&agent, "c3", &tmp.path().join("c3.raw")), s1_sha);
    let snaps = cli_ok(&agent, &["snapshot", "list", "c1"]);
    assert!(
        !snaps.contains(".clone-"),
        "hidden snapshot listed: {snaps}"
    );
    assert_refused_naming(cli(&agent, &["snapshot", "delete", "c1", "s1"]), "c2");
    let list = cli_ok(&agent, &["volume", "list"]);
    assert!(list.contains("HYDRATED"), "{list}");

    // A restart mid-hydration: the clone comes back wired to its source and resumes.
    let before = volume(&agent, "c1")["hydration"]["hydratedChunks"]
        .as_u64()
        .expect("still hydrating before the restart");
    stop_and_verify_hydrating(agent);
    let agent = Agent::start(&data, &slow);
    let h = volume(&agent, "c1")["hydration"].clone();
    assert!(h.is_object(), "the hydration state was lost: {h}");
    assert_eq!(h["sourceAttached"], true, "{h}");
    assert!(h["hydratedChunks"].as_u64().unwrap() >= before, "{h}");
    assert_eq!(copy_sha(&agent, "c2", &tmp.path().join("c2b.raw")), s1_sha);
    let read = qemu_io(
        &agent.uri("c1"),
        &[
            "read -P 0x5a 1M 64K",
            "read -P 0x66 150M 2M",
            "read -P 0xbb 96M 16M",
        ],
    );
    assert!(!read.contains("Pattern verification failed"), "{read}");
    stop_and_verify_hydrating(agent);

    // Unthrottled, the hydrations end; `--wait` follows a new one to its end.
    let agent = Agent::start(&data, &["--default-volume-size", "268435456"]);
    let out = cli_ok(
        &agent,
        &[
            "--output",
            "json",
            "volume",
            "create",
            "c4",
            "--from",
            "default@base",
            "--wait",
        ],
    );
    let v: Value = serde_json::from_str(&out).unwrap();
    assert!(v["hydration"].is_null(), "--wait returned early: {out}");
    assert_eq!(copy_sha(&agent, "c4", &tmp.path().join("c4.raw")), base_sha);
    for name in ["c1", "c2", "c3"] {
        wait_hydrated(&agent, name);
    }
    // No tie left: the source snapshot goes, the clones keep their data, the hidden
    // snapshot c3 copied is gone.
    cli_ok(&agent, &["snapshot", "delete", "default", "base"]);
    cli_ok(&agent, &["snapshot", "delete", "c1", "s1"]);
    assert_eq!(copy_sha(&agent, "c2", &tmp.path().join("c2c.raw")), s1_sha);
    assert_eq!(copy_sha(&agent, "c3", &tmp.path().join("c3c.raw")), s1_sha);
    let read = qemu_io(
        &agent.uri("c1"),
        &[
            "read -P 0xaa 0 1M",
            "read -P 0x5a 1M 64K",
            "read -P 0xaa 1088K 30M",
            "read -P 0x66 150M 2M",
            "read -P 0x11 200M 1M",
        ],
    );
    assert!(!read.contains("Pattern verification failed"), "{read}");
    let hidden = volume(&agent, "c1")["snapshotCount"].as_u64().unwrap();
    assert_eq!(hidden, 0, "c1 still has snapshots after the hydrations");
    // A clone is sparse where its source is: 49 MiB of data, plus the writes.
    let meta = std::fs::metadata(data.join("volumes/c4/origin.img")).unwrap();
    let allocated = std::os::unix::fs::MetadataExt::blocks(&meta) * 512;
    assert!(
        allocated < 64 << 20,
        "c4's origin allocates {allocated} bytes"
    );
    cli_ok(&agent, &["volume", "delete", "default"]);
    agent.stop_and_verify();
}

/// `stop_and_verify` for a data directory with clones still hydrating: `verify` passes and
/// says so.
fn stop_and_verify_hydrating(agent: Agent) {
    let report = agent.stop_and_verify_report();
    assert!(
        report.contains("a clone still hydrating"),
        "verify: {report}"
    );
}

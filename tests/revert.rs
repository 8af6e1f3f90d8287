//! Rolling a volume back to a snapshot in place, with real clients: patterns written with
//! qemu-io, a snapshot, the patterns overwritten and new ones added, `multisnap snapshot
//! revert`, then the origin read back with `qemu-io -c 'read -P'` and copied whole with nbdcopy,
//! its sha256 compared with the snapshot's export: right after the call (the merge has just
//! started) and after `--wait` saw it end. Writes after the rollback land on top; the snapshot
//! keeps its contents; a writable snapshot is refused with FAILED_PRECONDITION; the agent
//! stops clean and `verify` passes.

use common::*;
use multisnap_tests::{self as common, require_tools};

#[test]
fn revert_with_qemu_io_and_nbdcopy() {
    require_tools!("qemu-io", "nbdcopy", "sha256sum");
    let tmp = tempfile::tempdir().unwrap();
    let agent = Agent::start(
        &tmp.path().join("data"),
        &["--default-volume-size", "268435456"],
    );

    qemu_io(
        &agent.uri("default"),
        &[
            "write -P 0xaa 0 32M",
            "write -P 0xbb 96M 16M",
            "write -P 0x11 200M 1M",
        ],
    );
    cli_ok(&agent, &["snapshot", "create", "default", "base"]);
    qemu_io(
        &agent.uri("default"),
        &[
            "write -P 0xcc 0 24M",
            "write -P 0xdd 100M 8M",
            "write -P 0xee 150M 40M",
        ],
    );
    let base_img = tmp.path().join("base.raw");
    let base_sha = copy_sha(&agent, "default@base", &base_img);

    // Right after the call the origin reads as the snapshot, patterns and holes alike.
    let out = cli_ok(
        &agent,
        &["--output", "json", "snapshot", "revert", "default", "base"],
    );
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["snapshot"], "base", "{out}");
    let read = qemu_io(
        &agent.uri("default"),
        &[
            "read -P 0xaa 0 32M",
            "read -P 0x00 32M 64M",
            "read -P 0xbb 96M 16M",
            "read -P 0x00 150M 40M",
            "read -P 0x11 200M 1M",
        ],
    );
    assert!(!read.contains("Pattern verification failed"), "{read}");
    let origin_img = tmp.path().join("origin.raw");
    assert_eq!(copy_sha(&agent, "default", &origin_img), base_sha);

    // A write after the rollback lands on top and stays there through the merge.
    qemu_io(&agent.uri("default"), &["write -P 0x5a 1M 64K"]);
    let out = cli_ok(&agent, &["snapshot", "revert", "default", "base", "--wait"]);
    assert!(out.contains("rolled default back"), "{out}");
    // The second rollback (to the same snapshot) took the write away again; once merged, the
    // origin is the snapshot, and the snapshot itself is unchanged.
    let show = cli_ok(&agent, &["--output", "json", "volume", "show", "default"]);
    let vol: serde_json::Value = serde_json::from_str(&show).unwrap();
    assert!(
        vol["merge"].is_null(),
        "--wait returned before the merge ended: {show}"
    );
    assert_eq!(copy_sha(&agent, "default", &origin_img), base_sha);
    assert_eq!(
        copy_sha(&agent, "default@base", &tmp.path().join("base2.raw")),
        base_sha
    );
    qemu_io(&agent.uri("default"), &["write -P 0x77 64M 1M"]);
    let read = qemu_io(
        &agent.uri("default"),
        &[
            "read -P 0xaa 0 32M",
            "read -P 0x77 64M 1M",
            "read -P 0xbb 96M 16M",
        ],
    );
    assert!(!read.contains("Pattern verification failed"), "{read}");

    // A writable snapshot is no fixed image to roll back to.
    cli_ok(
        &agent,
        &["snapshot", "create", "default", "scratch", "--writable"],
    );
    let refused = cli(&agent, &["snapshot", "revert", "default", "scratch"]);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(5), "failed precondition: {err}");
    assert!(err.contains("\"scratch\" is writable"), "{err}");

    agent.stop_and_verify();
}

//! Growing a volume with real clients: the CLI's `volume resize`, gRPC `ResizeVolume` and its
//! refusals, nbdinfo sizes of the origin and of a snapshot taken before, qemu-io past the old
//! end, and an offline verify after a clean stop.

use common::*;
use multisnap_tests::{self as common, require_grpcio, require_tools};
use std::process::Command;

const MIB: u64 = 1 << 20;

/// `multisnap` against `agent`'s gRPC port.
fn cli(agent: &Agent, args: &[&str]) -> Command {
    let mut cmd = Command::new(cli_bin());
    cmd.arg("--endpoint")
        .arg(format!("http://{}", agent.grpc))
        .args(args)
        .env_remove("MULTISNAP_ENDPOINT");
    cmd
}

fn cli_ok(agent: &Agent, args: &[&str]) -> String {
    output_ok(&mut cli(agent, args))
}

fn resize(agent: &Agent, name: &str, size: u64) -> Result<serde_json::Value, (String, String)> {
    let body = format!(r#"{{"name":"{name}","size_bytes":{size}}}"#);
    grpc_call(
        &agent.grpc,
        "multisnap.v1.VolumeService/ResizeVolume",
        &body,
    )
}

fn nbd_size(uri: &str) -> u64 {
    run_ok("nbdinfo", &["--size", uri])
        .trim()
        .parse()
        .expect("nbdinfo --size prints a number")
}

#[test]
fn a_volume_grows_and_its_old_snapshot_keeps_its_size() {
    require_tools!("nbdinfo", "qemu-io");
    require_grpcio!();
    let tmp = tempfile::tempdir().unwrap();
    let agent = Agent::start(tmp.path(), &["--default-volume-size", "16777216"]);
    agent.wait_grpc();

    cli_ok(
        &agent,
        &[
            "volume",
            "create",
            "r",
            "--size",
            "16M",
            "--chunk-size",
            "64K",
        ],
    );
    qemu_io(&agent.uri("r"), &["write -P 0xab 0 16M"]);
    cli_ok(&agent, &["snapshot", "create", "r", "before"]);
    assert_eq!(nbd_size(&agent.uri("r")), 16 * MIB);

    // The size syntax of `volume create`; the output is the grown volume.
    let shown = cli_ok(&agent, &["volume", "resize", "r", "24M"]);
    assert!(
        shown.contains("size:              24 MiB (25165824 bytes)"),
        "{shown}"
    );
    assert!(shown.contains("snapshots:         1"), "{shown}");

    // New connections see the new size; the snapshot keeps its own.
    assert_eq!(nbd_size(&agent.uri("r")), 24 * MIB);
    assert_eq!(nbd_size(&agent.uri("r@before")), 16 * MIB);
    // The API says so too: what a restore of the snapshot needs (CSI's restore size).
    let snap = grpc_call(
        &agent.grpc,
        "multisnap.v1.SnapshotService/GetSnapshot",
        r#"{"volume":"r","name":"before"}"#,
    )
    .unwrap();
    assert_eq!(snap["size_bytes"], (16 * MIB).to_string(), "{snap}");
    // The new space reads as zeros, takes writes, and the snapshot is untouched by them.
    qemu_io(
        &agent.uri("r"),
        &["read -P 0 16M 8M", "write -P 0xcd 15M 2M"],
    );
    qemu_io(
        &agent.uri("r"),
        &["read -P 0xcd 15M 2M", "read -P 0xab 0 15M"],
    );
    qemu_io_ro(&agent.uri("r@before"), &["read -P 0xab 0 16M"]);
    // What changed since the old snapshot: the chunk rewritten below the old end and all
    // that lies past it.
    let map = run_ok(
        "nbdinfo",
        &["--map=multisnap:changed:before", &agent.uri("r")],
    );
    let runs: Vec<Vec<u64>> = map
        .lines()
        .map(|l| {
            l.split_whitespace()
                .take(3)
                .map(|x| x.parse().unwrap())
                .collect()
        })
        .collect();
    assert_eq!(
        runs,
        vec![vec![0, 15 * MIB, 0], vec![15 * MIB, 9 * MIB, 1]],
        "{map}"
    );

    // gRPC: the same size again is a no-op; a smaller one is OUT_OF_RANGE with the size in
    // the message, as is one beyond what the store can grow to; an unknown volume NOT_FOUND.
    let v = resize(&agent, "r", 25165824).expect("same size");
    // proto3 JSON spells 64-bit integers as strings.
    assert_eq!(v["size_bytes"], "25165824", "{v}");
    let (code, msg) = resize(&agent, "r", 1048576).expect_err("shrink");
    assert_eq!(code, "OUT_OF_RANGE", "{msg}");
    assert!(
        msg.contains("25165824") && msg.contains("only grow"),
        "{msg}"
    );
    let (code, msg) = resize(&agent, "r", 1099511627776).expect_err("beyond the store's reach");
    assert_eq!(code, "OUT_OF_RANGE", "{msg}");
    assert!(msg.contains("grow in place only"), "{msg}");
    let (code, _) = resize(&agent, "nope", 1048576).expect_err("no volume");
    assert_eq!(code, "NOT_FOUND");

    // The CLI maps OUT_OF_RANGE to exit 4 with the agent's message.
    let out = cli(&agent, &["volume", "resize", "r", "20M"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "cannot resize volume \"r\": out of range: volume is 25165824 bytes and can only grow"
        ),
        "{err}"
    );

    // After a clean stop and start the sizes hold, and verify is clean.
    let dir = agent.data_dir.clone();
    agent.stop_and_verify();
    let agent = Agent::start(&dir, &[]);
    assert_eq!(nbd_size(&agent.uri("r")), 24 * MIB);
    assert_eq!(nbd_size(&agent.uri("r@before")), 16 * MIB);
    qemu_io_ro(&agent.uri("r"), &["read -P 0xcd 15M 2M"]);
    agent.stop_and_verify();
}

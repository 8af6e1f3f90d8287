//! Snapshot groups against a running agent, with real clients:
//! - writers racing the cut: two libnbd writers put increasing sequence numbers in two
//!   volumes (each seq to the first, acknowledged, then to the second) while groups are cut
//!   with the `multisnap` CLI; both members read back over NBD must agree (tests/groups/race.py
//!   states the invariant);
//! - the API's answers: the same name and volumes is the same group, other volumes are
//!   ALREADY_EXISTS, unknown volumes and groups NOT_FOUND, a member cannot be deleted alone nor
//!   its volume, the group survives a restart and its deletion removes the members;
//! - kill -9 of the agent while groups are being cut: after the restart every group is whole
//!   or absent, never half made.

use common::*;
use multisnap_tests::{self as common, require_tools};
use std::process::{Command, Stdio};
use std::time::Duration;

fn exit_code(out: &std::process::Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

fn volume(agent: &Agent, name: &str, size: &str) {
    cli_ok(agent, &["volume", "create", name, "--size", size]);
}

/// The names of `volume`'s ready snapshots (deleted ones are listed until reclaimed) and the
/// group each belongs to ("" for none).
fn snapshots(agent: &Agent, volume: &str) -> Vec<(String, String)> {
    let out = cli_ok(agent, &["-o", "json", "snapshot", "list", volume]);
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    doc["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["state"] == "SNAPSHOT_STATE_READY")
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_string(),
                s["group"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn groups(agent: &Agent) -> serde_json::Value {
    let out = cli_ok(agent, &["-o", "json", "snapshot", "group", "list"]);
    serde_json::from_str::<serde_json::Value>(&out).unwrap()["groups"].clone()
}

#[test]
fn writers_racing_group_cuts_never_see_members_disagree() {
    require_tools!("nbdinfo");
    if !python_has(&["nbd"]) {
        missing_dependency("python's libnbd bindings (nbd) are not installed");
        return;
    }
    let rounds: u32 = std::env::var("MULTISNAP_GROUP_RACE_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50);
    let tmp = tempfile::tempdir().unwrap();
    let agent = Agent::start(&tmp.path().join("data"), &[]);
    volume(&agent, "db", "16M");
    volume(&agent, "wal", "16M");
    let out = python()
        .arg(repo_root().join("tests/groups/race.py"))
        .arg(cli_bin())
        .arg(format!("http://{}", agent.grpc))
        .arg(&agent.nbd_socket)
        .args(["db", "wal", &rounds.to_string()])
        .output()
        .expect("python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "race.py: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let counts: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    eprintln!("group race: {counts}");
    assert_eq!(counts["rounds"], rounds);
    assert_eq!(counts["checks"], 2 * rounds);
    // The writers kept writing throughout: many seqs per cut.
    assert!(
        counts["seqs_written"].as_u64().unwrap() > u64::from(rounds) * 4,
        "{counts}"
    );
    assert_eq!(groups(&agent).as_array().unwrap().len(), 0);
    agent.stop_and_verify();
}

#[test]
fn groups_are_idempotent_refuse_conflicts_and_survive_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let agent = Agent::start(&data, &[]);
    for v in ["a", "b", "c"] {
        volume(&agent, v, "4M");
    }
    let made = cli_ok(
        &agent,
        &["-o", "json", "snapshot", "group", "create", "g1", "b", "a"],
    );
    let made: serde_json::Value = serde_json::from_str(&made).unwrap();
    let members: Vec<&str> = made["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["nbdExport"].as_str().unwrap())
        .collect();
    assert_eq!(members, ["a@g1", "b@g1"]);
    // Same name, same volumes: the same group.
    let again = cli_ok(
        &agent,
        &["-o", "json", "snapshot", "group", "create", "g1", "a", "b"],
    );
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&again).unwrap(),
        made
    );
    // Same name, other volumes: ALREADY_EXISTS.
    let out = cli(&agent, &["snapshot", "group", "create", "g1", "a", "c"]);
    assert_eq!(exit_code(&out), 3, "{}", describe(&out));
    // A single snapshot cannot take a member's name, nor a group a single snapshot's.
    let out = cli(&agent, &["snapshot", "create", "c", "g1"]);
    assert_eq!(exit_code(&out), 0, "c has no member g1: {}", describe(&out));
    let out = cli(&agent, &["snapshot", "create", "a", "g1"]);
    assert_eq!(exit_code(&out), 3, "{}", describe(&out));
    let out = cli(&agent, &["snapshot", "group", "create", "g2", "a", "nope"]);
    assert_eq!(exit_code(&out), 2, "{}", describe(&out));
    let out = cli(&agent, &["snapshot", "group", "show", "nope"]);
    assert_eq!(exit_code(&out), 2, "{}", describe(&out));
    let out = cli(&agent, &["snapshot", "group", "delete", "nope"]);
    assert_eq!(exit_code(&out), 2, "{}", describe(&out));
    let out = cli(&agent, &["snapshot", "group", "create", "g3", "a", "a"]);
    assert_eq!(exit_code(&out), 4, "{}", describe(&out));
    assert!(snapshots(&agent, "a")
        .iter()
        .all(|(n, _)| n != "g2" && n != "g3"));
    // A member cannot go alone, nor its volume.
    let out = cli(&agent, &["snapshot", "delete", "a", "g1"]);
    assert_eq!(exit_code(&out), 5, "{}", describe(&out));
    let out = cli(&agent, &["volume", "delete", "b", "--force"]);
    assert_eq!(exit_code(&out), 5, "{}", describe(&out));
    assert_eq!(
        snapshots(&agent, "a"),
        [("g1".to_string(), "g1".to_string())]
    );
    // GetSnapshot over gRPC names the group too.
    let s = agent.grpc(
        "multisnap.v1.SnapshotService/GetSnapshot",
        r#"{"volume":"b","name":"g1"}"#,
    );
    assert!(s.contains(r#""group": "g1""#), "{s}");

    // A restart keeps the group and its members' ties.
    agent.stop_and_verify();
    let agent = Agent::start(&data, &[]);
    let listed = groups(&agent);
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0], made);
    let out = cli(&agent, &["snapshot", "delete", "b", "g1"]);
    assert_eq!(exit_code(&out), 5, "{}", describe(&out));

    // Deleting the group deletes its members; the name is free again.
    cli_ok(&agent, &["snapshot", "group", "delete", "g1"]);
    assert_eq!(groups(&agent).as_array().unwrap().len(), 0);
    assert!(snapshots(&agent, "a").is_empty());
    assert!(snapshots(&agent, "b").is_empty());
    cli_ok(&agent, &["volume", "delete", "b"]);
    // c still has its own snapshot g1, so g1 cannot be cut on it until that goes.
    let out = cli(&agent, &["snapshot", "group", "create", "g1", "a", "c"]);
    assert_eq!(exit_code(&out), 3, "{}", describe(&out));
    assert!(
        snapshots(&agent, "a").is_empty(),
        "a refused group left a member"
    );
    cli_ok(&agent, &["snapshot", "delete", "c", "g1"]);
    cli_ok(&agent, &["snapshot", "group", "create", "g1", "a", "c"]);
    assert_eq!(
        snapshots(&agent, "c"),
        [("g1".to_string(), "g1".to_string())]
    );
    agent.stop_and_verify();
}

/// kill -9 at random moments while groups are cut, then a start: every group the restarted
/// agent lists has all its members, and a group it does not list left no member behind.
#[test]
fn kill9_while_cutting_groups_leaves_whole_groups_or_none() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut agent = Agent::start(&data, &[]);
    let vols = ["v1", "v2", "v3"];
    for v in vols {
        volume(&agent, v, "8M");
    }
    let (mut whole, mut absent) = (0, 0);
    for round in 0..12u64 {
        // Writes in flight, so the cut has copy-outs and syncs to wait for.
        qemu_io_background(&agent, &vols);
        let name = format!("k{round}");
        let mut create = Command::new(cli_bin())
            .arg("--endpoint")
            .arg(format!("http://{}", agent.grpc))
            .args(["snapshot", "group", "create", &name])
            .args(vols)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(round * 8));
        agent.kill9();
        let _ = create.wait();
        agent = Agent::start(&data, &[]);
        let listed = groups(&agent);
        let shown = listed
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["name"] == name.as_str());
        let holders: Vec<&str> = vols
            .iter()
            .copied()
            .filter(|v| snapshots(&agent, v).iter().any(|(n, _)| *n == name))
            .collect();
        if shown {
            assert_eq!(
                holders, vols,
                "round {round}: group {name} is missing members"
            );
            whole += 1;
        } else {
            assert!(
                holders.is_empty(),
                "round {round}: {name} left members {holders:?}"
            );
            absent += 1;
        }
    }
    eprintln!("kill -9 during group cuts: {whole} whole, {absent} absent after restart");
    agent.stop_and_verify();
}

/// Starts writes to each volume that run on while the caller cuts a group (qemu-io over NBD,
/// not waited for: a kill of the agent ends them).
fn qemu_io_background(agent: &Agent, vols: &[&str]) {
    if !have("qemu-io") {
        return;
    }
    for v in vols {
        let _ = Command::new("qemu-io")
            .args(["-f", "raw", &agent.uri(v), "-c", "write -P 0x5a 0 4M"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
    }
}

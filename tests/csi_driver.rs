//! The CSI driver (`multisnap-csi`) on its unix socket with a live agent behind it:
//! - the csi-sanity port, the sidecars' call sequences and bad input (tests/csi/sanity.py,
//!   Python grpcio with stubs compiled from proto/ by grpcio-tools);
//! - gRPC reflection on the CSI socket (grpcurl-style discovery);
//! - idempotency across a driver restart, and a retired volume whose reaping a crash
//!   interrupted being finished by the next driver's start;
//! - a volume group snapshot checked at the data (qemu-io patterns in each member's export)
//!   and across a driver restart.

use common::CsiDriver as Driver;
use common::*;
use multisnap_tests::{self as common, require_tools};
use std::time::{Duration, Instant};

const NODE: &str = CSI_NODE;

fn require_grpc_tools() -> bool {
    if python_has(&["grpc", "grpc_tools"]) {
        return true;
    }
    multisnap_tests::missing_dependency!("python grpcio/grpcio-tools missing");
    false
}

#[test]
fn csi_sanity_port_sidecar_sequences_and_bad_input() {
    if !require_grpc_tools() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let agent = Agent::start(&tmp.path().join("data"), &[]);
    let driver = Driver::start(tmp.path(), &agent);
    let out = python()
        .arg(repo_root().join("tests/csi/sanity.py"))
        .arg(&driver.socket)
        .arg(agent.data_dir.join("grpc.sock"))
        .arg(NODE)
        .output()
        .expect("python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    let summary = stdout
        .lines()
        .find(|l| l.starts_with("SUMMARY "))
        .unwrap_or_else(|| panic!("no SUMMARY line: the suite did not finish"));
    let count = |key: &str| -> usize {
        summary
            .split(' ')
            .find_map(|f| f.strip_prefix(&format!("{key}=")))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{summary}: no {key}"))
    };
    assert!(out.status.success() && count("failed") == 0, "{summary}");
    // The suite covers what the driver advertises: most cases run here.
    assert!(count("passed") >= 60, "{summary}");
    // Every case cleaned up after itself: only the agent's own default volume is left.
    assert_eq!(agent.volume_names(), ["default"]);
    drop(driver);
    agent.stop_and_verify();
}

#[test]
fn reflection_and_idempotency_across_driver_restarts() {
    require_tools!("python3");
    if !require_grpc_tools() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let agent = Agent::start(&tmp.path().join("data"), &[]);
    let driver = Driver::start(tmp.path(), &agent);

    // Discovery by reflection, no proto files.
    let listed = grpcurl().arg(driver.addr()).arg("list").output().unwrap();
    let services = String::from_utf8_lossy(&listed.stdout);
    for s in [
        "csi.v1.Identity",
        "csi.v1.Controller",
        "csi.v1.Node",
        "grpc.health.v1.Health",
    ] {
        assert!(services.contains(s), "{services}");
    }

    let create = r#"{"name":"pvc-restart","capacity_range":{"required_bytes":"1048576"},
        "volume_capabilities":[{"mount":{"fs_type":"ext4"},"access_mode":{"mode":"SINGLE_NODE_WRITER"}}]}"#;
    let vol = driver.ok("csi.v1.Controller/CreateVolume", create);
    let id = vol["volume"]["volume_id"].as_str().unwrap().to_string();
    assert!(id.starts_with("node-1/csi-"), "{vol}");
    let snap_req = format!(r#"{{"name":"snapshot-restart","source_volume_id":"{id}"}}"#);
    let snap = driver.ok("csi.v1.Controller/CreateSnapshot", &snap_req);

    // A new driver process knows nothing but what the agent holds: the same answers.
    driver.kill9();
    let driver = Driver::start(tmp.path(), &agent);
    let again = driver.ok("csi.v1.Controller/CreateVolume", create);
    assert_eq!(again["volume"]["volume_id"], vol["volume"]["volume_id"]);
    assert_eq!(
        driver.ok("csi.v1.Controller/CreateSnapshot", &snap_req),
        snap
    );
    let bigger = create.replace("1048576", "2097152\",\"limit_bytes\":\"2097152");
    let (code, msg) = driver
        .call("csi.v1.Controller/CreateVolume", &bigger)
        .unwrap_err();
    assert_eq!(code, "ALREADY_EXISTS", "{msg}");

    // Deleted for Kubernetes, kept by the agent for its snapshot.
    driver.ok(
        "csi.v1.Controller/DeleteVolume",
        &format!(r#"{{"volume_id":"{id}"}}"#),
    );
    assert_eq!(agent.volume_names().len(), 2);
    // A crash between the snapshot's deletion and the volume's: the snapshot goes behind the
    // driver's back, as if the driver died right after deleting it.
    driver.kill9();
    let agent_name = id.split('/').nth(1).unwrap();
    let snap_name = snap["snapshot"]["snapshot_id"]
        .as_str()
        .unwrap()
        .rsplit('@')
        .next()
        .unwrap();
    agent.grpc(
        "multisnap.v1.SnapshotService/DeleteSnapshot",
        &format!(r#"{{"volume":"{agent_name}","name":"{snap_name}"}}"#),
    );
    assert_eq!(agent.volume_names().len(), 2);
    // The next driver's start finishes the job.
    let driver = Driver::start(tmp.path(), &agent);
    let deadline = Instant::now() + Duration::from_secs(10);
    while agent.volume_names().len() != 1 {
        assert!(
            Instant::now() < deadline,
            "the retired volume was not reaped: {:?}",
            agent.volume_names()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(driver);
    agent.stop_and_verify();
}

/// A volume group snapshot through the driver, checked at the data: two volumes written with
/// qemu-io, cut together, written again; each member's NBD export still reads the first
/// patterns. The group answers the same after a driver restart (the driver keeps no state), its
/// members carry its id, and its deletion leaves the agent as it was.
#[test]
fn group_snapshot_members_hold_the_data_of_the_cut_across_driver_restarts() {
    require_tools!("qemu-io");
    if !require_grpc_tools() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let agent = Agent::start(&tmp.path().join("data"), &[]);
    let driver = Driver::start(tmp.path(), &agent);
    let listed = grpcurl().arg(driver.addr()).arg("list").output().unwrap();
    let services = String::from_utf8_lossy(&listed.stdout);
    assert!(services.contains("csi.v1.GroupController"), "{services}");

    let mut volumes = Vec::new();
    for (name, fill) in [("pvc-db", "0x11"), ("pvc-wal", "0x22")] {
        let req = format!(
            r#"{{"name":"{name}","capacity_range":{{"required_bytes":"4194304"}},
            "volume_capabilities":[{{"block":{{}},"access_mode":{{"mode":"SINGLE_NODE_WRITER"}}}}]}}"#
        );
        let v = driver.ok("csi.v1.Controller/CreateVolume", &req);
        let id = v["volume"]["volume_id"].as_str().unwrap().to_string();
        let agent_name = id.split('/').nth(1).unwrap().to_string();
        qemu_io(&agent.uri(&agent_name), &[&format!("write -P {fill} 0 1M")]);
        volumes.push((id, agent_name));
    }
    let create = format!(
        r#"{{"name":"groupsnapshot-1","source_volume_ids":["{}","{}"]}}"#,
        volumes[0].0, volumes[1].0
    );
    let group = driver.ok("csi.v1.GroupController/CreateVolumeGroupSnapshot", &create);
    let gid = group["group_snapshot"]["group_snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(gid.starts_with("node-1/group@csi-"), "{group}");
    for (_, agent_name) in &volumes {
        qemu_io(&agent.uri(agent_name), &["write -P 0x99 0 1M"]);
    }
    let members = group["group_snapshot"]["snapshots"].as_array().unwrap();
    assert_eq!(members.len(), 2, "{group}");
    for m in members {
        assert_eq!(m["group_snapshot_id"], gid.as_str(), "{m}");
        let id = m["snapshot_id"].as_str().unwrap();
        let export = id.split_once('/').unwrap().1;
        let fill = if m["source_volume_id"] == volumes[0].0.as_str() {
            "0x11"
        } else {
            "0x22"
        };
        let read = qemu_io_ro(&agent.uri(export), &[&format!("read -P {fill} 0 1M")]);
        assert!(
            !read.contains("Pattern verification failed"),
            "{export}: {read}"
        );
    }

    // A new driver process answers the same from the agent's records.
    driver.kill9();
    let driver = Driver::start(tmp.path(), &agent);
    let again = driver.ok("csi.v1.GroupController/CreateVolumeGroupSnapshot", &create);
    assert_eq!(again, group);
    let get = driver.ok(
        "csi.v1.GroupController/GetVolumeGroupSnapshot",
        &format!(r#"{{"group_snapshot_id":"{gid}"}}"#),
    );
    assert_eq!(get["group_snapshot"], group["group_snapshot"]);
    let member = members[0]["snapshot_id"].as_str().unwrap();
    let (code, msg) = driver
        .call(
            "csi.v1.Controller/DeleteSnapshot",
            &format!(r#"{{"snapshot_id":"{member}"}}"#),
        )
        .unwrap_err();
    assert_eq!(code, "INVALID_ARGUMENT", "{msg}");

    driver.ok(
        "csi.v1.GroupController/DeleteVolumeGroupSnapshot",
        &format!(r#"{{"group_snapshot_id":"{gid}"}}"#),
    );
    for (id, _) in &volumes {
        driver.ok(
            "csi.v1.Controller/DeleteVolume",
            &format!(r#"{{"volume_id":"{id}"}}"#),
        );
    }
    assert_eq!(agent.volume_names(), ["default"]);
    drop(driver);
    agent.stop_and_verify();
}

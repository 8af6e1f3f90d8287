//! The agent on a fresh data directory, driven by qemu-io, qemu-img, nbdinfo and nbdcopy:
//! the default volume, snapshots as read-only exports, restart, SIGTERM, verify, the lock.

use common::*;
use multisnap_tests::{self as common, require_tools};

#[test]
fn default_volume_snapshots_and_restart_with_real_clients() {
    require_tools!("qemu-io", "qemu-img", "nbdinfo", "nbdcopy");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");

    // Fresh machine: the default volume appears and takes writes over TCP and the unix socket.
    let agent = Agent::start(&dir, &["--default-volume-size", "67108864"]);
    let out = qemu_io(
        &agent.uri("default"),
        &["write -P 0xab 0 1M", "write -P 0x11 5000 3000"],
    );
    assert!(out.contains("wrote"), "{out}");
    qemu_io(
        &agent.unix_uri("default"),
        &["read -P 0xab 0 4096", "read -P 0x11 5000 3000"],
    );
    let list = run_ok("nbdinfo", &["--list", &format!("nbd://{}", agent.nbd)]);
    assert!(list.contains("export=\"default\""), "{list}");
    assert!(list.contains("67108864"), "{list}");

    // A second agent on the same directory is refused, clearly.
    let second = agent_cmd(&dir, &["verify"]);
    assert!(!second.status.success());
    assert!(String::from_utf8_lossy(&second.stderr).contains("in use by another multisnap-agent"));

    let status = agent.stop();
    assert!(status.success(), "SIGTERM exit: {status:?}");

    // Snapshot offline, then write over it after a restart.
    let out = agent_cmd(&dir, &["snapshot", "create", "default", "before"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let agent = Agent::start(&dir, &[]);
    qemu_io(&agent.uri("default"), &["write -P 0xcd 0 2M"]);
    qemu_io_ro(
        &agent.uri("default@before"),
        &[
            "read -P 0xab 0 5000",
            "read -P 0x11 5000 3000",
            "read -P 0xab 8000 1040576",
            "read -P 0 1M 1M",
        ],
    );
    qemu_io_ro(&agent.uri("default"), &["read -P 0xcd 0 2M"]);

    // The snapshot export is read-only.
    let w = run(
        "qemu-io",
        &[
            "-f",
            "raw",
            &agent.uri("default@before"),
            "-c",
            "write -P 1 0 4k",
        ],
    );
    let msg = String::from_utf8_lossy(&w.stderr).to_string() + &String::from_utf8_lossy(&w.stdout);
    assert!(
        !w.status.success() || msg.contains("Permission denied") || msg.contains("read-only"),
        "{msg}"
    );
    let info = run_ok("nbdinfo", &[&agent.uri("default@before")]);
    assert!(info.contains("is_read_only: true"), "{info}");

    // Unknown exports are refused with an error the client shows.
    let bad = run("nbdinfo", &[&agent.uri("nope@nothing")]);
    assert!(!bad.status.success());

    // The whole snapshot, copied out by nbdcopy, equals what qemu-img sees.
    let img = tmp.path().join("snap.raw");
    run_ok(
        "nbdcopy",
        &[&agent.uri("default@before"), img.to_str().unwrap()],
    );
    qemu_img_compare(&img, &agent.uri("default@before"));
    let data = std::fs::read(&img).unwrap();
    assert_eq!(data.len(), 64 << 20);
    assert!(data[..5000].iter().all(|&b| b == 0xab));
    assert!(data[5000..8000].iter().all(|&b| b == 0x11));
    assert!(data[(1 << 20)..].iter().all(|&b| b == 0));

    assert!(agent.stop().success());
    let v = agent_cmd(&dir, &["verify"]);
    let report = String::from_utf8_lossy(&v.stdout);
    assert!(v.status.success(), "verify: {report}");
    assert!(report.contains("volume default: clean"), "{report}");
}

#[test]
fn verify_reports_a_damaged_store() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let agent = Agent::start(&dir, &["--default-volume-size", "16777216"]);
    assert!(agent.stop().success());
    let out = agent_cmd(&dir, &["snapshot", "create", "default", "s1"]);
    assert!(out.status.success());
    let store = dir.join("volumes/default/store.msnap");
    // Wreck the exception index root named by both superblocks: flip bytes in every block
    // past the bitmaps that holds a node.
    let mut bytes = std::fs::read(&store).unwrap();
    for block in 4..64usize {
        let at = block * 4096 + 100;
        if at < bytes.len() {
            bytes[at] ^= 0x5a;
        }
    }
    std::fs::write(&store, &bytes).unwrap();
    let v = agent_cmd(&dir, &["verify"]);
    assert!(!v.status.success(), "verify must fail on a damaged store");
    let report = String::from_utf8_lossy(&v.stdout);
    assert!(report.contains("PROBLEM"), "{report}");
}

#[test]
fn verify_of_an_empty_directory_fails() {
    let tmp = tempfile::tempdir().unwrap();
    let v = agent_cmd(tmp.path(), &["verify"]);
    assert!(!v.status.success());
    assert!(String::from_utf8_lossy(&v.stdout).contains("no volumes found"));
}

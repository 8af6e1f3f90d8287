//! The data path with clients nobody here wrote: nbdinfo --map, kill -9 after FUA and FLUSH,
//! nbdcopy checksums, fio with verify=crc32c while snapshots are taken, writable snapshots.

use common::*;
use multisnap_tests::{self as common, require_grpcio, require_tools};
use std::process::Command;

fn sha256(path: &std::path::Path) -> String {
    run_ok("sha256sum", &[path.to_str().unwrap()])
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn nbdinfo_map_shows_holes_and_data() {
    require_tools!("nbdinfo", "qemu-io");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let agent = Agent::start(&dir, &["--default-volume-size", "16777216"]);
    let map = run_ok("nbdinfo", &["--map", &agent.uri("default")]);
    assert!(
        map.contains("hole,zero"),
        "a fresh sparse origin is one hole: {map}"
    );
    assert!(!map.contains(" data"), "{map}");
    qemu_io(&agent.uri("default"), &["write -P 1 1M 64k"]);
    let map = run_ok("nbdinfo", &["--map", &agent.uri("default")]);
    assert!(map.contains("data"), "{map}");
    assert!(map.lines().count() >= 3, "hole, data, hole: {map}");
    assert!(agent.stop().success());
}

#[test]
fn fua_and_flushed_writes_survive_kill_9() {
    require_tools!("qemu-io");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let agent = Agent::start(&dir, &["--default-volume-size", "16777216"]);
    assert!(
        agent_cmd(&dir, &["verify"]).status.code() != Some(0),
        "lock must be held while running"
    );
    let mut agent = agent;
    // A snapshot first, so the writes below go through copy-out.
    if have_grpcio() {
        agent.grpc(
            "multisnap.v1.SnapshotService/CreateSnapshot",
            r#"{"volume":"default","name":"base"}"#,
        );
    }
    qemu_io(&agent.uri("default"), &["write -f -P 0x33 0 64k"]);
    qemu_io(&agent.uri("default"), &["write -P 0x44 1M 128k", "flush"]);
    let mut child = agent.child.take().unwrap();
    child.kill().unwrap(); // SIGKILL: no flush, no commit, no clean exit
    child.wait().unwrap();
    let v = agent_cmd(&dir, &["verify"]);
    assert!(
        v.status.success(),
        "store after kill -9: {}",
        String::from_utf8_lossy(&v.stdout)
    );
    let agent = Agent::start(&dir, &[]);
    qemu_io_ro(
        &agent.uri("default"),
        &["read -P 0x33 0 64k", "read -P 0x44 1M 128k"],
    );
    if have_grpcio() {
        qemu_io_ro(&agent.uri("default@base"), &["read -P 0 0 2M"]);
    }
    assert!(agent.stop().success());
}

#[test]
fn nbdcopy_of_a_snapshot_matches_the_image_before_the_writes() {
    require_tools!("qemu-io", "nbdcopy", "qemu-img");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let agent = Agent::start(&dir, &["--default-volume-size", "33554432"]);
    for (i, off) in ["0", "3M", "17M", "31M"].iter().enumerate() {
        qemu_io(
            &agent.uri("default"),
            &[&format!("write -P {} {off} 300k", i + 1)],
        );
    }
    let before = tmp.path().join("before.raw");
    run_ok(
        "nbdcopy",
        &[&agent.uri("default"), before.to_str().unwrap()],
    );
    assert!(agent.stop().success());
    assert!(agent_cmd(&dir, &["snapshot", "create", "default", "s"])
        .status
        .success());
    let agent = Agent::start(&dir, &[]);
    for off in ["100k", "3M", "20M"] {
        qemu_io(&agent.uri("default"), &[&format!("write -P 0xee {off} 1M")]);
    }
    let snap = tmp.path().join("snap.raw");
    run_ok(
        "nbdcopy",
        &[
            "--connections=4",
            &agent.uri("default@s"),
            snap.to_str().unwrap(),
        ],
    );
    assert_eq!(
        sha256(&before),
        sha256(&snap),
        "snapshot differs from the image before the writes"
    );
    qemu_img_compare(&before, &agent.uri("default@s"));
    let now = tmp.path().join("now.raw");
    run_ok("nbdcopy", &[&agent.uri("default"), now.to_str().unwrap()]);
    assert_ne!(sha256(&before), sha256(&now));
    assert!(agent.stop().success());
}

#[test]
fn fio_verify_passes_while_snapshots_are_taken() {
    require_tools!("fio", "qemu-io");
    require_grpcio!();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let agent = Agent::start(&dir, &["--default-volume-size", "67108864"]);
    let uri = agent.uri("default");
    let fio = std::thread::spawn(move || {
        Command::new("fio")
            .args([
                "--name=verify",
                "--ioengine=nbd",
                &format!("--uri={uri}"),
                "--rw=randwrite",
                "--bs=4k",
                "--size=16m",
                "--iodepth=16",
                "--verify=crc32c",
                "--do_verify=1",
                "--verify_fatal=1",
                "--loops=3",
                "--verify_state_save=0",
            ])
            .output()
            .expect("fio")
    });
    // Each snapshot lets the job copy up to its 16 MiB once more: four fit the default store.
    let mut taken = 0;
    while !fio.is_finished() && taken < 4 {
        agent.grpc(
            "multisnap.v1.SnapshotService/CreateSnapshot",
            &format!(r#"{{"volume":"default","name":"during-{taken}"}}"#),
        );
        taken += 1;
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    let out = fio.join().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "fio failed: {text}");
    assert!(!text.contains("verify: bad"), "{text}");
    assert!(
        taken >= 2,
        "snapshots should have been taken during the run ({taken})"
    );
    agent.stop_and_verify();
}

#[test]
fn writable_snapshot_export_takes_writes_of_its_own() {
    require_tools!("qemu-io", "nbdinfo");
    require_grpcio!();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let agent = Agent::start(&dir, &["--default-volume-size", "16777216"]);
    qemu_io(&agent.uri("default"), &["write -P 0x10 0 1M"]);
    agent.grpc(
        "multisnap.v1.SnapshotService/CreateSnapshot",
        r#"{"volume":"default","name":"clone","writable":true}"#,
    );
    agent.grpc(
        "multisnap.v1.SnapshotService/CreateSnapshot",
        r#"{"volume":"default","name":"ro"}"#,
    );
    let info = run_ok("nbdinfo", &[&agent.uri("default@clone")]);
    assert!(info.contains("is_read_only: false"), "{info}");
    qemu_io(
        &agent.uri("default@clone"),
        &["write -P 0x20 4k 8k", "flush"],
    );
    qemu_io_ro(
        &agent.uri("default@clone"),
        &[
            "read -P 0x10 0 4k",
            "read -P 0x20 4k 8k",
            "read -P 0x10 12k 1012k",
        ],
    );
    qemu_io_ro(&agent.uri("default"), &["read -P 0x10 0 1M"]);
    qemu_io_ro(&agent.uri("default@ro"), &["read -P 0x10 0 1M"]);
    agent.stop_and_verify();
}

#[test]
fn nbdinfo_maps_the_chunks_changed_since_a_snapshot() {
    require_tools!("qemu-io", "nbdinfo");
    require_grpcio!();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let agent = Agent::start(&dir, &["--default-volume-size", "16777216"]);
    let create = |name: &str| {
        agent.grpc(
            "multisnap.v1.SnapshotService/CreateSnapshot",
            &format!(r#"{{"volume":"default","name":"{name}"}}"#),
        )
    };
    qemu_io(&agent.uri("default"), &["write -P 1 0 4M"]);
    create("a");
    qemu_io(
        &agent.uri("default"),
        &["write -P 2 1M 64k", "write -P 2 3M 100k"],
    );
    create("b");
    qemu_io(&agent.uri("default"), &["write -P 3 8M 4k"]);
    // Parse "offset length flags" lines into the changed ranges.
    let changed = |uri: &str, base: &str| -> Vec<(u64, u64)> {
        run_ok(
            "nbdinfo",
            &[&format!("--map=multisnap:changed:{base}"), uri],
        )
        .lines()
        .filter_map(|l| {
            let f: Vec<u64> = l
                .split_whitespace()
                .take(3)
                .filter_map(|x| x.parse().ok())
                .collect();
            (f.len() == 3 && f[2] == 1).then(|| (f[0], f[1]))
        })
        .collect()
    };
    let mib = 1u64 << 20;
    assert_eq!(
        changed(&agent.uri("default@b"), "a"),
        vec![(mib, 65536), (3 * mib, 131072)]
    );
    assert_eq!(
        changed(&agent.uri("default"), "a"),
        vec![(mib, 65536), (3 * mib, 131072), (8 * mib, 65536)]
    );
    assert_eq!(changed(&agent.uri("default"), "b"), vec![(8 * mib, 65536)]);
    assert_eq!(changed(&agent.uri("default@b"), "b"), vec![]);
    assert!(agent.stop().success());
}

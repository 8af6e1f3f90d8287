//! Copy-outs made by the kernel (`copy_file_range`, the agent's default `--copy-out kernel`) on
//! real filesystems: XFS, where the store shares the origin's extents (reflink), and ext4,
//! where the kernel copies the bytes. Snapshots are taken while a client writes and flushes
//! (random 4 KiB to 1 MiB writes, so most of them are first writes that copy out); each
//! snapshot's sha256 is taken as soon as it exists; the agent is then killed with SIGKILL in
//! the middle of the load. On restart every snapshot must read exactly what it read before,
//! and `verify` must find nothing. The kernel path must really have run (its counter, and on
//! XFS extents of the store file that the filesystem marks shared).

use multisnap_tests::loopfs::{loop_fs, sh};
use multisnap_tests::{self as common, require_tools};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Snapshots taken under the load before the kill.
const SNAPSHOTS: usize = 4;

fn killed_mid_run_keeps_every_snapshot(fstype: &str, mib: u64) {
    require_tools!(
        "fio",
        "nbdcopy",
        "qemu-io",
        "sha256sum",
        "losetup",
        "curl",
        "filefrag"
    );
    require_tools!(&format!("mkfs.{fstype}"));
    let tmp = tempfile::tempdir().unwrap();
    let Some(fs) = loop_fs(tmp.path(), fstype, mib) else {
        return;
    };
    let data = fs.mnt.join("data");
    // A 64 MiB volume; the load writes its first 8 MiB, so however fast it runs, the copies of
    // the snapshots taken under it fit the default store (1.125x the origin + 16 MiB).
    let args = [
        "--default-volume-size",
        "67108864",
        "--journal-bytes",
        "4194304",
    ];
    let agent = common::Agent::start(&data, &args);
    agent.wait_grpc();
    common::qemu_io(&agent.uri("default"), &["write -P 0x11 0 64M", "flush"]);

    // Snapshot s0, then one 4 KiB write into each of 16 chunks the load never reaches: each
    // copies its chunk out, and 60 KiB of each stays the origin's too.
    let snapshot = |name: &str| {
        agent.grpc(
            "multisnap.v1.SnapshotService/CreateSnapshot",
            &format!(r#"{{"volume":"default","name":"{name}"}}"#),
        );
        let to = tmp.path().join(format!("{name}.img"));
        (
            name.to_string(),
            common::copy_sha(&agent, &format!("default@{name}"), &to),
        )
    };
    let mut shas = vec![snapshot("s0")];
    let writes: Vec<String> = (0..16)
        .map(|i| format!("write -P 0x22 {} 4k", (32 << 20) + i * (64 << 10)))
        .chain(["flush".to_string()])
        .collect();
    let writes: Vec<&str> = writes.iter().map(String::as_str).collect();
    common::qemu_io(&agent.uri("default"), &writes);
    let kernel_copies = agent.metric(r#"multisnap_cow_kernel_copies_total{volume="default"}"#);
    assert!(
        kernel_copies >= 16.0,
        "{fstype}: {kernel_copies} copy-outs went through the kernel, not 16"
    );
    let store = data.join("volumes/default/store.msnap");
    if fstype == "xfs" {
        // Those chunks' blocks are now the origin's and the store's at once: the filesystem
        // marks those extents of the store file shared.
        let extents = sh("filefrag", &["-v", &store.display().to_string()]).unwrap();
        assert!(
            extents.contains("shared"),
            "xfs: no extent of the store is shared with the origin:\n{extents}"
        );
    }

    let mut load = Command::new("fio")
        .args([
            "--name=load",
            "--ioengine=nbd",
            &format!("--uri={}", agent.uri("default")),
            "--rw=randwrite",
            "--bssplit=4k/60:64k/20:1m/20",
            "--size=8M",
            "--iodepth=8",
            "--fsync=16",
            "--time_based",
            "--runtime=120",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("fio");
    for i in 1..=SNAPSHOTS {
        std::thread::sleep(Duration::from_millis(500));
        shas.push(snapshot(&format!("s{i}")));
    }
    assert!(
        load.try_wait().unwrap().is_none(),
        "{fstype}: the load ended before the kill"
    );
    let under_load =
        agent.metric(r#"multisnap_cow_kernel_copies_total{volume="default"}"#) - kernel_copies;
    assert!(
        under_load > 0.0,
        "{fstype}: no copy-out under the load went through the kernel"
    );
    std::thread::sleep(Duration::from_millis(300));
    agent.kill9();
    let _ = load.kill();
    let _ = load.wait();

    let agent = common::Agent::start(&data, &args);
    agent.wait_grpc();
    for (name, sha) in &shas {
        let after = common::copy_sha(
            &agent,
            &format!("default@{name}"),
            &tmp.path().join(format!("{name}-after.img")),
        );
        assert_eq!(
            &after, sha,
            "{fstype}: snapshot {name} changed across the kill"
        );
    }
    let names: Vec<String> = shas.iter().map(|(n, _)| n.clone()).collect();
    assert_eq!(
        common::ready_snapshots(&agent, "default"),
        names,
        "{fstype}"
    );
    agent.stop_and_verify();
    drop(fs);
}

#[test]
fn xfs_shared_extents_survive_a_kill() {
    killed_mid_run_keeps_every_snapshot("xfs", 512);
}

#[test]
fn ext4_kernel_copies_survive_a_kill() {
    killed_mid_run_keeps_every_snapshot("ext4", 256);
}

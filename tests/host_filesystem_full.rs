//! The data directory on a real, small ext4 or xfs filesystem (a loop device made for the
//! test) that fills up: writes that need space fail with ENOSPC at the NBD client (qemu-io),
//! the agent counts them by file and errno and stays healthy, the snapshot taken before keeps
//! its data, and once space is freed writes work again without a restart; verify is clean.
//! Filled to the last block, a write of the store's metadata meets ENOSPC too and stops the
//! volume; freeing space brings it back by itself, again without a restart.

use multisnap_tests::loopfs::{loop_fs, sh, LoopFs};
use multisnap_tests::{self as common, require_tools};
use std::path::{Path, PathBuf};
use std::process::Command;

fn free_bytes(path: &Path) -> u64 {
    let out = sh(
        "df",
        &["--output=avail", "-B1", &path.display().to_string()],
    )
    .unwrap();
    out.lines().last().unwrap().trim().parse().unwrap()
}

/// The value of the ENOSPC series of `volume` in the agent's metrics (summed over files/ops).
fn enospc_errors(metrics: &str, volume: &str) -> u64 {
    let text = sh("curl", &["-sf", &format!("http://{metrics}/metrics")]).unwrap();
    text.lines()
        .filter(|l| {
            l.starts_with("multisnap_io_errors_total{")
                && l.contains(&format!("volume=\"{volume}\""))
                && l.contains("errno=\"ENOSPC\"")
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

/// An agent with its data directory on `fs`: a 512 MiB volume whose first 32 MiB (0x11) are
/// flushed and kept by snapshot `before`.
fn agent_with_a_snapshot(fs: &LoopFs) -> common::Agent {
    let data = fs.mnt.join("data");
    let agent = common::Agent::start(
        &data,
        &[
            "--default-volume-size",
            "536870912",
            "--journal-bytes",
            "16777216",
        ],
    );
    agent.wait_grpc();
    common::qemu_io(&agent.uri("default"), &["write -P 0x11 0 32M", "flush"]);
    agent.grpc(
        "multisnap.v1.SnapshotService/CreateSnapshot",
        r#"{"volume":"default","name":"before"}"#,
    );
    agent
}

/// Once space is back: 64 MiB write, flush and read back, snapshot `before` still reads its
/// 0x11, and the agent stops cleanly with a clean verify.
fn writes_work_and_the_snapshot_is_intact(agent: common::Agent, fstype: &str) {
    let out = common::qemu_io_output(
        &agent.uri("default"),
        &["write -P 0x33 0 64M", "flush", "read -P 0x33 0 64M"],
    );
    assert!(
        !out.contains("failed") && !out.contains("error"),
        "{fstype}: {out}"
    );
    common::qemu_io_ro(&agent.uri("default@before"), &["read -P 0x11 0 32M"]);
    agent.stop_and_verify();
}

fn fill_then_free(fstype: &str, mib: u64) {
    require_tools!("qemu-io", "losetup", "curl", "fallocate");
    require_tools!(&format!("mkfs.{fstype}"));
    let tmp = tempfile::tempdir().unwrap();
    let Some(fs) = loop_fs(tmp.path(), fstype, mib) else {
        return;
    };
    let agent = agent_with_a_snapshot(&fs);

    // Fill the filesystem but for a few MiB.
    let filler = fs.mnt.join("filler");
    let fill = free_bytes(&fs.mnt).saturating_sub(4 << 20);
    sh(
        "fallocate",
        &["-l", &fill.to_string(), &filler.display().to_string()],
    )
    .unwrap();

    // Overwriting the snapshot's data needs copies in the store; writing past it needs new
    // origin blocks: both meet the full filesystem.
    let out = common::qemu_io_output(&agent.uri("default"), &["write -P 0x22 0 64M", "flush"]);
    assert!(out.contains("No space left on device"), "{fstype}: {out}");
    assert!(!out.contains("Input/output error"), "{fstype}: {out}");
    assert!(
        enospc_errors(&agent.metrics, "default") > 0,
        "{fstype}: not counted"
    );
    // The snapshot kept its data, and the volume did not fail.
    common::qemu_io_ro(&agent.uri("default@before"), &["read -P 0x11 0 32M"]);
    assert_eq!(volume_failure(&agent), "", "{fstype}");

    // Space comes back: writes work again without a restart.
    std::fs::remove_file(&filler).unwrap();
    writes_work_and_the_snapshot_is_intact(agent, fstype);
    drop(fs);
}

#[test]
fn ext4_fills_up_and_recovers() {
    fill_then_free("ext4", 256);
}

#[test]
fn xfs_fills_up_and_recovers() {
    fill_then_free("xfs", 320);
}

/// Fills the filesystem to the last block: `fallocate` of nearly what `df` reports (xfs
/// needs a little for the file's own extent records), then writes until ENOSPC (root may use
/// the blocks ext4 reserves for it).
fn fill_completely(mnt: &Path) -> Vec<PathBuf> {
    let first = mnt.join("filler");
    sh(
        "fallocate",
        &[
            "-l",
            &free_bytes(mnt)
                .saturating_sub(8 << 20)
                .max(4096)
                .to_string(),
            &first.display().to_string(),
        ],
    )
    .unwrap();
    let rest = mnt.join("filler-rest");
    // dd fails when the filesystem is full, which is the point.
    let _ = Command::new("dd")
        .args([
            "if=/dev/zero",
            &format!("of={}", rest.display()),
            "bs=4k",
            "status=none",
        ])
        .status();
    vec![first, rest]
}

fn volume_failure(agent: &common::Agent) -> String {
    let v = agent.grpc(
        "multisnap.v1.VolumeService/GetVolume",
        r#"{"name":"default"}"#,
    );
    let v: serde_json::Value = serde_json::from_str(&v).unwrap();
    v["failure"].as_str().unwrap_or("").to_string()
}

/// A full filesystem under the store's metadata stops the volume (a commit cannot be
/// retried); once space is freed the agent reopens it by itself, without a restart, with the
/// flushed data and the snapshot intact.
fn metadata_meets_a_full_filesystem_then_recovers_by_itself(fstype: &str, mib: u64) {
    require_tools!("qemu-io", "losetup", "curl", "fallocate", "dd");
    require_tools!(&format!("mkfs.{fstype}"));
    let tmp = tempfile::tempdir().unwrap();
    let Some(fs) = loop_fs(tmp.path(), fstype, mib) else {
        return;
    };
    let agent = agent_with_a_snapshot(&fs);
    let fillers = fill_completely(&fs.mnt);

    // Snapshots and the copy-outs of writes over them need new metadata blocks in the sparse
    // store file: one of their commits meets ENOSPC and stops the volume.
    let mut attempts = 0;
    while volume_failure(&agent).is_empty() {
        attempts += 1;
        assert!(
            attempts <= 64,
            "{fstype}: no metadata write met the full filesystem"
        );
        let at = (attempts % 32) << 20;
        let _ = common::qemu_io_output(
            &agent.uri("default"),
            &[&format!("write -P 0x22 {at} 1M"), "flush"],
        );
        let _ = Command::new(common::cli_bin())
            .args(["--endpoint", &agent.grpc, "snapshot", "create", "default"])
            .arg(format!("s{attempts}"))
            .output()
            .unwrap();
    }
    let why = volume_failure(&agent);
    assert!(why.contains("No space left"), "{fstype}: {why}");
    common::qemu_io_ro(&agent.uri("default@before"), &["read -P 0x11 0 32M"]);

    for f in &fillers {
        std::fs::remove_file(f).unwrap();
    }
    let freed = std::time::Instant::now();
    while !volume_failure(&agent).is_empty() {
        assert!(
            freed.elapsed() < std::time::Duration::from_secs(90),
            "{fstype}: the volume did not come back by itself"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    eprintln!(
        "{fstype}: failed after {attempts} attempt(s); back by itself {:.1} s after space was freed",
        freed.elapsed().as_secs_f64()
    );
    writes_work_and_the_snapshot_is_intact(agent, fstype);
    drop(fs);
}

#[test]
fn ext4_full_under_the_metadata_stops_the_volume_until_space_returns() {
    metadata_meets_a_full_filesystem_then_recovers_by_itself("ext4", 256);
}

#[test]
fn xfs_full_under_the_metadata_stops_the_volume_until_space_returns() {
    metadata_meets_a_full_filesystem_then_recovers_by_itself("xfs", 320);
}

//! The CSI driver's node data path on a real Linux kernel: the qemu guest of tests/kernel_vm.rs
//! runs the agent and multisnap-csi, and `csi-call` (tests/src/bin) makes kubelet's and the
//! sidecars' calls (tests/vm/guest-csi.sh): a filesystem volume staged and published through
//! the kernel NBD client and through ublk, files written, a VolumeSnapshot restored into a new
//! volume that holds the old files (e2fsck clean), offline expansion, a raw block volume at its
//! target path; unpublish and unstage leave no mount and no device behind.
//!
//! Without apt or network the test says SKIP and passes, except under CI (env `CI` set).

use common::vm::{Boot, BootEnd, VmEnv};
use multisnap_tests as common;
use std::path::Path;
use std::time::Duration;

const VM_TIMEOUT: Duration = Duration::from_secs(480);

#[test]
fn csi_node_stage_publish_snapshot_restore_on_a_real_kernel() {
    let Some(env) = VmEnv::for_test(&[]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let initrd = dir.path().join("initrd.cpio");
    env.build_initramfs_with_csi(&initrd, Path::new(env!("CARGO_BIN_EXE_csi-call")));
    let guest = Boot::new(
        &env,
        &initrd,
        "msnap.mode=csi msnap.frontends=nbd,ublk",
        VM_TIMEOUT,
    )
    .run();
    eprintln!(
        "kernel CSI test: guest {:.1}s ({:?})",
        guest.elapsed.as_secs_f64(),
        guest.end
    );
    assert_eq!(
        guest.end,
        BootEnd::Pass,
        "guest run failed; see the console above"
    );
    // Every step must have reported, so a script that stops early fails.
    for fe in ["nbd", "ublk"] {
        for step in [
            "staged-on-",
            "write-tree",
            "restored-holds-old-files",
            "original-kept-changes",
            "nothing-left",
            "e2fsck-restored",
            "node-expand",
            "files-after-expand",
            "block-write-read",
            "block-kept-data",
            "nothing-left-after-block",
            "cancel.one-device",
            "cancel.nothing-left",
        ] {
            let step = match step {
                "staged-on-" => format!("csi.{fe}.staged-on-{fe}"),
                s => format!("csi.{fe}.{s}"),
            };
            assert!(
                guest
                    .lines
                    .iter()
                    .any(|l| l.starts_with(&format!("VMTEST ok {step} "))),
                "guest never reported step {step}"
            );
        }
    }
    assert!(guest
        .lines
        .iter()
        .any(|l| l.starts_with("VMTEST ok csi.ublk.expand-while-staged-refused ")));
    assert!(guest
        .lines
        .iter()
        .any(|l| l.starts_with("VMTEST ok agent.verify ")));
}

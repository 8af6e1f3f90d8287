//! CI smoke run of the NBD benchmark harness (bench/nbd/run.py): its smallest mode against
//! the raw file, nbdkit, this package's agent and qemu-nbd. It asserts only that the harness
//! completes and prints its tables; the figures of a 32 MiB, one-second run mean nothing and
//! are never checked (docs/BENCHMARKS.md §5 holds the real run). Its XFS variant runs where the
//! machine can make a loop device (else the report says why not). It also checks that the JSON
//! the run saves prints the same report again through `--report-from`.

use multisnap_tests::{self as common, require_tools};

#[test]
fn nbd_bench_harness_smoke() {
    require_tools!("fio", "nbdkit", "qemu-nbd", "qemu-img");
    let repo = common::repo_root();
    let work = tempfile::tempdir().unwrap();
    let out = common::python()
        .arg(repo.join("bench/nbd/run.py"))
        .arg("--smoke")
        .arg("--agent")
        .arg(common::agent_bin())
        .arg("--work-dir")
        .arg(work.path().join("bench"))
        .arg("--out-json")
        .arg(work.path().join("run.json"))
        .output()
        .expect("cannot run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "harness failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    if stdout.starts_with("SKIP") {
        eprintln!("{stdout}");
        return;
    }
    println!("{stdout}");
    for needle in [
        "**4k-write-first**",
        "**4k-randwrite+fsync32**",
        "XFS variant: ",
        "| target | IOPS | MiB/s | p99 ms |",
        "multisnap N=1",
        "qemu-nbd N=1",
        "nbdkit file",
        "**Ratios of median IOPS",
        "**Targets**",
    ] {
        assert!(
            stdout.contains(needle),
            "no {needle:?} in the harness output:\n{stdout}"
        );
    }

    // The XFS variant ran, or the report says why not (no root, no loop devices, no xfsprogs).
    if !stdout.contains("XFS variant: skipped") {
        for needle in [
            "multisnap N=1 on xfs",
            "qemu-nbd N=1 cache=writeback on xfs",
        ] {
            assert!(
                stdout.contains(needle),
                "no {needle:?} in the harness output:\n{stdout}"
            );
        }
    }

    // The saved figures rebuild the same report (targets from the recorded arguments), so an
    // interrupted or old run can be reported again.
    let again = common::python()
        .arg(repo.join("bench/nbd/run.py"))
        .arg("--report-from")
        .arg(work.path().join("run.json"))
        .output()
        .expect("cannot run python");
    assert!(
        again.status.success(),
        "--report-from failed ({}):\n{}",
        again.status,
        String::from_utf8_lossy(&again.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&again.stdout), stdout);
}

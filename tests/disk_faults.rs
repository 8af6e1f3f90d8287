//! The agent over a disk that fails: its volumes live on a FUSE passthrough filesystem
//! (tests/faults/faultfs.py) that fails chosen reads, writes and fsyncs of the origin or the
//! store. Clients are qemu-io over NBD; the agent's answers are checked in its metrics,
//! GetVolume and the CLI, and after a restart.
//!
//! - EIO on a read fails that read only.
//! - ENOSPC on a copy-out fails that write only, and writes work again once it stops.
//! - A failed fsync of the origin, or a failed write or fsync of the journal, fails that flush
//!   and every later write and flush until the agent reopens the volume; nothing a successful
//!   flush acknowledged is lost.

use multisnap_tests::{self as common, require_tools};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct FaultFs {
    mnt: PathBuf,
    rules: PathBuf,
    child: Child,
}

impl FaultFs {
    /// Mounts the fault filesystem over `mnt`, backed by `backing`; `None` (after saying why)
    /// where this machine cannot.
    fn mount(backing: &Path, mnt: &Path, rules: &Path) -> Option<FaultFs> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIP: mounting a FUSE filesystem for the agent needs root");
            return None;
        }
        if !Path::new("/dev/fuse").exists() {
            eprintln!("SKIP: this kernel has no FUSE (/dev/fuse is missing)");
            return None;
        }
        let have_fusepy = Command::new("/usr/bin/python3")
            .args(["-c", "import fusepy"])
            .output()
            .is_ok_and(|o| o.status.success());
        if !have_fusepy {
            multisnap_tests::missing_dependency(
                "/usr/bin/python3 cannot import fusepy (python3-fusepy)",
            );
            return None;
        }
        std::fs::create_dir_all(backing).unwrap();
        std::fs::create_dir_all(mnt).unwrap();
        std::fs::write(rules, "[]").unwrap();
        let child = Command::new("/usr/bin/python3")
            .arg(common::repo_root().join("tests/faults/faultfs.py"))
            .args([backing, mnt, rules])
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let fs = FaultFs {
            mnt: mnt.to_path_buf(),
            rules: rules.to_path_buf(),
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !mounted(mnt) {
            assert!(Instant::now() < deadline, "faultfs did not mount");
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(fs)
    }

    /// Replaces the fault rules (JSON list; see faultfs.py).
    fn rules(&self, json: &str) {
        std::fs::write(&self.rules, json).unwrap();
    }
}

impl Drop for FaultFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mnt).status();
        let _ = self.child.wait();
    }
}

fn mounted(mnt: &Path) -> bool {
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(&mnt.display().to_string()) && l.contains("fuse"))
}

/// One NBD FLUSH on a fresh connection, reported as "flush ok" or "flush refused ERRNO".
fn nbd_flush(uri: &str) -> String {
    let script = format!(
        r#"
import errno, nbd
h = nbd.NBD()
h.connect_uri("{uri}")
try:
    h.flush()
    print("flush ok")
except nbd.Error as e:
    print("flush refused", errno.errorcode.get(e.errnum, e.errnum))
"#
    );
    common::output_ok(common::python().args(["-c", &script]))
}

fn metric(agent: &common::Agent, line_start: &str) -> f64 {
    let out = Command::new("curl")
        .args(["-sf", &format!("http://{}/metrics", agent.metrics)])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .map(|v| v.parse().unwrap())
        .unwrap_or_else(|| panic!("no {line_start} in the metrics"))
}

fn failure(agent: &common::Agent) -> String {
    let v = agent.grpc(
        "multisnap.v1.VolumeService/GetVolume",
        r#"{"name":"default"}"#,
    );
    let v: serde_json::Value = serde_json::from_str(&v).unwrap();
    v["failure"].as_str().unwrap_or("").to_string()
}

/// A data directory whose `volumes/` is the fault filesystem, and an agent on it.
struct Rig {
    fs: FaultFs,
    data: PathBuf,
    _tmp: tempfile::TempDir,
}

fn rig() -> Option<Rig> {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let fs = FaultFs::mount(
        &tmp.path().join("backing"),
        &data.join("volumes"),
        &tmp.path().join("rules.json"),
    )?;
    Some(Rig {
        fs,
        data,
        _tmp: tmp,
    })
}

fn start(rig: &Rig, journal_bytes: &str) -> common::Agent {
    let agent = common::Agent::start(
        &rig.data,
        &[
            "--default-volume-size",
            "16777216",
            "--journal-bytes",
            journal_bytes,
        ],
    );
    agent.wait_grpc();
    agent
}

#[test]
fn a_failed_read_fails_only_that_read_and_is_counted() {
    require_tools!("qemu-io", "curl");
    let Some(rig) = rig() else { return };
    let agent = start(&rig, "0");
    common::qemu_io(&agent.uri("default"), &["write -P 0x41 0 1M", "flush"]);
    rig.fs
        .rules(r#"[{"file":"origin.img","op":"read","errno":"EIO","after":0,"times":1}]"#);
    let out = common::qemu_io_output(&agent.uri("default"), &["read -P 0x41 0 64k"]);
    assert!(out.contains("Input/output error"), "{out}");
    common::qemu_io(&agent.uri("default"), &["read -P 0x41 0 1M"]);
    let counted = metric(
        &agent,
        r#"multisnap_io_errors_total{volume="default",file="origin",op="read",errno="EIO"}"#,
    );
    assert_eq!(counted, 1.0);
    assert_eq!(failure(&agent), "");
    agent.stop_and_verify();
}

#[test]
fn enospc_on_a_copy_out_fails_that_write_until_space_returns() {
    require_tools!("qemu-io", "curl");
    let Some(rig) = rig() else { return };
    let agent = start(&rig, "4194304");
    common::qemu_io(&agent.uri("default"), &["write -P 0x41 0 1M", "flush"]);
    agent.grpc(
        "multisnap.v1.SnapshotService/CreateSnapshot",
        r#"{"volume":"default","name":"s"}"#,
    );
    // The copy-out's data write meets a full filesystem (a metadata write would stop the
    // volume instead: see a_failed_journal_write_stops_the_volume_until_reopen).
    rig.fs
        .rules(r#"[{"file":"store.msnap","op":"write","errno":"ENOSPC","after":0,"times":1}]"#);
    let out = common::qemu_io_output(&agent.uri("default"), &["write -P 0x42 0 64k"]);
    assert!(out.contains("No space left on device"), "{out}");
    assert_eq!(
        metric(
            &agent,
            r#"multisnap_io_errors_total{volume="default",file="store",op="write",errno="ENOSPC"}"#
        ),
        1.0
    );
    common::qemu_io(&agent.uri("default"), &["write -P 0x42 0 64k", "flush"]);
    common::qemu_io_ro(&agent.uri("default@s"), &["read -P 0x41 0 1M"]);
    assert_eq!(failure(&agent), "");
    agent.stop_and_verify();
}

/// `fault` fails one flush's durable step; from then on the volume refuses writes and
/// flushes (even though the disk works again) until the agent reopens it.
fn a_failed_flush_stops_the_volume(journal_bytes: &str, fault: &str) {
    require_tools!("qemu-io", "curl");
    let Some(rig) = rig() else { return };
    let agent = start(&rig, journal_bytes);
    common::qemu_io(&agent.uri("default"), &["write -P 0x41 0 1M", "flush"]);
    rig.fs.rules(fault);
    // qemu-io writes through (FUA), so the write itself may be what reports the failed flush.
    let out = common::qemu_io_output(&agent.uri("default"), &["write -P 0x42 0 64k", "flush"]);
    assert!(
        out.contains("flush failed") || out.contains("write failed"),
        "{fault}: {out}"
    );
    rig.fs.rules("[]");
    let out = common::qemu_io_output(&agent.uri("default"), &["write -P 0x43 64k 64k"]);
    assert!(out.contains("write failed"), "{fault}: {out}");
    // qemu-io sends no FLUSH without a write of its own, so ask libnbd to send one.
    let flush = nbd_flush(&agent.uri("default"));
    assert!(flush.contains("flush refused EIO"), "{fault}: {flush}");
    let why = failure(&agent);
    assert!(
        why.contains("flush") || why.contains("commit"),
        "{fault}: {why}"
    );
    assert_eq!(
        metric(&agent, r#"multisnap_volume_failed{volume="default"}"#),
        1.0
    );
    let show = Command::new(common::cli_bin())
        .args(["--endpoint", &agent.grpc, "volume", "show", "default"])
        .output()
        .unwrap();
    let show = String::from_utf8_lossy(&show.stdout);
    assert!(
        show.contains("state:             refusing writes until reopened"),
        "{show}"
    );
    // Reads go on.
    common::qemu_io(&agent.uri("default"), &["read -P 0x41 128k 512k"]);
    // The clean stop cannot flush this volume, and says so with its exit status.
    assert!(!agent.stop().success());

    // Reopened: healthy, and everything the first flush acknowledged is there.
    let agent = start(&rig, journal_bytes);
    assert_eq!(failure(&agent), "");
    common::qemu_io(&agent.uri("default"), &["read -P 0x41 128k 512k"]);
    common::qemu_io(
        &agent.uri("default"),
        &["write -P 0x44 0 64k", "flush", "read -P 0x44 0 64k"],
    );
    agent.stop_and_verify();
}

#[test]
fn a_failed_origin_fsync_stops_the_volume_until_reopen() {
    a_failed_flush_stops_the_volume(
        "0",
        r#"[{"file":"origin.img","op":"fsync","errno":"EIO","after":0,"times":1}]"#,
    );
}

#[test]
fn a_failed_journal_fsync_stops_the_volume_until_reopen() {
    a_failed_flush_stops_the_volume(
        "4194304",
        r#"[{"file":"store.msnap","op":"fsync","errno":"EIO","after":0,"times":1}]"#,
    );
}

#[test]
fn a_failed_journal_write_stops_the_volume_until_reopen() {
    a_failed_flush_stops_the_volume(
        "4194304",
        r#"[{"file":"store.msnap","op":"write","errno":"EIO","after":0,"times":1}]"#,
    );
}

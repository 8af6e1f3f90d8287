//! The agent over a disk that fails: its volumes live on a FUSE passthrough filesystem
//! (tests/faults/faultfs.py) that fails chosen reads, writes and fsyncs of the origin or the
//! store. Clients are qemu-io over NBD; the agent's answers are checked in its metrics,
//! GetVolume and the CLI, and after a restart.
//!
//! - EIO on a read fails that read only.
//! - ENOSPC on a copy-out fails that write only, and writes work again once it stops.
//! - A failed fsync of the origin, or a failed write or fsync of the journal, fails that flush
//!   and every later write and flush until the volume is reopened (an agent restart, or
//!   `multisnap volume reopen` without one); nothing a successful flush acknowledged is lost.
//! - ENOSPC on a journal write stops the volume the same way, but the agent reopens it by
//!   itself once space returns; an NBD connection open throughout goes on.

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
    start_with(rig, journal_bytes, &[])
}

fn start_with(rig: &Rig, journal_bytes: &str, extra: &[&str]) -> common::Agent {
    let mut args = vec![
        "--default-volume-size",
        "16777216",
        "--journal-bytes",
        journal_bytes,
    ];
    args.extend_from_slice(extra);
    let agent = common::Agent::start(&rig.data, &args);
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
    // Copy-outs through memory: a kernel copy (copy_file_range) into this FUSE filesystem does
    // not reach it as the write the rule fails, so the rule's one ENOSPC falls on the commit's
    // next metadata write instead, which stops the volume. Kernel copies on a full filesystem:
    // tests/host_filesystem_full.rs.
    let agent = start_with(&rig, "4194304", &["--copy-out", "memory"]);
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

/// An NBD client (libnbd) that keeps one connection open and runs the commands written to it:
/// `write FILL OFFSET LEN`, `read FILL OFFSET LEN` (checks every byte is FILL), `flush`. Each
/// answers `ok` or `error ERRNO`.
struct HeldClient {
    child: Child,
    input: std::process::ChildStdin,
    output: std::io::BufReader<std::process::ChildStdout>,
}

const HELD_CLIENT: &str = r#"
import errno, nbd, sys
h = nbd.NBD()
h.connect_uri(sys.argv[1])
print("connected", flush=True)
for line in sys.stdin:
    cmd, *args = line.split()
    try:
        if cmd == "flush":
            h.flush()
        else:
            fill, off, n = int(args[0], 0), int(args[1]), int(args[2])
            if cmd == "write":
                h.pwrite(bytes([fill]) * n, off)
            elif h.pread(n, off) != bytes([fill]) * n:
                raise SystemExit("read back something else at %d" % off)
        print("ok", flush=True)
    except nbd.Error as e:
        print("error", errno.errorcode.get(e.errnum, e.errnum), flush=True)
"#;

impl HeldClient {
    fn connect(uri: &str) -> HeldClient {
        let mut child = common::python()
            .args(["-c", HELD_CLIENT, uri])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let input = child.stdin.take().unwrap();
        let output = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut c = HeldClient {
            child,
            input,
            output,
        };
        assert_eq!(c.answer(), "connected");
        c
    }

    fn answer(&mut self) -> String {
        use std::io::BufRead;
        let mut line = String::new();
        self.output.read_line(&mut line).unwrap();
        line.trim().to_string()
    }

    fn run(&mut self, cmd: &str) -> String {
        use std::io::Write;
        writeln!(self.input, "{cmd}").unwrap();
        self.answer()
    }
}

impl Drop for HeldClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn reopens(agent: &common::Agent, trigger: &str, result: &str) -> f64 {
    let series =
        format!(r#"multisnap_volume_reopens_total{{trigger="{trigger}",result="{result}"}}"#);
    let out = Command::new("curl")
        .args(["-sf", &format!("http://{}/metrics", agent.metrics)])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.starts_with(&series))
        .and_then(|l| l.rsplit(' ').next())
        .map_or(0.0, |v| v.parse().unwrap())
}

/// Waits up to `limit` for the volume to take writes again; how long that took.
fn wait_healthy(agent: &common::Agent, limit: Duration) -> Duration {
    let started = Instant::now();
    while !failure(agent).is_empty() {
        assert!(
            started.elapsed() < limit,
            "still failed after {limit:?}: {}",
            failure(agent)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    started.elapsed()
}

/// The fault rig with a journal, its agent, and a held NBD client that wrote 1 MiB of 0x41 and
/// flushed it; `None` (after saying why) where this machine cannot.
fn rig_with_a_held_client() -> Option<(Rig, common::Agent, HeldClient)> {
    let rig = rig()?;
    if !common::python_has(&["nbd"]) {
        common::missing_dependency("python cannot import nbd (python3-libnbd)");
        return None;
    }
    let agent = start(&rig, "4194304");
    let mut held = HeldClient::connect(&agent.uri("default"));
    assert_eq!(held.run("write 0x41 0 1048576"), "ok");
    assert_eq!(held.run("flush"), "ok");
    Some((rig, agent, held))
}

/// A full host filesystem under the journal stops the volume; once space returns the agent
/// reopens it by itself, with no restart, and an NBD client connected throughout goes on
/// on the same connection with every flushed write intact.
#[test]
fn enospc_on_a_journal_write_stops_the_volume_until_space_returns_then_it_recovers_by_itself() {
    require_tools!("qemu-io", "curl");
    let Some((rig, agent, mut held)) = rig_with_a_held_client() else {
        return;
    };
    rig.fs
        .rules(r#"[{"file":"store.msnap","op":"write","errno":"ENOSPC","after":0,"times":-1}]"#);
    assert_eq!(held.run("write 0x42 1048576 65536"), "ok");
    assert_eq!(held.run("flush"), "error ENOSPC");
    let failed_at = Instant::now();
    assert!(
        failure(&agent).contains("No space left"),
        "{}",
        failure(&agent)
    );
    assert_eq!(
        metric(&agent, r#"multisnap_volume_failed{volume="default"}"#),
        1.0
    );
    assert_eq!(held.run("write 0x43 2097152 65536"), "error EIO");
    assert_eq!(held.run("read 0x41 0 1048576"), "ok");
    // Still full when the first automatic reopen comes: it fails, and is tried again later.
    let deadline = Instant::now() + Duration::from_secs(20);
    while reopens(&agent, "automatic", "failed") < 1.0 {
        assert!(Instant::now() < deadline, "no automatic reopen was tried");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(!failure(&agent).is_empty());
    rig.fs.rules("[]");
    let freed = Instant::now();
    let took = wait_healthy(&agent, Duration::from_secs(30));
    eprintln!(
        "recovered by itself {:.1} s after space returned, {:.1} s after the failure",
        took.as_secs_f64(),
        failed_at.elapsed().as_secs_f64()
    );
    assert!(freed.elapsed() <= Duration::from_secs(25));
    assert_eq!(reopens(&agent, "automatic", "ok"), 1.0);
    assert_eq!(reopens(&agent, "operator", "ok"), 0.0);
    assert_eq!(
        metric(&agent, r#"multisnap_volume_failed{volume="default"}"#),
        0.0
    );
    // The same connection writes and flushes again; the flushed data is intact.
    assert_eq!(held.run("write 0x44 2097152 65536"), "ok");
    assert_eq!(held.run("flush"), "ok");
    assert_eq!(held.run("read 0x41 0 1048576"), "ok");
    assert_eq!(held.run("read 0x44 2097152 65536"), "ok");
    drop(held);
    common::qemu_io(
        &agent.uri("default"),
        &["read -P 0x41 0 1M", "read -P 0x44 2M 64k"],
    );
    agent.stop_and_verify();
}

/// EIO on a metadata write (a snapshot's commit) stops the volume, and the agent leaves it
/// stopped even once the disk works again: only `multisnap volume reopen` brings it back, with
/// no restart, and a connected NBD client goes on.
#[test]
fn eio_on_a_metadata_write_stops_the_volume_until_the_operator_reopens_it() {
    require_tools!("qemu-io", "curl");
    let Some((rig, agent, mut held)) = rig_with_a_held_client() else {
        return;
    };
    let reopen = |name: &str| {
        Command::new(common::cli_bin())
            .args(["--endpoint", &agent.grpc, "volume", "reopen", name])
            .output()
            .unwrap()
    };
    let healthy = reopen("default");
    assert_eq!(healthy.status.code(), Some(5), "{healthy:?}");
    assert!(
        String::from_utf8_lossy(&healthy.stderr).contains("not failed"),
        "{healthy:?}"
    );
    rig.fs
        .rules(r#"[{"file":"store.msnap","op":"write","errno":"EIO","after":0,"times":-1}]"#);
    let out = Command::new(common::cli_bin())
        .args([
            "--endpoint",
            &agent.grpc,
            "snapshot",
            "create",
            "default",
            "s",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success(), "{out:?}");
    rig.fs.rules("[]");
    assert!(!failure(&agent).is_empty());
    // Well past the agent's first automatic retry (5 s after a full host filesystem): an EIO
    // is not retried.
    std::thread::sleep(Duration::from_secs(7));
    assert!(!failure(&agent).is_empty(), "an EIO failure was reopened");
    assert_eq!(reopens(&agent, "automatic", "ok"), 0.0);
    assert_eq!(reopens(&agent, "automatic", "failed"), 0.0);
    assert_eq!(held.run("write 0x42 1048576 65536"), "error EIO");

    let started = Instant::now();
    let out = reopen("default");
    assert!(out.status.success(), "{out:?}");
    eprintln!(
        "operator reopen took {:.3} s",
        started.elapsed().as_secs_f64()
    );
    let show = String::from_utf8_lossy(&out.stdout);
    assert!(!show.contains("refusing writes"), "{show}");
    assert_eq!(failure(&agent), "");
    assert_eq!(reopens(&agent, "operator", "ok"), 1.0);
    assert_eq!(held.run("read 0x41 0 1048576"), "ok");
    assert_eq!(held.run("write 0x42 1048576 65536"), "ok");
    assert_eq!(held.run("flush"), "ok");
    drop(held);
    common::qemu_io(
        &agent.uri("default"),
        &["read -P 0x41 0 1M", "read -P 0x42 1M 64k"],
    );
    agent.stop_and_verify();
}

//! Careless or hostile clients against the real agent: a thousand idle NBD connections, a
//! connection limit with a refusal qemu prints, an oversized gRPC message, a flood of
//! CreateSnapshot calls, and a volume deleted while a client is still writing to it.

use multisnap_tests::{self as common, require_grpcio, require_tools};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};

const SS: &str = "multisnap.v1.SnapshotService";

/// A Python process holding `n` NBD connections that each received the server's greeting
/// (so the agent has accepted them all); they close when it is dropped.
struct IdleClients(Child);

impl IdleClients {
    fn open(addr: &str, n: usize) -> IdleClients {
        let (host, port) = addr.rsplit_once(':').unwrap();
        let script = format!(
            r#"
import resource, socket, sys
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
conns = []
for _ in range({n}):
    s = socket.create_connection(("{host}", {port}))
    got = b""
    while len(got) < 18:
        chunk = s.recv(18 - len(got))
        if not chunk:
            raise SystemExit("the server closed an idle connection during its greeting")
        got += chunk
    conns.append(s)
print("ready", flush=True)
sys.stdin.readline()
"#
        );
        let mut child = common::python()
            .args(["-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "idle clients did not all connect");
        IdleClients(child)
    }
}

impl Drop for IdleClients {
    fn drop(&mut self) {
        let _ = self.0.stdin.take().map(|mut s| s.write_all(b"\n"));
        let _ = self.0.wait();
    }
}

fn qemu_img_info(uri: &str) -> std::process::Output {
    Command::new("qemu-img")
        .args(["info", uri])
        .output()
        .unwrap()
}

#[test]
fn a_thousand_idle_connections_do_not_lock_out_a_new_client() {
    require_tools!("qemu-io", "nbdinfo");
    let tmp = tempfile::tempdir().unwrap();
    let agent = common::Agent::start(
        &tmp.path().join("data"),
        &["--default-volume-size", "16777216"],
    );
    let idle = IdleClients::open(&agent.nbd.to_string(), 1000);
    let size = common::run_ok("nbdinfo", &["--size", &agent.uri("default")]);
    assert_eq!(size.trim(), "16777216");
    common::qemu_io(&agent.uri("default"), &["write -P 0x61 0 64k", "flush"]);
    common::qemu_io(&agent.unix_uri("default"), &["read -P 0x61 0 64k"]);
    drop(idle);
    agent.stop_and_verify();
}

#[test]
fn connections_beyond_the_limit_are_told_why() {
    require_tools!("qemu-img", "curl");
    let tmp = tempfile::tempdir().unwrap();
    let agent = common::Agent::start(
        &tmp.path().join("data"),
        &[
            "--default-volume-size",
            "16777216",
            "--nbd-max-connections",
            "8",
        ],
    );
    // The test harness's own readiness probe may still hold a slot for a moment.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let idle = IdleClients::open(&agent.nbd.to_string(), 8);
    let out = qemu_img_info(&agent.unix_uri("default"));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("too many connections") && err.contains("at most 8"),
        "{err}"
    );
    // Counted for the operator, beside the WARN in the log.
    assert!(agent.metric("multisnap_nbd_handshakes_total{result=\"refused_limit\"}") >= 1.0);
    drop(idle);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let out = qemu_img_info(&agent.uri("default"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    agent.stop_and_verify();
}

#[test]
fn oversized_grpc_messages_and_snapshot_floods_get_clear_answers() {
    require_grpcio!();
    require_tools!("qemu-io");
    let tmp = tempfile::tempdir().unwrap();
    let agent = common::Agent::start(
        &tmp.path().join("data"),
        &["--default-volume-size", "16777216"],
    );
    agent.wait_grpc();
    // A request bigger than the server takes (4 MiB): refused with the limit, not a crash
    // (tonic answers OUT_OF_RANGE).
    let body = tmp.path().join("big.json");
    let big = serde_json::json!({ "volume": "default", "name": "x".repeat(5 << 20) });
    std::fs::write(&body, big.to_string()).unwrap();
    let r = common::grpc_call(
        &agent.grpc,
        &format!("{SS}/CreateSnapshot"),
        &format!("@{}", body.display()),
    );
    match r {
        Err((code, msg)) => {
            assert_eq!(code, "OUT_OF_RANGE", "{msg}");
            assert!(msg.contains("the limit is: 4194304 bytes"), "{msg}");
        }
        Ok(v) => panic!("a 5 MiB request was accepted: {v}"),
    }

    // 40 distinct snapshots and 10 repeats of one name, all at once, while a client writes.
    let calls: Vec<Child> = (0..50)
        .map(|i| {
            let name = if i < 40 {
                format!("flood-{i}")
            } else {
                "same".to_string()
            };
            common::grpcurl()
                .args([
                    agent.grpc.as_str(),
                    "call",
                    &format!("{SS}/CreateSnapshot"),
                    &format!(r#"{{"volume":"default","name":"{name}"}}"#),
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    common::qemu_io(&agent.uri("default"), &["write -P 0x33 0 1M", "flush"]);
    for c in calls {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let list: serde_json::Value = serde_json::from_str(
        &agent.grpc(&format!("{SS}/ListSnapshots"), r#"{"volume":"default"}"#),
    )
    .unwrap();
    let names: Vec<&str> = list["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 41, "{names:?}");
    assert_eq!(names.iter().filter(|n| **n == "same").count(), 1);
    common::qemu_io(&agent.uri("default"), &["read -P 0x33 0 1M"]);
    agent.stop_and_verify();
}

#[test]
fn a_volume_deleted_under_a_writing_client_refuses_its_later_requests() {
    require_grpcio!();
    if !common::python_has(&["nbd"]) {
        multisnap_tests::missing_dependency!("python cannot import nbd");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let agent = common::Agent::start(
        &tmp.path().join("data"),
        &["--default-volume-size", "16777216"],
    );
    agent.wait_grpc();
    agent.grpc(
        "multisnap.v1.VolumeService/CreateVolume",
        r#"{"name":"doomed","size_bytes":"8388608"}"#,
    );
    let script = format!(
        r#"
import errno, nbd, sys
h = nbd.NBD()
h.connect_uri("{}")
h.pwrite(b"a" * 65536, 0)
h.flush()
print("written", flush=True)
sys.stdin.readline()
for what, op in (("write", lambda: h.pwrite(b"b" * 65536, 0)),
                 ("read", lambda: h.pread(4096, 0)),
                 ("flush", lambda: h.flush())):
    try:
        op()
        print(what, "accepted", flush=True)
    except nbd.Error as e:
        print(what, "refused", errno.errorcode.get(e.errnum, e.errnum), flush=True)
"#,
        agent.uri("doomed")
    );
    let mut client = common::python()
        .args(["-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(client.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "written");
    agent.grpc(
        "multisnap.v1.VolumeService/DeleteVolume",
        r#"{"name":"doomed"}"#,
    );
    assert!(!agent.data_dir.join("volumes/doomed").exists());
    client.stdin.take().unwrap().write_all(b"\n").unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    assert!(client.wait().unwrap().success(), "{rest}");
    assert_eq!(
        rest.lines().collect::<Vec<_>>(),
        ["write refused EIO", "read refused EIO", "flush refused EIO"],
        "{rest}"
    );
    // The agent and its other volumes carry on.
    common::qemu_io(
        &agent.uri("default"),
        &["write -P 0x44 0 4k", "read -P 0x44 0 4k"],
    );
    agent.stop_and_verify();
}

#[test]
fn clients_that_never_close_do_not_hold_the_agents_clean_stop() {
    let tmp = tempfile::tempdir().unwrap();
    let agent = common::Agent::start(&tmp.path().join("data"), &[]);
    // A gRPC client that opened its HTTP/2 connection and then stopped reading (a suspended
    // process): it never answers the server's GOAWAY, so a graceful close would wait for ever.
    let mut grpc =
        std::os::unix::net::UnixStream::connect(agent.data_dir.join("grpc.sock")).unwrap();
    grpc.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .unwrap();
    let _idle = IdleClients::open(&agent.nbd, 3);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let t0 = std::time::Instant::now();
    // stop_and_verify: SIGTERM, a clean exit, then every journal found empty offline.
    agent.stop_and_verify();
    let took = t0.elapsed();
    assert!(
        took < std::time::Duration::from_secs(25),
        "the stop took {took:?} with idle clients connected"
    );
    drop(grpc);
}

//! UblkService over gRPC (Python grpcio by reflection) and `multisnap ublk`. Where the kernel
//! has no ublk driver (/dev/ublk-control absent, as on CI) attaching must fail with
//! FAILED_PRECONDITION and a message naming the missing driver; where it has one (and we are
//! root), a device is attached, written through the kernel and read back over NBD. The full
//! filesystem checks through /dev/ublkbN run in a real kernel in tests/kernel_vm.rs.

use common::*;
use multisnap_tests::{self as common, require_grpcio, require_tools};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const US: &str = "multisnap.v1.UblkService";

/// Calls METHOD of the UblkService with a JSON body: Ok(json) or Err((code, message)). The
/// service is retried while it is UNAVAILABLE, for up to 20 s.
fn call(agent: &Agent, method: &str, body: &str) -> Result<serde_json::Value, (String, String)> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match grpc_call(&agent.grpc, &format!("{US}/{method}"), body) {
            Err((code, _)) if code == "UNAVAILABLE" && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100))
            }
            result => return result,
        }
    }
}

fn start_agent(dir: &Path) -> Agent {
    Agent::start(&dir.join("data"), &["--default-volume-size", "67108864"])
}

#[test]
fn attach_without_ublk_driver_is_failed_precondition() {
    require_grpcio!();
    if Path::new("/dev/ublk-control").exists() {
        eprintln!(
            "SKIP: this kernel has ublk (/dev/ublk-control exists); the attach test runs instead"
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let agent = start_agent(tmp.path());

    // Reflection lists the service with its methods.
    let out = grpcurl()
        .args([&agent.grpc, "describe", US])
        .output()
        .expect("python");
    let methods = String::from_utf8_lossy(&out.stdout);
    for m in ["AttachUblk", "DetachUblk", "ListUblk"] {
        assert!(methods.contains(m), "{methods}");
    }

    // The origin, and a snapshot: the kernel has no driver, and the message says so.
    agent.grpc(
        "multisnap.v1.SnapshotService/CreateSnapshot",
        r#"{"volume":"default","name":"s1"}"#,
    );
    for body in [
        r#"{"volume":"default"}"#,
        r#"{"volume":"default","snapshot":"s1","queues":2,"depth":128}"#,
    ] {
        let (code, msg) = call(&agent, "AttachUblk", body).expect_err("attach must fail");
        assert_eq!(code, "FAILED_PRECONDITION", "{body}: {msg}");
        assert!(
            msg.contains("/dev/ublk-control") && msg.contains("ublk_drv"),
            "unhelpful message: {msg}"
        );
    }
    // Malformed requests are INVALID_ARGUMENT on any kernel.
    for body in [
        r#"{}"#,
        r#"{"volume":"default","queues":99}"#,
        r#"{"volume":"default","depth":100000}"#,
    ] {
        let (code, msg) = call(&agent, "AttachUblk", body).expect_err("attach must fail");
        assert_eq!(code, "INVALID_ARGUMENT", "{body}: {msg}");
    }
    // Nothing attached: list is empty, detach finds nothing, a non-ublk path is refused.
    let list = call(&agent, "ListUblk", "{}").expect("ListUblk");
    assert!(
        list.get("devices")
            .and_then(|d| d.as_array())
            .is_none_or(|d| d.is_empty()),
        "{list}"
    );
    let (code, _) = call(&agent, "DetachUblk", r#"{"device":"/dev/ublkb3"}"#).unwrap_err();
    assert_eq!(code, "NOT_FOUND");
    let (code, _) = call(&agent, "DetachUblk", r#"{"device":"/dev/sda"}"#).unwrap_err();
    assert_eq!(code, "INVALID_ARGUMENT");

    // The CLI: exit code 5 (failed precondition) with the agent's message on stderr.
    let out = Command::new(cli_bin())
        .args(["--endpoint", &format!("http://{}", agent.grpc)])
        .args(["ublk", "attach", "default"])
        .output()
        .expect("multisnap");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert!(err.contains("/dev/ublk-control"), "{err}");
    agent.stop_and_verify();
}

/// On a kernel with ublk: attach the origin, write through /dev/ublkbN, read it over NBD,
/// refuse to detach while the device is held exclusively, then detach.
#[test]
fn attach_write_read_detach_on_this_kernel() {
    require_grpcio!();
    require_tools!("qemu-io");
    if !Path::new("/dev/ublk-control").exists() {
        eprintln!("SKIP: /dev/ublk-control is absent (no ublk driver in this kernel); tests/kernel_vm.rs covers ublk in a VM");
        return;
    }
    if Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout != b"0\n")
        .unwrap_or(true)
    {
        eprintln!("SKIP: adding ublk devices needs root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let agent = start_agent(tmp.path());
    let d = call(&agent, "AttachUblk", r#"{"volume":"default","depth":32}"#)
        .unwrap_or_else(|(c, m)| panic!("AttachUblk: {c}: {m}"));
    let dev = d["device"].as_str().unwrap().to_string();
    assert_eq!(d["depth"], 32);
    let pattern = vec![0x5au8; 1 << 20];
    let f = tmp.path().join("pattern");
    std::fs::write(&f, &pattern).unwrap();
    run_ok(
        "dd",
        &[
            &format!("if={}", f.display()),
            &format!("of={dev}"),
            "bs=1M",
            "oflag=direct",
            "conv=fsync",
        ],
    );
    qemu_io_ro(&agent.uri("default"), &["read -P 0x5a 0 1M"]);
    call(&agent, "DetachUblk", &format!(r#"{{"device":"{dev}"}}"#))
        .unwrap_or_else(|(c, m)| panic!("DetachUblk: {c}: {m}"));
    assert!(!Path::new(&dev).exists(), "{dev} still there after detach");
    agent.stop_and_verify();
}

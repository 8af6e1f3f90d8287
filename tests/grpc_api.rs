//! The gRPC API driven the way users script it: Python grpcio with server reflection (no
//! generated stubs, no proto files), over TCP and the unix socket; every status code.

mod common;
use common::*;
use std::process::Command;

struct Grpc {
    addr: String,
}

impl Grpc {
    /// Calls METHOD with a JSON request; Ok(json) or Err((code, message)).
    fn call(&self, method: &str, body: &str) -> Result<serde_json::Value, (String, String)> {
        let out = Command::new("python3")
            .arg(repo_root().join("tests/grpc/grpcurl.py"))
            .args([&self.addr, "call", method, body])
            .output()
            .expect("python3");
        let text = String::from_utf8_lossy(&out.stdout);
        let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap_or_else(|_| {
            panic!(
                "{method}: not JSON: {text}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        match v.get("error") {
            Some(code) if !out.status.success() => Err((
                code.as_str().unwrap_or_default().to_string(),
                v["message"].as_str().unwrap_or_default().to_string(),
            )),
            _ => Ok(v),
        }
    }

    fn ok(&self, method: &str, body: &str) -> serde_json::Value {
        self.call(method, body)
            .unwrap_or_else(|(c, m)| panic!("{method} {body}: {c}: {m}"))
    }

    fn code(&self, method: &str, body: &str) -> String {
        match self.call(method, body) {
            Ok(v) => panic!("{method} {body} should fail, got {v}"),
            Err((code, msg)) => {
                assert!(!msg.is_empty(), "{code} without a message");
                code
            }
        }
    }

    fn tool(&self, args: &[&str]) -> String {
        let out = Command::new("python3")
            .arg(repo_root().join("tests/grpc/grpcurl.py"))
            .arg(&self.addr)
            .args(args)
            .output()
            .expect("python3");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

const VS: &str = "multisnap.v1.VolumeService";
const SS: &str = "multisnap.v1.SnapshotService";

#[test]
fn grpc_api_by_reflection() {
    require_grpcio!();
    require_tools!("qemu-io");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let port = free_port();
    let agent = Agent::start(
        &dir,
        &[
            "--default-volume-size",
            "33554432",
            "--grpc-listen",
            &format!("127.0.0.1:{port}"),
        ],
    );
    let g = Grpc {
        addr: format!("127.0.0.1:{port}"),
    };
    wait_for_grpc(&g);

    // Discovery by reflection, and health.
    let services = g.tool(&["list"]);
    for s in [VS, SS, "grpc.health.v1.Health"] {
        assert!(services.contains(s), "{services}");
    }
    let methods = g.tool(&["describe", SS]);
    for m in [
        "CreateSnapshot",
        "ListSnapshots",
        "GetSnapshot",
        "DeleteSnapshot",
    ] {
        assert!(methods.contains(m), "{methods}");
    }
    assert!(g.tool(&["health"]).contains("SERVING"));
    assert!(g.tool(&["health", SS]).contains("SERVING"));

    // Volumes.
    let vols = g.ok(&format!("{VS}/ListVolumes"), "{}");
    assert_eq!(vols["volumes"][0]["name"], "default");
    let v = g.ok(
        &format!("{VS}/CreateVolume"),
        r#"{"name":"db","size_bytes":"16777216","chunk_size_bytes":16384,"store_full_policy":"STORE_FULL_POLICY_INVALIDATE_OLDEST"}"#,
    );
    assert_eq!(v["chunk_size_bytes"], 16384);
    assert_eq!(
        v["store_full_policy"],
        "STORE_FULL_POLICY_INVALIDATE_OLDEST"
    );
    assert_eq!(
        g.code(
            &format!("{VS}/CreateVolume"),
            r#"{"name":"db","size_bytes":"1048576"}"#
        ),
        "ALREADY_EXISTS"
    );
    assert_eq!(
        g.code(
            &format!("{VS}/CreateVolume"),
            r#"{"name":"bad/name","size_bytes":"1048576"}"#
        ),
        "INVALID_ARGUMENT"
    );
    assert_eq!(
        g.code(&format!("{VS}/CreateVolume"), r#"{"name":"zero"}"#),
        "INVALID_ARGUMENT"
    );
    assert_eq!(
        g.code(
            &format!("{VS}/CreateVolume"),
            r#"{"name":"odd","size_bytes":"1048576","chunk_size_bytes":3000}"#
        ),
        "INVALID_ARGUMENT"
    );
    assert_eq!(
        g.code(&format!("{VS}/GetVolume"), r#"{"name":"nope"}"#),
        "NOT_FOUND"
    );
    assert_eq!(
        g.ok(&format!("{VS}/GetVolume"), r#"{"name":"db"}"#)["size_bytes"],
        "16777216"
    );

    // Snapshots: idempotent create, codes, delete.
    let a = g.ok(
        &format!("{SS}/CreateSnapshot"),
        r#"{"volume":"default","name":"a"}"#,
    );
    let again = g.ok(
        &format!("{SS}/CreateSnapshot"),
        r#"{"volume":"default","name":"a"}"#,
    );
    assert_eq!(a["id"], again["id"], "CreateSnapshot must be idempotent");
    assert_eq!(a["nbd_export"], "default@a");
    assert!(a["created_at"].as_str().unwrap().starts_with("20"));
    assert_eq!(
        g.code(
            &format!("{SS}/CreateSnapshot"),
            r#"{"volume":"default","name":"a","writable":true}"#
        ),
        "ALREADY_EXISTS"
    );
    assert_eq!(
        g.code(
            &format!("{SS}/CreateSnapshot"),
            r#"{"volume":"nope","name":"a"}"#
        ),
        "NOT_FOUND"
    );
    assert_eq!(
        g.code(
            &format!("{SS}/CreateSnapshot"),
            r#"{"volume":"default","name":"a@b"}"#
        ),
        "INVALID_ARGUMENT"
    );
    assert_eq!(
        g.code(&format!("{SS}/CreateSnapshot"), r#"{"volume":"default"}"#),
        "INVALID_ARGUMENT"
    );
    assert_eq!(
        g.code(&format!("{SS}/CreateSnapshot"), r#"{"name":"x"}"#),
        "INVALID_ARGUMENT"
    );
    assert_eq!(
        g.code(
            &format!("{SS}/GetSnapshot"),
            r#"{"volume":"default","name":"zz"}"#
        ),
        "NOT_FOUND"
    );
    let w = g.ok(
        &format!("{SS}/CreateSnapshot"),
        r#"{"volume":"default","name":"rw","writable":true}"#,
    );
    assert_eq!(w["writable"], true);
    let list = g.ok(&format!("{SS}/ListSnapshots"), r#"{"volume":"default"}"#);
    assert_eq!(list["snapshots"].as_array().unwrap().len(), 2);

    // A snapshot taken through the API is a point in time for NBD clients.
    qemu_io(&agent.uri("default"), &["write -P 0x5a 0 256k"]);
    let b = g.ok(
        &format!("{SS}/CreateSnapshot"),
        r#"{"volume":"default","name":"b"}"#,
    );
    qemu_io(&agent.uri("default"), &["write -P 0x77 0 128k"]);
    qemu_io_ro(&agent.uri("default@b"), &["read -P 0x5a 0 256k"]);
    qemu_io_ro(&agent.uri("default@a"), &["read -P 0 0 256k"]);
    assert!(
        b["id"].as_str().unwrap().parse::<u64>().unwrap()
            > a["id"].as_str().unwrap().parse::<u64>().unwrap()
    );

    // Volume deletion is refused while snapshots exist, unless forced.
    assert_eq!(
        g.code(&format!("{VS}/DeleteVolume"), r#"{"name":"default"}"#),
        "FAILED_PRECONDITION"
    );
    g.ok(
        &format!("{SS}/CreateSnapshot"),
        r#"{"volume":"db","name":"only"}"#,
    );
    assert_eq!(
        g.code(&format!("{VS}/DeleteVolume"), r#"{"name":"db"}"#),
        "FAILED_PRECONDITION"
    );
    g.ok(
        &format!("{VS}/DeleteVolume"),
        r#"{"name":"db","force":true}"#,
    );
    assert_eq!(
        g.code(&format!("{VS}/GetVolume"), r#"{"name":"db"}"#),
        "NOT_FOUND"
    );
    assert!(
        !dir.join("volumes/db").exists(),
        "deleted volume's files remain"
    );

    // Delete a snapshot: gone at once, space reclaimed in the background.
    g.ok(
        &format!("{SS}/DeleteSnapshot"),
        r#"{"volume":"default","name":"b"}"#,
    );
    assert_eq!(
        g.code(
            &format!("{SS}/GetSnapshot"),
            r#"{"volume":"default","name":"b"}"#
        ),
        "NOT_FOUND"
    );
    let bad = run(
        "qemu-io",
        &[
            "-r",
            "-f",
            "raw",
            &agent.uri("default@b"),
            "-c",
            "read 0 4k",
        ],
    );
    assert!(!bad.status.success(), "deleted snapshot export still opens");
    let mut reclaimed = false;
    for _ in 0..100 {
        let v = g.ok(&format!("{VS}/GetVolume"), r#"{"name":"default"}"#);
        if v["reclaim_pending"] == "0" {
            reclaimed = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(reclaimed, "background reclamation did not finish");
    assert_eq!(
        g.code(
            &format!("{SS}/DeleteSnapshot"),
            r#"{"volume":"default","name":"b"}"#
        ),
        "NOT_FOUND"
    );

    // The unix socket serves the same API.
    let u = Grpc {
        addr: format!("unix:{}", dir.join("grpc.sock").display()),
    };
    let list = u.ok(&format!("{SS}/ListSnapshots"), r#"{"volume":"default"}"#);
    assert_eq!(list["snapshots"].as_array().unwrap().len(), 2);

    agent.stop_and_verify();
}

fn wait_for_grpc(g: &Grpc) {
    for _ in 0..100 {
        if g.call(&format!("{VS}/ListVolumes"), "{}").is_ok() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("gRPC did not come up on {}", g.addr);
}

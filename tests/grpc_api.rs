//! The gRPC API driven the way users script it: Python grpcio with server reflection (no
//! generated stubs, no proto files), over TCP and the unix socket; every status code.

use common::*;
use multisnap_tests::{self as common, require_grpcio, require_tools};

struct Grpc {
    addr: String,
}

impl Grpc {
    /// Calls METHOD with a JSON request; Ok(json) or Err((code, message)).
    fn call(&self, method: &str, body: &str) -> Result<serde_json::Value, (String, String)> {
        grpc_call(&self.addr, method, body)
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
        let out = grpcurl()
            .arg(&self.addr)
            .args(args)
            .output()
            .expect("python");
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
    let (agent, g) = start_agent(tmp.path(), "33554432");

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
        "RevertVolume",
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
        !agent.data_dir.join("volumes/db").exists(),
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
        addr: format!("unix:{}", agent.data_dir.join("grpc.sock").display()),
    };
    let list = u.ok(&format!("{SS}/ListSnapshots"), r#"{"volume":"default"}"#);
    assert_eq!(list["snapshots"].as_array().unwrap().len(), 2);

    agent.stop_and_verify();
}

/// An agent with a default volume of `volume_size` bytes, its data directory in `tmp`, and a
/// client of its TCP gRPC listener, which answers by then.
fn start_agent(tmp: &std::path::Path, volume_size: &str) -> (Agent, Grpc) {
    let agent = Agent::start(&tmp.join("data"), &["--default-volume-size", volume_size]);
    let g = Grpc {
        addr: agent.grpc.clone(),
    };
    wait_for_grpc(&g);
    (agent, g)
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

const DS: &str = "multisnap.v1.DeltaService";

/// Writes `messages` (JSON) to a file and returns the `@FILE` argument grpcurl.py reads.
fn body_file(dir: &std::path::Path, name: &str, messages: &serde_json::Value) -> String {
    let path = dir.join(name);
    std::fs::write(&path, messages.to_string()).unwrap();
    format!("@{}", path.display())
}

/// ApplyDelta requests for a volume: the options first, then the export's data pieces (kept
/// as the base64 strings grpcio's JSON mapping uses for bytes).
fn apply_requests(volume: &str, export: &serde_json::Value) -> serde_json::Value {
    let mut reqs = vec![serde_json::json!({ "volume": volume })];
    for m in export.as_array().unwrap() {
        reqs.push(serde_json::json!({ "data": m["data"] }));
    }
    serde_json::Value::Array(reqs)
}

#[test]
fn delta_service_by_reflection() {
    require_grpcio!();
    require_tools!("qemu-io");
    let tmp = tempfile::tempdir().unwrap();
    let (agent, g) = start_agent(tmp.path(), "8388608");
    assert!(g.tool(&["list"]).contains(DS));
    let methods = g.tool(&["describe", DS]);
    for m in ["ExportDelta", "ApplyDelta", "GetApplyState", "AbortApply"] {
        assert!(methods.contains(m), "{methods}");
    }
    assert!(g.tool(&["health", DS]).contains("SERVING"));

    qemu_io(
        &agent.uri("default"),
        &["write -P 0x5a 0 1M", "write -P 0x33 3M 200k"],
    );
    g.ok(
        &format!("{SS}/CreateSnapshot"),
        r#"{"volume":"default","name":"s0"}"#,
    );
    let export = g.ok(
        &format!("{DS}/ExportDelta"),
        r#"{"volume":"default","target_snapshot":"s0"}"#,
    );
    let last = export.as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        last["progress"]["chunks_done"], last["progress"]["chunks_total"],
        "{last}"
    );
    // Argument errors of ExportDelta.
    for (body, code) in [
        (r#"{"volume":"default"}"#, "INVALID_ARGUMENT"),
        (
            r#"{"volume":"default","target_snapshot":"nope"}"#,
            "NOT_FOUND",
        ),
        (r#"{"volume":"nope","target_snapshot":"s0"}"#, "NOT_FOUND"),
        (
            r#"{"volume":"default","base_snapshot":"s0","target_snapshot":"s0"}"#,
            "INVALID_ARGUMENT",
        ),
        (
            r#"{"volume":"default","target_snapshot":"s0","resume_token":"AAAA"}"#,
            "INVALID_ARGUMENT",
        ),
        (
            r#"{"volume":"default","target_snapshot":"s0","compression":"DELTA_COMPRESSION_ZSTD","compression_level":23}"#,
            "INVALID_ARGUMENT",
        ),
        (
            r#"{"volume":"default","target_snapshot":"s0","compression":7}"#,
            "INVALID_ARGUMENT",
        ),
    ] {
        assert_eq!(g.code(&format!("{DS}/ExportDelta"), body), code, "{body}");
    }

    // Apply into a new volume of the same size.
    g.ok(
        &format!("{VS}/CreateVolume"),
        r#"{"name":"copy","size_bytes":"8388608"}"#,
    );
    let reqs = apply_requests("copy", &export);
    let r = g.ok(
        &format!("{DS}/ApplyDelta"),
        &body_file(tmp.path(), "apply.json", &reqs),
    );
    assert_eq!(r["complete"], true, "{r}");
    assert_eq!(r["snapshot"]["name"], "s0");
    assert_eq!(r["snapshot"]["nbd_export"], "copy@s0");
    let src = g.ok(
        &format!("{SS}/GetSnapshot"),
        r#"{"volume":"default","name":"s0"}"#,
    );
    assert_eq!(r["snapshot"]["source_snapshot_id"], src["id"]);
    let copy = g.ok(&format!("{VS}/GetVolume"), r#"{"name":"copy"}"#);
    let orig = g.ok(&format!("{VS}/GetVolume"), r#"{"name":"default"}"#);
    assert_eq!(copy["replica_of"], orig["uuid"]);
    qemu_io_ro(
        &agent.uri("copy@s0"),
        &[
            "read -P 0x5a 0 1M",
            "read -P 0x33 3M 200k",
            "read -P 0 1M 2M",
        ],
    );

    // One character of the stream changed: DATA_LOSS, nothing left behind.
    g.ok(
        &format!("{VS}/CreateVolume"),
        r#"{"name":"bad","size_bytes":"8388608"}"#,
    );
    let mut bad = apply_requests("bad", &export);
    let piece = bad[1]["data"].as_str().unwrap().to_string();
    let at = piece.len() / 2;
    let flipped = if &piece[at..at + 1] == "A" { "B" } else { "A" };
    bad[1]["data"] = format!("{}{flipped}{}", &piece[..at], &piece[at + 1..]).into();
    assert_eq!(
        g.code(
            &format!("{DS}/ApplyDelta"),
            &body_file(tmp.path(), "bad.json", &bad)
        ),
        "DATA_LOSS"
    );
    let st = g.ok(&format!("{DS}/GetApplyState"), r#"{"volume":"bad"}"#);
    assert_eq!(st["in_progress"], false, "{st}");
    let snaps = g.ok(&format!("{SS}/ListSnapshots"), r#"{"volume":"bad"}"#);
    assert!(snaps
        .get("snapshots")
        .is_none_or(|s| s.as_array().unwrap().is_empty()));
    assert_eq!(
        g.code(&format!("{DS}/AbortApply"), r#"{"volume":"bad"}"#),
        "FAILED_PRECONDITION"
    );
    assert_eq!(
        g.code(&format!("{DS}/GetApplyState"), r#"{"volume":"nope"}"#),
        "NOT_FOUND"
    );

    // A stream of another volume into the replica: refused.
    g.ok(
        &format!("{SS}/CreateSnapshot"),
        r#"{"volume":"bad","name":"x"}"#,
    );
    let other = g.ok(
        &format!("{DS}/ExportDelta"),
        r#"{"volume":"bad","target_snapshot":"x"}"#,
    );
    assert_eq!(
        g.code(
            &format!("{DS}/ApplyDelta"),
            &body_file(tmp.path(), "other.json", &apply_requests("copy", &other))
        ),
        "FAILED_PRECONDITION"
    );
    // The same stream again: its snapshot exists already.
    assert_eq!(
        g.code(
            &format!("{DS}/ApplyDelta"),
            &body_file(tmp.path(), "again.json", &reqs)
        ),
        "ALREADY_EXISTS"
    );
    agent.stop_and_verify();
}

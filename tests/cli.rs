//! The `multisnap` CLI against a real agent: every command, JSON output, the documented exit
//! codes, the unix-socket endpoint and `snapshot delete --wait`.

use common::*;
use multisnap_tests as common;
use serde_json::Value;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// An agent with gRPC on a free port (and metrics too when the agent has them, so parallel
/// tests never fight over the default ports).
struct Grpc {
    agent: Agent,
    endpoint: String,
}

fn start_agent(dir: &Path) -> Grpc {
    let grpc: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let grpc_arg = grpc.to_string();
    let metrics_arg = format!("127.0.0.1:{}", free_port());
    let mut extra = vec![
        "--default-volume-size",
        "67108864",
        "--grpc-listen",
        &grpc_arg,
    ];
    let help = run(agent_bin().to_str().unwrap(), &["--help"]);
    if String::from_utf8_lossy(&help.stdout).contains("--metrics-listen") {
        extra.extend(["--metrics-listen", &metrics_arg]);
    }
    let agent = Agent::start(dir, &extra);
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(grpc).is_err() || !dir.join("grpc.sock").exists() {
        assert!(Instant::now() < deadline, "agent's gRPC never came up");
        std::thread::sleep(Duration::from_millis(50));
    }
    Grpc {
        agent,
        endpoint: format!("http://{grpc}"),
    }
}

fn cli(bin: &Path, endpoint: &str, args: &[&str]) -> Output {
    Command::new(bin)
        .arg("--endpoint")
        .arg(endpoint)
        .args(args)
        .env_remove("MULTISNAP_ENDPOINT")
        .output()
        .expect("cannot run multisnap")
}

fn code(out: &Output) -> i32 {
    out.status.code().expect("killed by a signal")
}

/// Runs the CLI, asserts the exit code, returns stdout.
fn expect(bin: &Path, endpoint: &str, args: &[&str], want: i32) -> String {
    let out = cli(bin, endpoint, args);
    assert_eq!(code(&out), want, "multisnap {args:?}:\n{}", describe(&out));
    if want != 0 {
        assert!(
            !out.stderr.is_empty(),
            "no error message for {args:?}:\n{}",
            describe(&out)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn json(bin: &Path, endpoint: &str, args: &[&str]) -> Value {
    let mut all = vec!["--output", "json"];
    all.extend_from_slice(args);
    let out = expect(bin, endpoint, &all, 0);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}):\n{out}"))
}

#[test]
fn volumes_snapshots_json_and_exit_codes() {
    let bin = cli_bin();
    let tmp = tempfile::tempdir().unwrap();
    let g = start_agent(&tmp.path().join("data"));
    let ep = g.endpoint.as_str();

    // The default volume is there, in a table and in JSON.
    let table = expect(&bin, ep, &["volume", "list"], 0);
    assert!(table.starts_with("NAME"), "{table}");
    assert!(table.contains("default"), "{table}");
    let list = json(&bin, ep, &["volume", "list"]);
    let vols = list["volumes"].as_array().expect("volumes array");
    assert_eq!(vols.len(), 1, "{list}");
    assert_eq!(vols[0]["name"], "default");
    assert_eq!(vols[0]["sizeBytes"], 64 << 20);

    // Create with human sizes, table and JSON.
    let shown = expect(
        &bin,
        ep,
        &[
            "volume",
            "create",
            "vol-a",
            "--size",
            "32M",
            "--chunk-size",
            "4K",
        ],
        0,
    );
    assert!(shown.contains("32 MiB"), "{shown}");
    let b = json(
        &bin,
        ep,
        &[
            "volume",
            "create",
            "vol-b",
            "--size",
            "16MiB",
            "--store-size",
            "40M",
            "--store-full-policy",
            "invalidate-oldest",
            "--label",
            "team=storage",
            "--label",
            "example.com/tier=gold=1",
        ],
    );
    assert_eq!(b["name"], "vol-b");
    // Labels: the first '=' splits, so a value may hold one; shown in JSON and the table.
    assert_eq!(b["labels"]["team"], "storage", "{b}");
    assert_eq!(b["labels"]["example.com/tier"], "gold=1", "{b}");
    let shown = expect(&bin, ep, &["volume", "show", "vol-b"], 0);
    assert!(
        shown.contains("example.com/tier=gold=1, team=storage"),
        "{shown}"
    );
    assert_eq!(b["sizeBytes"], 16 << 20);
    assert_eq!(b["chunkSizeBytes"], 65536);
    assert_eq!(b["storeSizeBytes"], 40 << 20);
    assert_eq!(b["storeFullPolicy"], "STORE_FULL_POLICY_INVALIDATE_OLDEST");
    assert_eq!(b["snapshotCount"], 0);
    assert_eq!(b["reclaimPending"], 0);
    for field in ["storeUsedBytes", "storeFreeBytes", "exceptionCount"] {
        assert!(b[field].is_u64(), "{field} in {b}");
    }
    // A new volume's store holds no data: what it uses is metadata and the journal's
    // reservation (a quarter of the 16 MiB origin), and the parts add up.
    assert_eq!(b["storeDataBytes"], 0, "{b}");
    assert_eq!(b["storeJournalBytes"], 4 << 20, "{b}");
    assert_eq!(
        b["storeUsedBytes"].as_u64().unwrap(),
        b["storeMetadataBytes"].as_u64().unwrap() + (4 << 20),
        "{b}"
    );
    for field in ["originPath", "storePath", "uuid"] {
        assert!(!b[field].as_str().unwrap().is_empty(), "{field} in {b}");
    }
    let a = json(&bin, ep, &["volume", "show", "vol-a"]);
    assert_eq!(a["chunkSizeBytes"], 4096);
    assert_eq!(a["storeFullPolicy"], "STORE_FULL_POLICY_ERROR");
    assert_eq!(
        json(&bin, ep, &["volume", "list"])["volumes"]
            .as_array()
            .unwrap()
            .len(),
        3
    );

    // Snapshots: create is idempotent (same id, exit 0), list and show agree.
    let s1 = json(&bin, ep, &["snapshot", "create", "vol-a", "s1"]);
    let again = json(&bin, ep, &["snapshot", "create", "vol-a", "s1"]);
    assert_eq!(s1["id"], again["id"], "{s1} vs {again}");
    assert_eq!(s1["name"], "s1");
    assert_eq!(s1["volume"], "vol-a");
    assert_eq!(s1["state"], "SNAPSHOT_STATE_READY");
    assert_eq!(s1["nbdExport"], "vol-a@s1");
    assert_eq!(s1["writable"], false);
    assert!(s1["createdAt"].as_str().unwrap().ends_with('Z'), "{s1}");
    let w = json(
        &bin,
        ep,
        &["snapshot", "create", "vol-a", "w1", "--writable"],
    );
    assert_eq!(w["writable"], true);
    assert!(w["id"].as_u64() > s1["id"].as_u64());
    let listed = json(&bin, ep, &["snapshot", "list", "vol-a"]);
    let names: Vec<&str> = listed["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["s1", "w1"], "{listed}");
    let table = expect(&bin, ep, &["snapshot", "list", "vol-a"], 0);
    assert!(
        table.contains("vol-a@w1") && table.contains("ready"),
        "{table}"
    );
    let shown = json(&bin, ep, &["snapshot", "show", "vol-a", "s1"]);
    assert_eq!(shown["id"], s1["id"]);
    let shown = expect(&bin, ep, &["snapshot", "show", "vol-a", "w1"], 0);
    assert!(
        shown.contains("writable:") && shown.contains("yes"),
        "{shown}"
    );
    assert_eq!(
        json(&bin, ep, &["volume", "show", "vol-a"])["snapshotCount"],
        2
    );

    // 2: not found.
    let out = cli(&bin, ep, &["volume", "show", "nope"]);
    assert_eq!(code(&out), 2, "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not found") && err.contains("nope"), "{err}");
    expect(&bin, ep, &["snapshot", "show", "vol-a", "nope"], 2);
    expect(&bin, ep, &["snapshot", "create", "nope", "s"], 2);
    expect(&bin, ep, &["snapshot", "delete", "vol-a", "nope"], 2);
    expect(&bin, ep, &["volume", "delete", "nope"], 2);

    // 3: already exists — a taken volume name, or a snapshot name taken by a different kind.
    let out = cli(&bin, ep, &["volume", "create", "vol-a", "--size", "1M"]);
    assert_eq!(code(&out), 3, "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    expect(
        &bin,
        ep,
        &["snapshot", "create", "vol-a", "s1", "--writable"],
        3,
    );

    // 4: invalid argument, from the agent.
    let out = cli(&bin, ep, &["volume", "create", "bad/name", "--size", "1M"]);
    assert_eq!(code(&out), 4, "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid argument"));
    expect(&bin, ep, &["snapshot", "create", "vol-a", "bad name"], 4);
    let out = cli(
        &bin,
        ep,
        &[
            "volume",
            "create",
            "lab",
            "--size",
            "1M",
            "--label",
            "bad key=1",
        ],
    );
    assert_eq!(code(&out), 4, "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("label key \"bad key\""));
    expect(
        &bin,
        ep,
        &[
            "volume",
            "create",
            "odd",
            "--size",
            "1M",
            "--chunk-size",
            "3000",
        ],
        4,
    );

    // 1: usage errors caught before any call.
    expect(&bin, ep, &["volume", "create", "x", "--size", "10X"], 1);
    expect(&bin, ep, &["volume", "create", "x"], 1);
    expect(
        &bin,
        ep,
        &[
            "volume", "create", "x", "--size", "1M", "--label", "novalue",
        ],
        1,
    );
    expect(&bin, ep, &["volume", "frobnicate"], 1);
    expect(&bin, ep, &["--output", "yaml", "volume", "list"], 1);
    let help = expect(&bin, ep, &["--help"], 0);
    assert!(
        help.contains("Exit codes") && help.contains("failed precondition"),
        "{help}"
    );

    // 5: a volume with snapshots is not deleted without --force.
    let out = cli(&bin, ep, &["volume", "delete", "vol-a"]);
    assert_eq!(code(&out), 5, "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("force"),
        "{}",
        describe(&out)
    );
    assert_eq!(
        json(&bin, ep, &["volume", "show", "vol-a"])["name"],
        "vol-a"
    );

    // Deleting snapshots, then volumes.
    let del = json(&bin, ep, &["snapshot", "delete", "vol-a", "w1"]);
    assert!(del["reclaimPending"].is_u64(), "{del}");
    expect(&bin, ep, &["snapshot", "show", "vol-a", "w1"], 2);
    let out = expect(&bin, ep, &["volume", "delete", "vol-a", "--force"], 0);
    assert!(out.contains("deleted volume vol-a"), "{out}");
    expect(&bin, ep, &["volume", "show", "vol-a"], 2);
    assert_eq!(
        json(&bin, ep, &["volume", "delete", "vol-b"]),
        serde_json::json!({})
    );
    let left = json(&bin, ep, &["volume", "list"]);
    assert_eq!(left["volumes"].as_array().unwrap().len(), 1, "{left}");

    assert!(g.agent.stop().success());
}

#[test]
fn unreachable_agent_exits_7() {
    let bin = cli_bin();
    // Nobody listens on a port we just freed.
    let ep = format!("http://127.0.0.1:{}", free_port());
    let out = cli(&bin, &ep, &["--timeout", "5s", "volume", "list"]);
    assert_eq!(code(&out), 7, "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot connect") && err.contains(&ep), "{err}");
    assert!(out.stdout.is_empty());

    let tmp = tempfile::tempdir().unwrap();
    let sock = format!("unix:{}", tmp.path().join("grpc.sock").display());
    let out = cli(&bin, &sock, &["volume", "list"]);
    assert_eq!(code(&out), 7, "{}", describe(&out));

    // The environment variable is honoured, and a malformed endpoint is a usage error.
    let out = Command::new(&bin)
        .args(["volume", "list"])
        .env("MULTISNAP_ENDPOINT", &ep)
        .output()
        .unwrap();
    assert_eq!(code(&out), 7, "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&ep));
    expect(&bin, "unix:", &["volume", "list"], 1);
}

#[test]
fn unix_socket_endpoint() {
    let bin = cli_bin();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let g = start_agent(&dir);
    let sock = dir.join("grpc.sock");
    for ep in [
        format!("unix:{}", sock.display()),
        format!("unix://{}", sock.display()),
    ] {
        let list = json(&bin, &ep, &["volume", "list"]);
        assert_eq!(list["volumes"][0]["name"], "default", "{list}");
    }
    let ep = format!("unix:{}", sock.display());
    let s = json(&bin, &ep, &["snapshot", "create", "default", "over-unix"]);
    // The same agent over TCP sees what was made over the socket.
    let tcp = json(
        &bin,
        &g.endpoint,
        &["snapshot", "show", "default", "over-unix"],
    );
    assert_eq!(s["id"], tcp["id"]);
    expect(&bin, &ep, &["volume", "show", "missing"], 2);
    assert!(g.agent.stop().success());
}

#[test]
fn snapshot_delete_wait_reclaims_space() {
    let bin = cli_bin();
    let tmp = tempfile::tempdir().unwrap();
    let g = start_agent(&tmp.path().join("data"));
    let ep = g.endpoint.as_str();
    let qemu = have("qemu-io");
    for i in 0..3 {
        expect(
            &bin,
            ep,
            &["snapshot", "create", "default", &format!("s{i}")],
            0,
        );
        if qemu {
            // Overwrite data the snapshots share, so deletion has copies to free.
            qemu_io(
                &g.agent.uri("default"),
                &[&format!("write -P {} 0 8M", i + 1)],
            );
        } else {
            eprintln!("note: qemu-io is not installed; deleting snapshots without copies");
        }
    }
    let before = json(&bin, ep, &["volume", "show", "default"]);
    if qemu {
        assert!(before["exceptionCount"].as_u64().unwrap() > 0, "{before}");
    }
    json(&bin, ep, &["snapshot", "delete", "default", "s0"]);
    json(&bin, ep, &["snapshot", "delete", "default", "s1"]);
    let out = json(&bin, ep, &["snapshot", "delete", "default", "s2", "--wait"]);
    assert_eq!(out, serde_json::json!({"reclaimPending": 0}));
    let after = json(&bin, ep, &["volume", "show", "default"]);
    assert_eq!(after["reclaimPending"], 0, "{after}");
    assert_eq!(after["snapshotCount"], 0, "{after}");
    assert_eq!(after["exceptionCount"], 0, "{after}");
    if qemu {
        assert!(
            after["storeFreeBytes"].as_u64() > before["storeFreeBytes"].as_u64(),
            "{before} -> {after}"
        );
    }
    let listed = json(&bin, ep, &["snapshot", "list", "default"]);
    assert_eq!(listed["snapshots"], serde_json::json!([]));
    // Table mode says so too.
    expect(&bin, ep, &["snapshot", "create", "default", "t"], 0);
    let msg = expect(
        &bin,
        ep,
        &["snapshot", "delete", "default", "t", "--wait"],
        0,
    );
    assert!(msg.contains("reclaimed"), "{msg}");
    assert!(g.agent.stop().success());
}

/// Both binaries name the workspace version and the commit they were built from.
#[test]
fn version_names_the_commit() {
    let want = workspace_version();
    for bin in [agent_bin(), cli_bin()] {
        let (version, commit) = reported_version(Command::new(&bin));
        assert_eq!(version, want, "{}", bin.display());
        match expected_commit() {
            Some(head) => assert_eq!(commit, head, "{}", bin.display()),
            None => assert_eq!(commit, "unknown", "{}", bin.display()),
        }
    }
}

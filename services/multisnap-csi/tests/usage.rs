//! The binary's own contract, without an agent: the flags the chart passes (and their
//! environment variables), `--check-args`, `--version`, and clear usage errors. (Declaring an
//! integration test here also makes `cargo test --workspace` build the `multisnap-csi` binary
//! that the end-to-end tests in tests/ drive.)

use std::process::{Command, Output};

fn csi(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_multisnap-csi"));
    for var in [
        "NODE_NAME",
        "CSI_ENDPOINT",
        "DRIVER_NAME",
        "AGENT_SOCKET",
        "NBD_SOCKET",
        "PEER_AGENT_ENDPOINT",
        "PEER_TLS_CA",
        "PEER_TLS_CERT",
        "PEER_TLS_KEY",
        "PEER_BANDWIDTH_LIMIT",
        "PEER_COMPRESSION",
    ] {
        cmd.env_remove(var);
    }
    cmd.args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run multisnap-csi")
}

#[test]
fn check_args_accepts_the_charts_flags() {
    let out = csi(
        &[
            "--csi-socket=unix:///csi/csi.sock",
            "--agent-socket=/var/lib/multisnap/grpc.sock",
            "--nbd-socket=/var/lib/multisnap/nbd.sock",
            "--node-name=worker-1",
            "--driver-name=csi.multisnap.dev",
            "--check-args",
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
    // The same from the environment, as the DaemonSet sets it.
    let out = csi(
        &["--check-args"],
        &[
            ("NODE_NAME", "worker-1"),
            ("CSI_ENDPOINT", "unix:///csi/csi.sock"),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn bad_flags_are_usage_errors_that_say_why() {
    let out = csi(&["--check-args"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--node-name"));
    for (args, says) in [
        (
            vec!["--node-name=Worker_1", "--check-args"],
            "DNS subdomain",
        ),
        (
            vec!["--node-name=w1", "--driver-name=-bad", "--check-args"],
            "driver name",
        ),
        (
            vec![
                "--node-name=w1",
                "--csi-socket=tcp://1.2.3.4:5",
                "--check-args",
            ],
            "unix",
        ),
        (
            vec![
                "--node-name=w1",
                "--peer-agent-endpoint=https://{node}:50051",
                "--check-args",
            ],
            "--peer-tls-ca",
        ),
        (
            vec!["--node-name=w1", "--peer-tls-ca=/ca.pem", "--check-args"],
            "need --peer-agent-endpoint",
        ),
        (
            vec![
                "--node-name=w1",
                "--peer-agent-endpoint=http://{node}:1",
                "--peer-compression=gzip",
                "--check-args",
            ],
            "gzip",
        ),
    ] {
        let out = csi(&args, &[]);
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{args:?}: {err}");
    }
}

#[test]
fn version_names_the_commit() {
    let out = csi(&["--version"], &[]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    // The form and the commit every multisnap binary prints (multisnap-build-info's own tests
    // check that commit against the checkout's HEAD and MULTISNAP_COMMIT).
    assert_eq!(
        text.trim(),
        format!("multisnap-csi {}", multisnap_build_info::VERSION_LINE)
    );
}

//! The binary's own contract, without an agent: help documents the exit codes, usage errors
//! exit 1, an unreachable agent exits 7. (Declaring an integration test here also makes
//! `cargo test --workspace` build the `multisnap` binary that tests/cli.rs drives.)

use std::process::Command;

fn multisnap(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_multisnap"))
        .args(args)
        .output()
        .expect("run multisnap")
}

#[test]
fn help_lists_the_exit_codes() {
    let out = multisnap(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in ["volume", "snapshot", "--endpoint", "--output"] {
        assert!(text.contains(needle), "help lacks {needle}: {text}");
    }
    assert!(
        text.to_lowercase().contains("exit"),
        "help should document exit codes: {text}"
    );
}

#[test]
fn usage_errors_exit_1_and_unreachable_agents_exit_7() {
    assert_eq!(multisnap(&["no-such-command"]).status.code(), Some(1));
    assert_eq!(
        multisnap(&["volume", "create", "x", "--size", "12Q"])
            .status
            .code(),
        Some(1)
    );
    // A port nothing listens on (bound and released at once).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port");
    let out = multisnap(&[
        "--endpoint",
        &format!("http://127.0.0.1:{port}"),
        "--timeout",
        "5s",
        "volume",
        "list",
    ]);
    assert_eq!(
        out.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A policy takes an interval or a schedule: both, or neither, is a usage error.
#[test]
fn a_policy_takes_every_or_schedule_not_both() {
    let both = multisnap(&[
        "policy",
        "set",
        "v",
        "--every",
        "1h",
        "--schedule",
        "0 * * * *",
    ]);
    assert_eq!(both.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&both.stderr).contains("cannot be used with"));
    let neither = multisnap(&["policy", "set", "v", "--keep-daily", "7"]);
    assert_eq!(neither.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&neither.stderr).contains("--every"));
    let help = multisnap(&["policy", "set", "--help"]);
    assert!(String::from_utf8_lossy(&help.stdout).contains("--schedule"));
}

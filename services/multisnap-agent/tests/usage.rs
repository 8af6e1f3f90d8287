//! The binary's own contract, without a data directory: help names the subcommands and the
//! listen flags, and a run without `--data-dir` is a usage error (exit 2) that says what is
//! missing. (Declaring an integration test here also makes `cargo test --workspace` build the
//! `multisnap-agent` binary that the end-to-end tests in tests/ drive.)

use std::process::Command;

fn agent(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_multisnap-agent"))
        .args(args)
        .env_remove("MULTISNAP_DATA_DIR")
        .output()
        .expect("run multisnap-agent")
}

#[test]
fn help_names_the_subcommands_and_listeners() {
    let out = agent(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "verify",
        "snapshot",
        "--data-dir",
        "--nbd-listen",
        "--grpc-listen",
    ] {
        assert!(text.contains(needle), "help lacks {needle}: {text}");
    }
}

#[test]
fn no_data_dir_is_a_usage_error() {
    let out = agent(&[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--data-dir"), "{err}");
}

//! The Helm chart stays in step with the agent: its values and flags are checked statically
//! (there is no helm binary on these machines) against values.yaml and `multisnap-agent --help`.

mod common;
use common::*;
use std::process::Command;

#[test]
fn chart_values_and_flags_match_the_agent() {
    let ok = Command::new("python3")
        .args(["-c", "import yaml"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        eprintln!("SKIP: python3 yaml missing (bash .ci/install-deps installs it)");
        return;
    }
    let help = Command::new(agent_bin()).arg("--help").output().unwrap();
    assert!(help.status.success());
    let tmp = tempfile::tempdir().unwrap();
    let help_file = tmp.path().join("help.txt");
    std::fs::write(&help_file, &help.stdout).unwrap();
    let out = Command::new("python3")
        .arg(repo_root().join("tests/helm/check_chart.py"))
        .arg(repo_root().join("helm/multisnap"))
        .arg(&help_file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

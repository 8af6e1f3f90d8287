//! The Helm chart stays in step with the agent: its values and flags are checked statically
//! (there is no helm binary on these machines) against values.yaml and `multisnap-agent --help`.

use common::*;
use multisnap_tests as common;
use std::process::Command;

#[test]
fn chart_values_and_flags_match_the_agent() {
    if !python_has(&["yaml"]) {
        eprintln!("SKIP: python yaml missing (bash .ci/install-deps installs it)");
        return;
    }
    let help = Command::new(agent_bin()).arg("--help").output().unwrap();
    assert!(help.status.success());
    let tmp = tempfile::tempdir().unwrap();
    let help_file = tmp.path().join("help.txt");
    std::fs::write(&help_file, &help.stdout).unwrap();
    let out = python()
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

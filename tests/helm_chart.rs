//! The Helm chart, checked with the real tools: Helm's own Go SDK renders and lints it
//! (PyPI helm-python-sdk), kubernetes-validate checks every rendered manifest against the
//! Kubernetes API schemas, and the real agent is started with the exact arguments the rendered
//! DaemonSet gives it (paths moved under a scratch root, ports moved to free ones), for the
//! default values and for a set that turns TLS, origins and large sizes on. A chart that
//! renders flags the agent refuses would crash-loop on every node; this is where it shows.

use multisnap_tests::{self as common, require_tools};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The rendered agent arguments per value set, from tests/helm/render_chart.py.
fn rendered_args() -> Option<serde_json::Map<String, serde_json::Value>> {
    if !common::python_has(&["helm_python", "kubernetes_validate", "yaml"]) {
        eprintln!(
            "SKIP: {} cannot import helm_python and kubernetes_validate (bash .ci/install-deps installs them)",
            common::python_path().display()
        );
        return None;
    }
    let root = common::repo_root();
    let out = common::output_ok(
        common::python()
            .arg(root.join("tests/helm/render_chart.py"))
            .arg(root.join("helm/multisnap")),
    );
    match serde_json::from_str(&out).unwrap() {
        serde_json::Value::Object(m) => Some(m),
        other => panic!("render_chart.py printed {other}"),
    }
}

/// The chart's argument with its node paths moved under `root` and its listen address moved
/// to a free loopback port; what the pod mounts is made there.
fn localise(arg: &str, root: &Path) -> String {
    let Some((flag, value)) = arg.split_once('=') else {
        return arg.to_string();
    };
    let under_root = |p: &str| root.join(p.trim_start_matches('/'));
    match flag {
        "--nbd-listen" | "--grpc-listen" | "--metrics-listen" if value != "none" => {
            format!("{flag}=127.0.0.1:{}", common::free_port())
        }
        "--data-dir" => format!("{flag}={}", under_root(value).display()),
        "--allow-origin" if !value.contains(['*', '?', '[']) => {
            let dir = under_root(value);
            std::fs::create_dir_all(&dir).unwrap();
            format!("{flag}={}", dir.display())
        }
        "--grpc-tls-cert" | "--grpc-tls-key" | "--grpc-tls-client-ca" => {
            format!("{flag}={}", under_root(value).display())
        }
        _ => arg.to_string(),
    }
}

/// What the chart's TLS Secret would hold: a self-signed certificate for localhost, which is
/// also the CA clients must be signed by.
fn tls_secret(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let p = |f: &str| dir.join(f).display().to_string();
    common::run_ok(
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout",
            &p("tls.key"),
            "-out",
            &p("tls.crt"),
        ],
    );
    std::fs::copy(dir.join("tls.crt"), dir.join("ca.crt")).unwrap();
}

#[test]
fn the_agent_starts_with_what_real_helm_renders() {
    require_tools!("openssl");
    let Some(sets) = rendered_args() else {
        return;
    };
    assert!(sets.contains_key("defaults") && sets.len() >= 2, "{sets:?}");
    for (name, args) in sets {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("node");
        tls_secret(&root.join("tls"));
        let args: Vec<String> = args
            .as_array()
            .unwrap()
            .iter()
            .map(|a| localise(a.as_str().unwrap(), &root))
            .collect();
        let grpc = args
            .iter()
            .find_map(|a| a.strip_prefix("--grpc-listen="))
            .expect("the chart sets --grpc-listen")
            .to_string();
        let mut agent = Command::new(common::agent_bin())
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = agent.try_wait().unwrap() {
                let out = agent.wait_with_output().unwrap();
                panic!(
                    "{name}: the agent exited ({status}) with the chart's arguments {args:?}:\n{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            if std::net::TcpStream::connect(&grpc).is_ok() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{name}: the agent never listened on {grpc}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) };
        let status = agent.wait().unwrap();
        assert!(status.success(), "{name}: the agent's stop: {status}");
    }
}

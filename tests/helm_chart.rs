//! The Helm chart, checked with the real tools: Helm's own Go SDK renders and lints it (PyPI
//! helm-python-sdk), kubernetes-validate checks every rendered object against the Kubernetes
//! API schemas (custom-resource kinds against tests/helm/crd_schemas.py), values of a wrong
//! type must be refused by values.schema.json, and the binaries themselves are given the exact
//! arguments the rendered DaemonSet gives them (paths moved under a scratch root, ports moved
//! to free ones), for every documented set of values (tests/helm/render_chart.py). A chart
//! that renders flags a binary refuses would crash-loop on every node; this is where it shows.
//! The upstream sidecars (Go programs from registry.k8s.io) cannot be run here: their images
//! are checked to be the pinned ones the README lists.

use multisnap_tests::{self as common, require_tools};
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// render_chart.py's report (see there), rendered once per test process; None (with the
/// reason printed) when the Python tools are missing.
fn report() -> Option<&'static Value> {
    static REPORT: OnceLock<Option<Value>> = OnceLock::new();
    REPORT
        .get_or_init(|| {
            if !common::python_has(&["helm_python", "kubernetes_validate", "jsonschema", "yaml"]) {
                multisnap_tests::missing_dependency!(
                    "{} cannot import helm_python, kubernetes_validate and jsonschema",
                    common::python_path().display()
                );
                return None;
            }
            Some(serde_json::from_str(&render_chart(&[])).unwrap())
        })
        .as_ref()
}

fn render_chart(extra: &[&str]) -> String {
    let root = common::repo_root();
    common::output_ok(
        common::python()
            .arg(root.join("tests/helm/render_chart.py"))
            .arg(root.join("helm/multisnap"))
            .args(extra),
    )
}

/// (set name, container) for every value set that renders `container`.
fn containers(report: &Value, container: &str) -> Vec<(String, Value)> {
    let sets = report["sets"].as_object().expect("sets");
    assert!(sets.contains_key("defaults") && sets.len() >= 4, "{sets:?}");
    sets.iter()
        .filter_map(|(name, set)| Some((name.clone(), set["containers"].get(container)?.clone())))
        .collect()
}

fn args_of(container: &Value) -> Vec<String> {
    container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
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
        "--grpc-tls-cert"
        | "--grpc-tls-key"
        | "--grpc-tls-client-ca"
        | "--nbd-tls-cert"
        | "--nbd-tls-key"
        | "--nbd-tls-client-ca" => {
            format!("{flag}={}", under_root(value).display())
        }
        // The driver checks that its peer TLS files exist: the Secret's files, made here.
        "--peer-tls-ca" | "--peer-tls-cert" | "--peer-tls-key" => {
            let path = under_root(value);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, "PEM").unwrap();
            format!("{flag}={}", path.display())
        }
        "--csi-socket" | "--agent-socket" | "--nbd-socket" => {
            let path = under_root(value);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            format!("{flag}={}", path.display())
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
    let Some(report) = report() else {
        return;
    };
    for (name, container) in containers(report, "agent") {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("node");
        tls_secret(&root.join("etc/multisnap/tls"));
        tls_secret(&root.join("etc/multisnap/nbd-tls"));
        let args: Vec<String> = args_of(&container)
            .iter()
            .map(|a| localise(a, &root))
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

#[test]
fn the_csi_driver_accepts_what_real_helm_renders() {
    let Some(report) = report() else {
        return;
    };
    let rendered = containers(report, "csi");
    assert!(
        !rendered.is_empty(),
        "no value set renders the csi container"
    );
    let csi = common::csi_bin();
    for (name, container) in rendered {
        let tmp = tempfile::tempdir().unwrap();
        // The kubelet expands $(NODE_NAME) from the container's env (spec.nodeName).
        let args: Vec<String> = args_of(&container)
            .iter()
            .map(|a| localise(&a.replace("$(NODE_NAME)", "node-1"), tmp.path()))
            .collect();
        let out = Command::new(&csi)
            .arg("--check-args")
            .args(&args)
            .env("NODE_NAME", "node-1")
            .output()
            .unwrap();
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ok",
            "{name}: multisnap-csi --check-args {args:?}: {}",
            common::describe(&out)
        );
    }
}

/// The sidecar images the README's table lists: `| `registry.k8s.io/...:vX.Y.Z` | ...`.
fn documented_sidecars() -> Vec<String> {
    let readme = std::fs::read_to_string(common::repo_root().join("README.md")).unwrap();
    readme
        .lines()
        .filter_map(|l| {
            let image = l.strip_prefix("| `registry.k8s.io/")?.split('`').next()?;
            Some(format!("registry.k8s.io/{image}"))
        })
        .collect()
}

#[test]
fn every_image_is_built_here_or_a_pinned_documented_sidecar() {
    let Some(report) = report() else {
        return;
    };
    let version = common::workspace_version();
    let chart =
        std::fs::read_to_string(common::repo_root().join("helm/multisnap/Chart.yaml")).unwrap();
    assert!(
        chart.contains(&format!("appVersion: \"{version}\"")),
        "Chart.yaml's appVersion is not the workspace version {version}"
    );
    let ours = [
        ("agent", format!("localhost/multisnap-agent:{version}")),
        ("csi", format!("localhost/multisnap-csi:{version}")),
    ];
    let sidecars = documented_sidecars();
    assert!(sidecars.len() >= 5, "README's sidecar table: {sidecars:?}");
    let pinned = |image: &str| {
        let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or("");
        let numbers: Vec<&str> = tag.trim_start_matches('v').split('.').collect();
        tag.starts_with('v')
            && numbers.len() == 3
            && numbers.iter().all(|n| n.parse::<u32>().is_ok())
    };
    for (name, set) in report["sets"].as_object().unwrap() {
        // The one set that points every image elsewhere, as an operator with a mirror would.
        if name == "everything-on" {
            continue;
        }
        for (container, c) in set["containers"].as_object().unwrap() {
            let image = c["image"].as_str().unwrap();
            match ours.iter().find(|(n, _)| n == container) {
                Some((_, built)) => assert_eq!(image, built, "{name}: {container}"),
                None => assert!(
                    sidecars.iter().any(|s| s == image) && pinned(image),
                    "{name}: {container} runs {image}, which is neither built here nor a pinned sidecar in the README's table {sidecars:?}"
                ),
            }
        }
    }
    // The agent this checkout builds reports the version the images are tagged with.
    let (agent_version, _) = common::reported_version(Command::new(common::agent_bin()));
    assert_eq!(agent_version, version);
}

#[test]
fn values_of_a_wrong_type_are_refused_by_the_schema() {
    let Some(report) = report() else {
        return;
    };
    // render_chart.py fails if any of its wrong values renders; here, each was refused for
    // the reason it was meant to show.
    let refused = report["refused"].as_object().unwrap();
    for (case, path) in [
        ("cache-bytes-as-string", "/agent/cacheBytes"),
        ("size-as-float", "/agent/defaultVolumeSize"),
        ("port-out-of-range", "/ports/grpc"),
        ("enabled-as-string", "/csi/enabled"),
        ("unknown-key", "agnet"),
        ("fs-type-unknown", "/storageClass/fsType"),
    ] {
        let message = refused[case].as_str().unwrap_or_default();
        assert!(message.contains(path), "{case}: {message:?}");
    }
}

#[test]
fn lint_is_clean_and_every_kind_the_cluster_needs_is_rendered() {
    let Some(report) = report() else {
        return;
    };
    for m in report["lint"].as_array().unwrap() {
        assert!(m["severity"].as_u64() < Some(2), "helm lint: {m}");
    }
    let kinds = |set: &str| -> Vec<String> {
        report["sets"][set]["kinds"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k.as_str().unwrap().to_string())
            .collect()
    };
    for kind in [
        "CSIDriver",
        "DaemonSet",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "StorageClass",
        "VolumeSnapshotClass",
        "NetworkPolicy",
    ] {
        assert!(
            kinds("defaults").iter().any(|k| k == kind),
            "defaults lack {kind}"
        );
    }
    assert!(kinds("everything-on").iter().any(|k| k == "PodMonitor"));
    assert_eq!(kinds("agent-only"), ["DaemonSet"]);
}

#[test]
fn deploy_manifests_are_a_fresh_render_of_the_chart() {
    if report().is_none() {
        return;
    }
    let path = common::repo_root().join("deploy/multisnap.yaml");
    let kept = std::fs::read_to_string(&path).unwrap_or_default();
    let fresh = render_chart(&["--default"]);
    assert!(
        kept == fresh,
        "{} differs from the chart's default render; regenerate it with\n  .venv/bin/python tests/helm/render_chart.py helm/multisnap --default > deploy/multisnap.yaml",
        path.display()
    );
}

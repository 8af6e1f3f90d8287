//! /metrics read by clients nobody here wrote: the official Python client's OpenMetrics and
//! text parsers, a real Prometheus server (scraping the agent and evaluating the alert rules),
//! and promtool. Traffic comes from qemu-io and libnbd (nbdsh's Python module), snapshots from
//! the gRPC API. The last test pins the product's first promise: with 64 snapshots one write to
//! a fresh chunk is copied exactly once.

use common::*;
use multisnap_tests::{self as common, require_tools};

use std::collections::{BTreeSet, HashMap};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn scrape_py() -> String {
    repo_root()
        .join("tests/metrics/scrape.py")
        .to_string_lossy()
        .into_owned()
}

macro_rules! require_py {
    ($($module:expr),+) => {
        for m in [$($module),+] {
            if !python_has(&[m]) {
                multisnap_tests::missing_dependency!("{} cannot import {m}", python_path().display());
                return;
            }
        }
    };
}

/// An agent with its gRPC and metrics ports on free loopback ports (never the defaults, so
/// tests can run side by side).
struct Running {
    agent: Agent,
    metrics: String,
    grpc: String,
}

fn start(dir: &Path, extra: &[&str]) -> Running {
    let metrics = format!("127.0.0.1:{}", free_port());
    let grpc = format!("127.0.0.1:{}", free_port());
    let mut args = vec!["--metrics-listen", &metrics, "--grpc-listen", &grpc];
    args.extend_from_slice(extra);
    let agent = Agent::start(dir, &args);
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(&metrics).is_err() {
        assert!(
            Instant::now() < deadline,
            "metrics never listened on {metrics}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Running {
        agent,
        metrics,
        grpc,
    }
}

impl Running {
    fn url(&self) -> String {
        format!("http://{}/metrics", self.metrics)
    }

    fn call(&self, method: &str, body: &str) -> String {
        output_ok(grpcurl().args([&self.grpc, "call", method, body]))
    }

    fn create_snapshot(&self, name: &str) {
        let out = output_ok(grpcurl().args([
            &self.grpc,
            "call",
            "multisnap.v1.SnapshotService/CreateSnapshot",
            &format!(r#"{{"volume":"default","name":"{name}"}}"#),
        ]));
        assert!(out.contains("SNAPSHOT_STATE_READY"), "{out}");
    }
}

#[derive(Debug)]
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

/// A scrape as the Python client parsed it.
struct Scrape {
    content_type: String,
    /// family name -> (type, unit)
    families: HashMap<String, (String, String)>,
    samples: Vec<Sample>,
}

impl Scrape {
    fn get(format: &str, url: &str) -> Scrape {
        let out = output_ok(python().args([&scrape_py(), format, url]));
        let mut s = Scrape {
            content_type: String::new(),
            families: HashMap::new(),
            samples: Vec::new(),
        };
        for line in out.lines() {
            let f: Vec<&str> = line.split('\t').collect();
            match f.as_slice() {
                ["CONTENT_TYPE", t] => s.content_type = t.to_string(),
                ["FAMILY", name, ty, unit] => {
                    s.families
                        .insert(name.to_string(), (ty.to_string(), unit.to_string()));
                }
                ["SAMPLE", name, labels, value] => s.samples.push(Sample {
                    name: name.to_string(),
                    labels: labels
                        .split(',')
                        .filter_map(|kv| kv.split_once('='))
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                    value: value.parse().unwrap_or(f64::NAN),
                }),
                _ => panic!("unexpected line from scrape.py: {line}"),
            }
        }
        s
    }

    /// Sum of the samples called `name` whose labels include all of `want`; None if none match.
    fn value(&self, name: &str, want: &[(&str, &str)]) -> Option<f64> {
        let matching: Vec<f64> = self
            .samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                want.iter()
                    .all(|(k, v)| s.labels.iter().any(|(a, b)| a == k && b == v))
            })
            .map(|s| s.value)
            .collect();
        (!matching.is_empty()).then(|| matching.iter().sum())
    }

    fn default_volume(&self, name: &str) -> f64 {
        self.value(name, &[("volume", "default")])
            .unwrap_or_else(|| panic!("no {name}{{volume=\"default\"}} in the scrape"))
    }

    fn sample_names(&self) -> BTreeSet<&str> {
        self.samples.iter().map(|s| s.name.as_str()).collect()
    }
}

/// Writes to a read-only snapshot export with libnbd's strict mode off, so the server itself
/// must refuse (EPERM) and count the error.
fn nbd_write_refused(uri: &str) {
    let script = format!(
        r#"
import errno, nbd
h = nbd.NBD()
h.set_strict_mode(0)
h.connect_uri("{uri}")
try:
    h.pwrite(b"x" * 4096, 0)
    raise SystemExit("write to a read-only snapshot succeeded")
except nbd.Error as e:
    assert e.errnum == errno.EPERM, (e.errnum, e.string)
h.shutdown()
"#
    );
    output_ok(python().args(["-c", &script]));
}

/// An agent that has served origin and snapshot I/O, one refused write and a snapshot, and has
/// a second volume with a snapshot policy and a mirror, so every series the dashboards and alerts use
/// exists.
fn busy_agent(dir: &Path) -> Running {
    let r = start(dir, &["--default-volume-size", "67108864"]);
    r.create_snapshot("s1");
    // On its own volume: the policy's snapshots leave `default`'s figures alone.
    r.call(
        "multisnap.v1.VolumeService/CreateVolume",
        r#"{"name":"policed","sizeBytes":"16777216"}"#,
    );
    r.call(
        "multisnap.v1.PolicyService/SetPolicy",
        r#"{"volume":"policed","policy":{"intervalSeconds":"3600","keepHourly":24}}"#,
    );
    // Two mirrors to agents that are not there: each has its lag and failure series all the
    // same, told apart by their target label.
    r.call(
        "multisnap.v1.MirrorService/SetMirror",
        r#"{"volume":"policed","target":{"endpoint":"unix:/nonexistent/grpc.sock","volume":"dr"}}"#,
    );
    r.call(
        "multisnap.v1.MirrorService/SetMirror",
        r#"{"volume":"policed","target":{"endpoint":"127.0.0.1:1","volume":"far","compression":"DELTA_COMPRESSION_ZSTD"}}"#,
    );
    qemu_io(
        &r.agent.uri("default"),
        &["write -P 0x61 0 256k", "read -P 0x61 0 64k", "flush"],
    );
    qemu_io_ro(&r.agent.uri("default@s1"), &["read -P 0 0 64k"]);
    nbd_write_refused(&r.agent.uri("default@s1"));
    r
}

/// (family as the OpenMetrics parser names it, type, unit)
const FAMILIES: &[(&str, &str, &str)] = &[
    ("multisnap_cow_copies", "counter", "-"),
    ("multisnap_cow_copied_bytes", "counter", "bytes"),
    ("multisnap_cow_kernel_copies", "counter", "-"),
    ("multisnap_cow_parked_writes", "counter", "-"),
    ("multisnap_cow_parked_written_bytes", "counter", "bytes"),
    ("multisnap_cow_parked_bytes", "gauge", "bytes"),
    ("multisnap_exceptions", "gauge", "-"),
    ("multisnap_snapshots", "gauge", "-"),
    ("multisnap_snapshots_invalidated", "counter", "-"),
    ("multisnap_cache_hits", "counter", "-"),
    ("multisnap_cache_misses", "counter", "-"),
    ("multisnap_cache_evictions", "counter", "-"),
    ("multisnap_cache_nodes", "gauge", "-"),
    ("multisnap_cache_bytes", "gauge", "bytes"),
    ("multisnap_cache_capacity_bytes", "gauge", "bytes"),
    ("multisnap_location_cache_hits", "counter", "-"),
    ("multisnap_location_cache_misses", "counter", "-"),
    ("multisnap_location_cache_bytes", "gauge", "bytes"),
    ("multisnap_store_size_bytes", "gauge", "bytes"),
    ("multisnap_store_used_bytes", "gauge", "bytes"),
    ("multisnap_store_free_bytes", "gauge", "bytes"),
    ("multisnap_commits", "counter", "-"),
    ("multisnap_commit_seconds", "counter", "seconds"),
    ("multisnap_commit_duration_seconds", "histogram", "seconds"),
    ("multisnap_flush_duration_seconds", "histogram", "seconds"),
    ("multisnap_journal_size_bytes", "gauge", "bytes"),
    ("multisnap_journal_batches", "counter", "-"),
    ("multisnap_journal_written_bytes", "counter", "bytes"),
    ("multisnap_journal_discards", "counter", "-"),
    ("multisnap_journal_retired_epochs", "counter", "-"),
    ("multisnap_journal_waits", "counter", "-"),
    ("multisnap_reclaim_pending_snapshots", "gauge", "-"),
    ("multisnap_reclaimed_chunks", "counter", "-"),
    ("multisnap_nbd_requests", "counter", "-"),
    ("multisnap_nbd_request_bytes", "counter", "bytes"),
    ("multisnap_nbd_request_errors", "counter", "-"),
    (
        "multisnap_nbd_request_duration_seconds",
        "histogram",
        "seconds",
    ),
    ("multisnap_nbd_connections", "gauge", "-"),
    ("multisnap_policy_interval_seconds", "gauge", "seconds"),
    (
        "multisnap_policy_newest_snapshot_age_seconds",
        "gauge",
        "seconds",
    ),
    ("multisnap_policy_snapshots", "gauge", "-"),
    ("multisnap_policy_snapshots_taken", "counter", "-"),
    ("multisnap_policy_snapshots_pruned", "counter", "-"),
    ("multisnap_policy_failures", "counter", "-"),
    ("multisnap_mirror_lag_seconds", "gauge", "seconds"),
    ("multisnap_mirror_pending_bytes", "gauge", "bytes"),
    ("multisnap_mirror_stopped", "gauge", "-"),
    ("multisnap_mirror_sent_bytes", "counter", "bytes"),
    ("multisnap_mirror_syncs", "counter", "-"),
    ("multisnap_mirror_failures", "counter", "-"),
];

#[test]
fn exposition_parses_with_the_official_python_client() {
    require_tools!("qemu-io");
    require_py!("prometheus_client", "grpc", "grpc_reflection");
    require_py!("nbd");
    let tmp = tempfile::tempdir().unwrap();
    let r = busy_agent(&tmp.path().join("data"));

    // What Prometheus asks for: OpenMetrics, checked strictly (EOF marker, suffixes, units).
    let om = Scrape::get("openmetrics", &r.url());
    assert!(
        om.content_type.starts_with("application/openmetrics-text"),
        "{}",
        om.content_type
    );
    for (name, ty, unit) in FAMILIES {
        let got = om
            .families
            .get(*name)
            .unwrap_or_else(|| panic!("family {name} missing; have {:?}", om.families.keys()));
        assert_eq!((got.0.as_str(), got.1.as_str()), (*ty, *unit), "{name}");
    }
    for (name, _, _) in FAMILIES {
        assert!(
            om.samples.iter().any(|s| s.name.starts_with(name)),
            "no samples for {name}"
        );
    }

    // Which build answers: the version and commit its --version reports, as an info metric.
    let (version, commit) = reported_version(Command::new(agent_bin()));
    assert_eq!(
        om.families.get("multisnap_build").map(|f| f.0.as_str()),
        Some("info")
    );
    assert_eq!(
        om.value(
            "multisnap_build_info",
            &[("version", &version), ("commit", &commit)]
        ),
        Some(1.0)
    );
    if let Some(head) = expected_commit() {
        assert_eq!(commit, head, "the agent was built from another commit");
    }

    // The traffic above, as the NBD observer counted it.
    let origin = [("volume", "default"), ("view", "origin")];
    let w = [origin.as_slice(), &[("op", "write")]].concat();
    assert!(om.value("multisnap_nbd_requests_total", &w) >= Some(1.0));
    assert_eq!(
        om.value("multisnap_nbd_request_bytes_total", &w),
        Some(262144.0)
    );
    let snap_read = [("volume", "default"), ("view", "snapshot"), ("op", "read")];
    assert!(om.value("multisnap_nbd_requests_total", &snap_read) >= Some(1.0));
    let refused = [("view", "snapshot"), ("op", "write"), ("errno", "EPERM")];
    assert_eq!(
        om.value("multisnap_nbd_request_errors_total", &refused),
        Some(1.0)
    );
    assert!(om.value("multisnap_nbd_request_duration_seconds_count", &w) >= Some(1.0));
    // Every client has gone: no open connections remain counted.
    assert_eq!(om.value("multisnap_nbd_connections", &[]), Some(0.0));
    // Snapshot names never become labels (cardinality stays bounded by volumes).
    for s in &om.samples {
        assert!(
            s.labels.iter().all(|(_, v)| !v.contains("s1")),
            "snapshot name leaked into {s:?}"
        );
    }
    // One series per mirror, by target (ENDPOINT/VOLUME).
    for target in ["unix:/nonexistent/grpc.sock/dr", "http://127.0.0.1:1/far"] {
        let mirror = [("volume", "policed"), ("target", target)];
        assert_eq!(
            om.value("multisnap_mirror_stopped", &mirror),
            Some(0.0),
            "{target}"
        );
        assert_eq!(
            om.value("multisnap_mirror_syncs_total", &mirror),
            Some(0.0),
            "{target}"
        );
        let connect = [mirror.as_slice(), &[("reason", "connect")]].concat();
        assert!(
            om.value("multisnap_mirror_failures_total", &connect)
                .is_some(),
            "{target}"
        );
    }
    // One snapshot, so the 256k write copied 4 chunks of 64 KiB from the origin.
    assert_eq!(om.default_volume("multisnap_snapshots"), 1.0);
    assert_eq!(om.default_volume("multisnap_cow_copies_total"), 4.0);
    assert_eq!(
        om.default_volume("multisnap_cow_copied_bytes_total"),
        262144.0
    );
    // That write needed copies, so it was acknowledged before their commit: parked, then
    // landed by the flush that followed (nothing is parked any more).
    assert!(om.default_volume("multisnap_cow_parked_writes_total") >= 1.0);
    assert_eq!(
        om.default_volume("multisnap_cow_parked_written_bytes_total"),
        262144.0
    );
    assert_eq!(om.default_volume("multisnap_cow_parked_bytes"), 0.0);
    assert!(om.default_volume("multisnap_commits_total") >= 1.0);
    // qemu-io's flush reached the store once; any further flush request (qemu-io flushes
    // again when it closes) had no write to cover and was answered without one.
    let flushes = om.default_volume("multisnap_flush_duration_seconds_count");
    let flush_requests = om
        .value(
            "multisnap_nbd_requests_total",
            &[origin.as_slice(), &[("op", "flush")]].concat(),
        )
        .unwrap_or(0.0);
    assert!(
        flushes >= 1.0 && flushes <= flush_requests,
        "{flushes} store flushes for {flush_requests} NBD flush requests"
    );
    // 256 KiB written then flushed: one journal batch carrying at least those bytes (the
    // snapshot creation before it had nothing to sync). A quarter of the 64 MiB origin.
    assert_eq!(om.default_volume("multisnap_journal_batches_total"), 1.0);
    assert!(om.default_volume("multisnap_journal_written_bytes_total") >= 262144.0);
    assert_eq!(
        om.default_volume("multisnap_journal_size_bytes"),
        f64::from(16u32 << 20)
    );
    assert_eq!(om.default_volume("multisnap_journal_discards_total"), 0.0);
    assert_eq!(om.default_volume("multisnap_journal_waits_total"), 0.0);
    assert!(
        om.default_volume("multisnap_cache_misses_total")
            + om.default_volume("multisnap_cache_hits_total")
            >= 1.0
    );
    // The snapshot read above looked its chunks up; the cache's share is 1/32 of 64 MiB.
    assert!(om.default_volume("multisnap_location_cache_misses_total") >= 1.0);
    assert_eq!(
        om.default_volume("multisnap_location_cache_bytes"),
        f64::from(2u32 << 20)
    );
    let size = om.default_volume("multisnap_store_size_bytes");
    let used = om.default_volume("multisnap_store_used_bytes");
    let free = om.default_volume("multisnap_store_free_bytes");
    assert!(
        used > 0.0 && free > 0.0 && used + free <= size,
        "{used} {free} {size}"
    );

    // What curl gets: the classic text format, same series.
    let text = Scrape::get("text", &r.url());
    assert!(
        text.content_type.starts_with("text/plain; version=0.0.4"),
        "{}",
        text.content_type
    );
    assert_eq!(text.sample_names(), om.sample_names());
    assert_eq!(
        text.default_volume("multisnap_cow_copies_total"),
        om.default_volume("multisnap_cow_copies_total")
    );
}

/// Names like `multisnap_foo_total` in a dashboard or rule file.
fn metric_names_in(path: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut names = BTreeSet::new();
    let mut rest = text.as_str();
    while let Some(i) = rest.find("multisnap_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

#[test]
fn dashboard_and_alert_metrics_exist_in_a_live_scrape() {
    require_tools!("qemu-io");
    require_py!("prometheus_client", "grpc", "grpc_reflection");
    require_py!("nbd");
    let tmp = tempfile::tempdir().unwrap();
    let r = busy_agent(&tmp.path().join("data"));
    let scrape = Scrape::get("openmetrics", &r.url());
    let live = scrape.sample_names();
    for file in [
        "deploy/grafana/multisnap.json",
        "deploy/prometheus/alerts.yml",
    ] {
        let used = metric_names_in(&repo_root().join(file));
        assert!(used.len() >= 3, "{file} names almost no metric: {used:?}");
        // No ublk device runs here, so its series are never scraped; they come from the same
        // registration as the NBD ones with another prefix (pinned by the agent's
        // `ublk_series_encode` unit test), so each must have its NBD twin.
        let missing: Vec<&String> = used
            .iter()
            .filter(|n| {
                let twin = n.replacen("multisnap_ublk_", "multisnap_nbd_", 1);
                let served_twin = n.starts_with("multisnap_ublk_") && live.contains(twin.as_str());
                !(live.contains(n.as_str()) || served_twin)
            })
            .collect();
        assert!(
            missing.is_empty(),
            "{file} uses metrics the agent does not serve: {missing:?}"
        );
    }
}

#[test]
fn promtool_checks_rules_config_and_exposition() {
    require_tools!("promtool");
    let root = repo_root();
    let out = run_ok(
        "promtool",
        &[
            "check",
            "rules",
            &root.join("deploy/prometheus/alerts.yml").to_string_lossy(),
        ],
    );
    assert!(out.contains("SUCCESS"), "{out}");
    let out = run_ok(
        "promtool",
        &[
            "check",
            "config",
            &root
                .join("deploy/prometheus/prometheus.yml")
                .to_string_lossy(),
        ],
    );
    assert!(out.contains("SUCCESS"), "{out}");

    // The rules' unit tests: each alert fires on the series it should, and not on others
    // (EPERM from read-only snapshots is not an I/O error).
    let out = run_ok(
        "promtool",
        &[
            "test",
            "rules",
            &root
                .join("deploy/prometheus/alerts_test.yml")
                .to_string_lossy(),
        ],
    );
    assert!(out.contains("SUCCESS"), "{out}");

    // promtool's linter on a live exposition: names, units and suffixes per conventions.
    let tmp = tempfile::tempdir().unwrap();
    let r = start(
        &tmp.path().join("data"),
        &["--default-volume-size", "67108864"],
    );
    let body = run_ok("curl", &["-sf", &r.url()]);
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot run promtool");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("promtool stdin");
        stdin.write_all(body.as_bytes()).expect("write to promtool");
    }
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

struct Prometheus {
    child: Child,
    url: String,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_prometheus(dir: &Path, target: &str) -> Prometheus {
    let rules = repo_root().join("deploy/prometheus/alerts.yml");
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: multisnap-agent\n    static_configs:\n      - targets: ['{target}']\n",
            rules.display()
        ),
    )
    .unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address={addr}"))
        .arg("--log.level=warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("cannot start prometheus");
    Prometheus {
        child,
        url: format!("http://{addr}"),
    }
}

/// Polls `f` until it returns Some, for at most `secs`.
fn eventually<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn prom(args: &[&str]) -> Option<String> {
    let mut all = vec![scrape_py()];
    all.extend(args.iter().map(|s| s.to_string()));
    let out = python().args(&all).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn prometheus_scrapes_the_agent_and_evaluates_the_alerts() {
    require_tools!("prometheus", "qemu-io");
    require_py!("prometheus_client", "grpc", "grpc_reflection");
    require_py!("nbd");
    let tmp = tempfile::tempdir().unwrap();
    let r = busy_agent(&tmp.path().join("data"));
    let p = start_prometheus(tmp.path(), &r.metrics);

    let target = eventually(30, "the agent target to be up", || {
        let out = prom(&["targets", &p.url])?;
        out.lines()
            .find(|l| l.starts_with("TARGET\tmultisnap-agent\tup\t"))
            .map(str::to_string)
    });
    assert!(target.contains(&r.metrics), "{target}");

    let query = |expr: &str| -> Vec<(String, f64)> {
        prom(&["query", &p.url, expr])
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let mut f = l.split('\t').skip(1);
                Some((f.next()?.to_string(), f.next()?.parse().ok()?))
            })
            .collect()
    };
    let copies = eventually(10, "COW series in Prometheus", || {
        let v = query("multisnap_cow_copies_total{job=\"multisnap-agent\",volume=\"default\"}");
        (!v.is_empty()).then_some(v)
    });
    assert_eq!(copies.len(), 1, "{copies:?}");
    assert!(copies[0].0.contains("volume=default"), "{copies:?}");
    assert_eq!(copies[0].1, 4.0);
    // `default` carries the traffic; busy_agent's second volume only its policy's snapshots.
    let bytes = query("multisnap_cow_copied_bytes_total{volume=\"default\"}");
    assert_eq!(bytes.first().map(|b| b.1), Some(262144.0), "{bytes:?}");
    let lookups = query(
        "multisnap_cache_hits_total{volume=\"default\"} + multisnap_cache_misses_total{volume=\"default\"}",
    );
    assert!(lookups.first().map(|l| l.1) >= Some(1.0), "{lookups:?}");
    let cache = query("multisnap_cache_capacity_bytes");
    assert!(cache.first().map(|c| c.1) > Some(0.0), "{cache:?}");
    // Histograms arrive whole: quantiles over the latency buckets work.
    let p99 = query(
        "histogram_quantile(0.99, sum by (le) (multisnap_nbd_request_duration_seconds_bucket{op=\"write\"}))",
    );
    assert!(p99.first().map(|q| q.1) > Some(0.0), "{p99:?}");

    // Prometheus loads the shipped alert rules and evaluates every one without error.
    let rules = eventually(15, "every alert rule evaluated", || {
        let out = prom(&["rules", &p.url])?;
        let rules: Vec<String> = out.lines().map(str::to_string).collect();
        (rules.len() >= 4 && rules.iter().all(|l| l.split('\t').nth(3) == Some("ok")))
            .then_some(rules)
    });
    for name in [
        "MultisnapStoreNearlyFull",
        "MultisnapSnapshotsInvalidated",
        "MultisnapNbdIoErrors",
        "MultisnapReclamationStuck",
        "MultisnapPolicySnapshotOverdue",
    ] {
        assert!(
            rules.iter().any(|l| l.contains(name)),
            "{name} not loaded: {rules:?}"
        );
    }
}

#[test]
fn one_write_is_copied_once_whatever_the_number_of_snapshots() {
    require_tools!("qemu-io");
    require_py!("prometheus_client", "grpc", "grpc_reflection");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let r = start(&dir, &["--default-volume-size", "67108864"]);
    qemu_io(&r.agent.uri("default"), &["write -P 0x11 0 1M"]);
    assert!(r.agent.stop().success());
    // 63 snapshots offline (fast), the 64th through the gRPC API of the running agent.
    for i in 1..=63 {
        let out = agent_cmd(&dir, &["snapshot", "create", "default", &format!("s{i}")]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let r = start(&dir, &[]);
    r.create_snapshot("s64");

    let before = Scrape::get("openmetrics", &r.url());
    assert_eq!(before.default_volume("multisnap_snapshots"), 64.0);
    let chunk = before.default_volume("multisnap_chunk_size_bytes");
    assert_eq!(chunk, 65536.0);

    // 4 KiB inside chunk 5, which no write has touched since any snapshot was taken.
    qemu_io(&r.agent.uri("default"), &["write -P 0x5a 328192 4096"]);
    let after = Scrape::get("openmetrics", &r.url());
    let delta = |name: &str| after.default_volume(name) - before.default_volume(name);
    assert_eq!(delta("multisnap_cow_copies_total"), 1.0, "one copy, not 64");
    assert_eq!(delta("multisnap_cow_copied_bytes_total"), chunk);
    assert_eq!(delta("multisnap_exceptions"), 1.0);

    // The same chunk again: every snapshot already has its old contents, nothing is copied.
    qemu_io(&r.agent.uri("default"), &["write -P 0x5b 327680 512"]);
    let again = Scrape::get("openmetrics", &r.url());
    assert_eq!(
        again.default_volume("multisnap_cow_copies_total"),
        after.default_volume("multisnap_cow_copies_total")
    );
    // And the copy is what the oldest and newest snapshots read.
    for snap in ["default@s1", "default@s64"] {
        qemu_io_ro(&r.agent.uri(snap), &["read -P 0x11 327680 65536"]);
    }
}

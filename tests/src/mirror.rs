//! Mirror scenarios' shared parts (`tests/mirror.rs`, `tests/mirror_fanout.rs`): target
//! agents that keep their gRPC port across restarts, `multisnap mirror` through the CLI, and
//! replicas compared with the source by nbdcopy + sha256sum.

pub use crate::policy_clock::{hourly_policy, set_clock, HOUR, START};
use crate::{cli_ok, copy_sha, free_port, qemu_io, Agent};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The source's default volume size.
pub const VOLUME_BYTES: u64 = 128 << 20;

/// The CLI's JSON answer to `args`.
pub fn json(a: &Agent, args: &[&str]) -> Value {
    let mut all = vec!["--output", "json"];
    all.extend_from_slice(args);
    let out = cli_ok(a, &all);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {out}"))
}

/// A target agent whose gRPC port stays the same across restarts, as a mirror's endpoint.
pub struct Target {
    pub agent: Option<Agent>,
    dir: PathBuf,
    addr: String,
    extra: Vec<String>,
    scheme: &'static str,
}

impl Target {
    pub fn start(dir: &Path) -> Target {
        Target::start_with(dir, &[], "http")
    }

    pub fn start_with(dir: &Path, extra: &[&str], scheme: &'static str) -> Target {
        let mut t = Target {
            agent: None,
            dir: dir.to_path_buf(),
            addr: format!("127.0.0.1:{}", free_port()),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            scheme,
        };
        t.restart();
        t
    }

    /// A target with a `replica` volume whose store has room for every snapshot the mirror
    /// sends (the target keeps them all).
    pub fn start_roomy(dir: &Path) -> Target {
        let t = Target::start(dir);
        let size = VOLUME_BYTES.to_string();
        cli_ok(
            t.agent(),
            &[
                "volume",
                "create",
                "replica",
                "--size",
                &size,
                "--store-size",
                "1073741824",
            ],
        );
        t
    }

    pub fn restart(&mut self) {
        let mut args = vec!["--grpc-listen", self.addr.as_str()];
        args.extend(self.extra.iter().map(String::as_str));
        let a = Agent::start(&self.dir, &args);
        a.wait_grpc();
        self.agent = Some(a);
    }

    pub fn kill9(&mut self) {
        self.agent.take().expect("target running").kill9();
    }

    pub fn agent(&self) -> &Agent {
        self.agent.as_ref().expect("target running")
    }

    pub fn endpoint(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    /// The `target` label of the source's mirror series for `volume` on this agent.
    pub fn label(&self, volume: &str) -> String {
        format!("target=\"{}/{volume}\"", self.endpoint())
    }
}

/// A source agent whose default volume is [`VOLUME_BYTES`].
pub fn source(dir: &Path, extra: &[&str]) -> Agent {
    let size = VOLUME_BYTES.to_string();
    let mut args = vec!["--default-volume-size", size.as_str()];
    args.extend_from_slice(extra);
    Agent::start(dir, &args)
}

/// A source agent (see [`source`]) whose policies run on a clock file in `dir`, set to
/// [`START`]; returns the agent and the clock file.
pub fn source_on_clock(dir: &Path) -> (Agent, PathBuf) {
    let clock = dir.join("clock");
    set_clock(&clock, START);
    let a = source(
        &dir.join("a"),
        &["--test-clock-file", clock.to_str().unwrap()],
    );
    (a, clock)
}

/// `multisnap mirror set default` to `volume` on `t`, with `stream`'s flags; the mirror.
pub fn mirror_set(a: &Agent, t: &Target, volume: &str, stream: &[&str]) -> Value {
    let endpoint = t.endpoint();
    let mut args = vec![
        "mirror",
        "set",
        "default",
        "--to",
        &endpoint,
        "--target-volume",
        volume,
    ];
    args.extend_from_slice(stream);
    json(a, &args)
}

/// The status of the default volume's mirror to `volume` on `t`.
pub fn mirror_status(a: &Agent, t: &Target, volume: &str) -> Value {
    let endpoint = t.endpoint();
    let args = [
        "mirror",
        "show",
        "default",
        "--to",
        &endpoint,
        "--target-volume",
        volume,
    ];
    json(a, &args)["status"].clone()
}

/// Waits until every mirror of the default volume has a status satisfying `done`; the first
/// one's status.
pub fn wait_mirror(a: &Agent, what: &str, secs: u64, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let m = json(a, &["mirror", "show", "default"]);
        let all = m["mirrors"].as_array().expect("a list of mirrors");
        if !all.is_empty() && all.iter().all(|m| done(&m["status"])) {
            return all[0]["status"].clone();
        }
        assert!(Instant::now() < deadline, "mirror never {what}: {m}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until every mirror's target holds `snap` and says it is in sync.
pub fn wait_in_sync(a: &Agent, snap: &str, secs: u64) -> Value {
    wait_mirror(a, &format!("in sync at {snap}"), secs, |s| {
        s["state"] == "in-sync" && s["lastReplicatedSnapshot"] == snap
    })
}

/// A large change (`mib` MiB from `at_mib`), so a transfer takes long enough to be cut.
pub fn bulk(a: &Agent, pattern: u8, at_mib: u64, mib: u64) {
    let cmd = format!("write -P {pattern} {} {}", at_mib << 20, mib << 20);
    qemu_io(&a.uri("default"), &[&cmd]);
}

/// sha256 of `export` read whole with nbdcopy.
pub fn sha(a: &Agent, export: &str, tmp: &Path) -> String {
    let file = tmp.join(format!("copy-{}.img", export.replace('@', "_")));
    let sum = copy_sha(a, export, &file);
    let _ = std::fs::remove_file(&file);
    sum
}

/// `volume@snap` on `t` reads the same as `default@snap` on the source.
pub fn assert_replica(a: &Agent, t: &Target, volume: &str, snap: &str, tmp: &Path) {
    let want = sha(a, &format!("default@{snap}"), tmp);
    let got = sha(t.agent(), &format!("{volume}@{snap}"), tmp);
    assert_eq!(got, want, "{volume}@{snap} differs from default@{snap}");
}

/// A mirror counter or gauge of the default volume, summed over the series that carry every
/// label of `labels` (`reason="connect"`, [`Target::label`]).
pub fn mirror_metric(a: &Agent, family: &str, labels: &[&str]) -> f64 {
    let mut all = vec!["volume=\"default\""];
    all.extend_from_slice(labels);
    a.metric_sum(family, &all)
}

/// Sets the time an agent started with `--test-clock-file clock` sees, atomically.
/// The default volume's newest policy snapshot once it is not `previous`.
pub fn wait_policy_newest(a: &Agent, previous: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let p = json(a, &["policy", "show", "default"]);
        let newest = p["status"]["newestSnapshot"].as_str().unwrap_or_default();
        if !newest.is_empty() && newest != previous {
            return newest.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no policy snapshot after {previous:?}: {p}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

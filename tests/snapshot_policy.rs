//! Snapshot policies end to end, with the `multisnap` CLI against an agent whose policy clock
//! is a file the test rewrites (`--test-clock-file`): hourly snapshots over 30 simulated hours
//! keep exactly the expected set by name, a user snapshot named like the template is never
//! pruned, the policy survives a restart (clean or kill -9) without an extra snapshot, a
//! downtime of 10 intervals takes exactly one snapshot at start, a snapshot a hydrating clone
//! holds stays until the clone lets go, bad policies are refused with the reason, and a cleared policy takes and
//! prunes nothing more. Metrics follow (taken, pruned, age, interval).
//! A cron-like schedule on weekdays runs five simulated days: exactly its times, nothing over
//! the weekend, one snapshot for a downtime across two of them.

use common::policy_clock::*;
use common::*;
use multisnap_tests::{self as common, require_tools};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

struct Policed {
    agent: Option<Agent>,
    data: PathBuf,
    clock: PathBuf,
    extra: Vec<String>,
}

impl Policed {
    fn start(dir: &Path, extra: &[&str]) -> Policed {
        let clock = dir.join("clock");
        set_clock(&clock, START);
        let mut args: Vec<String> = vec![
            "--test-clock-file".into(),
            clock.display().to_string(),
            "--default-volume-size".into(),
            "67108864".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let data = dir.join("data");
        let mut p = Policed {
            agent: None,
            data,
            clock,
            extra: args,
        };
        p.restart();
        p
    }

    fn restart(&mut self) {
        if let Some(a) = self.agent.take() {
            a.stop_and_verify();
        }
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        self.agent = Some(Agent::start(&self.data, &extra));
    }

    fn agent(&self) -> &Agent {
        self.agent.as_ref().unwrap()
    }

    fn cli(&self, args: &[&str]) -> String {
        cli_ok(self.agent(), args)
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--output", "json"];
        all.extend_from_slice(args);
        serde_json::from_str(&self.cli(&all)).unwrap()
    }

    /// Moves the policy clock to `t` and waits until the agent has looked at `volume` at that
    /// time (its status says so): the snapshot due then is taken and the prune done.
    fn settle(&self, volume: &str, t: i64) {
        set_clock(&self.clock, t);
        let want = rfc3339(t);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let p = self.json(&["policy", "show", volume]);
            if p["status"]["evaluatedAt"] == want.as_str() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the policy never looked at {want}: {p}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// An hourly policy on `default` keeping `keep` hourly snapshots.
    fn hourly_policy(&self, keep: u32) {
        hourly_policy(self.agent(), keep);
    }

    /// The volume's live snapshots by name (deleted ones stay listed while reclaimed).
    fn ready(&self, volume: &str) -> Vec<String> {
        ready_snapshots(self.agent(), volume)
    }
}

/// Written beside and renamed over, so the agent never reads a half-written time.
fn rfc3339(t: i64) -> String {
    run_ok(
        "date",
        &["-u", "-d", &format!("@{t}"), "+%Y-%m-%dT%H:%M:%SZ"],
    )
    .trim()
    .to_string()
}

fn names(list: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = list.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

#[test]
fn hourly_policy_over_thirty_hours_a_restart_a_long_downtime_and_clear() {
    let tmp = tempfile::tempdir().unwrap();
    let mut p = Policed::start(tmp.path(), &[]);
    // A user's snapshot named as the template would name one: never the policy's to prune.
    p.cli(&["snapshot", "create", "default", "auto-20260101-003000"]);
    let set = p.cli(&[
        "policy",
        "set",
        "default",
        "--every",
        "1h",
        "--keep-hourly",
        "6",
        "--keep-daily",
        "2",
    ]);
    assert!(set.contains("auto-%Y%m%d-%H%M%S"), "{set}");
    for h in 0..=30 {
        p.settle("default", START + h * HOUR);
        if h == 12 {
            // A clean restart keeps the policy and its record; the slot already taken is not
            // taken again.
            let before = p.ready("default");
            p.restart();
            p.settle("default", START + h * HOUR + 600);
            assert_eq!(
                p.ready("default"),
                before,
                "no extra snapshot after a restart"
            );
        }
    }
    let expected = [
        "auto-20260101-003000",
        "auto-20260101-230000",
        "auto-20260102-010000",
        "auto-20260102-020000",
        "auto-20260102-030000",
        "auto-20260102-040000",
        "auto-20260102-050000",
        "auto-20260102-060000",
    ];
    assert_eq!(p.ready("default"), names(&expected));
    let a = p.agent();
    // Counters since the restart: hours 13 to 30 taken (18); the 6 kept at the restart plus
    // those 18, less the 7 kept now, pruned (17).
    assert_eq!(
        a.metric("multisnap_policy_snapshots_taken_total{volume=\"default\"}"),
        18.0
    );
    assert_eq!(
        a.metric("multisnap_policy_snapshots_pruned_total{volume=\"default\"}"),
        17.0
    );
    assert_eq!(
        a.metric("multisnap_policy_interval_seconds{volume=\"default\"}"),
        3600.0
    );
    assert_eq!(
        a.metric("multisnap_policy_snapshots{volume=\"default\"}"),
        7.0
    );
    assert_eq!(
        a.metric("multisnap_policy_newest_snapshot_age_seconds{volume=\"default\"}"),
        0.0
    );
    let v = p.json(&["volume", "show", "default"]);
    assert_eq!(
        v["policy"]["status"]["newestSnapshot"], "auto-20260102-060000",
        "{v}"
    );
    let shown = p.cli(&["volume", "show", "default"]);
    assert!(
        shown.contains("every 1h, keep 6 hourly 2 daily, named auto-%Y%m%d-%H%M%S"),
        "{shown}"
    );

    // Down for ten intervals: the start takes one snapshot for the slot it wakes in, not ten.
    let agent = p.agent.take().unwrap();
    agent.stop_and_verify();
    set_clock(&p.clock, START + 40 * HOUR + 1234);
    p.restart();
    p.settle("default", START + 40 * HOUR + 1234);
    p.settle("default", START + 40 * HOUR + 1300);
    assert_eq!(
        p.ready("default"),
        names(&[
            "auto-20260101-003000",
            "auto-20260101-230000",
            "auto-20260102-020000",
            "auto-20260102-030000",
            "auto-20260102-040000",
            "auto-20260102-050000",
            "auto-20260102-060000",
            "auto-20260102-162034",
        ])
    );
    assert_eq!(
        p.agent()
            .metric("multisnap_policy_snapshots_taken_total{volume=\"default\"}"),
        1.0
    );

    // Cleared: nothing is taken or pruned any more, and the policy is gone from the volume.
    let out = p.cli(&["policy", "clear", "default"]);
    assert!(out.contains("cleared"), "{out}");
    let before = p.ready("default");
    set_clock(&p.clock, START + 100 * HOUR);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(p.ready("default"), before);
    let shown = cli(p.agent(), &["policy", "show", "default"]);
    assert_eq!(shown.status.code(), Some(2), "not found");
    assert!(String::from_utf8_lossy(&shown.stderr).contains("has no snapshot policy"));
    assert!(p.json(&["volume", "show", "default"])["policy"].is_null());
    p.restart();
    assert!(p.json(&["volume", "show", "default"])["policy"].is_null());
    p.agent.take().unwrap().stop_and_verify();
}

#[test]
fn bad_policies_are_refused_with_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let p = Policed::start(tmp.path(), &[]);
    for (args, code, says) in [
        (vec!["--every", "0"], 4, "interval_seconds 0"),
        (vec!["--every", "30s"], 4, "interval_seconds 30"),
        (
            vec!["--every", "1h", "--keep-daily", "20000"],
            4,
            "keep_daily 20000",
        ),
        (
            vec!["--every", "1h", "--max-age", "10m"],
            4,
            "max_age_seconds 600",
        ),
        (
            vec!["--every", "1h", "--name-template", "snap-%Y%m%d"],
            4,
            "needs %H",
        ),
        (
            vec!["--every", "1h", "--name-template", "x-%q"],
            4,
            "unknown placeholder %q",
        ),
        (
            vec!["--every", "1h", "--name-template", "a b-%s"],
            4,
            "only letters",
        ),
        (vec!["--every", "1y"], 1, "unknown unit"),
        (vec!["--schedule", "0 0 31 2 *"], 4, "never matches"),
        (
            vec!["--schedule", "61 * * * *"],
            4,
            "schedule \"61 * * * *\": minute 61 is out of range 0-59",
        ),
        (vec!["--schedule", "0 0 * *"], 4, "has 4 fields; give 5"),
        (
            vec!["--schedule", "15 2 * * *", "--name-template", "d-%Y%m%d-%H"],
            4,
            "needs %M",
        ),
        (
            vec!["--every", "1h", "--schedule", "0 * * * *"],
            1,
            "cannot be used with",
        ),
        (vec![], 1, "--every"),
    ] {
        let mut all = vec!["policy", "set", "default"];
        all.extend(args.iter());
        let out = cli(p.agent(), &all);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{all:?}: {err}");
        assert!(err.contains(says), "{all:?}: {err}");
    }
    let out = cli(p.agent(), &["policy", "set", "nope", "--every", "1h"]);
    assert_eq!(out.status.code(), Some(2));
    // Nothing was set by any of them.
    assert!(p.json(&["volume", "show", "default"])["policy"].is_null());
}

#[test]
fn a_snapshot_a_clone_still_hydrates_from_is_not_pruned_until_it_lets_go() {
    require_tools!("qemu-io");
    let tmp = tempfile::tempdir().unwrap();
    // 64 KiB/s: the 4 MiB below take a minute to hydrate, far longer than the test looks.
    let p = Policed::start(tmp.path(), &["--hydration-bytes-per-sec", "65536"]);
    qemu_io(&p.agent().uri("default"), &["write -P 0x5a 0 4M"]);
    p.hourly_policy(1);
    p.settle("default", START);
    let first = "auto-20260101-000000";
    assert_eq!(p.ready("default"), [first]);
    p.cli(&[
        "volume",
        "create",
        "c1",
        "--from",
        &format!("default@{first}"),
    ]);
    p.settle("default", START + HOUR);
    p.settle("default", START + 2 * HOUR);
    assert_eq!(
        p.ready("default"),
        [first, "auto-20260101-020000"],
        "the clone's source stays; the unheld 01:00 went"
    );
    let status = p.json(&["policy", "show", "default"])["status"].clone();
    assert_eq!(
        status["held"],
        serde_json::json!([format!("{first} (held by clone c1)")]),
        "{status}"
    );
    // The clone goes, and with it the hold: the next look prunes the snapshot.
    p.cli(&["volume", "delete", "c1", "--force"]);
    p.settle("default", START + 2 * HOUR + 60);
    assert_eq!(p.ready("default"), ["auto-20260101-020000"]);
    assert!(p.json(&["policy", "show", "default"])["status"]["held"]
        .as_array()
        .unwrap()
        .is_empty());
}

#[test]
fn the_policy_and_its_record_survive_a_kill_9() {
    let tmp = tempfile::tempdir().unwrap();
    let mut p = Policed::start(tmp.path(), &[]);
    p.hourly_policy(2);
    for h in 0..3 {
        p.settle("default", START + h * HOUR);
    }
    let before = p.ready("default");
    assert_eq!(before, ["auto-20260101-010000", "auto-20260101-020000"]);
    // Killed where it stands: the policy file is whole (written by rename), the record too.
    p.agent.take().unwrap().kill9();
    p.restart();
    p.settle("default", START + 2 * HOUR + 60);
    assert_eq!(
        p.ready("default"),
        before,
        "no extra snapshot, nothing lost"
    );
    assert!(!p.data.join("volumes/default/policy.json.tmp").exists());
    // The recorded snapshots are still the policy's: the next hour prunes the oldest.
    p.settle("default", START + 3 * HOUR);
    assert_eq!(
        p.ready("default"),
        ["auto-20260101-020000", "auto-20260101-030000"]
    );
    p.agent.take().unwrap().stop_and_verify();
}

/// 09:00, 13:00 and 17:00 UTC on weekdays, from Thursday 2026-01-01 to the Monday after,
/// keeping 2 hourly and 3 daily: each scheduled time takes one snapshot, the looks between
/// and the weekend take none, and a downtime from Sunday to Monday 15:30 (past 09:00 and
/// 13:00) takes one at start.
#[test]
fn a_weekday_schedule_over_five_days_with_a_weekend_and_a_downtime() {
    const DAY: i64 = 24 * HOUR;
    let tmp = tempfile::tempdir().unwrap();
    let mut p = Policed::start(tmp.path(), &[]);
    let schedule = "0 9-17/4 * * mon-fri";
    let set = p.cli(&[
        "policy",
        "set",
        "default",
        "--schedule",
        schedule,
        "--keep-hourly",
        "2",
        "--keep-daily",
        "3",
    ]);
    assert!(set.contains("at '0 9-17/4 * * mon-fri' UTC"), "{set}");
    // The first look takes one at once, as for an interval.
    p.settle("default", START);
    assert_eq!(p.ready("default"), ["auto-20260101-000000"]);
    let next =
        |p: &Policed| p.json(&["policy", "show", "default"])["status"]["nextSnapshotAt"].clone();
    assert_eq!(next(&p), "2026-01-01T09:00:00Z");
    for (day, hour, minute) in [
        (0, 8, 59),
        (0, 9, 0),
        (0, 12, 0),
        (0, 13, 0),
        (0, 17, 0),
        (0, 23, 0),
        (1, 9, 0),
        (1, 13, 0),
        (1, 17, 0),
    ] {
        p.settle("default", START + day * DAY + hour * HOUR + minute * 60);
    }
    let friday = names(&[
        "auto-20260101-170000",
        "auto-20260102-130000",
        "auto-20260102-170000",
    ]);
    assert_eq!(p.ready("default"), friday);
    let taken = |p: &Policed| {
        p.agent()
            .metric("multisnap_policy_snapshots_taken_total{volume=\"default\"}")
    };
    assert_eq!(taken(&p), 7.0);
    // Saturday and Sunday: nothing is due until Monday 09:00.
    for hour in [9, 13, 17, 24 + 9, 24 + 12] {
        p.settle("default", START + 2 * DAY + hour * HOUR);
    }
    assert_eq!(p.ready("default"), friday);
    assert_eq!(taken(&p), 7.0);
    assert_eq!(next(&p), "2026-01-05T09:00:00Z");
    // The alert compares the age with the longest gap: Friday 17:00 to Monday 09:00.
    assert_eq!(
        p.agent()
            .metric("multisnap_policy_interval_seconds{volume=\"default\"}"),
        (64 * HOUR) as f64
    );
    let shown = p.cli(&["volume", "show", "default"]);
    assert!(
        shown.contains(
            "at '0 9-17/4 * * mon-fri' UTC, keep 2 hourly 3 daily, named auto-%Y%m%d-%H%M%S"
        ),
        "{shown}"
    );

    // Down from Sunday noon to Monday 15:30: one snapshot at start, for the 13:00 slot.
    p.agent.take().unwrap().stop_and_verify();
    let monday = START + 4 * DAY;
    set_clock(&p.clock, monday + 15 * HOUR + 30 * 60);
    p.restart();
    p.settle("default", monday + 15 * HOUR + 30 * 60);
    p.settle("default", monday + 16 * HOUR);
    assert_eq!(taken(&p), 1.0);
    assert_eq!(next(&p), "2026-01-05T17:00:00Z");
    p.settle("default", monday + 17 * HOUR);
    assert_eq!(
        p.ready("default"),
        names(&[
            "auto-20260101-170000",
            "auto-20260102-170000",
            "auto-20260105-153000",
            "auto-20260105-170000",
        ])
    );
    assert_eq!(taken(&p), 2.0);
    let file: Value =
        serde_json::from_slice(&std::fs::read(p.data.join("volumes/default/policy.json")).unwrap())
            .unwrap();
    assert_eq!(file["format"], 2, "{file}");
    assert_eq!(file["policy"]["schedule"], schedule);
    p.agent.take().unwrap().stop_and_verify();
}

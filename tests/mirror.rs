//! Continuous mirroring between two real agents on loopback, set up with `multisnap mirror set`
//! and checked with nbdcopy + sha256sum: the target's newest snapshot is byte-identical to the
//! source's through a run of writes and snapshots, with the target killed (-9) mid-stream and
//! restarted several times, and with the source killed and restarted; a policy keeping one
//! hourly snapshot never prunes the mirror's base; a target written to (or snapshotted) stops
//! the mirror with its reason, and the target keeps what was written.

use common::mirror::*;
use common::*;
use multisnap_tests::{self as common, require_tools};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};

fn mirror_to(a: &Agent, t: &Target) -> Value {
    mirror_set(a, t, "replica", &[])
}

/// Random writes through NBD with qemu-io: data of varying patterns, and some zeroing.
fn scribble(a: &Agent, rng: &mut StdRng, n: usize) {
    let mut cmds = Vec::new();
    for _ in 0..n {
        let len = rng.gen_range(1..64u64) * 4096;
        let off = rng.gen_range(0..(VOLUME_BYTES - len) / 4096) * 4096;
        if rng.gen_bool(0.15) {
            cmds.push(format!("write -z {off} {len}"));
        } else {
            cmds.push(format!("write -P {} {off} {len}", rng.gen_range(1..255)));
        }
    }
    let refs: Vec<&str> = cmds.iter().map(String::as_str).collect();
    qemu_io(&a.uri("default"), &refs);
}

fn assert_identical(a: &Agent, t: &Target, snap: &str, tmp: &Path) {
    assert_replica(a, t, "replica", snap, tmp);
}

fn failures(a: &Agent, reason: &str) -> f64 {
    let reason = format!("reason=\"{reason}\"");
    mirror_metric(a, "multisnap_mirror_failures_total", &[&reason])
}

/// Stream bytes sent to every target since the source started.
fn sent_bytes(a: &Agent) -> f64 {
    mirror_metric(a, "multisnap_mirror_sent_bytes_total", &[])
}

/// Stream bytes sent to `volume` on `t` since the source started.
fn sent_to(a: &Agent, t: &Target, volume: &str) -> f64 {
    mirror_metric(a, "multisnap_mirror_sent_bytes_total", &[&t.label(volume)])
}

#[test]
fn the_target_stays_identical_through_target_kills_and_a_source_restart() {
    require_tools!("qemu-io", "nbdcopy", "sha256sum", "curl");
    let tmp = tempfile::tempdir().unwrap();
    let mut a = source(&tmp.path().join("a"), &[]);
    // The target keeps every snapshot the mirror sends: room for all of them.
    let mut t = Target::start_roomy(&tmp.path().join("b"));
    let mut rng = StdRng::seed_from_u64(24);

    // A full first sync.
    bulk(&a, 0x5a, 0, 96);
    scribble(&a, &mut rng, 60);
    cli_ok(&a, &["snapshot", "create", "default", "s0"]);
    let started = Instant::now();
    let set = mirror_to(&a, &t);
    assert_eq!(set["target"]["volume"], "replica");
    wait_in_sync(&a, "s0", 120);
    let took = started.elapsed();
    let sent = sent_bytes(&a);
    println!(
        "first sync: {sent} stream bytes in {took:?} ({:.1} MiB/s on loopback, set to in-sync)",
        sent / (1 << 20) as f64 / took.as_secs_f64()
    );
    assert_identical(&a, &t, "s0", tmp.path());

    // Incrementals, the target killed while each one streams, then restarted.
    let mut converge = Vec::new();
    let mut cut_mid_stream = 0;
    for round in 1..=4u64 {
        bulk(&a, round as u8, 8 * round, 48);
        scribble(&a, &mut rng, 10);
        let snap = format!("s{round}");
        cli_ok(&a, &["snapshot", "create", "default", &snap]);
        let s = wait_mirror(&a, &format!("sending {snap}"), 30, |s| {
            s["syncingSnapshot"] == snap.as_str() || s["lastReplicatedSnapshot"] == snap.as_str()
        });
        if s["lastReplicatedSnapshot"] != snap.as_str() {
            cut_mid_stream += 1;
        }
        t.kill9();
        std::thread::sleep(Duration::from_millis(700));
        let retrying = json(&a, &["mirror", "show", "default"])["mirrors"][0].clone();
        t.restart();
        let back = Instant::now();
        let status = wait_in_sync(&a, &snap, 120);
        converge.push(back.elapsed());
        assert_eq!(status["lagSeconds"], 0, "{status}");
        assert_eq!(status["bytesPending"], 0, "{status}");
        assert_identical(&a, &t, &snap, tmp.path());
        // The previous base is no longer needed: deleting it keeps the source's store from
        // filling, and the mirror goes on from the new one.
        cli_ok(
            &a,
            &["snapshot", "delete", "default", &format!("s{}", round - 1)],
        );
        println!(
            "round {round}: while the target was down: {}",
            retrying["status"]
        );
    }
    println!(
        "target kills mid-stream: {cut_mid_stream} of 4; converged after restart in {converge:?}"
    );
    assert!(cut_mid_stream >= 2, "too few kills hit a transfer");
    assert!(failures(&a, "connect") + failures(&a, "transfer") >= 2.0);

    // The source killed mid-stream and restarted: the mirror is on disk and carries on.
    bulk(&a, 0x77, 16, 64);
    cli_ok(&a, &["snapshot", "create", "default", "s5"]);
    wait_mirror(&a, "sending s5", 30, |s| {
        s["syncingSnapshot"] == "s5" || s["lastReplicatedSnapshot"] == "s5"
    });
    let a_dir = a.data_dir.clone();
    a.kill9();
    a = source(&a_dir, &[]);
    let shown = cli_ok(&a, &["volume", "show", "default"]);
    assert!(
        shown.contains(&format!("to {} replica", t.endpoint())),
        "{shown}"
    );
    wait_in_sync(&a, "s5", 120);
    assert_identical(&a, &t, "s5", tmp.path());
    // A clean restart of both, with nothing new: nothing is sent.
    let a_dir = a.data_dir.clone();
    a.stop_and_verify();
    a = source(&a_dir, &[]);
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(sent_bytes(&a), 0.0);
    wait_in_sync(&a, "s5", 10);
    a.stop_and_verify();
    t.agent.take().unwrap().stop_and_verify();
}

#[test]
fn a_policy_keeping_one_hourly_never_prunes_the_mirrors_base() {
    require_tools!("qemu-io", "nbdcopy", "sha256sum", "curl");
    let tmp = tempfile::tempdir().unwrap();
    let (a, clock) = source_on_clock(tmp.path());
    let mut t = Target::start(&tmp.path().join("b"));
    bulk(&a, 0x11, 0, 8);
    hourly_policy(&a, 1);
    let first = wait_policy_newest(&a, "");
    mirror_to(&a, &t);
    wait_in_sync(&a, &first, 60);

    // The target goes away; two hours pass. Retention wants only the newest, but the base
    // stays (held), and the one in between goes.
    t.kill9();
    bulk(&a, 0x22, 2, 8);
    set_clock(&clock, START + HOUR);
    let second = wait_policy_newest(&a, &first);
    bulk(&a, 0x33, 4, 8);
    set_clock(&clock, START + 2 * HOUR);
    let third = wait_policy_newest(&a, &second);
    let deadline = Instant::now() + Duration::from_secs(30);
    let policy = loop {
        let p = json(&a, &["policy", "show", "default"]);
        let names = ready(&a);
        if !names.contains(&second) {
            break p;
        }
        assert!(
            Instant::now() < deadline,
            "{second} was never pruned: {names:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(ready(&a), vec![first.clone(), third.clone()]);
    let held = policy["status"]["held"].to_string();
    assert!(
        held.contains(&first) && held.contains("the mirror to"),
        "{held}"
    );
    let m = wait_mirror(&a, "retrying", 30, |s| s["state"] == "retrying");
    let m = serde_json::json!({ "status": m });
    assert!(m["status"]["lagSeconds"].as_u64().is_some(), "{m}");
    // 2..10 MiB and 4..12 MiB changed since the base: 10 MiB, whole chunks.
    assert_eq!(m["status"]["bytesPending"], 10 << 20, "{m}");
    assert!(
        !m["status"]["lastError"].as_str().unwrap().is_empty(),
        "{m}"
    );

    // The target is back: the incremental goes from the held base, which is then let go.
    t.restart();
    wait_in_sync(&a, &third, 60);
    assert_identical(&a, &t, &third, tmp.path());
    set_clock(&clock, START + 2 * HOUR + 60);
    let deadline = Instant::now() + Duration::from_secs(30);
    while ready(&a) != vec![third.clone()] {
        assert!(
            Instant::now() < deadline,
            "{first} was not pruned once let go: {:?}",
            ready(&a)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn ready(a: &Agent) -> Vec<String> {
    ready_snapshots(a, "default")
}

#[test]
fn a_diverged_target_stops_the_mirror_with_its_reason() {
    require_tools!("qemu-io", "nbdcopy", "sha256sum", "curl");
    let tmp = tempfile::tempdir().unwrap();
    let a = source(&tmp.path().join("a"), &[]);
    let t = Target::start(&tmp.path().join("b"));
    bulk(&a, 0x41, 0, 4);
    cli_ok(&a, &["snapshot", "create", "default", "s0"]);
    mirror_to(&a, &t);
    wait_in_sync(&a, "s0", 60);

    // Written to on the target: the next incremental is refused there, and the mirror stops.
    qemu_io(&t.agent().uri("replica"), &["write -P 0xee 1M 64k"]);
    let written = sha(t.agent(), "replica", tmp.path());
    bulk(&a, 0x42, 2, 4);
    cli_ok(&a, &["snapshot", "create", "default", "s1"]);
    let s = wait_mirror(&a, "stopped", 60, |s| s["state"] == "stopped-diverged");
    let why = s["lastError"].as_str().unwrap();
    assert!(why.contains("origin changed"), "{s}");
    assert_eq!(s["lastReplicatedSnapshot"], "s0");
    assert_eq!(
        sha(t.agent(), "replica", tmp.path()),
        written,
        "the target was overwritten"
    );
    assert_eq!(
        mirror_metric(&a, "multisnap_mirror_stopped", &[&t.label("replica")]),
        1.0
    );
    assert!(failures(&a, "diverged") >= 1.0);
    // Stopped means stopped: a new snapshot sends nothing.
    let sent = sent_bytes(&a);
    cli_ok(&a, &["snapshot", "create", "default", "s2"]);
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(sent_bytes(&a), sent);
    let shown = cli_ok(&a, &["volume", "show", "default"]);
    assert!(shown.contains("stopped-diverged"), "{shown}");

    // Also snapshotted on the target: set again, the mirror finds a snapshot it did not send.
    cli_ok(t.agent(), &["snapshot", "create", "replica", "mine"]);
    mirror_to(&a, &t);
    let s = wait_mirror(&a, "stopped again", 60, |s| {
        s["state"] == "stopped-diverged"
    });
    assert!(
        s["lastError"]
            .as_str()
            .unwrap()
            .contains("newest snapshot mine was not sent by this mirror"),
        "{s}"
    );
    assert_eq!(sha(t.agent(), "replica", tmp.path()), written);
    // The stop is on disk: a restarted source does not try again.
    let a_dir = a.data_dir.clone();
    a.stop_and_verify();
    let a = source(&a_dir, &[]);
    let m = mirror_status(&a, &t, "replica");
    assert_eq!(m["state"], "stopped-diverged", "{m}");
    // Cleared, the mirror is gone and the target keeps what it had.
    let out = cli_ok(&a, &["mirror", "clear", "default"]);
    assert!(out.contains("cleared the mirror of default"), "{out}");
    let gone = cli(&a, &["mirror", "show", "default"]);
    assert!(!gone.status.success());
    assert!(
        String::from_utf8_lossy(&gone.stderr).contains("has no mirror"),
        "{}",
        describe(&gone)
    );
}

#[test]
fn a_mirror_over_mutual_tls_needs_a_client_certificate_the_target_trusts() {
    require_tools!("qemu-io", "nbdcopy", "sha256sum", "openssl", "curl");
    let tmp = tempfile::tempdir().unwrap();
    let pki = tmp.path().join("pki");
    make_tls_pki(&pki);
    let p = |f: &str| pki.join(f).to_string_lossy().into_owned();
    let t = Target::start_with(
        &tmp.path().join("b"),
        &[
            "--grpc-tls-cert",
            &p("server-cert.pem"),
            "--grpc-tls-key",
            &p("server-key.pem"),
            "--grpc-tls-client-ca",
            &p("ca-cert.pem"),
        ],
        "https",
    );
    let a = source(&tmp.path().join("a"), &[]);
    bulk(&a, 0x51, 0, 8);
    cli_ok(&a, &["snapshot", "create", "default", "s0"]);
    let set = |cert: &str, key: &str| {
        json(
            &a,
            &[
                "mirror",
                "set",
                "default",
                "--to",
                &t.endpoint(),
                "--target-volume",
                "replica",
                "--tls-ca",
                &p("ca-cert.pem"),
                "--tls-cert",
                &p(cert),
                "--tls-key",
                &p(key),
            ],
        )
    };
    // A client certificate of another CA: the target refuses the handshake, the mirror retries.
    set("other-ca/client-cert.pem", "other-ca/client-key.pem");
    let s = wait_mirror(&a, "refused", 30, |s| {
        s["state"] == "retrying" && s["consecutiveFailures"].as_u64() >= Some(2)
    });
    assert!(
        s["lastError"]
            .as_str()
            .unwrap()
            .contains("client certificate"),
        "{s}"
    );
    assert!(failures(&a, "connect") >= 2.0);
    // A plaintext endpoint with TLS files is refused at once, naming the problem.
    let plain = t.endpoint().replace("https://", "http://");
    let out = cli(
        &a,
        &[
            "mirror",
            "set",
            "default",
            "--to",
            &plain,
            "--target-volume",
            "replica",
            "--tls-ca",
            &p("ca-cert.pem"),
        ],
    );
    assert!(!out.status.success());
    assert!(describe(&out).contains("not https"), "{}", describe(&out));
    // The right client certificate: in sync, byte for byte.
    let shown = set("client-cert.pem", "client-key.pem");
    assert_eq!(shown["target"]["tlsCaFile"], p("ca-cert.pem"));
    wait_in_sync(&a, "s0", 60);
    assert_identical(&a, &t, "s0", tmp.path());
}

/// The same snapshots mirrored uncompressed to one target volume and zstd-compressed to
/// another: byte-identical replicas, and the compressed stream far smaller on compressible
/// data. The settings survive a restart; a bandwidth limit slows an incremental to it.
#[test]
fn a_compressed_mirror_sends_fewer_bytes_for_the_same_replica() {
    require_tools!("qemu-io", "nbdcopy", "sha256sum", "curl");
    let tmp = tempfile::tempdir().unwrap();
    let mut a = source(&tmp.path().join("a"), &[]);
    let t = Target::start(&tmp.path().join("b"));
    let mut rng = StdRng::seed_from_u64(21);
    bulk(&a, 0x5a, 0, 32);
    scribble(&a, &mut rng, 40);
    cli_ok(&a, &["snapshot", "create", "default", "s0"]);

    let plain = mirror_set(&a, &t, "plain", &[]);
    assert_eq!(plain["target"]["compression"], "none", "{plain}");
    wait_in_sync(&a, "s0", 120);
    let plain_bytes = sent_to(&a, &t, "plain");
    // Another target volume: a second mirror, which starts from nothing, a full stream.
    let packed = mirror_set(&a, &t, "packed", &["--compress", "zstd"]);
    assert_eq!(packed["target"]["compression"], "zstd:3", "{packed}");
    wait_in_sync(&a, "s0", 120);
    assert_eq!(
        sent_to(&a, &t, "plain"),
        plain_bytes,
        "plain was sent again"
    );
    let packed_bytes = sent_to(&a, &t, "packed");
    println!("full stream of s0: {plain_bytes} bytes uncompressed, {packed_bytes} with zstd:3");
    assert!(
        packed_bytes > 0.0 && packed_bytes * 4.0 < plain_bytes,
        "zstd sent {packed_bytes} bytes, uncompressed {plain_bytes}"
    );
    let want = sha(&a, "default@s0", tmp.path());
    assert_eq!(sha(t.agent(), "plain@s0", tmp.path()), want);
    assert_eq!(sha(t.agent(), "packed@s0", tmp.path()), want);

    // The settings are kept on disk: a restarted source still compresses, at level 9.
    mirror_set(&a, &t, "packed", &["--compress", "zstd:9"]);
    let dir = a.data_dir.clone();
    a.stop_and_verify();
    a = source(&dir, &[]);
    let shown = cli_ok(&a, &["volume", "show", "default"]);
    assert!(shown.contains("packed, last s0, lag 0s, zstd:9"), "{shown}");
    bulk(&a, 0x33, 40, 16);
    cli_ok(&a, &["snapshot", "create", "default", "s1"]);
    wait_in_sync(&a, "s1", 120);
    let packed_incremental = sent_to(&a, &t, "packed");
    assert!(
        packed_incremental < (1 << 20) as f64,
        "{packed_incremental}"
    );

    // Uncompressed under a limit, keeping what was replicated (same target): the next
    // incremental of about 16 MiB takes at least what the limit allows.
    let limit = 4u64 << 20;
    let set = mirror_set(
        &a,
        &t,
        "packed",
        &["--compress", "none", "--bandwidth-limit", "4MiB/s"],
    );
    assert_eq!(set["status"]["lastReplicatedSnapshot"], "s1", "{set}");
    assert_eq!(set["target"]["bandwidthLimitBytesPerSec"], limit, "{set}");
    bulk(&a, 0x44, 64, 16);
    let before = sent_to(&a, &t, "packed");
    let started = Instant::now();
    cli_ok(&a, &["snapshot", "create", "default", "s2"]);
    wait_in_sync(&a, "s2", 120);
    let took = started.elapsed().as_secs_f64();
    let sent = sent_to(&a, &t, "packed") - before;
    println!("limited incremental: {sent} bytes in {took:.2} s (limit {limit} B/s)");
    assert!(sent > (15 << 20) as f64, "{sent}");
    assert!(
        took >= 0.8 * sent / limit as f64,
        "{sent} bytes in {took} s"
    );
    for snap in ["s1", "s2"] {
        assert_eq!(
            sha(t.agent(), &format!("packed@{snap}"), tmp.path()),
            sha(&a, &format!("default@{snap}"), tmp.path())
        );
    }
    a.stop_and_verify();
}

/// A transfer cut by a target crash whose snapshot is then deleted here: nobody can continue
/// the target's apply of it. The mirror used to answer `busy` for ever; it now aborts that
/// apply and sends the newest snapshot.
#[test]
fn an_apply_of_a_snapshot_deleted_here_is_abandoned_not_waited_for() {
    require_tools!("qemu-io", "nbdcopy", "sha256sum", "curl");
    let tmp = tempfile::tempdir().unwrap();
    let a = source(&tmp.path().join("a"), &[]);
    let mut t = Target::start(&tmp.path().join("b"));
    bulk(&a, 0x11, 0, 1);
    cli_ok(&a, &["snapshot", "create", "default", "s0"]);
    // Slow enough that the target is surely killed while it applies s1.
    mirror_set(&a, &t, "replica", &["--bandwidth-limit", "2MiB/s"]);
    wait_in_sync(&a, "s0", 60);
    bulk(&a, 0x22, 8, 24);
    cli_ok(&a, &["snapshot", "create", "default", "s1"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = json(t.agent(), &["delta", "status", "replica"]);
        if s["inProgress"] == true && s["snapshotName"] == "s1" {
            break;
        }
        assert!(Instant::now() < deadline, "the target never began s1: {s}");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    t.kill9();
    cli_ok(&a, &["snapshot", "delete", "default", "s1"]);
    t.restart();
    let kept = json(t.agent(), &["delta", "status", "replica"]);
    assert_eq!(kept["snapshotName"], "s1", "the cut apply is kept: {kept}");
    // Without the limit from here on (the same target: what was replicated is kept).
    mirror_set(&a, &t, "replica", &[]);
    bulk(&a, 0x33, 40, 2);
    cli_ok(&a, &["snapshot", "create", "default", "s2"]);
    wait_in_sync(&a, "s2", 60);
    let after = json(t.agent(), &["delta", "status", "replica"]);
    assert_eq!(after["inProgress"], false, "{after}");
    assert_identical(&a, &t, "s2", tmp.path());
    let snaps = json(t.agent(), &["snapshot", "list", "replica"]);
    assert!(!snaps.to_string().contains("\"s1\""), "{snaps}");
    a.stop_and_verify();
    t.agent.take().unwrap().stop_and_verify();
}

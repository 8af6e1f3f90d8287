//! One source volume mirrored to two target agents at once (docs/MIRROR.md, "Several
//! mirrors"): a near one, uncompressed and unlimited, and a far one with zstd and a bandwidth
//! limit. Through a run of writes and snapshots the far target is killed (-9) while it
//! receives, and the near one keeps in sync meanwhile; both replicas read byte-identical to
//! the source's snapshots (nbdcopy + sha256sum). A snapshot policy on the source prunes what
//! neither mirror needs and keeps the lagging mirror's base; clearing one mirror leaves the
//! other working.

use common::mirror::*;
use common::*;
use multisnap_tests::{self as common, require_tools};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};

/// The far mirror's limit: a 40 MiB incremental of random data takes about 2.5 s, long enough
/// for the kill to land inside it.
const FAR_LIMIT: &str = "16MiB/s";

/// `mib` MiB of random data (incompressible: zstd does not shorten the far transfer) at
/// `at_mib`.
fn random_write(a: &Agent, rng: &mut StdRng, tmp: &Path, at_mib: u64, mib: u64) {
    let file = tmp.join("random.bin");
    let mut data = vec![0u8; (mib << 20) as usize];
    rng.fill_bytes(&mut data);
    std::fs::write(&file, &data).unwrap();
    let cmd = format!("write -s {} {} {}", file.display(), at_mib << 20, mib << 20);
    qemu_io(&a.uri("default"), &[&cmd]);
    std::fs::remove_file(&file).unwrap();
}

fn both_identical(a: &Agent, near: &Target, far: &Target, snap: &str, tmp: &Path) {
    assert_replica(a, near, "replica", snap, tmp);
    assert_replica(a, far, "replica", snap, tmp);
}

/// Waits until the mirror to `t` satisfies `done`; its status.
fn wait_one(a: &Agent, t: &Target, what: &str, secs: u64, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let s = mirror_status(a, t, "replica");
        if done(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "{what}: {s}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn in_sync_at(snap: &str) -> impl Fn(&Value) -> bool + '_ {
    move |s| s["state"] == "in-sync" && s["lastReplicatedSnapshot"] == snap
}

fn sent_to(a: &Agent, t: &Target) -> f64 {
    mirror_metric(
        a,
        "multisnap_mirror_sent_bytes_total",
        &[&t.label("replica")],
    )
}

fn failed(a: &Agent, t: &Target, reason: &str) -> f64 {
    let reason = format!("reason=\"{reason}\"");
    mirror_metric(
        a,
        "multisnap_mirror_failures_total",
        &[&t.label("replica"), &reason],
    )
}

#[test]
fn one_source_two_targets_one_killed_while_the_other_keeps_in_sync() {
    require_tools!("qemu-io", "nbdcopy", "sha256sum", "curl");
    let tmp = tempfile::tempdir().unwrap();
    let (a, clock) = source_on_clock(tmp.path());
    let near = Target::start_roomy(&tmp.path().join("near"));
    let mut far = Target::start_roomy(&tmp.path().join("far"));
    let mut rng = StdRng::seed_from_u64(25);

    // Both mirrors set, a full first sync to each.
    random_write(&a, &mut rng, tmp.path(), 0, 32);
    bulk(&a, 0x5a, 32, 32);
    cli_ok(&a, &["snapshot", "create", "default", "s0"]);
    let started = Instant::now();
    let n = mirror_set(&a, &near, "replica", &[]);
    assert_eq!(n["target"]["compression"], "none", "{n}");
    let f = mirror_set(
        &a,
        &far,
        "replica",
        &["--compress", "zstd", "--bandwidth-limit", FAR_LIMIT],
    );
    assert_eq!(f["target"]["compression"], "zstd:3", "{f}");
    let near_first = wait_one(&a, &near, "near never in sync at s0", 120, in_sync_at("s0"));
    let near_took = started.elapsed();
    wait_in_sync(&a, "s0", 120);
    let both_took = started.elapsed();
    println!(
        "first full sync: near {} bytes in {near_took:.2?}, far (zstd, {FAR_LIMIT}) {} bytes, both in {both_took:.2?}",
        sent_to(&a, &near),
        sent_to(&a, &far)
    );
    assert_eq!(near_first["lastReplicatedSnapshot"], "s0");
    assert!(sent_to(&a, &far) < sent_to(&a, &near), "zstd sent no less");
    both_identical(&a, &near, &far, "s0", tmp.path());

    // Both are shown; a request that names no mirror is refused with the list.
    let shown = cli_ok(&a, &["volume", "show", "default"]);
    assert!(
        shown.contains(&format!("in-sync to {} replica, last s0", near.endpoint()))
            && shown.contains(&format!(
                "in-sync to {} replica, last s0, lag 0s, zstd:3, at most 16 MiB/s",
                far.endpoint()
            )),
        "{shown}"
    );
    let listed = json(&a, &["mirror", "show", "default"]);
    assert_eq!(listed["mirrors"].as_array().unwrap().len(), 2, "{listed}");
    let refused = cli(&a, &["mirror", "clear", "default"]);
    assert_eq!(refused.status.code(), Some(5), "{}", describe(&refused));
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(
        why.contains("2 mirrors")
            && why.contains(&near.endpoint())
            && why.contains(&far.endpoint()),
        "{why}"
    );

    // Incrementals: the far target is killed while it receives each one; the near one gets
    // each snapshot all the same, while the far one is down.
    let mut near_while_far_down = Vec::new();
    let mut far_after_restart = Vec::new();
    let mut cut = 0;
    for round in 1..=3u64 {
        random_write(&a, &mut rng, tmp.path(), 8 * round, 40);
        let snap = format!("s{round}");
        cli_ok(&a, &["snapshot", "create", "default", &snap]);
        let taken = Instant::now();
        let s = wait_one(&a, &far, &format!("far never sent {snap}"), 30, |s| {
            s["syncingSnapshot"] == snap.as_str() || s["lastReplicatedSnapshot"] == snap.as_str()
        });
        std::thread::sleep(Duration::from_millis(300));
        let cut_now = s["lastReplicatedSnapshot"] != snap.as_str();
        cut += usize::from(cut_now);
        far.kill9();
        wait_one(
            &a,
            &near,
            &format!("near never in sync at {snap}"),
            60,
            in_sync_at(&snap),
        );
        near_while_far_down.push(taken.elapsed());
        // A cut far mirror is behind meanwhile, and retries; the near one is not held up.
        if cut_now {
            wait_one(&a, &far, "far never retrying", 30, |s| {
                s["state"] == "retrying"
            });
        }
        assert_replica(&a, &near, "replica", &snap, tmp.path());
        far.restart();
        let back = Instant::now();
        wait_one(
            &a,
            &far,
            &format!("far never in sync at {snap}"),
            120,
            in_sync_at(&snap),
        );
        far_after_restart.push(back.elapsed());
        assert_replica(&a, &far, "replica", &snap, tmp.path());
        cli_ok(
            &a,
            &["snapshot", "delete", "default", &format!("s{}", round - 1)],
        );
    }
    println!(
        "far kills inside a transfer: {cut} of 3; near in sync after each snapshot (far down) in {near_while_far_down:.2?}; far in sync after its restart in {far_after_restart:.2?}"
    );
    assert!(cut >= 2, "too few kills hit the far transfer");
    assert!(failed(&a, &far, "connect") + failed(&a, &far, "transfer") >= 3.0);
    assert_eq!(
        failed(&a, &near, "connect") + failed(&a, &near, "transfer"),
        0.0
    );

    // A policy keeping one hourly snapshot, with the far target gone: each snapshot the near
    // mirror has moved past is pruned, the far mirror's base is held.
    hourly_policy(&a, 1);
    let p1 = wait_policy_newest(&a, "");
    wait_in_sync(&a, &p1, 60);
    far.kill9();
    bulk(&a, 0x22, 2, 8);
    set_clock(&clock, START + HOUR);
    let p2 = wait_policy_newest(&a, &p1);
    wait_one(&a, &near, "near never at p2", 60, in_sync_at(&p2));
    bulk(&a, 0x33, 4, 8);
    set_clock(&clock, START + 2 * HOUR);
    let p3 = wait_policy_newest(&a, &p2);
    wait_one(&a, &near, "near never at p3", 60, in_sync_at(&p3));
    let deadline = Instant::now() + Duration::from_secs(30);
    while ready_snapshots(&a, "default").contains(&p2) {
        assert!(Instant::now() < deadline, "{p2} was never pruned");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut want = vec!["s3".to_string(), p1.clone(), p3.clone()];
    want.sort();
    assert_eq!(ready_snapshots(&a, "default"), want, "only {p2} goes");
    let held = json(&a, &["policy", "show", "default"])["status"]["held"].to_string();
    assert!(
        held.contains(&p1)
            && held.contains(&format!(
                "the mirror to {} replica (its base)",
                far.endpoint()
            )),
        "{held}"
    );
    far.restart();
    wait_one(&a, &far, "far never at p3", 120, in_sync_at(&p3));
    both_identical(&a, &near, &far, &p3, tmp.path());
    set_clock(&clock, START + 2 * HOUR + 60);
    let deadline = Instant::now() + Duration::from_secs(30);
    while ready_snapshots(&a, "default").contains(&p1) {
        assert!(Instant::now() < deadline, "{p1} was not pruned once let go");
        std::thread::sleep(Duration::from_millis(50));
    }

    // The near mirror cleared: the far one goes on alone; nothing more goes to the near.
    let out = cli_ok(
        &a,
        &[
            "mirror",
            "clear",
            "default",
            "--to",
            &near.endpoint(),
            "--target-volume",
            "replica",
        ],
    );
    assert!(
        out.contains(&format!(
            "cleared the mirror of default to {} replica",
            near.endpoint()
        )),
        "{out}"
    );
    let near_sent = sent_to(&a, &near);
    random_write(&a, &mut rng, tmp.path(), 64, 4);
    cli_ok(&a, &["snapshot", "create", "default", "s4"]);
    let s = wait_in_sync(&a, "s4", 60);
    assert_eq!(s["lastReplicatedSnapshot"], "s4");
    assert_replica(&a, &far, "replica", "s4", tmp.path());
    assert_eq!(sent_to(&a, &near), near_sent, "the cleared mirror sent");
    assert!(!ready_snapshots(near.agent(), "replica").contains(&"s4".to_string()));
    let listed = json(&a, &["mirror", "show", "default"]);
    assert_eq!(listed["mirrors"].as_array().unwrap().len(), 1, "{listed}");
    // A single mirror again: an older client's request without the target works.
    let old = json(&a, &["volume", "show", "default"]);
    assert_eq!(old["mirror"]["target"]["endpoint"], far.endpoint(), "{old}");
    a.stop_and_verify();
    far.agent.take().unwrap().stop_and_verify();
}

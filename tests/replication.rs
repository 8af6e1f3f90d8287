//! Replication between two real agents on loopback, driven by the `multisnap` CLI and checked
//! with nbdcopy + sha256sum: a full then five incremental replications recreate every snapshot
//! bit for bit; a stream with one byte flipped is refused with a checksum error and leaves
//! nothing; an agent killed (-9) mid-apply comes back with no partial snapshot, and the apply
//! is resumed (resumable) or its space returned (not resumable). `stream_cost` covers the
//! export options: zstd-compressed streams and the bandwidth limit.

#[path = "replication/stream_cost.rs"]
mod stream_cost;

use common::*;
use multisnap_tests::{self as common, require_tools};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const VOLUME_BYTES: u64 = 64 << 20;

fn node(dir: &Path) -> Agent {
    let a = Agent::start(dir, &["--default-volume-size", &VOLUME_BYTES.to_string()]);
    a.wait_grpc();
    a
}

fn endpoint(a: &Agent) -> String {
    format!("http://{}", a.grpc)
}

fn ms(bin: &Path, a: &Agent, args: &[&str]) -> Output {
    Command::new(bin)
        .arg("--endpoint")
        .arg(endpoint(a))
        .args(args)
        .env_remove("MULTISNAP_ENDPOINT")
        .output()
        .expect("cannot run multisnap")
}

fn ms_ok(bin: &Path, a: &Agent, args: &[&str]) -> String {
    let out = ms(bin, a, args);
    assert!(
        out.status.success(),
        "multisnap {args:?}: {}",
        describe(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ms_json(bin: &Path, a: &Agent, args: &[&str]) -> Value {
    let mut all = vec!["--output", "json"];
    all.extend_from_slice(args);
    let out = ms_ok(bin, a, &all);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {out}"))
}

/// `multisnap delta export default --target SNAP -f FILE` (a full stream); the stream's bytes.
fn export_full(bin: &Path, a: &Agent, snap: &str, file: &Path) -> Vec<u8> {
    ms_ok(
        bin,
        a,
        &[
            "delta",
            "export",
            "default",
            "--target",
            snap,
            "-f",
            file.to_str().unwrap(),
        ],
    );
    std::fs::read(file).unwrap()
}

/// `multisnap replicate default --to B --to-volume replica` on `a`: the JSON summary.
fn replicate(bin: &Path, a: &Agent, b: &Agent) -> Value {
    replicate_to(bin, a, b, "replica", &[])
}

/// `multisnap replicate default --to B --to-volume VOLUME EXTRA…` on `a`: the JSON summary.
fn replicate_to(bin: &Path, a: &Agent, b: &Agent, volume: &str, extra: &[&str]) -> Value {
    let to = endpoint(b);
    let mut args = vec!["replicate", "default", "--to", &to, "--to-volume", volume];
    args.extend_from_slice(extra);
    ms_json(bin, a, &args)
}

/// sha256 of a whole export, copied out by nbdcopy.
fn sha(a: &Agent, export: &str, tmp: &Path) -> String {
    let file = tmp.join(format!("copy-{}.img", export.replace('@', "_")));
    run_ok(
        "nbdcopy",
        &[
            &a.uri(export),
            file.to_str().unwrap(),
            "--destination-is-zero",
        ],
    );
    let sum = run_ok("sha256sum", &[file.to_str().unwrap()]);
    let _ = std::fs::remove_file(&file);
    sum.split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
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

#[test]
fn full_then_five_incrementals_recreate_every_snapshot() {
    require_tools!("qemu-io", "nbdcopy", "sha256sum", "curl");
    let bin = cli_bin();
    let tmp = tempfile::tempdir().unwrap();
    let a = node(&tmp.path().join("a"));
    let b = node(&tmp.path().join("b"));
    let mut rng = StdRng::seed_from_u64(7);
    scribble(&a, &mut rng, 60);
    let mut names = Vec::new();
    for round in 0..=5 {
        if round > 0 {
            scribble(&a, &mut rng, 10);
        }
        let name = format!("s{round}");
        ms_ok(&bin, &a, &["snapshot", "create", "default", &name]);
        let started = Instant::now();
        let r = replicate(&bin, &a, &b);
        let took = started.elapsed();
        let bytes = r["streamBytes"].as_u64().unwrap();
        let mode = r["mode"].as_str().unwrap().to_string();
        println!(
            "replicate {name}: {mode}, {bytes} stream bytes in {took:?} ({:.1} MiB/s)",
            bytes as f64 / (1 << 20) as f64 / took.as_secs_f64()
        );
        if round == 0 {
            assert_eq!(mode, "full");
        } else {
            assert_eq!(mode, format!("incremental since s{}", round - 1));
        }
        names.push(name.clone());
        assert_eq!(
            sha(&a, &format!("default@{name}"), tmp.path()),
            sha(&b, &format!("replica@{name}"), tmp.path()),
            "replica of {name} differs"
        );
    }
    // Older replicated snapshots are untouched by later applies; the replica's origin is the
    // newest snapshot; the replica knows its source.
    for name in &names[..names.len() - 1] {
        assert_eq!(
            sha(&a, &format!("default@{name}"), tmp.path()),
            sha(&b, &format!("replica@{name}"), tmp.path())
        );
    }
    assert_eq!(
        sha(&a, "default@s5", tmp.path()),
        sha(&b, "replica", tmp.path())
    );
    let src = ms_json(&bin, &a, &["volume", "show", "default"]);
    let dst = ms_json(&bin, &b, &["volume", "show", "replica"]);
    assert_eq!(dst["replicaOf"], src["uuid"]);
    // Nothing new: nothing sent.
    let again = replicate(&bin, &a, &b);
    assert_eq!(again["mode"], "already there");
    // Both sides count the traffic.
    let scrape = |agent: &Agent| {
        run_ok(
            "curl",
            &["-sf", &format!("http://{}/metrics", agent.metrics)],
        )
    };
    let metric = |text: &str, name: &str| -> u64 {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("{name} not in the scrape")) as u64
    };
    let bm = scrape(&b);
    assert_eq!(
        metric(
            &bm,
            "multisnap_delta_applies_completed_total{volume=\"replica\"}"
        ),
        6
    );
    assert!(
        metric(
            &bm,
            "multisnap_delta_applied_bytes_total{volume=\"replica\"}"
        ) > 0
    );
    assert_eq!(
        metric(&bm, "multisnap_delta_apply_in_progress{volume=\"replica\"}"),
        0
    );
    let am = scrape(&a);
    assert!(
        metric(
            &am,
            "multisnap_delta_exported_bytes_total{volume=\"default\"}"
        ) > 0
    );
    a.stop_and_verify();
    b.stop_and_verify();
}

#[test]
fn a_flipped_byte_is_refused_and_leaves_nothing() {
    require_tools!("qemu-io", "nbdcopy", "sha256sum");
    let bin = cli_bin();
    let tmp = tempfile::tempdir().unwrap();
    let a = node(&tmp.path().join("a"));
    let mut rng = StdRng::seed_from_u64(8);
    scribble(&a, &mut rng, 40);
    ms_ok(&bin, &a, &["snapshot", "create", "default", "s0"]);
    let stream = export_full(&bin, &a, "s0", &tmp.path().join("s0.delta"));
    assert!(stream.len() > 1 << 20, "stream of {} bytes", stream.len());
    let b = node(&tmp.path().join("b"));
    let size = VOLUME_BYTES.to_string();
    // A header byte, payload bytes of records, the trailer.
    let mut spots = vec![20, stream.len() / 3, stream.len() / 2, stream.len() - 3];
    for _ in 0..4 {
        spots.push(rng.gen_range(100..stream.len()));
    }
    for (i, at) in spots.iter().enumerate() {
        let vol = format!("r{i}");
        ms_ok(&bin, &b, &["volume", "create", &vol, "--size", &size]);
        let mut bad = stream.clone();
        bad[*at] ^= 0x10;
        let bad_file = tmp.path().join(format!("bad{i}.delta"));
        std::fs::write(&bad_file, &bad).unwrap();
        let out = ms(
            &bin,
            &b,
            &["delta", "apply", &vol, "-f", bad_file.to_str().unwrap()],
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "flip at {at} accepted: {}",
            describe(&out)
        );
        assert!(
            err.contains("checksum") || err.contains("digest"),
            "flip at {at}: {err}"
        );
        if *at == stream.len() / 2 {
            assert!(
                err.contains("record "),
                "a record flip names the record: {err}"
            );
        }
        let snaps = ms_json(&bin, &b, &["snapshot", "list", &vol]);
        assert_eq!(
            snaps["snapshots"].as_array().map(Vec::len),
            Some(0),
            "{snaps}"
        );
        let st = ms_json(&bin, &b, &["delta", "status", &vol]);
        assert_eq!(st["inProgress"], false);
    }
    // The intact stream applies, from stdin too.
    ms_ok(&bin, &b, &["volume", "create", "good", "--size", &size]);
    let mut apply = Command::new(&bin)
        .args(["--endpoint", &endpoint(&b), "delta", "apply", "good"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    apply.stdin.take().unwrap().write_all(&stream).unwrap();
    let out = apply.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(
        sha(&a, "default@s0", tmp.path()),
        sha(&b, "good@s0", tmp.path())
    );
    a.stop_and_verify();
    b.stop_and_verify();
}

fn volume(bin: &Path, a: &Agent, name: &str) -> Value {
    ms_json(bin, a, &["volume", "show", name])
}

#[test]
fn agent_killed_mid_apply_leaves_no_snapshot_then_resumes_or_frees() {
    require_tools!("qemu-io", "nbdcopy", "sha256sum");
    let bin = cli_bin();
    let tmp = tempfile::tempdir().unwrap();
    let a = node(&tmp.path().join("a"));
    // 40 MiB of data in 4 MiB stripes of different patterns.
    let cmds: Vec<String> = (0..10)
        .map(|i| format!("write -P {} {} 4M", i + 1, i * (4 << 20)))
        .collect();
    let refs: Vec<&str> = cmds.iter().map(String::as_str).collect();
    qemu_io(&a.uri("default"), &refs);
    ms_ok(&bin, &a, &["snapshot", "create", "default", "s0"]);
    let stream = export_full(&bin, &a, "s0", &tmp.path().join("s0.delta"));
    let want = sha(&a, "default@s0", tmp.path());
    for resumable in [true, false] {
        let dir = tmp.path().join(format!("b-{resumable}"));
        let b = node(&dir);
        ms_ok(
            &bin,
            &b,
            &["volume", "create", "r", "--size", &VOLUME_BYTES.to_string()],
        );
        let used_before = volume(&bin, &b, "r")["storeUsedBytes"].as_u64().unwrap();
        let mut args = vec!["--endpoint".to_string(), endpoint(&b)];
        args.extend(["delta", "apply", "r"].map(String::from));
        if resumable {
            args.push("--resumable".into());
        }
        let mut apply = Command::new(&bin)
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut stdin = apply.stdin.take().unwrap();
        let part = stream.len() * 6 / 10;
        stdin.write_all(&stream[..part]).unwrap();
        stdin.flush().unwrap();
        // The apply checkpoints every 2 s: let one pass, then send a little more.
        std::thread::sleep(Duration::from_millis(2500));
        stdin.write_all(&stream[part..part + (3 << 20)]).unwrap();
        stdin.flush().unwrap();
        std::thread::sleep(Duration::from_millis(1000));
        b.kill9();
        drop(stdin);
        let _ = apply.wait();

        let b = node(&dir);
        let snaps = ms_json(&bin, &b, &["snapshot", "list", "r"]);
        assert_eq!(
            snaps["snapshots"].as_array().map(Vec::len),
            Some(0),
            "no partial snapshot after kill -9: {snaps}"
        );
        let st = ms_json(&bin, &b, &["delta", "status", "r"]);
        if resumable {
            assert_eq!(st["inProgress"], true, "{st}");
            assert!(st["stagedChunks"].as_u64().unwrap() > 0, "{st}");
            let token = st["resumeToken"].as_str().unwrap().to_string();
            let rest = tmp.path().join("rest.delta");
            ms_ok(
                &bin,
                &a,
                &[
                    "delta",
                    "export",
                    "default",
                    "--target",
                    "s0",
                    "--resume-token",
                    &token,
                    "-f",
                    rest.to_str().unwrap(),
                ],
            );
            let rest_len = std::fs::metadata(&rest).unwrap().len();
            assert!(
                rest_len < stream.len() as u64 / 2,
                "resume resent {rest_len} of {} bytes",
                stream.len()
            );
            ms_ok(
                &bin,
                &b,
                &[
                    "delta",
                    "apply",
                    "r",
                    "--resume",
                    "-f",
                    rest.to_str().unwrap(),
                ],
            );
            assert_eq!(sha(&b, "r@s0", tmp.path()), want);
            println!(
                "resumed after kill -9: sent {rest_len} of {} stream bytes again",
                stream.len()
            );
        } else {
            assert_eq!(st["inProgress"], false, "{st}");
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let v = volume(&bin, &b, "r");
                if v["reclaimPending"] == 0 && v["storeUsedBytes"].as_u64() == Some(used_before) {
                    break;
                }
                assert!(Instant::now() < deadline, "space not returned: {v}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        b.stop_and_verify();
    }
    a.stop_and_verify();
}

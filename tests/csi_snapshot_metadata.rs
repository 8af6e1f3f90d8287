//! Changed block tracking against the NBD truth: CSI SnapshotMetadata (GetMetadataDelta,
//! GetMetadataAllocated) on the driver's socket, called with grpcio (tests/grpc/grpcurl.py,
//! by reflection), and the agent's block maps through `multisnap snapshot diff` / `map`:
//! - the delta between two snapshots is exactly the chunks where the two snapshots' NBD exports
//!   (copied whole with nbdcopy) differ, compared chunk by chunk, whatever the origin does
//!   after the target;
//! - a snapshot's allocated ranges are exactly the data extents `nbdinfo --map` reports;
//! - max_results bounds every message, and a call continued from any starting offset gives the
//!   rest of the same ranges;
//! - bad requests get the codes the CSI spec's tables give.

use common::*;
use multisnap_tests::{self as common, require_grpcio, require_tools};
use serde_json::Value;
use std::path::Path;

const NODE: &str = CSI_NODE;
const MIB: u64 = 1 << 20;
const VOLUME: u64 = 64 * MIB;

/// The status code name a failing call gets; it must say why.
fn code(d: &CsiDriver, method: &str, body: &str) -> String {
    match d.call(method, body) {
        Ok(v) => panic!("{method} {body}: expected an error, got {v}"),
        Err((code, msg)) => {
            assert!(!msg.is_empty(), "{code} without a message");
            code
        }
    }
}

type Ranges = Vec<(u64, u64)>;

/// proto3 JSON writes int64 as a string and leaves zero values out.
fn int(v: &Value) -> u64 {
    match v {
        Value::String(s) => s.parse().unwrap(),
        Value::Number(n) => n.as_u64().unwrap(),
        Value::Null => 0,
        other => panic!("not an integer: {other}"),
    }
}

/// The streamed responses of a SnapshotMetadata call: (ranges, capacity, largest message).
fn collect(messages: &Value) -> (Ranges, u64, usize) {
    let mut ranges = Vec::new();
    let mut capacity = None;
    let mut largest = 0;
    for m in messages.as_array().expect("a stream") {
        assert_eq!(m["block_metadata_type"], "VARIABLE_LENGTH", "{m}");
        let cap = int(&m["volume_capacity_bytes"]);
        assert_eq!(
            *capacity.get_or_insert(cap),
            cap,
            "capacity changed mid-stream"
        );
        let list = m["block_metadata"].as_array().cloned().unwrap_or_default();
        largest = largest.max(list.len());
        for b in list {
            ranges.push((int(&b["byte_offset"]), int(&b["size_bytes"])));
        }
    }
    assert!(capacity.is_some(), "an empty stream: {messages}");
    (ranges, capacity.unwrap(), largest)
}

/// Adjacent or overlapping ranges merged, as both sides are compared.
fn merged(mut r: Ranges) -> Ranges {
    r.sort();
    let mut out: Ranges = Vec::new();
    for (o, l) in r {
        match out.last_mut() {
            Some((po, pl)) if *po + *pl >= o => *pl = (*pl).max(o + l - *po),
            _ => out.push((o, l)),
        }
    }
    out
}

/// The ranges must be in order, non-empty and not overlapping, as the spec requires.
fn assert_well_formed(r: &Ranges) {
    for w in r.windows(2) {
        assert!(w[0].0 + w[0].1 <= w[1].0, "overlap or disorder: {w:?}");
    }
    assert!(r.iter().all(|&(_, l)| l > 0), "{r:?}");
}

/// The chunks where two images differ, as ranges.
fn differing_chunks(a: &[u8], b: &[u8], chunk: u64) -> Ranges {
    assert_eq!(a.len(), b.len());
    let mut out = Vec::new();
    for (i, (x, y)) in a
        .chunks(chunk as usize)
        .zip(b.chunks(chunk as usize))
        .enumerate()
    {
        if x != y {
            out.push((i as u64 * chunk, x.len() as u64));
        }
    }
    merged(out)
}

/// The data extents of `nbdinfo --map` (base:allocation: type 0 is data).
fn nbd_data_extents(uri: &str) -> Ranges {
    let map = run_ok("nbdinfo", &["--map", uri]);
    let mut out = Vec::new();
    for line in map.lines() {
        let f: Vec<u64> = line
            .split_whitespace()
            .take(3)
            .map_while(|x| x.parse().ok())
            .collect();
        assert_eq!(f.len(), 3, "unexpected nbdinfo line: {line:?}");
        if f[2] & 1 == 0 {
            out.push((f[0], f[1]));
        }
    }
    merged(out)
}

fn export_bytes(agent: &Agent, export: &str, dir: &Path) -> Vec<u8> {
    let file = dir.join(export.replace('@', "_"));
    run_ok("nbdcopy", &[&agent.uri(export), file.to_str().unwrap()]);
    std::fs::read(file).unwrap()
}

fn delta_body(base: &str, target: &str, start: i64, max: i32) -> String {
    format!(
        r#"{{"base_snapshot_id":"{base}","target_snapshot_id":"{target}","starting_offset":"{start}","max_results":{max}}}"#
    )
}

fn allocated_body(snap: &str, start: i64, max: i32) -> String {
    format!(r#"{{"snapshot_id":"{snap}","starting_offset":"{start}","max_results":{max}}}"#)
}

const DELTA: &str = "csi.v1.SnapshotMetadata/GetMetadataDelta";
const ALLOCATED: &str = "csi.v1.SnapshotMetadata/GetMetadataAllocated";

fn create_volume(d: &CsiDriver, name: &str) -> String {
    let body = format!(
        r#"{{"name":"{name}","capacity_range":{{"required_bytes":"{VOLUME}"}},
        "volume_capabilities":[{{"block":{{}},"access_mode":{{"mode":"SINGLE_NODE_WRITER"}}}}]}}"#
    );
    d.ok("csi.v1.Controller/CreateVolume", &body)["volume"]["volume_id"]
        .as_str()
        .unwrap()
        .to_string()
}

fn snapshot(d: &CsiDriver, name: &str, volume_id: &str) -> String {
    let body = format!(r#"{{"name":"{name}","source_volume_id":"{volume_id}"}}"#);
    d.ok("csi.v1.Controller/CreateSnapshot", &body)["snapshot"]["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// `node/volume@snapshot` → the NBD export `volume@snapshot`.
fn export_of(id: &str) -> &str {
    id.split_once('/').unwrap().1
}

#[test]
fn snapshot_metadata_matches_the_nbd_exports() {
    require_tools!("qemu-io", "nbdinfo", "nbdcopy");
    require_grpcio!();
    let tmp = tempfile::tempdir().unwrap();
    let agent = Agent::start(&tmp.path().join("data"), &[]);
    let d = CsiDriver::start(tmp.path(), &agent);

    // Advertised, and discoverable by reflection.
    let caps = d.ok("csi.v1.Identity/GetPluginCapabilities", "{}");
    assert!(
        caps.to_string().contains("SNAPSHOT_METADATA_SERVICE"),
        "{caps}"
    );
    let listed = grpcurl().arg(d.addr()).arg("list").output().unwrap();
    assert!(String::from_utf8_lossy(&listed.stdout).contains("csi.v1.SnapshotMetadata"));

    let vol = create_volume(&d, "pvc-cbt");
    let origin = agent.uri(export_of(&vol));
    // A pattern with holes left in it, then snapshot A.
    qemu_io(&origin, &["write -P 0x11 0 8M", "write -P 0x12 20M 3M"]);
    let a = snapshot(&d, "snap-a", &vol);
    // Scattered changes: part of a chunk, a run across chunk edges at odd offsets, data where
    // A had a hole, zeros over data, the last chunk.
    qemu_io(
        &origin,
        &[
            "write -P 0x21 1M 4k",
            "write -P 0x22 5252880 70000",
            "write -P 0x23 30M 1M",
            "write -z 21M 64k",
            "write -P 0x24 67047424 4096",
        ],
    );
    let b = snapshot(&d, "snap-b", &vol);
    // After B: changes nothing in B, nor in the delta A -> B.
    qemu_io(&origin, &["write -P 0x31 2M 64k", "write -P 0x32 40M 128k"]);

    let (delta, capacity, _) = collect(&d.ok(DELTA, &delta_body(&a, &b, 0, 0)));
    assert_eq!(capacity, VOLUME);
    assert_well_formed(&delta);
    let (agent_vol, snap_a) = export_of(&a).split_once('@').unwrap();
    let snap_b = export_of(&b).split_once('@').unwrap().1;
    let diff_json = |base: &str, target: &str| -> Value {
        let args = [
            "--output", "json", "snapshot", "diff", agent_vol, base, target,
        ];
        serde_json::from_str(&cli_ok(&agent, &args)).unwrap()
    };
    let chunk = int(&diff_json(snap_a, snap_b)["chunkSizeBytes"]);
    assert!(chunk >= 4096, "chunk size {chunk}");
    let image_a = export_bytes(&agent, export_of(&a), tmp.path());
    let image_b = export_bytes(&agent, export_of(&b), tmp.path());
    let truth = differing_chunks(&image_a, &image_b, chunk);
    assert_eq!(
        merged(delta.clone()),
        truth,
        "GetMetadataDelta vs the exports"
    );
    assert!(
        truth.len() >= 4,
        "the changes were meant to be scattered: {truth:?}"
    );

    let (allocated, capacity, _) = collect(&d.ok(ALLOCATED, &allocated_body(&b, 0, 0)));
    assert_eq!(capacity, VOLUME);
    assert_well_formed(&allocated);
    assert_eq!(
        merged(allocated.clone()),
        nbd_data_extents(&agent.uri(export_of(&b))),
        "GetMetadataAllocated vs nbdinfo --map"
    );
    // And the allocation covers every byte of B that is not zero.
    for (i, c) in image_b.chunks(4096).enumerate() {
        let at = i as u64 * 4096;
        if c.iter().any(|&x| x != 0) {
            assert!(
                allocated.iter().any(|&(o, l)| o <= at && at < o + l),
                "data at {at} not allocated"
            );
        }
    }

    // Paging: at most max_results per message, same union; continued from any offset, the
    // rest of the same ranges, a range spanning the offset starting there.
    for (method, body, full, max) in [
        (DELTA, delta_body(&a, &b, 0, 2), &delta, 2),
        (ALLOCATED, allocated_body(&b, 0, 1), &allocated, 1),
    ] {
        let (paged, _, largest) = collect(&d.ok(method, &body));
        // Full messages while ranges remain: the limit is reached, never passed.
        assert_eq!(largest, max, "{method}: {largest} per message");
        assert_eq!(&paged, full, "{method} paged");
    }
    for cut in [1usize, 2, delta.len() - 1] {
        let (o, l) = delta[cut];
        for start in [o + l / 2, delta[cut - 1].0 + delta[cut - 1].1] {
            let (rest, _, _) = collect(&d.ok(DELTA, &delta_body(&a, &b, start as i64, 3)));
            let want: Ranges = delta
                .iter()
                .filter(|&&(ro, rl)| ro + rl > start)
                .map(|&(ro, rl)| (ro.max(start), ro + rl - ro.max(start)))
                .collect();
            assert_eq!(rest, want, "continued at {start}");
        }
    }
    let (none, _, _) = collect(&d.ok(DELTA, &delta_body(&a, &b, VOLUME as i64, 0)));
    assert!(none.is_empty(), "{none:?}");

    // The agent's own map through the CLI says the same.
    let cli_ranges = |args: &[&str]| -> Ranges {
        let v: Value = serde_json::from_str(&cli_ok(&agent, args)).unwrap();
        v["ranges"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (int(&r["offset"]), int(&r["length"])))
            .collect()
    };
    assert_eq!(
        cli_ranges(&["--output", "json", "snapshot", "diff", agent_vol, snap_a, snap_b]),
        delta
    );
    assert_eq!(
        cli_ranges(&["--output", "json", "snapshot", "map", agent_vol, snap_b]),
        allocated
    );
    let table = cli_ok(&agent, &["snapshot", "diff", agent_vol, snap_a, snap_b]);
    assert!(
        table.trim_start().starts_with("OFFSET")
            && table.contains(&format!("{} range(s)", delta.len())),
        "{table}"
    );

    // Errors, as the spec's tables say.
    let other_vol = create_volume(&d, "pvc-other");
    let other = snapshot(&d, "snap-other", &other_vol);
    let unknown = format!("{}@csi-{}", vol, "0".repeat(24));
    let elsewhere = a.replacen(NODE, "node-2", 1);
    for (method, body, want) in [
        (DELTA, delta_body("", &b, 0, 0), "INVALID_ARGUMENT"),
        (DELTA, delta_body(&a, "", 0, 0), "INVALID_ARGUMENT"),
        (ALLOCATED, allocated_body("", 0, 0), "INVALID_ARGUMENT"),
        (DELTA, delta_body(&b, &a, 0, 0), "INVALID_ARGUMENT"),
        (DELTA, delta_body(&a, &a, 0, 0), "INVALID_ARGUMENT"),
        (DELTA, delta_body(&other, &b, 0, 0), "INVALID_ARGUMENT"),
        (DELTA, delta_body(&a, &b, 0, -1), "INVALID_ARGUMENT"),
        (DELTA, delta_body(&unknown, &b, 0, 0), "NOT_FOUND"),
        (DELTA, delta_body(&a, "fake-snapshot-id", 0, 0), "NOT_FOUND"),
        (ALLOCATED, allocated_body(&unknown, 0, 0), "NOT_FOUND"),
        (
            DELTA,
            delta_body(&a, &b, VOLUME as i64 + 1, 0),
            "OUT_OF_RANGE",
        ),
        (DELTA, delta_body(&a, &b, -1, 0), "OUT_OF_RANGE"),
        (
            ALLOCATED,
            allocated_body(&b, VOLUME as i64 + 1, 0),
            "OUT_OF_RANGE",
        ),
        (
            ALLOCATED,
            allocated_body(&elsewhere, 0, 0),
            "FAILED_PRECONDITION",
        ),
    ] {
        assert_eq!(code(&d, method, &body), want, "{method} {body}");
    }
    // The agent's API answers the same mistakes with the same codes.
    let agent_code = |method: &str, body: String| -> String {
        grpc_call(&agent.grpc, method, &body).unwrap_err().0
    };
    let agent_changed = |base: &str, target: &str, start: u64| {
        format!(
            r#"{{"volume":"{agent_vol}","base_snapshot":"{base}","target_snapshot":"{target}","starting_offset":"{start}"}}"#
        )
    };
    let changed = "multisnap.v1.DeltaService/GetChangedRanges";
    assert_eq!(
        agent_code(changed, agent_changed(snap_b, snap_a, 0)),
        "INVALID_ARGUMENT"
    );
    assert_eq!(
        agent_code(changed, agent_changed("nope", snap_b, 0)),
        "NOT_FOUND"
    );
    assert_eq!(
        agent_code(changed, agent_changed(snap_a, snap_b, VOLUME + 1)),
        "OUT_OF_RANGE"
    );
    assert_eq!(
        agent_code(
            "multisnap.v1.DeltaService/GetAllocatedRanges",
            format!(r#"{{"volume":"{agent_vol}","snapshot":""}}"#)
        ),
        "INVALID_ARGUMENT"
    );
    drop(d);
    agent.stop_and_verify();
}

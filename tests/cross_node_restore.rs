//! Restore on another node: two agents (nodes `localhost` and `node-b`, two data directories)
//! with a CSI driver each; node A's agent also serves gRPC on TCP loopback. A VolumeSnapshot
//! of a volume on A is restored by B's driver, which pulls it from A's agent into a replica
//! volume and restores from there, answering ABORTED with the progress meanwhile (retried here
//! as the external-provisioner retries). Checked at the data: B's new volume, copied out with
//! nbdcopy, has the sha256 of A's snapshot export.
//! - mutual TLS: a full pull, then an incremental one after 1% changed (B's agent counts the
//!   bytes it received: about the change travels); a pull cut twice, by kill -9 of B's driver
//!   and of A's agent, resumes without resending what arrived;
//! - plaintext through a proxy that flips one byte of the stream: refused with DATA_LOSS,
//!   nothing left on B, and the same restore through a clean path then works;
//! - a snapshot a mirror from A already brought to B is restored from the mirror's volume at
//!   the first call, with nothing pulled; one it never brought is pulled as before.

use common::csi::CsiDriver;
use common::*;
use multisnap_csi::agent::Agent as AgentClient;
use multisnap_csi::csi::controller_client::ControllerClient;
use multisnap_csi::csi::volume_capability::{access_mode, AccessMode, AccessType, BlockVolume};
use multisnap_csi::csi::*;
use multisnap_csi::ids::{ReplicaVolumeName, VolumeId};
use multisnap_proto::v1 as pb;
use multisnap_tests::{self as common, require_tools};
use rand::{RngCore, SeedableRng};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tonic::Code;

const MIB: u64 = 1 << 20;
/// Node A's name: the test PKI's server certificate is for `localhost`, so the peer
/// template `https://{node}:PORT` reaches A's agent under a name its certificate holds.
const NODE_A: &str = "localhost";
const NODE_B: &str = "node-b";

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn block_cap() -> VolumeCapability {
    VolumeCapability {
        access_type: Some(AccessType::Block(BlockVolume {})),
        access_mode: Some(AccessMode {
            mode: access_mode::Mode::SingleNodeWriter as i32,
        }),
    }
}

fn create(
    d: &CsiDriver,
    name: &str,
    bytes: u64,
    snapshot: Option<&str>,
) -> Result<Volume, tonic::Status> {
    let req = common::csi::create_volume_request(name, bytes as i64, block_cap(), snapshot);
    rt().block_on(async {
        ControllerClient::new(d.channel())
            .create_volume(req)
            .await
            .map(|r| r.into_inner().volume.expect("a volume"))
    })
}

fn snapshot(d: &CsiDriver, name: &str, volume_id: &str) -> String {
    rt().block_on(async {
        ControllerClient::new(d.channel())
            .create_snapshot(CreateSnapshotRequest {
                name: name.to_string(),
                source_volume_id: volume_id.to_string(),
                ..Default::default()
            })
            .await
            .expect("CreateSnapshot")
            .into_inner()
            .snapshot
            .expect("a snapshot")
            .snapshot_id
    })
}

fn list_volume_ids(d: &CsiDriver) -> Vec<String> {
    rt().block_on(async {
        ControllerClient::new(d.channel())
            .list_volumes(ListVolumesRequest::default())
            .await
            .expect("ListVolumes")
            .into_inner()
            .entries
            .into_iter()
            .map(|e| e.volume.unwrap().volume_id)
            .collect()
    })
}

/// The answers a restore got before it succeeded: ABORTED (pull running) and UNAVAILABLE
/// (source unreachable, or the pull was cut) are retried, as the external-provisioner does.
#[derive(Default)]
struct Retries {
    aborted: Vec<String>,
    unavailable: Vec<String>,
}

fn restore(
    d: &CsiDriver,
    name: &str,
    snap_id: &str,
    r: &mut Retries,
) -> Result<Volume, tonic::Status> {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        match create(d, name, 0, Some(snap_id)) {
            Err(s) if s.code() == Code::Aborted => r.aborted.push(s.message().to_string()),
            Err(s) if s.code() == Code::Unavailable => r.unavailable.push(s.message().to_string()),
            other => return other,
        }
        assert!(
            Instant::now() < deadline,
            "restore of {snap_id} never finished"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn agent_name(id: &str) -> &str {
    id.split_once('/').unwrap().1
}

/// `bytes` of random data written over the start of `volume` on `agent` (nbdcopy).
fn write_random(agent: &Agent, volume: &str, dir: &Path, offset: u64, bytes: u64, seed: u64) {
    let mut data = vec![0u8; bytes as usize];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut data);
    let f = dir.join(format!("random-{seed}"));
    std::fs::write(&f, &data).unwrap();
    let uri = agent.unix_uri(volume);
    if offset == 0 {
        run_ok("nbdcopy", &[f.to_str().unwrap(), &uri]);
    } else {
        // A slice at an offset: qemu-io writes the file's bytes there.
        let out = qemu_io(
            &uri,
            &[&format!(
                "write -s {} {offset} {bytes}",
                f.to_str().unwrap()
            )],
        );
        assert!(out.contains("wrote"), "{out}");
    }
    std::fs::remove_file(f).unwrap();
}

/// sha256 of an export of `agent`, copied out with nbdcopy over its unix socket.
fn export_sha(agent: &Agent, export: &str, dir: &Path) -> String {
    let to = dir.join("copy.img");
    let _ = std::fs::remove_file(&to);
    run_ok("nbdcopy", &[&agent.unix_uri(export), to.to_str().unwrap()]);
    let sha = sha256(&to);
    std::fs::remove_file(&to).unwrap();
    sha
}

/// Stream bytes B's agent received into `volume` by ApplyDelta since it started.
fn received(agent: &Agent, volume: &str) -> u64 {
    agent.metric(&format!(
        "multisnap_delta_applied_bytes_total{{volume=\"{volume}\"}}"
    )) as u64
}

fn replica_of(snap_id: &str) -> String {
    let vol = snap_id.split_once('@').unwrap().0;
    ReplicaVolumeName::of(&VolumeId::parse(vol).unwrap()).to_string()
}

/// The apply state of `volume` on `agent`; none while the volume does not exist yet.
fn apply_state(agent: &Agent, volume: &str) -> pb::ApplyState {
    let socket = agent.data_dir.join("grpc.sock");
    rt().block_on(async {
        // A lazy channel needs the runtime it will run on.
        AgentClient::new(&socket)
            .deltas()
            .get_apply_state(pb::GetApplyStateRequest {
                volume: volume.to_string(),
            })
            .await
            .map(|r| r.into_inner())
            .or_else(|s| match s.code() {
                Code::NotFound => Ok(pb::ApplyState::default()),
                _ => Err(s),
            })
            .expect("GetApplyState")
    })
}

/// The chunk size of every volume here (the driver's default).
const CHUNK: u64 = 64 << 10;

/// Waits until B's replica has staged (checkpointed) at least `bytes` of the running pull.
fn wait_staged(agent: &Agent, replica: &str, bytes: u64, log: &Path) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let s = apply_state(agent, replica);
        // A full stream into an empty volume is written in place, not into the store:
        // staged chunks, not staged store bytes, say how far it is.
        let staged = s.staged_chunks * CHUNK;
        if s.in_progress && staged >= bytes {
            return staged;
        }
        assert!(
            Instant::now() < deadline,
            "the pull never staged {bytes} bytes ({s:?}); driver log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The driver log lines that report a finished pull.
fn pulled_lines(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("snapshot pulled"))
        .map(str::to_string)
        .collect()
}

fn field(line: &str, key: &str) -> u64 {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.trim_matches('"').parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {line}"))
}

struct NodeB {
    agent: Agent,
    dir: PathBuf,
    log: PathBuf,
}

impl NodeB {
    /// Node B's agent, in `dir/b-data`; its drivers log to `dir/b-driver.log`.
    fn start(dir: &Path) -> NodeB {
        let b = NodeB {
            agent: Agent::start(&dir.join("b-data"), &[]),
            dir: dir.join("b"),
            log: dir.join("b-driver.log"),
        };
        std::fs::create_dir_all(&b.dir).unwrap();
        b
    }

    fn driver(&self, peer_flags: &[String]) -> CsiDriver {
        CsiDriver::start_with(&self.dir, &self.agent, NODE_B, peer_flags, Some(&self.log))
    }
}

#[test]
fn restore_over_mutual_tls_incremental_and_resumed_after_cuts() {
    require_tools!("nbdcopy", "qemu-io", "openssl", "sha256sum", "curl");
    let tmp = tempfile::tempdir().unwrap();
    let pki = tmp.path().join("pki");
    make_tls_pki(&pki);
    let p = |n: &str| pki.join(n).to_string_lossy().into_owned();
    let port = free_port();
    let a_listen = format!("127.0.0.1:{port}");
    let a_args = [
        "--grpc-listen".to_string(),
        a_listen.clone(),
        "--grpc-tls-cert".into(),
        p("server-cert.pem"),
        "--grpc-tls-key".into(),
        p("server-key.pem"),
        "--grpc-tls-client-ca".into(),
        p("ca-cert.pem"),
    ];
    let a_args: Vec<&str> = a_args.iter().map(String::as_str).collect();
    let a_dir = tmp.path().join("a");
    std::fs::create_dir_all(&a_dir).unwrap();
    let agent_a = Agent::start(&a_dir.join("data"), &a_args);
    let driver_a = CsiDriver::start_on(&a_dir, &agent_a, NODE_A);
    let b = NodeB::start(tmp.path());
    let peer = vec![
        format!("--peer-agent-endpoint=https://{{node}}:{port}"),
        format!("--peer-tls-ca={}", p("ca-cert.pem")),
        format!("--peer-tls-cert={}", p("client-cert.pem")),
        format!("--peer-tls-key={}", p("client-key.pem")),
    ];
    let driver_b = b.driver(&peer);

    // A full pull: 128 MiB of random data.
    let size = 128 * MIB;
    let src = create(&driver_a, "pvc-src", size, None).unwrap();
    let src_vol = agent_name(&src.volume_id).to_string();
    write_random(&agent_a, &src_vol, tmp.path(), 0, size, 1);
    let snap1 = snapshot(&driver_a, "vs-1", &src.volume_id);
    let started = Instant::now();
    let mut r = Retries::default();
    let v1 = restore(&driver_b, "pvc-r1", &snap1, &mut r).expect("restore on B");
    let took = started.elapsed();
    assert!(v1.volume_id.starts_with("node-b/"), "{v1:?}");
    assert_eq!(v1.capacity_bytes as u64, size);
    assert!(
        !r.aborted.is_empty(),
        "the first answer is ABORTED while the pull runs"
    );
    assert!(
        r.aborted
            .iter()
            .all(|m| m.contains("chunks") && m.contains(&snap1)),
        "{:?}",
        r.aborted
    );
    let a_sha = export_sha(&agent_a, agent_name(&snap1), tmp.path());
    assert_eq!(
        export_sha(&b.agent, agent_name(&v1.volume_id), tmp.path()),
        a_sha
    );
    let replica = replica_of(&snap1);
    let full = received(&b.agent, &replica);
    assert!(
        full >= size && full < size + size / 20,
        "full stream {full}"
    );
    println!(
        "full pull of {} MiB over mutual TLS: {:.2} s including the provisioner-style retries",
        size / MIB,
        took.as_secs_f64()
    );
    // The replica is the driver's own: not a CSI volume.
    assert_eq!(
        list_volume_ids(&driver_b),
        std::slice::from_ref(&v1.volume_id)
    );
    // A repeat answers at once from the volume made.
    assert_eq!(create(&driver_b, "pvc-r1", 0, Some(&snap1)).unwrap(), v1);

    // 1% changed, a second snapshot: about that travels.
    write_random(&agent_a, &src_vol, tmp.path(), 40 * MIB, size / 100, 2);
    let snap2 = snapshot(&driver_a, "vs-2", &src.volume_id);
    let v2 = restore(&driver_b, "pvc-r2", &snap2, &mut Retries::default()).unwrap();
    let incremental = received(&b.agent, &replica) - full;
    assert_eq!(
        export_sha(&b.agent, agent_name(&v2.volume_id), tmp.path()),
        export_sha(&agent_a, agent_name(&snap2), tmp.path())
    );
    assert!(
        incremental > size / 100 && incremental < size / 100 * 2 + MIB,
        "incremental stream {incremental} for a change of {}",
        size / 100
    );
    // The first restore still reads its own snapshot.
    assert_eq!(
        export_sha(&b.agent, agent_name(&v1.volume_id), tmp.path()),
        a_sha
    );
    println!("incremental pull after 1% changed: {incremental} stream bytes (full: {full})");

    // Cut twice: kill -9 of B's driver, then of A's agent, in the middle of a slow pull.
    drop(driver_b);
    let mut slow = peer.clone();
    slow.push(format!("--peer-bandwidth-limit={}", 8 * MIB));
    slow.push("--peer-compression=none".into());
    let driver_b = b.driver(&slow);
    let cut_size = 64 * MIB;
    let cut_src = create(&driver_a, "pvc-cut", cut_size, None).unwrap();
    write_random(
        &agent_a,
        agent_name(&cut_src.volume_id),
        tmp.path(),
        0,
        cut_size,
        3,
    );
    let snap3 = snapshot(&driver_a, "vs-3", &cut_src.volume_id);
    let cut_replica = replica_of(&snap3);
    let e = create(&driver_b, "pvc-r3", 0, Some(&snap3)).unwrap_err();
    assert_eq!(e.code(), Code::Aborted, "{e:?}");
    let staged = wait_staged(&b.agent, &cut_replica, 16 * MIB, &b.log);
    driver_b.kill9();
    let driver_b = b.driver(&slow);
    // The restarted driver continues the replica's apply: its progress says so once the
    // pull has read the replica's state.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let e = create(&driver_b, "pvc-r3", 0, Some(&snap3)).unwrap_err();
        assert_eq!(e.code(), Code::Aborted, "{e:?}");
        if e.message().contains("(resumed)") {
            break;
        }
        assert!(Instant::now() < deadline, "never resumed: {e:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let staged2 = wait_staged(&b.agent, &cut_replica, staged + 16 * MIB, &b.log);
    agent_a.kill9();
    let mut r = Retries::default();
    // A is gone: the cut pull reports itself, further retries find A unreachable.
    for _ in 0..3 {
        let e = create(&driver_b, "pvc-r3", 0, Some(&snap3)).unwrap_err();
        match e.code() {
            Code::Unavailable => r.unavailable.push(e.message().to_string()),
            Code::Aborted => r.aborted.push(e.message().to_string()),
            _ => panic!("{e:?}"),
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(!r.unavailable.is_empty(), "{:?}", r.aborted);
    let agent_a = Agent::start(&a_dir.join("data"), &a_args);
    let v3 = restore(&driver_b, "pvc-r3", &snap3, &mut r).expect("resumed restore");
    assert_eq!(
        export_sha(&b.agent, agent_name(&v3.volume_id), tmp.path()),
        export_sha(&agent_a, agent_name(&snap3), tmp.path())
    );
    let total = received(&b.agent, &cut_replica);
    let last = pulled_lines(&b.log)
        .into_iter()
        .rfind(|l| l.contains(&cut_replica))
        .expect("a pull finished for the cut replica");
    let last_bytes = field(&last, "stream_bytes");
    println!(
        "cut pull: {staged} then {staged2} bytes staged at the cuts, last pull {last_bytes} bytes, {total} received in all for {cut_size}"
    );
    assert!(last.contains("resumed=true"), "{last}");
    assert!(last_bytes <= cut_size - staged2 + 2 * MIB, "{last}");
    // Without resuming the three streams would have carried more than one and a half copies.
    assert!(total < cut_size + cut_size / 10, "{total} received in all");
    // Every byte of the stream arrived once at least, in one leg or another: the metric counts
    // the legs whose client went away too.
    assert!(total >= cut_size, "{total} received in all");
    println!("driver B log:\n{}", pulled_lines(&b.log).join("\n"));
    drop(driver_b);
    drop(driver_a);
    agent_a.stop_and_verify();
    b.agent.stop_and_verify();
}

/// A plaintext TCP proxy to `upstream` that flips the byte at `flip_at` of what the server
/// sends on every connection.
fn corrupting_proxy(upstream: String, flip_at: u64) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            let Ok(server) = TcpStream::connect(&upstream) else {
                continue;
            };
            let (mut c_in, mut s_out) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut c_in, &mut s_out);
                let _ = s_out.shutdown(std::net::Shutdown::Write);
            });
            let (mut s_in, mut c_out) = (server, client);
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 << 10];
                let mut at = 0u64;
                loop {
                    let n = match s_in.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if (at..at + n as u64).contains(&flip_at) {
                        buf[(flip_at - at) as usize] ^= 0x5a;
                    }
                    at += n as u64;
                    if c_out.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = c_out.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    port
}

#[test]
fn a_corrupt_stream_is_refused_and_leaves_nothing() {
    require_tools!("nbdcopy", "sha256sum");
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let a_listen = format!("127.0.0.1:{port}");
    let a_dir = tmp.path().join("a");
    std::fs::create_dir_all(&a_dir).unwrap();
    let agent_a = Agent::start(&a_dir.join("data"), &["--grpc-listen", &a_listen]);
    agent_a.wait_grpc();
    let driver_a = CsiDriver::start_on(&a_dir, &agent_a, NODE_A);
    let b = NodeB::start(tmp.path());
    let before = b.agent.volume_names();

    let size = 16 * MIB;
    let src = create(&driver_a, "pvc-src", size, None).unwrap();
    write_random(&agent_a, agent_name(&src.volume_id), tmp.path(), 0, size, 7);
    let snap = snapshot(&driver_a, "vs-1", &src.volume_id);

    let proxy = corrupting_proxy(a_listen.clone(), 4 * MIB);
    let via_proxy = b.driver(&[
        format!("--peer-agent-endpoint=http://{{node}}:{proxy}"),
        "--peer-compression=none".into(),
    ]);
    let e = restore(&via_proxy, "pvc-r", &snap, &mut Retries::default())
        .expect_err("a corrupt stream must be refused");
    assert_eq!(e.code(), Code::DataLoss, "{e:?}");
    assert!(e.message().contains("discarded"), "{e:?}");
    // Nothing is left: no replica volume, no half-applied snapshot, no CSI volume.
    assert_eq!(b.agent.volume_names(), before);
    assert!(list_volume_ids(&via_proxy).is_empty());
    drop(via_proxy);

    let direct = b.driver(&[format!("--peer-agent-endpoint=http://{{node}}:{port}")]);
    let v = restore(&direct, "pvc-r", &snap, &mut Retries::default()).expect("clean restore");
    assert_eq!(
        export_sha(&b.agent, agent_name(&v.volume_id), tmp.path()),
        export_sha(&agent_a, agent_name(&snap), tmp.path())
    );
    // Without peers the old answer stays: the scheduler is sent to the snapshot's node.
    drop(direct);
    let no_peers = b.driver(&[]);
    let e = create(&no_peers, "pvc-other", 0, Some(&snap)).unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    drop(no_peers);
    drop(driver_a);
    agent_a.stop_and_verify();
    b.agent.stop_and_verify();
}

/// The CLI's JSON answer.
fn cli_json(a: &Agent, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["--output", "json"];
    all.extend_from_slice(args);
    let out = cli_ok(a, &all);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {out}"))
}

/// Waits until `volume`'s mirror on `a` says the target holds `snap`.
fn wait_mirrored(a: &Agent, volume: &str, snap: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let m = cli_json(a, &["mirror", "show", volume])["mirrors"][0].clone();
        if m["status"]["state"] == "in-sync" && m["status"]["lastReplicatedSnapshot"] == snap {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the mirror never brought {snap}: {m}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_snapshot_a_mirror_already_brought_is_restored_without_a_pull() {
    require_tools!("nbdcopy", "qemu-io", "sha256sum");
    let tmp = tempfile::tempdir().unwrap();
    let a_dir = tmp.path().join("a");
    std::fs::create_dir_all(&a_dir).unwrap();
    // A's agent serves gRPC in plaintext on its loopback port: the peer endpoint.
    let agent_a = Agent::start(&a_dir.join("data"), &[]);
    let driver_a = CsiDriver::start_on(&a_dir, &agent_a, NODE_A);
    let b = NodeB::start(tmp.path());
    let port = agent_a.grpc.rsplit_once(':').unwrap().1.to_string();
    let driver_b = b.driver(&[format!("--peer-agent-endpoint=http://{{node}}:{port}")]);

    let size = 32 * MIB;
    let src = create(&driver_a, "pvc-src", size, None).unwrap();
    let src_vol = agent_name(&src.volume_id).to_string();
    write_random(&agent_a, &src_vol, tmp.path(), 0, size, 3);
    let to_b = format!("http://{}", b.agent.grpc);
    cli_ok(
        &agent_a,
        &[
            "mirror",
            "set",
            &src_vol,
            "--to",
            &to_b,
            "--target-volume",
            "dr-copy",
        ],
    );
    let snap = snapshot(&driver_a, "vs-m1", &src.volume_id);
    wait_mirrored(
        &agent_a,
        &src_vol,
        agent_name(&snap).split_once('@').unwrap().1,
    );

    // The mirror's copy is found: OK at the first call, no replica, no stream.
    let v = create(&driver_b, "pvc-m1", 0, Some(&snap)).expect("restored from the mirror at once");
    assert_eq!(
        export_sha(&b.agent, agent_name(&v.volume_id), tmp.path()),
        export_sha(&agent_a, agent_name(&snap), tmp.path())
    );
    let replica = replica_of(&snap);
    let volumes = cli_json(&b.agent, &["volume", "list"]).to_string();
    assert!(volumes.contains("dr-copy"), "{volumes}");
    assert!(!volumes.contains(&replica), "a replica was made: {volumes}");
    assert!(pulled_lines(&b.log).is_empty(), "something was pulled");

    // A snapshot the mirror never brought (it is cleared) is pulled as before.
    cli_ok(&agent_a, &["mirror", "clear", &src_vol]);
    write_random(&agent_a, &src_vol, tmp.path(), 4 * MIB, MIB, 4);
    let snap2 = snapshot(&driver_a, "vs-m2", &src.volume_id);
    let mut r = Retries::default();
    let v2 = restore(&driver_b, "pvc-m2", &snap2, &mut r).expect("restore by a pull");
    assert!(!r.aborted.is_empty(), "no pull ran");
    assert_eq!(
        export_sha(&b.agent, agent_name(&v2.volume_id), tmp.path()),
        export_sha(&agent_a, agent_name(&snap2), tmp.path())
    );
    assert_eq!(pulled_lines(&b.log).len(), 1);
}

//! The CSI driver's volume and snapshot lifecycle against a simple model of what Kubernetes
//! sees, with the driver killed (SIGKILL) in the middle of calls.
//!
//! Snapshots outlive their volume: DeleteVolume of a volume with snapshots retires it on the
//! agent, and deleting its last snapshot deletes it there (services/multisnap-csi/src/retire.rs).
//! A seeded random walk of CreateVolume, writes, CreateSnapshot, DeleteVolume, DeleteSnapshot
//! and restores runs against the real driver and agent; some calls are cut by killing the
//! driver after a random delay and are retried against a new one, as the sidecars retry. After
//! every step:
//! - CSI ListVolumes and ListSnapshots give exactly the model's volumes and snapshots (with
//!   their source volumes);
//! - the agent holds exactly the model's volumes plus the retired volumes some snapshot still
//!   needs: nothing leaks, nothing needed is gone;
//! - a restore reads the data its snapshot was taken with (qemu-io over the agent's NBD socket).
//!
//! `MODEL_SEED=N` replays one walk; `MODEL_STEPS` sets its length.

use common::csi::CsiDriver;
use common::*;
use multisnap_csi::csi::controller_client::ControllerClient;
use multisnap_csi::csi::volume_capability::{access_mode, AccessMode, AccessType, MountVolume};
use multisnap_csi::csi::*;
use multisnap_proto::v1 as pb;
use multisnap_tests as common;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;
use tonic::Code;

const VOLUME_BYTES: i64 = 4 << 20;
const VOLUME_NAMES: &[&str] = &["pv-a", "pv-b", "pv-c"];
const RESTORE_NAMES: &[&str] = &["pv-r1", "pv-r2"];
const SNAPSHOT_NAMES: &[&str] = &["vs-1", "vs-2", "vs-3", "vs-4", "vs-5"];

#[derive(Clone, Debug)]
struct ModelVolume {
    id: String,
    /// The byte the first 64 KiB hold (0 for a new volume).
    pattern: u8,
}

#[derive(Clone, Debug)]
struct ModelSnapshot {
    id: String,
    source_id: String,
    pattern: u8,
}

#[derive(Default, Debug)]
struct Model {
    volumes: BTreeMap<String, ModelVolume>,
    snapshots: BTreeMap<String, ModelSnapshot>,
}

/// One Kubernetes-level request.
#[derive(Clone, Debug)]
enum Op {
    CreateVolume(String),
    Write(String, u8),
    CreateSnapshot(String, String),
    DeleteVolume(String),
    DeleteSnapshot(String),
    Restore(String, String),
}

fn agent_name(volume_id: &str) -> &str {
    volume_id
        .split_once('/')
        .map(|(_, n)| n)
        .expect("ids are NODE/NAME")
}

fn mount_cap() -> VolumeCapability {
    VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume::default())),
        access_mode: Some(AccessMode {
            mode: access_mode::Mode::SingleNodeWriter as i32,
        }),
    }
}

fn create_volume_request(name: &str, snapshot: Option<&str>) -> CreateVolumeRequest {
    common::csi::create_volume_request(name, VOLUME_BYTES, mount_cap(), snapshot)
}

struct World<'a> {
    agent: &'a Agent,
    dir: &'a Path,
    driver: Option<CsiDriver>,
    model: Model,
    rng: StdRng,
    next_pattern: u8,
    kills: usize,
}

impl World<'_> {
    fn ctrl(&self) -> ControllerClient<tonic::transport::Channel> {
        ControllerClient::new(self.driver.as_ref().unwrap().channel())
    }

    /// A random request that makes sense for Kubernetes in the model's state.
    fn pick(&mut self) -> Op {
        fn pick(rng: &mut StdRng, names: &[&'static str]) -> &'static str {
            names[rng.gen_range(0..names.len())]
        }
        let live: Vec<String> = self.model.volumes.keys().cloned().collect();
        let snaps: Vec<String> = self.model.snapshots.keys().cloned().collect();
        loop {
            let op = match self.rng.gen_range(0..10) {
                0 | 1 => Op::CreateVolume(pick(&mut self.rng, VOLUME_NAMES).to_string()),
                2 if !live.is_empty() => {
                    self.next_pattern = self.next_pattern % 250 + 1;
                    let v = live[self.rng.gen_range(0..live.len())].clone();
                    Op::Write(v, self.next_pattern)
                }
                3 | 4 if !live.is_empty() => Op::CreateSnapshot(
                    pick(&mut self.rng, SNAPSHOT_NAMES).to_string(),
                    live[self.rng.gen_range(0..live.len())].clone(),
                ),
                5 | 6 if !live.is_empty() => {
                    Op::DeleteVolume(live[self.rng.gen_range(0..live.len())].clone())
                }
                7 | 8 if !snaps.is_empty() => {
                    Op::DeleteSnapshot(snaps[self.rng.gen_range(0..snaps.len())].clone())
                }
                9 if !snaps.is_empty() => Op::Restore(
                    snaps[self.rng.gen_range(0..snaps.len())].clone(),
                    pick(&mut self.rng, RESTORE_NAMES).to_string(),
                ),
                _ => continue,
            };
            return op;
        }
    }

    /// Sends the request once; Ok(code) for an answer, whatever it is.
    async fn send(&self, op: &Op) -> Result<Option<String>, tonic::Status> {
        let mut ctrl = self.ctrl();
        match op {
            Op::CreateVolume(name) => Ok(ctrl
                .create_volume(create_volume_request(name, None))
                .await?
                .into_inner()
                .volume
                .map(|v| v.volume_id)),
            Op::Restore(snap, name) => {
                let id = &self.model.snapshots[snap].id;
                Ok(ctrl
                    .create_volume(create_volume_request(name, Some(id)))
                    .await?
                    .into_inner()
                    .volume
                    .map(|v| v.volume_id))
            }
            Op::Write(..) => Ok(None),
            Op::CreateSnapshot(name, vol) => Ok(ctrl
                .create_snapshot(CreateSnapshotRequest {
                    source_volume_id: self.model.volumes[vol].id.clone(),
                    name: name.clone(),
                    ..Default::default()
                })
                .await?
                .into_inner()
                .snapshot
                .map(|s| s.snapshot_id)),
            Op::DeleteVolume(name) => {
                ctrl.delete_volume(DeleteVolumeRequest {
                    volume_id: self.model.volumes[name].id.clone(),
                    ..Default::default()
                })
                .await?;
                Ok(None)
            }
            Op::DeleteSnapshot(name) => {
                ctrl.delete_snapshot(DeleteSnapshotRequest {
                    snapshot_id: self.model.snapshots[name].id.clone(),
                    ..Default::default()
                })
                .await?;
                Ok(None)
            }
        }
    }

    fn restart_driver(&mut self) {
        if let Some(d) = self.driver.take() {
            d.kill9();
        }
        self.driver = Some(CsiDriver::start(self.dir, self.agent));
    }

    /// Sends the request; sometimes kills the driver while it is at work, then retries it
    /// against a new driver until it is answered, as a sidecar would.
    async fn call(&mut self, op: &Op) -> Result<Option<String>, tonic::Status> {
        if self.rng.gen_range(0..4) == 0 {
            let delay = Duration::from_micros(self.rng.gen_range(0..15_000));
            let cut = tokio::time::timeout(delay, self.send(op)).await;
            if cut.is_err() {
                self.kills += 1;
                self.restart_driver();
            }
        }
        loop {
            match self.send(op).await {
                Err(s) if s.code() == Code::Aborted || s.code() == Code::Unavailable => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                r => return r,
            }
        }
    }

    /// Applies one request to the driver and to the model, checking the answer.
    async fn step(&mut self, op: &Op) {
        let answer = self.call(op).await;
        let m = &mut self.model;
        match op {
            Op::CreateVolume(name) => {
                let id = answer.expect("CreateVolume").expect("a volume");
                match m.volumes.get(name) {
                    Some(v) => assert_eq!(v.id, id, "a repeated CreateVolume gave another id"),
                    None => {
                        m.volumes
                            .insert(name.clone(), ModelVolume { id, pattern: 0 });
                    }
                }
            }
            Op::Write(name, p) => {
                let export = agent_name(&m.volumes[name].id).to_string();
                qemu_io(
                    &self.agent.unix_uri(&export),
                    &[&format!("write -P {p} 0 64k"), "flush"],
                );
                m.volumes.get_mut(name).unwrap().pattern = *p;
            }
            Op::CreateSnapshot(name, vol) => {
                let source = m.volumes[vol].clone();
                match (m.snapshots.get(name), answer) {
                    (Some(s), Ok(id)) if s.source_id == source.id => {
                        assert_eq!(Some(&s.id), id.as_ref(), "a repeated CreateSnapshot")
                    }
                    (Some(s), Err(e)) if s.source_id != source.id => {
                        assert_eq!(e.code(), Code::AlreadyExists, "{e:?}")
                    }
                    (None, Ok(Some(id))) => {
                        m.snapshots.insert(
                            name.clone(),
                            ModelSnapshot {
                                id,
                                source_id: source.id,
                                pattern: source.pattern,
                            },
                        );
                    }
                    (s, a) => panic!("CreateSnapshot {name} of {vol}: model {s:?}, answer {a:?}"),
                }
            }
            Op::DeleteVolume(name) => {
                answer.expect("DeleteVolume");
                m.volumes.remove(name);
            }
            Op::DeleteSnapshot(name) => {
                answer.expect("DeleteSnapshot");
                m.snapshots.remove(name);
            }
            Op::Restore(snap, name) => {
                let s = m.snapshots[snap].clone();
                let want_pattern = s.pattern;
                match (m.volumes.get(name), answer) {
                    (Some(_), Err(e)) => assert_eq!(e.code(), Code::AlreadyExists, "{e:?}"),
                    (Some(v), Ok(id)) => assert_eq!(Some(&v.id), id.as_ref()),
                    (None, Ok(Some(id))) => {
                        let export = agent_name(&id).to_string();
                        qemu_io(
                            &self.agent.unix_uri(&export),
                            &[&format!("read -P {want_pattern} 0 64k")],
                        );
                        m.volumes.insert(
                            name.clone(),
                            ModelVolume {
                                id,
                                pattern: want_pattern,
                            },
                        );
                        self.wait_hydrated(&export).await;
                    }
                    (v, a) => panic!("restore {snap} as {name}: model {v:?}, answer {a:?}"),
                }
            }
        }
    }

    /// A restore copies its data in the background; the walk waits for it so that deleting
    /// the snapshot afterwards is never refused for a clone still reading it.
    async fn wait_hydrated(&self, agent_volume: &str) {
        let mut volumes = agent_client(self.agent).await;
        for _ in 0..600 {
            let v = volumes
                .get_volume(pb::GetVolumeRequest {
                    name: agent_volume.to_string(),
                })
                .await
                .expect("GetVolume")
                .into_inner();
            if v.hydration.is_none() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{agent_volume} never finished hydrating");
    }

    /// The driver's and the agent's state equal the model's.
    async fn check(&self, after: &Op) {
        let mut ctrl = self.ctrl();
        let listed: BTreeSet<String> = ctrl
            .list_volumes(ListVolumesRequest::default())
            .await
            .expect("ListVolumes")
            .into_inner()
            .entries
            .into_iter()
            .filter_map(|e| e.volume.map(|v| v.volume_id))
            .collect();
        let want: BTreeSet<String> = self.model.volumes.values().map(|v| v.id.clone()).collect();
        assert_eq!(listed, want, "ListVolumes after {after:?}");
        let snaps: BTreeSet<(String, String)> = ctrl
            .list_snapshots(ListSnapshotsRequest::default())
            .await
            .expect("ListSnapshots")
            .into_inner()
            .entries
            .into_iter()
            .filter_map(|e| e.snapshot.map(|s| (s.snapshot_id, s.source_volume_id)))
            .collect();
        let want_snaps: BTreeSet<(String, String)> = self
            .model
            .snapshots
            .values()
            .map(|s| (s.id.clone(), s.source_id.clone()))
            .collect();
        assert_eq!(snaps, want_snaps, "ListSnapshots after {after:?}");
        // The agent: live volumes, and retired ones only while a snapshot needs them.
        let on_agent: BTreeSet<String> = agent_client(self.agent)
            .await
            .list_volumes(pb::ListVolumesRequest {})
            .await
            .expect("agent ListVolumes")
            .into_inner()
            .volumes
            .into_iter()
            .map(|v| v.name)
            .filter(|n| n.starts_with("csi-"))
            .collect();
        let needed: BTreeSet<String> = want
            .iter()
            .chain(want_snaps.iter().map(|(_, source)| source))
            .map(|id| agent_name(id).to_string())
            .collect();
        assert_eq!(on_agent, needed, "agent volumes after {after:?}");
    }
}

async fn agent_client(
    agent: &Agent,
) -> pb::volume_service_client::VolumeServiceClient<tonic::transport::Channel> {
    let socket = agent.data_dir.join("grpc.sock");
    let channel = tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = socket.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .expect("connect to the agent");
    pb::volume_service_client::VolumeServiceClient::new(channel)
}

async fn walk(agent: &Agent, dir: &Path, seed: u64, steps: usize) {
    let mut world = World {
        agent,
        dir,
        driver: None,
        model: Model::default(),
        rng: StdRng::seed_from_u64(seed),
        next_pattern: 0,
        kills: 0,
    };
    world.restart_driver();
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for _ in 0..steps {
        let op = world.pick();
        world.step(&op).await;
        world.check(&op).await;
        let kind = match op {
            Op::CreateVolume(_) => "create-volume",
            Op::Write(..) => "write",
            Op::CreateSnapshot(..) => "create-snapshot",
            Op::DeleteVolume(_) => "delete-volume",
            Op::DeleteSnapshot(_) => "delete-snapshot",
            Op::Restore(..) => "restore",
        };
        *counts.entry(kind).or_default() += 1;
    }
    eprintln!(
        "seed {seed}: {steps} steps {counts:?}, driver killed mid-call {} times, \
         {} volumes and {} snapshots at the end",
        world.kills,
        world.model.volumes.len(),
        world.model.snapshots.len()
    );
}

#[test]
fn csi_lifecycle_matches_the_model_with_the_driver_killed_mid_call() {
    if !have("qemu-io") {
        return missing_dependency("qemu-io");
    }
    let steps = std::env::var("MODEL_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    let seeds: Vec<u64> = match std::env::var("MODEL_SEED") {
        Ok(s) => vec![s.parse().expect("MODEL_SEED is a number")],
        Err(_) => vec![1, 2, 3],
    };
    for seed in seeds {
        eprintln!("seed {seed} (MODEL_SEED={seed} replays it)");
        let tmp = tempfile::tempdir().unwrap();
        let agent = Agent::start(&tmp.path().join("data"), &[]);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(walk(&agent, tmp.path(), seed, steps));
        // The runtime goes first: its connections to the agent close, so the agent's stop
        // need not wait for them.
        drop(rt);
        agent.stop_and_verify();
    }
}

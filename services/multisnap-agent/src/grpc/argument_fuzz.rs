//! Fuzzing the gRPC handlers' argument checks: random sequences of volume and snapshot calls
//! (and block maps)
//! with hostile arguments (empty, over-long, non-ASCII and path-like names, sizes at and past
//! every limit, chunk sizes that are not powers of two, origin paths that climb out of the
//! data directory or name devices, unknown enum values, snapshot policies with every interval, good, never-matching and malformed schedules,
//! count and age limit and malformed name templates, mirrors to malformed endpoints, bad
//! target volume names and TLS files that do not exist or do not fit) against the real handlers on a real
//! data directory. Whatever the input: no panic, never INTERNAL or UNKNOWN (a caller's mistake
//! is the caller's code), and the agent still lists, reads and flushes its volumes afterwards.

use super::deltas::DeltaApi;
use super::mirrors::MirrorApi;
use super::policies::PolicyApi;
use super::snapshots::SnapshotApi;
use super::volumes::VolumeApi;
use crate::datadir::DataDir;
use crate::origin_policy::OriginPolicy;
use crate::ublk_devices::UblkDevices;
use crate::volumes::Volumes;
use multisnap_proto::v1 as pb;
use multisnap_proto::v1::delta_service_server::DeltaService;
use multisnap_proto::v1::mirror_service_server::MirrorService;
use multisnap_proto::v1::policy_service_server::PolicyService;
use multisnap_proto::v1::snapshot_service_server::SnapshotService;
use multisnap_proto::v1::volume_service_server::VolumeService;
use proptest::prelude::*;
use std::sync::Arc;
use tonic::{Code, Request};

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("v".to_string()),
        Just("w".to_string()),
        Just("default".to_string()),
        Just("..".to_string()),
        Just("../escape".to_string()),
        Just("a/b".to_string()),
        Just("-dash".to_string()),
        Just(".hidden".to_string()),
        Just("x".repeat(64)),
        Just("s".repeat(129)),
        Just("nul\0byte".to_string()),
        Just("ünïcödé".to_string()),
        "[a-z0-9._-]{1,8}",
        any::<String>(),
    ]
}

fn size() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(1),
        Just(511),
        Just(4096),
        Just(1 << 20),
        Just((1 << 20) + 1),
        Just(4 << 20),
        Just(64 << 40),
        Just((64 << 40) + 1),
        Just(i64::MAX as u64),
        Just(u64::MAX),
    ]
}

fn chunk() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(0u32),
        Just(4096),
        Just(65536),
        Just(1 << 20),
        Just(2048),
        Just(3 << 12),
        Just(2 << 20),
        Just(u32::MAX),
        any::<u32>(),
    ]
}

fn origin_path() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => Just(String::new()),
        1 => Just("/etc/passwd".to_string()),
        1 => Just("/dev/null".to_string()),
        1 => Just("/dev/zero".to_string()),
        1 => Just("relative/path".to_string()),
        1 => Just("/".to_string()),
        1 => Just("/proc/self/mem".to_string()),
        1 => Just("DATA/volumes/default/store.msnap".to_string()),
        1 => Just("DATA/volumes/default/origin.img".to_string()),
        1 => Just("DATA/agent.lock".to_string()),
        1 => Just("DATA/images/../../../etc/shadow".to_string()),
        1 => Just("DATA/images/empty.img".to_string()),
        1 => Just("DATA/images/disk.img".to_string()),
        1 => any::<String>(),
    ]
}

fn template() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("auto-%Y%m%d-%H%M%S".to_string()),
        Just("%s".to_string()),
        Just("%".to_string()),
        Just("%%".to_string()),
        Just("-%s".to_string()),
        Just("%Y%m%d".to_string()),
        Just(format!("{}%s", "x".repeat(200))),
        "[a-z%YmdHMSs]{0,12}",
        any::<String>(),
    ]
}

/// Cron-like schedules: good ones, ones that never match, and malformed ones.
fn schedule() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => Just(String::new()),
        1 => Just("0 */6 * * *".to_string()),
        1 => Just("0 9-17/4 * * mon-fri".to_string()),
        1 => Just("0 0 29 2 *".to_string()),
        1 => Just("0 0 31 2 *".to_string()),
        1 => Just("* * * * *".to_string()),
        1 => Just("61 * * * *".to_string()),
        1 => Just("0 0 * * fri-mon".to_string()),
        1 => Just("*/0 * * * *".to_string()),
        1 => Just("0 0 * *".to_string()),
        1 => "[0-9*/,a-z -]{0,24}",
        1 => any::<String>(),
    ]
}

fn policy() -> impl Strategy<Value = pb::SnapshotPolicy> {
    let interval = prop_oneof![
        Just(0u64),
        Just(59),
        Just(60),
        Just(3600),
        Just(366 * 86400),
        Just(366 * 86400 + 1),
        Just(u64::MAX),
        any::<u64>(),
    ];
    let keep = prop_oneof![
        Just(0u32),
        Just(1),
        Just(10_000),
        Just(10_001),
        any::<u32>()
    ];
    (interval, schedule(), template(), keep.clone(), keep, size()).prop_map(
        |(i, c, t, a, b, age)| pb::SnapshotPolicy {
            interval_seconds: i,
            schedule: c,
            name_template: t,
            keep_hourly: a,
            keep_daily: b,
            keep_weekly: a / 2,
            keep_monthly: b / 3,
            max_age_seconds: age,
        },
    )
}

#[derive(Debug, Clone)]
enum Call {
    CreateVolume(pb::CreateVolumeRequest),
    GetVolume(String),
    ChangedRanges(pb::GetChangedRangesRequest),
    AllocatedRanges(pb::GetAllocatedRangesRequest),
    DeleteVolume(String, bool),
    CreateSnapshot(pb::CreateSnapshotRequest),
    GetSnapshot(String, String),
    DeleteSnapshot(String, String),
    ListSnapshots(String),
    ResizeVolume(String, u64),
    SetPolicy(String, Option<pb::SnapshotPolicy>),
    GetPolicy(String),
    ClearPolicy(String),
    SetMirror(String, Option<pb::MirrorTarget>),
    GetMirror(pb::GetMirrorRequest),
    ListMirrors(String),
    ClearMirror(pb::ClearMirrorRequest),
    CreateSnapshotGroup(String, Vec<String>),
    GetSnapshotGroup(String),
    DeleteSnapshotGroup(String),
}

fn call() -> impl Strategy<Value = Call> {
    // Labels: mostly none, sometimes any strings at all (keys with '=' or line breaks included).
    let labels = prop_oneof![
        3 => Just(Default::default()),
        1 => proptest::collection::hash_map(".{0,12}", ".{0,12}", 1..3),
    ];
    let create = (
        name(),
        size(),
        chunk(),
        origin_path(),
        size(),
        any::<i32>(),
        labels,
    )
        .prop_map(
            |(name, size_bytes, chunk_size_bytes, origin_path, store, policy, labels)| {
                Call::CreateVolume(pb::CreateVolumeRequest {
                    name,
                    size_bytes,
                    chunk_size_bytes,
                    origin_path,
                    // Mostly the default; sometimes a size of its own.
                    store_size_bytes: if store % 3 == 0 { store } else { 0 },
                    store_full_policy: policy % 4,
                    source: None,
                    labels,
                    // Mostly buffered; sometimes direct, or a value no version knows.
                    origin_cache: (policy >> 4) % 3,
                })
            },
        );
    prop_oneof![
        4 => create,
        1 => name().prop_map(Call::GetVolume),
        1 => (name(), name(), name(), size(), any::<u32>()).prop_map(|(volume, base, target, at, max)| {
            Call::ChangedRanges(pb::GetChangedRangesRequest {
                volume,
                base_snapshot: base,
                target_snapshot: target,
                starting_offset: at,
                max_results: max,
            })
        }),
        1 => (name(), name(), size(), any::<u32>()).prop_map(|(volume, snapshot, at, max)| {
            Call::AllocatedRanges(pb::GetAllocatedRangesRequest {
                volume,
                snapshot,
                starting_offset: at,
                max_results: max,
            })
        }),
        1 => (name(), any::<bool>()).prop_map(|(n, f)| Call::DeleteVolume(n, f)),
        3 => (name(), name(), any::<bool>()).prop_map(|(volume, name, writable)| {
            Call::CreateSnapshot(pb::CreateSnapshotRequest { volume, name, writable })
        }),
        1 => (name(), name()).prop_map(|(v, n)| Call::GetSnapshot(v, n)),
        1 => (name(), name()).prop_map(|(v, n)| Call::DeleteSnapshot(v, n)),
        1 => name().prop_map(Call::ListSnapshots),
        2 => (name(), size()).prop_map(|(n, s)| Call::ResizeVolume(n, s)),
        2 => (name(), proptest::option::weighted(0.9, policy()))
            .prop_map(|(n, p)| Call::SetPolicy(n, p)),
        1 => name().prop_map(Call::GetPolicy),
        1 => name().prop_map(Call::ClearPolicy),
        2 => (name(), proptest::option::weighted(0.9, mirror_target()))
            .prop_map(|(n, t)| Call::SetMirror(n, t)),
        1 => (name(), mirror_endpoint(), name()).prop_map(|(volume, endpoint, target_volume)| {
            Call::GetMirror(pb::GetMirrorRequest { volume, endpoint, target_volume })
        }),
        1 => name().prop_map(Call::ListMirrors),
        1 => (name(), mirror_endpoint(), name()).prop_map(|(volume, endpoint, target_volume)| {
            Call::ClearMirror(pb::ClearMirrorRequest { volume, endpoint, target_volume })
        }),
        2 => (name(), proptest::collection::vec(name(), 0..4))
            .prop_map(|(n, v)| Call::CreateSnapshotGroup(n, v)),
        1 => name().prop_map(Call::GetSnapshotGroup),
        1 => name().prop_map(Call::DeleteSnapshotGroup),
    ]
}

/// Mirror endpoints of every form and none.
fn mirror_endpoint() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("127.0.0.1:1".to_string()),
        Just("http://127.0.0.1:1".to_string()),
        Just("https://localhost:1".to_string()),
        Just("unix:/nonexistent/grpc.sock".to_string()),
        Just("unix:relative.sock".to_string()),
        Just("unix:".to_string()),
        Just("ftp://x".to_string()),
        Just("http://".to_string()),
        any::<String>(),
    ]
}

/// Mirror targets: endpoints of every form and none, volume names as hostile as any, and TLS
/// files that are missing, absent where needed or given where they do not belong.
fn mirror_target() -> impl Strategy<Value = pb::MirrorTarget> {
    let endpoint = mirror_endpoint();
    let file = prop_oneof![
        3 => Just(String::new()),
        1 => Just("/nonexistent/ca.pem".to_string()),
        1 => Just("/dev/null".to_string()),
        1 => any::<String>(),
    ];
    let compression = prop_oneof![Just(0), Just(1), any::<i32>()];
    let level = prop_oneof![Just(0), 1..=22i32, any::<i32>()];
    let rate = prop_oneof![Just(0u64), any::<u64>()];
    (
        (endpoint, name(), file.clone(), file.clone(), file),
        (compression, level, rate),
    )
        .prop_map(
            |(
                (endpoint, volume, tls_ca_file, tls_cert_file, tls_key_file),
                (compression, compression_level, bandwidth_limit_bytes_per_sec),
            )| pb::MirrorTarget {
                endpoint,
                volume,
                tls_ca_file,
                tls_cert_file,
                tls_key_file,
                compression,
                compression_level,
                bandwidth_limit_bytes_per_sec,
            },
        )
}

struct Agent {
    volumes: VolumeApi,
    snapshots: SnapshotApi,
    policies: PolicyApi,
    mirrors: MirrorApi,
    deltas: DeltaApi,
    store: Arc<Volumes>,
    data: std::path::PathBuf,
    _tmp: tempfile::TempDir,
}

fn agent() -> Agent {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let dir = DataDir::open_locked(&data).unwrap();
    std::fs::create_dir_all(data.join("images")).unwrap();
    std::fs::File::create(data.join("images/empty.img")).unwrap();
    std::fs::File::create(data.join("images/disk.img"))
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let policy = OriginPolicy::new(&data, &[]).unwrap();
    let volumes = Arc::new(Volumes::load(dir, policy, 1 << 20, 0).unwrap());
    let ublk = Arc::new(UblkDevices::new(volumes.clone(), &data));
    Agent {
        volumes: VolumeApi {
            volumes: volumes.clone(),
            ublk: ublk.clone(),
        },
        snapshots: SnapshotApi {
            volumes: volumes.clone(),
            ublk: ublk.clone(),
        },
        policies: PolicyApi {
            volumes: volumes.clone(),
            scheduler: Arc::new(crate::policy::scheduler::Scheduler::new(
                Arc::new(crate::policy::clock::SystemClock),
                crate::policy::holds::Holds::standard(ublk),
            )),
        },
        mirrors: MirrorApi {
            volumes: volumes.clone(),
            worker: Arc::new(crate::mirror::worker::MirrorWorker::new(
                crate::mirror::backoff::Backoff::STANDARD,
            )),
        },
        deltas: DeltaApi::new(volumes.clone(), Default::default()),
        store: volumes,
        data,
        _tmp: tmp,
    }
}

/// A streaming call's status: its refusal, or the first error in its stream, or `Ok`.
async fn drain<S, T>(reply: Result<tonic::Response<S>, tonic::Status>) -> Code
where
    S: tokio_stream::Stream<Item = Result<T, tonic::Status>> + Unpin,
{
    use tokio_stream::StreamExt;
    let mut stream = match reply {
        Ok(r) => r.into_inner(),
        Err(s) => return s.code(),
    };
    while let Some(item) = stream.next().await {
        if let Err(s) = item {
            return s.code();
        }
    }
    Code::Ok
}

impl Agent {
    /// Runs one call; the status code it ended with (`Ok` for success).
    async fn run(&self, call: Call) -> Code {
        let data = self.data.display().to_string();
        let code = |r: Result<(), tonic::Status>| r.err().map_or(Code::Ok, |s| s.code());
        match call {
            Call::CreateVolume(mut r) => {
                r.origin_path = r.origin_path.replacen("DATA", &data, 1);
                code(self.volumes.create_volume(Request::new(r)).await.map(drop))
            }
            Call::ChangedRanges(r) => {
                drain(self.deltas.get_changed_ranges(Request::new(r)).await).await
            }
            Call::AllocatedRanges(r) => {
                drain(self.deltas.get_allocated_ranges(Request::new(r)).await).await
            }
            Call::GetVolume(name) => code(
                self.volumes
                    .get_volume(Request::new(pb::GetVolumeRequest { name }))
                    .await
                    .map(drop),
            ),
            Call::DeleteVolume(name, force) => code(
                self.volumes
                    .delete_volume(Request::new(pb::DeleteVolumeRequest { name, force }))
                    .await
                    .map(drop),
            ),
            Call::CreateSnapshot(r) => code(
                self.snapshots
                    .create_snapshot(Request::new(r))
                    .await
                    .map(drop),
            ),
            Call::GetSnapshot(volume, name) => code(
                self.snapshots
                    .get_snapshot(Request::new(pb::GetSnapshotRequest { volume, name }))
                    .await
                    .map(drop),
            ),
            Call::DeleteSnapshot(volume, name) => code(
                self.snapshots
                    .delete_snapshot(Request::new(pb::DeleteSnapshotRequest { volume, name }))
                    .await
                    .map(drop),
            ),
            Call::ListSnapshots(volume) => code(
                self.snapshots
                    .list_snapshots(Request::new(pb::ListSnapshotsRequest { volume }))
                    .await
                    .map(drop),
            ),
            Call::ResizeVolume(name, size_bytes) => code(
                self.volumes
                    .resize_volume(Request::new(pb::ResizeVolumeRequest { name, size_bytes }))
                    .await
                    .map(drop),
            ),
            Call::SetPolicy(volume, policy) => code(
                self.policies
                    .set_policy(Request::new(pb::SetPolicyRequest { volume, policy }))
                    .await
                    .map(drop),
            ),
            Call::GetPolicy(volume) => code(
                self.policies
                    .get_policy(Request::new(pb::GetPolicyRequest { volume }))
                    .await
                    .map(drop),
            ),
            Call::ClearPolicy(volume) => code(
                self.policies
                    .clear_policy(Request::new(pb::ClearPolicyRequest { volume }))
                    .await
                    .map(drop),
            ),
            Call::SetMirror(volume, target) => code(
                self.mirrors
                    .set_mirror(Request::new(pb::SetMirrorRequest { volume, target }))
                    .await
                    .map(drop),
            ),
            Call::GetMirror(r) => code(self.mirrors.get_mirror(Request::new(r)).await.map(drop)),
            Call::ListMirrors(volume) => code(
                self.mirrors
                    .list_mirrors(Request::new(pb::ListMirrorsRequest { volume }))
                    .await
                    .map(drop),
            ),
            Call::ClearMirror(r) => {
                code(self.mirrors.clear_mirror(Request::new(r)).await.map(drop))
            }
            Call::CreateSnapshotGroup(name, volumes) => code(
                self.snapshots
                    .create_snapshot_group(Request::new(pb::CreateSnapshotGroupRequest {
                        name,
                        volumes,
                    }))
                    .await
                    .map(drop),
            ),
            Call::GetSnapshotGroup(name) => code(
                self.snapshots
                    .get_snapshot_group(Request::new(pb::GetSnapshotGroupRequest { name }))
                    .await
                    .map(drop),
            ),
            Call::DeleteSnapshotGroup(name) => code(
                self.snapshots
                    .delete_snapshot_group(Request::new(pb::DeleteSnapshotGroupRequest { name }))
                    .await
                    .map(drop),
            ),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    #[test]
    fn hostile_arguments_get_a_callers_code_and_leave_the_agent_working(
        calls in proptest::collection::vec(call(), 1..24)
    ) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let agent = agent();
        rt.block_on(async {
            for c in calls {
                let what = format!("{c:?}");
                let code = agent.run(c).await;
                prop_assert!(
                    !matches!(code, Code::Internal | Code::Unknown),
                    "{what} -> {code:?}"
                );
            }
            Ok(())
        })?;
        // Every volume left still serves: listed, read, written and flushed.
        for v in agent.store.list() {
            let view = multisnap_store::VolumeView::origin(v.store.clone());
            let mut buf = vec![0u8; view.size().min(4096) as usize];
            view.read(0, &mut buf).unwrap();
            view.write(0, &buf).unwrap();
            view.flush().unwrap();
        }
        rt.block_on(async {
            let listed = agent
                .volumes
                .list_volumes(Request::new(pb::ListVolumesRequest {}))
                .await
                .unwrap()
                .into_inner();
            prop_assert_eq!(listed.volumes.len(), agent.store.list().len());
            Ok(())
        })?;
    }
}

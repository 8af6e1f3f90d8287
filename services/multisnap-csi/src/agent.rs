//! The agent behind this driver, reached over its gRPC API on its unix socket. The driver
//! never opens a store: every change goes through the agent, which owns the data directory.

use hyper_util::rt::TokioIo;
use multisnap_proto::v1 as pb;
use pb::delta_service_client::DeltaServiceClient;
use pb::snapshot_service_client::SnapshotServiceClient;
use pb::ublk_service_client::UblkServiceClient;
use pb::volume_service_client::VolumeServiceClient;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Code, Status};

/// Calls the agent answers in well under this; CreateSnapshot waits for in-flight writes only.
const CALL_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Clone)]
pub struct Agent {
    channel: Channel,
    /// The same socket without a call deadline, for delta streams that run as long as the
    /// data takes.
    streams: Channel,
    socket: PathBuf,
}

impl Agent {
    /// A channel that connects on first use and again after the agent restarts, so the driver
    /// can start before the agent and outlive its restarts (the sidecars retry meanwhile).
    pub fn new(socket: &Path) -> Agent {
        let connect = |endpoint: Endpoint| {
            let path = socket.to_path_buf();
            endpoint
                .connect_timeout(Duration::from_secs(5))
                .connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        let stream = tokio::net::UnixStream::connect(path).await?;
                        Ok::<_, std::io::Error>(TokioIo::new(stream))
                    }
                }))
        };
        // The URI only becomes HTTP/2's :authority, which must be a plain host name.
        let endpoint = Endpoint::from_static("http://localhost");
        Agent {
            channel: connect(endpoint.clone().timeout(CALL_TIMEOUT)),
            streams: connect(multisnap_proto::for_streams(endpoint)),
            socket: socket.to_path_buf(),
        }
    }

    pub fn volumes(&self) -> VolumeServiceClient<Channel> {
        VolumeServiceClient::new(self.channel.clone())
    }

    pub fn snapshots(&self) -> SnapshotServiceClient<Channel> {
        SnapshotServiceClient::new(self.channel.clone())
    }

    /// DeltaService: the block maps behind CSI's SnapshotMetadata.
    pub fn deltas(&self) -> DeltaServiceClient<Channel> {
        DeltaServiceClient::new(self.channel.clone())
    }

    /// DeltaService without a call deadline: a pulled snapshot's ApplyDelta.
    pub fn stream_deltas(&self) -> DeltaServiceClient<Channel> {
        DeltaServiceClient::new(self.streams.clone())
    }

    pub fn ublk(&self) -> UblkServiceClient<Channel> {
        UblkServiceClient::new(self.channel.clone())
    }

    /// The agent's data directory: it serves its gRPC socket at `<data-dir>/grpc.sock`.
    pub fn data_dir(&self) -> &Path {
        self.socket.parent().unwrap_or(Path::new("/"))
    }

    /// Whether the agent answers and reports its volume service SERVING (grpc.health.v1).
    pub async fn healthy(&self) -> Result<bool, Status> {
        use tonic_health::pb::health_check_response::ServingStatus;
        use tonic_health::pb::health_client::HealthClient;
        use tonic_health::pb::HealthCheckRequest;
        let reply = HealthClient::new(self.channel.clone())
            .check(HealthCheckRequest {
                service: "multisnap.v1.VolumeService".to_string(),
            })
            .await?;
        Ok(reply.into_inner().status == ServingStatus::Serving as i32)
    }

    /// A volume by agent name; None when the agent has none of that name.
    pub async fn volume(&self, name: &str) -> Result<Option<pb::Volume>, Status> {
        let reply = self
            .volumes()
            .get_volume(pb::GetVolumeRequest {
                name: name.to_string(),
            })
            .await;
        absent_as_none(reply.map(|r| r.into_inner()))
    }

    /// A snapshot by agent volume and snapshot name; None when the agent has none.
    pub async fn snapshot(&self, volume: &str, name: &str) -> Result<Option<pb::Snapshot>, Status> {
        let reply = self
            .snapshots()
            .get_snapshot(pb::GetSnapshotRequest {
                volume: volume.to_string(),
                name: name.to_string(),
            })
            .await;
        absent_as_none(reply.map(|r| r.into_inner()))
    }

    /// A volume's snapshots, in creation order; empty when the volume is gone.
    pub async fn snapshots_of(&self, volume: &str) -> Result<Vec<pb::Snapshot>, Status> {
        let reply = self
            .snapshots()
            .list_snapshots(pb::ListSnapshotsRequest {
                volume: volume.to_string(),
            })
            .await;
        Ok(absent_as_none(reply.map(|r| r.into_inner().snapshots))?.unwrap_or_default())
    }

    pub async fn all_volumes(&self) -> Result<Vec<pb::Volume>, Status> {
        Ok(self
            .volumes()
            .list_volumes(pb::ListVolumesRequest {})
            .await?
            .into_inner()
            .volumes)
    }
}

/// NOT_FOUND as None: the driver's callers decide whether absence is an error (CSI deletes of
/// unknown ids succeed, lookups answer NOT_FOUND with their own words).
pub fn absent_as_none<T>(r: Result<T, Status>) -> Result<Option<T>, Status> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(s) if s.code() == Code::NotFound => Ok(None),
        Err(s) => Err(s),
    }
}

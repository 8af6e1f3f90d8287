//! The gRPC control plane: `multisnap.v1` services plus server reflection (v1 and v1alpha, so
//! both grpcurl and Python's grpcio-reflection work without proto files) and
//! `grpc.health.v1`, on TCP and a unix socket.

#[cfg(test)]
mod argument_fuzz;
mod block_maps;
mod deltas;
mod mirrors;
mod policies;
mod snapshot_groups;
mod snapshots;
mod status;
mod ublk;
mod volumes;

use crate::ublk_devices::UblkDevices;
use crate::volumes::Volumes;
use anyhow::Context;
use multisnap_proto::v1::delta_service_server::DeltaServiceServer;
use multisnap_proto::v1::mirror_service_server::MirrorServiceServer;
use multisnap_proto::v1::policy_service_server::PolicyServiceServer;
use multisnap_proto::v1::snapshot_service_server::SnapshotServiceServer;
use multisnap_proto::v1::ublk_service_server::UblkServiceServer;
use multisnap_proto::v1::volume_service_server::VolumeServiceServer;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;

/// TLS for the TCP listener: PEM files for the server's certificate chain and key, and
/// optionally a CA whose clients alone are accepted (mutual TLS).
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
    pub client_ca: Option<std::path::PathBuf>,
}

impl TlsFiles {
    /// Reads the files; called before anything listens, so a bad path fails the start.
    pub fn server_config(&self) -> anyhow::Result<tonic::transport::ServerTlsConfig> {
        let read =
            |p: &Path| std::fs::read(p).with_context(|| format!("cannot read {}", p.display()));
        let identity = tonic::transport::Identity::from_pem(read(&self.cert)?, read(&self.key)?);
        let mut cfg = tonic::transport::ServerTlsConfig::new().identity(identity);
        if let Some(ca) = &self.client_ca {
            cfg = cfg.client_ca_root(tonic::transport::Certificate::from_pem(read(ca)?));
        }
        Ok(cfg)
    }
}

/// The gRPC listeners: TCP unless turned off (`--grpc-listen none`), and the unix socket.
pub struct Listeners {
    tcp: Option<tokio::net::TcpListener>,
    unix: tokio::net::UnixListener,
}

/// Binds the gRPC listeners; done before anything is served, so a taken port or socket path
/// fails the agent's start instead of leaving it running without its control plane.
pub async fn bind(
    addr: Option<SocketAddr>,
    sock: &Path,
    access: crate::permissions::SocketAccess,
) -> anyhow::Result<Listeners> {
    let tcp = match addr {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen for gRPC on {addr}"))?,
        ),
        None => None,
    };
    let unix = crate::permissions::bind_unix_socket(sock, access)
        .with_context(|| format!("cannot listen for gRPC on {}", sock.display()))?;
    Ok(Listeners { tcp, unix })
}

/// The background workers whose APIs gRPC serves: the snapshot policy scheduler and the mirror
/// task.
pub struct Workers {
    pub scheduler: Arc<crate::policy::scheduler::Scheduler>,
    pub mirrors: Arc<crate::mirror::worker::MirrorWorker>,
}

/// Serves gRPC on the TCP listener, if any (with TLS when `tls` is given), and in plaintext on
/// the unix socket `sock` (local only, guarded by its mode and group) until `shutdown`.
pub async fn serve(
    volumes: Arc<Volumes>,
    ublk_devices: Arc<UblkDevices>,
    Workers { scheduler, mirrors }: Workers,
    Listeners { tcp, unix }: Listeners,
    tls: Option<tonic::transport::ServerTlsConfig>,
    sock: &Path,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let addr = match &tcp {
        Some(l) => l
            .local_addr()
            .context("gRPC listener has no address")?
            .to_string(),
        None => crate::listen::OFF.to_string(),
    };
    tracing::info!(tcp = %addr, tls = tls.is_some(), unix = %sock.display(), "serving gRPC");
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_serving::<VolumeServiceServer<volumes::VolumeApi>>()
        .await;
    reporter
        .set_serving::<SnapshotServiceServer<snapshots::SnapshotApi>>()
        .await;
    reporter
        .set_serving::<DeltaServiceServer<deltas::DeltaApi>>()
        .await;
    reporter
        .set_serving::<UblkServiceServer<ublk::UblkApi>>()
        .await;
    reporter
        .set_serving::<PolicyServiceServer<policies::PolicyApi>>()
        .await;
    reporter
        .set_serving::<MirrorServiceServer<mirrors::MirrorApi>>()
        .await;
    let applying = deltas::Applying::default();
    let build = |vols: Arc<Volumes>,
                 tls: Option<tonic::transport::ServerTlsConfig>|
     -> anyhow::Result<tonic::transport::server::Router> {
        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(multisnap_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .context("cannot build the reflection service")?;
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(multisnap_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()
            .context("cannot build the reflection service")?;
        // HTTP/2's default 64 KiB flow-control windows cost a round trip per 64 KiB of a delta
        // stream; larger windows let a 1 MiB message travel in one go.
        let mut server = Server::builder()
            .initial_stream_window_size(Some(multisnap_proto::STREAM_WINDOW_BYTES))
            .initial_connection_window_size(Some(multisnap_proto::CONNECTION_WINDOW_BYTES))
            .max_frame_size(multisnap_proto::MAX_FRAME_BYTES);
        if let Some(cfg) = tls {
            server = server
                .tls_config(cfg)
                .context("invalid TLS configuration")?;
        }
        Ok(server
            .trace_fn(|req| tracing::info_span!("grpc", method = %req.uri().path()))
            .add_service(health.clone())
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(VolumeServiceServer::new(volumes::VolumeApi {
                volumes: vols.clone(),
                ublk: ublk_devices.clone(),
            }))
            .add_service(SnapshotServiceServer::new(snapshots::SnapshotApi {
                volumes: vols.clone(),
                ublk: ublk_devices.clone(),
            }))
            .add_service(PolicyServiceServer::new(policies::PolicyApi {
                volumes: vols.clone(),
                scheduler: scheduler.clone(),
            }))
            .add_service(MirrorServiceServer::new(mirrors::MirrorApi {
                volumes: vols.clone(),
                worker: mirrors.clone(),
            }))
            .add_service(
                // Streams carry up to 1 MiB of delta per message plus framing.
                DeltaServiceServer::new(deltas::DeltaApi::new(vols, applying.clone()))
                    .max_decoding_message_size(32 << 20)
                    .max_encoding_message_size(32 << 20),
            )
            .add_service(UblkServiceServer::new(ublk::UblkApi {
                devices: ublk_devices.clone(),
            })))
    };
    let unix_router = build(volumes.clone(), None)?;
    let tcp_task = match tcp {
        Some(tcp) => {
            let tcp_router = build(volumes, tls)?;
            let sd = shutdown.clone();
            Some(tokio::spawn(async move {
                tcp_router
                    .serve_with_incoming_shutdown(
                        tokio_stream::wrappers::TcpListenerStream::new(tcp),
                        sd.cancelled(),
                    )
                    .await
            }))
        }
        None => None,
    };
    let unix_result = unix_router
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::UnixListenerStream::new(unix),
            shutdown.cancelled(),
        )
        .await;
    let _ = std::fs::remove_file(sock);
    if let Some(task) = tcp_task {
        task.await
            .context("gRPC TCP task failed")?
            .context("gRPC TCP server failed")?;
    }
    unix_result.context("gRPC unix server failed")?;
    Ok(())
}

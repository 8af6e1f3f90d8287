//! Serves Identity, Controller, GroupController, Node and SnapshotMetadata, gRPC reflection (so
//! grpcurl works without proto files) and grpc.health.v1 on the CSI unix socket.

use crate::controller::ControllerService;
use crate::csi::controller_server::ControllerServer;
use crate::csi::group_controller_server::GroupControllerServer;
use crate::csi::identity_server::IdentityServer;
use crate::csi::node_server::NodeServer;
use crate::csi::snapshot_metadata_server::SnapshotMetadataServer;
use crate::group_controller::GroupControllerService;
use crate::identity::IdentityService;
use crate::node::NodeService;
use crate::snapshot_metadata::SnapshotMetadataService;
use crate::Driver;
use anyhow::Context;
use std::path::Path;

/// Binds `socket` (replacing a stale socket file a previous run left) and serves until
/// `shutdown` resolves; the socket file is removed on the way out.
pub async fn serve(
    driver: Driver,
    socket: &Path,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    match std::fs::symlink_metadata(socket) {
        Ok(m) if std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()) => {
            std::fs::remove_file(socket)
                .with_context(|| format!("cannot remove the stale socket {}", socket.display()))?
        }
        Ok(_) => anyhow::bail!(
            "{} exists and is not a socket; refusing to replace it",
            socket.display()
        ),
        Err(_) => {}
    }
    let listener = tokio::net::UnixListener::bind(socket)
        .with_context(|| format!("cannot listen on {}", socket.display()))?;
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_serving::<IdentityServer<IdentityService>>()
        .await;
    reporter
        .set_serving::<ControllerServer<ControllerService>>()
        .await;
    reporter
        .set_serving::<GroupControllerServer<GroupControllerService>>()
        .await;
    reporter.set_serving::<NodeServer<NodeService>>().await;
    reporter
        .set_serving::<SnapshotMetadataServer<SnapshotMetadataService>>()
        .await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::CSI_FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("cannot build the reflection service")?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::CSI_FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .context("cannot build the reflection service")?;
    tracing::info!(socket = %socket.display(), node = %driver.node, "serving CSI");
    let result = tonic::transport::Server::builder()
        .trace_fn(|req| tracing::info_span!("csi", method = %req.uri().path()))
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(IdentityServer::new(IdentityService(driver.clone())))
        .add_service(ControllerServer::new(ControllerService(driver.clone())))
        .add_service(SnapshotMetadataServer::new(SnapshotMetadataService(
            driver.clone(),
        )))
        .add_service(GroupControllerServer::new(GroupControllerService(
            driver.clone(),
        )))
        .add_service(NodeServer::new(NodeService(driver)))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::UnixListenerStream::new(listener),
            shutdown,
        )
        .await;
    let _ = std::fs::remove_file(socket);
    result.context("CSI server failed")
}

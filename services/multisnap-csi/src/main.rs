//! multisnap-csi: the Kubernetes CSI driver of one node. See docs/CSI.md.

use anyhow::Context;
use clap::Parser;
use multisnap_csi::{
    agent::Agent, identity, ids::NodeName, inflight::InFlight, peer::Peers, retire, server, Driver,
};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Parser, Debug)]
#[command(name = "multisnap-csi", version = multisnap_csi::VERSION, about = "multisnap's Kubernetes CSI driver (Identity, Controller and Node on one socket)")]
struct Args {
    /// Where to serve CSI: a path or unix:///path.
    #[arg(long, env = "CSI_ENDPOINT", default_value = "/csi/csi.sock")]
    csi_socket: String,
    /// The agent's gRPC unix socket (the agent serves it at <data-dir>/grpc.sock).
    #[arg(
        long,
        env = "AGENT_SOCKET",
        default_value = "/var/lib/multisnap/grpc.sock"
    )]
    agent_socket: PathBuf,
    /// This node's name (Kubernetes: from the downward API, spec.nodeName).
    #[arg(long, env = "NODE_NAME")]
    node_name: String,
    /// The CSI driver name (CSIDriver object, StorageClass provisioner).
    #[arg(long, env = "DRIVER_NAME", default_value = "csi.multisnap.dev")]
    driver_name: String,
    /// The agent's NBD unix socket, for the kernel NBD client where ublk is missing.
    #[arg(
        long,
        env = "NBD_SOCKET",
        default_value = "/var/lib/multisnap/nbd.sock"
    )]
    nbd_socket: PathBuf,
    /// Where other nodes' agents serve gRPC on TCP, with {node} for the node name, e.g.
    /// https://{node}:50052. Set, a volume restored from another node's snapshot is pulled
    /// here; unset, such a restore is refused and the scheduler tries the snapshot's node.
    #[arg(long, env = "PEER_AGENT_ENDPOINT")]
    peer_agent_endpoint: Option<String>,
    /// PEM file: the CA that signed the other agents' server certificates (https endpoints).
    #[arg(long, env = "PEER_TLS_CA")]
    peer_tls_ca: Option<PathBuf>,
    /// PEM files: this driver's client certificate and key, for agents that require mutual TLS.
    #[arg(long, env = "PEER_TLS_CERT")]
    peer_tls_cert: Option<PathBuf>,
    #[arg(long, env = "PEER_TLS_KEY")]
    peer_tls_key: Option<PathBuf>,
    /// Stream bytes per second a pull may take from the source agent; 0: no limit.
    #[arg(long, env = "PEER_BANDWIDTH_LIMIT", default_value_t = 0)]
    peer_bandwidth_limit: u64,
    /// How pulled streams are compressed: zstd (data that does not shrink is sent as is) or none.
    #[arg(long, env = "PEER_COMPRESSION", default_value = "zstd", value_parser = ["zstd", "none"])]
    peer_compression: String,
    /// Check the flags, print "ok" and exit.
    #[arg(long)]
    check_args: bool,
}

/// `unix:///path`, `unix:/path` or a plain path.
fn socket_path(endpoint: &str) -> anyhow::Result<PathBuf> {
    let path = match endpoint.strip_prefix("unix:") {
        Some(rest) => rest.strip_prefix("//").unwrap_or(rest),
        None if endpoint.contains("://") => {
            anyhow::bail!("CSI endpoint {endpoint:?}: only unix sockets are served")
        }
        None => endpoint,
    };
    anyhow::ensure!(
        !path.is_empty(),
        "CSI endpoint {endpoint:?} names no socket path"
    );
    Ok(PathBuf::from(path))
}

/// The peer settings, checked; None without `--peer-agent-endpoint` (TLS files alone are an
/// error: they would be silently unused).
fn peers(args: &Args) -> anyhow::Result<Option<Arc<Peers>>> {
    let Some(template) = &args.peer_agent_endpoint else {
        anyhow::ensure!(
            args.peer_tls_ca.is_none()
                && args.peer_tls_cert.is_none()
                && args.peer_tls_key.is_none(),
            "--peer-tls-* files need --peer-agent-endpoint"
        );
        return Ok(None);
    };
    let mut p = Peers::new(
        template,
        args.peer_tls_ca.clone(),
        args.peer_tls_cert.clone(),
        args.peer_tls_key.clone(),
    )
    .map_err(anyhow::Error::msg)
    .context("--peer-agent-endpoint")?;
    p.bandwidth_limit = args.peer_bandwidth_limit;
    if args.peer_compression == "none" {
        p.compression = multisnap_proto::v1::DeltaCompression::None;
    }
    Ok(Some(Arc::new(p)))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let socket = socket_path(&args.csi_socket)?;
    let node = NodeName::parse(&args.node_name)
        .map_err(anyhow::Error::msg)
        .context("--node-name")?;
    identity::check_driver_name(&args.driver_name)
        .map_err(anyhow::Error::msg)
        .context("--driver-name")?;
    if node.as_str().len() > multisnap_csi::ids::MAX_NODE_FOR_SHORT_IDS {
        eprintln!(
            "warning: node name {node} is longer than {} bytes: volume and snapshot ids will exceed CSI's 128-byte limit for strings (Kubernetes accepts them)",
            multisnap_csi::ids::MAX_NODE_FOR_SHORT_IDS
        );
    }
    let peers = peers(&args)?;
    if args.check_args {
        println!("ok");
        return Ok(());
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, not in container logs or files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let driver = Driver {
            name: args.driver_name,
            node,
            agent: Agent::new(&args.agent_socket),
            inflight: InFlight::default(),
            nbd_socket: args.nbd_socket,
            peers,
            pulls: Default::default(),
        };
        // Finish deletions of retired volumes that a crash interrupted; an agent that is not
        // up yet is swept on the next DeleteSnapshot instead.
        match retire::sweep(&driver.agent).await {
            Ok(n) => tracing::info!(reaped = n, "retired volumes swept"),
            Err(e) => tracing::warn!(error = %e, "retired volumes not swept (agent unavailable?)"),
        }
        let shutdown = async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            tracing::info!("shutting down");
        };
        server::serve(driver, &socket, shutdown).await
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(
            socket_path("unix:///csi/csi.sock").unwrap(),
            PathBuf::from("/csi/csi.sock")
        );
        assert_eq!(
            socket_path("unix:/csi/csi.sock").unwrap(),
            PathBuf::from("/csi/csi.sock")
        );
        assert_eq!(
            socket_path("/csi/csi.sock").unwrap(),
            PathBuf::from("/csi/csi.sock")
        );
        assert!(socket_path("tcp://1.2.3.4:5").is_err());
        assert!(socket_path("unix://").is_err());
    }
}

//! Other nodes' agents, reached over TCP (TLS or mutual TLS where configured) to pull a
//! snapshot for a restore on this node. The address comes from a template with a `{node}`
//! placeholder, so one setting covers every node of a cluster.

use crate::ids::NodeName;
use multisnap_proto::v1 as pb;
use std::path::PathBuf;
use std::time::Duration;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Uri};

/// How long a connection attempt may take; the delta stream itself has no deadline (a large
/// volume streams for as long as it takes), the HTTP/2 keepalive notices a peer that is gone.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const KEEPALIVE: Duration = Duration::from_secs(10);

/// Where the source node's agent listens, and how to talk to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peers {
    /// `http://…` or `https://…`, with `{node}` standing for the node name.
    template: String,
    tls: bool,
    ca: Option<PathBuf>,
    identity: Option<(PathBuf, PathBuf)>,
    /// What each pulled stream may cost: passed to the source's ExportDelta.
    pub bandwidth_limit: u64,
    pub compression: pb::DeltaCompression,
}

/// What `{node}` stands for in the template.
pub const NODE_PLACEHOLDER: &str = "{node}";

impl Peers {
    /// Checks the settings; the error names what is wrong. The TLS files are read at every
    /// connection (renewed certificates are picked up), but must exist now.
    pub fn new(
        template: &str,
        ca: Option<PathBuf>,
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
    ) -> Result<Peers, String> {
        let tls = template.starts_with("https://");
        if !tls && !template.starts_with("http://") {
            return Err(format!(
                "peer agent endpoint {template:?}: give http://HOST:PORT or https://HOST:PORT, with {NODE_PLACEHOLDER} for the node name"
            ));
        }
        let sample = template.replace(NODE_PLACEHOLDER, "node");
        let uri: Uri = sample
            .parse()
            .map_err(|e| format!("peer agent endpoint {template:?} is not a URI: {e}"))?;
        if uri.host().is_none_or(str::is_empty) || uri.port().is_none() {
            return Err(format!(
                "peer agent endpoint {template:?} needs a host and a port"
            ));
        }
        if tls && ca.is_none() {
            return Err(format!(
                "peer agent endpoint {template:?} uses TLS: give --peer-tls-ca, the CA that signed the agents' certificates"
            ));
        }
        if !tls && (ca.is_some() || cert.is_some() || key.is_some()) {
            return Err(format!(
                "--peer-tls-* files were given but the peer agent endpoint {template:?} is not https://"
            ));
        }
        let identity = match (cert, key) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => return Err("--peer-tls-cert and --peer-tls-key go together".into()),
        };
        for p in ca.iter().chain(identity.iter().flat_map(|(c, k)| [c, k])) {
            std::fs::metadata(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
        }
        Ok(Peers {
            template: template.to_string(),
            tls,
            ca,
            identity,
            bandwidth_limit: 0,
            compression: pb::DeltaCompression::Zstd,
        })
    }

    /// The address of `node`'s agent.
    pub fn endpoint(&self, node: &NodeName) -> String {
        self.template.replace(NODE_PLACEHOLDER, node.as_str())
    }

    fn tls_config(&self, host: &str) -> Result<ClientTlsConfig, String> {
        let read =
            |p: &PathBuf| std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()));
        let mut cfg = ClientTlsConfig::new().domain_name(host.to_string());
        if let Some(ca) = &self.ca {
            cfg = cfg.ca_certificate(Certificate::from_pem(read(ca)?));
        }
        if let Some((cert, key)) = &self.identity {
            cfg = cfg.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        Ok(cfg)
    }

    /// Connects to `node`'s agent. The error is said in words, with every cause.
    pub async fn connect(&self, node: &NodeName) -> Result<Channel, String> {
        let uri = self.endpoint(node);
        let fail = |e: tonic::transport::Error| {
            multisnap_proto::connect_error(&format!("cannot connect to {uri}"), &e)
        };
        // The agent's HTTP/2 windows and frame size: a delta is neither throttled by
        // flow-control round trips nor cut into 16 KiB frames.
        let mut e = multisnap_proto::for_streams(
            Endpoint::from_shared(uri.clone())
                .map_err(fail)?
                .connect_timeout(CONNECT_TIMEOUT)
                .http2_keep_alive_interval(KEEPALIVE)
                .keep_alive_timeout(KEEPALIVE),
        );
        if self.tls {
            let host = e.uri().host().unwrap_or_default().to_string();
            e = e.tls_config(self.tls_config(&host)?).map_err(fail)?;
        }
        e.connect().await.map_err(fail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_name_the_node_and_the_settings_must_fit() {
        let p = Peers::new("http://{node}:50052", None, None, None).unwrap();
        let node = NodeName::parse("worker-2").unwrap();
        assert_eq!(p.endpoint(&node), "http://worker-2:50052");
        assert!(Peers::new("{node}:50052", None, None, None)
            .unwrap_err()
            .contains("http://"));
        assert!(Peers::new("http://{node}", None, None, None)
            .unwrap_err()
            .contains("port"));
        assert!(Peers::new("https://{node}:1", None, None, None)
            .unwrap_err()
            .contains("--peer-tls-ca"));
        assert!(
            Peers::new("http://{node}:1", Some("/ca".into()), None, None)
                .unwrap_err()
                .contains("not https")
        );
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "x").unwrap();
        assert!(
            Peers::new("https://{node}:1", Some(ca.clone()), Some(ca.clone()), None)
                .unwrap_err()
                .contains("go together")
        );
        assert!(Peers::new(
            "https://{node}:1",
            Some(dir.path().join("missing.pem")),
            None,
            None
        )
        .unwrap_err()
        .contains("missing.pem"));
        assert!(Peers::new("https://{node}:1", Some(ca), None, None).is_ok());
    }
}

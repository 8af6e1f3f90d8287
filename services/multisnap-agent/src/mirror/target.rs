//! Where a mirror sends: the target agent's gRPC address (TCP, TCP with TLS, or a unix
//! socket), the volume there, and the PEM files for TLS; and the connection to it.

use super::stream::StreamSettings;
use hyper_util::rt::TokioIo;
use std::path::PathBuf;
use std::time::Duration;
use tonic::transport::{
    Certificate, Channel, ClientTlsConfig, Endpoint as TonicEndpoint, Identity, Uri,
};

/// How long a connection attempt to the target may take; the calls themselves have no
/// deadline (a delta of a large volume streams for as long as it takes), but the HTTP/2
/// keepalive below notices a peer that went away.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const KEEPALIVE: Duration = Duration::from_secs(10);

/// The target agent's gRPC address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `http://HOST:PORT` or, with `tls`, `https://HOST:PORT`.
    Tcp {
        uri: String,
        tls: bool,
    },
    Unix(PathBuf),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Tcp { uri, .. } => f.write_str(uri),
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

impl Endpoint {
    /// Accepts `http://host:port`, `https://host:port`, a bare `host:port` (plaintext),
    /// `unix:/path` and `unix:///path`.
    pub fn parse(s: &str) -> Result<Endpoint, String> {
        if let Some(rest) = s.strip_prefix("unix:") {
            let path = rest.strip_prefix("//").unwrap_or(rest);
            if !path.starts_with('/') {
                return Err(format!(
                    "endpoint {s:?}: a unix socket needs an absolute path (unix:/path)"
                ));
            }
            return Ok(Endpoint::Unix(PathBuf::from(path)));
        }
        let (uri, tls) = if s.starts_with("https://") {
            (s.to_string(), true)
        } else if s.starts_with("http://") {
            (s.to_string(), false)
        } else if s.contains("://") {
            return Err(format!(
                "endpoint {s:?}: give http://HOST:PORT, https://HOST:PORT or unix:/path"
            ));
        } else {
            (format!("http://{s}"), false)
        };
        let parsed: Uri = uri
            .parse()
            .map_err(|e| format!("endpoint {s:?} is not a URI: {e}"))?;
        if parsed.host().is_none_or(str::is_empty) {
            return Err(format!("endpoint {s:?} has no host"));
        }
        Ok(Endpoint::Tcp { uri, tls })
    }
}

/// PEM files on this machine for a TLS endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// The CA that signed the target agent's certificate.
    pub ca: Option<PathBuf>,
    /// The client certificate and key, for a target that requires them (mutual TLS).
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// A checked mirror target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorTarget {
    pub endpoint: Endpoint,
    pub volume: String,
    pub tls: TlsFiles,
    /// Compression and bandwidth limit of the stream; not part of where it goes (setting a
    /// mirror again with other settings keeps what was replicated).
    pub stream: StreamSettings,
}

impl MirrorTarget {
    /// Checks a target as given; the error names what is wrong. The TLS files are not read
    /// here (see [`MirrorTarget::tls_config`]).
    pub fn check(endpoint: &str, volume: &str, tls: TlsFiles) -> Result<MirrorTarget, String> {
        let endpoint = Endpoint::parse(endpoint)?;
        crate::datadir::validate_volume_name(volume).map_err(|e| format!("target volume: {e}"))?;
        let is_tls = matches!(endpoint, Endpoint::Tcp { tls: true, .. });
        let any_file = tls.ca.is_some() || tls.cert.is_some() || tls.key.is_some();
        if is_tls && tls.ca.is_none() {
            return Err(format!(
                "endpoint {endpoint} uses TLS: give tls_ca_file, the CA that signed the target agent's certificate"
            ));
        }
        if !is_tls && any_file {
            return Err(format!(
                "TLS files were given but endpoint {endpoint} is not https://"
            ));
        }
        if tls.cert.is_some() != tls.key.is_some() {
            return Err("tls_cert_file and tls_key_file go together: give both or neither".into());
        }
        Ok(MirrorTarget {
            endpoint,
            volume: volume.to_string(),
            tls,
            stream: StreamSettings::default(),
        })
    }

    /// Reads the TLS files (at SetMirror, so a wrong path is refused there, and again at every
    /// connection, so renewed certificates are picked up).
    pub fn tls_config(&self) -> Result<Option<ClientTlsConfig>, String> {
        let Endpoint::Tcp { uri, tls: true } = &self.endpoint else {
            return Ok(None);
        };
        let read = |p: &PathBuf, what: &str| {
            std::fs::read(p).map_err(|e| format!("cannot read the {what} {}: {e}", p.display()))
        };
        let host = uri
            .parse::<Uri>()
            .ok()
            .and_then(|u| u.host().map(str::to_string))
            .unwrap_or_default();
        let mut cfg = ClientTlsConfig::new().domain_name(host);
        if let Some(ca) = &self.tls.ca {
            cfg = cfg.ca_certificate(Certificate::from_pem(read(ca, "TLS CA file")?));
        }
        if let (Some(cert), Some(key)) = (&self.tls.cert, &self.tls.key) {
            cfg = cfg.identity(Identity::from_pem(
                read(cert, "TLS certificate file")?,
                read(key, "TLS key file")?,
            ));
        }
        Ok(Some(cfg))
    }

    /// Connects to the target agent.
    pub async fn connect(&self) -> Result<Channel, String> {
        let tune = |e: TonicEndpoint| {
            // The same large HTTP/2 windows and frames as the server's, so a delta is not
            // throttled by flow-control round trips nor cut into 16 KiB frames.
            multisnap_proto::for_streams(
                e.connect_timeout(CONNECT_TIMEOUT)
                    .http2_keep_alive_interval(KEEPALIVE)
                    .keep_alive_timeout(KEEPALIVE),
            )
        };
        let fail = |e: tonic::transport::Error| {
            multisnap_proto::connect_error(&format!("cannot connect to {}", self.endpoint), &e)
        };
        match &self.endpoint {
            Endpoint::Tcp { uri, .. } => {
                let mut e = tune(TonicEndpoint::from_shared(uri.clone()).map_err(fail)?);
                if let Some(cfg) = self.tls_config()? {
                    e = e.tls_config(cfg).map_err(fail)?;
                }
                e.connect().await.map_err(fail)
            }
            Endpoint::Unix(path) => {
                let path = path.clone();
                // The URI only names HTTP/2's :authority, which must be a plain host name.
                tune(TonicEndpoint::from_static("http://localhost"))
                    .connect_with_connector(tower::service_fn(move |_: Uri| {
                        let path = path.clone();
                        async move {
                            let s = tokio::net::UnixStream::connect(path).await?;
                            Ok::<_, std::io::Error>(TokioIo::new(s))
                        }
                    }))
                    .await
                    .map_err(fail)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_or_say_why_not() {
        assert_eq!(
            Endpoint::parse("10.0.0.2:50051"),
            Ok(Endpoint::Tcp {
                uri: "http://10.0.0.2:50051".into(),
                tls: false
            })
        );
        assert_eq!(
            Endpoint::parse("https://dr:50051"),
            Ok(Endpoint::Tcp {
                uri: "https://dr:50051".into(),
                tls: true
            })
        );
        assert_eq!(
            Endpoint::parse("unix:///run/ms/grpc.sock"),
            Ok(Endpoint::Unix("/run/ms/grpc.sock".into()))
        );
        assert!(Endpoint::parse("unix:rel.sock")
            .unwrap_err()
            .contains("absolute"));
        assert!(Endpoint::parse("ftp://x:1")
            .unwrap_err()
            .contains("ftp://x:1"));
        assert!(Endpoint::parse("http://").is_err());
    }

    #[test]
    fn tls_files_must_fit_the_endpoint() {
        let files = |ca: bool, cert: bool, key: bool| TlsFiles {
            ca: ca.then(|| "/ca.pem".into()),
            cert: cert.then(|| "/c.pem".into()),
            key: key.then(|| "/c.key".into()),
        };
        let check = |e: &str, t: TlsFiles| MirrorTarget::check(e, "replica", t);
        assert!(check("https://h:1", files(false, false, false))
            .unwrap_err()
            .contains("tls_ca_file"));
        assert!(check("http://h:1", files(true, false, false))
            .unwrap_err()
            .contains("not https"));
        assert!(check("https://h:1", files(true, true, false))
            .unwrap_err()
            .contains("go together"));
        assert!(check("https://h:1", files(true, true, true)).is_ok());
        assert!(check("h:1", files(false, false, false)).is_ok());
        assert!(MirrorTarget::check("h:1", "../x", TlsFiles::default())
            .unwrap_err()
            .contains("target volume"));
        let missing = check("https://h:1", files(true, false, false)).unwrap();
        assert!(missing.tls_config().unwrap_err().contains("/ca.pem"));
    }
}

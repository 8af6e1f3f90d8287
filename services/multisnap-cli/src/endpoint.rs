//! Where the agent is: `http://HOST:PORT` (TCP) or `unix:/path/to/grpc.sock`.

use crate::exit::ConnectError;
use hyper_util::rt::TokioIo;
use std::path::PathBuf;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint, Uri};

#[derive(Clone, Debug, PartialEq)]
pub enum Target {
    Tcp(String),
    Unix(PathBuf),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Tcp(uri) => f.write_str(uri),
            Target::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// Accepts `http://host:port`, a bare `host:port`, `unix:/path` and `unix:///path`.
pub fn parse(s: &str) -> Result<Target, String> {
    if let Some(rest) = s.strip_prefix("unix:") {
        // unix:///p (URI form) and unix:/p both name /p; unix:p is relative to the cwd.
        let path = rest.strip_prefix("//").unwrap_or(rest);
        if path.is_empty() {
            return Err(format!("{s:?}: no socket path after unix:"));
        }
        return Ok(Target::Unix(PathBuf::from(path)));
    }
    if s.starts_with("https://") {
        return Err(format!("{s:?}: TLS is not supported; use http:// or unix:"));
    }
    let uri = if s.starts_with("http://") {
        s.to_string()
    } else {
        format!("http://{s}")
    };
    let parsed: Uri = uri
        .parse()
        .map_err(|e| format!("{s:?} is not an endpoint URI: {e}"))?;
    if parsed.host().is_none() {
        return Err(format!("{s:?} has no host"));
    }
    Ok(Target::Tcp(uri))
}

/// Connects eagerly so an unreachable agent is reported up front (exit code 7) rather than
/// as a failure of whichever call happens to come first. `timeout` bounds the connection and,
/// unless `streaming`, each call; long streams (deltas) have no per-call limit.
pub async fn connect(
    target: &Target,
    timeout: Duration,
    streaming: bool,
) -> Result<Channel, ConnectError> {
    let limits = |e: Endpoint| {
        // Larger HTTP/2 windows than the default 64 KiB, so delta streams are not throttled
        // by flow-control round trips.
        let e = multisnap_proto::for_streams(e.connect_timeout(timeout));
        if streaming {
            e
        } else {
            e.timeout(timeout)
        }
    };
    let wrap = |source| ConnectError {
        endpoint: target.to_string(),
        source,
    };
    match target {
        Target::Tcp(uri) => limits(Endpoint::from_shared(uri.clone()).map_err(wrap)?)
            .connect()
            .await
            .map_err(wrap),
        Target::Unix(path) => {
            let path = path.clone();
            // The URI is only used for HTTP/2's :authority, which must be a plain host name:
            // a socket path there is rejected by the server.
            limits(Endpoint::from_static("http://localhost"))
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        let stream = tokio::net::UnixStream::connect(path).await?;
                        Ok::<_, std::io::Error>(TokioIo::new(stream))
                    }
                }))
                .await
                .map_err(wrap)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_endpoints() {
        assert_eq!(
            parse("http://127.0.0.1:50051"),
            Ok(Target::Tcp("http://127.0.0.1:50051".into()))
        );
        assert_eq!(
            parse("localhost:1234"),
            Ok(Target::Tcp("http://localhost:1234".into()))
        );
        assert_eq!(
            parse("unix:/run/ms/grpc.sock"),
            Ok(Target::Unix("/run/ms/grpc.sock".into()))
        );
        assert_eq!(
            parse("unix:///run/ms/grpc.sock"),
            Ok(Target::Unix("/run/ms/grpc.sock".into()))
        );
        assert_eq!(
            parse("unix:data/grpc.sock"),
            Ok(Target::Unix("data/grpc.sock".into()))
        );
        assert!(parse("unix:").is_err());
        assert!(parse("https://x:1").is_err());
        assert!(parse("http://").is_err());
    }
}

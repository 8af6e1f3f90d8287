//! Metrics hook: the server reports every finished request to an optional
//! observer, so the agent can feed Prometheus histograms without this crate
//! knowing about Prometheus.

use std::time::Duration;

use crate::error::Errno;

/// Kind of a transmission-phase request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestKind {
    Read,
    Write,
    Flush,
    Trim,
    WriteZeroes,
    BlockStatus,
    Disconnect,
    Unknown,
}

impl RequestKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RequestKind::Read => "read",
            RequestKind::Write => "write",
            RequestKind::Flush => "flush",
            RequestKind::Trim => "trim",
            RequestKind::WriteZeroes => "write_zeroes",
            RequestKind::BlockStatus => "block_status",
            RequestKind::Disconnect => "disconnect",
            RequestKind::Unknown => "unknown",
        }
    }
}

/// One finished request, as reported to an [`Observer`].
#[derive(Debug, Clone)]
pub struct RequestEvent<'a> {
    pub export: &'a str,
    pub kind: RequestKind,
    /// Bytes the request covered (payload for READ/WRITE, range for others).
    pub bytes: u64,
    /// From the request header being read to the reply being queued.
    pub latency: Duration,
    /// `None` on success.
    pub error: Option<Errno>,
}

/// How a connection's handshake ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HandshakeOutcome {
    /// A session without TLS.
    Plaintext,
    /// A session inside TLS (NBD_OPT_STARTTLS).
    Tls,
    /// The TLS handshake failed (no or a wrong client certificate, a protocol mismatch).
    TlsFailed,
    /// Refused before any option: the server's connection limit was reached.
    RefusedLimit,
    /// The client left, timed out or broke the protocol before a session began.
    Abandoned,
}

impl HandshakeOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            HandshakeOutcome::Plaintext => "plaintext",
            HandshakeOutcome::Tls => "tls",
            HandshakeOutcome::TlsFailed => "tls_failed",
            HandshakeOutcome::RefusedLimit => "refused_limit",
            HandshakeOutcome::Abandoned => "abandoned",
        }
    }
}

/// Receives server events. Calls happen on the request path, so keep them cheap.
pub trait Observer: Send + Sync + 'static {
    fn request_finished(&self, event: &RequestEvent<'_>);
    fn connection_opened(&self, _export: &str) {}
    fn connection_closed(&self, _export: &str) {}
    /// Once per accepted connection, when its handshake ends.
    fn handshake_finished(&self, _outcome: HandshakeOutcome) {}
}

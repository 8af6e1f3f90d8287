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

/// Receives server events. Calls happen on the request path, so keep them cheap.
pub trait Observer: Send + Sync + 'static {
    fn request_finished(&self, event: &RequestEvent<'_>);
    fn connection_opened(&self, _export: &str) {}
    fn connection_closed(&self, _export: &str) {}
}

//! The server's tunables, shared by the listeners, the handshake and the
//! transmission phase.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::observer::Observer;

/// Tunables of a server. `Default` gives values suitable for production.
#[derive(Clone)]
pub struct ServerConfig {
    /// Largest READ/WRITE payload accepted (and advertised as the maximum
    /// block size); bigger reads get EINVAL, bigger writes close the
    /// connection. 32 MiB by default, like other NBD servers.
    pub max_payload: u32,
    /// Requests accepted at once per connection: queued for a worker,
    /// running, or waiting for their reply to be written.
    pub max_in_flight: usize,
    /// Worker threads per connection that run requests against the export
    /// (started only when a request would otherwise wait; at most
    /// `max_in_flight`). A blocked backend call occupies one worker, so this
    /// is the number of backend calls a connection can have running at once.
    pub workers_per_connection: usize,
    /// Payload bytes buffered at once per connection (raised to at least
    /// `max_payload`).
    pub max_in_flight_bytes: u32,
    /// Time a client gets to pick an export; `None` waits forever.
    pub handshake_timeout: Option<Duration>,
    /// After shutdown, how long connections get to finish in-flight requests
    /// before they are cut.
    pub shutdown_grace: Duration,
    pub observer: Option<Arc<dyn Observer>>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_payload: 32 * 1024 * 1024,
            max_in_flight: 64,
            // As many as requests in flight: a write that pays a copy-on-write waits in the
            // store's group commit, and a commit covers only the writes waiting at once, so
            // fewer workers than the client's queue depth shrink every commit (measured: 8
            // workers halved 4 KiB first writes at iodepth 32, docs/BENCHMARKS.md, History, 2026-11-25).
            // Workers start on demand, so a fast backend never uses more than a few.
            workers_per_connection: 64,
            max_in_flight_bytes: 256 * 1024 * 1024,
            handshake_timeout: Some(Duration::from_secs(60)),
            shutdown_grace: Duration::from_secs(30),
            observer: None,
        }
    }
}

impl fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerConfig")
            .field("max_payload", &self.max_payload)
            .field("max_in_flight", &self.max_in_flight)
            .field("workers_per_connection", &self.workers_per_connection)
            .field("max_in_flight_bytes", &self.max_in_flight_bytes)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("observer", &self.observer.is_some())
            .finish()
    }
}

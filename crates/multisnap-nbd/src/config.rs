//! The server's tunables, shared by the listeners, the handshake and the
//! transmission phase.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::observer::Observer;
use crate::tls::NbdTls;

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
    /// Once a client has sent the first byte of a request, time it gets to send the rest of
    /// the header and any WRITE payload; also the time a batch of replies may wait for the
    /// client to read them. A connection idle between requests is never cut. `None` waits
    /// forever.
    pub request_timeout: Option<Duration>,
    /// Connections served at once, shared by every listener given a clone of this config.
    /// Beyond it, a client is answered NBD_REP_ERR_POLICY (with the reason) to every option.
    pub connections: Arc<ConnectionSlots>,
    /// After shutdown, how long connections get to finish in-flight requests
    /// before they are cut.
    pub shutdown_grace: Duration,
    /// NBD over TLS (NBD_OPT_STARTTLS): the certificate, the optional client CA and whether
    /// TCP and unix-socket clients may, must or cannot upgrade. `None`: no TLS anywhere.
    pub tls: Option<NbdTls>,
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
            request_timeout: Some(Duration::from_secs(60)),
            connections: Arc::new(ConnectionSlots::new(DEFAULT_MAX_CONNECTIONS)),
            shutdown_grace: Duration::from_secs(30),
            tls: None,
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
            .field("request_timeout", &self.request_timeout)
            .field("max_connections", &self.connections.max())
            .field("shutdown_grace", &self.shutdown_grace)
            .field("tls", &self.tls)
            .field("observer", &self.observer.is_some())
            .finish()
    }
}

/// Connections a server accepts at once unless told otherwise.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

/// A count of connections in service against a maximum, shared by listeners.
#[derive(Debug)]
pub struct ConnectionSlots {
    max: usize,
    in_use: AtomicUsize,
}

impl ConnectionSlots {
    pub fn new(max: usize) -> ConnectionSlots {
        ConnectionSlots {
            max,
            in_use: AtomicUsize::new(0),
        }
    }

    pub fn max(&self) -> usize {
        self.max
    }

    pub fn in_use(&self) -> usize {
        self.in_use.load(Ordering::Relaxed)
    }

    /// A slot held until the returned guard drops, or `None` when all are taken.
    pub fn try_take(self: &Arc<Self>) -> Option<ConnectionSlot> {
        self.in_use
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()
            .map(|_| ConnectionSlot(self.clone()))
    }
}

/// One connection's place among [`ConnectionSlots`].
#[derive(Debug)]
pub struct ConnectionSlot(Arc<ConnectionSlots>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.in_use.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_shared_and_given_back() {
        let slots = Arc::new(ConnectionSlots::new(2));
        let a = slots.try_take().unwrap();
        let shared = slots.clone();
        let b = shared.try_take().unwrap();
        assert!(slots.try_take().is_none());
        assert_eq!(slots.in_use(), 2);
        drop(a);
        let c = slots.try_take().unwrap();
        drop((b, c));
        assert_eq!(slots.in_use(), 0);
    }
}

//! NBD server (fixed newstyle) for multisnap, independent of the store.
//!
//! Job: serve block exports to NBD clients (qemu, libnbd, the kernel) over
//! TCP or unix sockets, optionally over TLS ([`NbdTls`]). A backend plugs in through two blocking traits,
//! [`ExportProvider`] (which exports exist) and [`Export`] (I/O on one);
//! [`serve_tcp`] / [`serve_unix`] run the server until a
//! [`CancellationToken`](tokio_util::sync::CancellationToken) fires.
//!
//! Invariants:
//! - No client input can panic the server or make it allocate more than the
//!   configured limits: options are capped at 64 KiB, READ/WRITE payloads at
//!   `ServerConfig::max_payload`, and in-flight work per connection at
//!   `max_in_flight` requests and `max_in_flight_bytes` bytes.
//! - A reply to a write is sent only after the backend call returned; a
//!   FLUSH therefore covers every write acknowledged before it was sent (see
//!   `transmission`).
//! - Replies are written by one task per connection, whole, so out-of-order
//!   replies never interleave on the wire.
//! - Requests outside the export, with unknown flags, or unknown commands get
//!   an error reply (EINVAL, ENOSPC for writes past the end, EPERM for writes
//!   to read-only exports); only a bad magic or an unskippable oversized
//!   WRITE payload closes the connection.
//! - On shutdown the server stops accepting, finishes in-flight requests,
//!   sends their replies, and returns.

mod config;
mod error;
mod export;
pub mod handshake;
mod observer;
pub mod proto;
mod server;
mod tls;
pub mod transmission;

#[cfg(feature = "testing")]
pub mod testing;

pub use config::{ConnectionSlots, ServerConfig, DEFAULT_MAX_CONNECTIONS};
pub use error::{Errno, NbdError};
pub use export::{
    BlockSizes, ContextExtent, Export, ExportInfo, ExportListing, ExportProvider, Extent, Fua,
    ZeroMode,
};
pub use observer::{HandshakeOutcome, Observer, RequestEvent, RequestKind};
pub use server::{serve_connection, serve_tcp, serve_unix};
pub use tls::{NbdTls, TlsPolicy, TlsSetupError};
pub use tokio_util::sync::CancellationToken;

//! The crate's one error type and the error values it becomes on the wire.
//! Backend failures and protocol violations share it so that every path ends
//! in a single `errno()` mapping, and `Errno` sits beside it so the mapping
//! and its codomain are read together.

/// NBD error values allowed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Errno(pub u32);

impl Errno {
    pub const EPERM: Errno = Errno(1);
    pub const EIO: Errno = Errno(5);
    pub const ENOMEM: Errno = Errno(12);
    pub const EINVAL: Errno = Errno(22);
    pub const ENOSPC: Errno = Errno(28);
    pub const EOVERFLOW: Errno = Errno(75);
    pub const ENOTSUP: Errno = Errno(95);
    pub const ESHUTDOWN: Errno = Errno(108);
}

/// Everything that can go wrong serving NBD, from a bad client byte to a
/// failed disk read in the backend.
#[derive(Debug, thiserror::Error)]
pub enum NbdError {
    // --- Backend / export errors (reported to the client, connection stays up) ---
    #[error("export {name:?} does not exist")]
    ExportNotFound { name: String },
    #[error("no export name given and the server has no default export")]
    NoDefaultExport,
    #[error("export {export:?} is read-only")]
    ReadOnly { export: String },
    #[error("{op} of {len} bytes at offset {offset} is outside the export (size {size})")]
    OutOfRange {
        op: &'static str,
        offset: u64,
        len: u64,
        size: u64,
    },
    #[error(
        "{op} of {len} bytes at offset {offset} goes past the end of the export (size {size})"
    )]
    WritePastEnd {
        op: &'static str,
        offset: u64,
        len: u64,
        size: u64,
    },
    #[error("request length {len} exceeds the maximum payload of {max} bytes")]
    TooLarge { len: u64, max: u64 },
    #[error("invalid request: {reason}")]
    InvalidRequest { reason: String },
    #[error("{op} is not supported by this export")]
    Unsupported { op: &'static str },
    #[error("no space left for {op} at offset {offset}")]
    NoSpace { op: &'static str, offset: u64 },
    #[error("out of memory during {op}")]
    OutOfMemory { op: &'static str },
    #[error("I/O error during {op} at offset {offset}: {source}")]
    Io {
        op: &'static str,
        offset: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("server is shutting down")]
    ShuttingDown,
    #[error("backend task for {op} failed: {reason}")]
    BackendPanicked { op: &'static str, reason: String },

    // --- Protocol violations (the connection is closed) ---
    #[error("bad {what} magic {found:#x}")]
    BadMagic { what: &'static str, found: u64 },
    #[error("client sent unknown flags {flags:#x}")]
    UnknownClientFlags { flags: u32 },
    #[error("malformed {what}: {reason}")]
    Malformed {
        what: &'static str,
        reason: &'static str,
    },
    #[error("option {option} carries {len} bytes, more than the {max} byte limit")]
    OptionTooLarge { option: u32, len: u32, max: u32 },
    #[error("write payload of {len} bytes exceeds the {max} byte limit; cannot resync")]
    PayloadTooLarge { len: u32, max: u32 },
    #[error("client did not finish the handshake in time")]
    HandshakeTimeout,
    /// A client began a request (or stopped reading replies) and did not go on within the
    /// request timeout; the connection is closed so it cannot hold its resources forever.
    #[error("client stalled {what} for more than {secs} s")]
    ClientStalled { what: &'static str, secs: u64 },
    /// NBD_OPT_EXPORT_NAME before TLS on a listener that requires TLS: that option has no
    /// error reply, so the spec has the server close the connection.
    #[error("client chose an export with NBD_OPT_EXPORT_NAME before starting the TLS this listener requires")]
    TlsRequired,
    /// The TLS handshake after NBD_OPT_STARTTLS failed (no or an untrusted client
    /// certificate, no common cipher, a plaintext client); the spec has the server close.
    #[error("TLS handshake failed: {0}")]
    TlsHandshake(#[source] std::io::Error),
    #[error("connection I/O failed: {0}")]
    Connection(#[from] std::io::Error),
}

impl NbdError {
    /// The NBD error value sent to the client for this error.
    pub fn errno(&self) -> Errno {
        match self {
            NbdError::ReadOnly { .. } => Errno::EPERM,
            NbdError::OutOfRange { .. }
            | NbdError::InvalidRequest { .. }
            | NbdError::ExportNotFound { .. }
            | NbdError::NoDefaultExport
            | NbdError::Malformed { .. }
            | NbdError::BadMagic { .. }
            | NbdError::UnknownClientFlags { .. }
            | NbdError::OptionTooLarge { .. }
            | NbdError::PayloadTooLarge { .. }
            | NbdError::TooLarge { .. } => Errno::EINVAL,
            NbdError::Unsupported { .. } => Errno::ENOTSUP,
            NbdError::NoSpace { .. } | NbdError::WritePastEnd { .. } => Errno::ENOSPC,
            NbdError::OutOfMemory { .. } => Errno::ENOMEM,
            NbdError::ShuttingDown => Errno::ESHUTDOWN,
            NbdError::Io { source, .. } => errno_from_io(source),
            NbdError::BackendPanicked { .. }
            | NbdError::HandshakeTimeout
            | NbdError::ClientStalled { .. }
            | NbdError::TlsRequired
            | NbdError::TlsHandshake(_)
            | NbdError::Connection(_) => Errno::EIO,
        }
    }
}

/// Maps OS errors the way the spec asks: EDQUOT/EFBIG become ENOSPC, EROFS
/// becomes EPERM, anything unknown is EIO.
fn errno_from_io(e: &std::io::Error) -> Errno {
    match e.raw_os_error() {
        Some(1) | Some(30) => Errno::EPERM,               // EPERM, EROFS
        Some(28) | Some(27) | Some(122) => Errno::ENOSPC, // ENOSPC, EFBIG, EDQUOT
        Some(12) => Errno::ENOMEM,
        Some(22) => Errno::EINVAL,
        Some(75) => Errno::EOVERFLOW,
        Some(95) => Errno::ENOTSUP,
        Some(108) => Errno::ESHUTDOWN,
        _ => Errno::EIO,
    }
}

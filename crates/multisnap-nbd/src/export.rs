//! The two traits a storage backend implements to be served over NBD.
//!
//! Both are blocking: the server calls the I/O methods of `Export` from the
//! connection's worker threads and everything used during the handshake
//! from tokio's blocking pool, never from an async task, so an
//! implementation may do synchronous disk I/O freely.

use std::sync::Arc;

use crate::error::NbdError;

/// Whether a write must be durable before it is acknowledged (NBD's FUA).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fua(pub bool);

/// What NBD_CMD_WRITE_ZEROES allows the backend to do with the range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZeroMode {
    /// The backend may deallocate (punch a hole), as long as it reads back as zeroes.
    MayTrim,
    /// The client sent NBD_CMD_FLAG_NO_HOLE: the range must stay allocated.
    NoHole,
}

/// Block size constraints advertised with NBD_INFO_BLOCK_SIZE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockSizes {
    /// Power of two, 1..=64 KiB.
    pub min: u32,
    /// Power of two, at least `min`.
    pub preferred: u32,
    /// Largest READ/WRITE payload accepted; a multiple of `min`.
    pub max: u32,
}

impl Default for BlockSizes {
    fn default() -> Self {
        BlockSizes {
            min: 1,
            preferred: 4096,
            max: 32 * 1024 * 1024,
        }
    }
}

/// Fixed facts about an opened export; read once when a client selects it
/// (the size cannot change during an NBD session).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportInfo {
    pub size: u64,
    pub read_only: bool,
    /// True only if FLUSH and FUA on one connection make data durable and
    /// visible for every other connection to the same export.
    pub multi_conn: bool,
    pub block_sizes: BlockSizes,
    /// If true, structured READ replies ask `block_status` first and send
    /// ranges the export reports as reading zero as NBD_REPLY_TYPE_OFFSET_HOLE.
    pub sparse_reads: bool,
}

/// One run of bytes with the same `base:allocation` status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub len: u64,
    /// Not allocated in the backing store.
    pub hole: bool,
    /// Known to read as zeroes.
    pub zero: bool,
}

/// One run of bytes in an export-defined metadata context; `flags` are
/// that context's own bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContextExtent {
    pub len: u64,
    pub flags: u32,
}

/// A block device served to NBD clients. All methods may block.
///
/// Contract the server relies on:
/// - offsets and lengths passed in are already checked to lie within `size`;
/// - `flush` makes durable every write/trim/write_zeroes that has *returned*
///   before `flush` was called (the server only acknowledges a write after
///   its method returned, so this covers every write the client saw
///   acknowledged before it sent FLUSH);
/// - with `Fua(true)`, the method returns only once its data is durable.
pub trait Export: Send + Sync + 'static {
    fn info(&self) -> ExportInfo;
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), NbdError>;
    fn write(&self, offset: u64, data: &[u8], fua: Fua) -> Result<(), NbdError>;
    fn flush(&self) -> Result<(), NbdError>;
    /// A hint that the range is no longer needed; may do nothing.
    fn trim(&self, offset: u64, len: u64, fua: Fua) -> Result<(), NbdError>;
    fn write_zeroes(&self, offset: u64, len: u64, mode: ZeroMode, fua: Fua)
        -> Result<(), NbdError>;
    /// `base:allocation` status of `offset..offset+len`, in order from
    /// `offset`. May cover less than `len` (the client asks again), must
    /// not cover more; an empty result is reported as one "allocated,
    /// contents unknown" extent.
    fn block_status(&self, offset: u64, len: u64) -> Result<Vec<Extent>, NbdError>;

    /// Names of extra metadata contexts (e.g. `multisnap:changed:BASE`)
    /// this export can answer, beyond `base:allocation`. The server offers
    /// them to NBD_OPT_LIST/SET_META_CONTEXT queries by exact name or by
    /// namespace prefix (`multisnap:`).
    fn meta_contexts(&self) -> Vec<String> {
        Vec::new()
    }

    /// Status in one of the contexts named by `meta_contexts`.
    fn context_status(
        &self,
        context: &str,
        offset: u64,
        len: u64,
    ) -> Result<Vec<ContextExtent>, NbdError> {
        let _ = (context, offset, len);
        Err(NbdError::Unsupported {
            op: "metadata context",
        })
    }
}

/// One entry of NBD_OPT_LIST.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportListing {
    pub name: String,
    pub description: Option<String>,
}

/// The set of exports a server offers. May block.
pub trait ExportProvider: Send + Sync + 'static {
    fn list(&self) -> Result<Vec<ExportListing>, NbdError>;
    /// The export an empty name selects, if any.
    fn default_export(&self) -> Option<String> {
        None
    }
    /// Opens `name`; an unknown name must be `NbdError::ExportNotFound`.
    fn open(&self, name: &str) -> Result<Arc<dyn Export>, NbdError>;
    /// Human-readable description sent with NBD_INFO_DESCRIPTION.
    fn description(&self, name: &str) -> Option<String> {
        self.list()
            .ok()?
            .into_iter()
            .find(|l| l.name == name)
            .and_then(|l| l.description)
    }
}

//! The store's error type: each variant says what happened to what.

use crate::ids::{MetaBlock, SnapshotId};
use std::io;

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("I/O error on the {device} device at byte {offset} ({len} bytes): {source}")]
    Io {
        device: &'static str,
        offset: u64,
        len: usize,
        #[source]
        source: io::Error,
    },

    #[error("I/O error flushing the {device} device: {source}")]
    Flush {
        device: &'static str,
        #[source]
        source: io::Error,
    },

    #[error("not a multisnap store: no multisnap superblock magic at the start of the file")]
    NotAStore,

    #[error("store format version {found} is newer than this build understands (it reads version {supported}); upgrade multisnap")]
    UnsupportedVersion { found: u32, supported: u32 },

    #[error(
        "neither superblock copy is valid (both fail their checksum or sanity checks): {detail}"
    )]
    NoValidSuperblock { detail: String },

    #[error(
        "store is truncated: the superblock says {expected} bytes but the device holds {found}"
    )]
    Truncated { expected: u64, found: u64 },

    #[error("store belongs to a different origin: {detail}")]
    OriginMismatch { detail: String },

    #[error("corrupt {block}: {reason}")]
    CorruptNode { block: MetaBlock, reason: String },

    #[error("corrupt allocator bitmap block {index} (at {block}): {reason}")]
    CorruptBitmap {
        index: u64,
        block: MetaBlock,
        reason: String,
    },

    #[error("invalid store geometry: {0}")]
    InvalidGeometry(String),

    #[error("range {offset}+{len} is outside the volume of {size} bytes")]
    OutOfRange { offset: u64, len: u64, size: u64 },

    #[error("store is full: {needed} more chunk(s) of {chunk_size} bytes needed to preserve snapshot data, {free} free")]
    StoreFull {
        needed: u64,
        free: u64,
        chunk_size: u32,
    },

    #[error("no snapshot named {0:?}")]
    SnapshotNotFound(String),

    #[error("no snapshot with id {0}")]
    SnapshotIdNotFound(SnapshotId),

    #[error("a snapshot named {0:?} already exists")]
    SnapshotExists(String),

    #[error("invalid snapshot name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },

    #[error("{0} is read-only; create it writable or make it writable first")]
    SnapshotReadOnly(SnapshotId),

    #[error("{what} is not supported: {why}")]
    Unsupported {
        what: &'static str,
        why: &'static str,
    },

    #[error("a delta apply into snapshot {name:?} is already in progress on this volume; resume or abort it first")]
    ReceiveInProgress { name: String },

    #[error("no delta apply is in progress on this volume")]
    NoReceive,

    #[error("the delta apply into snapshot {name:?} passed its commit point and is being completed; it can no longer be aborted")]
    ReceiveCommitted { name: String },

    #[error("this volume is a replica of volume {expected}; a delta of volume {found} cannot be applied to it")]
    ReplicaOfOther { expected: String, found: String },

    #[error("the volume's origin changed in {chunks} chunk(s) since base snapshot {base:?}, so the delta would not recreate its target; apply into a volume left untouched since that snapshot")]
    OriginDiverged { base: String, chunks: u64 },

    #[error("a full delta needs an empty volume, but this volume's origin holds data; create a new volume to receive it")]
    OriginNotEmpty,

    #[error("base snapshot {0:?} was written to locally, so it no longer matches the source")]
    BaseModified(String),

    #[error("invalid staged data: {0}")]
    BadStage(String),

    #[error("the store stopped accepting changes after an earlier failure ({0}); reopen it")]
    Poisoned(String),
}

impl StoreError {
    pub(crate) fn io(device: &'static str, offset: u64, len: usize, source: io::Error) -> Self {
        StoreError::Io {
            device,
            offset,
            len,
            source,
        }
    }

    /// The POSIX errno a block-device frontend should report for this error.
    pub fn errno(&self) -> i32 {
        match self {
            StoreError::StoreFull { .. } => libc::ENOSPC,
            StoreError::OutOfRange { .. } | StoreError::InvalidName { .. } => libc::EINVAL,
            StoreError::SnapshotReadOnly(_) => libc::EPERM,
            _ => libc::EIO,
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

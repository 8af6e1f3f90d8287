//! The store's error type: each variant says what happened to what.

use crate::ids::{MetaBlock, SnapshotId, VolumeUuid};
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

    #[error("volume {0} is named more than once in a group snapshot")]
    GroupMemberTwice(VolumeUuid),

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
    ReplicaOfOther {
        expected: VolumeUuid,
        found: VolumeUuid,
    },

    #[error("the volume's origin changed in {chunks} chunk(s) since base snapshot {base:?}, so the delta would not recreate its target; apply into a volume left untouched since that snapshot")]
    OriginDiverged { base: String, chunks: u64 },

    #[error("a full delta needs an empty volume, but this volume's origin holds data; create a new volume to receive it")]
    OriginNotEmpty,

    #[error("base snapshot {0:?} was written to locally, so it no longer matches the source")]
    BaseModified(String),

    #[error("invalid staged data: {0}")]
    BadStage(String),

    #[error("volume is {current} bytes and can only grow: a resize to {requested} bytes would shrink it")]
    ShrinkRefused { current: u64, requested: u64 },

    #[error("volume cannot grow to {requested} bytes: {limit}")]
    GrowthLimit { requested: u64, limit: String },
    #[error("the volume is being rolled back to snapshot {target:?} ({cursor} of {chunks} chunks merged into the origin); {what} must wait until that merge ends")]
    MergeInProgress {
        target: String,
        cursor: u64,
        chunks: u64,
        what: &'static str,
    },

    #[error("snapshot {0:?} is writable, so its contents may still change; make it read-only before rolling the volume back to it")]
    RevertToWritable(String),

    #[error("snapshot {snapshot:?} is the source of clone {clone:?}, which is still hydrating from it; {what} must wait until the clone's hydration ends (or the clone is deleted)")]
    HeldByClone {
        snapshot: String,
        clone: String,
        what: &'static str,
    },

    #[error("snapshot {0:?} is writable, so its contents may still change; make it read-only before cloning it")]
    CloneOfWritable(String),

    #[error("the volume is a clone still hydrating from snapshot {snapshot} of volume {source_volume} ({cursor} of {chunks} chunks copied); {what} must wait until the hydration ends")]
    HydrationInProgress {
        source_volume: VolumeUuid,
        snapshot: u64,
        cursor: u64,
        chunks: u64,
        what: &'static str,
    },

    #[error("the clone's source, snapshot {snapshot} of volume {source_volume}, is not available: {why}")]
    CloneSourceMissing {
        source_volume: VolumeUuid,
        snapshot: u64,
        why: String,
    },

    #[error("the store stopped accepting changes after an earlier failure ({0}); reopen it")]
    Poisoned(String),

    #[error(
        "the volume is not failed: it takes writes and flushes, so there is nothing to reopen"
    )]
    NotFailed,

    /// The store was closed for its users (its volume deleted) while a frontend still held it.
    #[error("{0}")]
    Closed(String),
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

    /// What kind of failure this is, for a frontend choosing the code its protocol reports.
    ///
    /// Every variant is listed (no wildcard), so a new variant is classified where it is
    /// added; a new kind then fails to compile in every frontend's table until it is mapped.
    pub fn kind(&self) -> ErrorKind {
        match self {
            StoreError::Io { source, .. } | StoreError::Flush { source, .. } => {
                io_error_kind(source)
            }
            StoreError::NotAStore
            | StoreError::UnsupportedVersion { .. }
            | StoreError::NoValidSuperblock { .. }
            | StoreError::Truncated { .. }
            | StoreError::OriginMismatch { .. }
            | StoreError::CorruptNode { .. }
            | StoreError::CorruptBitmap { .. } => ErrorKind::Corrupt,
            StoreError::InvalidGeometry(_)
            | StoreError::OutOfRange { .. }
            | StoreError::InvalidName { .. }
            | StoreError::GroupMemberTwice(_)
            | StoreError::BadStage(_) => ErrorKind::InvalidArgument,
            StoreError::StoreFull { .. } => ErrorKind::NoSpace,
            StoreError::ShrinkRefused { .. } | StoreError::GrowthLimit { .. } => {
                ErrorKind::OutOfRange
            }
            StoreError::SnapshotNotFound(_) | StoreError::SnapshotIdNotFound(_) => {
                ErrorKind::NotFound
            }
            StoreError::SnapshotExists(_) => ErrorKind::AlreadyExists,
            StoreError::SnapshotReadOnly(_) => ErrorKind::ReadOnly,
            StoreError::Unsupported { .. }
            | StoreError::ReceiveInProgress { .. }
            | StoreError::NoReceive
            | StoreError::ReceiveCommitted { .. }
            | StoreError::ReplicaOfOther { .. }
            | StoreError::OriginDiverged { .. }
            | StoreError::OriginNotEmpty
            | StoreError::BaseModified(_)
            | StoreError::MergeInProgress { .. }
            | StoreError::RevertToWritable(_)
            | StoreError::HeldByClone { .. }
            | StoreError::CloneOfWritable(_)
            | StoreError::HydrationInProgress { .. }
            | StoreError::NotFailed => ErrorKind::FailedPrecondition,
            StoreError::Poisoned(_)
            | StoreError::Closed(_)
            | StoreError::CloneSourceMissing { .. } => ErrorKind::Unavailable,
        }
    }
}

/// A device error is `NoSpace` when the host ran out of room under a sparse origin or store
/// file (the same errnos NBD's spec folds into ENOSPC), so a client sees "no space" rather
/// than an I/O error it would treat as a failing disk.
fn io_error_kind(source: &io::Error) -> ErrorKind {
    match source.raw_os_error() {
        Some(libc::ENOSPC | libc::EDQUOT | libc::EFBIG) => ErrorKind::NoSpace,
        _ => ErrorKind::Io,
    }
}

/// A small, stable classification of [`StoreError`]s: what a client can do about the
/// failure, which is all a frontend needs to pick its protocol's code. Each frontend maps
/// these with one table and no wildcard.
///
/// Deliberately not `#[non_exhaustive]`: a new kind must fail to compile in every frontend's
/// table until that frontend decides what it means there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The named or numbered snapshot does not exist (any more).
    NotFound,
    /// A snapshot of that name exists already.
    AlreadyExists,
    /// The request itself is wrong: a range outside the volume, a bad name or geometry, bad
    /// staged data. Retrying it unchanged fails again.
    InvalidArgument,
    /// A requested size the volume cannot take: smaller than it is (volumes only grow), or
    /// beyond what its store can grow to in place. A smaller size may succeed.
    OutOfRange,
    /// No room: the store is full (copies it needs to keep snapshots whole do not fit), or
    /// the host filesystem under the origin or store file is.
    NoSpace,
    /// A write to a snapshot that is read-only.
    ReadOnly,
    /// The volume's state forbids the request now (a delta apply in progress or missing, a
    /// replica of another volume, a base changed locally); it may succeed once that changes.
    FailedPrecondition,
    /// The store stopped accepting changes after an earlier failure; reopening it recovers.
    Unavailable,
    /// What is on the device is not a store this build can use: damaged metadata, a
    /// truncated file, a foreign or newer format, another volume's origin.
    Corrupt,
    /// A device read, write or flush failed.
    Io,
}

/// Why a store stopped taking changes, and whether reopening it on its own is safe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub why: String,
    pub cause: FailureCause,
}

/// What made a store stop taking changes (see [`Failure`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureCause {
    /// A write of the journal or the store's metadata found the host filesystem full (ENOSPC,
    /// EDQUOT). The write left nothing behind (a full filesystem refuses it before it takes
    /// the data) and no flush failed, so once space returns a reopen finds the device exactly
    /// as durable as before: a caller may retry the reopen by itself.
    HostFull,
    /// Anything else: a failed flush (whose lost pages a later flush may not report), EIO, a
    /// failed commit. Only an operator, having checked the disk, should reopen.
    Device,
}

impl FailureCause {
    /// The cause a failure of `err` has.
    pub fn of(err: &StoreError) -> FailureCause {
        match err {
            StoreError::Io { source, .. }
                if matches!(source.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)) =>
            {
                FailureCause::HostFull
            }
            _ => FailureCause::Device,
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

//! # multisnap-replication
//!
//! Replication: turning the difference between two snapshots of a store into a delta stream
//! (`export`), and a delta stream into a new snapshot of a replica (`apply`). The stream format
//! is `multisnap-delta`'s; the atomicity of an apply is the store's (`Store::begin_receive` and
//! friends). This crate only maps one onto the other. `ranges` gives the same difference (or a
//! snapshot's allocation) as byte ranges without the data, for changed block tracking.
//!
//! Invariants: an export reads only the chunks the exception index says changed (or, for a
//! full stream, the allocated ones); an apply acts on a record only after the decoder verified
//! it, and publishes only after the trailer verified.

pub mod apply;
pub mod export;
pub mod ranges;
mod stager;
pub mod throttle;

use multisnap_delta::DeltaError;
use multisnap_store::StoreError;

/// What can go wrong exporting or applying a delta.
#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    #[error(transparent)]
    Delta(#[from] DeltaError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the delta's {what} is {stream}, this volume's is {volume}")]
    Geometry {
        what: &'static str,
        stream: u64,
        volume: u64,
    },
    #[error("the delta's target is the live origin, not a snapshot; apply needs a named target")]
    TargetIsOrigin,
    #[error("no resumable apply is in progress on this volume")]
    NothingToResume,
    #[error("the stream is not the one the apply in progress expects: {0}")]
    ResumeMismatch(String),
    #[error("base and target are the same snapshot {0:?}")]
    SameSnapshot(String),
    #[error("snapshot {0:?} is not ready (it is being deleted or was invalidated)")]
    NotReady(String),
    #[error("base snapshot {base:?} was taken after target {target:?}; a delta goes from an older snapshot to a newer one")]
    BaseNotOlder { base: String, target: String },
    #[error("starting offset {offset} is past the end of the snapshot ({size} bytes)")]
    OffsetPastEnd { offset: u64, size: u64 },
    #[error("the store's block map did not advance at byte {offset}")]
    MapStalled { offset: u64 },
    #[error("the receiver of the stream went away")]
    ReceiverGone,
    #[error("the apply's staging thread {0}")]
    Stager(String),
}

pub type Result<T, E = ReplicationError> = std::result::Result<T, E>;

/// A snapshot by name that can be read: READY (not being deleted, not invalidated).
pub(crate) fn ready_snapshot(
    store: &multisnap_store::Store,
    name: &str,
) -> Result<multisnap_store::SnapshotInfo> {
    let s = store.snapshot_by_name(name)?;
    if s.state != multisnap_store::SnapshotState::Ready {
        return Err(ReplicationError::NotReady(name.to_string()));
    }
    Ok(s)
}

/// Progress of a long export or apply.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    pub chunks_done: u64,
    pub chunks_total: u64,
    pub bytes: u64,
}

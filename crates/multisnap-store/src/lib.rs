//! # multisnap-store
//!
//! The shared copy-on-write exception store: one per origin volume, shared by every snapshot
//! of that volume, so an origin write copies a chunk at most once whatever the number of
//! snapshots.
//!
//! Invariants this crate keeps (and `verify` checks):
//! - **Exceptions are snapshot ranges.** `(chunk, last) -> (first, store chunk)` says snapshots
//!   `first..=last` see that chunk's old contents at that store chunk. Ranges of one chunk never
//!   overlap; a snapshot with no exception for a chunk sees the origin. Snapshot ids are u64 and
//!   never reused, so there is no limit on the number of snapshots.
//! - **Copy before overwrite.** An origin chunk is overwritten only after its old contents and
//!   their exception are durable in the store.
//! - **Crash safety by shadowing.** Committed metadata blocks are never rewritten; a commit
//!   writes new nodes and a bitmap copy, flushes, then writes the superblock into the other of
//!   two checksummed slots and flushes again. Any power cut leaves one valid generation.
//!   Commits are pipelined: the next transaction fills while one lands, so blocks the landing
//!   commit frees stay taken until it has landed, and chunks whose data is still being written
//!   are persisted as free until an exception references them.
//! - **Bounded memory.** The exception index lives on disk and is read through a node cache of
//!   configured size; only the allocator bitmap (1 bit per 4 KiB of store) and the snapshot
//!   table are held whole. A slice of the configured size remembers where snapshot reads found
//!   their chunks ([`pdata::locations`]); it is never persisted and every index change forgets the
//!   chunks it touched.
//!
//! All I/O goes through [`blockdev::BlockDev`]; with the `fault-injection` feature, the
//! [`fault`] module provides a power-cut simulator.

pub mod blockdev;
pub mod checksum;
mod covered;
pub mod direct_dev;
pub mod error;
#[cfg(any(test, feature = "fault-injection"))]
pub mod fault;
mod flush_coalescer;
pub mod format;
pub mod ids;
pub mod journal;
pub mod latency;
pub mod meta;
pub mod pdata;
pub mod store;
pub mod verify;

pub use blockdev::{BlockDev, FileDev, MemDev};
pub use direct_dev::DirectDev;
pub use error::{ErrorKind, Failure, FailureCause, StoreError};
pub use format::snapshot_record::SnapshotState;
pub use format::superblock::{FullPolicy, OriginCache};
pub use format::superblock_io::read_superblock;
pub use ids::{OriginChunk, SnapshotId, StoreChunk, VolumeUuid};
pub use latency::LatencyStats;
pub use store::{
    create_snapshot_group, is_hidden_snapshot_name, validate_snapshot_name, CloneSource,
    CreateOptions, HydrationProgress, MergeProgress, ReceivePlan, ReceiveStatus, SnapshotInfo,
    Store, StoreStats, View, VolumeView,
};
pub use verify::{verify, VerifyReport};

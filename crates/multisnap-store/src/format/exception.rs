//! The values of the two chunk-mapping trees: an exception-index entry (`(chunk, last) ->
//! (first, store chunk)`) and a private-map entry (`(snapshot, chunk) -> store chunk`, or one
//! of the two sentinels below). The node format that holds them is in [`super::node`].

use super::node::Key;
use super::*;
use crate::ids::{OriginChunk, SnapshotId, StoreChunk};

/// One exception: chunk `chunk` as snapshots `first..=last` see it lives at `store`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exception {
    pub chunk: OriginChunk,
    pub first: SnapshotId,
    pub last: SnapshotId,
    pub store: StoreChunk,
}

impl Exception {
    pub fn key(&self) -> Key {
        Key::new(self.chunk.0, self.last.0)
    }
    pub fn value(&self) -> [u8; 16] {
        let mut v = [0u8; 16];
        put_u64(&mut v, 0, self.first.0);
        put_u64(&mut v, 8, self.store.0);
        v
    }
    pub fn from_entry(key: Key, value: &[u8]) -> Exception {
        Exception {
            chunk: OriginChunk(key.hi),
            last: SnapshotId(key.lo),
            first: SnapshotId(get_u64(value, 0)),
            store: StoreChunk(get_u64(value, 8)),
        }
    }
}

/// The private-map value of a chunk a delta apply staged as "reads as zeros": no store chunk
/// is spent on it. Only `Receiving` records ever hold it.
pub const ZERO_CHUNK: StoreChunk = StoreChunk(u64::MAX);

/// The private-map value of a chunk a full-stream apply wrote straight into the origin (see
/// `store::receive`): no store chunk, only the record that the origin chunk must be zeroed
/// again if the apply is abandoned.
pub const DIRECT_CHUNK: StoreChunk = StoreChunk(u64::MAX - 1);

/// The private-map value of a merge mark (see [`MERGE_OWNER`]): no store chunk.
pub const MERGED_CHUNK: StoreChunk = StoreChunk(u64::MAX - 2);

/// The private-map owner under which a rollback in place marks the origin chunks it merged
/// ahead of its cursor (`(MERGE_OWNER, c) -> MERGED_CHUNK`). Snapshot id 0 is never issued,
/// so no snapshot's private chunks can collide with them.
pub const MERGE_OWNER: u64 = 0;

/// The private-map value of a hydration mark (see [`HYDRATE_OWNER`]): no store chunk.
pub const HYDRATED_CHUNK: StoreChunk = StoreChunk(u64::MAX - 3);

/// The private-map owner under which a clone marks the origin chunks hydrated ahead of its
/// cursor (`(HYDRATE_OWNER, c) -> HYDRATED_CHUNK`). Snapshot ids count up from 1 by one and
/// never reach it.
pub const HYDRATE_OWNER: u64 = u64::MAX;

/// Whether private-map entries of `owner` are marks of a background operation rather than a
/// snapshot's chunks.
pub fn is_mark_owner(owner: u64) -> bool {
    owner == MERGE_OWNER || owner == HYDRATE_OWNER
}

/// Whether a private-map value points at a real store chunk.
pub fn holds_store_chunk(c: StoreChunk) -> bool {
    c != ZERO_CHUNK && c != DIRECT_CHUNK && c != MERGED_CHUNK && c != HYDRATED_CHUNK
}

/// The value of a private-map entry.
pub fn private_value(chunk: StoreChunk) -> [u8; 16] {
    let mut v = [0u8; 16];
    put_u64(&mut v, 0, chunk.0);
    v
}

/// The store chunk (or sentinel) a private-map value holds.
pub fn private_chunk(value: &[u8]) -> StoreChunk {
    StoreChunk(get_u64(value, 0))
}

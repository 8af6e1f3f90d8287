//! The metadata side of a clone's hydration (`store/clone.rs` drives it): the state the
//! superblock keeps (`Meta::clone`), the marks of chunks hydrated ahead of the cursor (private
//! map entries under [`HYDRATE_OWNER`], mirrored in a bitmap), which chunks still read the
//! source, and the cursor's advance.
//!
//! A chunk *needs the source* while it lies at or past the cursor, below the end of the source
//! snapshot, and carries no mark. Every other chunk reads the clone's own origin. A mark or a
//! cursor move is committed only after the source's data is durable in the origin there.

use super::Meta;
use crate::error::Result;
use crate::format::exception::{HYDRATED_CHUNK, HYDRATE_OWNER};
use crate::format::superblock::CloneState;
use crate::ids::{OriginChunk, SnapshotId};

use super::revert::MergeMarks;

impl Meta {
    /// Origin chunks that overlap the source snapshot: the ones hydration walks.
    pub fn source_chunks(&self) -> u64 {
        self.clone.as_ref().map_or(0, |c| {
            c.source_size
                .div_ceil(u64::from(self.sb.chunk_size))
                .min(self.chunk_count())
        })
    }

    /// Loads the hydration marks of the clone in progress (on open).
    pub fn load_hydration_marks(&mut self) -> Result<()> {
        self.hydrated = MergeMarks::default();
        if self.clone.is_some() {
            self.hydrated = self.load_marks(HYDRATE_OWNER, self.source_chunks())?;
        }
        Ok(())
    }

    /// Starts a hydration (a new store, before its first commit).
    pub fn begin_clone(&mut self, state: CloneState) {
        self.sb.clone_format = true;
        self.sb.sized_snapshots = true;
        self.clone = Some(state);
        self.hydrated = MergeMarks::for_chunks(self.source_chunks());
        self.dirty = true;
    }

    /// Whether origin chunk `c` still reads the source snapshot.
    pub fn needs_source(&self, c: u64) -> bool {
        match &self.clone {
            None => false,
            Some(state) => {
                c >= state.cursor && c < self.source_chunks() && !self.hydrated.contains(c)
            }
        }
    }

    /// Marks chunk `c` as hydrated ahead of the cursor. The caller has made the origin hold the
    /// source's data there durably (or the source reads as zeros there and the origin, fresh,
    /// does too).
    pub fn mark_hydrated(&mut self, c: u64) -> Result<()> {
        if !self.needs_source(c) {
            return Ok(());
        }
        self.insert_private(SnapshotId(HYDRATE_OWNER), OriginChunk(c), HYDRATED_CHUNK)?;
        self.hydrated.set(c, true);
        Ok(())
    }

    /// Moves the cursor to `bound` (every chunk below it holds the source's data durably in
    /// the origin, or the clone's own writes) and drops the marks below it; `bytes` of source
    /// data were written for it. Returns whether the hydration has ended, which drops the
    /// clone's tie to its source.
    pub fn advance_hydration(&mut self, bound: u64, bytes: u64) -> Result<bool> {
        let Some(mut state) = self.clone.clone() else {
            return Ok(true);
        };
        let end = self.source_chunks();
        let bound = bound.min(end);
        if bound <= state.cursor && bound < end {
            return Ok(false);
        }
        for c in self.remove_marks(HYDRATE_OWNER, state.cursor, bound)? {
            self.hydrated.set(c, false);
        }
        self.dirty = true;
        if bound >= end {
            self.clone = None;
            self.hydrated = MergeMarks::default();
            return Ok(true);
        }
        state.cursor = bound;
        state.hydrated_bytes += bytes;
        self.clone = Some(state);
        Ok(false)
    }

    /// The snapshot `id` is held by a hydrating clone: the first holder's name.
    pub fn clone_holder(&self, id: u64) -> Option<&str> {
        self.clone_holds
            .get(&id)
            .and_then(|h| h.first())
            .map(String::as_str)
    }
}

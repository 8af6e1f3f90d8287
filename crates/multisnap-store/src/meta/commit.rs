//! The commit protocol (docs/FORMAT.md, "Commit protocol"): `seal` writes the open
//! transaction's nodes and bitmap copy under the metadata lock, `SealedCommit::land` flushes,
//! writes the superblock into its slot and flushes again without it, and `finish_commit` makes
//! that superblock the one in force. `Store::commit_wait` drives the three steps as a
//! pipelined group commit; `commit` runs them in one go for callers that hold the store alone.

use super::Meta;
use crate::blockdev::BlockDev;
use crate::error::{Result, StoreError};
use crate::format::superblock::Superblock;
use crate::format::superblock_io::write_superblock;
use std::time::Instant;

/// A commit whose nodes and bitmap copy are written but not yet flushed, and the superblock
/// that publishes them. Landing it needs only the store device, not the `Meta`.
#[must_use = "a sealed commit must be landed and finished"]
pub struct SealedCommit {
    sb: Superblock,
    started: Instant,
}

impl SealedCommit {
    pub fn generation(&self) -> u64 {
        self.sb.generation
    }

    /// Flush (the nodes and bitmap copy are durable), superblock into its slot, flush (the
    /// generation is durable). A cut before the second flush completes leaves the previous
    /// generation as the recovery point, whose blocks nothing has overwritten.
    pub fn land(&self, dev: &dyn BlockDev) -> Result<()> {
        dev.flush().map_err(|source| StoreError::Flush {
            device: "store",
            source,
        })?;
        write_superblock(dev, &self.sb)?;
        dev.flush().map_err(|source| StoreError::Flush {
            device: "store",
            source,
        })
    }
}

impl Meta {
    /// Makes the open transaction durable in one go (seal, land, finish): for callers that
    /// hold the store exclusively (create, open, close). `Store` pipelines the three steps so
    /// that the metadata lock is free while the flushes run.
    pub fn commit(&mut self) -> Result<()> {
        let Some(sealed) = self.seal()? else {
            return Ok(());
        };
        let dev = self.pager.dev.clone();
        let landed = sealed.land(&*dev);
        self.finish_commit(sealed, landed)
    }

    /// First step of a commit: writes the open transaction's nodes and its bitmap copy (to the
    /// device's cache, not yet flushed), captures the superblock that will publish them, and
    /// opens the next transaction, which may change the trees while this one lands (it
    /// shadows everything written here). `None` when there is nothing to commit.
    ///
    /// At most one commit may be sealed and not yet finished: the caller serialises commits
    /// (`Store`'s commit lock) because the next seal writes the other bitmap copy, chosen from
    /// the last *landed* superblock.
    pub fn seal(&mut self) -> Result<Option<SealedCommit>> {
        self.check_usable()?;
        if !self.dirty {
            return Ok(None);
        }
        let started = Instant::now();
        match self.try_seal(started) {
            Ok(sealed) => Ok(Some(sealed)),
            Err(e) => Err(self.poison(e)),
        }
    }

    fn try_seal(&mut self, started: Instant) -> Result<SealedCommit> {
        self.pager.write_dirty()?;
        self.pager.alloc.prepare_commit();
        let next_copy = 1 - self.sb.bitmap_copy;
        let copy_start = self.sb.bitmap_start + next_copy as u64 * self.sb.bitmap_blocks;
        self.pager
            .alloc
            .write_copy(&*self.pager.dev, copy_start, self.sb.bitmap_blocks)?;
        let mut sb = self.sb.clone();
        sb.generation = self.pager.generation;
        sb.bitmap_copy = next_copy;
        sb.exception_root = self.exception_root.0;
        sb.snapshot_root = self.snapshot_root.0;
        sb.private_root = self.private_root.0;
        sb.next_snapshot_id = self.next_snapshot_id;
        sb.exception_count = self.exception_count;
        sb.used_blocks = self.pager.alloc.used_blocks() - self.pager.alloc.used_in_memory_only();
        sb.copies_total = self.copies_total;
        sb.invalidated_total = self.invalidated_total;
        sb.replica_source = self.replica_source;
        sb.receive = self.receive.clone();
        sb.journal_epoch = self.journal_epoch;
        sb.revert = self.revert.clone();
        sb.clone = self.clone.clone();
        self.pager.alloc.seal_done();
        self.pager.generation += 1;
        self.dirty = false;
        Ok(SealedCommit { sb, started })
    }

    /// Last step of a commit, with what [`SealedCommit::land`] returned: on success the
    /// superblock becomes the committed one and the commit's frees become allocatable; on
    /// failure the store is poisoned (the next open recovers the last landed generation).
    pub fn finish_commit(&mut self, sealed: SealedCommit, landed: Result<()>) -> Result<()> {
        if let Err(e) = landed {
            return Err(self.poison(e));
        }
        self.sb = sealed.sb;
        self.pager.alloc.commit_done();
        self.commit_latency.record(sealed.started.elapsed());
        Ok(())
    }

    /// The newest generation holding changes: the open transaction's if it has any, else the
    /// last sealed one (which may still be landing).
    pub fn newest_changed_generation(&self) -> u64 {
        if self.dirty {
            self.pager.generation
        } else {
            self.pager.generation - 1
        }
    }
}

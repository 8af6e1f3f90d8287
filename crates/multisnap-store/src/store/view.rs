//! One image of a volume as a block device, for every frontend (NBD exports, ublk devices, and
//! whatever serves a volume next): the origin, a read-only snapshot or a writable snapshot,
//! with the operations a block protocol asks for. A frontend is then only a protocol adaptor:
//! it decodes requests, calls these, and maps [`crate::ErrorKind`] to its own codes.
//!
//! A handle rather than `Store::write(view, ..)` methods because a frontend fixes what it
//! serves when a client connects (NBD cannot change an export's read-only flag mid-session, the
//! kernel keeps a ublk device's), so the handle keeps that decision and enforces it, and every
//! frontend gets the same answers to "what does a write to this image do" from one place.

use super::{Store, View};
use crate::error::{Result, StoreError};
use crate::format::snapshot_record::SnapshotState;
use crate::store::SnapshotInfo;
use std::sync::Arc;

/// Zeroes are written through the normal write path (so snapshots keep what they saw) in
/// pieces of this size, bounding the buffer whatever range a client zeroes.
const ZERO_PIECE: u64 = 1 << 20;

/// An image of one volume served by a frontend: see the module documentation.
#[derive(Clone)]
pub struct VolumeView {
    store: Arc<Store>,
    view: View,
    /// Fixed when the view is opened: a snapshot made read-only later is refused by the store
    /// itself, one made writable later stays read-only here.
    read_only: bool,
    /// A snapshot's size, which never changes; `None` for the origin, which may grow.
    snapshot_size: Option<u64>,
}

impl VolumeView {
    /// The origin, read-write. Starts the store's write-behind thread, if it is not running
    /// yet, so the writes this view takes land without waiting for a flush.
    pub fn origin(store: Arc<Store>) -> VolumeView {
        store.start_landing();
        VolumeView {
            store,
            view: View::Origin,
            read_only: false,
            snapshot_size: None,
        }
    }

    /// A snapshot, writable if it is now; `None` while it is not `Ready` (a delta is still
    /// being applied into it, or it was invalidated), so it cannot be served yet.
    pub fn snapshot(store: Arc<Store>, snapshot: &SnapshotInfo) -> Option<VolumeView> {
        (snapshot.state == SnapshotState::Ready).then(|| VolumeView {
            store,
            view: View::Snapshot(snapshot.id),
            read_only: !snapshot.writable,
            snapshot_size: Some(snapshot.size),
        })
    }

    pub fn view(&self) -> View {
        self.view
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The origin's size now (it grows with [`Store::resize`]), or the snapshot's own: a
    /// snapshot keeps the size the volume had when it was taken. A frontend reads it when a
    /// client connects, so new connections see a grown origin.
    pub fn size(&self) -> u64 {
        self.snapshot_size
            .unwrap_or_else(|| self.store.origin_size())
    }

    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.store.check_open()?;
        self.store.read(self.view, offset, buf)
    }

    /// Writes `data` at `offset`: an origin write copies out what snapshots still need first,
    /// a writable snapshot's write goes to its private chunks.
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.store.check_open()?;
        self.check_writable()?;
        match self.view {
            View::Origin => self.store.write_origin(offset, data),
            View::Snapshot(id) => self.store.write_snapshot(id, offset, data),
        }
    }

    /// Makes the range read back as zeroes, by writing zeroes: the origin's old contents must
    /// still be copied out for the snapshots that see them.
    pub fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        self.check_writable()?;
        let zeroes = vec![0u8; ZERO_PIECE.min(len) as usize];
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(ZERO_PIECE) as usize;
            self.write(offset + done, &zeroes[..n])?;
            done += n as u64;
        }
        Ok(())
    }

    /// A discard (NBD TRIM, ublk DISCARD) is accepted and does nothing: deallocating origin
    /// chunks could drop data a snapshot still reads through the origin, and a discard is only
    /// a hint, so the safe answer is to keep everything. A read-only view still refuses it,
    /// as it refuses every change.
    pub fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.store.check_open()?;
        self.check_writable()?;
        self.store.check_view_range(self.view, offset, len)
    }

    /// Makes every write that returned before this call durable (writes to any image of the
    /// volume, through any frontend). Flushes that arrive while one runs share the next one,
    /// and a flush whose writes an earlier flush already covered returns at once (see
    /// `flush_coalescer`). Writes only: changes that are not writes need [`Store::flush`].
    pub fn flush(&self) -> Result<()> {
        self.store.check_open()?;
        self.store.flush_coalescer.flush(|| self.store.flush())
    }

    /// Closes every view of `store` for good: each later request on any of them fails with
    /// [`StoreError::Closed`] and `reason`. For a volume being deleted while clients are still
    /// connected, so their writes fail instead of landing in files about to be removed.
    pub fn close_all(store: &Store, reason: String) {
        let _ = store.closed.set(reason);
    }

    fn check_writable(&self) -> Result<()> {
        match self.view {
            View::Snapshot(id) if self.read_only => Err(StoreError::SnapshotReadOnly(id)),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests;

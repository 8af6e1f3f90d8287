//! Growing a volume: the origin and the store get bigger, snapshots keep their size.
//!
//! Order, so that a power cut at any write leaves either the old size with all its data or
//! the new size with all of it:
//!
//! 1. A store older than format version 4 is converted first: every snapshot record is
//!    rewritten with its size, and the version goes to 4 in two commits, so both superblock
//!    slots say 4 before any record differs from the origin's size (an older reader that met
//!    a version-3 slot would open that older generation and read every snapshot at the new
//!    origin size).
//! 2. The origin is extended and flushed: its new length is durable. A cut from here to step 4
//!    leaves an origin longer than recorded, which opening accepts (the recorded size wins).
//! 3. The store device is extended and flushed; a cut before step 4 leaves a longer store,
//!    which opening takes in (`grow_if_bigger`).
//! 4. One commit records the new origin size and store size together.
//!
//! Only then does the store serve the new size. Writes are held off throughout (the barrier,
//! exclusively), so no write lands past the old end before the commit that makes it part of
//! the volume.

use super::*;
use crate::format::bitmap::BITS_PER_BLOCK;
use crate::format::snapshot_record::MAX_SNAPSHOT_SIZE;

impl Store {
    /// The largest store device this store can use in place: what its bitmap (sized at
    /// creation for [`GROWTH_FACTOR`] times the store) describes.
    pub fn store_capacity_bytes(&self) -> u64 {
        self.meta.read().sb.bitmap_blocks * BITS_PER_BLOCK * BLOCK_SIZE as u64
    }

    /// Size of the store in use, in bytes.
    pub fn store_bytes(&self) -> u64 {
        self.meta.read().sb.store_blocks * BLOCK_SIZE as u64
    }

    /// Grows the volume to `origin_size` bytes and the store device to at least `store_bytes`
    /// (a store device already longer is taken in up to its capacity). A file is extended; a
    /// block device must have grown already. Existing snapshots keep their size and contents.
    ///
    /// Refused: a smaller size ([`StoreError::ShrinkRefused`]), a store beyond
    /// [`Store::store_capacity_bytes`] or a device that cannot reach the size
    /// ([`StoreError::GrowthLimit`]), and while a delta apply is in progress. The same size
    /// again changes nothing.
    pub fn resize(&self, origin_size: u64, store_bytes: u64) -> Result<()> {
        let current = self.origin_size();
        if origin_size < current {
            return Err(StoreError::ShrinkRefused {
                current,
                requested: origin_size,
            });
        }
        if origin_size > MAX_SNAPSHOT_SIZE {
            return Err(StoreError::GrowthLimit {
                requested: origin_size,
                limit: format!("volumes are at most {MAX_SNAPSHOT_SIZE} bytes"),
            });
        }
        let capacity = self.store_capacity_bytes();
        if store_bytes > capacity {
            return Err(StoreError::GrowthLimit {
                requested: origin_size,
                limit: format!(
                    "its store would need {store_bytes} bytes, but can grow in place only to \
                     {capacity} ({GROWTH_FACTOR} times the size it was made with)"
                ),
            });
        }
        // A delta apply's steps and this one exclude each other: an apply checks the stream's
        // size against the origin's once, at its start.
        let _receive = self.receive_lock.lock();
        let _barrier = self.exclusive_barrier();
        // Parked writes land at the size they were written for, before the device grows.
        self.land_parked()?;
        {
            let m = self.meta.read();
            m.check_usable()?;
            if m.receive.is_some() {
                let name = m.receiving_name();
                return Err(StoreError::ReceiveInProgress { name });
            }
            // A rollback's merge walks the chunks of the size it started with.
            self.refuse_during_merge(&m, "resizing the volume")?;
        }
        if origin_size == current && store_bytes <= self.store_bytes() {
            return Ok(());
        }
        self.convert_to_sized_snapshots()?;
        // A failed flush here may have lost earlier writes' pages too: stop like any flush.
        let durable = |e| match e {
            e @ StoreError::Flush { .. } => self.fail_durability(e),
            e => e,
        };
        grow_device(&*self.origin, "origin", origin_size, origin_size).map_err(durable)?;
        grow_device(&*self.dev, "store", store_bytes, origin_size).map_err(durable)?;
        let dev_bytes = self
            .dev
            .size()
            .map_err(|e| StoreError::io("store", 0, 0, e))?;
        let store_blocks = dev_bytes.min(capacity) / BLOCK_SIZE as u64;
        self.commit_now(|m| {
            if store_blocks > m.sb.store_blocks {
                m.pager.alloc.grow(store_blocks);
                m.sb.store_blocks = store_blocks;
            }
            m.sb.origin_size = origin_size;
            Ok(())
        })?;
        self.origin_size.store(origin_size, Ordering::Release);
        tracing::info!(volume = %self.volume_name, from = current, to = origin_size, store_bytes = store_blocks * BLOCK_SIZE as u64, "volume resized");
        Ok(())
    }

    /// Step 1 of a resize (see the module documentation): every record gets its size on disk
    /// and both superblock slots move to format version 4. Nothing visible changes.
    pub(super) fn convert_to_sized_snapshots(&self) -> Result<()> {
        if self.meta.read().sb.sized_snapshots {
            return Ok(());
        }
        self.commit_now(|m| {
            let records: Vec<(u64, SnapshotRecord)> =
                m.snapshots.iter().map(|(id, r)| (*id, r.clone())).collect();
            for (id, rec) in records {
                m.update_snapshot(SnapshotId(id), rec)?;
            }
            m.sb.sized_snapshots = true;
            Ok(())
        })?;
        self.commit_now(|_| Ok(()))
    }
}

/// Extends `dev` to `size` bytes and makes the new length durable. A device that cannot be
/// extended and is too short is a [`StoreError::GrowthLimit`] of the volume's resize to
/// `volume_size`, naming the device's size.
fn grow_device(
    dev: &dyn BlockDev,
    device: &'static str,
    size: u64,
    volume_size: u64,
) -> Result<()> {
    dev.grow_to(size).map_err(|e| {
        if e.kind() == std::io::ErrorKind::InvalidInput {
            StoreError::GrowthLimit {
                requested: volume_size,
                limit: format!("the {device}: {e}"),
            }
        } else {
            StoreError::io(device, size, 0, e)
        }
    })?;
    dev.flush()
        .map_err(|source| StoreError::Flush { device, source })
}

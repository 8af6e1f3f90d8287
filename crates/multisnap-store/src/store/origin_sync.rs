//! Making origin writes durable: each flush writes the origin ranges written since the last
//! one as a journal batch, or syncs the origin when they do not fit one (see
//! [`crate::journal`] for the rules both ways keep).

use super::*;
use crate::journal::{batch_blocks, BatchImage, Dirty, JournalCursor};

impl Store {
    /// Writes `data` to the origin in place and notes the range for the next flush. Every
    /// origin write goes through here.
    pub(super) fn write_origin_at(&self, data: &[u8], offset: u64) -> Result<()> {
        self.origin
            .write_at(data, offset)
            .map_err(|e| StoreError::io("origin", offset, data.len(), e))?;
        self.dirty_origin.note(offset, data.len() as u64);
        Ok(())
    }

    /// Makes every origin write that completed before this call durable.
    pub(super) fn sync_origin(&self) -> Result<()> {
        // Held until the ranges are durable: a flush that finds nothing noted may return at
        // once, because the ranges it would have needed were taken by one that finished.
        let mut cursor = self.journal.lock();
        let dirty = self.dirty_origin.take();
        let result = match &dirty {
            Dirty::Nothing => return Ok(()),
            Dirty::Ranges(ranges) => self.make_durable(&mut cursor, Some(ranges)),
            Dirty::TooMany => self.make_durable(&mut cursor, None),
        };
        if result.is_err() {
            self.dirty_origin.restore(dirty);
        }
        result
    }

    /// Syncs the origin and empties the journal, so the origin alone holds every write that
    /// completed before this call (a clean stop calls this, then [`Store::flush`]).
    pub fn empty_journal(&self) -> Result<()> {
        let mut cursor = self.journal.lock();
        let dirty = self.dirty_origin.take();
        let result = self.make_durable(&mut cursor, None);
        if result.is_err() {
            self.dirty_origin.restore(dirty);
        }
        result
    }

    /// Journals `ranges` when they fit one batch in the space left, else syncs the origin
    /// (which also covers whatever the journal holds, so it is emptied).
    fn make_durable(
        &self,
        cursor: &mut JournalCursor,
        ranges: Option<&[(u64, u64)]>,
    ) -> Result<()> {
        if let Some(ranges) = ranges {
            let fits =
                batch_blocks(ranges).is_some_and(|b| cursor.next_block + b <= self.journal_blocks);
            if fits {
                let image = self.capture(ranges, cursor.sequence)?;
                return self.append_batch(cursor, &image);
            }
        }
        self.origin.flush().map_err(|source| StoreError::Flush {
            device: "origin",
            source,
        })?;
        if cursor.next_block > 0 {
            self.discard_journal(cursor)?;
        }
        Ok(())
    }

    /// The batch holding the ranges' current contents. Each range is read under its chunks'
    /// stripes, so it holds whole writes, never half of one still being written.
    fn capture(&self, ranges: &[(u64, u64)], sequence: u64) -> Result<BatchImage> {
        let mut image = BatchImage::for_ranges(ranges);
        let mut at = 0;
        for &(offset, len) in ranges {
            let _stripes = self.read_stripes(self.chunks_of(offset, len));
            self.origin
                .read_at(image.data_mut(at, len), offset)
                .map_err(|e| StoreError::io("origin", offset, len as usize, e))?;
            at += len;
        }
        let epoch = self.meta.read().journal_epoch;
        image.seal(epoch, sequence, ranges);
        Ok(image)
    }

    fn append_batch(&self, cursor: &mut JournalCursor, image: &BatchImage) -> Result<()> {
        let at = (self.journal_start + cursor.next_block) * BLOCK_SIZE as u64;
        self.dev
            .write_at(&image.bytes, at)
            .map_err(|e| StoreError::io("store", at, image.bytes.len(), e))?;
        self.dev.flush().map_err(|source| StoreError::Flush {
            device: "store",
            source,
        })?;
        cursor.next_block += image.blocks();
        cursor.sequence += 1;
        self.journal_batches.fetch_add(1, Ordering::Relaxed);
        self.journal_bytes
            .fetch_add(image.data_len, Ordering::Relaxed);
        Ok(())
    }

    /// Empties the journal: the caller has synced the origin after every write it holds.
    fn discard_journal(&self, cursor: &mut JournalCursor) -> Result<()> {
        let generation = {
            let mut m = self.meta.write();
            m.check_usable()?;
            m.journal_epoch += 1;
            m.dirty = true;
            m.pager.generation
        };
        self.commit_wait(generation)?;
        *cursor = JournalCursor::default();
        self.journal_discards.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

//! Making origin writes durable: each flush writes the origin ranges written since the last
//! one as a journal batch, or syncs the origin when they do not fit one (see
//! [`crate::journal`] for the rules both ways keep).
//!
//! The journal has two halves. When the one in use is full, flushes go on into the other
//! while a background thread syncs the origin; once that sync is done, the next flush commits
//! the older epoch away. A flush waits for that sync only if the new half fills before it ends.

use super::*;
use crate::journal::{batch_blocks, half_blocks, half_start, BatchImage, Dirty, JournalCursor};
use std::thread::JoinHandle;

/// The background thread that syncs the origin after a half of the journal filled.
pub(super) struct OriginSyncer {
    state: Arc<(Mutex<SyncState>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct SyncState {
    /// The epoch whose writes the next sync must cover.
    requested: Option<u64>,
    running: bool,
    /// The last sync that ended: which epoch it covered, and whether it worked.
    done: Option<(u64, std::result::Result<(), String>)>,
    /// The first background sync that failed, kept until the store is reopened: after a failed
    /// fsync the kernel may have dropped the dirty pages and a later fsync can succeed without
    /// them, so no later flush may trust the origin (see `Store::fail_durability`).
    failed: Option<(Option<i32>, String)>,
    stop: bool,
}

impl OriginSyncer {
    /// No thread for a store without a journal.
    pub(super) fn start(origin: Arc<dyn BlockDev>, journal: bool) -> OriginSyncer {
        let state: Arc<(Mutex<SyncState>, Condvar)> = Arc::default();
        let thread = journal.then(|| {
            let st = state.clone();
            std::thread::Builder::new()
                .name("origin-sync".into())
                .spawn(move || sync_loop(&*origin, &st))
                .expect("cannot spawn the origin sync thread")
        });
        OriginSyncer { state, thread }
    }

    fn request(&self, epoch: u64) {
        let (m, cv) = &*self.state;
        m.lock().requested = Some(epoch);
        cv.notify_all();
    }

    /// Forgets a requested sync (the caller synced the origin itself).
    fn cancel(&self) {
        self.state.0.lock().requested = None;
    }

    /// The newest epoch a finished sync covered, if one finished since the last call.
    fn take_synced(&self) -> Option<u64> {
        let mut s = self.state.0.lock();
        match s.done {
            Some((e, Ok(()))) => {
                s.done = None;
                Some(e)
            }
            _ => None,
        }
    }

    /// A background sync that failed since the store was opened, as the error it returned.
    pub(super) fn failure(&self) -> Option<std::io::Error> {
        let s = self.state.0.lock();
        s.failed.as_ref().map(|(errno, msg)| match errno {
            Some(code) => std::io::Error::from_raw_os_error(*code),
            None => std::io::Error::other(msg.clone()),
        })
    }

    /// Waits for the sync covering `epoch`; `false` if it failed or none is on its way.
    fn wait_for(&self, epoch: u64) -> bool {
        let (m, cv) = &*self.state;
        let mut s = m.lock();
        loop {
            match &s.done {
                Some((e, r)) if *e >= epoch => {
                    let ok = r.is_ok();
                    s.done = None;
                    return ok;
                }
                _ => {}
            }
            if s.requested.is_none() && !s.running {
                return false;
            }
            cv.wait(&mut s);
        }
    }

    /// Forgets every sync requested or finished, the failed one included, once none runs: for
    /// a reopen in place, which recovers from the devices what a failed sync may have lost.
    pub(super) fn reset(&self) {
        let (m, cv) = &*self.state;
        let mut s = m.lock();
        while s.running {
            cv.wait(&mut s);
        }
        s.requested = None;
        s.done = None;
        s.failed = None;
    }

    pub(super) fn stop(&mut self) {
        let (m, cv) = &*self.state;
        m.lock().stop = true;
        cv.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn sync_loop(origin: &dyn BlockDev, state: &(Mutex<SyncState>, Condvar)) {
    let (m, cv) = state;
    let mut s = m.lock();
    loop {
        if s.stop {
            return;
        }
        let Some(epoch) = s.requested.take() else {
            cv.wait(&mut s);
            continue;
        };
        s.running = true;
        drop(s);
        let flushed = origin.flush();
        s = m.lock();
        if let Err(e) = &flushed {
            tracing::error!(epoch, error = %e, "background origin sync failed; the volume's next flush fails and it refuses writes until it is reopened");
            s.failed.get_or_insert((e.raw_os_error(), e.to_string()));
        }
        let result = flushed.map_err(|e| e.to_string());
        s.running = false;
        s.done = Some((epoch, result));
        cv.notify_all();
    }
}

impl Store {
    /// Writes `data` to the origin in place and notes the range for the next flush. Every
    /// origin write goes through here.
    pub(super) fn write_origin_at(&self, data: &[u8], offset: u64) -> Result<()> {
        self.origin
            .write_at(data, offset)
            .map_err(|e| StoreError::io("origin", offset, data.len(), e))?;
        self.note_origin_write(offset, data.len());
        Ok(())
    }

    /// [`Store::write_origin_at`] of `parts` laid end to end from `offset`, as one
    /// [`BlockDev::write_bulk`].
    pub(super) fn write_origin_bulk(&self, parts: &[&[u8]], offset: u64) -> Result<()> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        self.origin
            .write_bulk(parts, offset)
            .map_err(|e| StoreError::io("origin", offset, len, e))?;
        self.note_origin_write(offset, len);
        Ok(())
    }

    /// Notes an origin write that completed, for the next flush.
    fn note_origin_write(&self, offset: u64, len: usize) {
        if self.journal_blocks == 0 {
            // Without a journal (every store with a direct origin) a flush syncs the origin
            // whatever was written, so the ranges are not worth keeping.
            self.dirty_origin.note_unjournaled();
        } else {
            self.dirty_origin.note(offset, len as u64);
        }
    }

    /// Makes every origin write that completed before this call durable.
    pub(super) fn sync_origin(&self) -> Result<()> {
        // Held until the ranges are durable: a flush that finds nothing noted may return at
        // once, because the ranges it would have needed were taken by one that finished.
        let mut cursor = self.journal.lock();
        self.check_durable()?;
        let dirty = self.dirty_origin.take();
        let result = match &dirty {
            Dirty::Nothing => return Ok(()),
            Dirty::Ranges(ranges) => self.make_durable(&mut cursor, Some(ranges)),
            Dirty::TooMany => self.make_durable(&mut cursor, None),
        };
        if let Err(e) = result {
            self.dirty_origin.restore(dirty);
            return Err(self.fail_durability(e));
        }
        Ok(())
    }

    /// Refuses a flush once the store failed one (or the background sync did): whatever the
    /// device says now, writes it lost cannot be made durable by asking again.
    fn check_durable(&self) -> Result<()> {
        if let Some(source) = self.syncer.failure() {
            return Err(self.fail_durability(StoreError::Flush {
                device: "origin",
                source,
            }));
        }
        self.meta.read().check_usable()
    }

    /// A write or flush that was to make acknowledged data durable failed. The store stops
    /// taking changes (reads go on) until it is reopened: Linux may drop the dirty pages of a
    /// failed fsync and report success on the next one (PostgreSQL's "fsyncgate"), so going
    /// on could acknowledge a later flush for writes that are gone. Reopening replays the
    /// journal, which holds every write a successful flush acknowledged.
    pub(super) fn fail_durability(&self, err: StoreError) -> StoreError {
        let mut m = self.meta.write();
        if m.check_usable().is_err() {
            return err;
        }
        tracing::error!(volume = %self.volume_name, error = %err, "a flush failed; the volume refuses writes and flushes until it is reopened (reads go on)");
        let why = format!("a flush failed: {err}");
        let err = m.poison(err);
        if let Some(failure) = &mut m.poisoned {
            failure.why = why;
        }
        err
    }

    /// Syncs the origin and empties the journal, so the origin alone holds every write that
    /// completed before this call (a clean stop calls this, then [`Store::flush`]).
    pub fn empty_journal(&self) -> Result<()> {
        let mut cursor = self.journal.lock();
        self.check_durable()?;
        let dirty = self.dirty_origin.take();
        let result = self.make_durable(&mut cursor, None);
        if let Err(e) = result {
            self.dirty_origin.restore(dirty);
            return Err(self.fail_durability(e));
        }
        Ok(())
    }

    /// Journals `ranges` when they fit one batch, else syncs the origin (which also covers
    /// whatever the journal holds, so it is emptied).
    fn make_durable(
        &self,
        cursor: &mut JournalCursor,
        ranges: Option<&[(u64, u64)]>,
    ) -> Result<()> {
        if let Some(epoch) = self.syncer.take_synced() {
            self.retire_epochs_before(epoch + 1)?;
        }
        let half = half_blocks(self.journal_blocks);
        if let Some(ranges) = ranges {
            if let Some(blocks) = batch_blocks(ranges).filter(|b| *b <= half) {
                if cursor.next_block + blocks > half {
                    self.switch_half(cursor)?;
                }
                let image = self.capture(ranges, cursor)?;
                return self.append_batch(cursor, &image);
            }
        }
        self.sync_origin_device()?;
        if cursor.next_block > 0 || self.meta.read().journal_epoch < cursor.epoch {
            self.discard_journal(cursor)?;
        }
        Ok(())
    }

    pub(super) fn sync_origin_device(&self) -> Result<()> {
        self.origin.flush().map_err(|source| StoreError::Flush {
            device: "origin",
            source,
        })
    }

    /// Moves to the other half, in a new epoch, and has the origin synced in the background
    /// so the epoch just closed can be retired. The other half must be free: if the previous
    /// background sync has not been committed yet, this waits for it (or syncs itself).
    fn switch_half(&self, cursor: &mut JournalCursor) -> Result<()> {
        if self.meta.read().journal_epoch < cursor.epoch {
            let waited = Instant::now();
            if !self.syncer.wait_for(cursor.epoch - 1) {
                if let Some(source) = self.syncer.failure() {
                    // Syncing again could succeed without the pages the failed sync lost.
                    return Err(StoreError::Flush {
                        device: "origin",
                        source,
                    });
                }
                self.sync_origin_device()?;
            }
            self.retire_epochs_before(cursor.epoch)?;
            self.journal_waits.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                waited_ms = waited.elapsed().as_millis() as u64,
                "a journal half filled before the origin sync of the other ended"
            );
        }
        let closed = cursor.epoch;
        *cursor = JournalCursor::at(closed + 1);
        self.syncer.request(closed);
        Ok(())
    }

    /// Commits `epoch` as the oldest the journal needs: the origin has been synced after every
    /// write of the epochs before it.
    fn retire_epochs_before(&self, epoch: u64) -> Result<()> {
        let generation = {
            let mut m = self.meta.write();
            if m.journal_epoch >= epoch {
                return Ok(());
            }
            m.check_usable()?;
            m.journal_epoch = epoch;
            m.dirty = true;
            m.pager.generation
        };
        self.commit_wait(generation)?;
        self.journal_retired.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// The batch holding the ranges' current contents. Each range is read under its chunks'
    /// stripes, so it holds whole writes, never half of one still being written.
    fn capture(&self, ranges: &[(u64, u64)], cursor: &JournalCursor) -> Result<BatchImage> {
        let mut image = BatchImage::for_ranges(ranges);
        let mut at = 0;
        for &(offset, len) in ranges {
            let _stripes = self.read_stripes(self.chunks_of(offset, len));
            self.origin
                .read_at(image.data_mut(at, len), offset)
                .map_err(|e| StoreError::io("origin", offset, len as usize, e))?;
            at += len;
        }
        image.seal(cursor.epoch, cursor.sequence, ranges);
        Ok(image)
    }

    fn append_batch(&self, cursor: &mut JournalCursor, image: &BatchImage) -> Result<()> {
        let first = half_start(self.journal_start, self.journal_blocks, cursor.epoch);
        let at = (first + cursor.next_block) * BLOCK_SIZE as u64;
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
        self.syncer.cancel();
        let fresh = cursor.epoch + 1;
        self.retire_epochs_before(fresh)?;
        *cursor = JournalCursor::at(fresh);
        self.journal_discards.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

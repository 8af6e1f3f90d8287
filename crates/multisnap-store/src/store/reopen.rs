//! Reopening a failed store in place: its in-memory state is thrown away and rebuilt from
//! what is durable on the devices, the way [`Store::open`] builds it on a start (the last
//! landed generation, the origin write journal replayed into the origin), while the `Store`
//! itself stays. Frontends hold the store (NBD connections, ublk queues, views), so they keep
//! working across a reopen without reconnecting.
//!
//! What survives is what a power cut at the moment of the failure would leave: every write a
//! successful flush acknowledged (it is in the journal or a synced origin, and in the last
//! landed generation), and every snapshot as it was taken. Writes acknowledged but never
//! flushed may read as they were at the last flush. Nothing is acknowledged on the strength
//! of the failed state: the origin ranges written since the last successful flush stay noted,
//! so the first flush after the reopen journals them as they read then.

use super::*;

impl Store {
    /// Rebuilds a failed store's state from its devices, in place. `NotFailed` for a store
    /// that takes changes (there is nothing to recover, and throwing its state away could
    /// lose writes that are still only noted for the next flush); the store stays failed, and
    /// the error says why, when the devices cannot be read or the journal cannot be replayed.
    ///
    /// Takes every lock of the store, in the documented order, so no write, flush, commit,
    /// rollback merge, hydration step or delta apply is in flight while the state changes.
    pub fn reopen(&self) -> Result<()> {
        let _reopen = self.reopen_lock.lock();
        self.check_open()?;
        let _hydrate = self.hydrate_lock.lock();
        let _merge = self.merge_lock.lock();
        let _receive = self.receive_lock.lock();
        let _barrier = self.exclusive_barrier();
        let _landing = self.landing_lock();
        let mut cursor = self.journal.lock();
        let _commit = self.commit_lock.lock();
        if self.meta.read().poisoned.is_none() && self.syncer.failure().is_none() {
            return Err(StoreError::NotFailed);
        }
        let fresh = Store::load_meta(&self.origin, &self.dev, self.cache_bytes)?;
        self.discard_parked();
        // The journal replay rewrote every flushed write the origin may have lost; one sync
        // of the origin (the replay does one only when the journal held batches) makes them
        // durable before the failed background sync, if any, is forgotten.
        self.sync_origin_device()?;
        self.syncer.reset();
        *cursor = JournalCursor::at(fresh.journal_epoch);
        self.install(fresh);
        drop((
            _commit, cursor, _landing, _barrier, _receive, _merge, _hydrate,
        ));
        if let Err(e) = self.recover_receive() {
            tracing::error!(volume = %self.volume_name, error = %e, "could not complete an interrupted delta apply");
        }
        *self.reclaim_wanted.lock() = true;
        self.reclaim_wake.notify_all();
        Ok(())
    }

    /// Puts `fresh` in force in place of the failed state. The caller holds every lock but
    /// `meta`. Readers of snapshots recheck theirs (the live epoch moves), writers start with
    /// no chunk known to be covered, and what lives in memory only (the clone holds the
    /// agent set up) carries over.
    fn install(&self, mut fresh: Meta) {
        let mut m = self.meta.write();
        self.covered.clear();
        fresh.covered = self.covered.clone();
        self.live_epoch.fetch_add(1, Ordering::AcqRel);
        fresh.live_epoch = self.live_epoch.clone();
        fresh.clone_holds = std::mem::take(&mut m.clone_holds);
        fresh.chunks_reclaimed = m.chunks_reclaimed;
        fresh.commit_latency = std::mem::take(&mut m.commit_latency);
        self.origin_size
            .store(fresh.sb.origin_size, Ordering::Release);
        self.durable_generation
            .store(fresh.sb.generation, Ordering::Release);
        self.merge_hint.store(
            fresh.revert.as_ref().map_or(u64::MAX, |r| r.cursor),
            Ordering::Release,
        );
        self.hydrate_hint.store(
            fresh.clone.as_ref().map_or(u64::MAX, |c| c.cursor),
            Ordering::Release,
        );
        // In-place private writes since the last flush may sit in the device cache only; the
        // next flush must flush the store device even if no commit is due.
        self.private_data_unflushed.store(true, Ordering::Release);
        *m = fresh;
    }
}

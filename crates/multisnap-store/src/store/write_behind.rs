//! Write-behind: an origin write whose chunks needed copy-outs is acknowledged before the
//! commit that makes those copies durable.
//!
//! The copy-before-overwrite rule is about what reaches the origin, not about when a write is
//! acknowledged: a write that is not followed by a flush need not be durable, only visible to
//! every later read. So such a write is *parked*: its bytes are kept in memory, per chunk and
//! in order, tagged with the generation whose commit makes the chunk's copies durable, and the
//! writer returns. Landing (`land_parked`) commits that generation (one group commit for every
//! write parked meanwhile), then writes each parked chunk's writes to the origin in order,
//! under the chunk's stripe, through `write_origin_at` like every origin write.
//!
//! While a chunk has writes parked, a later write to it is parked behind them rather than
//! written to the origin, which must not change before the commit lands. Origin reads lay
//! the parked bytes over what the origin holds (under the chunks' stripes, so no landing moves
//! them meanwhile); everything else that reads or writes the origin in bulk (snapshot creation,
//! flush, rollback, resize, delta apply, allocation maps) lands them first. Nothing new is
//! persisted: a power cut loses parked writes the way it loses unflushed ones in a page cache.

use super::*;
use std::collections::HashMap;
use std::sync::Weak;

/// Bytes of parked writes a store holds at most; a writer that finds more lands them itself
/// before parking its own (backpressure). Enough for a commit of a few milliseconds to carry
/// thousands of 4 KiB first writes, while bounding both the memory a volume takes and the time
/// a flush spends landing them (64 MiB of origin writes into the page cache).
const MAX_PARKED_BYTES: u64 = 64 << 20;

/// How long the background lander waits after a landing failed for want of room on the
/// origin's filesystem before it tries again (a flush tries at once).
const RETRY_LANDING: Duration = Duration::from_secs(1);

/// One origin chunk's parked writes.
struct ParkedChunk {
    /// The generation whose commit makes this chunk's copies durable: none of the writes may
    /// reach the origin before it lands.
    generation: u64,
    /// Origin offset and bytes of each write (its piece within this chunk), oldest first.
    writes: Vec<(u64, Box<[u8]>)>,
}

impl ParkedChunk {
    fn bytes(&self) -> u64 {
        self.writes.iter().map(|(_, b)| b.len() as u64).sum()
    }
}

#[derive(Default)]
struct ParkedState {
    chunks: HashMap<u64, ParkedChunk>,
    /// A landing failed, and the store with it: the background lander waits for a reopen
    /// (which discards what is parked) instead of failing again in a loop.
    stalled: bool,
    /// The store is being dropped: the background lander ends.
    stop: bool,
}

/// The parked writes of one store; shared with its background lander, which holds the store
/// itself only while landing.
#[derive(Default)]
pub(super) struct ParkedWrites {
    state: Mutex<ParkedState>,
    /// Wakes the background lander when something is parked.
    wake: Condvar,
    /// Pieces (a write's part within one chunk) parked now, changed under `state`: zero lets
    /// readers and writers skip the map without its lock.
    pieces: AtomicU64,
    /// Bytes parked now, changed under `state`; compared with `MAX_PARKED_BYTES`.
    bytes: AtomicU64,
    /// Held by whoever lands, so two landings never drain the same chunk concurrently. In the
    /// lock order it comes after the barrier and before the stripes.
    landing: Mutex<()>,
    lander_started: AtomicBool,
    writes_total: AtomicU64,
    bytes_total: AtomicU64,
}

/// Parked-write counters for [`StoreStats`].
pub(super) struct ParkedStats {
    pub writes_total: u64,
    pub bytes_total: u64,
    pub bytes_now: u64,
}

impl ParkedWrites {
    pub(super) fn stats(&self) -> ParkedStats {
        ParkedStats {
            writes_total: self.writes_total.load(Ordering::Relaxed),
            bytes_total: self.bytes_total.load(Ordering::Relaxed),
            bytes_now: self.bytes.load(Ordering::Relaxed),
        }
    }

    fn any(&self) -> bool {
        self.pieces.load(Ordering::Acquire) > 0
    }

    /// Ends the background lander, if one runs (it holds no reference to the store between
    /// landings, so it is not joined: the store may be dropped on that very thread).
    pub(super) fn stop(&self) {
        self.state.lock().stop = true;
        self.wake.notify_all();
    }
}

/// The background lander: lands whenever something is parked, until the store goes away.
fn landing_loop(parked: &ParkedWrites, store: &Weak<Store>) {
    loop {
        {
            let mut st = parked.state.lock();
            while !st.stop && (st.stalled || st.chunks.is_empty()) {
                parked.wake.wait(&mut st);
            }
            if st.stop {
                return;
            }
        }
        let Some(store) = store.upgrade() else {
            return;
        };
        if let Err(e) = store.land_parked() {
            tracing::error!(volume = %store.volume_name, error = %e, "landing parked origin writes failed");
            drop(store);
            // Not again at once: a full filesystem takes time to get room back.
            let mut st = parked.state.lock();
            if !st.stop {
                parked.wake.wait_for(&mut st, RETRY_LANDING);
            }
        }
    }
}

impl Store {
    /// Starts the thread that lands parked writes as soon as there are any, so writers never
    /// wait for a commit. Without it they land when a flush, a snapshot or the bound on parked
    /// bytes needs them to. Idempotent.
    pub fn start_landing(self: &Arc<Self>) {
        if self.parked.lander_started.swap(true, Ordering::AcqRel) {
            return;
        }
        let store = Arc::downgrade(self);
        let parked = self.parked.clone();
        let spawned = std::thread::Builder::new()
            .name("write-behind".into())
            .spawn(move || landing_loop(&parked, &store));
        if let Err(e) = spawned {
            // Parked writes still land, on flushes and when the bound is reached.
            tracing::error!(volume = %self.volume_name, error = %e, "cannot start the write-behind thread");
            self.parked.lander_started.store(false, Ordering::Release);
        }
    }

    /// Lands what is parked first when the bound is reached, so a writer never parks past it
    /// by more than its own write. The caller holds no lock.
    pub(super) fn make_room_to_park(&self) -> Result<()> {
        if self.parked.bytes.load(Ordering::Acquire) >= MAX_PARKED_BYTES {
            self.land_parked()?;
        }
        Ok(())
    }

    /// Parks an origin write when its copies are not durable yet (`unlanded`, the generation
    /// that makes them so) or when any of its chunks has writes parked already, which must
    /// reach the origin first. Returns whether it parked. The caller holds the chunks' stripes
    /// exclusively.
    pub(super) fn park_if_needed(&self, offset: u64, data: &[u8], unlanded: Option<u64>) -> bool {
        if unlanded.is_none() && !self.parked.any() {
            return false;
        }
        let chunks = self.chunks_of(offset, data.len() as u64);
        let mut st = self.parked.state.lock();
        if unlanded.is_none() && !chunks.clone().any(|c| st.chunks.contains_key(&c)) {
            return false;
        }
        let generation = unlanded.unwrap_or(0);
        let cs = u64::from(self.chunk_size);
        let mut pieces = 0;
        for chunk in chunks {
            let start = (chunk * cs).max(offset);
            let end = ((chunk + 1) * cs).min(offset + data.len() as u64);
            let piece = &data[(start - offset) as usize..(end - offset) as usize];
            let entry = st.chunks.entry(chunk).or_insert_with(|| ParkedChunk {
                generation,
                writes: Vec::new(),
            });
            entry.generation = entry.generation.max(generation);
            entry.writes.push((start, piece.into()));
            pieces += 1;
        }
        let p = &self.parked;
        p.pieces.fetch_add(pieces, Ordering::AcqRel);
        p.bytes.fetch_add(data.len() as u64, Ordering::AcqRel);
        p.writes_total.fetch_add(1, Ordering::Relaxed);
        p.bytes_total
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        drop(st);
        p.wake.notify_one();
        true
    }

    /// Lays the parked writes over `buf`, just read from the origin at `offset`. The caller
    /// holds the range's stripes (shared at least), so no landing moves them meanwhile.
    pub(super) fn overlay_parked(&self, offset: u64, buf: &mut [u8]) {
        if !self.parked.any() {
            return;
        }
        let end = offset + buf.len() as u64;
        let st = self.parked.state.lock();
        for chunk in self.chunks_of(offset, buf.len() as u64) {
            let Some(parked) = st.chunks.get(&chunk) else {
                continue;
            };
            for (at, bytes) in &parked.writes {
                let from = (*at).max(offset);
                let to = (at + bytes.len() as u64).min(end);
                if from < to {
                    buf[(from - offset) as usize..(to - offset) as usize]
                        .copy_from_slice(&bytes[(from - at) as usize..(to - at) as usize]);
                }
            }
        }
    }

    /// Reads the origin as clients see it while writes are parked: what the device holds with
    /// the parked writes laid over it.
    pub(super) fn read_origin_with_parked(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let chunks = self.chunks_of(offset, buf.len() as u64);
        let _stripes = self.read_stripes(chunks);
        self.read_origin_unparked(offset, buf)?;
        self.overlay_parked(offset, buf);
        Ok(())
    }

    /// Whether origin reads must go through [`Self::read_origin_with_parked`].
    pub(super) fn has_parked(&self) -> bool {
        self.parked.any()
    }

    /// Lands every write parked before this call: commits the generation their copies are in
    /// (one group commit for all of them), then writes them to the origin, each chunk's in
    /// order under its stripe. What the background lander does; flushes, snapshots and every
    /// bulk reader or writer of the origin call it first. The caller holds no stripe, nor the
    /// commit or metadata locks.
    ///
    /// A failed commit or origin write fails the store (as a failed flush does): the writes
    /// stay parked, so reads still see them, until a reopen discards them.
    pub fn land_parked(&self) -> Result<()> {
        if !self.parked.any() {
            return Ok(());
        }
        let _landing = self.parked.landing.lock();
        let target = {
            let st = self.parked.state.lock();
            st.chunks.values().map(|p| p.generation).max()
        };
        let Some(target) = target else {
            return Ok(());
        };
        if let Err(e) = self.commit_wait(target) {
            return Err(self.stall_landing(e));
        }
        let durable = self.durable_generation.load(Ordering::Acquire);
        let mut ready: Vec<u64> = {
            let st = self.parked.state.lock();
            st.chunks
                .iter()
                .filter(|(_, p)| p.generation <= durable)
                .map(|(c, _)| *c)
                .collect()
        };
        // In origin order, which the device and the journal's ranges prefer.
        ready.sort_unstable();
        for chunk in ready {
            self.land_chunk(chunk, durable)?;
        }
        Ok(())
    }

    /// Writes one chunk's parked writes (if its copies are in generation `durable` or older)
    /// to the origin and forgets them.
    fn land_chunk(&self, chunk: u64, durable: u64) -> Result<()> {
        let _stripe = self.stripes[Self::stripe_of(chunk)].write();
        let parked = {
            let mut st = self.parked.state.lock();
            match st.chunks.get(&chunk) {
                Some(p) if p.generation <= durable => st.chunks.remove(&chunk),
                _ => None,
            }
        };
        let Some(parked) = parked else {
            return Ok(());
        };
        let written = parked
            .writes
            .iter()
            .try_for_each(|(at, bytes)| self.write_origin_at(bytes, *at));
        if let Err(e) = written {
            // Put back whole: writing them again, in order, is harmless, and reads must keep
            // seeing them.
            self.parked.state.lock().chunks.insert(chunk, parked);
            // A full host filesystem under a sparse origin loses nothing: the writes stay
            // parked, flushes report it, and they land once there is room (as a direct
            // write that meets it fails alone). Any other error may have lost pages.
            if e.kind() == crate::ErrorKind::NoSpace {
                return Err(e);
            }
            return Err(self.stall_landing(e));
        }
        let _st = self.parked.state.lock();
        self.parked
            .pieces
            .fetch_sub(parked.writes.len() as u64, Ordering::AcqRel);
        self.parked
            .bytes
            .fetch_sub(parked.bytes(), Ordering::AcqRel);
        Ok(())
    }

    /// A landing failed: the store stops taking changes, as after a failed flush, since the
    /// parked writes were acknowledged and cannot be made durable now.
    fn stall_landing(&self, err: StoreError) -> StoreError {
        self.parked.state.lock().stalled = true;
        self.fail_durability(err)
    }

    /// Forgets every parked write, for a reopen in place: its copies were in generations the
    /// failed store never landed, so writing them now could overwrite what a snapshot needs.
    /// They were never flushed, so this is what a power cut would have done. The caller holds
    /// the write barrier exclusively and the landing lock (see [`Self::landing_lock`]).
    pub(super) fn discard_parked(&self) {
        let mut st = self.parked.state.lock();
        let dropped: u64 = st.chunks.values().map(|p| p.writes.len() as u64).sum();
        if dropped > 0 {
            tracing::warn!(volume = %self.volume_name, writes = dropped, "reopen discards origin writes parked since the failure (never flushed)");
        }
        st.chunks.clear();
        st.stalled = false;
        self.parked.pieces.store(0, Ordering::Release);
        self.parked.bytes.store(0, Ordering::Release);
    }

    /// The landing lock, for a reopen that must not run beside a landing.
    pub(super) fn landing_lock(&self) -> parking_lot::MutexGuard<'_, ()> {
        self.parked.landing.lock()
    }
}

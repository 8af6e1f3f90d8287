//! Applying a delta: the data is staged where nobody can see it, the whole stream is verified,
//! and only then is it folded into the origin and published as one new snapshot.
//!
//! The phases, and what a power cut leaves in each:
//! 1. **Staging** (`begin_receive`, `stage`, `checkpoint_receive`): records land in fresh store
//!    chunks listed in the private map under a `Receiving` snapshot record, which is never
//!    read, listed or exported. The superblock names that record and keeps the caller's resume
//!    token as of the last checkpoint. After a crash, `open` keeps what was checkpointed for a
//!    resumable apply and discards everything of any other; in both cases nothing is visible.
//! 2. **Commit point** (`finish_receive`): one commit sets `RECEIVE_FOLDING`. From here on the
//!    apply only goes forward, after a crash too.
//! 3. **Fold**: the staged chunks are written into the origin under the ordinary copy-out rule
//!    (every older snapshot keeps its view), a batch at a time: copies committed, origin
//!    written and flushed, then the batch's staged entries removed and their chunks freed in
//!    one commit. Redoing a batch after a crash writes the same bytes again, so `open` simply
//!    carries on.
//! 4. **Publish**: one commit adds the new snapshot (Ready, carrying the source's id), drops the
//!    staging record and clears the superblock's apply state.
//!
//! A full stream into an empty volume that has no snapshot is the exception: staging it would
//! need store space for the whole volume, so it is written straight into the origin instead
//! ("direct" applies). Each chunk is recorded in the private map (as `DIRECT_CHUNK`) and
//! committed *before* the origin is written, so an abandoned direct apply (aborted, or not
//! resumable and interrupted) knows every chunk to zero again. No snapshot can be taken while
//! one runs; until it completes the origin holds part of the data, and no snapshot appears.
//!
//! So the receiving volume's origin ends up holding the delta's target: the volume is a
//! replica. That is what keeps every later incremental as cheap as its changes. Origin writers
//! wait on the write barrier during the fold; a reader of the replica's origin itself can see
//! the fold in progress, a reader of any snapshot never sees anything but whole snapshots.

use super::{now_ns, validate_snapshot_name, SnapshotInfo, Store};
use crate::error::{Result, StoreError};
use crate::format::exception::{holds_store_chunk, DIRECT_CHUNK, ZERO_CHUNK};
use crate::format::node::Key;
use crate::format::snapshot_record::{SnapshotRecord, SnapshotState};
use crate::format::superblock::{
    ReceiveState, MAX_RECEIVE_TOKEN, RECEIVE_DIRECT, RECEIVE_FOLDING, RECEIVE_RESUMABLE,
};
use crate::ids::VolumeUuid;
use crate::ids::{OriginChunk, SnapshotId, StoreChunk};
use crate::meta::Meta;

/// The most a direct apply writes into the origin at once: the bounce buffer a direct write
/// keeps per thread, so gathering a run into it allocates nothing.
const BULK_RUN_BYTES: usize = crate::direct_dev::KEEP_BOUNCE;

/// Staged chunks folded into the origin per commit.
const FOLD_BATCH: usize = 256;

/// What a new apply is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceivePlan {
    /// Name the new snapshot will have.
    pub name: String,
    /// Uuid of the volume the delta comes from.
    pub source_volume: VolumeUuid,
    /// The target snapshot's id on that volume.
    pub source_snapshot: u64,
    /// The local snapshot holding the delta's base; `None` for a full stream.
    pub base: Option<SnapshotId>,
    /// Keep staged data across interruptions so the apply can be continued.
    pub resumable: bool,
    /// The caller's resume token before any record (opaque to the store).
    pub token: Vec<u8>,
}

/// An apply in progress, as the store remembers it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceiveStatus {
    pub name: String,
    pub source_snapshot: u64,
    pub base: Option<SnapshotId>,
    pub resumable: bool,
    /// Past the commit point: it completes, it can no longer be aborted.
    pub folding: bool,
    /// A full stream written straight into the origin (see the module docs).
    pub direct: bool,
    /// The resume token of the last checkpoint.
    pub token: Vec<u8>,
    /// Chunks staged so far and the store bytes they hold.
    pub staged_chunks: u64,
    pub staged_bytes: u64,
}

impl Store {
    /// The volume whose deltas this store applies, once it has begun applying one.
    pub fn replica_source(&self) -> Option<VolumeUuid> {
        let source = VolumeUuid::from_bytes(self.meta.read().replica_source);
        (!source.is_nil()).then_some(source)
    }

    /// Whether an apply is in progress (running, or kept for resumption). Cheap, unlike
    /// [`Store::receive_status`].
    pub fn receive_pending(&self) -> bool {
        self.meta.read().receive.is_some()
    }

    /// The live snapshot replicated from the source's snapshot `source_id`.
    pub fn snapshot_by_source_id(&self, source_id: u64) -> Option<SnapshotInfo> {
        if source_id == 0 {
            return None;
        }
        let m = self.meta.read();
        m.snapshots
            .iter()
            .find(|(id, r)| r.source_id == source_id && m.live.contains(id))
            .map(|(id, r)| SnapshotInfo::from_record(*id, r))
    }

    pub fn receive_status(&self) -> Result<Option<ReceiveStatus>> {
        let mut m = self.meta.write();
        let Some(r) = m.receive.clone() else {
            return Ok(None);
        };
        let (name, source_snapshot) = m
            .snapshots
            .get(&r.staging)
            .map(|rec| (rec.name.clone(), rec.source_id))
            .unwrap_or_default();
        let (mut chunks, mut bytes, mut from) = (0u64, 0u64, 0u64);
        loop {
            let batch = m.private_entries(SnapshotId(r.staging), from, 4096)?;
            let Some(&(last, _)) = batch.last() else {
                break;
            };
            for (_, at) in &batch {
                chunks += 1;
                if holds_store_chunk(*at) {
                    bytes += u64::from(self.chunk_size);
                }
            }
            from = last.0 + 1;
        }
        Ok(Some(ReceiveStatus {
            name,
            source_snapshot,
            base: (r.base != 0).then_some(SnapshotId(r.base)),
            resumable: r.flags & RECEIVE_RESUMABLE != 0,
            folding: r.flags & RECEIVE_FOLDING != 0,
            direct: r.flags & RECEIVE_DIRECT != 0,
            token: r.token,
            staged_chunks: chunks,
            staged_bytes: bytes,
        }))
    }

    /// Starts an apply. Checks that the result can only be the delta's target: the volume is
    /// not a replica of another volume, the name is free, and the origin still is the base
    /// (unchanged since the base snapshot, or empty for a full stream).
    pub fn begin_receive(&self, plan: &ReceivePlan) -> Result<()> {
        validate_snapshot_name(&plan.name)?;
        if plan.token.len() > MAX_RECEIVE_TOKEN {
            return Err(StoreError::BadStage(format!(
                "resume token of {} bytes, over {MAX_RECEIVE_TOKEN}",
                plan.token.len()
            )));
        }
        let _r = self.receive_lock.lock();
        let _barrier = self.barrier.write();
        // The base check reads the origin, and the apply writes it.
        self.land_parked()?;
        self.transact(|m| {
            m.check_usable()?;
            if m.receive.is_some() {
                let name = m.receiving_name();
                return Err(StoreError::ReceiveInProgress { name });
            }
            // The apply needs the origin to read as its base, and its fold writes the origin.
            self.refuse_during_merge(m, "applying a delta")?;
            self.refuse_during_hydration(m, "applying a delta")?;
            let bound = VolumeUuid::from_bytes(m.replica_source);
            if !bound.is_nil() && bound != plan.source_volume {
                return Err(StoreError::ReplicaOfOther {
                    expected: bound,
                    found: plan.source_volume,
                });
            }
            if m.by_name.contains_key(&plan.name) {
                return Err(StoreError::SnapshotExists(plan.name.clone()));
            }
            self.check_origin_is_base(m, plan.base)?;
            let rec = SnapshotRecord {
                created_at_ns: now_ns(),
                writable: false,
                state: SnapshotState::Receiving,
                source_id: plan.source_snapshot,
                name: plan.name.clone(),
                size: m.sb.origin_size,
            };
            let staging = m.add_snapshot(rec)?;
            let mut flags = if plan.resumable { RECEIVE_RESUMABLE } else { 0 };
            // The origin is all zeros (checked above): with no snapshot to preserve it for,
            // nothing is lost by writing the stream straight into it.
            if plan.base.is_none() && m.live.is_empty() {
                flags |= RECEIVE_DIRECT;
            }
            m.receive = Some(ReceiveState {
                staging: staging.0,
                base: plan.base.map_or(0, |b| b.0),
                flags,
                token: plan.token.clone(),
            });
            if bound.is_nil() {
                m.replica_source = *plan.source_volume.as_bytes();
            }
            Ok(())
        })?;
        tracing::info!(volume = %self.volume_name, snapshot = %plan.name, base = ?plan.base, "delta apply started");
        Ok(())
    }

    /// The origin must read exactly as the base does: otherwise base + delta is not the target.
    fn check_origin_is_base(&self, m: &mut Meta, base: Option<SnapshotId>) -> Result<()> {
        let chunks = self.origin_size().div_ceil(u64::from(self.chunk_size));
        match base {
            Some(b) => {
                let Some(rec) = m.snapshots.get(&b.0).filter(|_| m.live.contains(&b.0)) else {
                    return Err(StoreError::SnapshotIdNotFound(b));
                };
                let name = rec.name.clone();
                if m.private_owners.contains(&b.0) {
                    return Err(StoreError::BaseModified(name));
                }
                if chunks > 0 {
                    let changed = m.changed_chunks(b, None, 0, chunks - 1)?;
                    if !changed.is_empty() {
                        return Err(StoreError::OriginDiverged {
                            base: name,
                            chunks: changed.len() as u64,
                        });
                    }
                }
            }
            // Holes are free to check; allocated ranges (all of a device that cannot report
            // holes) are read, since a full stream only says what is not zero.
            None => {
                let mut buf = vec![0u8; 1 << 20];
                let mut pos = 0;
                while pos < self.origin_size() {
                    let runs = self
                        .origin
                        .allocation(pos, self.origin_size() - pos)
                        .map_err(|e| StoreError::io("origin", pos, 0, e))?;
                    let covered: u64 = runs.iter().map(|(n, _)| n).sum();
                    if covered == 0 {
                        break;
                    }
                    for (len, data) in runs {
                        let end = pos + len;
                        while data && pos < end {
                            let n = (end - pos).min(buf.len() as u64) as usize;
                            self.origin
                                .read_at(&mut buf[..n], pos)
                                .map_err(|e| StoreError::io("origin", pos, n, e))?;
                            if buf[..n].iter().any(|&b| b != 0) {
                                return Err(StoreError::OriginNotEmpty);
                            }
                            pos += n as u64;
                        }
                        pos = end;
                    }
                }
            }
        }
        Ok(())
    }

    /// Stages `count` chunks from `first`: their bytes (`data`, the chunks back to back, the
    /// volume's last chunk possibly short), or zeros when `data` is `None`. Staging a chunk
    /// again replaces it (a resumed stream may resend what the last checkpoint did not cover).
    /// Durable only with the next checkpoint.
    pub fn stage(&self, first: u64, count: u32, data: Option<&[u8]>) -> Result<()> {
        self.stage_batch(&[(first, count, data)])
    }

    /// [`stage`](Self::stage) for several records at once: a direct apply records all their
    /// chunks in one commit before writing them, rather than one commit per record.
    pub fn stage_batch(&self, items: &[(u64, u32, Option<&[u8]>)]) -> Result<()> {
        let _r = self.receive_lock.lock();
        let staging = self.staging_id(false)?;
        for (first, count, data) in items {
            self.check_stage(*first, *count, *data)?;
        }
        if self.receive_flags() & RECEIVE_DIRECT != 0 {
            return self.stage_direct(staging, items);
        }
        for (first, count, data) in items {
            self.stage_one(staging, *first, *count, *data)?;
        }
        Ok(())
    }

    fn check_stage(&self, first: u64, count: u32, data: Option<&[u8]>) -> Result<()> {
        let total_chunks = self.origin_size().div_ceil(u64::from(self.chunk_size));
        let end = first.checked_add(u64::from(count));
        if !matches!(end, Some(e) if e <= total_chunks) {
            return Err(StoreError::BadStage(format!(
                "chunks {first}+{count} lie outside the volume's {total_chunks} chunks"
            )));
        }
        if let Some(d) = data {
            let want: u64 = (first..first + u64::from(count))
                .map(|c| self.chunk_len(c) as u64)
                .sum();
            if d.len() as u64 != want {
                return Err(StoreError::BadStage(format!(
                    "{} bytes for chunks {first}+{count}, which hold {want}",
                    d.len()
                )));
            }
        }
        Ok(())
    }

    fn stage_one(
        &self,
        staging: SnapshotId,
        first: u64,
        count: u32,
        data: Option<&[u8]>,
    ) -> Result<()> {
        let cs = u64::from(self.chunk_size);
        let mut at = 0usize;
        for c in first..first + u64::from(count) {
            let len = self.chunk_len(c);
            let piece = data
                .map(|d| &d[at..at + len])
                .filter(|p| p.iter().any(|&b| b != 0));
            at += len;
            let existing = self.meta.write().find_private(staging, OriginChunk(c))?;
            match (piece, existing) {
                (Some(p), Some(x)) if x != ZERO_CHUNK => {
                    let off = x.0 * cs;
                    self.dev
                        .write_at(p, off)
                        .map_err(|e| StoreError::io("store", off, len, e))?;
                }
                (Some(p), _) => self.write_new_private(staging, c, p)?,
                (None, existing) => {
                    let mut m = self.meta.write();
                    m.insert_private(staging, OriginChunk(c), ZERO_CHUNK)?;
                    if let Some(x) = existing.filter(|x| *x != ZERO_CHUNK) {
                        m.free_chunk(x);
                    }
                }
            }
        }
        Ok(())
    }

    /// A direct apply's `stage`: record the chunks (committed), then write them into the
    /// origin. Zero chunks need nothing: the origin started all zeros.
    fn stage_direct(&self, staging: SnapshotId, items: &[(u64, u32, Option<&[u8]>)]) -> Result<()> {
        let cs = u64::from(self.chunk_size);
        let mut pieces = Vec::new();
        for (first, count, data) in items {
            let Some(data) = data else {
                continue;
            };
            let mut at = 0usize;
            for c in *first..*first + u64::from(*count) {
                let len = self.chunk_len(c);
                let p = &data[at..at + len];
                at += len;
                if p.iter().any(|&b| b != 0) {
                    pieces.push((c, p));
                }
            }
        }
        let (Some(&(first, _)), Some(&(last, last_piece))) = (pieces.first(), pieces.last()) else {
            return Ok(());
        };
        self.transact(|m| {
            for (c, _) in &pieces {
                if m.find_private(staging, OriginChunk(*c))?.is_none() {
                    m.insert_private(staging, OriginChunk(*c), DIRECT_CHUNK)?;
                }
            }
            Ok(())
        })?;
        // Runs of consecutive chunks go out as one write each (a full stream's are all
        // consecutive but for zero chunks), past the page cache where the origin allows it:
        // nothing reads them back before the apply ends.
        let mut run: Vec<&[u8]> = Vec::new();
        let (mut run_first, mut run_bytes) = (0u64, 0usize);
        for (c, p) in pieces {
            let joins = !run.is_empty()
                && c == run_first + run.len() as u64
                && run_bytes + p.len() <= BULK_RUN_BYTES;
            if !joins && !run.is_empty() {
                self.write_origin_bulk(&run, run_first * cs)?;
                run.clear();
                run_bytes = 0;
            }
            if run.is_empty() {
                run_first = c;
            }
            run.push(p);
            run_bytes += p.len();
        }
        if !run.is_empty() {
            self.write_origin_bulk(&run, run_first * cs)?;
        }
        // Starts the disk on what was just written: the checkpoint's flush then finds most of
        // it written back already, rather than writing it all while the stream waits. The
        // kernel would not start on its own before a tenth of memory is dirty.
        let end = last * cs + last_piece.len() as u64;
        self.origin.start_writeback(first * cs, end - first * cs);
        Ok(())
    }

    fn receive_flags(&self) -> u32 {
        self.meta.read().receive.as_ref().map_or(0, |r| r.flags)
    }

    /// Makes everything staged so far durable, together with `token` (the caller's resume
    /// point just after it).
    pub fn checkpoint_receive(&self, token: &[u8]) -> Result<()> {
        let _r = self.receive_lock.lock();
        self.staging_id(false)?;
        if self.receive_flags() & RECEIVE_DIRECT != 0 {
            self.sync_origin()?;
        }
        self.transact(|m| set_token(m, token))
    }

    /// Completes the apply once the caller verified the whole stream: commit point, fold into
    /// the origin, publish. Returns the new snapshot.
    /// Calling it again after a failure past the commit point (say, the store filled up
    /// during the fold) carries the fold on.
    pub fn finish_receive(&self, token: &[u8]) -> Result<SnapshotInfo> {
        let _r = self.receive_lock.lock();
        let _barrier = self.barrier.write();
        // The fold writes the origin and copies from it.
        self.land_parked()?;
        let staging = self.staging_id(true)?;
        let folding = self
            .meta
            .read()
            .receive
            .as_ref()
            .is_some_and(|r| r.flags & RECEIVE_FOLDING != 0);
        if folding {
            return self.fold_and_publish(staging);
        }
        let generation = {
            let mut m = self.meta.write();
            m.check_usable()?;
            let Some(r) = m.receive.clone() else {
                return Err(StoreError::NoReceive);
            };
            let Some(rec) = m.snapshots.get(&staging.0).cloned() else {
                return Err(StoreError::NoReceive);
            };
            if m.by_name.contains_key(&rec.name) {
                return Err(StoreError::SnapshotExists(rec.name));
            }
            // A direct apply has been writing the origin; it was checked when it began.
            if r.flags & RECEIVE_DIRECT == 0 {
                self.check_origin_is_base(&mut m, (r.base != 0).then_some(SnapshotId(r.base)))?;
            }
            // The fold copies at most one batch of chunks before it frees one: make sure that
            // much room exists now, while the apply can still be resumed instead.
            let needed = FOLD_BATCH as u64 + 1;
            if m.pager.alloc.free_chunks() < needed {
                return Err(StoreError::StoreFull {
                    needed,
                    free: m.pager.alloc.free_chunks(),
                    chunk_size: self.chunk_size,
                });
            }
            set_token(&mut m, token)?;
            if let Some(r) = m.receive.as_mut() {
                r.flags |= RECEIVE_FOLDING;
            }
            m.pager.generation
        };
        // A direct apply's data is all in the origin: durable before the commit point.
        self.sync_origin()?;
        self.commit_wait(generation)?;
        self.fold_and_publish(staging)
    }

    /// Drops an apply that has not reached its commit point; its space comes back through
    /// reclamation.
    pub fn abort_receive(&self) -> Result<()> {
        let _r = self.receive_lock.lock();
        if self.receive_flags() & RECEIVE_DIRECT != 0 {
            self.undo_direct()?;
        }
        self.transact(|m| {
            m.check_usable()?;
            abort_locked(m)
        })?;
        self.wake_reclaimer();
        tracing::info!(volume = %self.volume_name, "delta apply aborted; reclaiming its staged data");
        Ok(())
    }

    /// Zeroes every origin chunk a direct apply wrote, so the volume is empty again. First
    /// the apply stops being resumable (a half-undone apply must never be continued), then
    /// batches of chunks are zeroed, flushed, and forgotten in one commit each.
    fn undo_direct(&self) -> Result<()> {
        let (staging, generation) = {
            let mut m = self.meta.write();
            m.check_usable()?;
            let Some(r) = m.receive.as_mut() else {
                return Err(StoreError::NoReceive);
            };
            if r.flags & RECEIVE_FOLDING != 0 {
                return Ok(()); // abort_locked reports it
            }
            r.flags &= !RECEIVE_RESUMABLE;
            let staging = SnapshotId(r.staging);
            m.dirty = true;
            (staging, m.pager.generation)
        };
        self.commit_wait(generation)?;
        let _barrier = self.barrier.write();
        self.land_parked()?;
        let zeros = vec![0u8; self.chunk_size as usize];
        let cs = u64::from(self.chunk_size);
        loop {
            let batch = self.meta.write().private_entries(staging, 0, FOLD_BATCH)?;
            if batch.is_empty() {
                return Ok(());
            }
            for (c, _) in &batch {
                let len = self.chunk_len(c.0);
                let off = c.0 * cs;
                self.write_origin_at(&zeros[..len], off)?;
            }
            self.sync_origin()?;
            self.transact(|m| {
                for (c, _) in &batch {
                    m.remove_private(Key::new(staging.0, c.0))?;
                }
                Ok(())
            })?;
        }
    }

    /// On open: finish an apply past its commit point, drop one that cannot be resumed.
    pub(super) fn recover_receive(&self) -> Result<()> {
        let Some(r) = self.meta.read().receive.clone() else {
            return Ok(());
        };
        if r.flags & RECEIVE_FOLDING != 0 {
            tracing::info!(volume = %self.volume_name, "completing a delta apply interrupted after its commit point");
            let _r = self.receive_lock.lock();
            let _barrier = self.barrier.write();
            self.fold_and_publish(SnapshotId(r.staging))?;
        } else if r.flags & RECEIVE_RESUMABLE == 0 {
            tracing::info!(volume = %self.volume_name, "discarding an interrupted delta apply that was not resumable");
            self.abort_receive()?;
        } else {
            tracing::info!(volume = %self.volume_name, "an interrupted delta apply is kept for resumption");
        }
        Ok(())
    }

    fn staging_id(&self, folding_ok: bool) -> Result<SnapshotId> {
        let m = self.meta.read();
        m.check_usable()?;
        match &m.receive {
            None => Err(StoreError::NoReceive),
            Some(r) if !folding_ok && r.flags & RECEIVE_FOLDING != 0 => {
                Err(StoreError::ReceiveCommitted {
                    name: m.receiving_name(),
                })
            }
            Some(r) => Ok(SnapshotId(r.staging)),
        }
    }

    /// Phases 3 and 4; the caller holds the receive lock and the write barrier.
    fn fold_and_publish(&self, staging: SnapshotId) -> Result<SnapshotInfo> {
        let cs = u64::from(self.chunk_size);
        let mut buf = vec![0u8; self.chunk_size as usize];
        loop {
            let batch = self.meta.write().private_entries(staging, 0, FOLD_BATCH)?;
            if batch.is_empty() {
                break;
            }
            {
                let _stripes = self.lock_chunk_stripes(batch.iter().map(|(c, _)| c.0));
                self.preserve(batch.iter().map(|(c, _)| c.0))?;
                for (c, x) in &batch {
                    if *x == DIRECT_CHUNK {
                        continue; // already in the origin
                    }
                    let len = self.chunk_len(c.0);
                    let piece = &mut buf[..len];
                    if *x == ZERO_CHUNK {
                        piece.fill(0);
                    } else {
                        let off = x.0 * cs;
                        self.dev
                            .read_at(piece, off)
                            .map_err(|e| StoreError::io("store", off, len, e))?;
                    }
                    let to = c.0 * cs;
                    self.write_origin_at(piece, to)?;
                }
            }
            self.sync_origin()?;
            self.transact(|m| {
                for (c, x) in &batch {
                    m.remove_private(Key::new(staging.0, c.0))?;
                    if holds_store_chunk(*x) {
                        m.free_chunk(StoreChunk(x.0));
                    }
                }
                Ok(())
            })?;
        }
        let info = self.transact(|m| {
            let Some(rec) = m.snapshots.get(&staging.0).cloned() else {
                return Err(StoreError::NoReceive);
            };
            let published = SnapshotRecord {
                created_at_ns: now_ns(),
                state: SnapshotState::Ready,
                ..rec
            };
            m.drop_snapshot_record(staging.0)?;
            m.private_owners.remove(&staging.0);
            let id = m.add_snapshot(published.clone())?;
            m.receive = None;
            Ok(SnapshotInfo::from_record(id.0, &published))
        })?;
        tracing::info!(volume = %self.volume_name, snapshot = %info.name, id = info.id.0, "delta applied");
        Ok(info)
    }
}

fn set_token(m: &mut Meta, token: &[u8]) -> Result<()> {
    if token.len() > MAX_RECEIVE_TOKEN {
        return Err(StoreError::BadStage(format!(
            "resume token of {} bytes, over {MAX_RECEIVE_TOKEN}",
            token.len()
        )));
    }
    match m.receive.as_mut() {
        Some(r) => {
            r.token = token.to_vec();
            m.dirty = true;
            Ok(())
        }
        None => Err(StoreError::NoReceive),
    }
}

fn abort_locked(m: &mut Meta) -> Result<()> {
    let Some(r) = m.receive.clone() else {
        return Err(StoreError::NoReceive);
    };
    if r.flags & RECEIVE_FOLDING != 0 {
        return Err(StoreError::ReceiveCommitted {
            name: m.receiving_name(),
        });
    }
    // The staging record stays `Receiving`, so it is never shown; owned by no apply now, it
    // is reclaimed like a deleted snapshot.
    m.receive = None;
    // A volume that never completed an apply is nobody's replica yet.
    if !m
        .snapshots
        .values()
        .any(|s| s.source_id != 0 && s.state == SnapshotState::Ready)
    {
        m.replica_source = [0; 16];
    }
    m.dirty = true;
    Ok(())
}

//! Export: the chunks that differ between a base and a target snapshot (or everything
//! allocated in the target, for a full stream), read from the target and written as a delta.
//!
//! The chunk list comes from the exception index (`Store::changed_extents`), so the cost
//! follows the number of changed chunks, not the volume size. Records carry up to
//! `RECORD_BYTES` of data; runs of chunks that read as zeros become zero records (or are left
//! out of a full stream, whose receiver starts from zeros).

use super::ranges::{MapKind, MapQuery};
use super::{ready_snapshot, Progress, ReplicationError, Result};
use multisnap_delta::{
    Compression, DeltaHeader, DeltaWriter, ResumePoint, SnapshotIdent, Target, Trailer, ZstdLevel,
};
use multisnap_store::{SnapshotInfo, Store, View};
use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

/// Largest data record the exporter writes.
const RECORD_BYTES: u64 = 1 << 20;

pub struct ExportPlan {
    pub base: Option<SnapshotInfo>,
    pub target: SnapshotInfo,
    /// The receiver's resume point: chunks below it are not sent again.
    pub resume: Option<ResumePoint>,
    /// `Some(level)`: data records are zstd-compressed where that shrinks them (a format
    /// version 2 stream); `None`: a version 1 stream.
    pub compression: Option<ZstdLevel>,
}

impl ExportPlan {
    pub fn new(
        store: &Store,
        base: Option<&str>,
        target: &str,
        resume_token: &[u8],
    ) -> Result<ExportPlan> {
        let ready = |name: &str| ready_snapshot(store, name);
        let target = ready(target)?;
        let base = base.map(ready).transpose()?;
        if base.as_ref().is_some_and(|b| b.id == target.id) {
            return Err(ReplicationError::SameSnapshot(target.name));
        }
        let resume = if resume_token.is_empty() {
            None
        } else {
            Some(ResumePoint::from_bytes(resume_token)?)
        };
        Ok(ExportPlan {
            base,
            target,
            resume,
            compression: None,
        })
    }
}

/// The stream header for `plan`. Snapshot ids are this store's: a receiver maps them through
/// the ids it recorded when it applied them.
pub fn header(store: &Store, plan: &ExportPlan) -> DeltaHeader {
    let ident = |s: &SnapshotInfo| SnapshotIdent {
        id: s.id.0,
        name: s.name.clone(),
    };
    DeltaHeader {
        volume_uuid: store.volume_uuid(),
        base: plan.base.as_ref().map(ident),
        target: Target::Snapshot(ident(&plan.target)),
        chunk_size: store.chunk_size(),
        // The target's own size: a snapshot taken before the volume grew is smaller.
        volume_size: plan.target.size,
        created_unix_nanos: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0),
        compression: match plan.compression {
            Some(_) => Compression::Zstd,
            None => Compression::None,
        },
    }
}

/// The chunk runs `(first, count)` the stream carries, in order: the block map of the target
/// (what changed since the base, or what holds data), widened to whole chunks.
pub fn chunk_runs(store: &Store, plan: &ExportPlan) -> Result<Vec<(u64, u64)>> {
    let cs = u64::from(store.chunk_size());
    // Built directly rather than through `MapQuery::new`: an export may also go from a newer
    // snapshot back to an older one, which the index answers the same way.
    let query = MapQuery {
        kind: match &plan.base {
            Some(base) => MapKind::Changed { base: base.clone() },
            None => MapKind::Allocated,
        },
        target: plan.target.clone(),
        start: 0,
    };
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for range in query.ranges(store) {
        let range = range?;
        let first = range.offset / cs;
        let end = range.end().div_ceil(cs);
        match runs.last_mut() {
            Some((f, n)) if *f + *n >= first => *n = (*n).max(end - *f),
            _ => runs.push((first, end - first)),
        }
    }
    Ok(runs)
}

/// Writes the whole stream for `plan` to `out`, calling `progress` after each record.
pub fn export(
    store: &Store,
    plan: &ExportPlan,
    out: impl Write,
    mut progress: impl FnMut(Progress),
) -> Result<Trailer> {
    let header = header(store, plan);
    let full = plan.base.is_none();
    let runs = chunk_runs(store, plan)?;
    let skip_below = plan.resume.map_or(0, |p| p.next_chunk);
    let mut w = match plan.resume {
        Some(p) => DeltaWriter::resume(out, header, p)?,
        None => DeltaWriter::new(out, header)?,
    };
    if let Some(level) = plan.compression {
        w = w.with_zstd_level(level)?;
    }
    let cs = u64::from(store.chunk_size());
    let size = plan.target.size;
    let per_record = (RECORD_BYTES / cs).max(1);
    let mut state = Progress {
        chunks_done: 0,
        chunks_total: runs.iter().map(|(_, n)| n).sum(),
        bytes: 0,
    };
    let view = View::Snapshot(plan.target.id);
    let mut buf = Vec::new();
    for (first, count) in runs {
        let mut c = first;
        let end = first + count;
        while c < end {
            let n = per_record.min(end - c);
            if c + n <= skip_below {
                c += n;
                state.chunks_done += n;
                continue;
            }
            let from = c * cs;
            let to = ((c + n) * cs).min(size);
            buf.resize((to - from) as usize, 0);
            store.read(view, from, &mut buf)?;
            // A writable snapshot's writes are durable only once flushed. The receiver keeps
            // what this stream carries as the base of later incrementals, and those send only
            // what differs from this store's copy of that base: a write sent here and then
            // lost in a crash here would stay on the receiver under every later snapshot.
            if plan.target.writable {
                store.flush_for_reader()?;
            }
            // Split into runs of data chunks and zero chunks.
            let mut i = 0u64;
            while i < n {
                let zero = chunk_is_zero(&buf, i, cs);
                let mut j = i + 1;
                while j < n && chunk_is_zero(&buf, j, cs) == zero {
                    j += 1;
                }
                let (at, len) = ((i * cs) as usize, (j - i) as u32);
                let stop = ((j * cs) as usize).min(buf.len());
                if !zero {
                    w.push_data(c + i, len, &buf[at..stop])?;
                } else if !full {
                    w.push_zero(c + i, len)?;
                }
                i = j;
            }
            c += n;
            state.chunks_done += n;
            state.bytes = w.resume_point().data_bytes;
            progress(state);
        }
    }
    let (_, trailer) = w.finish()?;
    Ok(trailer)
}

fn chunk_is_zero(buf: &[u8], i: u64, cs: u64) -> bool {
    let start = (i * cs) as usize;
    let end = ((i + 1) * cs).min(buf.len() as u64) as usize;
    buf[start..end].iter().all(|&b| b == 0)
}

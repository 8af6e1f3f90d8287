//! The worker side of a request: run one validated [`Op`] against the
//! export on a worker thread, build its whole reply, queue it for the
//! writer and report it to the observer.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;
use tracing::{debug, warn, Span};

use super::buffers::BufferPool;
use super::reply::{
    base_flags, block_status_reply, descriptors, error_reply, ok_reply, plan_read, read_reply,
    Outgoing, Part, Permits, ReadPiece,
};
use super::request::Op;
use crate::error::{Errno, NbdError};
use crate::export::{ContextExtent, Export};
use crate::handshake::MetaContext;
use crate::observer::{Observer, RequestEvent, RequestKind};
use crate::proto::{ContextId, Handle};

/// Immutable per-connection facts shared by the reader and the workers.
pub(super) struct Conn {
    pub(super) export_name: String,
    pub(super) export: Arc<dyn Export>,
    pub(super) structured: bool,
    pub(super) sparse_reads: bool,
    pub(super) contexts: Vec<(ContextId, MetaContext)>,
    pub(super) observer: Option<Arc<dyn Observer>>,
    /// WRITE payloads and READ reply data, reused across requests.
    pub(super) buffers: Arc<BufferPool>,
}

impl Conn {
    pub(super) fn report(
        &self,
        kind: RequestKind,
        bytes: u64,
        start: Instant,
        error: Option<Errno>,
    ) {
        if let Some(obs) = &self.observer {
            obs.request_finished(&RequestEvent {
                export: &self.export_name,
                kind,
                bytes,
                latency: start.elapsed(),
                error,
            });
        }
    }
}

/// A validated request on its way to a worker.
pub(super) struct Job {
    pub(super) handle: Handle,
    pub(super) kind: RequestKind,
    pub(super) op: Op,
    pub(super) permits: Permits,
    pub(super) span: Span,
    pub(super) start: Instant,
}

/// Runs one job on a worker thread: executes it, queues the reply, reports
/// it. Never panics (a panic in the backend becomes an EIO reply), so the
/// worker survives any request.
pub(super) fn work(conn: &Conn, replies: &mpsc::UnboundedSender<Outgoing>, job: Job) {
    let Job {
        handle,
        kind,
        op,
        permits,
        span,
        start,
    } = job;
    let _entered = span.enter();
    // The backend may be left mid-operation by a panic; that is its own
    // business (it must not corrupt data either way), ours is to answer.
    let (parts, bytes, errno) = match catch_unwind(AssertUnwindSafe(|| execute(conn, handle, op))) {
        Ok(r) => r,
        Err(panic) => {
            let e = NbdError::BackendPanicked {
                op: kind.as_str(),
                reason: panic_reason(panic.as_ref()),
            };
            warn!(error = %e, "backend panicked");
            let errno = e.errno();
            // Building an error reply allocates and encodes, nothing more.
            (
                error_reply(conn.structured, handle, &e, None),
                0,
                Some(errno),
            )
        }
    };
    if errno.is_none() {
        debug!("done");
    }
    // Fails only once the writer gave up on the socket: the reply (and its
    // permits) are dropped, which is all that can be done with it.
    let _ = replies.send(Outgoing {
        parts,
        _permits: permits,
    });
    // The observer is the embedder's code; a panic there must not kill the
    // worker either.
    if catch_unwind(AssertUnwindSafe(|| conn.report(kind, bytes, start, errno))).is_err() {
        warn!("request observer panicked");
    }
}

fn panic_reason(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic".to_owned()
    }
}

/// reply, bytes covered, and errno.
fn execute(conn: &Conn, handle: Handle, op: Op) -> (Vec<Part>, u64, Option<Errno>) {
    let ex = &conn.export;
    let (res, bytes) = match op {
        Op::Read { offset, len, df } => return read(conn, handle, offset, len, df),
        Op::BlockStatus {
            offset,
            len,
            req_one,
        } => return block_status(conn, handle, offset, len, req_one),
        Op::Write { offset, data, fua } => (ex.write(offset, &data, fua), data.len() as u64),
        Op::Flush => (ex.flush(), 0),
        Op::Trim { offset, len, fua } => (ex.trim(offset, u64::from(len), fua), u64::from(len)),
        Op::WriteZeroes {
            offset,
            len,
            mode,
            fua,
        } => (
            ex.write_zeroes(offset, u64::from(len), mode, fua),
            u64::from(len),
        ),
    };
    match res {
        Ok(()) => (ok_reply(conn.structured, handle), bytes, None),
        Err(e) => {
            debug!(error = %e, "request failed");
            let errno = e.errno();
            (
                error_reply(conn.structured, handle, &e, None),
                bytes,
                Some(errno),
            )
        }
    }
}

fn read(
    conn: &Conn,
    handle: Handle,
    offset: u64,
    len: u32,
    df: bool,
) -> (Vec<Part>, u64, Option<Errno>) {
    let ex = &conn.export;
    let total = u64::from(len);
    let plan = if conn.structured && conn.sparse_reads && !df && len > 0 {
        match ex.block_status(offset, total) {
            Ok(extents) => plan_read(total, &extents),
            // Holes are an optimisation; fall back to reading everything.
            Err(_) => vec![ReadPiece::Data(0..total)],
        }
    } else {
        vec![ReadPiece::Data(0..total)]
    };
    // A reused buffer holds an earlier request's bytes: only the data pieces
    // are sent, each filled by the export below, and a failed read sends
    // none of it.
    let mut buf = conn.buffers.take(len as usize);
    for piece in &plan {
        let ReadPiece::Data(r) = piece else { continue };
        let at = offset + r.start;
        let Some(slice) = buf.get_mut(r.start as usize..r.end as usize) else {
            continue;
        };
        if let Err(e) = ex.read(at, slice) {
            debug!(error = %e, "read failed");
            let errno = e.errno();
            // The offset of the piece that failed, for
            // NBD_REPLY_TYPE_ERROR_OFFSET.
            let at = conn.structured.then_some(at);
            return (
                error_reply(conn.structured, handle, &e, at),
                total,
                Some(errno),
            );
        }
    }
    let parts = read_reply(conn.structured, handle, offset, &plan, buf);
    (parts, total, None)
}

fn block_status(
    conn: &Conn,
    handle: Handle,
    offset: u64,
    len: u32,
    req_one: bool,
) -> (Vec<Part>, u64, Option<Errno>) {
    let ex = &conn.export;
    let mut chunks = Vec::with_capacity(conn.contexts.len());
    for (id, ctx) in &conn.contexts {
        let res = match ctx {
            MetaContext::BaseAllocation => ex
                .block_status(offset, u64::from(len))
                .map(|v| v.iter().map(|e| (e.len, base_flags(e))).collect::<Vec<_>>()),
            MetaContext::Named(name) => ex.context_status(name, offset, u64::from(len)).map(|v| {
                v.iter()
                    .map(|e: &ContextExtent| (e.len, e.flags))
                    .collect::<Vec<_>>()
            }),
        };
        match res {
            Ok(raw) => chunks.push((*id, descriptors(len, raw, req_one))),
            Err(e) => {
                debug!(error = %e, "block status failed");
                let errno = e.errno();
                return (
                    error_reply(conn.structured, handle, &e, None),
                    u64::from(len),
                    Some(errno),
                );
            }
        }
    }
    (block_status_reply(handle, &chunks), u64::from(len), None)
}

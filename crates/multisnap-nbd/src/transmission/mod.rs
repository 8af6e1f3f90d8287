//! Transmission phase: requests are read one after another, executed
//! concurrently on the connection's worker threads, and answered out of
//! order.
//!
//! Task and thread layout per connection (nbdkit's model, minus the socket
//! lock):
//! - [`run`] is the reader, an async task: it parses headers, takes the
//!   permits (below), reads WRITE payloads and validates. A request that
//!   fails validation is answered from here; a valid one becomes a job on
//!   the connection's queue.
//! - Up to `ServerConfig::workers_per_connection` (capped by
//!   `max_in_flight`) std threads named `nbd-worker`, started on demand,
//!   pop jobs, call the [`Export`] synchronously inside the request's
//!   tracing span, build the whole reply, hand it to the writer, and report
//!   the request to the observer. A worker that is busy takes the next job
//!   without being woken; an idle one is woken only when a job arrives.
//! - A single writer task owns the socket's write half and writes replies
//!   whole, so chunks of different replies never interleave mid-message. It
//!   takes every reply already queued before it flushes, so a burst of
//!   replies costs one socket write.
//! - Two semaphores bound the work in flight (requests, and payload bytes).
//!   A permit travels with its request into the reply and is released only
//!   after the write that put that reply on the socket, so a client that
//!   stops reading replies stops being read from.
//!
//! A panic in the backend (or in building a reply) is caught in the worker
//! and answered as EIO (`NbdError::BackendPanicked`); the worker lives on.
//!
//! FLUSH ordering: a write is acknowledged only after `Export::write`
//! returned, and `Export::flush` is called only after the FLUSH header was
//! read. So every write whose reply the client saw before sending FLUSH
//! returned before `flush` was called, and the `Export` contract ("flush
//! covers every write that has returned") makes it durable.
//!
//! Ending: when the client disconnects, the socket fails or `shutdown`
//! fires, the reader stops reading and closes the queue; the workers still
//! run every queued job and send its reply (dropped if the socket is gone),
//! then exit. `run` returns only after the writer has written (or given up
//! on) the last reply and every worker thread has been joined. If `run`'s
//! future is dropped instead, the queue is closed all the same and the
//! workers exit on their own once it is drained: no thread outlives its
//! jobs.

use std::ops::Range;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, debug_span, warn, Instrument, Span};

use crate::error::NbdError;
use crate::export::{ContextExtent, Export, Extent, Fua, ZeroMode};
use crate::handshake::{read_or_eof, MetaContext, Session};
use crate::observer::{Observer, RequestEvent, RequestKind};
use crate::proto::{self, ContextId, Errno, Handle, RequestHeader};
use crate::config::ServerConfig;

mod workers;
use workers::Pool;
pub use workers::WORKER_THREAD_NAME;

/// Most descriptors sent in one NBD_REPLY_TYPE_BLOCK_STATUS chunk (1 MiB of
/// descriptors); the client asks again for the rest.
const MAX_EXTENTS: usize = 128 * 1024;

/// A validated request, ready to run against the export.
#[derive(Debug)]
pub enum Op {
    Read {
        offset: u64,
        len: u32,
        df: bool,
    },
    Write {
        offset: u64,
        data: Vec<u8>,
        fua: Fua,
    },
    Flush,
    Trim {
        offset: u64,
        len: u32,
        fua: Fua,
    },
    WriteZeroes {
        offset: u64,
        len: u32,
        mode: ZeroMode,
        fua: Fua,
    },
    BlockStatus {
        offset: u64,
        len: u32,
        req_one: bool,
    },
}

pub fn kind_of(command: u16) -> RequestKind {
    match command {
        proto::CMD_READ => RequestKind::Read,
        proto::CMD_WRITE => RequestKind::Write,
        proto::CMD_DISC => RequestKind::Disconnect,
        proto::CMD_FLUSH => RequestKind::Flush,
        proto::CMD_TRIM => RequestKind::Trim,
        proto::CMD_WRITE_ZEROES => RequestKind::WriteZeroes,
        proto::CMD_BLOCK_STATUS => RequestKind::BlockStatus,
        _ => RequestKind::Unknown,
    }
}

/// What a validator needs to know about the session; split out so tests and
/// the fuzzer can validate headers without a live export.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub size: u64,
    pub read_only: bool,
    pub structured: bool,
    pub has_contexts: bool,
    pub max_payload: u32,
}

fn check_range(op: &'static str, offset: u64, len: u32, size: u64) -> Result<(), NbdError> {
    match offset.checked_add(u64::from(len)) {
        Some(end) if end <= size => Ok(()),
        _ => Err(NbdError::OutOfRange {
            op,
            offset,
            len: u64::from(len),
            size,
        }),
    }
}

fn check_write_range(op: &'static str, offset: u64, len: u32, size: u64) -> Result<(), NbdError> {
    check_range(op, offset, len, size).map_err(|_| NbdError::WritePastEnd {
        op,
        offset,
        len: u64::from(len),
        size,
    })
}

fn check_flags(flags: u16, allowed: u16, cmd: &str) -> Result<(), NbdError> {
    if flags & !allowed != 0 {
        return Err(NbdError::InvalidRequest {
            reason: format!("flags {flags:#x} not valid for {cmd}"),
        });
    }
    Ok(())
}

/// Turns a parsed header (plus the WRITE payload, already read) into an
/// [`Op`], or the error to reply with. Pure: no I/O.
pub fn validate(h: &RequestHeader, payload: Option<Vec<u8>>, l: &Limits) -> Result<Op, NbdError> {
    let fua = Fua(h.flags & proto::CMD_FLAG_FUA != 0);
    // Clients are known to set FUA on any command, so it is accepted everywhere.
    let base = proto::CMD_FLAG_FUA;
    match h.command {
        proto::CMD_READ => {
            let df_ok = if l.structured { proto::CMD_FLAG_DF } else { 0 };
            check_flags(h.flags, base | df_ok, "READ")?;
            if h.length > l.max_payload {
                return Err(NbdError::TooLarge {
                    len: u64::from(h.length),
                    max: u64::from(l.max_payload),
                });
            }
            check_range("read", h.offset, h.length, l.size)?;
            Ok(Op::Read {
                offset: h.offset,
                len: h.length,
                df: h.flags & proto::CMD_FLAG_DF != 0,
            })
        }
        proto::CMD_WRITE => {
            check_flags(h.flags, base, "WRITE")?;
            if l.read_only {
                return Err(NbdError::ReadOnly {
                    export: String::new(),
                });
            }
            check_write_range("write", h.offset, h.length, l.size)?;
            let data = payload.ok_or(NbdError::Malformed {
                what: "write request",
                reason: "payload missing",
            })?;
            Ok(Op::Write {
                offset: h.offset,
                data,
                fua,
            })
        }
        proto::CMD_FLUSH => {
            check_flags(h.flags, base, "FLUSH")?;
            Ok(Op::Flush)
        }
        proto::CMD_TRIM => {
            check_flags(h.flags, base, "TRIM")?;
            if l.read_only {
                return Err(NbdError::ReadOnly {
                    export: String::new(),
                });
            }
            check_write_range("trim", h.offset, h.length, l.size)?;
            Ok(Op::Trim {
                offset: h.offset,
                len: h.length,
                fua,
            })
        }
        proto::CMD_WRITE_ZEROES => {
            check_flags(h.flags, base | proto::CMD_FLAG_NO_HOLE, "WRITE_ZEROES")?;
            if l.read_only {
                return Err(NbdError::ReadOnly {
                    export: String::new(),
                });
            }
            check_write_range("write_zeroes", h.offset, h.length, l.size)?;
            let mode = if h.flags & proto::CMD_FLAG_NO_HOLE != 0 {
                ZeroMode::NoHole
            } else {
                ZeroMode::MayTrim
            };
            Ok(Op::WriteZeroes {
                offset: h.offset,
                len: h.length,
                mode,
                fua,
            })
        }
        proto::CMD_BLOCK_STATUS => {
            check_flags(h.flags, base | proto::CMD_FLAG_REQ_ONE, "BLOCK_STATUS")?;
            if !l.structured || !l.has_contexts {
                return Err(NbdError::InvalidRequest {
                    reason: "BLOCK_STATUS without a negotiated metadata context".into(),
                });
            }
            if h.length == 0 {
                return Err(NbdError::InvalidRequest {
                    reason: "BLOCK_STATUS of zero length".into(),
                });
            }
            check_range("block_status", h.offset, h.length, l.size)?;
            Ok(Op::BlockStatus {
                offset: h.offset,
                len: h.length,
                req_one: h.flags & proto::CMD_FLAG_REQ_ONE != 0,
            })
        }
        other => Err(NbdError::InvalidRequest {
            reason: format!("unknown command {other}"),
        }),
    }
}

/// One piece of an outgoing reply.
enum Part {
    Bytes(Vec<u8>),
    Slice(Arc<Vec<u8>>, Range<usize>),
}

impl Part {
    fn as_slice(&self) -> &[u8] {
        match self {
            Part::Bytes(b) => b,
            Part::Slice(b, r) => b.get(r.clone()).unwrap_or(&[]),
        }
    }
}

/// The permits a request holds until its reply is on the wire.
type Permits = (OwnedSemaphorePermit, Option<OwnedSemaphorePermit>);

/// A complete reply plus the permits it holds until it is on the wire.
struct Outgoing {
    parts: Vec<Part>,
    _permits: Permits,
}

/// Immutable per-connection facts shared by the reader and the workers.
struct Conn {
    export_name: String,
    export: Arc<dyn Export>,
    structured: bool,
    sparse_reads: bool,
    contexts: Vec<(ContextId, MetaContext)>,
    observer: Option<Arc<dyn Observer>>,
}

impl Conn {
    fn report(&self, kind: RequestKind, bytes: u64, start: Instant, error: Option<Errno>) {
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
struct Job {
    handle: Handle,
    kind: RequestKind,
    op: Op,
    permits: Permits,
    span: Span,
    start: Instant,
}

/// Runs one job on a worker thread: executes it, queues the reply, reports
/// it. Never panics (a panic in the backend becomes an EIO reply), so the
/// worker survives any request.
fn work(conn: &Conn, replies: &mpsc::UnboundedSender<Outgoing>, job: Job) {
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
            (error_reply(conn, handle, &e, None), 0, Some(errno))
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

/// Worker threads for one connection: at most `workers_per_connection`,
/// and never more than requests that can be in flight at once.
fn worker_count(config: &ServerConfig) -> usize {
    config
        .workers_per_connection
        .min(config.max_in_flight)
        .max(1)
}

/// Runs the transmission phase until the client disconnects, the socket
/// fails, or `shutdown` fires; in every case in-flight requests are finished
/// and their replies sent (if the socket still works), and the connection's
/// worker threads have exited, before returning.
pub async fn run<R, W>(
    mut rd: R,
    wr: W,
    session: Session,
    config: &ServerConfig,
    shutdown: &CancellationToken,
) -> Result<(), NbdError>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let stop = shutdown.child_token();
    let limits = Limits {
        size: session.info.size,
        read_only: session.info.read_only,
        structured: session.structured,
        has_contexts: !session.contexts.is_empty(),
        max_payload: session.max_payload,
    };
    let conn = Arc::new(Conn {
        export_name: session.export_name,
        export: session.export,
        structured: session.structured,
        sparse_reads: session.info.sparse_reads,
        contexts: session.contexts,
        observer: config.observer.clone(),
    });
    let count = Arc::new(Semaphore::new(config.max_in_flight.max(1)));
    let byte_budget = config.max_in_flight_bytes.max(limits.max_payload).max(1);
    let bytes = Arc::new(Semaphore::new(byte_budget as usize));

    // Unbounded because the request semaphore already bounds it: every
    // reply holds a request permit until it is written. So a worker never
    // blocks handing over a reply.
    let (tx, rx) = mpsc::unbounded_channel::<Outgoing>();
    let writer = tokio::spawn(write_replies(wr, rx, stop.clone()).in_current_span());
    let mut pool = {
        let (conn, tx) = (conn.clone(), tx.clone());
        Pool::new(
            worker_count(config),
            Arc::new(move |job: Job| work(&conn, &tx, job)),
        )
    };

    let mut result = Ok(());
    loop {
        let mut hdr = [0u8; proto::REQUEST_HEADER_LEN];
        let got = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            r = read_or_eof(&mut rd, &mut hdr) => r,
        };
        match got {
            Ok(Some(())) => {}
            Ok(None) => break,
            Err(e) => {
                debug!(error = %e, "client connection ended mid-request");
                break;
            }
        }
        let start = Instant::now();
        let h = match proto::parse_request_header(&hdr) {
            Ok(h) => h,
            Err(e) => {
                warn!(error = %e, "closing connection");
                result = Err(e);
                break;
            }
        };
        let kind = kind_of(h.command);
        let span = debug_span!(
            "nbd_request",
            cmd = kind.as_str(),
            handle = h.handle.0,
            offset = h.offset,
            len = h.length
        );
        if h.command == proto::CMD_DISC {
            debug!(parent: &span, "client disconnect");
            break;
        }

        // Payload-carrying requests take their size from the byte budget
        // before anything is allocated.
        let payload_len = match h.command {
            proto::CMD_READ | proto::CMD_WRITE if h.length <= limits.max_payload => h.length,
            _ => 0,
        };
        let permits = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            p = acquire(&count, &bytes, payload_len) => p,
        };
        let Some(permits) = permits else { break };

        let mut payload = None;
        if h.command == proto::CMD_WRITE {
            if h.length > limits.max_payload {
                // We cannot skip gigabytes of payload safely, so the stream
                // cannot be resynchronised: answer, then hang up.
                let err = NbdError::PayloadTooLarge {
                    len: h.length,
                    max: limits.max_payload,
                };
                warn!(parent: &span, error = %err, "closing connection");
                let parts = error_reply(&conn, h.handle, &err, None);
                let _ = tx.send(Outgoing {
                    parts,
                    _permits: permits,
                });
                result = Err(err);
                break;
            }
            let mut buf = vec![0u8; h.length as usize];
            let read = tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                r = rd.read_exact(&mut buf) => r,
            };
            if let Err(e) = read {
                debug!(parent: &span, error = %e, "client went away during write payload");
                break;
            }
            payload = Some(buf);
        }

        let op = match validate(&h, payload, &limits) {
            Ok(op) => op,
            Err(e) => {
                // Answered right here: nothing to run, and a thread
                // hand-off would cost more than encoding the error.
                let e = name_export(e, &conn.export_name);
                debug!(parent: &span, error = %e, "request refused");
                let errno = e.errno();
                let _ = tx.send(Outgoing {
                    parts: error_reply(&conn, h.handle, &e, None),
                    _permits: permits,
                });
                conn.report(kind, 0, start, Some(errno));
                continue;
            }
        };
        let job = Job {
            handle: h.handle,
            kind,
            op,
            permits,
            span,
            start,
        };
        if let Err(e) = pool.submit(job) {
            // No worker at all (the process is out of threads): the job
            // cannot run, so the connection cannot be served.
            warn!(error = %e, "cannot start an NBD worker thread; closing connection");
            result = Err(NbdError::Connection(e));
            break;
        }
    }

    // The workers run what is queued, then exit and drop their reply
    // senders; the writer ends once the last reply is written.
    let threads = pool.close();
    drop(tx);
    if let Err(e) = writer.await {
        warn!(error = %e, "reply writer task failed");
    }
    // If the writer gave up early (socket failure), workers may still be
    // inside the backend; joining waits for them, off the runtime threads.
    let joined = tokio::task::spawn_blocking(move || {
        for t in threads {
            // A worker cannot panic (see `work`); nothing to report if it did.
            let _ = t.join();
        }
    });
    if let Err(e) = joined.await {
        warn!(error = %e, "joining NBD workers failed");
    }
    result
}

async fn acquire(count: &Arc<Semaphore>, bytes: &Arc<Semaphore>, n: u32) -> Option<Permits> {
    let c = count.clone().acquire_owned().await.ok()?;
    let b = if n > 0 {
        Some(bytes.clone().acquire_many_owned(n).await.ok()?)
    } else {
        None
    };
    Some((c, b))
}

/// Writes replies whole, in the order they were queued. Whatever is queued
/// when the writer gets to run goes out in one flush (one `sendmsg` while it
/// fits the 256 KiB buffer); the permits of those replies are released only
/// after that flush, when the bytes are in the socket.
async fn write_replies<W: AsyncWrite + Unpin>(
    wr: W,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    stop: CancellationToken,
) {
    let mut w = BufWriter::with_capacity(256 * 1024, wr);
    let mut batch: Vec<Outgoing> = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        let res: std::io::Result<()> = async {
            // Bounded: each queued reply holds a request permit, and no new
            // permit is issued until this batch is flushed and dropped.
            while let Some(msg) = next.take().or_else(|| rx.try_recv().ok()) {
                for p in &msg.parts {
                    w.write_all(p.as_slice()).await?;
                }
                batch.push(msg);
            }
            w.flush().await
        }
        .await;
        batch.clear();
        if let Err(e) = res {
            debug!(error = %e, "cannot send replies; closing connection");
            // Stop the reader; workers see a closed channel and drop their
            // replies.
            stop.cancel();
            return;
        }
    }
    let _ = w.flush().await;
    let _ = w.shutdown().await;
}

fn name_export(e: NbdError, export: &str) -> NbdError {
    match e {
        NbdError::ReadOnly { .. } => NbdError::ReadOnly {
            export: export.to_owned(),
        },
        other => other,
    }
}

/// Error reply in the negotiated style. `offset` selects ERROR_OFFSET.
fn error_reply(conn: &Conn, handle: Handle, e: &NbdError, offset: Option<u64>) -> Vec<Part> {
    let errno = e.errno();
    if conn.structured {
        vec![Part::Bytes(proto::encode_structured_error(
            handle,
            proto::REPLY_FLAG_DONE,
            errno,
            &e.to_string(),
            offset,
        ))]
    } else {
        vec![Part::Bytes(
            proto::encode_simple_reply(handle, errno).to_vec(),
        )]
    }
}

fn ok_reply(conn: &Conn, handle: Handle) -> Vec<Part> {
    if conn.structured {
        vec![Part::Bytes(
            proto::encode_structured_header(
                handle,
                proto::REPLY_FLAG_DONE,
                proto::REPLY_TYPE_NONE,
                0,
            )
            .to_vec(),
        )]
    } else {
        vec![Part::Bytes(
            proto::encode_simple_reply(handle, Errno(0)).to_vec(),
        )]
    }
}

/// Runs one validated request on the calling (worker) thread; returns the
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
        Ok(()) => (ok_reply(conn, handle), bytes, None),
        Err(e) => {
            debug!(error = %e, "request failed");
            let errno = e.errno();
            (error_reply(conn, handle, &e, None), bytes, Some(errno))
        }
    }
}

/// A planned piece of a structured READ reply, relative to the request start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadPiece {
    Data(Range<u64>),
    Hole(Range<u64>),
}

/// Splits a read of `len` bytes into data and hole pieces from the export's
/// extents: only ranges known to read as zero become holes; anything the
/// extents do not cover is data.
pub fn plan_read(len: u64, extents: &[Extent]) -> Vec<ReadPiece> {
    let mut out: Vec<ReadPiece> = Vec::new();
    let mut pos = 0u64;
    for e in extents {
        if pos >= len {
            break;
        }
        let n = e.len.min(len - pos);
        if n == 0 {
            continue;
        }
        let r = pos..pos + n;
        match (out.last_mut(), e.zero) {
            (Some(ReadPiece::Hole(prev)), true) => prev.end = r.end,
            (Some(ReadPiece::Data(prev)), false) => prev.end = r.end,
            (_, true) => out.push(ReadPiece::Hole(r)),
            (_, false) => out.push(ReadPiece::Data(r)),
        }
        pos += n;
    }
    if pos < len {
        match out.last_mut() {
            Some(ReadPiece::Data(prev)) => prev.end = len,
            _ => out.push(ReadPiece::Data(pos..len)),
        }
    }
    out
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
    let mut buf = vec![0u8; len as usize];
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
            return (error_reply(conn, handle, &e, at), total, Some(errno));
        }
    }

    if !conn.structured {
        let mut parts = vec![Part::Bytes(
            proto::encode_simple_reply(handle, Errno(0)).to_vec(),
        )];
        parts.push(Part::Bytes(buf));
        return (parts, total, None);
    }
    if len == 0 {
        return (ok_reply(conn, handle), 0, None);
    }

    let buf = Arc::new(buf);
    let mut parts = Vec::with_capacity(plan.len() * 2);
    let last = plan.len().saturating_sub(1);
    for (i, piece) in plan.iter().enumerate() {
        let flags = if i == last { proto::REPLY_FLAG_DONE } else { 0 };
        match piece {
            ReadPiece::Data(r) => {
                let n = r.end - r.start;
                let mut hdr = proto::encode_structured_header(
                    handle,
                    flags,
                    proto::REPLY_TYPE_OFFSET_DATA,
                    (n + 8) as u32,
                )
                .to_vec();
                hdr.extend_from_slice(&(offset + r.start).to_be_bytes());
                parts.push(Part::Bytes(hdr));
                parts.push(Part::Slice(buf.clone(), r.start as usize..r.end as usize));
            }
            ReadPiece::Hole(r) => {
                let n = r.end - r.start;
                let mut hdr = proto::encode_structured_header(
                    handle,
                    flags,
                    proto::REPLY_TYPE_OFFSET_HOLE,
                    12,
                )
                .to_vec();
                hdr.extend_from_slice(&(offset + r.start).to_be_bytes());
                hdr.extend_from_slice(&(n as u32).to_be_bytes());
                parts.push(Part::Bytes(hdr));
            }
        }
    }
    (parts, total, None)
}

/// Clips, merges and caps extents into wire descriptors covering at most
/// `len` bytes; never returns an empty list.
pub fn descriptors(
    len: u32,
    raw: impl IntoIterator<Item = (u64, u32)>,
    req_one: bool,
) -> Vec<(u32, u32)> {
    let mut out: Vec<(u32, u32)> = Vec::new();
    let mut left = u64::from(len);
    for (n, flags) in raw {
        if left == 0 {
            break;
        }
        let n = n.min(left);
        if n == 0 {
            continue;
        }
        left -= n;
        // n <= len <= u32::MAX here.
        let n = n as u32;
        match out.last_mut() {
            Some((plen, pflags)) if *pflags == flags => *plen += n,
            _ => {
                if out.len() >= MAX_EXTENTS {
                    break;
                }
                out.push((n, flags));
            }
        }
    }
    if out.is_empty() {
        out.push((len, 0));
    }
    if req_one {
        out.truncate(1);
    }
    out
}

pub fn base_flags(e: &Extent) -> u32 {
    let mut f = 0;
    if e.hole {
        f |= proto::STATE_HOLE;
    }
    if e.zero {
        f |= proto::STATE_ZERO;
    }
    f
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
                    error_reply(conn, handle, &e, None),
                    u64::from(len),
                    Some(errno),
                );
            }
        }
    }
    let mut parts = Vec::with_capacity(chunks.len());
    let last = chunks.len().saturating_sub(1);
    for (i, (id, descs)) in chunks.iter().enumerate() {
        let flags = if i == last { proto::REPLY_FLAG_DONE } else { 0 };
        let payload_len = 4 + descs.len() * 8;
        let mut b = proto::encode_structured_header(
            handle,
            flags,
            proto::REPLY_TYPE_BLOCK_STATUS,
            payload_len as u32,
        )
        .to_vec();
        b.reserve(payload_len);
        b.extend_from_slice(&id.0.to_be_bytes());
        for (n, f) in descs {
            b.extend_from_slice(&n.to_be_bytes());
            b.extend_from_slice(&f.to_be_bytes());
        }
        parts.push(Part::Bytes(b));
    }
    (parts, u64::from(len), None)
}

#[cfg(test)]
mod tests;

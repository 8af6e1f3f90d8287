//! Transmission phase: requests are read one after another, executed
//! concurrently on the blocking pool, and answered out of order.
//!
//! Task layout per connection:
//! - this function is the reader: it parses headers, reads WRITE payloads,
//!   validates, and spawns one task per request;
//! - a single writer task owns the socket's write half and serialises
//!   replies, so chunks of different replies never interleave mid-message;
//! - two semaphores bound the work in flight (requests, and payload bytes),
//!   and a permit is released only after its reply hit the socket, so a
//!   client that stops reading replies stops being read from.
//!
//! FLUSH ordering: a write is acknowledged only after `Export::write`
//! returned, and `Export::flush` is called only after the FLUSH header was
//! read. So every write whose reply the client saw before sending FLUSH
//! returned before `flush` was called, and the `Export` contract ("flush
//! covers every write that has returned") makes it durable.

use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, debug_span, warn, Instrument};

use crate::error::NbdError;
use crate::export::{ContextExtent, Export, Extent, Fua, ZeroMode};
use crate::handshake::{read_or_eof, MetaContext, Session};
use crate::observer::{Observer, RequestEvent, RequestKind};
use crate::proto::{self, ContextId, Errno, Handle, RequestHeader};
use crate::server::{blocking, ServerConfig};

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

/// A complete reply plus the permits it holds until it is on the wire.
struct Outgoing {
    parts: Vec<Part>,
    _permits: (OwnedSemaphorePermit, Option<OwnedSemaphorePermit>),
}

/// Immutable per-connection facts shared by every request task.
struct Conn {
    export_name: String,
    export: Arc<dyn Export>,
    structured: bool,
    sparse_reads: bool,
    contexts: Vec<(ContextId, MetaContext)>,
    observer: Option<Arc<dyn Observer>>,
}

/// Runs the transmission phase until the client disconnects, the socket
/// fails, or `shutdown` fires; in every case in-flight requests are finished
/// and their replies sent (if the socket still works) before returning.
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

    let (tx, rx) = mpsc::channel::<Outgoing>(config.max_in_flight.max(1));
    let writer = tokio::spawn(write_replies(wr, rx, stop.clone()).in_current_span());

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
                let _ = tx
                    .send(Outgoing {
                        parts,
                        _permits: permits,
                    })
                    .await;
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

        let tx = tx.clone();
        let conn = conn.clone();
        let task = async move {
            let (parts, bytes, errno) = match validate(&h, payload, &limits) {
                Ok(op) => execute(&conn, h.handle, op).await,
                Err(e) => {
                    let e = name_export(e, &conn.export_name);
                    debug!(error = %e, "request refused");
                    let errno = e.errno();
                    (error_reply(&conn, h.handle, &e, None), 0, Some(errno))
                }
            };
            if errno.is_none() {
                debug!("done");
            }
            let _ = tx
                .send(Outgoing {
                    parts,
                    _permits: permits,
                })
                .await;
            if let Some(obs) = &conn.observer {
                obs.request_finished(&RequestEvent {
                    export: &conn.export_name,
                    kind,
                    bytes,
                    latency: start.elapsed(),
                    error: errno,
                });
            }
        };
        tokio::spawn(task.instrument(span));
    }

    // Every request task holds a sender; the writer ends once they have all
    // finished and their replies are written.
    drop(tx);
    if let Err(e) = writer.await {
        warn!(error = %e, "reply writer task failed");
    }
    result
}

async fn acquire(
    count: &Arc<Semaphore>,
    bytes: &Arc<Semaphore>,
    n: u32,
) -> Option<(OwnedSemaphorePermit, Option<OwnedSemaphorePermit>)> {
    let c = count.clone().acquire_owned().await.ok()?;
    let b = if n > 0 {
        Some(bytes.clone().acquire_many_owned(n).await.ok()?)
    } else {
        None
    };
    Some((c, b))
}

async fn write_replies<W: AsyncWrite + Unpin>(
    wr: W,
    mut rx: mpsc::Receiver<Outgoing>,
    stop: CancellationToken,
) {
    let mut w = BufWriter::with_capacity(256 * 1024, wr);
    while let Some(msg) = rx.recv().await {
        let mut res = Ok(());
        for p in &msg.parts {
            res = w.write_all(p.as_slice()).await;
            if res.is_err() {
                break;
            }
        }
        if res.is_ok() && rx.is_empty() {
            res = w.flush().await;
        }
        if let Err(e) = res {
            debug!(error = %e, "cannot send replies; closing connection");
            // Stop the reader; request tasks see a closed channel and drop
            // their replies.
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

/// Runs one validated request; returns the reply, bytes covered, and errno.
async fn execute(conn: &Arc<Conn>, handle: Handle, op: Op) -> (Vec<Part>, u64, Option<Errno>) {
    let ex = conn.export.clone();
    let (res, bytes, err_offset) = match op {
        Op::Read { offset, len, df } => {
            return read(conn, handle, offset, len, df).await;
        }
        Op::Write { offset, data, fua } => {
            let n = data.len() as u64;
            (
                blocking("write", move || ex.write(offset, &data, fua)).await,
                n,
                None,
            )
        }
        Op::Flush => (blocking("flush", move || ex.flush()).await, 0, None),
        Op::Trim { offset, len, fua } => (
            blocking("trim", move || ex.trim(offset, u64::from(len), fua)).await,
            u64::from(len),
            None,
        ),
        Op::WriteZeroes {
            offset,
            len,
            mode,
            fua,
        } => (
            blocking("write_zeroes", move || {
                ex.write_zeroes(offset, u64::from(len), mode, fua)
            })
            .await,
            u64::from(len),
            None,
        ),
        Op::BlockStatus {
            offset,
            len,
            req_one,
        } => {
            return block_status(conn, handle, offset, len, req_one).await;
        }
    };
    match res {
        Ok(()) => (ok_reply(conn, handle), bytes, None),
        Err(e) => {
            debug!(error = %e, "request failed");
            let errno = e.errno();
            (
                error_reply(conn, handle, &e, err_offset),
                bytes,
                Some(errno),
            )
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

async fn read(
    conn: &Arc<Conn>,
    handle: Handle,
    offset: u64,
    len: u32,
    df: bool,
) -> (Vec<Part>, u64, Option<Errno>) {
    let ex = conn.export.clone();
    let total = u64::from(len);
    let plan = if conn.structured && conn.sparse_reads && !df && len > 0 {
        let ex2 = ex.clone();
        match blocking("block_status", move || ex2.block_status(offset, total)).await {
            Ok(extents) => plan_read(total, &extents),
            // Holes are an optimisation; fall back to reading everything.
            Err(_) => vec![ReadPiece::Data(0..total)],
        }
    } else {
        vec![ReadPiece::Data(0..total)]
    };
    let data_ranges: Vec<Range<u64>> = plan
        .iter()
        .filter_map(|p| match p {
            ReadPiece::Data(r) => Some(r.clone()),
            ReadPiece::Hole(_) => None,
        })
        .collect();
    // The inner result carries the offset of the piece that failed, for
    // NBD_REPLY_TYPE_ERROR_OFFSET.
    let res = blocking("read", move || {
        let mut buf = vec![0u8; len as usize];
        for r in &data_ranges {
            let at = offset + r.start;
            let Some(slice) = buf.get_mut(r.start as usize..r.end as usize) else {
                continue;
            };
            if let Err(e) = ex.read(at, slice) {
                return Ok(Err((e, at)));
            }
        }
        Ok(Ok(buf))
    })
    .await;

    let buf = match res {
        Ok(Ok(b)) => b,
        Ok(Err((e, at))) => {
            debug!(error = %e, "read failed");
            let errno = e.errno();
            let at = conn.structured.then_some(at);
            return (error_reply(conn, handle, &e, at), total, Some(errno));
        }
        Err(e) => {
            let errno = e.errno();
            return (error_reply(conn, handle, &e, None), total, Some(errno));
        }
    };

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

async fn block_status(
    conn: &Arc<Conn>,
    handle: Handle,
    offset: u64,
    len: u32,
    req_one: bool,
) -> (Vec<Part>, u64, Option<Errno>) {
    let mut chunks = Vec::with_capacity(conn.contexts.len());
    for (id, ctx) in &conn.contexts {
        let ex = conn.export.clone();
        let res = match ctx {
            MetaContext::BaseAllocation => {
                blocking("block_status", move || {
                    ex.block_status(offset, u64::from(len))
                        .map(|v| v.iter().map(|e| (e.len, base_flags(e))).collect::<Vec<_>>())
                })
                .await
            }
            MetaContext::Named(name) => {
                let name = name.clone();
                blocking("context_status", move || {
                    ex.context_status(&name, offset, u64::from(len)).map(|v| {
                        v.iter()
                            .map(|e: &ContextExtent| (e.len, e.flags))
                            .collect::<Vec<_>>()
                    })
                })
                .await
            }
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

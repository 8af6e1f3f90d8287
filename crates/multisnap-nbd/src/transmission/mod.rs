//! Transmission phase: requests are read one after another, executed
//! concurrently on the connection's worker threads, and answered out of
//! order.
//!
//! Task and thread layout per connection (nbdkit's model, minus the socket
//! lock):
//! - [`run`] is the reader, an async task: it parses headers, takes the
//!   permits (below), reads WRITE payloads and validates (`request.rs`). A
//!   request that fails validation is answered from here; a valid one
//!   becomes a job on the connection's queue (`workers.rs`).
//! - Up to `ServerConfig::workers_per_connection` (capped by
//!   `max_in_flight`) std threads named `nbd-worker`, started on demand,
//!   pop jobs, call the [`Export`](crate::Export) synchronously inside the
//!   request's tracing span, build the whole reply, hand it to the writer,
//!   and report the request to the observer (`execute.rs`; the reply
//!   encodings are in `reply.rs`). A worker that is busy takes the next job
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

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, debug_span, warn, Instrument, Span};

use crate::config::ServerConfig;
use crate::error::NbdError;
use crate::handshake::{read_or_eof, Session};
use crate::observer::RequestKind;
use crate::proto::{self, Handle, RequestHeader};

mod buffers;
mod execute;
mod reply;
mod request;
mod workers;

pub use buffers::Buffer;
use buffers::{BufferPool, PoolLimits, RELEASE_IDLE_AFTER};
use execute::{work, Conn, Job};
pub use reply::{base_flags, descriptors, plan_read, ReadPiece};
use reply::{error_reply, Outgoing, Permits};
use request::name_export;
pub use request::{kind_of, validate, Limits, Op};
use workers::Pool;
pub use workers::WORKER_THREAD_NAME;

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
    rd: R,
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
    let byte_budget = config.max_in_flight_bytes.max(limits.max_payload).max(1);
    let conn = Arc::new(Conn {
        export_name: session.export_name,
        export: session.export,
        structured: session.structured,
        sparse_reads: session.info.sparse_reads,
        contexts: session.contexts,
        observer: config.observer.clone(),
        buffers: BufferPool::new(PoolLimits::for_connection(config, byte_budget)),
    });
    let count = Arc::new(Semaphore::new(config.max_in_flight.max(1)));
    let bytes = Arc::new(Semaphore::new(byte_budget as usize));

    // Unbounded because the request semaphore already bounds it: every
    // reply holds a request permit until it is written. So a worker never
    // blocks handing over a reply.
    let (tx, rx) = mpsc::unbounded_channel::<Outgoing>();
    let writer =
        tokio::spawn(write_replies(wr, rx, stop.clone(), config.request_timeout).in_current_span());
    let pool = {
        let (conn, tx) = (conn.clone(), tx.clone());
        Pool::new(
            worker_count(config),
            Arc::new(move |job: Job| work(&conn, &tx, job)),
        )
    };

    let mut reader = Reader {
        rd,
        limits,
        conn,
        count,
        bytes,
        replies: tx,
        pool,
        stop,
        request_timeout: config.request_timeout,
    };
    let result = reader.read_requests().await;
    reader.finish(writer).await;
    result
}

/// The connection's reading side: the socket's read half and what it needs
/// to admit, check and hand out requests.
struct Reader<R> {
    rd: R,
    limits: Limits,
    conn: Arc<Conn>,
    /// Requests in flight (`max_in_flight`).
    count: Arc<Semaphore>,
    /// Payload bytes in flight (`max_in_flight_bytes`).
    bytes: Arc<Semaphore>,
    replies: mpsc::UnboundedSender<Outgoing>,
    pool: Pool<Job>,
    stop: CancellationToken,
    request_timeout: Option<Duration>,
}

impl<R: AsyncRead + Unpin + Send> Reader<R> {
    /// Reads requests one after another and hands each to a worker (or
    /// answers it here if it is refused), until the client disconnects, the
    /// socket fails or `stop` fires. `Err` means the connection cannot go
    /// on: a bad header, an oversized WRITE payload, or no worker thread.
    async fn read_requests(&mut self) -> Result<(), NbdError> {
        loop {
            let Some(hdr) = self.read_header().await? else {
                return Ok(());
            };
            let start = Instant::now();
            let h = match proto::parse_request_header(&hdr) {
                Ok(h) => h,
                Err(e) => {
                    warn!(error = %e, "closing connection");
                    return Err(e);
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
                return Ok(());
            }
            let Some(permits) = self.permits_for(&h).await else {
                return Ok(());
            };

            let mut payload = None;
            if h.command == proto::CMD_WRITE {
                if h.length > self.limits.max_payload {
                    return Err(self.refuse_oversized_write(&h, &span, permits));
                }
                let Some(buf) = self.read_payload(h.length, &span).await? else {
                    return Ok(());
                };
                payload = Some(buf);
            }

            match validate(&h, payload, &self.limits) {
                Ok(op) => self.dispatch(Job {
                    handle: h.handle,
                    kind,
                    op,
                    permits,
                    span,
                    start,
                })?,
                Err(e) => self.refuse(h.handle, kind, e, &span, permits, start),
            }
        }
    }

    /// The next request header; `Ok(None)` once the client has gone (cleanly or not) or
    /// `stop` fired. Waiting for a request never times out (an idle client is a client); once
    /// its first byte is here, the rest must follow within the request timeout.
    async fn read_header(&mut self) -> Result<Option<[u8; proto::REQUEST_HEADER_LEN]>, NbdError> {
        let mut hdr = [0u8; proto::REQUEST_HEADER_LEN];
        let (first, rest) = hdr.split_at_mut(1);
        let got = tokio::select! {
            biased;
            _ = self.stop.cancelled() => return Ok(None),
            r = first_byte(&mut self.rd, first, &self.conn.buffers, RELEASE_IDLE_AFTER) => r,
        };
        match got {
            Ok(Some(())) => {}
            Ok(None) => return Ok(None),
            Err(e) => {
                debug!(error = %e, "client connection ended");
                return Ok(None);
            }
        }
        let rest = tokio::select! {
            biased;
            _ = self.stop.cancelled() => return Ok(None),
            r = within(self.request_timeout, "a request header", self.rd.read_exact(rest)) => r,
        };
        match rest {
            Ok(Ok(_)) => Ok(Some(hdr)),
            Ok(Err(e)) => {
                debug!(error = %e, "client connection ended mid-request");
                Ok(None)
            }
            Err(stalled) => {
                warn!(error = %stalled, "closing connection");
                Err(stalled)
            }
        }
    }

    /// Waits for the request's permits: one of the request count, and for a
    /// READ or WRITE within the payload limit its size from the byte budget,
    /// so nothing is allocated before the budget allows it. `None` once
    /// `stop` fired.
    async fn permits_for(&self, h: &RequestHeader) -> Option<Permits> {
        let payload_len = match h.command {
            proto::CMD_READ | proto::CMD_WRITE if h.length <= self.limits.max_payload => h.length,
            _ => 0,
        };
        tokio::select! {
            biased;
            _ = self.stop.cancelled() => None,
            p = acquire(&self.count, &self.bytes, payload_len) => p,
        }
    }

    /// A WRITE payload over the limit cannot be skipped safely (it may be
    /// gigabytes), so the stream cannot be resynchronised: answer, and
    /// return the error that ends the connection.
    fn refuse_oversized_write(&self, h: &RequestHeader, span: &Span, permits: Permits) -> NbdError {
        let err = NbdError::PayloadTooLarge {
            len: h.length,
            max: self.limits.max_payload,
        };
        warn!(parent: span, error = %err, "closing connection");
        let parts = error_reply(self.conn.structured, h.handle, &err, None);
        let _ = self.replies.send(Outgoing {
            parts,
            _permits: permits,
        });
        err
    }

    /// Reads a WRITE's payload; `None` if the client went away or `stop`
    /// fired first.
    async fn read_payload(&mut self, len: u32, span: &Span) -> Result<Option<Buffer>, NbdError> {
        // Every byte is overwritten by the payload before the buffer is used.
        let mut buf = self.conn.buffers.take(len as usize);
        let read = tokio::select! {
            biased;
            _ = self.stop.cancelled() => return Ok(None),
            r = within(self.request_timeout, "a WRITE payload", self.rd.read_exact(&mut buf)) => r,
        };
        match read {
            Ok(Ok(_)) => Ok(Some(buf)),
            Ok(Err(e)) => {
                debug!(parent: span, error = %e, "client went away during write payload");
                Ok(None)
            }
            Err(stalled) => {
                warn!(parent: span, error = %stalled, "closing connection");
                Err(stalled)
            }
        }
    }

    /// Answers a request that failed validation right here: nothing to run,
    /// and a thread hand-off would cost more than encoding the error.
    fn refuse(
        &self,
        handle: Handle,
        kind: RequestKind,
        e: NbdError,
        span: &Span,
        permits: Permits,
        start: Instant,
    ) {
        let e = name_export(e, &self.conn.export_name);
        debug!(parent: span, error = %e, "request refused");
        let errno = e.errno();
        let _ = self.replies.send(Outgoing {
            parts: error_reply(self.conn.structured, handle, &e, None),
            _permits: permits,
        });
        self.conn.report(kind, 0, start, Some(errno));
    }

    fn dispatch(&mut self, job: Job) -> Result<(), NbdError> {
        self.pool.submit(job).map_err(|e| {
            // No worker at all (the process is out of threads): the job
            // cannot run, so the connection cannot be served.
            warn!(error = %e, "cannot start an NBD worker thread; closing connection");
            NbdError::Connection(e)
        })
    }

    /// Lets the connection's work end: the workers run what is queued, then
    /// exit and drop their reply senders; the writer ends once the last
    /// reply is written. Returns after the writer and every worker thread.
    async fn finish(self, writer: JoinHandle<()>) {
        let Reader {
            rd, pool, replies, ..
        } = self;
        let threads = pool.close();
        drop(replies);
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
        // The read half outlives the writer, as it did when the reader
        // looped inline; the socket closes once both halves are gone.
        drop(rd);
    }
}

/// Waits for the first byte of the next request. If none comes within
/// `idle_after`, the connection is idle: its pool's idle buffers are freed,
/// then the wait goes on without limit. Cancel-safe, like `read_or_eof` on
/// one byte: a byte is consumed only when the wait ends with it.
async fn first_byte<R: AsyncRead + Unpin>(
    rd: &mut R,
    first: &mut [u8],
    buffers: &BufferPool,
    idle_after: Duration,
) -> Result<Option<()>, NbdError> {
    match tokio::time::timeout(idle_after, read_or_eof(rd, first)).await {
        Ok(got) => got,
        Err(_idle) => {
            buffers.release_idle();
            read_or_eof(rd, first).await
        }
    }
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
    timeout: Option<Duration>,
) {
    let mut w = BufWriter::with_capacity(256 * 1024, wr);
    let mut batch: Vec<Outgoing> = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        let send = async {
            // Bounded: each queued reply holds a request permit, and no new
            // permit is issued until this batch is flushed and dropped.
            while let Some(msg) = next.take().or_else(|| rx.try_recv().ok()) {
                for p in &msg.parts {
                    w.write_all(p.as_slice()).await?;
                }
                batch.push(msg);
            }
            w.flush().await
        };
        // A client that stops reading its replies would otherwise hold this connection's
        // permits, buffers and workers forever.
        let res = match within(timeout, "reading replies", send).await {
            Ok(r) => r,
            Err(stalled) => {
                warn!(error = %stalled, "closing connection");
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    stalled.to_string(),
                ))
            }
        };
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

/// `fut` within `limit` (forever when `None`); a stall is [`NbdError::ClientStalled`].
async fn within<F: std::future::Future>(
    limit: Option<Duration>,
    what: &'static str,
    fut: F,
) -> Result<F::Output, NbdError> {
    match limit {
        None => Ok(fut.await),
        Some(t) => tokio::time::timeout(t, fut)
            .await
            .map_err(|_| NbdError::ClientStalled {
                what,
                secs: t.as_secs(),
            }),
    }
}

#[cfg(test)]
mod tests;

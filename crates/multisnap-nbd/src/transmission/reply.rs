//! Replies as the writer sends them: the pieces a reply is made of, the
//! permits it carries to the socket, and the encoding of every reply in the
//! style the client negotiated (simple, or structured chunks), including how
//! a READ is cut into data and hole chunks and how extents become
//! BLOCK_STATUS descriptors. Pure: the caller runs the export and writes.

use std::ops::Range;
use std::sync::Arc;

use tokio::sync::OwnedSemaphorePermit;

use super::buffers::Buffer;

use crate::error::{Errno, NbdError};
use crate::export::Extent;
use crate::proto::{self, ContextId, Handle};

/// Most descriptors sent in one NBD_REPLY_TYPE_BLOCK_STATUS chunk (1 MiB of
/// descriptors); the client asks again for the rest.
const MAX_EXTENTS: usize = 128 * 1024;

/// One piece of an outgoing reply.
pub(super) enum Part {
    Bytes(Vec<u8>),
    /// A READ's data, whole.
    Data(Buffer),
    /// Part of a READ's data (one structured chunk).
    Slice(Arc<Buffer>, Range<usize>),
}

impl Part {
    pub(super) fn as_slice(&self) -> &[u8] {
        match self {
            Part::Bytes(b) => b,
            Part::Data(b) => b,
            Part::Slice(b, r) => b.get(r.clone()).unwrap_or(&[]),
        }
    }
}

/// The permits a request holds until its reply is on the wire.
pub(super) type Permits = (OwnedSemaphorePermit, Option<OwnedSemaphorePermit>);

/// A complete reply plus the permits it holds until it is on the wire.
/// Fields drop in order: a READ's buffer is back in its pool before the
/// permits let the next request in.
pub(super) struct Outgoing {
    pub(super) parts: Vec<Part>,
    pub(super) _permits: Permits,
}

/// Error reply in the negotiated style. `offset` selects ERROR_OFFSET.
pub(super) fn error_reply(
    structured: bool,
    handle: Handle,
    e: &NbdError,
    offset: Option<u64>,
) -> Vec<Part> {
    let errno = e.errno();
    if structured {
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

/// Success without data, in the negotiated style.
pub(super) fn ok_reply(structured: bool, handle: Handle) -> Vec<Part> {
    if structured {
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

/// The reply to a READ of `buf.len()` bytes at `offset` whose data is all in
/// `buf`: one simple reply, or (structured) an OFFSET_DATA or OFFSET_HOLE
/// chunk per piece of `plan`, the last one marked DONE.
pub(super) fn read_reply(
    structured: bool,
    handle: Handle,
    offset: u64,
    plan: &[ReadPiece],
    buf: Buffer,
) -> Vec<Part> {
    if !structured {
        // A simple reply sends every byte, and a reused buffer holds an
        // earlier request's bytes where the export wrote nothing: zero any
        // hole (execute.rs plans none for simple replies; this keeps it so).
        let mut buf = buf;
        for piece in plan {
            if let ReadPiece::Hole(r) = piece {
                if let Some(hole) = buf.get_mut(r.start as usize..r.end as usize) {
                    hole.fill(0);
                }
            }
        }
        let mut parts = vec![Part::Bytes(
            proto::encode_simple_reply(handle, Errno(0)).to_vec(),
        )];
        parts.push(Part::Data(buf));
        return parts;
    }
    if buf.is_empty() {
        return ok_reply(structured, handle);
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
    parts
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

/// The reply to a BLOCK_STATUS: one NBD_REPLY_TYPE_BLOCK_STATUS chunk per
/// negotiated context, with its descriptors, the last one marked DONE.
pub(super) fn block_status_reply(
    handle: Handle,
    chunks: &[(ContextId, Vec<(u32, u32)>)],
) -> Vec<Part> {
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
    parts
}

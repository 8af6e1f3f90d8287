//! Frames ("Frames: records and the trailer" in docs/DELTA.md): the one framing records and
//! the trailer share, so a reader always knows how long the next frame is and can check its
//! crc before believing anything else in it.

use bytes::Bytes;

use crate::{checksum, get, get_u32, get_u64, put_u32, put_u64};

// Frame (record or trailer) header: offsets of each field.
const F_KIND: usize = 0;
/// Version 1: three reserved bytes. Version 2: the first is the encoding
/// ([`ENCODING_RAW`](crate::ENCODING_RAW) or [`ENCODING_ZSTD`](crate::ENCODING_ZSTD)), the
/// other two stay reserved.
pub(crate) const F_RESERVED: usize = 1;
const F_CHUNK_INDEX: usize = 4;
const F_CHUNK_COUNT: usize = 12;
pub(crate) const F_PAYLOAD_LEN: usize = 16;
/// Size of a frame's fixed header; the payload and then the frame crc follow it.
pub const FRAME_HEADER_LEN: usize = 20;
/// Header plus trailing crc: a frame is `FRAME_OVERHEAD + payload_len` bytes.
pub const FRAME_OVERHEAD: usize = FRAME_HEADER_LEN + 4;

/// Frame kinds.
pub const KIND_DATA: u8 = 1;
pub const KIND_ZERO: u8 = 2;
pub const KIND_TRAILER: u8 = 3;

// Trailer payload: offsets of each field.
const T_RECORD_COUNT: usize = 0;
const T_DATA_BYTES: usize = 8;
const T_CHUNK_COUNT: usize = 16;
const T_DIGEST: usize = 24;
/// Size of the trailer frame's payload.
pub const TRAILER_PAYLOAD_LEN: usize = 28;
/// Size of the whole trailer frame.
pub const TRAILER_LEN: usize = FRAME_OVERHEAD + TRAILER_PAYLOAD_LEN;

/// One record of the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// `bytes.len() == chunk_count * chunk_size`, less the missing tail when the range ends at
    /// a volume's final partial chunk. Shared, so a decoder can hand out a slice of what it was
    /// fed instead of a copy.
    Data {
        chunk_index: u64,
        chunk_count: u32,
        bytes: Bytes,
    },
    /// The range reads as zeros on the target (trimmed or zeroed on the source).
    Zero { chunk_index: u64, chunk_count: u32 },
}

impl Record {
    pub fn chunk_index(&self) -> u64 {
        match self {
            Record::Data { chunk_index, .. } | Record::Zero { chunk_index, .. } => *chunk_index,
        }
    }
    pub fn chunk_count(&self) -> u32 {
        match self {
            Record::Data { chunk_count, .. } | Record::Zero { chunk_count, .. } => *chunk_count,
        }
    }
}

/// The trailer's contents, as verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trailer {
    pub record_count: u64,
    pub data_bytes: u64,
    pub chunk_count: u64,
    pub digest: u32,
}

impl Trailer {
    pub(crate) fn pack_payload(&self) -> [u8; TRAILER_PAYLOAD_LEN] {
        let mut p = [0u8; TRAILER_PAYLOAD_LEN];
        put_u64(&mut p, T_RECORD_COUNT, self.record_count);
        put_u64(&mut p, T_DATA_BYTES, self.data_bytes);
        put_u64(&mut p, T_CHUNK_COUNT, self.chunk_count);
        put_u32(&mut p, T_DIGEST, self.digest);
        p
    }
    pub(crate) fn unpack_payload(p: &[u8]) -> Trailer {
        Trailer {
            record_count: get_u64(p, T_RECORD_COUNT),
            data_bytes: get_u64(p, T_DATA_BYTES),
            chunk_count: get_u64(p, T_CHUNK_COUNT),
            digest: get_u32(p, T_DIGEST),
        }
    }
}

/// A frame's fixed header and the crc of the frame it starts (header plus payload).
pub(crate) fn pack_frame_head(
    kind: u8,
    chunk_index: u64,
    chunk_count: u32,
    encoding: u8,
    payload: &[u8],
) -> ([u8; FRAME_HEADER_LEN], u32) {
    let mut f = [0u8; FRAME_HEADER_LEN];
    f[F_KIND] = kind;
    f[F_RESERVED] = encoding;
    put_u64(&mut f, F_CHUNK_INDEX, chunk_index);
    put_u32(&mut f, F_CHUNK_COUNT, chunk_count);
    // Callers check payload against MAX_RECORD_PAYLOAD (< u32::MAX) first.
    put_u32(&mut f, F_PAYLOAD_LEN, payload.len() as u32);
    let crc = checksum(&[&f, payload]);
    (f, crc)
}

/// Packs a whole frame into one buffer. Returns the bytes and the crc.
#[cfg(test)]
pub(crate) fn pack_frame(
    kind: u8,
    chunk_index: u64,
    chunk_count: u32,
    payload: &[u8],
) -> (Vec<u8>, u32) {
    let (head, crc) = pack_frame_head(kind, chunk_index, chunk_count, 0, payload);
    let mut f = head.to_vec();
    f.extend_from_slice(payload);
    f.extend_from_slice(&crc.to_le_bytes());
    (f, crc)
}

/// A frame's fixed header as read. Nothing in it is believed until the frame's crc verified,
/// except that the reader bounds `payload_len` before it buffers the payload.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FrameHead {
    pub(crate) kind: u8,
    pub(crate) reserved: [u8; 3],
    pub(crate) chunk_index: u64,
    pub(crate) chunk_count: u32,
    pub(crate) payload_len: u32,
}

impl FrameHead {
    /// How the payload is stored (version 2's use of the first reserved byte).
    pub(crate) fn encoding(&self) -> u8 {
        self.reserved[0]
    }
}

impl FrameHead {
    /// Reads the fields from the first [`FRAME_HEADER_LEN`] bytes of `frame`.
    pub(crate) fn unpack(frame: &[u8]) -> FrameHead {
        FrameHead {
            kind: u8::from_le_bytes(get(frame, F_KIND)),
            reserved: get(frame, F_RESERVED),
            chunk_index: get_u64(frame, F_CHUNK_INDEX),
            chunk_count: get_u32(frame, F_CHUNK_COUNT),
            payload_len: get_u32(frame, F_PAYLOAD_LEN),
        }
    }
}

//! The multisnap delta stream format: the wire format that carries "what changed between
//! snapshot A and snapshot B of a volume" from one node to another (product property 8).
//!
//! A stream is a header, a sequence of records, and a trailer; `docs/DELTA.md` describes it
//! byte by byte. This crate is the format only: it knows nothing about stores, and a caller
//! maps records onto whatever holds the volume.
//!
//! Invariants the code keeps, for writer and readers alike:
//! - Every multi-byte integer is little-endian; every struct has a fixed layout with named
//!   offsets, and one checksum helper ([`checksum`]) computes every crc32c.
//! - No length read from a stream is trusted before it is checked against a limit
//!   ([`MAX_RECORD_PAYLOAD`], [`MAX_NAME_LEN`]), so a hostile stream can make a reader buffer at
//!   most one frame (`FRAME_OVERHEAD + MAX_RECORD_PAYLOAD` bytes).
//! - A record is acted on only after its own checksum verified; a stream is complete only when
//!   the trailer's counts and whole-stream digest match what was read and nothing follows it.
//! - Records are strictly ascending and never overlap, so a resume point is simply "the first
//!   chunk not yet applied" plus the running counters.
//! - Nothing a stream contains can make a reader panic: every failure is a [`DeltaError`].
//!
//! The modules follow docs/DELTA.md's sections, and that document names the file behind each.
//! They are layered: `error`, `header`, `frame`, `resume`, then `writer`, `decoder` and
//! `reader`; each uses only this file and the modules before it (`reader` is a pull loop over
//! `decoder`), and this file only declares and re-exports them, so there is no import cycle.

mod compress;
mod decoder;
mod error;
mod frame;
mod header;
mod reader;
mod resume;
mod writer;

#[cfg(test)]
mod tests;

/// The shared buffer a data record's bytes are (re-exported so users need not name the crate).
pub use bytes::Bytes;
pub use compress::{ZstdLevel, DEFAULT_ZSTD_LEVEL, ENCODING_RAW, ENCODING_ZSTD};
pub use decoder::{DeltaDecoder, Event};
pub use error::{DeltaError, Result};
pub use frame::{
    Record, Trailer, FRAME_HEADER_LEN, FRAME_OVERHEAD, KIND_DATA, KIND_TRAILER, KIND_ZERO,
    TRAILER_LEN, TRAILER_PAYLOAD_LEN,
};
pub use header::{
    Compression, DeltaHeader, SnapshotIdent, Target, FLAG_HAS_BASE, FLAG_TARGET_IS_ORIGIN,
    FLAG_ZSTD_RECORDS, HEADER_FIXED_LEN,
};
/// The volume identity a stream's header carries (re-exported so users need not name the ids crate).
pub use multisnap_ids::VolumeUuid;
pub use reader::DeltaReader;
pub use resume::{ResumePoint, RESUME_MAGIC, RESUME_TOKEN_LEN};
pub use writer::DeltaWriter;

/// First 8 bytes of every stream.
pub const MAGIC: [u8; 8] = *b"MSNAPDLT";
/// The newest format version this code writes and reads (see "Versioning" in docs/DELTA.md):
/// version 2 is version 1 plus zstd-compressed records. Every version from
/// [`FORMAT_VERSION_UNCOMPRESSED`] up to this one is read.
pub const FORMAT_VERSION: u16 = 2;
/// The version an uncompressed stream is written as, so a reader that knows only version 1
/// still reads every stream that does not need version 2.
pub const FORMAT_VERSION_UNCOMPRESSED: u16 = 1;
/// Longest snapshot name a header may carry, in bytes of UTF-8.
pub const MAX_NAME_LEN: usize = 128;
/// Largest payload a single frame may carry; bounds a reader's buffer.
pub const MAX_RECORD_PAYLOAD: u32 = 16 << 20;
/// Smallest and largest chunk size a header may declare (powers of two only).
pub const MIN_CHUNK_SIZE: u32 = 512;
pub const MAX_CHUNK_SIZE: u32 = MAX_RECORD_PAYLOAD;
/// Largest volume a header may declare (1 EiB); keeps every chunk-to-byte product in u64.
pub const MAX_VOLUME_SIZE: u64 = 1 << 60;

/// The one checksum of the format: crc32c (Castagnoli) over the concatenation of `parts`.
pub fn checksum(parts: &[&[u8]]) -> u32 {
    parts.iter().fold(0, |crc, p| crc32c::crc32c_append(crc, p))
}

/// Folds one record's checksum into the whole-stream digest.
pub fn chain_digest(digest: u32, record_crc: u32) -> u32 {
    crc32c::crc32c_append(digest, &record_crc.to_le_bytes())
}

/// The header, every frame and the resume token end in the crc32c of the bytes before it.
/// Returns `(stored, computed)` for `sealed`, whose last 4 bytes are that crc.
fn trailing_crc(sealed: &[u8]) -> (u32, u32) {
    let body_len = sealed.len().saturating_sub(4);
    let stored = get_u32(sealed, body_len);
    let computed = checksum(&[sealed.get(..body_len).unwrap_or_default()]);
    (stored, computed)
}

fn put_u16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}
// Readers of a fixed layout: a short slice reads as zeros rather than panicking; every caller
// checked the length already, so this only keeps panics out of reach.
fn get<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    if let Some(s) = b.get(at..at + N) {
        out.copy_from_slice(s);
    }
    out
}
fn get_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(get(b, at))
}
fn get_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(get(b, at))
}
fn get_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(get(b, at))
}

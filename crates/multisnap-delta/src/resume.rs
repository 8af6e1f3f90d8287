//! Progress through a stream ("Ordering and range rules" and "Resumption" in docs/DELTA.md):
//! the counters and digest chain after each record, the rules the next record must meet
//! against them, and the token a receiver keeps to continue an interrupted apply.

use crate::error::{DeltaError, Result};
use crate::frame::{Trailer, KIND_ZERO};
use crate::header::DeltaHeader;
use crate::{chain_digest, checksum, get, get_u32, get_u64, put_u32, put_u64, trailing_crc};

/// Magic of a serialized [`ResumePoint`] token.
pub const RESUME_MAGIC: [u8; 8] = *b"MSNAPRSM";
/// Size of a serialized [`ResumePoint`] token.
pub const RESUME_TOKEN_LEN: usize = 52;

// Resume token: offsets of each field; the crc of everything before it comes last.
const R_MAGIC: usize = 0;
const R_STREAM_IDENTITY: usize = 8;
const R_RECORDS_APPLIED: usize = 12;
const R_NEXT_CHUNK: usize = 20;
const R_DIGEST_SO_FAR: usize = 28;
const R_DATA_BYTES: usize = 32;
const R_CHUNKS_COVERED: usize = 40;
const R_CRC: usize = 48;

/// Where an interrupted apply stands: everything needed to continue the chain. A receiver
/// saves this after it durably applied a record; the sender then skips every chunk below
/// `next_chunk` and continues the counters and digest from here, so the trailer it finally
/// sends covers the whole logical stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResumePoint {
    /// [`DeltaHeader::identity_digest`] of the stream this point belongs to.
    pub stream_identity: u32,
    pub records_applied: u64,
    /// First chunk not covered by an applied record.
    pub next_chunk: u64,
    pub digest_so_far: u32,
    pub data_bytes: u64,
    pub chunks_covered: u64,
}

impl ResumePoint {
    /// The point before any record of the stream with this header.
    pub fn start(header: &DeltaHeader) -> ResumePoint {
        let identity = header.identity_digest();
        ResumePoint {
            stream_identity: identity,
            records_applied: 0,
            next_chunk: 0,
            digest_so_far: identity,
            data_bytes: 0,
            chunks_covered: 0,
        }
    }

    /// A fixed-size token (magic, fields, crc) to hand across a network or keep on disk.
    pub fn to_bytes(&self) -> [u8; RESUME_TOKEN_LEN] {
        let mut b = [0u8; RESUME_TOKEN_LEN];
        b[R_MAGIC..R_MAGIC + 8].copy_from_slice(&RESUME_MAGIC);
        put_u32(&mut b, R_STREAM_IDENTITY, self.stream_identity);
        put_u64(&mut b, R_RECORDS_APPLIED, self.records_applied);
        put_u64(&mut b, R_NEXT_CHUNK, self.next_chunk);
        put_u32(&mut b, R_DIGEST_SO_FAR, self.digest_so_far);
        put_u64(&mut b, R_DATA_BYTES, self.data_bytes);
        put_u64(&mut b, R_CHUNKS_COVERED, self.chunks_covered);
        let crc = checksum(&[&b[..R_CRC]]);
        put_u32(&mut b, R_CRC, crc);
        b
    }

    pub fn from_bytes(b: &[u8]) -> Result<ResumePoint> {
        if b.len() != RESUME_TOKEN_LEN {
            return Err(DeltaError::BadResumeToken {
                reason: "wrong length",
            });
        }
        if get::<8>(b, R_MAGIC) != RESUME_MAGIC {
            return Err(DeltaError::BadResumeToken {
                reason: "bad magic",
            });
        }
        let (stored, computed) = trailing_crc(b);
        if stored != computed {
            return Err(DeltaError::BadResumeToken {
                reason: "checksum mismatch",
            });
        }
        Ok(ResumePoint {
            stream_identity: get_u32(b, R_STREAM_IDENTITY),
            records_applied: get_u64(b, R_RECORDS_APPLIED),
            next_chunk: get_u64(b, R_NEXT_CHUNK),
            digest_so_far: get_u32(b, R_DIGEST_SO_FAR),
            data_bytes: get_u64(b, R_DATA_BYTES),
            chunks_covered: get_u64(b, R_CHUNKS_COVERED),
        })
    }

    pub(crate) fn trailer(&self) -> Trailer {
        Trailer {
            record_count: self.records_applied,
            data_bytes: self.data_bytes,
            chunk_count: self.chunks_covered,
            digest: self.digest_so_far,
        }
    }

    /// The ordering and length rules every record must meet, shared by writer and readers.
    /// Returns the byte length the payload must have.
    pub(crate) fn admit(
        &self,
        h: &DeltaHeader,
        kind: u8,
        chunk_index: u64,
        chunk_count: u32,
        offset: u64,
    ) -> Result<u64> {
        let record = self.records_applied;
        if chunk_count == 0 {
            return Err(DeltaError::EmptyRecord { record, offset });
        }
        if chunk_index < self.next_chunk {
            return Err(DeltaError::OutOfOrder {
                record,
                offset,
                chunk_index,
                previous_end: self.next_chunk,
            });
        }
        let volume_chunks = h.volume_chunks();
        let end = chunk_index.checked_add(u64::from(chunk_count));
        if !matches!(end, Some(e) if e <= volume_chunks) {
            return Err(DeltaError::PastVolume {
                record,
                offset,
                chunk_index,
                chunk_count,
                volume_chunks,
            });
        }
        if kind == KIND_ZERO {
            return Ok(0);
        }
        // end <= volume_chunks and volume_size <= 2^60, so none of this overflows.
        let cs = u64::from(h.chunk_size);
        let end_byte = (chunk_index + u64::from(chunk_count))
            .saturating_mul(cs)
            .min(h.volume_size);
        Ok(end_byte.saturating_sub(chunk_index.saturating_mul(cs)))
    }

    pub(crate) fn advance(
        &mut self,
        chunk_index: u64,
        chunk_count: u32,
        payload_len: u64,
        crc: u32,
    ) {
        self.records_applied += 1;
        self.next_chunk = chunk_index + u64::from(chunk_count);
        self.digest_so_far = chain_digest(self.digest_so_far, crc);
        self.data_bytes += payload_len;
        self.chunks_covered += u64::from(chunk_count);
    }
}

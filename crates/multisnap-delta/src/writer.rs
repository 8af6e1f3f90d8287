//! The writer ("Writer" in docs/DELTA.md): header, records in ascending chunk order, trailer;
//! a resumed writer replays the sender's record sequence and drops what the receiver holds.

use std::io::Write;

use crate::compress::{
    RecordCompressor, ZstdLevel, DEFAULT_ZSTD_LEVEL, ENCODING_RAW, ENCODING_ZSTD,
};
use crate::error::{DeltaError, Result};
use crate::frame::{
    pack_frame_head, Record, Trailer, FRAME_OVERHEAD, KIND_DATA, KIND_TRAILER, KIND_ZERO,
};
use crate::header::{Compression, DeltaHeader};
use crate::resume::ResumePoint;
use crate::MAX_RECORD_PAYLOAD;

/// Writes a stream: header on creation, then records in ascending chunk order, then
/// [`finish`](Self::finish) for the trailer.
pub struct DeltaWriter<W: Write> {
    out: W,
    header: DeltaHeader,
    state: ResumePoint,
    offset: u64,
    /// Only a resumed writer skips records below the resume point; a fresh one rejects
    /// out-of-order records like a reader would.
    resumed: bool,
    /// Present when the header says records may be compressed.
    compressor: Option<RecordCompressor>,
}

impl<W: Write> DeltaWriter<W> {
    /// Starts a fresh stream.
    pub fn new(out: W, header: DeltaHeader) -> Result<Self> {
        let start = ResumePoint::start(&header);
        let mut w = Self::resume(out, header, start)?;
        w.resumed = false;
        Ok(w)
    }

    /// Continues an interrupted stream from the receiver's resume point: writes the header
    /// again, then [`push`](Self::push) silently drops whatever lies below
    /// `point.next_chunk` (trimming a record that straddles it), so the sender can replay its
    /// whole record sequence. The trailer covers the whole logical stream.
    pub fn resume(mut out: W, header: DeltaHeader, point: ResumePoint) -> Result<Self> {
        header.validate()?;
        if point.stream_identity != header.identity_digest() {
            return Err(DeltaError::ResumeMismatch {
                reason: "the header describes another stream",
            });
        }
        let compressor = match header.compression {
            Compression::None => None,
            Compression::Zstd => Some(RecordCompressor::new(DEFAULT_ZSTD_LEVEL)?),
        };
        let bytes = header.pack();
        out.write_all(&bytes)?;
        Ok(DeltaWriter {
            out,
            header,
            state: point,
            offset: bytes.len() as u64,
            resumed: true,
            compressor,
        })
    }

    /// Compresses at `level` instead of [`DEFAULT_ZSTD_LEVEL`]; no effect on a stream whose
    /// header says [`Compression::None`].
    pub fn with_zstd_level(mut self, level: ZstdLevel) -> Result<Self> {
        if self.compressor.is_some() {
            self.compressor = Some(RecordCompressor::new(level)?);
        }
        Ok(self)
    }

    pub fn header(&self) -> &DeltaHeader {
        &self.header
    }

    /// The point after the last record written.
    pub fn resume_point(&self) -> ResumePoint {
        self.state
    }

    /// Writes `bytes` for the range starting at `chunk_index`: `chunk_count` full chunks (the
    /// volume's last chunk may be partial).
    pub fn push_data(&mut self, chunk_index: u64, chunk_count: u32, bytes: &[u8]) -> Result<()> {
        self.push_frame(KIND_DATA, chunk_index, chunk_count, bytes)
    }

    pub fn push_zero(&mut self, chunk_index: u64, chunk_count: u32) -> Result<()> {
        self.push_frame(KIND_ZERO, chunk_index, chunk_count, &[])
    }

    pub fn push(&mut self, record: &Record) -> Result<()> {
        match record {
            Record::Data {
                chunk_index,
                chunk_count,
                bytes,
            } => self.push_data(*chunk_index, *chunk_count, bytes),
            Record::Zero {
                chunk_index,
                chunk_count,
            } => self.push_zero(*chunk_index, *chunk_count),
        }
    }

    /// Resumption: the part of a record the receiver does not hold yet, or `None` when it
    /// holds all of it. A fresh writer passes every record on, for `admit` to judge.
    fn not_yet_applied<'p>(
        &self,
        kind: u8,
        chunk_index: u64,
        chunk_count: u32,
        payload: &'p [u8],
    ) -> Option<(u64, u32, &'p [u8])> {
        let skip_to = self.state.next_chunk;
        if !(self.resumed && chunk_count > 0 && chunk_index < skip_to) {
            return Some((chunk_index, chunk_count, payload));
        }
        let end = chunk_index.saturating_add(u64::from(chunk_count));
        if end <= skip_to {
            return None;
        }
        let drop_chunks = skip_to - chunk_index;
        let mut payload = payload;
        if kind == KIND_DATA {
            let drop_bytes = drop_chunks.saturating_mul(u64::from(self.header.chunk_size));
            payload = payload
                .get(usize::try_from(drop_bytes).unwrap_or(usize::MAX)..)
                .unwrap_or_default();
        }
        // end > skip_to, so fewer than chunk_count chunks are dropped.
        Some((skip_to, chunk_count - drop_chunks as u32, payload))
    }

    fn push_frame(
        &mut self,
        kind: u8,
        chunk_index: u64,
        chunk_count: u32,
        payload: &[u8],
    ) -> Result<()> {
        let Some((chunk_index, chunk_count, payload)) =
            self.not_yet_applied(kind, chunk_index, chunk_count, payload)
        else {
            return Ok(());
        };
        let expected =
            self.state
                .admit(&self.header, kind, chunk_index, chunk_count, self.offset)?;
        if expected > u64::from(MAX_RECORD_PAYLOAD) {
            return Err(DeltaError::PayloadTooLarge {
                record: self.state.records_applied,
                offset: self.offset,
                len: expected,
                max: MAX_RECORD_PAYLOAD,
            });
        }
        if payload.len() as u64 != expected {
            return Err(DeltaError::PayloadLength {
                record: self.state.records_applied,
                offset: self.offset,
                len: payload.len() as u32,
                expected,
            });
        }
        let crc = self.write_frame(kind, chunk_index, chunk_count, payload)?;
        self.state.advance(chunk_index, chunk_count, expected, crc);
        Ok(())
    }

    /// Writes one frame, compressed when the stream allows it and that makes it smaller, and
    /// returns the crc the digest chains: the raw frame's, however the frame was stored. Three
    /// writes rather than one assembled frame: a 16 MiB payload is not copied.
    fn write_frame(
        &mut self,
        kind: u8,
        chunk_index: u64,
        chunk_count: u32,
        payload: &[u8],
    ) -> Result<u32> {
        let (head, raw_crc) =
            pack_frame_head(kind, chunk_index, chunk_count, ENCODING_RAW, payload);
        let compressed = match (&mut self.compressor, kind) {
            (Some(c), KIND_DATA) => c.compress(payload, raw_crc),
            _ => None,
        };
        let (head, stored, crc) = match compressed {
            Some(stored) => {
                let (h, crc) =
                    pack_frame_head(kind, chunk_index, chunk_count, ENCODING_ZSTD, stored);
                (h, stored, crc)
            }
            None => (head, payload, raw_crc),
        };
        self.out.write_all(&head)?;
        self.out.write_all(stored)?;
        self.out.write_all(&crc.to_le_bytes())?;
        self.offset += (FRAME_OVERHEAD + stored.len()) as u64;
        Ok(raw_crc)
    }

    /// Writes the trailer, flushes, and hands back the writer and what the trailer says.
    pub fn finish(mut self) -> Result<(W, Trailer)> {
        let t = self.state.trailer();
        self.write_frame(KIND_TRAILER, 0, 0, &t.pack_payload())?;
        self.out.flush()?;
        Ok((self.out, t))
    }
}

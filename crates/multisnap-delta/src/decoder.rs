//! The sans-IO push decoder ("Readers" in docs/DELTA.md): bytes in, in pieces of any size,
//! verified events out. It does no I/O of its own, so the gRPC apply path feeds it messages,
//! the pull reader feeds it reads, and the fuzz target feeds it arbitrary cuts of one input.
//!
//! A record's data is a [`Bytes`]: fed a shared buffer ([`DeltaDecoder::feed_bytes`]) that
//! holds a record's whole payload, the decoder hands out a slice of that buffer; otherwise it
//! gathers the payload once into a buffer of its own and hands that out. Either way the payload
//! is not copied again on its way to the record.

use bytes::{Bytes, BytesMut};

use crate::compress::{RecordDecompressor, Refusal, ENCODING_RAW, ENCODING_ZSTD};
use crate::error::{DeltaError, Result};
use crate::frame::{
    FrameHead, Record, Trailer, FRAME_HEADER_LEN, FRAME_OVERHEAD, KIND_DATA, KIND_TRAILER,
    KIND_ZERO, TRAILER_PAYLOAD_LEN,
};
use crate::header::{Compression, DeltaHeader, HEADER_FIXED_LEN, HEADER_PREFIX_LEN};
use crate::resume::ResumePoint;
use crate::{checksum, get_u32, FORMAT_VERSION, MAX_RECORD_PAYLOAD};

/// What the push decoder reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Header(DeltaHeader),
    /// A verified record, and the resume point just after it.
    Record(Record, ResumePoint),
    /// The trailer verified: the stream is complete (trailing bytes are still an error).
    End(Trailer),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Prefix,
    HeaderFixed,
    HeaderRest {
        total: usize,
    },
    FrameHead,
    /// The frame's head is in `buf`; `len` payload bytes follow.
    FramePayload {
        len: usize,
    },
    /// The payload is in `payload`; `buf` collects the frame's crc after its head.
    FrameCrc {
        len: usize,
    },
    Done,
    Failed,
}

/// Push-style decoder: hand it bytes in pieces of any size (gRPC messages, socket reads) and
/// it returns what became complete. It buffers at most one frame, however the input is cut.
pub struct DeltaDecoder {
    stage: Stage,
    /// The header, or the frame's head and then its crc.
    buf: Vec<u8>,
    /// The payload of the frame being read, as far as it has arrived.
    payload: Payload,
    /// Stream offset of the unit being read (the header, or the frame's first byte).
    offset: u64,
    header: Option<DeltaHeader>,
    state: ResumePoint,
    resume_from: Option<ResumePoint>,
    trailer: Option<Trailer>,
    decompressor: RecordDecompressor,
    /// The newest format version accepted: [`FORMAT_VERSION`], lower only in tests that play
    /// a reader from before a version existed.
    highest_version: u16,
}

impl Default for DeltaDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl DeltaDecoder {
    pub fn new() -> Self {
        DeltaDecoder {
            stage: Stage::Prefix,
            buf: Vec::new(),
            payload: Payload::Gathering(BytesMut::new()),
            offset: 0,
            header: None,
            state: ResumePoint {
                stream_identity: 0,
                records_applied: 0,
                next_chunk: 0,
                digest_so_far: 0,
                data_bytes: 0,
                chunks_covered: 0,
            },
            resume_from: None,
            trailer: None,
            decompressor: RecordDecompressor::new(),
            highest_version: FORMAT_VERSION,
        }
    }

    /// Decodes a resumed session: its header must describe the same stream as `point`, its
    /// records continue after `point.next_chunk`, and its trailer covers the whole stream.
    pub fn resume(point: ResumePoint) -> Self {
        DeltaDecoder {
            resume_from: Some(point),
            ..Self::new()
        }
    }

    /// A decoder that implements versions only up to `highest`, as a reader built before a
    /// newer version existed does: for tests of how such a reader meets a newer stream.
    #[cfg(test)]
    pub(crate) fn with_highest_version(highest: u16) -> Self {
        DeltaDecoder {
            highest_version: highest,
            ..Self::new()
        }
    }

    pub fn header(&self) -> Option<&DeltaHeader> {
        self.header.as_ref()
    }

    /// The point after the last record returned, once the header is known.
    pub fn resume_point(&self) -> Option<ResumePoint> {
        self.header.as_ref().map(|_| self.state)
    }

    pub fn is_done(&self) -> bool {
        self.stage == Stage::Done
    }

    /// The point after the last record returned; only meaningful once the header is known,
    /// which the pull reader guarantees before it asks.
    pub(crate) fn progress(&self) -> ResumePoint {
        self.state
    }

    /// The verified trailer, once the stream reached it.
    pub(crate) fn trailer(&self) -> Option<Trailer> {
        self.trailer
    }

    /// Decodes everything `input` completes. On error the decoder is poisoned and the
    /// stream as a whole is rejected; events completed earlier in the same call are dropped,
    /// which is fine because a rejected stream must be discarded in full.
    pub fn feed(&mut self, input: &[u8]) -> Result<Vec<Event>> {
        self.feed_from(Input::Borrowed(input))
    }

    /// [`feed`](Self::feed) for a shared buffer (a received gRPC message): a data record whose
    /// payload lies whole in `input` is a slice of it rather than a copy.
    pub fn feed_bytes(&mut self, input: &Bytes) -> Result<Vec<Event>> {
        self.feed_from(Input::Shared(input))
    }

    fn feed_from(&mut self, input: Input<'_>) -> Result<Vec<Event>> {
        let mut events = Vec::new();
        let mut at = 0;
        loop {
            let (used, ev) = self.step_from(input, at)?;
            at += used;
            match ev {
                Some(e) => events.push(e),
                None if at >= input.len() => return Ok(events),
                None => {}
            }
        }
    }

    /// Consumes input until one event is complete or the input runs out. Returns how many
    /// bytes were used. The pull reader uses this to stay in step with its caller.
    pub fn step(&mut self, input: &[u8]) -> Result<(usize, Option<Event>)> {
        self.step_from(Input::Borrowed(input), 0)
    }

    /// [`step`](Self::step) over `input[at..]`.
    fn step_from(&mut self, input: Input<'_>, at: usize) -> Result<(usize, Option<Event>)> {
        let r = self.step_inner(input, at);
        if r.is_err() {
            self.stage = Stage::Failed;
            self.buf = Vec::new();
            self.payload = Payload::Gathering(BytesMut::new());
        }
        r
    }

    fn need(&self) -> usize {
        match self.stage {
            Stage::Prefix => HEADER_PREFIX_LEN,
            Stage::HeaderFixed => HEADER_FIXED_LEN,
            Stage::HeaderRest { total } => total,
            Stage::FrameHead | Stage::FramePayload { .. } => FRAME_HEADER_LEN,
            Stage::FrameCrc { .. } => FRAME_HEADER_LEN + 4,
            Stage::Done | Stage::Failed => 0,
        }
    }

    /// Bytes of the current unit (header or frame) read so far.
    fn unit_bytes_read(&self) -> usize {
        match self.stage {
            Stage::FramePayload { .. } | Stage::FrameCrc { .. } => {
                self.buf.len() + self.payload.len()
            }
            _ => self.buf.len(),
        }
    }

    fn step_inner(&mut self, input: Input<'_>, at: usize) -> Result<(usize, Option<Event>)> {
        let mut used = 0;
        loop {
            match self.stage {
                Stage::Failed => return Err(DeltaError::Poisoned),
                Stage::Done => {
                    if input.len() > at + used {
                        return Err(DeltaError::TrailingGarbage {
                            offset: self.offset,
                        });
                    }
                    return Ok((used, None));
                }
                Stage::FramePayload { len } => {
                    used += self.take_payload(input, at + used, len);
                    if self.payload.len() < len {
                        return Ok((used, None));
                    }
                    self.stage = Stage::FrameCrc { len };
                }
                _ => {}
            }
            let want = self.need().saturating_sub(self.buf.len());
            let rest = input.bytes().get(at + used..).unwrap_or_default();
            let take = want.min(rest.len());
            self.buf
                .extend_from_slice(rest.get(..take).unwrap_or_default());
            used += take;
            if self.buf.len() < self.need() {
                return Ok((used, None));
            }
            if let Some(ev) = self.complete_unit()? {
                return Ok((used, Some(ev)));
            }
        }
    }

    /// Takes what `input[at..]` holds of a `len`-byte payload: a slice of a shared input that
    /// holds all of it, else a copy into the payload being gathered. Returns the bytes used.
    fn take_payload(&mut self, input: Input<'_>, at: usize, len: usize) -> usize {
        let rest = input.bytes().get(at..).unwrap_or_default();
        match (input, &mut self.payload) {
            (Input::Shared(shared), Payload::Gathering(g)) if g.is_empty() && rest.len() >= len => {
                self.payload = Payload::Whole(shared.slice(at..at + len));
                len
            }
            (_, Payload::Gathering(gathered)) => {
                if gathered.is_empty() {
                    // Allocated only now: a payload sliced from a shared input needs none.
                    gathered.reserve(len);
                }
                let take = (len - gathered.len()).min(rest.len());
                gathered.extend_from_slice(rest.get(..take).unwrap_or_default());
                take
            }
            // Only ever made whole, so the caller moved on before asking again.
            (_, Payload::Whole(_)) => 0,
        }
    }

    /// The buffer holds exactly `need()` bytes: judge them and move on.
    fn complete_unit(&mut self) -> Result<Option<Event>> {
        match self.stage {
            Stage::Prefix => {
                DeltaHeader::check_prefix(&self.buf, self.highest_version)?;
                self.stage = Stage::HeaderFixed;
                Ok(None)
            }
            Stage::HeaderFixed => {
                let total = HEADER_FIXED_LEN + DeltaHeader::rest_len(&self.buf)?;
                self.stage = Stage::HeaderRest { total };
                Ok(None)
            }
            Stage::HeaderRest { .. } => self.complete_header().map(Some),
            Stage::FrameHead => {
                let len = FrameHead::unpack(&self.buf).payload_len;
                if len > MAX_RECORD_PAYLOAD {
                    return Err(DeltaError::PayloadTooLarge {
                        record: self.state.records_applied,
                        offset: self.offset,
                        len: u64::from(len),
                        max: MAX_RECORD_PAYLOAD,
                    });
                }
                let len = len as usize;
                self.payload = Payload::Gathering(BytesMut::new());
                self.stage = Stage::FramePayload { len };
                Ok(None)
            }
            Stage::FrameCrc { len } => {
                let payload =
                    std::mem::replace(&mut self.payload, Payload::Gathering(BytesMut::new()));
                let ev = self.complete_frame(payload.freeze())?;
                self.offset += (FRAME_OVERHEAD + len) as u64;
                self.buf.clear();
                if !matches!(ev, Event::End(_)) {
                    self.stage = Stage::FrameHead;
                }
                Ok(Some(ev))
            }
            // The payload is taken by `step_inner`, never through `buf`.
            Stage::FramePayload { .. } | Stage::Done | Stage::Failed => Ok(None),
        }
    }

    /// The whole header is in: verify it and, for a resumed session, that it is the stream
    /// the resume point belongs to; the counters start from the point or from zero.
    fn complete_header(&mut self) -> Result<Event> {
        let h = DeltaHeader::unpack(&self.buf)?;
        let start = ResumePoint::start(&h);
        self.state = match self.resume_from {
            Some(p) if p.stream_identity != start.stream_identity => {
                return Err(DeltaError::ResumeMismatch {
                    reason: "the stream's header describes another delta",
                })
            }
            Some(p) => p,
            None => start,
        };
        self.offset += self.buf.len() as u64;
        self.buf.clear();
        self.stage = Stage::FrameHead;
        self.header = Some(h.clone());
        Ok(Event::Header(h))
    }

    /// A frame is complete (its head and crc in `buf`): verify it, then judge it by its kind.
    fn complete_frame(&mut self, payload: Bytes) -> Result<Event> {
        let head = FrameHead::unpack(&self.buf);
        let Some(header) = self.header.as_ref() else {
            return Err(DeltaError::Poisoned);
        };
        let crc = self.verify_frame(&payload, &head, header.compression)?;
        match head.kind {
            KIND_DATA | KIND_ZERO => {
                let (record, payload_len, crc) = self.decode_record(&head, crc, payload)?;
                self.state
                    .advance(head.chunk_index, head.chunk_count, payload_len, crc);
                Ok(Event::Record(record, self.state))
            }
            KIND_TRAILER => {
                let trailer = self.decode_trailer(&head, &payload)?;
                self.trailer = Some(trailer);
                self.stage = Stage::Done;
                Ok(Event::End(trailer))
            }
            kind => Err(DeltaError::UnknownRecordKind {
                record: self.state.records_applied,
                offset: self.offset,
                kind,
            }),
        }
    }

    /// Checks the frame's crc (over the head in `buf`, then `payload`), then its reserved
    /// bytes and encoding, before anything else in it is believed. Returns the crc.
    fn verify_frame(
        &self,
        payload: &[u8],
        head: &FrameHead,
        compression: Compression,
    ) -> Result<u32> {
        let offset = self.offset;
        let record = self.state.records_applied;
        let frame_head = self.buf.get(..FRAME_HEADER_LEN).unwrap_or_default();
        let stored = get_u32(&self.buf, FRAME_HEADER_LEN);
        let computed = checksum(&[frame_head, payload]);
        if stored != computed {
            return Err(if head.kind == KIND_TRAILER {
                DeltaError::TrailerChecksum {
                    offset,
                    stored,
                    computed,
                }
            } else {
                DeltaError::RecordChecksum {
                    record,
                    offset,
                    stored,
                    computed,
                }
            });
        }
        let [encoding, reserved @ ..] = head.reserved;
        // Version 1 knows no encoding byte: all three bytes are reserved there.
        if reserved != [0; 2] || (compression == Compression::None && encoding != ENCODING_RAW) {
            return Err(DeltaError::ReservedNotZero { record, offset });
        }
        let zstd_allowed = head.kind == KIND_DATA;
        if !(encoding == ENCODING_RAW || (encoding == ENCODING_ZSTD && zstd_allowed)) {
            return Err(DeltaError::UnknownEncoding {
                record,
                offset,
                encoding,
            });
        }
        Ok(computed)
    }

    /// A data or zero frame whose crc verified: the record it carries, once its range and
    /// length meet the ordering and range rules (a compressed one decompressed and checked
    /// against its raw crc), the payload length the counters advance by, and the crc the
    /// digest chains (the raw frame's).
    fn decode_record(
        &mut self,
        head: &FrameHead,
        frame_crc: u32,
        stored: Bytes,
    ) -> Result<(Record, u64, u32)> {
        let FrameHead {
            kind,
            chunk_index,
            chunk_count,
            payload_len,
            ..
        } = *head;
        let Some(header) = self.header.as_ref() else {
            return Err(DeltaError::Poisoned);
        };
        let (record, offset) = (self.state.records_applied, self.offset);
        let expected = self
            .state
            .admit(header, kind, chunk_index, chunk_count, offset)?;
        if head.encoding() == ENCODING_ZSTD {
            let bytes = self
                .decompressor
                .decompress(chunk_index, chunk_count, &stored, expected)
                .map_err(|refusal| refused(refusal, record, offset, expected, payload_len))?;
            let raw_crc = get_u32(&stored, 0);
            let rec = Record::Data {
                chunk_index,
                chunk_count,
                bytes: Bytes::from(bytes),
            };
            return Ok((rec, expected, raw_crc));
        }
        if u64::from(payload_len) != expected {
            return Err(DeltaError::PayloadLength {
                record,
                offset,
                len: payload_len,
                expected,
            });
        }
        let rec = if kind == KIND_DATA {
            Record::Data {
                chunk_index,
                chunk_count,
                bytes: stored,
            }
        } else {
            Record::Zero {
                chunk_index,
                chunk_count,
            }
        };
        Ok((rec, expected, frame_crc))
    }

    /// The trailer frame: its counts and digest must match what this decoder counted.
    fn decode_trailer(&self, head: &FrameHead, payload: &[u8]) -> Result<Trailer> {
        if head.payload_len as usize != TRAILER_PAYLOAD_LEN
            || head.chunk_index != 0
            || head.chunk_count != 0
        {
            return Err(DeltaError::TrailerMalformed {
                offset: self.offset,
                reason: "trailer frame must have no chunk range and a 28-byte payload",
            });
        }
        let stated = Trailer::unpack_payload(payload);
        let counted = self.state.trailer();
        for (what, stated, actual) in [
            ("record count", stated.record_count, counted.record_count),
            ("data bytes", stated.data_bytes, counted.data_bytes),
            ("chunk count", stated.chunk_count, counted.chunk_count),
        ] {
            if stated != actual {
                return Err(DeltaError::CountMismatch {
                    what,
                    stated,
                    actual,
                });
            }
        }
        if stated.digest != counted.digest {
            return Err(DeltaError::DigestMismatch {
                stated: stated.digest,
                actual: counted.digest,
            });
        }
        Ok(stated)
    }

    /// Call when the input has ended: `Ok` with the trailer if the stream was complete,
    /// otherwise the typed truncation error saying where it stopped.
    pub fn finish(&self) -> Result<Trailer> {
        match (self.stage, self.trailer) {
            (Stage::Done, Some(t)) => Ok(t),
            (Stage::Failed, _) => Err(DeltaError::Poisoned),
            (stage, _) => Err(DeltaError::Truncated {
                offset: self.offset + self.unit_bytes_read() as u64,
                while_reading: match stage {
                    Stage::Prefix | Stage::HeaderFixed | Stage::HeaderRest { .. } => "header",
                    _ => "record or trailer",
                },
            }),
        }
    }
}

/// What a decoder is fed: a borrowed slice, whose payloads it copies, or a shared buffer, of
/// which it hands out slices.
#[derive(Clone, Copy)]
enum Input<'a> {
    Borrowed(&'a [u8]),
    Shared(&'a Bytes),
}

impl<'a> Input<'a> {
    fn bytes(self) -> &'a [u8] {
        match self {
            Input::Borrowed(b) => b,
            Input::Shared(b) => b,
        }
    }
    fn len(self) -> usize {
        self.bytes().len()
    }
}

/// A frame's payload: gathered from the pieces it arrived in (one copy), or a slice of the one
/// shared piece that held it whole (none).
enum Payload {
    Gathering(BytesMut),
    Whole(Bytes),
}

impl Payload {
    fn len(&self) -> usize {
        match self {
            Payload::Gathering(b) => b.len(),
            Payload::Whole(b) => b.len(),
        }
    }
    fn freeze(self) -> Bytes {
        match self {
            Payload::Gathering(b) => b.freeze(),
            Payload::Whole(b) => b,
        }
    }
}

/// The error for a compressed record the decompressor refused.
fn refused(refusal: Refusal, record: u64, offset: u64, expected: u64, len: u32) -> DeltaError {
    match refusal {
        Refusal::Length => DeltaError::Decompress {
            record,
            offset,
            expected,
            reason: format!(
                "a compressed payload must be longer than 4 bytes and shorter than its range, and is {len}"
            ),
        },
        Refusal::Decompress(reason) => DeltaError::Decompress {
            record,
            offset,
            expected,
            reason,
        },
        Refusal::Checksum { stored, computed } => DeltaError::UncompressedChecksum {
            record,
            offset,
            stored,
            computed,
        },
    }
}

//! Every way writing or reading a stream can fail ("Errors" in docs/DELTA.md).

use crate::MAGIC;

/// Everything that can go wrong writing or reading a stream. Offsets are byte offsets in the
/// stream as this reader saw it (a resumed session counts from its own header); record numbers
/// count records from the start of the logical stream, 0-based, resumed sessions included.
#[derive(Debug, thiserror::Error)]
pub enum DeltaError {
    #[error("I/O error on the delta stream: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a multisnap delta stream: magic is {found:02x?}, expected {MAGIC:02x?}")]
    BadMagic { found: [u8; 8] },
    #[error("delta stream format version {found} is not supported (this reader handles versions 1 to {supported}; version 2 carries zstd-compressed records)")]
    UnsupportedVersion { found: u16, supported: u16 },
    #[error("delta header checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    HeaderChecksum { stored: u32, computed: u32 },
    #[error("delta header field {field} is invalid: {reason}")]
    InvalidHeader { field: &'static str, reason: String },
    #[error("record {record} at byte offset {offset}: checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    RecordChecksum {
        record: u64,
        offset: u64,
        stored: u32,
        computed: u32,
    },
    #[error("record {record} at byte offset {offset}: unknown record kind {kind}")]
    UnknownRecordKind { record: u64, offset: u64, kind: u8 },
    #[error("record {record} at byte offset {offset}: reserved bytes are not zero")]
    ReservedNotZero { record: u64, offset: u64 },
    #[error("record {record} at byte offset {offset}: unknown encoding {encoding} (0 raw, 1 zstd, and zstd only for data records of a stream whose header allows it)")]
    UnknownEncoding {
        record: u64,
        offset: u64,
        encoding: u8,
    },
    #[error("record {record} at byte offset {offset}: compressed payload does not decompress to its {expected}-byte range: {reason}")]
    Decompress {
        record: u64,
        offset: u64,
        expected: u64,
        reason: String,
    },
    #[error("record {record} at byte offset {offset}: checksum of the uncompressed data mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    UncompressedChecksum {
        record: u64,
        offset: u64,
        stored: u32,
        computed: u32,
    },
    #[error("record {record} at byte offset {offset}: covers no chunks")]
    EmptyRecord { record: u64, offset: u64 },
    #[error("record {record} at byte offset {offset}: starts at chunk {chunk_index}, out of order or overlapping the previous record, which ended at chunk {previous_end}")]
    OutOfOrder {
        record: u64,
        offset: u64,
        chunk_index: u64,
        previous_end: u64,
    },
    #[error("record {record} at byte offset {offset}: chunks {chunk_index}+{chunk_count} run past the volume's {volume_chunks} chunks")]
    PastVolume {
        record: u64,
        offset: u64,
        chunk_index: u64,
        chunk_count: u32,
        volume_chunks: u64,
    },
    #[error("record {record} at byte offset {offset}: payload of {len} bytes is over the {max}-byte limit")]
    PayloadTooLarge {
        record: u64,
        offset: u64,
        len: u64,
        max: u32,
    },
    #[error("record {record} at byte offset {offset}: payload is {len} bytes, its chunk range needs {expected}")]
    PayloadLength {
        record: u64,
        offset: u64,
        len: u32,
        expected: u64,
    },
    #[error("trailer at byte offset {offset}: checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    TrailerChecksum {
        offset: u64,
        stored: u32,
        computed: u32,
    },
    #[error("trailer at byte offset {offset} is malformed: {reason}")]
    TrailerMalformed { offset: u64, reason: &'static str },
    #[error("trailer {what} mismatch: trailer says {stated}, stream holds {actual}")]
    CountMismatch {
        what: &'static str,
        stated: u64,
        actual: u64,
    },
    #[error("whole-stream digest mismatch: trailer says {stated:#010x}, records chain to {actual:#010x}")]
    DigestMismatch { stated: u32, actual: u32 },
    #[error("delta stream truncated at byte offset {offset} while reading the {while_reading}")]
    Truncated {
        offset: u64,
        while_reading: &'static str,
    },
    #[error("trailing garbage at byte offset {offset}, after the trailer")]
    TrailingGarbage { offset: u64 },
    #[error("delta is for volume {found}, not this volume {expected}")]
    WrongVolume {
        expected: multisnap_ids::VolumeUuid,
        found: multisnap_ids::VolumeUuid,
    },
    #[error("delta's base snapshot {name:?} (id {id}) is not held here")]
    BaseNotHeld { id: u64, name: String },
    #[error("resume point does not belong to this stream: {reason}")]
    ResumeMismatch { reason: &'static str },
    #[error("resume token is malformed: {reason}")]
    BadResumeToken { reason: &'static str },
    #[error("the delta decoder already failed; the stream is rejected")]
    Poisoned,
}

pub type Result<T, E = DeltaError> = std::result::Result<T, E>;

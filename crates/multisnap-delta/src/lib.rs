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

use std::io::{Read, Write};

#[cfg(test)]
mod tests;

/// First 8 bytes of every stream.
pub const MAGIC: [u8; 8] = *b"MSNAPDLT";
/// The one format version this code writes and reads (see "Versioning" in docs/DELTA.md).
pub const FORMAT_VERSION: u16 = 1;
/// Longest snapshot name a header may carry, in bytes of UTF-8.
pub const MAX_NAME_LEN: usize = 128;
/// Largest payload a single frame may carry; bounds a reader's buffer.
pub const MAX_RECORD_PAYLOAD: u32 = 16 << 20;
/// Smallest and largest chunk size a header may declare (powers of two only).
pub const MIN_CHUNK_SIZE: u32 = 512;
pub const MAX_CHUNK_SIZE: u32 = MAX_RECORD_PAYLOAD;
/// Largest volume a header may declare (1 EiB); keeps every chunk-to-byte product in u64.
pub const MAX_VOLUME_SIZE: u64 = 1 << 60;

/// Header flag: the stream is incremental against `base`. Clear means a full stream.
pub const FLAG_HAS_BASE: u16 = 1 << 0;
/// Header flag: the target is the live origin (frozen by the sender), not a named snapshot.
pub const FLAG_TARGET_IS_ORIGIN: u16 = 1 << 1;
const KNOWN_FLAGS: u16 = FLAG_HAS_BASE | FLAG_TARGET_IS_ORIGIN;

// Header fixed part: offsets of each field.
const H_MAGIC: usize = 0;
const H_VERSION: usize = 8;
const H_FLAGS: usize = 10;
const H_VOLUME_UUID: usize = 12;
const H_BASE_ID: usize = 28;
const H_TARGET_ID: usize = 36;
const H_CHUNK_SIZE: usize = 44;
const H_VOLUME_SIZE: usize = 48;
const H_CREATED: usize = 56;
const H_BASE_NAME_LEN: usize = 64;
const H_TARGET_NAME_LEN: usize = 66;
/// Size of the header's fixed part; the names and then the header crc follow it.
pub const HEADER_FIXED_LEN: usize = 68;
/// Bytes a reader needs to see before it can judge magic and version.
const HEADER_PREFIX_LEN: usize = 10;

// Frame (record or trailer) header: offsets of each field.
const F_KIND: usize = 0;
const F_RESERVED: usize = 1;
const F_CHUNK_INDEX: usize = 4;
const F_CHUNK_COUNT: usize = 12;
const F_PAYLOAD_LEN: usize = 16;
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

/// Magic of a serialized [`ResumePoint`] token.
pub const RESUME_MAGIC: [u8; 8] = *b"MSNAPRSM";
/// Size of a serialized [`ResumePoint`] token.
pub const RESUME_TOKEN_LEN: usize = 52;

/// The one checksum of the format: crc32c (Castagnoli) over the concatenation of `parts`.
pub fn checksum(parts: &[&[u8]]) -> u32 {
    parts.iter().fold(0, |crc, p| crc32c::crc32c_append(crc, p))
}

/// Folds one record's checksum into the whole-stream digest.
pub fn chain_digest(digest: u32, record_crc: u32) -> u32 {
    crc32c::crc32c_append(digest, &record_crc.to_le_bytes())
}

fn hex16(u: &[u8; 16]) -> String {
    u.iter().map(|b| format!("{b:02x}")).collect()
}

/// Everything that can go wrong writing or reading a stream. Offsets are byte offsets in the
/// stream as this reader saw it (a resumed session counts from its own header); record numbers
/// count records from the start of the logical stream, 0-based, resumed sessions included.
#[derive(Debug, thiserror::Error)]
pub enum DeltaError {
    #[error("I/O error on the delta stream: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a multisnap delta stream: magic is {found:02x?}, expected {MAGIC:02x?}")]
    BadMagic { found: [u8; 8] },
    #[error("delta stream format version {found} is not supported (this reader handles version {supported})")]
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
    WrongVolume { expected: String, found: String },
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

/// A snapshot as the sender names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotIdent {
    pub id: u64,
    pub name: String,
}

/// What the stream brings the receiver to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Snapshot(SnapshotIdent),
    /// The live origin, frozen by the sender for the duration of the export.
    Origin,
}

/// The stream header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeltaHeader {
    pub volume_uuid: [u8; 16],
    /// `None`: a full stream (everything allocated in the target).
    pub base: Option<SnapshotIdent>,
    pub target: Target,
    pub chunk_size: u32,
    pub volume_size: u64,
    /// Nanoseconds since the Unix epoch when the sender began the export.
    pub created_unix_nanos: u64,
}

/// One record of the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// `bytes.len() == chunk_count * chunk_size`, less the missing tail when the range ends at
    /// a volume's final partial chunk.
    Data {
        chunk_index: u64,
        chunk_count: u32,
        bytes: Vec<u8>,
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

fn invalid(field: &'static str, reason: impl Into<String>) -> DeltaError {
    DeltaError::InvalidHeader {
        field,
        reason: reason.into(),
    }
}

impl DeltaHeader {
    /// Chunks the volume spans, counting a final partial chunk.
    pub fn volume_chunks(&self) -> u64 {
        self.volume_size.div_ceil(u64::from(self.chunk_size.max(1)))
    }

    /// Checks every field against the format's limits; both writer and readers call it.
    pub fn validate(&self) -> Result<()> {
        if !self.chunk_size.is_power_of_two()
            || !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&self.chunk_size)
        {
            return Err(invalid(
                "chunk_size",
                format!(
                    "{} is not a power of two in {MIN_CHUNK_SIZE}..={MAX_CHUNK_SIZE}",
                    self.chunk_size
                ),
            ));
        }
        if self.volume_size > MAX_VOLUME_SIZE {
            return Err(invalid(
                "volume_size",
                format!(
                    "{} is over the {MAX_VOLUME_SIZE}-byte limit",
                    self.volume_size
                ),
            ));
        }
        for (field, name) in [
            ("base name", self.base.as_ref().map(|b| b.name.as_str())),
            (
                "target name",
                match &self.target {
                    Target::Snapshot(s) => Some(s.name.as_str()),
                    Target::Origin => None,
                },
            ),
        ] {
            if let Some(n) = name {
                if n.len() > MAX_NAME_LEN {
                    return Err(invalid(
                        field,
                        format!("{} bytes, over the {MAX_NAME_LEN}-byte limit", n.len()),
                    ));
                }
            }
        }
        Ok(())
    }

    fn flags(&self) -> u16 {
        let mut f = 0;
        if self.base.is_some() {
            f |= FLAG_HAS_BASE;
        }
        if self.target == Target::Origin {
            f |= FLAG_TARGET_IS_ORIGIN;
        }
        f
    }

    /// Serializes the header, crc included. Call [`validate`](Self::validate) first.
    pub fn pack(&self) -> Vec<u8> {
        self.pack_with_created(self.created_unix_nanos)
    }

    fn pack_with_created(&self, created: u64) -> Vec<u8> {
        let (base_id, base_name) = match &self.base {
            Some(b) => (b.id, b.name.as_bytes()),
            None => (0, &[][..]),
        };
        let (target_id, target_name) = match &self.target {
            Target::Snapshot(s) => (s.id, s.name.as_bytes()),
            Target::Origin => (0, &[][..]),
        };
        let mut b = vec![0u8; HEADER_FIXED_LEN];
        b[H_MAGIC..H_MAGIC + 8].copy_from_slice(&MAGIC);
        put_u16(&mut b, H_VERSION, FORMAT_VERSION);
        put_u16(&mut b, H_FLAGS, self.flags());
        b[H_VOLUME_UUID..H_VOLUME_UUID + 16].copy_from_slice(&self.volume_uuid);
        put_u64(&mut b, H_BASE_ID, base_id);
        put_u64(&mut b, H_TARGET_ID, target_id);
        put_u32(&mut b, H_CHUNK_SIZE, self.chunk_size);
        put_u64(&mut b, H_VOLUME_SIZE, self.volume_size);
        put_u64(&mut b, H_CREATED, created);
        // validate() bounds names to MAX_NAME_LEN, which fits u16.
        put_u16(&mut b, H_BASE_NAME_LEN, base_name.len() as u16);
        put_u16(&mut b, H_TARGET_NAME_LEN, target_name.len() as u16);
        b.extend_from_slice(base_name);
        b.extend_from_slice(target_name);
        let crc = checksum(&[&b]);
        b.extend_from_slice(&crc.to_le_bytes());
        b
    }

    /// Identifies the stream regardless of when it was produced: the crc of the header with
    /// its creation time zeroed. A resumed export regenerates the header (with a new creation
    /// time) and must still match the interrupted one; the digest chain starts from it.
    pub fn identity_digest(&self) -> u32 {
        let packed = self.pack_with_created(0);
        get_u32(&packed, packed.len().saturating_sub(4))
    }

    /// Checks the stream is for `expected_volume` and, for an incremental stream, that the
    /// receiver holds the base (`holds_base` decides: ids are per node, so the caller picks
    /// the matching rule, by name or by a replicated id).
    pub fn verify_source(
        &self,
        expected_volume: &[u8; 16],
        holds_base: impl FnOnce(&SnapshotIdent) -> bool,
    ) -> Result<()> {
        if &self.volume_uuid != expected_volume {
            return Err(DeltaError::WrongVolume {
                expected: hex16(expected_volume),
                found: hex16(&self.volume_uuid),
            });
        }
        if let Some(base) = &self.base {
            if !holds_base(base) {
                return Err(DeltaError::BaseNotHeld {
                    id: base.id,
                    name: base.name.clone(),
                });
            }
        }
        Ok(())
    }

    /// How many header bytes follow the fixed part, judged from the fixed part alone.
    fn rest_len(fixed: &[u8]) -> Result<usize> {
        let base_len = usize::from(get_u16(fixed, H_BASE_NAME_LEN));
        let target_len = usize::from(get_u16(fixed, H_TARGET_NAME_LEN));
        if base_len > MAX_NAME_LEN {
            return Err(invalid(
                "base name",
                format!("{base_len} bytes, over the {MAX_NAME_LEN}-byte limit"),
            ));
        }
        if target_len > MAX_NAME_LEN {
            return Err(invalid(
                "target name",
                format!("{target_len} bytes, over the {MAX_NAME_LEN}-byte limit"),
            ));
        }
        Ok(base_len + target_len + 4)
    }

    fn check_prefix(prefix: &[u8]) -> Result<()> {
        let magic: [u8; 8] = get(prefix, H_MAGIC);
        if magic != MAGIC {
            return Err(DeltaError::BadMagic { found: magic });
        }
        let version = get_u16(prefix, H_VERSION);
        if version != FORMAT_VERSION {
            return Err(DeltaError::UnsupportedVersion {
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        Ok(())
    }

    /// Parses and verifies a complete serialized header.
    pub fn unpack(b: &[u8]) -> Result<DeltaHeader> {
        if b.len() < HEADER_FIXED_LEN + 4 {
            return Err(DeltaError::Truncated {
                offset: b.len() as u64,
                while_reading: "header",
            });
        }
        Self::check_prefix(b)?;
        let total = HEADER_FIXED_LEN + Self::rest_len(b)?;
        if b.len() < total {
            return Err(DeltaError::Truncated {
                offset: b.len() as u64,
                while_reading: "header",
            });
        }
        let body = b.get(..total - 4).unwrap_or_default();
        let stored = get_u32(b, total - 4);
        let computed = checksum(&[body]);
        if stored != computed {
            return Err(DeltaError::HeaderChecksum { stored, computed });
        }
        let flags = get_u16(b, H_FLAGS);
        if flags & !KNOWN_FLAGS != 0 {
            return Err(invalid(
                "flags",
                format!("unknown bits {:#06x}", flags & !KNOWN_FLAGS),
            ));
        }
        let base_len = usize::from(get_u16(b, H_BASE_NAME_LEN));
        let target_len = usize::from(get_u16(b, H_TARGET_NAME_LEN));
        let name_at = |from: usize, len: usize, field: &'static str| -> Result<String> {
            let raw = b.get(from..from + len).unwrap_or_default();
            String::from_utf8(raw.to_vec()).map_err(|_| invalid(field, "not UTF-8"))
        };
        let base_name = name_at(HEADER_FIXED_LEN, base_len, "base name")?;
        let target_name = name_at(HEADER_FIXED_LEN + base_len, target_len, "target name")?;
        let base_id = get_u64(b, H_BASE_ID);
        let target_id = get_u64(b, H_TARGET_ID);
        let base = if flags & FLAG_HAS_BASE != 0 {
            Some(SnapshotIdent {
                id: base_id,
                name: base_name,
            })
        } else {
            if base_id != 0 || base_len != 0 {
                return Err(invalid("base", "a full stream names no base"));
            }
            None
        };
        let target = if flags & FLAG_TARGET_IS_ORIGIN != 0 {
            if target_id != 0 || target_len != 0 {
                return Err(invalid(
                    "target",
                    "an origin target has no snapshot id or name",
                ));
            }
            Target::Origin
        } else {
            Target::Snapshot(SnapshotIdent {
                id: target_id,
                name: target_name,
            })
        };
        let h = DeltaHeader {
            volume_uuid: get(b, H_VOLUME_UUID),
            base,
            target,
            chunk_size: get_u32(b, H_CHUNK_SIZE),
            volume_size: get_u64(b, H_VOLUME_SIZE),
            created_unix_nanos: get_u64(b, H_CREATED),
        };
        h.validate()?;
        Ok(h)
    }
}

impl Trailer {
    fn pack_payload(&self) -> [u8; TRAILER_PAYLOAD_LEN] {
        let mut p = [0u8; TRAILER_PAYLOAD_LEN];
        put_u64(&mut p, T_RECORD_COUNT, self.record_count);
        put_u64(&mut p, T_DATA_BYTES, self.data_bytes);
        put_u64(&mut p, T_CHUNK_COUNT, self.chunk_count);
        put_u32(&mut p, T_DIGEST, self.digest);
        p
    }
    fn unpack_payload(p: &[u8]) -> Trailer {
        Trailer {
            record_count: get_u64(p, T_RECORD_COUNT),
            data_bytes: get_u64(p, T_DATA_BYTES),
            chunk_count: get_u64(p, T_CHUNK_COUNT),
            digest: get_u32(p, T_DIGEST),
        }
    }
}

/// A frame's fixed header and the crc of the frame it starts (header plus payload).
fn frame_head(
    kind: u8,
    chunk_index: u64,
    chunk_count: u32,
    payload: &[u8],
) -> ([u8; FRAME_HEADER_LEN], u32) {
    let mut f = [0u8; FRAME_HEADER_LEN];
    f[F_KIND] = kind;
    put_u64(&mut f, F_CHUNK_INDEX, chunk_index);
    put_u32(&mut f, F_CHUNK_COUNT, chunk_count);
    // Callers check payload against MAX_RECORD_PAYLOAD (< u32::MAX) first.
    put_u32(&mut f, F_PAYLOAD_LEN, payload.len() as u32);
    let crc = checksum(&[&f, payload]);
    (f, crc)
}

/// Packs a whole frame into one buffer. Returns the bytes and the crc.
#[cfg(test)]
fn pack_frame(kind: u8, chunk_index: u64, chunk_count: u32, payload: &[u8]) -> (Vec<u8>, u32) {
    let (head, crc) = frame_head(kind, chunk_index, chunk_count, payload);
    let mut f = head.to_vec();
    f.extend_from_slice(payload);
    f.extend_from_slice(&crc.to_le_bytes());
    (f, crc)
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
        b[0..8].copy_from_slice(&RESUME_MAGIC);
        put_u32(&mut b, 8, self.stream_identity);
        put_u64(&mut b, 12, self.records_applied);
        put_u64(&mut b, 20, self.next_chunk);
        put_u32(&mut b, 28, self.digest_so_far);
        put_u64(&mut b, 32, self.data_bytes);
        put_u64(&mut b, 40, self.chunks_covered);
        let crc = checksum(&[&b[..48]]);
        put_u32(&mut b, 48, crc);
        b
    }

    pub fn from_bytes(b: &[u8]) -> Result<ResumePoint> {
        if b.len() != RESUME_TOKEN_LEN {
            return Err(DeltaError::BadResumeToken {
                reason: "wrong length",
            });
        }
        if get::<8>(b, 0) != RESUME_MAGIC {
            return Err(DeltaError::BadResumeToken {
                reason: "bad magic",
            });
        }
        if checksum(&[b.get(..48).unwrap_or_default()]) != get_u32(b, 48) {
            return Err(DeltaError::BadResumeToken {
                reason: "checksum mismatch",
            });
        }
        Ok(ResumePoint {
            stream_identity: get_u32(b, 8),
            records_applied: get_u64(b, 12),
            next_chunk: get_u64(b, 20),
            digest_so_far: get_u32(b, 28),
            data_bytes: get_u64(b, 32),
            chunks_covered: get_u64(b, 40),
        })
    }

    fn trailer(&self) -> Trailer {
        Trailer {
            record_count: self.records_applied,
            data_bytes: self.data_bytes,
            chunk_count: self.chunks_covered,
            digest: self.digest_so_far,
        }
    }

    /// The ordering and length rules every record must meet, shared by writer and readers.
    /// Returns the byte length the payload must have.
    fn admit(
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

    fn advance(&mut self, chunk_index: u64, chunk_count: u32, payload_len: u64, crc: u32) {
        self.records_applied += 1;
        self.next_chunk = chunk_index + u64::from(chunk_count);
        self.digest_so_far = chain_digest(self.digest_so_far, crc);
        self.data_bytes += payload_len;
        self.chunks_covered += u64::from(chunk_count);
    }
}

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
        let bytes = header.pack();
        out.write_all(&bytes)?;
        Ok(DeltaWriter {
            out,
            header,
            state: point,
            offset: bytes.len() as u64,
            resumed: true,
        })
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

    fn push_frame(
        &mut self,
        kind: u8,
        mut chunk_index: u64,
        mut chunk_count: u32,
        mut payload: &[u8],
    ) -> Result<()> {
        // Resumption: skip or trim what the receiver already holds.
        let skip_to = self.state.next_chunk;
        if self.resumed && chunk_count > 0 && chunk_index < skip_to {
            let end = chunk_index.saturating_add(u64::from(chunk_count));
            if end <= skip_to {
                return Ok(());
            }
            let drop_chunks = skip_to - chunk_index;
            if kind == KIND_DATA {
                let drop_bytes = drop_chunks.saturating_mul(u64::from(self.header.chunk_size));
                payload = payload
                    .get(usize::try_from(drop_bytes).unwrap_or(usize::MAX)..)
                    .unwrap_or_default();
            }
            chunk_index = skip_to;
            chunk_count -= drop_chunks as u32;
        }
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
        // Three writes rather than one assembled frame: a 16 MiB payload is not copied.
        let (head, crc) = frame_head(kind, chunk_index, chunk_count, payload);
        self.out.write_all(&head)?;
        self.out.write_all(payload)?;
        self.out.write_all(&crc.to_le_bytes())?;
        self.offset += (FRAME_OVERHEAD + payload.len()) as u64;
        self.state.advance(chunk_index, chunk_count, expected, crc);
        Ok(())
    }

    /// Writes the trailer, flushes, and hands back the writer and what the trailer says.
    pub fn finish(mut self) -> Result<(W, Trailer)> {
        let t = self.state.trailer();
        let payload = t.pack_payload();
        let (head, crc) = frame_head(KIND_TRAILER, 0, 0, &payload);
        self.out.write_all(&head)?;
        self.out.write_all(&payload)?;
        self.out.write_all(&crc.to_le_bytes())?;
        self.out.flush()?;
        Ok((self.out, t))
    }
}

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
    HeaderRest { total: usize },
    FrameHead,
    FramePayload { total: usize },
    Done,
    Failed,
}

/// Push-style decoder: hand it bytes in pieces of any size (gRPC messages, socket reads) and
/// it returns what became complete. It buffers at most one frame, however the input is cut.
pub struct DeltaDecoder {
    stage: Stage,
    buf: Vec<u8>,
    /// Stream offset of `buf[0]`.
    offset: u64,
    header: Option<DeltaHeader>,
    state: ResumePoint,
    resume_from: Option<ResumePoint>,
    trailer: Option<Trailer>,
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

    /// Decodes everything `input` completes. On error the decoder is poisoned and the
    /// stream as a whole is rejected; events completed earlier in the same call are dropped,
    /// which is fine because a rejected stream must be discarded in full.
    pub fn feed(&mut self, mut input: &[u8]) -> Result<Vec<Event>> {
        let mut events = Vec::new();
        loop {
            let (used, ev) = self.step(input)?;
            input = input.get(used..).unwrap_or_default();
            match ev {
                Some(e) => events.push(e),
                None if input.is_empty() => return Ok(events),
                None => {}
            }
        }
    }

    /// Consumes input until one event is complete or the input runs out. Returns how many
    /// bytes were used. The pull reader uses this to stay in step with its caller.
    pub fn step(&mut self, input: &[u8]) -> Result<(usize, Option<Event>)> {
        let r = self.step_inner(input);
        if r.is_err() {
            self.stage = Stage::Failed;
            self.buf = Vec::new();
        }
        r
    }

    fn need(&self) -> usize {
        match self.stage {
            Stage::Prefix => HEADER_PREFIX_LEN,
            Stage::HeaderFixed => HEADER_FIXED_LEN,
            Stage::HeaderRest { total } | Stage::FramePayload { total } => total,
            Stage::FrameHead => FRAME_HEADER_LEN,
            Stage::Done | Stage::Failed => 0,
        }
    }

    fn step_inner(&mut self, input: &[u8]) -> Result<(usize, Option<Event>)> {
        let mut used = 0;
        loop {
            match self.stage {
                Stage::Failed => return Err(DeltaError::Poisoned),
                Stage::Done => {
                    if input.len() > used {
                        return Err(DeltaError::TrailingGarbage {
                            offset: self.offset,
                        });
                    }
                    return Ok((used, None));
                }
                _ => {}
            }
            let want = self.need().saturating_sub(self.buf.len());
            let rest = input.get(used..).unwrap_or_default();
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

    /// The buffer holds exactly `need()` bytes: judge them and move on.
    fn complete_unit(&mut self) -> Result<Option<Event>> {
        match self.stage {
            Stage::Prefix => {
                DeltaHeader::check_prefix(&self.buf)?;
                self.stage = Stage::HeaderFixed;
                Ok(None)
            }
            Stage::HeaderFixed => {
                let total = HEADER_FIXED_LEN + DeltaHeader::rest_len(&self.buf)?;
                self.stage = Stage::HeaderRest { total };
                Ok(None)
            }
            Stage::HeaderRest { .. } => {
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
                Ok(Some(Event::Header(h)))
            }
            Stage::FrameHead => {
                let len = get_u32(&self.buf, F_PAYLOAD_LEN);
                if len > MAX_RECORD_PAYLOAD {
                    return Err(DeltaError::PayloadTooLarge {
                        record: self.state.records_applied,
                        offset: self.offset,
                        len: u64::from(len),
                        max: MAX_RECORD_PAYLOAD,
                    });
                }
                let total = FRAME_OVERHEAD + len as usize;
                self.buf.reserve_exact(total - self.buf.len());
                self.stage = Stage::FramePayload { total };
                Ok(None)
            }
            Stage::FramePayload { total } => {
                let ev = self.complete_frame(total)?;
                self.offset += total as u64;
                self.buf.clear();
                if !matches!(ev, Event::End(_)) {
                    self.stage = Stage::FrameHead;
                }
                Ok(Some(ev))
            }
            Stage::Done | Stage::Failed => Ok(None),
        }
    }

    fn complete_frame(&mut self, total: usize) -> Result<Event> {
        let b = &self.buf;
        let offset = self.offset;
        let record = self.state.records_applied;
        let kind = b.first().copied().unwrap_or(0);
        let stored = get_u32(b, total - 4);
        let computed = checksum(&[b.get(..total - 4).unwrap_or_default()]);
        if stored != computed {
            return Err(if kind == KIND_TRAILER {
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
        if get::<3>(b, F_RESERVED) != [0; 3] {
            return Err(DeltaError::ReservedNotZero { record, offset });
        }
        let chunk_index = get_u64(b, F_CHUNK_INDEX);
        let chunk_count = get_u32(b, F_CHUNK_COUNT);
        let len = get_u32(b, F_PAYLOAD_LEN);
        let payload = b.get(FRAME_HEADER_LEN..total - 4).unwrap_or_default();
        let Some(h) = self.header.as_ref() else {
            return Err(DeltaError::Poisoned);
        };
        match kind {
            KIND_DATA | KIND_ZERO => {
                let expected = self
                    .state
                    .admit(h, kind, chunk_index, chunk_count, offset)?;
                if u64::from(len) != expected {
                    return Err(DeltaError::PayloadLength {
                        record,
                        offset,
                        len,
                        expected,
                    });
                }
                let rec = if kind == KIND_DATA {
                    Record::Data {
                        chunk_index,
                        chunk_count,
                        bytes: payload.to_vec(),
                    }
                } else {
                    Record::Zero {
                        chunk_index,
                        chunk_count,
                    }
                };
                self.state
                    .advance(chunk_index, chunk_count, expected, computed);
                Ok(Event::Record(rec, self.state))
            }
            KIND_TRAILER => {
                if len as usize != TRAILER_PAYLOAD_LEN || chunk_index != 0 || chunk_count != 0 {
                    return Err(DeltaError::TrailerMalformed {
                        offset,
                        reason: "trailer frame must have no chunk range and a 28-byte payload",
                    });
                }
                let t = Trailer::unpack_payload(payload);
                let actual = self.state.trailer();
                for (what, stated, act) in [
                    ("record count", t.record_count, actual.record_count),
                    ("data bytes", t.data_bytes, actual.data_bytes),
                    ("chunk count", t.chunk_count, actual.chunk_count),
                ] {
                    if stated != act {
                        return Err(DeltaError::CountMismatch {
                            what,
                            stated,
                            actual: act,
                        });
                    }
                }
                if t.digest != actual.digest {
                    return Err(DeltaError::DigestMismatch {
                        stated: t.digest,
                        actual: actual.digest,
                    });
                }
                self.trailer = Some(t);
                self.stage = Stage::Done;
                Ok(Event::End(t))
            }
            kind => Err(DeltaError::UnknownRecordKind {
                record,
                offset,
                kind,
            }),
        }
    }

    /// Call when the input has ended: `Ok` with the trailer if the stream was complete,
    /// otherwise the typed truncation error saying where it stopped.
    pub fn finish(&self) -> Result<Trailer> {
        match (self.stage, self.trailer) {
            (Stage::Done, Some(t)) => Ok(t),
            (Stage::Failed, _) => Err(DeltaError::Poisoned),
            (stage, _) => Err(DeltaError::Truncated {
                offset: self.offset + self.buf.len() as u64,
                while_reading: match stage {
                    Stage::Prefix | Stage::HeaderFixed | Stage::HeaderRest { .. } => "header",
                    _ => "record or trailer",
                },
            }),
        }
    }
}

const READ_PIECE: usize = 64 << 10;

/// Pull-style reader over any `Read`: the header on creation, then
/// [`next_record`](Self::next_record) until `Ok(None)`, which means the trailer verified and
/// the input ended right after it.
pub struct DeltaReader<R: Read> {
    input: R,
    dec: DeltaDecoder,
    piece: Vec<u8>,
    pos: usize,
    len: usize,
    header: DeltaHeader,
}

impl<R: Read> DeltaReader<R> {
    pub fn new(input: R) -> Result<Self> {
        Self::with_decoder(input, DeltaDecoder::new())
    }

    /// Reads a resumed session (see [`DeltaDecoder::resume`]).
    pub fn resume(input: R, point: ResumePoint) -> Result<Self> {
        Self::with_decoder(input, DeltaDecoder::resume(point))
    }

    fn with_decoder(input: R, dec: DeltaDecoder) -> Result<Self> {
        let mut r = DeltaReader {
            input,
            dec,
            piece: vec![0; READ_PIECE],
            pos: 0,
            len: 0,
            header: DeltaHeader {
                volume_uuid: [0; 16],
                base: None,
                target: Target::Origin,
                chunk_size: 0,
                volume_size: 0,
                created_unix_nanos: 0,
            },
        };
        match r.next_event()? {
            Some(Event::Header(h)) => r.header = h,
            _ => return Err(DeltaError::Poisoned),
        }
        Ok(r)
    }

    pub fn header(&self) -> &DeltaHeader {
        &self.header
    }

    /// The point after the last record returned.
    pub fn resume_point(&self) -> ResumePoint {
        self.dec.state
    }

    /// The verified trailer, once `next_record` returned `Ok(None)`.
    pub fn trailer(&self) -> Option<Trailer> {
        self.dec.trailer
    }

    fn next_event(&mut self) -> Result<Option<Event>> {
        loop {
            if self.pos == self.len {
                let n = loop {
                    match self.input.read(&mut self.piece) {
                        Ok(n) => break n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(e.into()),
                    }
                };
                if n == 0 {
                    self.dec.finish()?;
                    return Ok(None);
                }
                self.pos = 0;
                self.len = n;
            }
            let avail = self.piece.get(self.pos..self.len).unwrap_or_default();
            let (used, ev) = self.dec.step(avail)?;
            self.pos += used;
            if let Some(ev) = ev {
                return Ok(Some(ev));
            }
        }
    }

    /// The next verified record, or `Ok(None)` at a clean, fully verified end.
    pub fn next_record(&mut self) -> Result<Option<Record>> {
        loop {
            match self.next_event()? {
                Some(Event::Record(r, _)) => return Ok(Some(r)),
                // After End the loop reads on so trailing garbage or EOF is judged.
                Some(Event::End(_)) | Some(Event::Header(_)) => {}
                None => return Ok(None),
            }
        }
    }
}

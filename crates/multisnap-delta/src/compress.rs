//! Compressed data records ("Compressed records" in docs/DELTA.md, format version 2): a data
//! record's payload stored as `raw_crc` (u32) followed by one zstd frame, and the rules that
//! keep a reader's cost bounded and every byte checked.
//!
//! `raw_crc` is the crc the record's frame would carry uncompressed (its 20-byte head with
//! encoding 0 and the raw payload length, then the raw payload). It checks the decompressed
//! data end to end, and it is what the whole-stream digest chains for every record, so a
//! delta's digest does not depend on how its records were stored.

use crate::frame::pack_frame_head;
use crate::{get_u32, KIND_DATA};

/// Frame encoding byte (offset 1 of a frame in version 2): the payload is stored as is.
pub const ENCODING_RAW: u8 = 0;
/// Frame encoding byte: the payload is `raw_crc` then a zstd frame.
pub const ENCODING_ZSTD: u8 = 1;
/// Bytes before the zstd frame in a compressed payload.
pub(crate) const RAW_CRC_LEN: usize = 4;

/// A zstd compression level the writer uses (1 ..= 22; higher is smaller and slower).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ZstdLevel(i32);

/// The level used when none is given: zstd's own default, fast enough for the wire path.
pub const DEFAULT_ZSTD_LEVEL: ZstdLevel = ZstdLevel(3);

impl ZstdLevel {
    /// `None` for a level outside 1 ..= 22.
    pub fn new(level: i32) -> Option<ZstdLevel> {
        (1..=22).contains(&level).then_some(ZstdLevel(level))
    }
    pub fn get(self) -> i32 {
        self.0
    }
}

/// The writer's side: one zstd context, kept across records so it is not rebuilt per frame.
pub(crate) struct RecordCompressor {
    ctx: zstd::bulk::Compressor<'static>,
    /// The stored payload being built; only grows.
    out: Vec<u8>,
}

impl RecordCompressor {
    pub(crate) fn new(level: ZstdLevel) -> std::io::Result<Self> {
        Ok(RecordCompressor {
            ctx: zstd::bulk::Compressor::new(level.get())?,
            out: Vec::new(),
        })
    }

    /// The stored payload for `raw` (`raw_crc` then the zstd frame) when that is smaller than
    /// `raw`, else `None`: a record that does not shrink is stored raw, so incompressible data
    /// costs a failed compression attempt and no bytes.
    pub(crate) fn compress(&mut self, raw: &[u8], raw_crc: u32) -> Option<&[u8]> {
        // Room for strictly less than `raw`: zstd stops with "destination too small" as soon
        // as the frame would not shrink the record, rather than finishing a useless frame.
        let room = raw.len().checked_sub(RAW_CRC_LEN + 1)?;
        if self.out.len() < RAW_CRC_LEN + room {
            self.out.resize(RAW_CRC_LEN + room, 0);
        }
        let (crc_part, rest) = self.out.split_at_mut(RAW_CRC_LEN);
        crc_part.copy_from_slice(&raw_crc.to_le_bytes());
        let zstd_part = rest.get_mut(..room)?;
        let n = self.ctx.compress_to_buffer(raw, zstd_part).ok()?;
        self.out.get(..RAW_CRC_LEN + n)
    }
}

/// The crc a data record's frame carries uncompressed: what `raw_crc` stores and the digest
/// chains.
pub(crate) fn raw_frame_crc(chunk_index: u64, chunk_count: u32, raw: &[u8]) -> u32 {
    pack_frame_head(KIND_DATA, chunk_index, chunk_count, ENCODING_RAW, raw).1
}

/// Why a compressed payload was refused, before the record's number and offset are added.
pub(crate) enum Refusal {
    /// Not shorter than the raw data it stands for, or too short to hold `raw_crc`.
    Length,
    Decompress(String),
    Checksum {
        stored: u32,
        computed: u32,
    },
}

/// The reader's side: one zstd context, kept across records.
pub(crate) struct RecordDecompressor {
    ctx: Option<zstd::bulk::Decompressor<'static>>,
}

impl RecordDecompressor {
    pub(crate) fn new() -> Self {
        RecordDecompressor { ctx: None }
    }

    /// The raw bytes of a compressed data record whose range needs `expected` bytes, checked
    /// against its `raw_crc`. The output is bounded by `expected` whatever the zstd frame
    /// declares, so a hostile record cannot make the reader allocate more than one range.
    pub(crate) fn decompress(
        &mut self,
        chunk_index: u64,
        chunk_count: u32,
        stored: &[u8],
        expected: u64,
    ) -> Result<Vec<u8>, Refusal> {
        let expected = usize::try_from(expected).map_err(|_| Refusal::Length)?;
        if stored.len() <= RAW_CRC_LEN || stored.len() >= expected {
            return Err(Refusal::Length);
        }
        let raw_crc = get_u32(stored, 0);
        let ctx = match &mut self.ctx {
            Some(c) => c,
            None => self.ctx.insert(
                zstd::bulk::Decompressor::new().map_err(|e| Refusal::Decompress(e.to_string()))?,
            ),
        };
        let mut raw = Vec::with_capacity(expected);
        let n = ctx
            .decompress_to_buffer(stored.get(RAW_CRC_LEN..).unwrap_or_default(), &mut raw)
            .map_err(|e| Refusal::Decompress(e.to_string()))?;
        if n != expected {
            return Err(Refusal::Decompress(format!("it holds {n} bytes")));
        }
        let computed = raw_frame_crc(chunk_index, chunk_count, &raw);
        if computed != raw_crc {
            return Err(Refusal::Checksum {
                stored: raw_crc,
                computed,
            });
        }
        Ok(raw)
    }
}

//! The stream header ("Header" in docs/DELTA.md): what the stream is about (volume, base,
//! target, geometry), its layout, and the checks both writer and readers make on it.

use crate::error::{DeltaError, Result};
use crate::{
    checksum, get, get_u16, get_u32, get_u64, put_u16, put_u32, put_u64, trailing_crc,
    FORMAT_VERSION, FORMAT_VERSION_UNCOMPRESSED, MAGIC, MAX_CHUNK_SIZE, MAX_NAME_LEN,
    MAX_VOLUME_SIZE, MIN_CHUNK_SIZE,
};
use multisnap_ids::VolumeUuid;

/// Header flag: the stream is incremental against `base`. Clear means a full stream.
pub const FLAG_HAS_BASE: u16 = 1 << 0;
/// Header flag: the target is the live origin (frozen by the sender), not a named snapshot.
pub const FLAG_TARGET_IS_ORIGIN: u16 = 1 << 1;
/// Header flag (version 2 only, and always set there): data records may be zstd-compressed,
/// each frame saying whether it is in its encoding byte.
pub const FLAG_ZSTD_RECORDS: u16 = 1 << 2;
const KNOWN_FLAGS_V1: u16 = FLAG_HAS_BASE | FLAG_TARGET_IS_ORIGIN;
const KNOWN_FLAGS_V2: u16 = KNOWN_FLAGS_V1 | FLAG_ZSTD_RECORDS;

// Header fixed part: offsets of each field.
const H_MAGIC: usize = 0;
pub(crate) const H_VERSION: usize = 8;
pub(crate) const H_FLAGS: usize = 10;
const H_VOLUME_UUID: usize = 12;
const H_BASE_ID: usize = 28;
const H_TARGET_ID: usize = 36;
pub(crate) const H_CHUNK_SIZE: usize = 44;
pub(crate) const H_VOLUME_SIZE: usize = 48;
const H_CREATED: usize = 56;
pub(crate) const H_BASE_NAME_LEN: usize = 64;
const H_TARGET_NAME_LEN: usize = 66;
/// Size of the header's fixed part; the names and then the header crc follow it.
pub const HEADER_FIXED_LEN: usize = 68;
/// Bytes a reader needs to see before it can judge magic and version.
pub(crate) const HEADER_PREFIX_LEN: usize = 10;

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

/// How the stream's data records are stored. It decides the format version: an uncompressed
/// stream is written as version 1, which every reader reads; a compressed one needs version 2.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Compression {
    #[default]
    None,
    /// Data records are zstd-compressed where that makes them smaller (per record).
    Zstd,
}

/// The stream header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeltaHeader {
    pub volume_uuid: VolumeUuid,
    /// `None`: a full stream (everything allocated in the target).
    pub base: Option<SnapshotIdent>,
    pub target: Target,
    pub chunk_size: u32,
    pub volume_size: u64,
    /// Nanoseconds since the Unix epoch when the sender began the export.
    pub created_unix_nanos: u64,
    /// How data records are stored. Not part of the stream's identity: the same delta
    /// compressed or not has the same identity and digest, so an apply interrupted under one
    /// setting can be resumed under the other.
    pub compression: Compression,
}

fn invalid(field: &'static str, reason: impl Into<String>) -> DeltaError {
    DeltaError::InvalidHeader {
        field,
        reason: reason.into(),
    }
}

/// The one name-length rule, for a header being written and one being read alike.
fn check_name_len(field: &'static str, len: usize) -> Result<()> {
    if len > MAX_NAME_LEN {
        return Err(invalid(
            field,
            format!("{len} bytes, over the {MAX_NAME_LEN}-byte limit"),
        ));
    }
    Ok(())
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
                check_name_len(field, n.len())?;
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
        if self.compression == Compression::Zstd {
            f |= FLAG_ZSTD_RECORDS;
        }
        f
    }

    /// The format version this header is written as.
    pub fn version(&self) -> u16 {
        match self.compression {
            Compression::None => FORMAT_VERSION_UNCOMPRESSED,
            Compression::Zstd => FORMAT_VERSION,
        }
    }

    /// Serializes the header, crc included. Call [`validate`](Self::validate) first.
    pub fn pack(&self) -> Vec<u8> {
        self.pack_as(self.created_unix_nanos, self.compression)
    }

    fn pack_as(&self, created: u64, compression: Compression) -> Vec<u8> {
        let this = DeltaHeader {
            compression,
            ..self.clone()
        };
        this.pack_fields(created)
    }

    fn pack_fields(&self, created: u64) -> Vec<u8> {
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
        put_u16(&mut b, H_VERSION, self.version());
        put_u16(&mut b, H_FLAGS, self.flags());
        b[H_VOLUME_UUID..H_VOLUME_UUID + 16].copy_from_slice(self.volume_uuid.as_bytes());
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

    /// Identifies the stream regardless of when it was produced and of how its records are
    /// stored: the crc of the header as an uncompressed (version 1) stream with its creation
    /// time zeroed. A resumed export regenerates the header (with a new creation time, perhaps
    /// another compression) and must still match the interrupted one; the digest chain starts
    /// from it.
    pub fn identity_digest(&self) -> u32 {
        let packed = self.pack_as(0, Compression::None);
        get_u32(&packed, packed.len().saturating_sub(4))
    }

    /// Checks the stream is for `expected_volume` and, for an incremental stream, that the
    /// receiver holds the base (`holds_base` decides: ids are per node, so the caller picks
    /// the matching rule, by name or by a replicated id).
    pub fn verify_source(
        &self,
        expected_volume: &VolumeUuid,
        holds_base: impl FnOnce(&SnapshotIdent) -> bool,
    ) -> Result<()> {
        if &self.volume_uuid != expected_volume {
            return Err(DeltaError::WrongVolume {
                expected: *expected_volume,
                found: self.volume_uuid,
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
    pub(crate) fn rest_len(fixed: &[u8]) -> Result<usize> {
        let base_len = usize::from(get_u16(fixed, H_BASE_NAME_LEN));
        let target_len = usize::from(get_u16(fixed, H_TARGET_NAME_LEN));
        check_name_len("base name", base_len)?;
        check_name_len("target name", target_len)?;
        Ok(base_len + target_len + 4)
    }

    /// Judges magic and version; `highest` is the newest version the reader implements
    /// ([`FORMAT_VERSION`], or less where a test plays an older reader).
    pub(crate) fn check_prefix(prefix: &[u8], highest: u16) -> Result<()> {
        let magic: [u8; 8] = get(prefix, H_MAGIC);
        if magic != MAGIC {
            return Err(DeltaError::BadMagic { found: magic });
        }
        let version = get_u16(prefix, H_VERSION);
        if !(FORMAT_VERSION_UNCOMPRESSED..=highest).contains(&version) {
            return Err(DeltaError::UnsupportedVersion {
                found: version,
                supported: highest,
            });
        }
        Ok(())
    }

    /// The flags a version allows, and what they say of the records' storage. Version 2
    /// exists only for compressed records, so it must say so; version 1 knows no such flag.
    fn unpack_compression(version: u16, flags: u16) -> Result<Compression> {
        let known = if version == FORMAT_VERSION_UNCOMPRESSED {
            KNOWN_FLAGS_V1
        } else {
            KNOWN_FLAGS_V2
        };
        if flags & !known != 0 {
            return Err(invalid(
                "flags",
                format!("unknown bits {:#06x} for version {version}", flags & !known),
            ));
        }
        if version != FORMAT_VERSION_UNCOMPRESSED && flags & FLAG_ZSTD_RECORDS == 0 {
            return Err(invalid(
                "flags",
                format!("version {version} streams must set the zstd-records flag"),
            ));
        }
        Ok(if flags & FLAG_ZSTD_RECORDS != 0 {
            Compression::Zstd
        } else {
            Compression::None
        })
    }

    /// Parses and verifies a complete serialized header.
    pub fn unpack(b: &[u8]) -> Result<DeltaHeader> {
        if b.len() < HEADER_FIXED_LEN + 4 {
            return Err(DeltaError::Truncated {
                offset: b.len() as u64,
                while_reading: "header",
            });
        }
        Self::check_prefix(b, FORMAT_VERSION)?;
        let total = HEADER_FIXED_LEN + Self::rest_len(b)?;
        if b.len() < total {
            return Err(DeltaError::Truncated {
                offset: b.len() as u64,
                while_reading: "header",
            });
        }
        let (stored, computed) = trailing_crc(b.get(..total).unwrap_or_default());
        if stored != computed {
            return Err(DeltaError::HeaderChecksum { stored, computed });
        }
        let flags = get_u16(b, H_FLAGS);
        let compression = Self::unpack_compression(get_u16(b, H_VERSION), flags)?;
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
            volume_uuid: VolumeUuid::from_bytes(get(b, H_VOLUME_UUID)),
            base,
            target,
            chunk_size: get_u32(b, H_CHUNK_SIZE),
            volume_size: get_u64(b, H_VOLUME_SIZE),
            created_unix_nanos: get_u64(b, H_CREATED),
            compression,
        };
        h.validate()?;
        Ok(h)
    }
}

//! The superblock: two slots (blocks 0 and 1); a commit writes generation g+1 into slot
//! (g+1) % 2, so a torn superblock write always leaves the previous generation intact.

use super::*;
use crate::checksum::{is_sealed, seal, SUPERBLOCK_SALT};

/// "MSNAPSTR": identifies a multisnap store.
pub const SUPERBLOCK_MAGIC: [u8; 8] = *b"MSNAPSTR";
pub const MAX_VOLUME_NAME: usize = 63;
pub const MAX_ORIGIN_PATH: usize = 1022;
/// Longest resume token a superblock can keep for an interrupted delta apply.
pub const MAX_RECEIVE_TOKEN: usize = 56;

/// Receive flag: the apply may be continued after an interruption (its staged data is kept
/// until it completes or is aborted); without it, an interrupted apply is discarded.
pub const RECEIVE_RESUMABLE: u32 = 1;
/// Receive flag: the whole stream verified and the apply passed its commit point; what is
/// staged is being folded into the origin and must be finished, never discarded.
pub const RECEIVE_FOLDING: u32 = 2;
/// Receive flag: a full stream into an empty volume without snapshots, written straight into
/// the origin (write-ahead: each chunk is recorded before it is written) instead of staged;
/// abandoning it zeroes the recorded chunks again.
pub const RECEIVE_DIRECT: u32 = 4;
const KNOWN_RECEIVE_FLAGS: u32 = RECEIVE_RESUMABLE | RECEIVE_FOLDING | RECEIVE_DIRECT;

/// A rollback in place (`Store::revert_to`) whose merge into the origin is not finished:
/// what the superblock remembers of it (see docs/FORMAT.md, "Rollback in place").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevertState {
    /// The snapshot the origin reads as; never 0.
    pub target: u64,
    /// The newest snapshot id when the revert was committed: snapshots up to it still read the
    /// origin's pre-revert data from chunks not yet merged, newer ones read the target's.
    pub newest: u64,
    /// Every origin chunk below it is merged.
    pub cursor: u64,
}

/// A clone being hydrated from its source (`Store::create_clone`): what the superblock
/// remembers of it (see docs/FORMAT.md, "Clones").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloneState {
    /// The uuid of the volume whose snapshot the clone reads until hydrated; never all zero.
    pub source_volume: [u8; 16],
    /// That snapshot's id in the source volume's store; never 0.
    pub source_snapshot: u64,
    /// Bytes of the source snapshot: the clone's origin chunks covering them come from it.
    pub source_size: u64,
    /// Every origin chunk below it is hydrated.
    pub cursor: u64,
    /// Bytes of source data the hydration has written into the origin, as of this commit.
    pub hydrated_bytes: u64,
}

/// An apply of a delta in progress: what the superblock remembers of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceiveState {
    /// The `Receiving` snapshot record whose private chunks hold the staged data.
    pub staging: u64,
    /// The local snapshot the delta's base maps to; 0 for a full stream.
    pub base: u64,
    pub flags: u32,
    /// Opaque to the store: the delta layer's resume point as of this commit.
    pub token: Vec<u8>,
}

const OFF_VERSION: usize = 4;
const OFF_MAGIC: usize = 8;
const OFF_GENERATION: usize = 16;
const OFF_UUID: usize = 24;
const OFF_CHUNK_SIZE: usize = 40;
const OFF_BLOCK_SIZE: usize = 44;
const OFF_ORIGIN_SIZE: usize = 48;
const OFF_STORE_BLOCKS: usize = 56;
const OFF_BITMAP_START: usize = 64;
const OFF_BITMAP_BLOCKS: usize = 72;
const OFF_BITMAP_COPY: usize = 80;
const OFF_FULL_POLICY: usize = 81;
const OFF_ORIGIN_CACHE: usize = 82;
const OFF_EXCEPTION_ROOT: usize = 88;
const OFF_SNAPSHOT_ROOT: usize = 96;
const OFF_NEXT_SNAPSHOT_ID: usize = 104;
const OFF_EXCEPTION_COUNT: usize = 112;
const OFF_USED_BLOCKS: usize = 120;
const OFF_COPIES_TOTAL: usize = 128;
const OFF_CREATED_AT: usize = 136;
const OFF_PRIVATE_ROOT: usize = 144;
const OFF_INVALIDATED_TOTAL: usize = 152;
const OFF_REPLICA_SOURCE: usize = 160;
const OFF_RECEIVE_STAGING: usize = 176;
const OFF_RECEIVE_BASE: usize = 184;
const OFF_RECEIVE_FLAGS: usize = 192;
const OFF_RECEIVE_TOKEN_LEN: usize = 196;
const OFF_RECEIVE_TOKEN: usize = 198;
const OFF_VOLUME_NAME: usize = 256;
const OFF_ORIGIN_PATH: usize = 320;
const OFF_JOURNAL_START: usize = 1344;
const OFF_JOURNAL_BLOCKS: usize = 1352;
const OFF_JOURNAL_EPOCH: usize = 1360;
const OFF_REVERT_TARGET: usize = 1368;
const OFF_REVERT_NEWEST: usize = 1376;
const OFF_REVERT_CURSOR: usize = 1384;
const OFF_CLONE_SOURCE_VOLUME: usize = 1392;
const OFF_CLONE_SOURCE_SNAPSHOT: usize = 1408;
const OFF_CLONE_SOURCE_SIZE: usize = 1416;
const OFF_CLONE_CURSOR: usize = 1424;
const OFF_CLONE_HYDRATED_BYTES: usize = 1432;

/// What to do when a copy is needed and the store has no free chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FullPolicy {
    /// Fail the write with ENOSPC; nothing changes.
    Error = 0,
    /// Drop the oldest snapshots to make room.
    InvalidateOldest = 1,
}

/// How the volume's origin is opened, chosen when the volume is made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OriginCache {
    /// Through the page cache; flushes journal the origin's dirty ranges (see `journal`).
    #[default]
    Buffered = 0,
    /// With `O_DIRECT` (`crate::direct_dev`): writes bypass the page cache and a flush is
    /// an `fdatasync` of the origin, without the journal (format version 6).
    Direct = 1,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Superblock {
    pub generation: u64,
    pub volume_uuid: [u8; 16],
    pub chunk_size: u32,
    pub origin_size: u64,
    /// Size of the formatted store in 4 KiB blocks.
    pub store_blocks: u64,
    pub bitmap_start: u64,
    /// Blocks per bitmap copy.
    pub bitmap_blocks: u64,
    /// Which copy (0 or 1) holds this generation's bitmap.
    pub bitmap_copy: u8,
    pub full_policy: FullPolicy,
    pub exception_root: u64,
    pub snapshot_root: u64,
    pub next_snapshot_id: u64,
    pub exception_count: u64,
    pub used_blocks: u64,
    pub copies_total: u64,
    pub created_at_ns: u64,
    /// Root of the writable snapshots' private chunk map.
    pub private_root: u64,
    /// Snapshots dropped by the invalidate-oldest store-full policy, ever.
    pub invalidated_total: u64,
    /// The volume whose deltas this store has applied (a replica's source); all zero when
    /// it has applied none.
    pub replica_source: [u8; 16],
    /// The delta apply in progress, if any.
    pub receive: Option<ReceiveState>,
    pub volume_name: String,
    pub origin_path: String,
    /// First block of the origin write journal (see `journal`); 0 when there is none.
    pub journal_start: u64,
    /// Blocks of the journal; 0 for a store without one (every version 2 store).
    pub journal_blocks: u64,
    /// Only journal batches stamped with this epoch are replayed; bumping it (in a commit,
    /// after an fdatasync of the origin) empties the journal.
    pub journal_epoch: u64,
    /// Format version 4: every snapshot record carries its own size, which may be smaller than
    /// the origin's (a snapshot taken before the volume grew). Older stores are converted by
    /// their first resize; until then the version says 2 or 3 and older readers still open them.
    pub sized_snapshots: bool,
    /// The rollback in place being merged, if any (version 4 and later).
    pub revert: Option<RevertState>,
    /// Format version 5: the store was made as a clone and may hold a hydration's state and
    /// marks. Such a store is written as version 5 (or 6) for good (older readers never meet
    /// one); it implies `sized_snapshots`. A store with a direct origin has it too.
    pub clone_format: bool,
    /// The hydration in progress, if any (version 5 and later).
    pub clone: Option<CloneState>,
    /// How the origin is opened. A direct origin makes the store version 6 for good, which
    /// older readers refuse rather than silently serve the volume through the page cache. It
    /// implies `sized_snapshots` and `clone_format` (version 6 is version 5 plus this byte).
    pub origin_cache: OriginCache,
}

/// Why a superblock slot was rejected.
#[derive(Debug, PartialEq, Eq)]
pub enum SuperblockFault {
    /// No magic: not a store (or never written).
    NoMagic,
    /// The magic is there but the version is not ours.
    Version(u32),
    /// Magic and version fine, checksum or a field wrong.
    Corrupt(String),
}

impl Superblock {
    pub fn pack(&self) -> Vec<u8> {
        let mut b = vec![0u8; BLOCK_SIZE];
        // A store without a journal is exactly a version 2 store and says so, so that older
        // readers keep opening it (and never see one slot of each version).
        let version = if self.origin_cache == OriginCache::Direct {
            FORMAT_VERSION
        } else if self.clone_format {
            CLONE_VERSION
        } else if self.sized_snapshots {
            SIZED_VERSION
        } else if self.journal_blocks > 0 {
            JOURNAL_VERSION
        } else {
            OLDEST_READABLE_VERSION
        };
        put_u32(&mut b, OFF_VERSION, version);
        b[OFF_MAGIC..OFF_MAGIC + 8].copy_from_slice(&SUPERBLOCK_MAGIC);
        put_u64(&mut b, OFF_GENERATION, self.generation);
        b[OFF_UUID..OFF_UUID + 16].copy_from_slice(&self.volume_uuid);
        put_u32(&mut b, OFF_CHUNK_SIZE, self.chunk_size);
        put_u32(&mut b, OFF_BLOCK_SIZE, BLOCK_SIZE as u32);
        put_u64(&mut b, OFF_ORIGIN_SIZE, self.origin_size);
        put_u64(&mut b, OFF_STORE_BLOCKS, self.store_blocks);
        put_u64(&mut b, OFF_BITMAP_START, self.bitmap_start);
        put_u64(&mut b, OFF_BITMAP_BLOCKS, self.bitmap_blocks);
        b[OFF_BITMAP_COPY] = self.bitmap_copy;
        b[OFF_FULL_POLICY] = self.full_policy as u8;
        b[OFF_ORIGIN_CACHE] = self.origin_cache as u8;
        put_u64(&mut b, OFF_EXCEPTION_ROOT, self.exception_root);
        put_u64(&mut b, OFF_SNAPSHOT_ROOT, self.snapshot_root);
        put_u64(&mut b, OFF_NEXT_SNAPSHOT_ID, self.next_snapshot_id);
        put_u64(&mut b, OFF_EXCEPTION_COUNT, self.exception_count);
        put_u64(&mut b, OFF_USED_BLOCKS, self.used_blocks);
        put_u64(&mut b, OFF_COPIES_TOTAL, self.copies_total);
        put_u64(&mut b, OFF_CREATED_AT, self.created_at_ns);
        put_u64(&mut b, OFF_PRIVATE_ROOT, self.private_root);
        put_u64(&mut b, OFF_INVALIDATED_TOTAL, self.invalidated_total);
        b[OFF_REPLICA_SOURCE..OFF_REPLICA_SOURCE + 16].copy_from_slice(&self.replica_source);
        if let Some(r) = &self.receive {
            put_u64(&mut b, OFF_RECEIVE_STAGING, r.staging);
            put_u64(&mut b, OFF_RECEIVE_BASE, r.base);
            put_u32(&mut b, OFF_RECEIVE_FLAGS, r.flags);
            let n = r.token.len().min(MAX_RECEIVE_TOKEN);
            put_u16(&mut b, OFF_RECEIVE_TOKEN_LEN, n as u16);
            b[OFF_RECEIVE_TOKEN..OFF_RECEIVE_TOKEN + n].copy_from_slice(&r.token[..n]);
        }
        let name = truncate_utf8(&self.volume_name, MAX_VOLUME_NAME);
        b[OFF_VOLUME_NAME] = name.len() as u8;
        b[OFF_VOLUME_NAME + 1..OFF_VOLUME_NAME + 1 + name.len()].copy_from_slice(name.as_bytes());
        let path = truncate_utf8(&self.origin_path, MAX_ORIGIN_PATH);
        put_u16(&mut b, OFF_ORIGIN_PATH, path.len() as u16);
        b[OFF_ORIGIN_PATH + 2..OFF_ORIGIN_PATH + 2 + path.len()].copy_from_slice(path.as_bytes());
        put_u64(&mut b, OFF_JOURNAL_START, self.journal_start);
        put_u64(&mut b, OFF_JOURNAL_BLOCKS, self.journal_blocks);
        put_u64(&mut b, OFF_JOURNAL_EPOCH, self.journal_epoch);
        if let Some(r) = &self.revert {
            put_u64(&mut b, OFF_REVERT_TARGET, r.target);
            put_u64(&mut b, OFF_REVERT_NEWEST, r.newest);
            put_u64(&mut b, OFF_REVERT_CURSOR, r.cursor);
        }
        if let Some(c) = &self.clone {
            b[OFF_CLONE_SOURCE_VOLUME..OFF_CLONE_SOURCE_VOLUME + 16]
                .copy_from_slice(&c.source_volume);
            put_u64(&mut b, OFF_CLONE_SOURCE_SNAPSHOT, c.source_snapshot);
            put_u64(&mut b, OFF_CLONE_SOURCE_SIZE, c.source_size);
            put_u64(&mut b, OFF_CLONE_CURSOR, c.cursor);
            put_u64(&mut b, OFF_CLONE_HYDRATED_BYTES, c.hydrated_bytes);
        }
        seal(&mut b, SUPERBLOCK_SALT);
        b
    }

    /// Blocks `0..reserved_end()` never change owner: superblocks, both bitmap copies and the
    /// journal.
    pub fn reserved_end(&self) -> u64 {
        let bitmap_end = self.bitmap_start + 2 * self.bitmap_blocks;
        if self.journal_blocks == 0 {
            bitmap_end
        } else {
            self.journal_start + self.journal_blocks
        }
    }

    pub fn unpack(b: &[u8]) -> Result<Superblock, SuperblockFault> {
        if b.len() != BLOCK_SIZE || b[OFF_MAGIC..OFF_MAGIC + 8] != SUPERBLOCK_MAGIC {
            return Err(SuperblockFault::NoMagic);
        }
        let version = get_u32(b, OFF_VERSION);
        if !(OLDEST_READABLE_VERSION..=FORMAT_VERSION).contains(&version) {
            return Err(SuperblockFault::Version(version));
        }
        if !is_sealed(b, SUPERBLOCK_SALT) {
            return Err(SuperblockFault::Corrupt("checksum mismatch".into()));
        }
        let corrupt = |s: &str| SuperblockFault::Corrupt(s.to_string());
        if get_u32(b, OFF_BLOCK_SIZE) as usize != BLOCK_SIZE {
            return Err(corrupt("unexpected metadata block size"));
        }
        let full_policy = match b[OFF_FULL_POLICY] {
            0 => FullPolicy::Error,
            1 => FullPolicy::InvalidateOldest,
            _ => return Err(corrupt("unknown store-full policy")),
        };
        // Version 5 and older leave this byte zero and unread.
        let origin_cache = match b[OFF_ORIGIN_CACHE] {
            _ if version < FORMAT_VERSION => OriginCache::Buffered,
            0 => OriginCache::Buffered,
            1 => OriginCache::Direct,
            _ => return Err(corrupt("unknown origin cache mode")),
        };
        let name_len = b[OFF_VOLUME_NAME] as usize;
        if name_len > MAX_VOLUME_NAME {
            return Err(corrupt("volume name too long"));
        }
        let volume_name =
            String::from_utf8(b[OFF_VOLUME_NAME + 1..OFF_VOLUME_NAME + 1 + name_len].to_vec())
                .map_err(|_| corrupt("volume name is not UTF-8"))?;
        let path_len = get_u16(b, OFF_ORIGIN_PATH) as usize;
        if path_len > MAX_ORIGIN_PATH {
            return Err(corrupt("origin path too long"));
        }
        let origin_path =
            String::from_utf8(b[OFF_ORIGIN_PATH + 2..OFF_ORIGIN_PATH + 2 + path_len].to_vec())
                .map_err(|_| corrupt("origin path is not UTF-8"))?;
        let mut volume_uuid = [0u8; 16];
        volume_uuid.copy_from_slice(&b[OFF_UUID..OFF_UUID + 16]);
        let mut replica_source = [0u8; 16];
        replica_source.copy_from_slice(&b[OFF_REPLICA_SOURCE..OFF_REPLICA_SOURCE + 16]);
        let receive = match get_u64(b, OFF_RECEIVE_STAGING) {
            0 => None,
            staging => {
                let flags = get_u32(b, OFF_RECEIVE_FLAGS);
                if flags & !KNOWN_RECEIVE_FLAGS != 0 {
                    return Err(corrupt("unknown receive flags"));
                }
                let n = get_u16(b, OFF_RECEIVE_TOKEN_LEN) as usize;
                if n > MAX_RECEIVE_TOKEN {
                    return Err(corrupt("receive token too long"));
                }
                Some(ReceiveState {
                    staging,
                    base: get_u64(b, OFF_RECEIVE_BASE),
                    flags,
                    token: b[OFF_RECEIVE_TOKEN..OFF_RECEIVE_TOKEN + n].to_vec(),
                })
            }
        };
        // Version 3 and older leave these bytes zero and unread.
        let revert = match get_u64(b, OFF_REVERT_TARGET) {
            0 => None,
            _ if version < SIZED_VERSION => None,
            target => Some(RevertState {
                target,
                newest: get_u64(b, OFF_REVERT_NEWEST),
                cursor: get_u64(b, OFF_REVERT_CURSOR),
            }),
        };
        // Version 4 and older leave these bytes zero and unread.
        let clone = match get_u64(b, OFF_CLONE_SOURCE_SNAPSHOT) {
            0 => None,
            _ if version < CLONE_VERSION => None,
            source_snapshot => {
                let mut source_volume = [0u8; 16];
                source_volume
                    .copy_from_slice(&b[OFF_CLONE_SOURCE_VOLUME..OFF_CLONE_SOURCE_VOLUME + 16]);
                Some(CloneState {
                    source_volume,
                    source_snapshot,
                    source_size: get_u64(b, OFF_CLONE_SOURCE_SIZE),
                    cursor: get_u64(b, OFF_CLONE_CURSOR),
                    hydrated_bytes: get_u64(b, OFF_CLONE_HYDRATED_BYTES),
                })
            }
        };
        let sb = Superblock {
            generation: get_u64(b, OFF_GENERATION),
            volume_uuid,
            chunk_size: get_u32(b, OFF_CHUNK_SIZE),
            origin_size: get_u64(b, OFF_ORIGIN_SIZE),
            store_blocks: get_u64(b, OFF_STORE_BLOCKS),
            bitmap_start: get_u64(b, OFF_BITMAP_START),
            bitmap_blocks: get_u64(b, OFF_BITMAP_BLOCKS),
            bitmap_copy: b[OFF_BITMAP_COPY],
            full_policy,
            exception_root: get_u64(b, OFF_EXCEPTION_ROOT),
            snapshot_root: get_u64(b, OFF_SNAPSHOT_ROOT),
            next_snapshot_id: get_u64(b, OFF_NEXT_SNAPSHOT_ID),
            exception_count: get_u64(b, OFF_EXCEPTION_COUNT),
            used_blocks: get_u64(b, OFF_USED_BLOCKS),
            copies_total: get_u64(b, OFF_COPIES_TOTAL),
            created_at_ns: get_u64(b, OFF_CREATED_AT),
            private_root: get_u64(b, OFF_PRIVATE_ROOT),
            invalidated_total: get_u64(b, OFF_INVALIDATED_TOTAL),
            replica_source,
            receive,
            volume_name,
            origin_path,
            journal_start: get_u64(b, OFF_JOURNAL_START),
            journal_blocks: get_u64(b, OFF_JOURNAL_BLOCKS),
            journal_epoch: get_u64(b, OFF_JOURNAL_EPOCH),
            sized_snapshots: version >= SIZED_VERSION,
            revert,
            clone_format: version >= CLONE_VERSION,
            clone,
            origin_cache,
        };
        sb.sanity().map_err(SuperblockFault::Corrupt)?;
        Ok(sb)
    }

    /// Field-level checks that a checksum cannot catch (a bug that wrote nonsense).
    pub fn sanity(&self) -> Result<(), String> {
        if !self.chunk_size.is_power_of_two()
            || self.chunk_size < MIN_CHUNK_SIZE
            || self.chunk_size > MAX_CHUNK_SIZE
        {
            return Err(format!(
                "chunk size {} is not a power of two in 4KiB..=1MiB",
                self.chunk_size
            ));
        }
        if self.bitmap_copy > 1 {
            return Err("bitmap copy index is not 0 or 1".into());
        }
        let bitmap_end = self.bitmap_start + 2 * self.bitmap_blocks;
        if self.bitmap_start < 2 || bitmap_end > self.store_blocks {
            return Err("bitmap area lies outside the store".into());
        }
        if self.bitmap_blocks * bitmap::BITS_PER_BLOCK < self.store_blocks {
            return Err("bitmap too small for the store".into());
        }
        if self.journal_blocks > 0
            && (self.journal_start != bitmap_end
                || self.journal_blocks > self.store_blocks - bitmap_end)
        {
            return Err("journal area does not follow the bitmaps inside the store".into());
        }
        let bitmap_end = self.reserved_end();
        for (what, root) in [
            ("exception", self.exception_root),
            ("snapshot", self.snapshot_root),
        ] {
            if root < bitmap_end || root >= self.store_blocks {
                return Err(format!(
                    "{what} root {root} lies outside the allocatable area"
                ));
            }
        }
        if self.next_snapshot_id == 0 {
            return Err("next snapshot id is 0".into());
        }
        if self.used_blocks > self.store_blocks {
            return Err("more blocks used than the store holds".into());
        }
        if let Some(r) = &self.revert {
            if !self.sized_snapshots {
                return Err("rollback state in a superblock older than version 4".into());
            }
            let chunks = self.origin_size.div_ceil(u64::from(self.chunk_size));
            if r.target > r.newest || r.newest >= self.next_snapshot_id || r.cursor > chunks {
                return Err(format!(
                    "rollback state (target {}, newest {}, cursor {}) is impossible for {} snapshot ids and {chunks} chunks",
                    r.target, r.newest, r.cursor, self.next_snapshot_id
                ));
            }
        }
        if self.origin_cache == OriginCache::Direct && !(self.clone_format && self.sized_snapshots)
        {
            return Err("a direct origin in a superblock older than version 6".into());
        }
        if let Some(c) = &self.clone {
            if !self.clone_format {
                return Err("clone state in a superblock older than version 5".into());
            }
            let chunks = self.origin_size.div_ceil(u64::from(self.chunk_size));
            let source_chunks = c.source_size.div_ceil(u64::from(self.chunk_size));
            if c.source_volume == [0; 16]
                || c.source_size == 0
                || c.source_size > self.origin_size
                || c.cursor > source_chunks.min(chunks)
            {
                return Err(format!(
                    "clone state (source size {}, cursor {}) is impossible for an origin of {} bytes",
                    c.source_size, c.cursor, self.origin_size
                ));
            }
        }
        Ok(())
    }
}

fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

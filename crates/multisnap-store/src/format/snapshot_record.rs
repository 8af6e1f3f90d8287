//! The value stored per snapshot in the snapshot table (a B+tree keyed by snapshot id).

use super::*;

pub const RECORD_SIZE: usize = 160;
pub const MAX_NAME: usize = 128;

const OFF_CREATED: usize = 0;
const OFF_FLAGS: usize = 8;
const OFF_STATE: usize = 12;
const OFF_SOURCE_ID: usize = 16;
const OFF_NAME_LEN: usize = 24;
const OFF_NAME: usize = 25;
/// The snapshot's size in bytes as a 7-byte integer: the record's last free bytes (the name
/// ends at 153), and 2^56 bytes is far beyond any volume.
const OFF_SIZE: usize = 153;
const SIZE_BYTES: usize = 7;
/// Largest size a record can hold.
pub const MAX_SNAPSHOT_SIZE: u64 = (1 << (8 * SIZE_BYTES)) - 1;

const FLAG_WRITABLE: u32 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotState {
    /// Live: readable, counted by copy-out.
    Ready = 0,
    /// Deleted by a user: its space is being reclaimed, then the record goes.
    Deleting = 1,
    /// Dropped by the invalidate-oldest policy and reclaimed; the record stays so users can
    /// see what happened, until they delete it.
    Invalid = 2,
    /// Dropped by the invalidate-oldest policy, space not yet reclaimed.
    Invalidating = 3,
    /// A delta being received into this record's private chunks (the staging area of an
    /// apply): invisible to users, never read, and turned into a real snapshot only by the
    /// apply's commit, or reclaimed like a deleted one when the apply is abandoned.
    Receiving = 4,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotRecord {
    pub created_at_ns: u64,
    pub writable: bool,
    pub state: SnapshotState,
    /// For a snapshot made by applying a delta: the id the snapshot has on the volume the
    /// delta came from (ids are per store, so this is how the next incremental finds its
    /// base). 0 for snapshots taken locally.
    pub source_id: u64,
    pub name: String,
    /// Bytes the snapshot reads: the origin's size when it was taken (a volume only grows, so
    /// sizes never decrease with the id). Stores before format version 4 leave it 0 on disk;
    /// `Meta::load_snapshots` reads that as the superblock's origin size.
    pub size: u64,
}

impl SnapshotRecord {
    pub fn pack(&self) -> [u8; RECORD_SIZE] {
        let mut b = [0u8; RECORD_SIZE];
        put_u64(&mut b, OFF_CREATED, self.created_at_ns);
        put_u32(
            &mut b,
            OFF_FLAGS,
            if self.writable { FLAG_WRITABLE } else { 0 },
        );
        put_u32(&mut b, OFF_STATE, self.state as u32);
        put_u64(&mut b, OFF_SOURCE_ID, self.source_id);
        let name = self.name.as_bytes();
        let n = name.len().min(MAX_NAME);
        b[OFF_NAME_LEN] = n as u8;
        b[OFF_NAME..OFF_NAME + n].copy_from_slice(&name[..n]);
        b[OFF_SIZE..OFF_SIZE + SIZE_BYTES]
            .copy_from_slice(&self.size.min(MAX_SNAPSHOT_SIZE).to_le_bytes()[..SIZE_BYTES]);
        b
    }

    pub fn unpack(b: &[u8]) -> Result<SnapshotRecord, String> {
        if b.len() != RECORD_SIZE {
            return Err("snapshot record has the wrong size".into());
        }
        let flags = get_u32(b, OFF_FLAGS);
        if flags & !FLAG_WRITABLE != 0 {
            return Err(format!("unknown snapshot flags {flags:#x}"));
        }
        let state = match get_u32(b, OFF_STATE) {
            0 => SnapshotState::Ready,
            1 => SnapshotState::Deleting,
            2 => SnapshotState::Invalid,
            3 => SnapshotState::Invalidating,
            4 => SnapshotState::Receiving,
            s => return Err(format!("unknown snapshot state {s}")),
        };
        let n = b[OFF_NAME_LEN] as usize;
        if n > MAX_NAME {
            return Err("snapshot name too long".into());
        }
        let name = String::from_utf8(b[OFF_NAME..OFF_NAME + n].to_vec())
            .map_err(|_| "snapshot name is not UTF-8".to_string())?;
        let mut size = [0u8; 8];
        size[..SIZE_BYTES].copy_from_slice(&b[OFF_SIZE..OFF_SIZE + SIZE_BYTES]);
        Ok(SnapshotRecord {
            size: u64::from_le_bytes(size),
            created_at_ns: get_u64(b, OFF_CREATED),
            writable: flags & FLAG_WRITABLE != 0,
            state,
            source_id: get_u64(b, OFF_SOURCE_ID),
            name,
        })
    }
}

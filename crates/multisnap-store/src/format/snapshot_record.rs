//! The value stored per snapshot in the snapshot table (a B+tree keyed by snapshot id).

use super::*;

pub const RECORD_SIZE: usize = 160;
pub const MAX_NAME: usize = 128;

const OFF_CREATED: usize = 0;
const OFF_FLAGS: usize = 8;
const OFF_STATE: usize = 16;
const OFF_NAME_LEN: usize = 24;
const OFF_NAME: usize = 25;

const FLAG_WRITABLE: u64 = 1;

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
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotRecord {
    pub created_at_ns: u64,
    pub writable: bool,
    pub state: SnapshotState,
    pub name: String,
}

impl SnapshotRecord {
    pub fn pack(&self) -> [u8; RECORD_SIZE] {
        let mut b = [0u8; RECORD_SIZE];
        put_u64(&mut b, OFF_CREATED, self.created_at_ns);
        put_u64(
            &mut b,
            OFF_FLAGS,
            if self.writable { FLAG_WRITABLE } else { 0 },
        );
        put_u64(&mut b, OFF_STATE, self.state as u64);
        let name = self.name.as_bytes();
        let n = name.len().min(MAX_NAME);
        b[OFF_NAME_LEN] = n as u8;
        b[OFF_NAME..OFF_NAME + n].copy_from_slice(&name[..n]);
        b
    }

    pub fn unpack(b: &[u8]) -> Result<SnapshotRecord, String> {
        if b.len() != RECORD_SIZE {
            return Err("snapshot record has the wrong size".into());
        }
        let flags = get_u64(b, OFF_FLAGS);
        if flags & !FLAG_WRITABLE != 0 {
            return Err(format!("unknown snapshot flags {flags:#x}"));
        }
        let state = match get_u64(b, OFF_STATE) {
            0 => SnapshotState::Ready,
            1 => SnapshotState::Deleting,
            2 => SnapshotState::Invalid,
            3 => SnapshotState::Invalidating,
            s => return Err(format!("unknown snapshot state {s}")),
        };
        let n = b[OFF_NAME_LEN] as usize;
        if n > MAX_NAME {
            return Err("snapshot name too long".into());
        }
        let name = String::from_utf8(b[OFF_NAME..OFF_NAME + n].to_vec())
            .map_err(|_| "snapshot name is not UTF-8".to_string())?;
        Ok(SnapshotRecord {
            created_at_ns: get_u64(b, OFF_CREATED),
            writable: flags & FLAG_WRITABLE != 0,
            state,
            name,
        })
    }
}

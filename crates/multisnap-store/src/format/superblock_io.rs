//! Reading and writing the two superblock slots on the store device: which slot a generation
//! goes to, and which of the two is in force. The bytes of one slot are in [`super::superblock`].

use super::superblock::{Superblock, SuperblockFault};
use super::{BLOCK_SIZE, FORMAT_VERSION};
use crate::blockdev::BlockDev;
use crate::error::{Result, StoreError};

/// Byte offset of the slot generation `generation` is written to: the slot not holding the
/// previous generation, so a torn write leaves that one intact.
fn slot_offset(generation: u64) -> u64 {
    (generation % 2) * BLOCK_SIZE as u64
}

fn read_slot(
    dev: &dyn BlockDev,
    slot: u64,
) -> Result<std::result::Result<Superblock, SuperblockFault>> {
    let mut buf = vec![0u8; BLOCK_SIZE];
    let off = slot_offset(slot);
    match dev.read_at(&mut buf, off) {
        Ok(()) => Ok(Superblock::unpack(&buf)),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            Ok(Err(SuperblockFault::NoMagic))
        }
        Err(e) => Err(StoreError::io("store", off, BLOCK_SIZE, e)),
    }
}

/// Reads both superblock slots and picks the newest valid one.
pub fn read_superblock(dev: &dyn BlockDev) -> Result<Superblock> {
    let a = read_slot(dev, 0)?;
    let b = read_slot(dev, 1)?;
    match (a, b) {
        (Ok(x), Ok(y)) => Ok(if x.generation >= y.generation { x } else { y }),
        (Ok(x), Err(_)) | (Err(_), Ok(x)) => Ok(x),
        (Err(SuperblockFault::NoMagic), Err(SuperblockFault::NoMagic)) => {
            Err(StoreError::NotAStore)
        }
        (Err(SuperblockFault::Version(v)), _) | (_, Err(SuperblockFault::Version(v))) => {
            Err(StoreError::UnsupportedVersion {
                found: v,
                supported: FORMAT_VERSION,
            })
        }
        (Err(x), Err(y)) => Err(StoreError::NoValidSuperblock {
            detail: format!("slot 0: {x:?}; slot 1: {y:?}"),
        }),
    }
}

/// Writes `sb` into the slot of its generation (to the device's cache: the caller flushes).
pub fn write_superblock(dev: &dyn BlockDev, sb: &Superblock) -> Result<()> {
    let off = slot_offset(sb.generation);
    dev.write_at(&sb.pack(), off)
        .map_err(|e| StoreError::io("store", off, BLOCK_SIZE, e))
}

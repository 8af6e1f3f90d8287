//! Newtypes for the numbers the store juggles, so that a snapshot id can never be passed where
//! a chunk number is expected (and vice versa).

use std::fmt;

/// A volume's identity, shared with the delta stream's header (hence its own crate).
pub use multisnap_ids::VolumeUuid;

/// A snapshot's id: 64-bit, increasing, never reused within a volume. Id 0 is never issued.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SnapshotId(pub u64);

/// The index of a chunk of the origin volume (origin byte offset / chunk size).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OriginChunk(pub u64);

/// The index of a data chunk in the store (store byte offset / chunk size).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StoreChunk(pub u64);

/// The index of a 4 KiB metadata block in the store (store byte offset / 4096).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MetaBlock(pub u64);

/// A transaction generation: each commit writes the superblock with the next one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Generation(pub u64);

impl fmt::Display for SnapshotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "snapshot#{}", self.0)
    }
}
impl fmt::Display for OriginChunk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "origin chunk {}", self.0)
    }
}
impl fmt::Display for StoreChunk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "store chunk {}", self.0)
    }
}
impl fmt::Display for MetaBlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "metadata block {}", self.0)
    }
}
impl fmt::Display for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "generation {}", self.0)
    }
}

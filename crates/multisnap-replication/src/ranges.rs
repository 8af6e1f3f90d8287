//! Block maps without the data: the byte ranges a snapshot holds data in, or the byte ranges
//! where two snapshots of a volume differ, for changed block tracking (CSI's SnapshotMetadata)
//! and for the delta export's chunk list.
//!
//! Both come from the same store calls the export uses (`Store::changed_extents`, which reads
//! the exception index and skips what predates the base, and `Store::allocation`), a window at
//! a time, so the cost of a delta map follows the changed chunks, not the volume size, and a
//! caller that stops early (a client gone) stops the work too.

use super::{ready_snapshot, ReplicationError, Result};
use multisnap_store::{SnapshotInfo, Store, View};

/// One range of bytes, `offset..offset + len`, `len > 0`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteRange {
    pub offset: u64,
    pub len: u64,
}

impl ByteRange {
    pub fn end(&self) -> u64 {
        self.offset + self.len
    }
}

/// What a map lists.
#[derive(Clone, Debug)]
pub enum MapKind {
    /// The ranges of the target that hold data (the rest reads as zeros).
    Allocated,
    /// The ranges where the target differs from this older snapshot.
    Changed { base: SnapshotInfo },
}

/// A checked request for a map of one snapshot.
#[derive(Clone, Debug)]
pub struct MapQuery {
    pub kind: MapKind,
    pub target: SnapshotInfo,
    /// No range ends at or before this byte; a range that spans it starts there.
    pub start: u64,
}

impl MapQuery {
    /// Looks the snapshots up by name and checks the request: both READY, the base taken
    /// before the target (ids increase in creation order), `start` within the target.
    pub fn new(store: &Store, base: Option<&str>, target: &str, start: u64) -> Result<MapQuery> {
        let ready = |name: &str| ready_snapshot(store, name);
        let target = ready(target)?;
        let kind = match base.map(ready).transpose()? {
            None => MapKind::Allocated,
            Some(b) if b.id == target.id => return Err(ReplicationError::SameSnapshot(b.name)),
            Some(b) if b.id > target.id => {
                return Err(ReplicationError::BaseNotOlder {
                    base: b.name,
                    target: target.name,
                })
            }
            Some(base) => MapKind::Changed { base },
        };
        if start > target.size {
            return Err(ReplicationError::OffsetPastEnd {
                offset: start,
                size: target.size,
            });
        }
        Ok(MapQuery {
            kind,
            target,
            start,
        })
    }

    /// The map, as a lazy sequence of maximal ranges in address order.
    pub fn ranges<'a>(&self, store: &'a Store) -> Ranges<'a> {
        Ranges {
            store,
            query: self.clone(),
            pos: self.start,
            open: None,
            ready: Vec::new(),
        }
    }
}

/// The ranges of a [`MapQuery`], computed one store window at a time. Adjacent runs are merged,
/// across windows too, so each range is maximal.
pub struct Ranges<'a> {
    store: &'a Store,
    query: MapQuery,
    /// Where the next window starts.
    pos: u64,
    /// A range that reached the end of the last window and may go on in the next.
    open: Option<ByteRange>,
    /// Finished ranges not yet returned, in reverse order.
    ready: Vec<ByteRange>,
}

impl Ranges<'_> {
    /// Reads the next window of the map; false once the target's end is reached.
    fn next_window(&mut self) -> Result<bool> {
        let size = self.query.target.size;
        if self.pos >= size {
            if let Some(r) = self.open.take() {
                self.ready.push(r);
            }
            return Ok(false);
        }
        let view = View::Snapshot(self.query.target.id);
        let map = match &self.query.kind {
            MapKind::Changed { base } => {
                self.store
                    .changed_extents(base.id, view, self.pos, size - self.pos)?
            }
            MapKind::Allocated => self.store.allocation(view, self.pos, size - self.pos)?,
        };
        let mut found = Vec::new();
        for (len, flagged) in map {
            if flagged && len > 0 {
                match &mut self.open {
                    Some(r) if r.end() == self.pos => r.len += len,
                    _ => {
                        found.extend(self.open.take());
                        self.open = Some(ByteRange {
                            offset: self.pos,
                            len,
                        });
                    }
                }
            } else if len > 0 {
                found.extend(self.open.take());
            }
            self.pos += len;
        }
        found.reverse();
        self.ready.splice(0..0, found);
        Ok(true)
    }
}

impl Iterator for Ranges<'_> {
    type Item = Result<ByteRange>;

    fn next(&mut self) -> Option<Result<ByteRange>> {
        loop {
            if let Some(r) = self.ready.pop() {
                return Some(Ok(r));
            }
            let before = self.pos;
            match self.next_window() {
                Ok(true) if self.pos == before => {
                    // The store answered an empty window for a non-empty range: it would
                    // never advance, so say so instead of spinning.
                    self.pos = self.query.target.size;
                    self.open = None;
                    return Some(Err(ReplicationError::MapStalled { offset: before }));
                }
                Ok(true) => {}
                Ok(false) => return self.ready.pop().map(Ok),
                Err(e) => {
                    self.pos = self.query.target.size;
                    self.open = None;
                    return Some(Err(e));
                }
            }
        }
    }
}

//! What pruning must leave alone: a policy snapshot that something still needs is kept,
//! whatever retention says, until it is let go (the next look prunes it then).
//!
//! Each kind of hold is one [`Hold`]; the scheduler asks them all. Today: a clone hydrating
//! from the snapshot, a ublk device serving it, a rollback merging from it, and a mirror's base
//! (kept until the target has the next one) or the snapshot it is sending
//! (`crate::mirror::MirrorBase`).

use crate::ublk_devices::UblkDevices;
use crate::volumes::Volume;
use multisnap_store::SnapshotInfo;
use std::sync::Arc;

pub trait Hold: Send + Sync {
    /// Who holds `snapshot` of `volume`, in words for the status and the log; `None` if
    /// nothing does.
    fn holder(&self, volume: &Volume, snapshot: &SnapshotInfo) -> Option<String>;
}

/// Clones hydrating from the snapshot (the store refuses to delete it meanwhile).
struct CloneSource;

impl Hold for CloneSource {
    fn holder(&self, volume: &Volume, snapshot: &SnapshotInfo) -> Option<String> {
        volume
            .store
            .clone_holders()
            .into_iter()
            .find(|(name, _)| *name == snapshot.name)
            .map(|(_, clone)| format!("clone {clone}"))
    }
}

/// A rollback of the volume merging from the snapshot.
struct RollbackTarget;

impl Hold for RollbackTarget {
    fn holder(&self, volume: &Volume, snapshot: &SnapshotInfo) -> Option<String> {
        volume
            .store
            .merge_progress()
            .filter(|m| m.target_name == snapshot.name)
            .map(|_| "a rollback merging from it".to_string())
    }
}

/// A ublk device serving the snapshot (deleting it would pull the disk from under a mount).
struct UblkServed(Arc<UblkDevices>);

impl Hold for UblkServed {
    fn holder(&self, volume: &Volume, snapshot: &SnapshotInfo) -> Option<String> {
        self.0
            .serving(&volume.name, Some(&snapshot.name))
            .map(|dev| format!("ublk device {dev}"))
    }
}

/// Every hold the pruner consults.
pub struct Holds(Vec<Box<dyn Hold>>);

impl Holds {
    /// The agent's holds.
    pub fn standard(ublk: Arc<UblkDevices>) -> Holds {
        Holds(vec![
            Box::new(CloneSource),
            Box::new(RollbackTarget),
            Box::new(UblkServed(ublk)),
            Box::new(crate::mirror::MirrorBase),
        ])
    }

    /// Holds without a ublk frontend, for unit tests.
    #[cfg(test)]
    pub fn store_only() -> Holds {
        Holds(vec![Box::new(CloneSource), Box::new(RollbackTarget)])
    }

    /// Adds a kind of hold.
    #[cfg(test)]
    pub fn with(mut self, hold: Box<dyn Hold>) -> Holds {
        self.0.push(hold);
        self
    }

    pub fn holder(&self, volume: &Volume, snapshot: &SnapshotInfo) -> Option<String> {
        self.0.iter().find_map(|h| h.holder(volume, snapshot))
    }
}

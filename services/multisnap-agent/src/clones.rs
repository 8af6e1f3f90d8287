//! Clones (CreateVolume with a source): making one, wiring each hydrating clone to its
//! source's store when the agent starts, the refusals that protect a source while a clone
//! hydrates from it, and the hidden snapshot a clone of a volume's current contents copies.
//!
//! Deleting a clone's source snapshot or source volume is refused with FAILED_PRECONDITION
//! naming the clone until its hydration ends, rather than deferred: a deferred delete would
//! leave a call that said "deleted" while the data stays, and the CSI driver's DeleteSnapshot
//! retries on FAILED_PRECONDITION anyway. Deleting the clone itself is always allowed.

use crate::volumes::{NewVolume, Volume, VolumeError, Volumes};
use multisnap_store::{is_hidden_snapshot_name, HydrationProgress, SnapshotId, Store};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Chunks with data a hydration step copies (each step ends with an origin flush and a
/// commit), and steps per volume per round, so reclamation and other volumes take turns.
const HYDRATE_STEP_CHUNKS: usize = 64;
const HYDRATE_STEPS_PER_ROUND: usize = 16;

/// Where a clone's contents come from: a volume, and one of its snapshots or (`None`) its
/// current contents.
pub struct CloneFrom {
    pub volume: String,
    pub snapshot: Option<String>,
}

impl Volumes {
    /// Makes volume `spec.name` a clone of `from`: usable at once, hydrated by the reclaimer
    /// thread. A clone of a volume's current contents first takes a hidden snapshot of it.
    pub fn create_clone(
        &self,
        spec: &NewVolume,
        from: &CloneFrom,
    ) -> Result<Arc<Volume>, VolumeError> {
        crate::datadir::validate_volume_name(&spec.name).map_err(VolumeError::InvalidArgument)?;
        if spec.origin_path.is_some() {
            return Err(VolumeError::InvalidArgument(
                "origin_path must be empty for a clone: it gets a new origin file".into(),
            ));
        }
        let mut map = self.map.write();
        if map.contains_key(&spec.name) {
            return Err(VolumeError::AlreadyExists(spec.name.clone()));
        }
        let source = map
            .get(&from.volume)
            .cloned()
            .ok_or_else(|| VolumeError::NotFound(from.volume.clone()))?;
        let (snap, hidden) = match &from.snapshot {
            Some(name) => (source.store.snapshot_by_name(name)?, false),
            None => (
                source
                    .store
                    .create_hidden_snapshot(&hidden_name(&spec.name))?,
                true,
            ),
        };
        let made = self.make_clone(&mut map, spec, &source, snap.id, snap.size);
        if made.is_err() && hidden {
            drop_hidden_snapshot(&source.store, snap.id);
        }
        made
    }

    fn make_clone(
        &self,
        map: &mut BTreeMap<String, Arc<Volume>>,
        spec: &NewVolume,
        source: &Volume,
        snapshot: SnapshotId,
        snapshot_size: u64,
    ) -> Result<Arc<Volume>, VolumeError> {
        let size = match spec.size_bytes {
            0 => snapshot_size,
            n if n < snapshot_size => {
                return Err(VolumeError::InvalidArgument(format!(
                    "size_bytes {n} is smaller than the source snapshot ({snapshot_size} bytes); give 0 for its size"
                )))
            }
            n => n,
        };
        let spec = NewVolume {
            name: spec.name.clone(),
            size_bytes: size,
            chunk_size: spec.chunk_size,
            store_size_bytes: spec.store_size_bytes,
            origin_path: None,
            full_policy: spec.full_policy,
            origin_cache: spec.origin_cache,
            labels: spec.labels.clone(),
        };
        let source_store = source.store.clone();
        let v = self.create_locked(map, &spec, move |origin, dev, opts| {
            Store::create_clone(origin, dev, opts, source_store, snapshot)
        })?;
        tracing::info!(volume = %spec.name, source = %source.name, snapshot = snapshot.0, "clone created");
        Ok(v)
    }
}

/// The hidden snapshot's name for a clone of a volume's current contents: unique (the clone's
/// name and the time), so a clone of the same name made later never meets an old one.
fn hidden_name(clone: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(".clone-{clone}-{nanos:x}")
}

fn drop_hidden_snapshot(store: &Store, id: SnapshotId) {
    if let Err(e) = store.delete_snapshot(id) {
        tracing::warn!(volume = %store.volume_name(), snapshot = id.0, error = %e,
            "cannot delete a clone's hidden source snapshot; the next start retries");
    }
}

/// On start: hands every hydrating clone its source's store, then deletes hidden snapshots no
/// clone holds any more (left by a stop between a hydration's end and their deletion).
pub fn wire_clones(map: &BTreeMap<String, Arc<Volume>>) {
    for v in map.values() {
        let Some(uuid) = v.store.clone_source_volume() else {
            continue;
        };
        let source = map.values().find(|s| s.store.volume_uuid() == uuid);
        let attached = match source {
            Some(s) => v
                .store
                .attach_clone_source(s.store.clone())
                .map_err(|e| e.to_string()),
            None => Err(format!("no loaded volume has uuid {uuid}")),
        };
        match attached {
            Ok(()) => {
                tracing::info!(volume = %v.name, source = %source.map_or("", |s| &s.name), "clone wired to its source; hydration resumes")
            }
            Err(why) => {
                tracing::error!(volume = %v.name, error = %why, "clone's source is missing: its chunks not yet copied cannot be read")
            }
        }
    }
    for v in map.values() {
        let held: Vec<String> = v
            .store
            .clone_holders()
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        for snap in v.store.hidden_snapshots() {
            if !held.contains(&snap.name) {
                tracing::info!(volume = %v.name, snapshot = %snap.name, "deleting a hidden clone source snapshot no clone needs");
                drop_hidden_snapshot(&v.store, snap.id);
            }
        }
    }
}

/// Refuses deleting a volume a clone still hydrates from, naming the clone.
pub fn refuse_deleting_a_source(v: &Volume) -> Result<(), VolumeError> {
    match v.store.clone_holders().first() {
        Some((snapshot, clone)) => Err(VolumeError::FailedPrecondition(format!(
            "volume {} is the source of clone {clone:?}, which is still hydrating from {}; delete the clone or wait until its hydration ends",
            v.name,
            if is_hidden_snapshot_name(snapshot) {
                "its contents at the time of the clone".to_string()
            } else {
                format!("snapshot {snapshot:?}")
            }
        ))),
        None => Ok(()),
    }
}

/// A clone being deleted while it hydrates lets go of its source, and its hidden source
/// snapshot goes.
pub fn forget_clone(map: &BTreeMap<String, Arc<Volume>>, clone: &Volume) {
    let progress = clone.store.hydration();
    clone.store.detach_clone_source();
    if let Some(p) = progress {
        release_hidden_source(map.values(), &p);
    }
}

/// Deletes the hidden snapshot a finished (or deleted) clone copied, if it was one.
fn release_hidden_source<'a>(
    volumes: impl IntoIterator<Item = &'a Arc<Volume>>,
    p: &HydrationProgress,
) {
    if !is_hidden_snapshot_name(&p.source_snapshot_name) {
        return;
    }
    if let Some(source) = volumes
        .into_iter()
        .find(|s| s.store.volume_uuid() == p.source_volume)
    {
        drop_hidden_snapshot(&source.store, p.source_snapshot);
    }
}

/// The hydrations' bandwidth limit (`--hydration-bytes-per-sec`): a budget refilled at that
/// rate, at most one second's worth; a step may run while it is positive.
pub struct Throttle {
    bytes_per_sec: u64,
    budget: f64,
    refilled: Instant,
}

impl Throttle {
    pub fn new(bytes_per_sec: u64) -> Throttle {
        Throttle {
            bytes_per_sec,
            budget: bytes_per_sec as f64,
            refilled: Instant::now(),
        }
    }

    pub fn refill(&mut self) {
        let now = Instant::now();
        let rate = self.bytes_per_sec as f64;
        self.budget = (self.budget + rate * (now - self.refilled).as_secs_f64()).min(rate);
        self.refilled = now;
    }

    fn allows(&self) -> bool {
        self.bytes_per_sec == 0 || self.budget > 0.0
    }

    fn spend(&mut self, bytes: u64) {
        self.budget -= bytes as f64;
    }
}

/// A few steps of the volume's hydration, if it is a clone wired to its source and the
/// throttle allows; whether any work was done. When the hydration ends, a hidden source
/// snapshot is deleted.
pub fn hydrate_some(volumes: &Volumes, v: &Volume, throttle: &mut Throttle) -> bool {
    let Some(start) = v.store.hydration().filter(|p| p.attached) else {
        return false;
    };
    let mut copied = start.hydrated_bytes;
    for step in 0..HYDRATE_STEPS_PER_ROUND {
        if !throttle.allows() {
            return step > 0;
        }
        match v.store.hydrate_step(HYDRATE_STEP_CHUNKS) {
            Ok(Some(p)) => {
                throttle.spend(p.hydrated_bytes.saturating_sub(copied));
                copied = p.hydrated_bytes;
                if step == 0 {
                    tracing::debug!(volume = %v.name, source = %p.source_volume_name, hydrated_chunks = p.cursor,
                        total_chunks = p.chunk_count, "hydrating a clone");
                }
            }
            Ok(None) => {
                tracing::info!(volume = %v.name, source = %start.source_volume_name, "clone hydrated");
                release_hidden_source(volumes.list().iter(), &start);
                return true;
            }
            Err(e) => {
                tracing::error!(volume = %v.name, error = %e, "clone hydration failed; will retry");
                return false;
            }
        }
    }
    true
}

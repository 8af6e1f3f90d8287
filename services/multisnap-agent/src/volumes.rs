//! The volumes an agent serves: each an origin plus its store, opened once and shared by
//! every frontend.

use crate::datadir::{sync_dir, validate_volume_name, DataDir, ORIGIN_FILE, STORE_FILE};
use crate::io_errors::{IoErrors, ObservedDev};
use crate::mirror::persist::MIRROR_FILE;
use crate::mirror::MirrorSlot;
use crate::origin_policy::OriginPolicy;
use crate::policy::persist::POLICY_FILE;
use crate::policy::PolicySlot;
use crate::volume_labels::{Labels, LABELS_FILE};
use anyhow::Context;
use multisnap_store::{
    read_superblock, BlockDev, CreateOptions, DirectDev, FileDev, FullPolicy, OriginCache, Store,
};
use parking_lot::RwLock;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

/// What can go wrong managing volumes; the gRPC layer maps each to a status code.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("no volume named {0:?}")]
    NotFound(String),
    /// GetPolicy on a volume without a snapshot policy.
    #[error("volume {0:?} has no snapshot policy")]
    NoPolicy(String),
    /// GetMirror on a volume without a mirror.
    #[error("volume {0:?} has no mirror")]
    NoMirror(String),
    /// GetMirror naming a target the volume has no mirror to; the message lists its mirrors.
    #[error("{0}")]
    NoSuchMirror(String),
    #[error("a volume named {0:?} already exists")]
    AlreadyExists(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    FailedPrecondition(String),
    /// The request names something the operator has not allowed (see `origin_policy`).
    #[error("{0}")]
    PermissionDenied(String),
    /// A size past what this agent or the host filesystem can hold; the message names the limit.
    #[error("{0}")]
    OutOfRange(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no snapshot group named {0:?}")]
    GroupNotFound(String),
    /// A group's name taken by something else; the message says by what.
    #[error("{0}")]
    GroupExists(String),
    #[error(transparent)]
    Store(#[from] multisnap_store::StoreError),
}

fn io_err(what: String) -> impl FnOnce(std::io::Error) -> VolumeError {
    move |source| VolumeError::Io { what, source }
}

/// The origin `file` (at `path`) as its volume's `cache` opens it, reporting its errors: a
/// direct origin is switched to `O_DIRECT`, which fails where the filesystem has no direct I/O
/// (an `Unsupported` error naming the path) or the size is not aligned (`InvalidInput`).
fn origin_device(
    file: std::fs::File,
    cache: OriginCache,
    path: &Path,
    volume: &str,
    errors: &Arc<IoErrors>,
) -> std::io::Result<ObservedDev> {
    let errors = errors.clone();
    Ok(match cache {
        OriginCache::Buffered => {
            ObservedDev::new(FileDev::from_file(file), volume, "origin", errors)
        }
        OriginCache::Direct => {
            let dev = DirectDev::from_file(file).map_err(|e| {
                if e.kind() == std::io::ErrorKind::Unsupported {
                    multisnap_store::direct_dev::direct_refused(&path.display().to_string())
                } else {
                    e
                }
            })?;
            ObservedDev::new(dev, volume, "origin", errors)
        }
    })
}

/// [`origin_device`] failed for a new volume: the caller's choice, not the agent's fault,
/// unless the file could not be used at all.
fn origin_device_err(path: &Path) -> impl FnOnce(std::io::Error) -> VolumeError + '_ {
    move |e| match e.kind() {
        std::io::ErrorKind::Unsupported => VolumeError::FailedPrecondition(e.to_string()),
        std::io::ErrorKind::InvalidInput => {
            VolumeError::InvalidArgument(format!("{}: {e}", path.display()))
        }
        _ => io_err(format!("cannot open the origin {}", path.display()))(e),
    }
}

/// Creating a file of `size` bytes failed: EFBIG means the host filesystem cannot hold a file
/// that large, which is the caller's size, not a fault of the agent.
fn too_large_or<'a>(
    size: u64,
    path: &'a Path,
    what: &'static str,
) -> impl FnOnce(std::io::Error) -> VolumeError + 'a {
    move |source| {
        if source.raw_os_error() == Some(libc::EFBIG) {
            VolumeError::OutOfRange(format!(
                "the file system holding {} cannot hold a {what} file of {size} bytes ({source})",
                path.display()
            ))
        } else {
            VolumeError::Io {
                what: format!("cannot create {what} {}", path.display()),
                source,
            }
        }
    }
}

/// Device and inode: the same file whatever path names it.
fn file_identity(path: &Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let m = std::fs::metadata(path)?;
    if m.file_type().is_block_device() {
        return Ok((u64::MAX, m.rdev()));
    }
    Ok((m.dev(), m.ino()))
}

/// The origin (device, path, path as recorded in the store), the store device and its path.
type MadeFiles = (
    Arc<dyn BlockDev>,
    PathBuf,
    String,
    Arc<ObservedDev>,
    PathBuf,
);

pub struct Volume {
    pub name: String,
    /// Shared with the frontends' views of it (`multisnap_store::VolumeView`).
    pub store: Arc<Store>,
    pub origin_path: PathBuf,
    pub store_path: PathBuf,
    /// The origin file was made by the agent (and goes when the volume is deleted).
    pub owns_origin: bool,
    /// Delta traffic of this volume since the agent started, for metrics.
    pub deltas: DeltaCounters,
    pub labels: Labels,
    /// The volume's snapshot policy, if any (`crate::policy`).
    pub policy: PolicySlot,
    /// The volume's mirror to another agent, if any (`crate::mirror`).
    pub mirror: MirrorSlot,
}

/// Counters of ExportDelta and ApplyDelta calls on one volume.
#[derive(Default)]
pub struct DeltaCounters {
    /// Stream bytes sent by ExportDelta.
    pub exported_bytes: AtomicU64,
    /// Stream bytes received by ApplyDelta.
    pub applied_bytes: AtomicU64,
    /// ApplyDelta calls by how they ended.
    pub applies_complete: AtomicU64,
    pub applies_incomplete: AtomicU64,
    pub applies_failed: AtomicU64,
}

/// Parameters for a new volume.
pub struct NewVolume {
    pub name: String,
    pub size_bytes: u64,
    pub chunk_size: u32,
    /// Defaults to the volume's size plus 1/8 for metadata, as a sparse file.
    pub store_size_bytes: Option<u64>,
    /// An existing file or block device to use as the origin instead of a new sparse file.
    pub origin_path: Option<PathBuf>,
    pub full_policy: FullPolicy,
    /// Whether the origin is opened with `O_DIRECT` (fixed for the volume's life).
    pub origin_cache: OriginCache,
    pub labels: Labels,
}

#[cfg(test)]
impl NewVolume {
    /// A plain volume of `size_bytes` in the data directory, 4 KiB chunks, for tests.
    pub fn for_tests(name: &str, size_bytes: u64) -> NewVolume {
        NewVolume {
            name: name.into(),
            size_bytes,
            chunk_size: 4096,
            store_size_bytes: None,
            origin_path: None,
            full_policy: FullPolicy::Error,
            origin_cache: OriginCache::Buffered,
            labels: Default::default(),
        }
    }
}

/// The largest origin a volume may have: 64 TiB. The store's allocator bitmap is sized at
/// creation for eight times the store and written whole, so a larger volume would make creation
/// write gigabytes of metadata before the first byte of data.
pub const MAX_VOLUME_BYTES: u64 = 64 << 40;
/// The largest store: twice the largest volume (128 TiB).
pub const MAX_STORE_BYTES: u64 = 2 * MAX_VOLUME_BYTES;

pub(crate) fn check_size(field: &str, size: u64, limit: u64) -> Result<(), VolumeError> {
    if size > limit {
        return Err(VolumeError::OutOfRange(format!(
            "{field} {size} is more than the limit of {limit} bytes ({} TiB)",
            limit >> 40
        )));
    }
    Ok(())
}

pub struct Volumes {
    pub(crate) map: RwLock<BTreeMap<String, Arc<Volume>>>,
    /// Snapshot groups over these volumes.
    pub groups: crate::groups::Groups,
    data_dir: DataDir,
    origin_policy: OriginPolicy,
    io_errors: Arc<IoErrors>,
    /// Reopens of failed volumes, for the metrics (see `volume_reopen`).
    reopens: crate::volume_reopen::Reopens,
    cache_bytes: usize,
    /// Origin write journal of volumes made from now on (see `multisnap_store::journal`).
    journal_bytes: u64,
}

/// Removes the files the agent keeps in a volume's folder beside its store and origin: its
/// labels, its snapshot policy and a policy save a crash cut short.
fn remove_files_beside_the_store(dir: &Path) {
    let policy = dir.join(POLICY_FILE);
    let mirror = dir.join(MIRROR_FILE);
    for file in [
        dir.join(LABELS_FILE),
        crate::datadir::temp_path_for(&policy),
        policy,
        crate::datadir::temp_path_for(&mirror),
        mirror,
    ] {
        let _ = std::fs::remove_file(file);
    }
}

/// Removes the folder a volume deletion left when a crash cut it short after the store went
/// (without its store the folder is no volume, and a new volume of the name must be able to
/// take it): the files the agent makes in a volume folder go with it. A folder holding anything
/// else is someone's and is refused.
fn clear_deletion_leftover(dir: &Path) -> Result<(), VolumeError> {
    if !dir.exists() {
        return Ok(());
    }
    let _ = std::fs::remove_file(dir.join(ORIGIN_FILE));
    remove_files_beside_the_store(dir);
    std::fs::remove_dir(dir).map_err(|e| {
        VolumeError::FailedPrecondition(format!(
            "{} holds files the agent did not make ({e}); move them away first",
            dir.display()
        ))
    })
}

fn resolve_origin(dir: &Path, recorded: &str) -> PathBuf {
    let p = Path::new(recorded);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        dir.join(p)
    }
}

/// Whether copy-outs may go through the kernel (`--copy-out`), for every volume opened or
/// made from now on; the store uses them where its devices allow (see
/// `multisnap_store::Store::allow_kernel_copy`).
static KERNEL_COPY: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Set once at start, before the volumes are opened.
pub fn allow_kernel_copy(allowed: bool) {
    KERNEL_COPY.store(allowed, std::sync::atomic::Ordering::Relaxed);
}

fn apply_copy_out(store: &Store) {
    if !KERNEL_COPY.load(std::sync::atomic::Ordering::Relaxed) {
        store.allow_kernel_copy(false);
    }
}

fn open_volume(
    dir: &Path,
    name: &str,
    cache_bytes: usize,
    errors: &Arc<IoErrors>,
) -> anyhow::Result<Volume> {
    let store_path = dir.join(STORE_FILE);
    let dev = Arc::new(ObservedDev::new(
        FileDev::open(&store_path)
            .with_context(|| format!("cannot open store {}", store_path.display()))?,
        name,
        "store",
        errors.clone(),
    ));
    let sb = read_superblock(&*dev).with_context(|| format!("store {}", store_path.display()))?;
    let origin_path = resolve_origin(dir, &sb.origin_path);
    let origin = FileDev::open(&origin_path)
        .and_then(|f| origin_device(f.into_file(), sb.origin_cache, &origin_path, name, errors))
        .with_context(|| {
            format!(
                "cannot open origin {} of volume {name}",
                origin_path.display()
            )
        })?;
    let origin = Arc::new(origin);
    let store = Store::open(origin, dev, cache_bytes)
        .with_context(|| format!("cannot open volume {name} ({})", store_path.display()))?;
    apply_copy_out(&store);
    let owns_origin = !Path::new(store.origin_path()).is_absolute();
    let labels = Labels::read_from(dir).map_err(|e| anyhow::anyhow!("volume {name}: {e}"))?;
    let policy = PolicySlot::load(dir, name, &store.volume_uuid().to_string());
    let mirror = MirrorSlot::load(dir, name, &store.volume_uuid().to_string());
    Ok(Volume {
        name: name.to_string(),
        store: Arc::new(store),
        origin_path,
        store_path,
        owns_origin,
        deltas: DeltaCounters::default(),
        labels,
        policy,
        mirror,
    })
}

impl Volumes {
    /// Journal of a new volume: the configured size, but no more than a quarter of the
    /// origin (a small volume needs no big one).
    fn journal_for(&self, origin_size: u64) -> u64 {
        self.journal_bytes.min(origin_size / 4)
    }

    /// Opens every volume in the data directory.
    pub fn load(
        data_dir: DataDir,
        origin_policy: OriginPolicy,
        cache_bytes: usize,
        journal_bytes: u64,
    ) -> anyhow::Result<Volumes> {
        let mut map = BTreeMap::new();
        let io_errors = Arc::new(IoErrors::default());
        for path in data_dir.remove_unfinished_creations()? {
            tracing::warn!(path = %path.display(), "removed a volume whose creation was interrupted (its CreateVolume never returned)");
        }
        for name in data_dir.volume_names()? {
            let v = open_volume(&data_dir.volume_dir(&name), &name, cache_bytes, &io_errors)?;
            tracing::info!(volume = %name, origin = %v.origin_path.display(), store = %v.store_path.display(), snapshots = v.store.list_snapshots().len(), kernel_copy = v.store.kernel_copy(), "volume opened");
            if !v.owns_origin {
                if let Err(e) = origin_policy.open(&v.origin_path) {
                    // Made before the rule or under other options: served, but the operator
                    // should know that a new volume could not be made on it now.
                    tracing::warn!(volume = %name, reason = %e, "volume's origin is not allowed for new volumes; add it with --allow-origin");
                }
            }
            map.insert(name, Arc::new(v));
        }
        crate::clones::wire_clones(&map);
        let groups = crate::groups::Groups::load(data_dir.groups_dir(), &map)?;
        Ok(Volumes {
            map: RwLock::new(map),
            groups,
            data_dir,
            origin_policy,
            io_errors,
            reopens: Default::default(),
            cache_bytes,
            journal_bytes,
        })
    }

    /// Device errors of every volume, for the metrics.
    pub fn io_errors(&self) -> &Arc<IoErrors> {
        &self.io_errors
    }

    /// Reopens of failed volumes, for the metrics.
    pub fn reopens(&self) -> &crate::volume_reopen::Reopens {
        &self.reopens
    }

    /// The volumes as they are now, for an operation over several of them.
    pub fn current(&self) -> crate::groups::VolumeMap {
        self.map.read().clone()
    }

    pub fn get(&self, name: &str) -> Option<Arc<Volume>> {
        self.map.read().get(name).cloned()
    }

    pub fn list(&self) -> Vec<Arc<Volume>> {
        self.map.read().values().cloned().collect()
    }

    pub fn is_empty(&self) -> bool {
        self.map.read().is_empty()
    }

    /// Makes a new volume: origin (a new sparse file unless given) and store.
    pub fn create(&self, spec: &NewVolume) -> Result<Arc<Volume>, VolumeError> {
        validate_volume_name(&spec.name).map_err(VolumeError::InvalidArgument)?;
        let mut map = self.map.write();
        self.create_locked(&mut map, spec, |origin, dev, opts| {
            Store::create(origin, dev, opts)
        })
    }

    /// [`Volumes::create`] with the volume map held, the store made by `make_store` (a plain
    /// one, or a clone).
    pub(crate) fn create_locked(
        &self,
        map: &mut BTreeMap<String, Arc<Volume>>,
        spec: &NewVolume,
        make_store: impl FnOnce(
            Arc<dyn BlockDev>,
            Arc<dyn BlockDev>,
            &CreateOptions,
        ) -> Result<Store, multisnap_store::StoreError>,
    ) -> Result<Arc<Volume>, VolumeError> {
        if map.contains_key(&spec.name) {
            return Err(VolumeError::AlreadyExists(spec.name.clone()));
        }
        let dir = self.data_dir.volume_dir(&spec.name);
        if dir.join(STORE_FILE).exists() {
            return Err(VolumeError::FailedPrecondition(format!(
                "{} already holds a store that is not loaded; move it away first",
                dir.display()
            )));
        }
        clear_deletion_leftover(&dir)?;
        check_size("size_bytes", spec.size_bytes, MAX_VOLUME_BYTES)?;
        check_size(
            "store_size_bytes",
            spec.store_size_bytes.unwrap_or(0),
            MAX_STORE_BYTES,
        )?;
        // Made under a staging name and renamed once durable: a power cut in between leaves
        // no half-made volume for the next start to trip on (it removes the staging folder).
        let staging = self.data_dir.staging_dir(&spec.name);
        let _ = std::fs::remove_dir_all(&staging);
        crate::permissions::create_private_dir(&staging)
            .map_err(io_err(format!("cannot create {}", staging.display())))?;
        let made = self
            .make_files(spec, &staging)
            .and_then(|made| self.refuse_shared_origin(map, made));
        let (origin, origin_path, recorded, dev, _) = match made {
            Ok(x) => x,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&staging);
                return Err(e);
            }
        };
        let opts = CreateOptions {
            chunk_size: spec.chunk_size,
            volume_name: spec.name.clone(),
            origin_path: recorded,
            full_policy: spec.full_policy,
            origin_cache: spec.origin_cache,
            cache_bytes: self.cache_bytes,
            // Sized once already by make_files; if that fails now, Store::create reports it.
            journal_bytes: self.journal_for(origin.size().unwrap_or(0)),
        };
        let store = match make_store(origin, dev, &opts) {
            Ok(s) => {
                apply_copy_out(&s);
                s
            }
            Err(e) => {
                // Only our own files go; an origin given by the user is never touched.
                let _ = std::fs::remove_dir_all(&staging);
                return Err(VolumeError::Store(e));
            }
        };
        // The call must not return before a power cut would keep the volume: the new files'
        // sizes and the directory entries naming them, then the folder under its name.
        let owns_origin = spec.origin_path.is_none();
        let durable = spec
            .labels
            .write_to(&staging)
            .map_err(io_err(format!(
                "cannot write the labels in {}",
                staging.display()
            )))
            .and_then(|()| self.make_durable(&staging, &origin_path, owns_origin));
        if let Err(e) = durable {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
        if let Err(e) =
            std::fs::rename(&staging, &dir).and_then(|()| sync_dir(&self.data_dir.volumes_dir()))
        {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(io_err(format!(
                "cannot name the new volume {}",
                dir.display()
            ))(e));
        }
        let origin_path = if owns_origin {
            dir.join(ORIGIN_FILE)
        } else {
            origin_path
        };
        let store_path = dir.join(STORE_FILE);
        tracing::info!(volume = %spec.name, size = store.origin_size(), chunk_size = spec.chunk_size, "volume created");
        let v = Arc::new(Volume {
            name: spec.name.clone(),
            store: Arc::new(store),
            origin_path,
            store_path,
            owns_origin,
            deltas: DeltaCounters::default(),
            labels: spec.labels.clone(),
            policy: PolicySlot::empty(Some(dir.clone())),
            mirror: MirrorSlot::empty(Some(dir.clone())),
        });
        map.insert(spec.name.clone(), v.clone());
        Ok(v)
    }

    fn observed(&self, dev: FileDev, volume: &str, file: &'static str) -> ObservedDev {
        ObservedDev::new(dev, volume, file, self.io_errors.clone())
    }

    fn make_files(&self, spec: &NewVolume, dir: &Path) -> Result<MadeFiles, VolumeError> {
        let (origin, origin_path, recorded): (Arc<dyn BlockDev>, PathBuf, String) = match &spec
            .origin_path
        {
            Some(p) => {
                let (file, abs) = self.origin_policy.open(p)?;
                let dev = origin_device(file, spec.origin_cache, &abs, &spec.name, &self.io_errors)
                    .map_err(origin_device_err(&abs))?;
                let size = dev
                    .size()
                    .map_err(io_err(format!("cannot size {}", abs.display())))?;
                if spec.size_bytes != 0 && spec.size_bytes != size {
                    return Err(VolumeError::InvalidArgument(format!(
                        "size_bytes {} does not match origin {} of {size} bytes (give 0 to use its size)",
                        spec.size_bytes,
                        abs.display()
                    )));
                }
                let recorded = abs.to_string_lossy().into_owned();
                (Arc::new(dev), abs, recorded)
            }
            None => {
                if spec.size_bytes == 0 {
                    return Err(VolumeError::InvalidArgument(
                        "size_bytes must be greater than 0 (or give origin_path)".into(),
                    ));
                }
                let p = dir.join(ORIGIN_FILE);
                let file = crate::permissions::create_private_sparse(&p, spec.size_bytes)
                    .map_err(too_large_or(spec.size_bytes, &p, "origin"))?
                    .into_file();
                let dev = origin_device(file, spec.origin_cache, &p, &spec.name, &self.io_errors)
                    .map_err(origin_device_err(&p))?;
                (Arc::new(dev), p, ORIGIN_FILE.to_string())
            }
        };
        let origin_size = origin
            .size()
            .map_err(io_err("cannot size the origin".into()))?;
        check_size("the origin's size", origin_size, MAX_VOLUME_BYTES)?;
        let store_size = spec
            .store_size_bytes
            .unwrap_or(origin_size + origin_size / 8 + (16 << 20) + self.journal_for(origin_size));
        let store_path = dir.join(STORE_FILE);
        let dev = Arc::new(
            self.observed(
                crate::permissions::create_private_sparse(&store_path, store_size)
                    .map_err(too_large_or(store_size, &store_path, "store"))?,
                &spec.name,
                "store",
            ),
        );
        Ok((origin, origin_path, recorded, dev, store_path))
    }

    /// Refuses an origin that is already another volume's origin or store: two volumes over
    /// one file would each overwrite what the other's snapshots preserve.
    fn refuse_shared_origin(
        &self,
        map: &BTreeMap<String, Arc<Volume>>,
        made: MadeFiles,
    ) -> Result<MadeFiles, VolumeError> {
        let Ok(new) = file_identity(&made.1) else {
            return Ok(made);
        };
        for v in map.values() {
            for (path, what) in [(&v.origin_path, "origin"), (&v.store_path, "store")] {
                if file_identity(path).is_ok_and(|id| id == new) {
                    return Err(VolumeError::FailedPrecondition(format!(
                        "{} is already the {what} of volume {}",
                        made.1.display(),
                        v.name
                    )));
                }
            }
        }
        Ok(made)
    }

    /// Syncs what `create` made: the origin file it made (its size), the volume folder (its
    /// files' entries) and `volumes/` (the folder's entry). The store syncs itself.
    fn make_durable(
        &self,
        dir: &Path,
        origin_path: &Path,
        made_origin: bool,
    ) -> Result<(), VolumeError> {
        let synced = (|| {
            if made_origin {
                std::fs::File::open(origin_path)?.sync_all()?;
            }
            sync_dir(dir)?;
            sync_dir(&self.data_dir.volumes_dir())
        })();
        synced.map_err(io_err(format!(
            "cannot sync the new volume in {}",
            dir.display()
        )))
    }

    /// Removes a volume: its store, and its origin if the agent made it. Refused while it has
    /// snapshots unless `force` (ones already deleted and only being reclaimed do not count).
    pub fn delete(&self, name: &str, force: bool) -> Result<(), VolumeError> {
        let _no_group_changes = self.groups.hold_off_changes();
        let mut map = self.map.write();
        let v = map
            .get(name)
            .cloned()
            .ok_or_else(|| VolumeError::NotFound(name.to_string()))?;
        crate::clones::refuse_deleting_a_source(&v)?;
        let groups = self.groups.groups_of(name);
        if !groups.is_empty() {
            let names: Vec<&str> = groups.iter().map(|g| g.as_str()).collect();
            return Err(VolumeError::FailedPrecondition(format!(
                "volume {name} holds members of snapshot group(s) {}; delete the group(s) first",
                names.join(", ")
            )));
        }
        // Snapshots already deleted and only waiting for their space to be reclaimed do not
        // count: the user deleted them, and their space goes with the volume.
        let snaps = v
            .store
            .list_snapshots()
            .iter()
            .filter(|s| s.state != multisnap_store::SnapshotState::Deleting)
            .count();
        if snaps > 0 && !force {
            return Err(VolumeError::FailedPrecondition(format!(
                "volume {name} has {snaps} snapshot(s); delete them first or pass force"
            )));
        }
        // The policy goes first, so its thread writes nothing more into the folder.
        v.policy.retire().map_err(io_err(format!(
            "cannot remove the snapshot policy of {name}"
        )))?;
        v.mirror
            .retire()
            .map_err(io_err(format!("cannot remove the mirror of {name}")))?;
        map.remove(name);
        crate::clones::forget_clone(&map, &v);
        // Clients still connected get an error from now on, rather than acknowledgements for
        // writes into files that are about to go.
        multisnap_store::VolumeView::close_all(&v.store, format!("volume {name} was deleted"));
        let dir = self.data_dir.volume_dir(name);
        // Remove the store first: without it the folder is no longer a volume.
        std::fs::remove_file(&v.store_path)
            .map_err(io_err(format!("cannot remove {}", v.store_path.display())))?;
        if v.owns_origin {
            let _ = std::fs::remove_file(&v.origin_path);
        }
        remove_files_beside_the_store(&dir);
        let _ = std::fs::remove_dir(&dir);
        self.io_errors.forget(name);
        // Deleted means deleted after a power cut too: the folder's entry in volumes/ (or, if
        // something kept the folder, the store's entry in it) is synced before the call returns.
        sync_dir(&self.data_dir.volumes_dir())
            .and_then(|()| if dir.exists() { sync_dir(&dir) } else { Ok(()) })
            .map_err(io_err(format!(
                "cannot sync {}",
                self.data_dir.volumes_dir().display()
            )))?;
        tracing::info!(volume = %name, "volume deleted");
        Ok(())
    }

    /// Flushes and commits every volume, leaving each origin complete on its own with an
    /// empty journal (shutdown).
    pub fn flush_all(&self) -> anyhow::Result<()> {
        let mut failed = Vec::new();
        for v in self.list() {
            if let Err(e) = v.store.empty_journal().and_then(|()| v.store.flush()) {
                tracing::error!(volume = %v.name, error = %e, "flush failed");
                failed.push(v.name.clone());
            }
        }
        if !failed.is_empty() {
            anyhow::bail!("flush failed for volume(s): {}", failed.join(", "));
        }
        Ok(())
    }
}

/// A volume over in-memory devices, for the frontends' unit tests: 1 MiB origin, 4 KiB chunks,
/// a store that fills after about 150 copied chunks (full policy `error`).
#[cfg(test)]
pub fn volume_for_tests() -> Arc<Volume> {
    use multisnap_store::MemDev;
    let origin = Arc::new(MemDev::new(1 << 20));
    let dev = Arc::new(MemDev::new(900 * 1024));
    let opts = CreateOptions {
        chunk_size: 4096,
        full_policy: FullPolicy::Error,
        journal_bytes: 0,
        ..Default::default()
    };
    Arc::new(Volume {
        name: "v".to_string(),
        store: Arc::new(Store::create(origin, dev, &opts).unwrap()),
        origin_path: PathBuf::new(),
        store_path: PathBuf::new(),
        owns_origin: false,
        deltas: DeltaCounters::default(),
        labels: Labels::default(),
        policy: PolicySlot::empty(None),
        mirror: MirrorSlot::empty(None),
    })
}

#[cfg(test)]
mod creation_tests {
    use super::*;

    fn load(root: &Path) -> Volumes {
        let dir = crate::datadir::DataDir::open_locked(root).unwrap();
        let policy = crate::origin_policy::OriginPolicy::new(root, &[]).unwrap();
        Volumes::load(dir, policy, 1 << 20, 0).unwrap()
    }

    fn spec(name: &str) -> NewVolume {
        NewVolume {
            name: name.into(),
            size_bytes: 4 << 20,
            chunk_size: 4096,
            store_size_bytes: None,
            origin_path: None,
            full_policy: FullPolicy::Error,
            origin_cache: OriginCache::Buffered,
            labels: Default::default(),
        }
    }

    #[test]
    fn a_creation_cut_short_leaves_nothing_that_stops_the_next_start() {
        let tmp = tempfile::tempdir().unwrap();
        let volumes = load(tmp.path());
        let v = volumes.create(&spec("kept")).unwrap();
        assert_eq!(
            v.origin_path,
            tmp.path().join("volumes/kept").join(ORIGIN_FILE)
        );
        assert!(v.store_path.exists() && v.origin_path.exists());
        drop((v, volumes));
        // What a power cut in the middle of CreateVolume leaves: the new volume's folder under
        // its staging name, with an origin and a store file that has no superblock yet.
        let staging = tmp.path().join("volumes/.creating-cut");
        std::fs::create_dir_all(&staging).unwrap();
        std::fs::File::create(staging.join(ORIGIN_FILE))
            .and_then(|f| f.set_len(4 << 20))
            .unwrap();
        std::fs::File::create(staging.join(STORE_FILE))
            .and_then(|f| f.set_len(8 << 20))
            .unwrap();
        let volumes = load(tmp.path());
        assert!(!staging.exists(), "the unfinished creation is removed");
        let names: Vec<String> = volumes.list().iter().map(|v| v.name.clone()).collect();
        assert_eq!(names, ["kept"]);
        // The name is free: the creation can be asked for again.
        volumes.create(&spec("cut")).unwrap();
        assert!(tmp.path().join("volumes/cut").join(STORE_FILE).exists());
        assert!(!tmp.path().join("volumes/.creating-cut").exists());
    }

    #[test]
    fn labels_given_at_creation_come_back_after_a_restart() {
        let tmp = tempfile::tempdir().unwrap();
        let volumes = load(tmp.path());
        let labels =
            Labels::new([("csi.multisnap.dev/fs-type".to_string(), "xfs".to_string())]).unwrap();
        let v = volumes
            .create(&NewVolume {
                labels: labels.clone(),
                ..spec("labelled")
            })
            .unwrap();
        assert_eq!(v.labels, labels);
        volumes.create(&spec("plain")).unwrap();
        drop((v, volumes));
        let volumes = load(tmp.path());
        assert_eq!(volumes.get("labelled").unwrap().labels, labels);
        assert_eq!(volumes.get("plain").unwrap().labels, Labels::default());
    }

    #[test]
    fn a_deleted_volumes_name_can_be_made_again_even_after_a_cut_deletion() {
        let tmp = tempfile::tempdir().unwrap();
        let volumes = load(tmp.path());
        let labelled = || NewVolume {
            labels: Labels::new([("k".to_string(), "v".to_string())]).unwrap(),
            ..spec("again")
        };
        volumes.create(&labelled()).unwrap();
        volumes.delete("again", false).unwrap();
        assert!(!tmp.path().join("volumes/again").exists(), "nothing left");
        volumes.create(&labelled()).unwrap();
        drop(volumes);
        // A deletion cut after the store went: origin and labels left in the folder.
        std::fs::remove_file(tmp.path().join("volumes/again").join(STORE_FILE)).unwrap();
        // (and a policy save that a crash cut short)
        std::fs::write(tmp.path().join("volumes/again/policy.json.tmp"), "{").unwrap();
        let volumes = load(tmp.path());
        assert!(volumes.get("again").is_none());
        volumes.create(&labelled()).unwrap();
        // A folder with someone else's file is refused, and the file kept.
        let other = tmp.path().join("volumes/theirs");
        std::fs::create_dir_all(&other).unwrap();
        std::fs::write(other.join("notes.txt"), "mine").unwrap();
        let e = volumes.create(&spec("theirs")).err().expect("refused");
        assert!(
            matches!(&e, VolumeError::FailedPrecondition(m) if m.contains("did not make")),
            "{e:?}"
        );
        assert!(other.join("notes.txt").exists());
    }

    #[test]
    fn a_volume_whose_snapshots_are_all_deleted_goes_while_their_space_is_reclaimed() {
        let tmp = tempfile::tempdir().unwrap();
        let volumes = load(tmp.path());
        let v = volumes.create(&spec("v")).unwrap();
        let snap = v.store.create_snapshot("s").unwrap();
        let e = volumes.delete("v", false).expect_err("a snapshot is left");
        assert!(matches!(e, VolumeError::FailedPrecondition(_)), "{e:?}");
        // Deleted, not yet reclaimed (no reclaimer runs here): it does not hold the volume.
        v.store.delete_snapshot(snap.id).unwrap();
        assert_eq!(
            v.store.list_snapshots()[0].state,
            multisnap_store::SnapshotState::Deleting
        );
        volumes.delete("v", false).unwrap();
        assert!(volumes.get("v").is_none());
    }
}

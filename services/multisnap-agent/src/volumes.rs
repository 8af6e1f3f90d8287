//! The volumes an agent serves: each an origin plus its store, opened once and shared by
//! every frontend.

use crate::datadir::{validate_volume_name, DataDir, ORIGIN_FILE, STORE_FILE};
use anyhow::{bail, Context, Result};
use multisnap_store::store::read_superblock;
use multisnap_store::{BlockDev, CreateOptions, FileDev, FullPolicy, Store};
use parking_lot::RwLock;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub struct Volume {
    pub name: String,
    pub store: Store,
    pub origin_path: PathBuf,
    pub store_path: PathBuf,
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
}

pub struct Volumes {
    map: RwLock<BTreeMap<String, Arc<Volume>>>,
    data_dir: DataDir,
    cache_bytes: usize,
}

fn resolve_origin(dir: &Path, recorded: &str) -> PathBuf {
    let p = Path::new(recorded);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        dir.join(p)
    }
}

fn open_volume(dir: &Path, name: &str, cache_bytes: usize) -> Result<Volume> {
    let store_path = dir.join(STORE_FILE);
    let dev = Arc::new(
        FileDev::open(&store_path)
            .with_context(|| format!("cannot open store {}", store_path.display()))?,
    );
    let sb = read_superblock(&*dev).with_context(|| format!("store {}", store_path.display()))?;
    let origin_path = resolve_origin(dir, &sb.origin_path);
    let origin = Arc::new(FileDev::open(&origin_path).with_context(|| {
        format!(
            "cannot open origin {} of volume {name}",
            origin_path.display()
        )
    })?);
    let store = Store::open(origin, dev, cache_bytes)
        .with_context(|| format!("cannot open volume {name} ({})", store_path.display()))?;
    Ok(Volume {
        name: name.to_string(),
        store,
        origin_path,
        store_path,
    })
}

impl Volumes {
    /// Opens every volume in the data directory.
    pub fn load(data_dir: DataDir, cache_bytes: usize) -> Result<Volumes> {
        let mut map = BTreeMap::new();
        for name in data_dir.volume_names()? {
            let v = open_volume(&data_dir.volume_dir(&name), &name, cache_bytes)?;
            tracing::info!(volume = %name, origin = %v.origin_path.display(), store = %v.store_path.display(), snapshots = v.store.list_snapshots().len(), "volume opened");
            map.insert(name, Arc::new(v));
        }
        Ok(Volumes {
            map: RwLock::new(map),
            data_dir,
            cache_bytes,
        })
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
    pub fn create(&self, spec: &NewVolume) -> Result<Arc<Volume>> {
        validate_volume_name(&spec.name).map_err(anyhow::Error::msg)?;
        let mut map = self.map.write();
        if map.contains_key(&spec.name) {
            bail!("volume {} already exists", spec.name);
        }
        let dir = self.data_dir.volume_dir(&spec.name);
        if dir.join(STORE_FILE).exists() {
            bail!("{} already holds a store", dir.display());
        }
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let (origin, origin_path, recorded): (Arc<dyn BlockDev>, PathBuf, String) =
            match &spec.origin_path {
                Some(p) => {
                    let abs = std::fs::canonicalize(p)
                        .with_context(|| format!("origin {} not found", p.display()))?;
                    let dev = FileDev::open(&abs)
                        .with_context(|| format!("cannot open origin {}", abs.display()))?;
                    let recorded = abs.to_string_lossy().into_owned();
                    (Arc::new(dev), abs, recorded)
                }
                None => {
                    if spec.size_bytes == 0 {
                        bail!("volume size must be greater than 0");
                    }
                    let p = dir.join(ORIGIN_FILE);
                    let dev = FileDev::create_sparse(&p, spec.size_bytes)
                        .with_context(|| format!("cannot create origin {}", p.display()))?;
                    (Arc::new(dev), p, ORIGIN_FILE.to_string())
                }
            };
        let origin_size = origin.size().context("cannot size the origin")?;
        let store_size = spec
            .store_size_bytes
            .unwrap_or(origin_size + origin_size / 8 + (16 << 20));
        let store_path = dir.join(STORE_FILE);
        let dev = Arc::new(
            FileDev::create_sparse(&store_path, store_size)
                .with_context(|| format!("cannot create store {}", store_path.display()))?,
        );
        let opts = CreateOptions {
            chunk_size: spec.chunk_size,
            volume_name: spec.name.clone(),
            origin_path: recorded,
            full_policy: spec.full_policy,
            cache_bytes: self.cache_bytes,
        };
        let store = match Store::create(origin, dev, &opts) {
            Ok(s) => s,
            Err(e) => {
                let _ = std::fs::remove_file(&store_path);
                if spec.origin_path.is_none() {
                    let _ = std::fs::remove_file(&origin_path);
                }
                let _ = std::fs::remove_dir(&dir);
                return Err(e).context(format!("cannot create volume {}", spec.name));
            }
        };
        tracing::info!(volume = %spec.name, size = origin_size, chunk_size = spec.chunk_size, "volume created");
        let v = Arc::new(Volume {
            name: spec.name.clone(),
            store,
            origin_path,
            store_path,
        });
        map.insert(spec.name.clone(), v.clone());
        Ok(v)
    }

    /// Flushes and commits every volume (shutdown).
    pub fn flush_all(&self) -> Result<()> {
        let mut failed = Vec::new();
        for v in self.list() {
            if let Err(e) = v.store.flush() {
                tracing::error!(volume = %v.name, error = %e, "flush failed");
                failed.push(v.name.clone());
            }
        }
        if !failed.is_empty() {
            bail!("flush failed for volume(s): {}", failed.join(", "));
        }
        Ok(())
    }
}

//! The data directory: `agent.lock` (held while an agent or an offline tool uses the
//! directory), `nbd.sock`, and one folder per volume under `volumes/`, holding `store.msnap`
//! and, unless the volume was made on an existing file or device, its origin `origin.img`.

use crate::permissions;
use anyhow::{bail, Context, Result};
use std::fs::File;
use std::path::{Path, PathBuf};

pub const STORE_FILE: &str = "store.msnap";
pub const ORIGIN_FILE: &str = "origin.img";

/// A data directory, locked against a second agent for as long as this value lives.
pub struct DataDir {
    root: PathBuf,
    _lock: File,
}

impl DataDir {
    pub fn open_locked(root: &Path) -> Result<DataDir> {
        // Parents are made with the usual modes; the data directory and `volumes/` are the
        // agent's own (see `permissions`).
        if let Some(parent) = root.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        if !root.is_dir() {
            permissions::create_private_dir(root)
                .with_context(|| format!("cannot create data directory {}", root.display()))?;
        }
        let volumes = root.join("volumes");
        if !volumes.is_dir() {
            permissions::create_private_dir(&volumes)
                .with_context(|| format!("cannot create {}", volumes.display()))?;
        }
        let lock_path = root.join("agent.lock");
        let lock = permissions::open_private_file(&lock_path)
            .with_context(|| format!("cannot open lock file {}", lock_path.display()))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => bail!(
                "data directory {} is in use by another multisnap-agent (it holds {}); stop it first \
                 or use its gRPC API",
                root.display(),
                lock_path.display()
            ),
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("cannot lock {}", lock_path.display()))
            }
        }
        Ok(DataDir {
            root: root.to_path_buf(),
            _lock: lock,
        })
    }

    pub fn volumes_dir(&self) -> PathBuf {
        self.root.join("volumes")
    }

    pub fn volume_dir(&self, name: &str) -> PathBuf {
        self.volumes_dir().join(name)
    }

    /// Volume folders that hold a store, by name.
    pub fn volume_names(&self) -> Result<Vec<String>> {
        let mut names = Vec::new();
        let dir = self.volumes_dir();
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))?
        {
            let entry = entry?;
            if entry.path().join(STORE_FILE).exists() {
                if let Some(name) = entry.file_name().to_str() {
                    names.push(name.to_string());
                }
            }
        }
        names.sort();
        Ok(names)
    }
}

/// Makes the entries of directory `dir` durable (fsync of the directory itself): a file just
/// created, renamed or removed in it survives a power cut only once this returns.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Checks a volume name: 1..=63 bytes of `[A-Za-z0-9._-]`, not starting with `.` or `-`.
pub fn validate_volume_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 63 {
        return Err(format!("volume name {name:?} must be 1 to 63 bytes long"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
        || name.starts_with('.')
        || name.starts_with('-')
    {
        return Err(format!(
            "volume name {name:?} may only hold letters, digits, '.', '_' and '-', and must not start with '.' or '-'"
        ));
    }
    Ok(())
}

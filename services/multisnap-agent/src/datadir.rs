//! The data directory: `agent.lock` (held while an agent or an offline tool uses the
//! directory), `nbd.sock`, and one folder per volume under `volumes/`, holding `store.msnap`
//! and, unless the volume was made on an existing file or device, its origin `origin.img`;
//! `groups/` holds the records of snapshot groups.

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

    /// Where snapshot groups keep their records (see `groups`).
    pub fn groups_dir(&self) -> PathBuf {
        self.root.join("groups")
    }

    pub fn volume_dir(&self, name: &str) -> PathBuf {
        self.volumes_dir().join(name)
    }

    /// Where a volume is made before it gets its name: CreateVolume builds the files here and
    /// renames the folder to [`Self::volume_dir`] once they are durable, so a power cut in
    /// between leaves no half-made volume under a volume's name. Volume names never start with
    /// `.`, so this cannot be one.
    pub fn staging_dir(&self, name: &str) -> PathBuf {
        self.volumes_dir().join(format!("{STAGING_PREFIX}{name}"))
    }

    /// Volume folders that hold a store, by name (unfinished creations left out).
    pub fn volume_names(&self) -> Result<Vec<String>> {
        let mut names = Vec::new();
        let dir = self.volumes_dir();
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))?
        {
            let entry = entry?;
            if entry.path().join(STORE_FILE).exists() {
                if let Some(name) = entry.file_name().to_str() {
                    if !name.starts_with('.') {
                        names.push(name.to_string());
                    }
                }
            }
        }
        names.sort();
        Ok(names)
    }

    /// Removes the folders of volume creations that a crash or power cut interrupted (their
    /// CreateVolume never returned), and returns what it removed. They hold only files the
    /// agent made: an origin given by the user lives elsewhere.
    pub fn remove_unfinished_creations(&self) -> Result<Vec<PathBuf>> {
        let dir = self.volumes_dir();
        let mut removed = Vec::new();
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))?
        {
            let path = entry?.path();
            let unfinished = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(STAGING_PREFIX));
            if unfinished {
                std::fs::remove_dir_all(&path)
                    .with_context(|| format!("cannot remove {}", path.display()))?;
                removed.push(path);
            }
        }
        if !removed.is_empty() {
            sync_dir(&dir).with_context(|| format!("cannot sync {}", dir.display()))?;
        }
        Ok(removed)
    }
}

/// Folder name prefix of a volume being made (see [`DataDir::staging_dir`]).
const STAGING_PREFIX: &str = ".creating-";

/// Makes the entries of directory `dir` durable (fsync of the directory itself): a file just
/// created, renamed or removed in it survives a power cut only once this returns.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Where [`replace_file_durably`] writes before it renames: `PATH.tmp`.
pub fn temp_path_for(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".tmp");
    PathBuf::from(s)
}

/// The steps of [`replace_file_durably`], in order; tests stop after any of them to play a
/// crash there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ReplaceStep {
    WroteTemp,
    SyncedTemp,
    Renamed,
    SyncedDir,
}

/// Replaces the file at `path` with `bytes` so that after a power cut it holds the old
/// contents or the new, never a torn or empty file: written whole to [`temp_path_for`],
/// synced, renamed over `path`, and the rename synced. A reader may find a leftover temporary
/// file from a replacement cut short; the file it was to replace is still whole.
pub fn replace_file_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    replace_file_until(path, bytes, ReplaceStep::SyncedDir)
}

/// Removes a file kept by [`replace_file_durably`] (and a temporary file a cut replacement
/// left), and makes the removal durable; a file that is not there is fine.
pub fn remove_replaced_file(path: &Path) -> std::io::Result<()> {
    let _ = std::fs::remove_file(temp_path_for(path));
    match std::fs::remove_file(path) {
        Ok(()) => path.parent().map_or(Ok(()), sync_dir),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// The bytes a JSON file kept by [`replace_file_durably`] is written as: pretty-printed with a
/// final newline, so an operator can read and diff it; [`load_replaced_json`] reads it back.
pub fn json_file_bytes(value: &serde_json::Value) -> std::io::Result<Vec<u8>> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?;
    bytes.push(b'\n');
    Ok(bytes)
}

/// The JSON a file kept by [`replace_file_durably`] holds, `None` if there is none. A leftover
/// temporary file (a replacement cut short) is removed first: the file it was to replace is
/// still whole. The error names the file.
pub fn load_replaced_json(path: &Path) -> Result<Option<serde_json::Value>, String> {
    let temp = temp_path_for(path);
    if temp.exists() {
        std::fs::remove_file(&temp)
            .map_err(|e| format!("cannot remove {}: {e}", temp.display()))?;
    }
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| format!("{} is not JSON: {e}", path.display()))
}

pub(crate) fn replace_file_until(
    path: &Path,
    bytes: &[u8],
    last: ReplaceStep,
) -> std::io::Result<()> {
    use std::io::Write;
    let temp = temp_path_for(path);
    let mut f = permissions::create_private_truncated(&temp)?;
    f.write_all(bytes)?;
    if last == ReplaceStep::WroteTemp {
        return Ok(());
    }
    f.sync_all()?;
    drop(f);
    if last == ReplaceStep::SyncedTemp {
        return Ok(());
    }
    std::fs::rename(&temp, path)?;
    if last == ReplaceStep::Renamed {
        return Ok(());
    }
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => sync_dir(dir),
        _ => sync_dir(Path::new(".")),
    }
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

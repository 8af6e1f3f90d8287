//! File modes of what the agent keeps on disk and of its unix sockets, whatever the umask.
//!
//! Volume data is readable from `origin.img` and `store.msnap` by anyone who can open them, and
//! a unix socket lets in anyone who can write to it, so the agent never leaves a mode to the
//! umask: directories it makes are 0700, files 0600 (asked for at creation and set again
//! afterwards, since a umask can only narrow the mode asked for), sockets `--socket-mode`
//! (0660 by default) with `--socket-group` as their group. With a socket group the data
//! directory is 0710 and of that group, so the group's members can reach the sockets in it by
//! name but cannot list it, and `volumes/` stays 0700.

use crate::listen::{Gid, SocketMode};
use anyhow::{bail, Context, Result};
use std::fs::{File, OpenOptions, Permissions};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

pub const PRIVATE_DIR_MODE: u32 = 0o700;
pub const PRIVATE_FILE_MODE: u32 = 0o600;
/// Search permission for the socket group on the data directory (see the module comment).
const GROUP_SEARCH: u32 = 0o010;

/// Names of the staging directories that sockets are bound in (see [`bind_unix_socket`]).
pub const BIND_DIR_PREFIX: &str = ".multisnap-bind-";

/// Makes directory `path` (its parents must exist) with mode 0700, or sets an existing one to
/// 0700.
pub fn create_private_dir(path: &Path) -> std::io::Result<()> {
    match std::fs::DirBuilder::new()
        .mode(PRIVATE_DIR_MODE)
        .create(path)
    {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && path.is_dir() => {}
        Err(e) => return Err(e),
    }
    std::fs::set_permissions(path, Permissions::from_mode(PRIVATE_DIR_MODE))
}

/// Creates a new file (refusing an existing one) with mode 0600, open for reading and writing.
pub fn create_private_file(path: &Path) -> std::io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(PRIVATE_FILE_MODE)
        .open(path)?;
    file.set_permissions(Permissions::from_mode(PRIVATE_FILE_MODE))?;
    Ok(file)
}

/// Creates a new sparse file of `size` bytes with mode 0600 (a volume's origin or store).
pub fn create_private_sparse(path: &Path, size: u64) -> std::io::Result<multisnap_store::FileDev> {
    let file = create_private_file(path)?;
    file.set_len(size)?;
    Ok(multisnap_store::FileDev::from_file(file))
}

/// Opens `path` for writing with mode 0600, creating it if missing, without truncating it
/// (a lock file). An existing file gets mode 0600 too.
pub fn open_private_file(path: &Path) -> std::io::Result<File> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(PRIVATE_FILE_MODE)
        .open(path)?;
    file.set_permissions(Permissions::from_mode(PRIVATE_FILE_MODE))?;
    Ok(file)
}

/// Opens `path` for writing with mode 0600, created or emptied (a file written whole, such
/// as the temporary copy of a state file).
pub fn create_private_truncated(path: &Path) -> std::io::Result<File> {
    let file = open_private_file(path)?;
    file.set_len(0)?;
    Ok(file)
}

/// Who may connect to the agent's unix sockets.
#[derive(Clone, Copy, Debug)]
pub struct SocketAccess {
    pub mode: SocketMode,
    pub group: Option<Gid>,
}

/// Binds a unix socket at `path` with `access` already applied when it appears there.
///
/// bind(2) makes the socket file with the umask's mode, and a chmod afterwards leaves a moment
/// in which a client could connect through the wider mode (and stay connected). So the socket
/// is bound inside a fresh 0700 staging directory beside `path`, given its group and mode
/// there, and renamed into place: at `path` it never has any other mode. A stale socket at
/// `path` from an earlier run is replaced; anything else there is refused, not deleted.
pub fn bind_unix_socket(path: &Path, access: SocketAccess) -> Result<tokio::net::UnixListener> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            bail!(
                "{} exists and is not a socket; move it away",
                path.display()
            );
        }
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let staging = parent.join(format!("{BIND_DIR_PREFIX}{}", std::process::id()));
    // A leftover of a crashed run that had the same process id.
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::DirBuilder::new()
        .mode(PRIVATE_DIR_MODE)
        .create(&staging)
        .with_context(|| format!("cannot create {}", staging.display()))?;
    let bound = bind_staged(&staging.join("socket"), path, access);
    let _ = std::fs::remove_dir_all(&staging);
    let listener = bound?;
    listener.set_nonblocking(true)?;
    Ok(tokio::net::UnixListener::from_std(listener)?)
}

fn bind_staged(
    staged: &Path,
    path: &Path,
    access: SocketAccess,
) -> Result<std::os::unix::net::UnixListener> {
    let listener = std::os::unix::net::UnixListener::bind(staged)
        .with_context(|| format!("cannot bind a unix socket at {}", staged.display()))?;
    if let Some(group) = access.group {
        give_to_group(staged, group)?;
    }
    std::fs::set_permissions(staged, Permissions::from_mode(access.mode.0))
        .with_context(|| format!("cannot set the mode of {}", staged.display()))?;
    std::fs::rename(staged, path)
        .with_context(|| format!("cannot move the socket into place at {}", path.display()))?;
    Ok(listener)
}

fn give_to_group(path: &Path, group: Gid) -> Result<()> {
    std::os::unix::fs::chown(path, None, Some(group.0)).with_context(|| {
        format!(
            "cannot give {} to group {} (the agent must run as root or be a member of it)",
            path.display(),
            group.0
        )
    })
}

/// The data directory's mode: 0700, or 0710 when a socket group must reach the sockets in it.
pub fn data_dir_mode(group: Option<Gid>) -> u32 {
    PRIVATE_DIR_MODE | if group.is_some() { GROUP_SEARCH } else { 0 }
}

/// Brings an existing data directory to the modes a new one gets, before anything is served:
/// the directory itself to [`data_dir_mode`] (and `group`, when given), `volumes/` and each
/// volume's directory to 0700, the files the agent made (`agent.lock`, `ublk.state`, each
/// volume's `store.msnap` and `origin.img`) to 0600. Each permission taken away is logged at
/// WARN; the directory is the agent's, so whatever else it holds (such as images for origins)
/// is the agent's user's alone from then on. Staging directories a crash left are removed.
pub fn secure_data_dir(root: &Path, group: Option<Gid>) -> Result<()> {
    let mode = data_dir_mode(group);
    for entry in
        std::fs::read_dir(root).with_context(|| format!("cannot list {}", root.display()))?
    {
        let name = entry?.file_name();
        if name.to_string_lossy().starts_with(BIND_DIR_PREFIX) {
            let _ = std::fs::remove_dir_all(root.join(&name));
        }
    }
    if let Some(g) = group {
        give_to_group(root, g)?;
    }
    set_mode(root, mode)?;
    let volumes = root.join("volumes");
    if volumes.is_dir() {
        set_mode(&volumes, PRIVATE_DIR_MODE)?;
        for entry in std::fs::read_dir(&volumes)
            .with_context(|| format!("cannot list {}", volumes.display()))?
        {
            let dir = entry?.path();
            if std::fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()) {
                set_mode(&dir, PRIVATE_DIR_MODE)?;
                for file in [crate::datadir::STORE_FILE, crate::datadir::ORIGIN_FILE] {
                    tighten_regular_file(&dir.join(file))?;
                }
            }
        }
    }
    for file in ["agent.lock", "ublk.state"] {
        tighten_regular_file(&root.join(file))?;
    }
    Ok(())
}

/// Sets `path` to mode 0600 if it is a regular file (never through a symlink).
fn tighten_regular_file(path: &Path) -> Result<()> {
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.is_file()) {
        set_mode(path, PRIVATE_FILE_MODE)?;
    }
    Ok(())
}

/// Sets `path`'s permission bits to `mode`, with a WARN naming what was taken away, if any.
fn set_mode(path: &Path, mode: u32) -> Result<()> {
    let before = std::fs::metadata(path)
        .with_context(|| format!("cannot stat {}", path.display()))?
        .permissions()
        .mode()
        & 0o7777;
    if before == mode {
        return Ok(());
    }
    std::fs::set_permissions(path, Permissions::from_mode(mode))
        .with_context(|| format!("cannot set the mode of {}", path.display()))?;
    if before & !mode != 0 {
        tracing::warn!(
            path = %path.display(),
            was = format!("{before:04o}"),
            now = format!("{mode:04o}"),
            "permissions were wider than the agent keeps them; tightened"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::MetadataExt;

    fn mode_of(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
    }

    #[test]
    fn files_and_dirs_get_private_modes_over_wider_existing_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("d");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, Permissions::from_mode(0o777)).unwrap();
        create_private_dir(&dir).unwrap();
        assert_eq!(mode_of(&dir), 0o700);
        let f = dir.join("f");
        create_private_sparse(&f, 4096).unwrap();
        assert_eq!(mode_of(&f), 0o600);
        assert!(
            create_private_file(&f).is_err(),
            "an existing file is refused"
        );
        let w = dir.join("w");
        std::fs::write(&w, b"old contents").unwrap();
        std::fs::set_permissions(&w, Permissions::from_mode(0o666)).unwrap();
        create_private_truncated(&w)
            .unwrap()
            .write_all(b"new")
            .unwrap();
        assert_eq!(mode_of(&w), 0o600);
        assert_eq!(std::fs::read(&w).unwrap(), b"new");
    }

    #[tokio::test]
    async fn sockets_appear_with_their_mode_and_replace_only_sockets() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("s.sock");
        let access = SocketAccess {
            mode: SocketMode(0o640),
            group: None,
        };
        let first = bind_unix_socket(&path, access).unwrap();
        assert_eq!(mode_of(&path), 0o640);
        drop(first);
        // A stale socket is replaced; the staging directory is gone.
        let _second = bind_unix_socket(&path, access).unwrap();
        tokio::net::UnixStream::connect(&path).await.unwrap();
        let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "{left:?}");
        let file = tmp.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        let err = bind_unix_socket(&file, access).unwrap_err().to_string();
        assert!(err.contains("not a socket"), "{err}");
        assert_eq!(std::fs::read(&file).unwrap(), b"x");
    }

    #[test]
    fn an_open_data_directory_is_tightened() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("data");
        std::fs::create_dir_all(root.join("volumes/v")).unwrap();
        std::fs::create_dir_all(root.join("images")).unwrap();
        std::fs::create_dir_all(root.join(format!("{BIND_DIR_PREFIX}77"))).unwrap();
        std::fs::write(root.join("volumes/v/origin.img"), b"").unwrap();
        std::fs::write(root.join("images/disk.img"), b"").unwrap();
        for (p, m) in [
            ("", 0o755),
            ("volumes", 0o777),
            ("volumes/v", 0o755),
            ("volumes/v/origin.img", 0o644),
            ("images/disk.img", 0o644),
        ] {
            std::fs::set_permissions(root.join(p), Permissions::from_mode(m)).unwrap();
        }
        secure_data_dir(&root, None).unwrap();
        assert_eq!(mode_of(&root), 0o700);
        assert_eq!(mode_of(&root.join("volumes")), 0o700);
        assert_eq!(mode_of(&root.join("volumes/v")), 0o700);
        assert_eq!(mode_of(&root.join("volumes/v/origin.img")), 0o600);
        // Only what the agent made is changed; the directory's mode shields the rest.
        assert_eq!(mode_of(&root.join("images/disk.img")), 0o644);
        assert!(!root.join(format!("{BIND_DIR_PREFIX}77")).exists());
        // With a socket group: search permission for that group, nothing more.
        let gid = std::fs::metadata(&root).unwrap().gid();
        secure_data_dir(&root, Some(Gid(gid))).unwrap();
        assert_eq!(mode_of(&root), 0o710);
    }
}

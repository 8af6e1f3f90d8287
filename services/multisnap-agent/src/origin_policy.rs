//! Which files and block devices a caller may make into a volume's origin.
//!
//! `CreateVolume` with an `origin_path` turns that path into a read-write NBD export, so
//! without a rule anyone who reaches the gRPC API could read and write every file and disk of
//! the node. The rule:
//!
//! - The path must be absolute. It is judged twice: as written (with `.` and `..` taken
//!   lexically), so a caller cannot learn whether paths outside the allowed places exist, and
//!   then with every symlink resolved, so a link inside an allowed place cannot lead out.
//! - Allowed are the data directory and each `--allow-origin` entry: a directory (everything
//!   under it), an exact file or block device, or a glob pattern such as
//!   `/dev/disk/by-id/nvme-*` (the paths it matches now, and what they resolve to).
//! - Never allowed, whatever the entries say: the agent's own files, that is everything under
//!   `DATA_DIR/volumes/` and the files directly in the data directory (lock, sockets, state).
//! - The origin must be a regular file or a block device, and not empty.
//!
//! After opening, the file actually opened is judged again through `/proc/self/fd`, so a
//! path component swapped for a symlink between the check and the open does not get through.

use crate::volumes::VolumeError;
use std::fs::File;
use std::os::unix::fs::FileTypeExt;
use std::path::{Component, Path, PathBuf};

/// One `--allow-origin` entry.
#[derive(Debug)]
enum Allowed {
    /// Everything under this (canonical) directory.
    Tree(PathBuf),
    /// Exactly this (canonical) file or device.
    Exact(PathBuf),
    /// The paths this pattern matches when a volume is created.
    Pattern(glob::Pattern),
}

/// The allowed places, fixed when the agent starts.
#[derive(Debug)]
pub struct OriginPolicy {
    data_dir: PathBuf,
    allowed: Vec<Allowed>,
}

/// `*` and `?` stop at `/`, so `/srv/images/*` does not reach into subdirectories.
const PATH_MATCH: glob::MatchOptions = glob::MatchOptions {
    case_sensitive: true,
    require_literal_separator: true,
    require_literal_leading_dot: false,
};

fn has_glob_syntax(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// `path` with `.` dropped and `..` applied to the components before it, touching nothing on
/// disk. `None` for a relative path.
fn lexical(path: &Path) -> Option<PathBuf> {
    if !path.is_absolute() {
        return None;
    }
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    Some(out)
}

impl OriginPolicy {
    /// The data directory plus `entries` (from `--allow-origin`). A directory or file entry
    /// must exist now; a mistyped one is refused here rather than silently allowing nothing.
    pub fn new(data_dir: &Path, entries: &[String]) -> anyhow::Result<OriginPolicy> {
        use anyhow::Context;
        let data_dir = std::fs::canonicalize(data_dir)
            .with_context(|| format!("cannot resolve data directory {}", data_dir.display()))?;
        let mut allowed = vec![Allowed::Tree(data_dir.clone())];
        for entry in entries {
            if !Path::new(entry).is_absolute() {
                anyhow::bail!("--allow-origin {entry}: must be an absolute path or pattern");
            }
            if has_glob_syntax(entry) {
                let pattern = glob::Pattern::new(entry)
                    .with_context(|| format!("--allow-origin {entry}: not a valid pattern"))?;
                allowed.push(Allowed::Pattern(pattern));
                continue;
            }
            let canonical =
                std::fs::canonicalize(entry).with_context(|| format!("--allow-origin {entry}"))?;
            if canonical.is_dir() {
                allowed.push(Allowed::Tree(canonical));
            } else {
                allowed.push(Allowed::Exact(canonical));
            }
        }
        Ok(OriginPolicy { data_dir, allowed })
    }

    /// What the allowed places are, for logs and messages.
    pub fn describe(&self) -> String {
        let parts: Vec<String> = self
            .allowed
            .iter()
            .map(|a| match a {
                Allowed::Tree(p) => format!("{}/", p.display()),
                Allowed::Exact(p) => p.display().to_string(),
                Allowed::Pattern(p) => p.as_str().to_string(),
            })
            .collect();
        parts.join(", ")
    }

    /// Whether `path` (lexical or canonical) lies in an allowed place. Pattern matches are
    /// taken both as written and resolved, so `/dev/disk/by-id/x-*` allows `/dev/sdb` when a
    /// link it matches points there.
    fn permits(&self, path: &Path) -> bool {
        self.allowed.iter().any(|a| match a {
            Allowed::Tree(root) => path.starts_with(root),
            Allowed::Exact(p) => path == p,
            Allowed::Pattern(pattern) => {
                pattern.matches_path_with(path, PATH_MATCH)
                    || glob::glob_with(pattern.as_str(), PATH_MATCH).is_ok_and(|paths| {
                        paths
                            .flatten()
                            .any(|m| std::fs::canonicalize(m).is_ok_and(|c| c == path))
                    })
            }
        })
    }

    /// The agent's own files: everything under `volumes/` and the files directly in the data
    /// directory.
    fn is_agent_file(&self, canonical: &Path) -> bool {
        canonical.starts_with(self.data_dir.join("volumes"))
            || canonical.parent() == Some(self.data_dir.as_path())
            || canonical == self.data_dir
    }

    fn denied(&self, requested: &Path, why: String) -> VolumeError {
        VolumeError::PermissionDenied(format!(
            "origin_path {}: {why}; allowed are {} (the agent's --allow-origin option), except \
             the agent's own files",
            requested.display(),
            self.describe()
        ))
    }

    /// Judges `requested` and opens it read-write. Returns the open file and its canonical
    /// path.
    pub fn open(&self, requested: &Path) -> Result<(File, PathBuf), VolumeError> {
        let Some(as_written) = lexical(requested) else {
            return Err(VolumeError::InvalidArgument(format!(
                "origin_path {} must be an absolute path",
                requested.display()
            )));
        };
        if !self.permits(&as_written) {
            return Err(self.denied(requested, "outside the allowed places".into()));
        }
        let canonical = std::fs::canonicalize(requested).map_err(|e| {
            VolumeError::InvalidArgument(format!("origin_path {}: {e}", requested.display()))
        })?;
        self.judge_resolved(requested, &canonical)?;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&canonical)
            .map_err(|e| {
                VolumeError::InvalidArgument(format!(
                    "cannot open origin {}: {e}",
                    canonical.display()
                ))
            })?;
        // The path may have changed under us since it was resolved; judge what was opened.
        let opened = std::fs::read_link(format!("/proc/self/fd/{}", fd_of(&file)))
            .unwrap_or_else(|_| canonical.clone());
        if opened != canonical {
            self.judge_resolved(requested, &opened)?;
        }
        check_kind_and_size(&file, &opened)?;
        Ok((file, opened))
    }

    fn judge_resolved(&self, requested: &Path, canonical: &Path) -> Result<(), VolumeError> {
        if self.is_agent_file(canonical) {
            return Err(self.denied(
                requested,
                format!("{} is one of the agent's own files", canonical.display()),
            ));
        }
        if !self.permits(canonical) {
            return Err(self.denied(
                requested,
                format!(
                    "it resolves to {}, outside the allowed places",
                    canonical.display()
                ),
            ));
        }
        Ok(())
    }
}

fn fd_of(file: &File) -> i32 {
    use std::os::fd::AsRawFd;
    file.as_raw_fd()
}

/// An origin is a regular file or a block device with at least one byte.
fn check_kind_and_size(file: &File, path: &Path) -> Result<(), VolumeError> {
    let meta = file
        .metadata()
        .map_err(|e| VolumeError::InvalidArgument(format!("origin {}: {e}", path.display())))?;
    let kind = meta.file_type();
    let size = if kind.is_block_device() {
        use std::io::Seek;
        let mut f = file;
        f.seek(std::io::SeekFrom::End(0)).map_err(|e| {
            VolumeError::InvalidArgument(format!("cannot size origin {}: {e}", path.display()))
        })?
    } else if kind.is_file() {
        meta.len()
    } else {
        let what = if kind.is_char_device() {
            "a character device"
        } else if kind.is_fifo() {
            "a pipe"
        } else if kind.is_socket() {
            "a socket"
        } else {
            "not a file"
        };
        return Err(VolumeError::InvalidArgument(format!(
            "origin {} is {what}; an origin must be a regular file or a block device",
            path.display()
        )));
    };
    if size == 0 {
        return Err(VolumeError::InvalidArgument(format!(
            "origin {} is empty (0 bytes); a volume needs at least one byte",
            path.display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "multisnap-origin-policy-{tag}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::canonicalize(&d).unwrap()
    }

    fn file(path: &Path, len: u64) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::File::create(path).unwrap().set_len(len).unwrap();
    }

    fn code(r: Result<(File, PathBuf), VolumeError>) -> &'static str {
        match r {
            Ok(_) => "ok",
            Err(VolumeError::PermissionDenied(_)) => "denied",
            Err(VolumeError::InvalidArgument(_)) => "invalid",
            Err(_) => "other",
        }
    }

    #[test]
    fn lexical_applies_dot_dot_without_touching_the_disk() {
        assert_eq!(
            lexical(Path::new("/a/b/../../etc/./passwd")),
            Some(PathBuf::from("/etc/passwd"))
        );
        assert_eq!(lexical(Path::new("/../..")), Some(PathBuf::from("/")));
        assert_eq!(lexical(Path::new("rel/x")), None);
    }

    #[test]
    fn only_the_data_directory_by_default_and_never_the_agents_files() {
        let base = tempdir("default");
        let data = base.join("data");
        let outside = base.join("outside.img");
        file(&outside, 4096);
        file(&data.join("images/disk.img"), 4096);
        file(&data.join("volumes/v/origin.img"), 4096);
        file(&data.join("agent.lock"), 4096);
        let policy = OriginPolicy::new(&data, &[]).unwrap();
        assert_eq!(code(policy.open(&data.join("images/disk.img"))), "ok");
        assert_eq!(code(policy.open(&outside)), "denied");
        assert_eq!(
            code(policy.open(&data.join("volumes/v/origin.img"))),
            "denied"
        );
        assert_eq!(code(policy.open(&data.join("agent.lock"))), "denied");
        // `..` out of the data directory is judged as written, before anything is resolved.
        assert_eq!(
            code(policy.open(&data.join("images/../../outside.img"))),
            "denied"
        );
        // So is a path that does not exist outside: the caller learns nothing about it.
        assert_eq!(code(policy.open(&base.join("missing.img"))), "denied");
        assert_eq!(
            code(policy.open(&data.join("images/missing.img"))),
            "invalid"
        );
        assert_eq!(code(policy.open(Path::new("images/disk.img"))), "invalid");
    }

    #[test]
    fn a_symlink_inside_cannot_lead_outside() {
        let base = tempdir("symlink");
        let data = base.join("data");
        let outside = base.join("secret.img");
        file(&outside, 4096);
        std::fs::create_dir_all(data.join("images")).unwrap();
        std::os::unix::fs::symlink(&outside, data.join("images/link.img")).unwrap();
        std::os::unix::fs::symlink(data.join("volumes"), data.join("images/vols")).unwrap();
        file(&data.join("volumes/v/store.msnap"), 4096);
        let policy = OriginPolicy::new(&data, &[]).unwrap();
        let Err(VolumeError::PermissionDenied(msg)) = policy.open(&data.join("images/link.img"))
        else {
            panic!("a link out of the data directory was allowed");
        };
        assert!(msg.contains("resolves to"), "{msg}");
        assert_eq!(
            code(policy.open(&data.join("images/vols/v/store.msnap"))),
            "denied"
        );
    }

    #[test]
    fn allowed_directories_files_and_patterns() {
        let base = tempdir("allowed");
        let data = base.join("data");
        std::fs::create_dir_all(&data).unwrap();
        file(&base.join("pool/a.img"), 4096);
        file(&base.join("one.img"), 4096);
        file(&base.join("disks/target-1"), 4096);
        file(&base.join("other.img"), 4096);
        std::fs::create_dir_all(base.join("by-id")).unwrap();
        std::os::unix::fs::symlink(base.join("disks/target-1"), base.join("by-id/disk-1")).unwrap();
        let entries = [
            base.join("pool").display().to_string(),
            base.join("one.img").display().to_string(),
            format!("{}/by-id/disk-*", base.display()),
        ];
        let policy = OriginPolicy::new(&data, &entries).unwrap();
        assert_eq!(code(policy.open(&base.join("pool/a.img"))), "ok");
        assert_eq!(code(policy.open(&base.join("one.img"))), "ok");
        assert_eq!(code(policy.open(&base.join("by-id/disk-1"))), "ok");
        // The target of a matching link is allowed by its own name too.
        assert_eq!(code(policy.open(&base.join("disks/target-1"))), "ok");
        assert_eq!(code(policy.open(&base.join("other.img"))), "denied");
        assert!(OriginPolicy::new(&data, &["relative/dir".into()]).is_err());
        assert!(OriginPolicy::new(&data, &[base.join("nope").display().to_string()]).is_err());
    }

    #[test]
    fn only_non_empty_regular_files_and_block_devices() {
        let base = tempdir("kinds");
        file(&base.join("empty.img"), 0);
        let policy = OriginPolicy::new(&base, &["/dev/null".into()]).unwrap();
        let Err(VolumeError::InvalidArgument(msg)) = policy.open(Path::new("/dev/null")) else {
            panic!("/dev/null was accepted");
        };
        assert!(msg.contains("character device"), "{msg}");
        std::fs::create_dir_all(base.join("sub")).unwrap();
        file(&base.join("sub/empty.img"), 0);
        let Err(VolumeError::InvalidArgument(msg)) = policy.open(&base.join("sub/empty.img"))
        else {
            panic!("an empty origin was accepted");
        };
        assert!(msg.contains("empty"), "{msg}");
    }
}

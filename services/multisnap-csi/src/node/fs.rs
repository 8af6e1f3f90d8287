//! Filesystems on a staged device: found with blkid, made on first use, grown after an
//! expansion, and measured for NodeGetVolumeStats.

use super::device::run_blocking;
use crate::capability::FsType;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The filesystem already on `device`, if any ("" when blkid finds none).
pub async fn existing(device: &Path) -> Result<Option<String>, String> {
    let dev = device.to_path_buf();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("blkid")
            .args(["-p", "-s", "TYPE", "-o", "value"])
            .arg(&dev)
            .output()
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| format!("blkid: {e}"))?;
    // blkid exits 2 when it finds nothing to report: a blank device.
    match out.status.code() {
        Some(0) => {
            let t = String::from_utf8_lossy(&out.stdout).trim().to_string();
            Ok((!t.is_empty()).then_some(t))
        }
        Some(2) => Ok(None),
        _ => Err(format!(
            "blkid {}: {}",
            device.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    }
}

pub async fn make(device: &Path, fs: FsType) -> Result<(), String> {
    let dev: PathBuf = device.to_path_buf();
    run_blocking(move || {
        let mut cmd = match fs {
            FsType::Ext4 => {
                let mut c = Command::new("mkfs.ext4");
                // No lazy init: the new filesystem's metadata is written now, not by a kernel
                // thread while the first pod runs.
                c.args(["-F", "-q", "-E", "lazy_itable_init=0,lazy_journal_init=0"]);
                c
            }
            FsType::Xfs => {
                let mut c = Command::new("mkfs.xfs");
                c.arg("-q");
                c
            }
        };
        cmd.arg(&dev);
        cmd
    })
    .await
    .map(|_| ())
}

/// Grows the filesystem mounted at `mount_point` from `device` to the device's size.
pub async fn grow(fs_type: &str, device: &Path, mount_point: &Path) -> Result<(), String> {
    let (dev, mp, fs) = (
        device.to_path_buf(),
        mount_point.to_path_buf(),
        fs_type.to_string(),
    );
    run_blocking(move || {
        let mut cmd;
        if fs == "xfs" {
            cmd = Command::new("xfs_growfs");
            cmd.arg(&mp);
        } else {
            cmd = Command::new("resize2fs");
            cmd.arg(&dev);
        }
        cmd
    })
    .await
    .map(|_| ())
}

/// (bytes total, bytes available, bytes used, inodes total, inodes free, inodes used).
pub fn usage(path: &Path) -> std::io::Result<[u64; 6]> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|_| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "path has a NUL byte")
    })?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: c is a valid NUL-terminated path; st is filled by statvfs before it is read.
    if unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0.
    let st = unsafe { st.assume_init() };
    let f: u64 = st.f_frsize;
    let (blocks, bfree, bavail): (u64, u64, u64) = (st.f_blocks, st.f_bfree, st.f_bavail);
    let (files, ffree): (u64, u64) = (st.f_files, st.f_ffree);
    Ok([
        blocks * f,
        bavail * f,
        (blocks - bfree) * f,
        files,
        ffree,
        files.saturating_sub(ffree),
    ])
}

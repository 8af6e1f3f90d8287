//! A real filesystem (ext4, xfs) made for one test on a loop device over a sparse file, for
//! scenarios that need what only a real filesystem does: run out of space, share extents.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A filesystem made on a loop device and mounted at `mnt`; unmounted and detached when
/// dropped.
pub struct LoopFs {
    pub mnt: PathBuf,
    pub dev: String,
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mnt).status();
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
    }
}

/// Runs `cmd`: its trimmed stdout, or what it said on failure.
pub fn sh(cmd: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| format!("{cmd}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A `fstype` filesystem of `mib` MiB (its image in `dir`), mounted under `dir`; `None` (after
/// saying why) where this machine cannot make one: not root, or no loop driver.
pub fn loop_fs(dir: &Path, fstype: &str, mib: u64) -> Option<LoopFs> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP: making a loop-device filesystem needs root");
        return None;
    }
    let image = dir.join(format!("{fstype}.img"));
    std::fs::File::create(&image)
        .unwrap()
        .set_len(mib << 20)
        .unwrap();
    let dev = match sh(
        "losetup",
        &["--find", "--show", &image.display().to_string()],
    ) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("SKIP: no loop device here ({e})");
            return None;
        }
    };
    let mnt = dir.join(format!("{fstype}-mnt"));
    std::fs::create_dir_all(&mnt).unwrap();
    let fs = LoopFs {
        mnt: mnt.clone(),
        dev: dev.clone(),
    };
    let mkfs = format!("mkfs.{fstype}");
    let quiet: &[&str] = if fstype == "xfs" {
        &["-q", "-f"]
    } else {
        &["-q", "-F"]
    };
    sh(&mkfs, &[quiet, &[dev.as_str()]].concat()).unwrap();
    sh("mount", &[&dev, &mnt.display().to_string()]).unwrap();
    Some(fs)
}

//! Mounts, read from /proc/self/mountinfo and made with mount(2): every Node call decides what
//! is left to do from what is mounted, so a call repeated after a crash or a retry finishes
//! the job or finds it done.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// One line of /proc/self/mountinfo, the fields this driver reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountInfo {
    /// The device of the mounted filesystem (`major:minor`).
    pub dev: (u32, u32),
    pub mount_point: PathBuf,
    pub fs_type: String,
    pub source: String,
}

/// mountinfo escapes space, tab, newline and backslash in paths as `\ooo` octal.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            let oct = std::str::from_utf8(&b[i + 1..i + 4]).ok();
            if let Some(v) = oct.and_then(|o| u8::from_str_radix(o, 8).ok()) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses mountinfo text; lines it cannot read are skipped.
pub fn parse(text: &str) -> Vec<MountInfo> {
    text.lines()
        .filter_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            let f: Vec<&str> = before.split(' ').collect();
            let (major, minor) = f.get(2)?.split_once(':')?;
            let mut a = after.split(' ');
            Some(MountInfo {
                dev: (major.parse().ok()?, minor.parse().ok()?),
                mount_point: PathBuf::from(unescape(f.get(4)?)),
                fs_type: a.next()?.to_string(),
                source: unescape(a.next()?),
            })
        })
        .collect()
}

pub fn current() -> io::Result<Vec<MountInfo>> {
    Ok(parse(&std::fs::read_to_string("/proc/self/mountinfo")?))
}

/// The topmost mount at `path`, if `path` is a mount point.
pub fn at(path: &Path) -> io::Result<Option<MountInfo>> {
    Ok(current()?.into_iter().rev().find(|m| m.mount_point == path))
}

fn cstr(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path has a NUL byte"))
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Mounts the filesystem on `device` at `target`.
pub fn mount_fs(
    device: &Path,
    target: &Path,
    fs_type: &str,
    read_only: bool,
    options: &str,
) -> io::Result<()> {
    let (src, dst, fs, data) = (
        cstr(device)?,
        cstr(target)?,
        CString::new(fs_type)?,
        CString::new(options)?,
    );
    let flags = if read_only { libc::MS_RDONLY } else { 0 };
    // SAFETY: every pointer is a valid NUL-terminated string that outlives the call.
    check(unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            fs.as_ptr(),
            flags,
            data.as_ptr().cast(),
        )
    })
}

/// Bind-mounts `source` (a directory or a device node) at `target`, read-only if asked.
pub fn bind(source: &Path, target: &Path, read_only: bool) -> io::Result<()> {
    let (src, dst) = (cstr(source)?, cstr(target)?);
    // SAFETY: valid NUL-terminated strings; null fs type and data are allowed for MS_BIND.
    check(unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    })?;
    if read_only {
        // A bind mount takes MS_RDONLY only on a remount.
        let flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY;
        // SAFETY: as above.
        let rc = unsafe {
            libc::mount(
                std::ptr::null(),
                dst.as_ptr(),
                std::ptr::null(),
                flags,
                std::ptr::null(),
            )
        };
        if let Err(e) = check(rc) {
            let _ = unmount(target);
            return Err(e);
        }
    }
    Ok(())
}

pub fn unmount(target: &Path) -> io::Result<()> {
    let dst = cstr(target)?;
    // SAFETY: a valid NUL-terminated string.
    check(unsafe { libc::umount2(dst.as_ptr(), 0) })
}

/// Unmounts every mount stacked at `target` (a repeated publish may have stacked several).
pub fn unmount_all(target: &Path) -> io::Result<()> {
    while at(target)?.is_some() {
        unmount(target)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
40 22 43:0 / /var/lib/kubelet/plugins/staging\\040dir rw,relatime shared:5 - ext4 /dev/nbd0 rw
41 22 0:5 /nbd1 /var/lib/kubelet/pods/x/volumes/target rw,nosuid - devtmpfs udev rw,size=1k
bad line
";

    #[test]
    fn parses_mountinfo_with_escapes() {
        let m = parse(SAMPLE);
        assert_eq!(m.len(), 3);
        assert_eq!(m[1].dev, (43, 0));
        assert_eq!(
            m[1].mount_point,
            PathBuf::from("/var/lib/kubelet/plugins/staging dir")
        );
        assert_eq!(m[1].source, "/dev/nbd0");
        assert_eq!(m[2].fs_type, "devtmpfs");
    }

    #[test]
    fn this_process_sees_the_proc_mount_it_reads() {
        // /proc, not /: in a chroot whose root is not a mount point (build sandboxes), / is
        // missing from mountinfo, but the proc filesystem this reads must be mounted.
        let proc_mount = at(Path::new("/proc")).unwrap();
        assert!(
            proc_mount.is_some_and(|m| m.fs_type == "proc"),
            "no proc mount at /proc in /proc/self/mountinfo"
        );
        assert_eq!(at(Path::new("/definitely/not/mounted")).unwrap(), None);
    }
}

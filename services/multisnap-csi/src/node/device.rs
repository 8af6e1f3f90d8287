//! A volume's origin as a kernel block device on this node: ublk through the agent's
//! AttachUblk where the kernel has ublk (`/dev/ublk-control`), else the kernel NBD client
//! (`nbd-client`) on the agent's NBD unix socket.

use crate::agent::Agent;
use crate::status::from_agent;
use multisnap_proto::v1 as pb;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use tonic::Status;

const UBLK_CONTROL: &str = "/dev/ublk-control";

/// One NBD device is picked at a time, so two stagings never take the same free device.
static NBD_PICK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Which kernel path a device came from, by its name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    Ublk,
    Nbd,
}

pub fn kind_of(device: &Path) -> Option<Kind> {
    let name = device.file_name()?.to_str()?;
    if name.starts_with("ublkb") {
        Some(Kind::Ublk)
    } else if name.starts_with("nbd") {
        Some(Kind::Nbd)
    } else {
        None
    }
}

/// The block device node of a `major:minor` pair (through sysfs, where the kernel names it).
pub fn device_of(dev: (u32, u32)) -> Option<PathBuf> {
    let uevent =
        std::fs::read_to_string(format!("/sys/dev/block/{}:{}/uevent", dev.0, dev.1)).ok()?;
    uevent
        .lines()
        .find_map(|l| l.strip_prefix("DEVNAME="))
        .map(|n| Path::new("/dev").join(n))
}

/// The `major:minor` of a device node (what a bind mount of it points at).
pub fn rdev_of(node: &Path) -> io::Result<(u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    let rdev = std::fs::metadata(node)?.rdev();
    Ok((libc::major(rdev), libc::minor(rdev)))
}

/// Attaches the origin of agent volume `volume` and returns the device node.
pub async fn attach(agent: &Agent, nbd_socket: &Path, volume: &str) -> Result<PathBuf, Status> {
    if Path::new(UBLK_CONTROL).exists() {
        // A staging that died between the attach and the mount left its device: take it over
        // rather than attach a second one (a volume is staged once per node).
        let attached = agent
            .ublk()
            .list_ublk(pb::ListUblkRequest {})
            .await
            .map_err(|s| from_agent("listing ublk devices", s))?
            .into_inner()
            .devices;
        if let Some(d) = attached
            .iter()
            .find(|d| d.volume == volume && d.snapshot.is_empty())
        {
            return Ok(PathBuf::from(&d.device));
        }
        let dev = agent
            .ublk()
            .attach_ublk(pb::AttachUblkRequest {
                volume: volume.to_string(),
                ..Default::default()
            })
            .await
            .map_err(|s| from_agent(&format!("attaching volume {volume} as a ublk device"), s))?
            .into_inner();
        return Ok(PathBuf::from(dev.device));
    }
    let _pick = NBD_PICK.lock().await;
    let device = free_nbd_device().map_err(|e| {
        Status::failed_precondition(format!(
            "neither ublk ({UBLK_CONTROL}) nor a free NBD device is available on this node: {e} (load the ublk_drv or nbd kernel module)"
        ))
    })?;
    let socket = nbd_socket.to_path_buf();
    let (export, dev) = (volume.to_string(), device.clone());
    run_blocking(move || {
        let mut cmd = Command::new("nbd-client");
        cmd.arg("-N")
            .arg(&export)
            .arg("-u")
            .arg(&socket)
            .arg(&dev)
            .args(["-b", "4096"]);
        cmd
    })
    .await
    .map_err(|e| Status::internal(format!("nbd-client could not attach volume {volume}: {e}")))?;
    Ok(device)
}

/// Detaches a device this driver attached; one already gone is fine.
pub async fn detach(agent: &Agent, device: &Path) -> Result<(), Status> {
    match kind_of(device) {
        Some(Kind::Ublk) => {
            let reply = agent
                .ublk()
                .detach_ublk(pb::DetachUblkRequest {
                    device: device.display().to_string(),
                    ..Default::default()
                })
                .await;
            crate::agent::absent_as_none(reply)
                .map_err(|s| from_agent(&format!("detaching {}", device.display()), s))?;
            Ok(())
        }
        Some(Kind::Nbd) => {
            let dev = device.to_path_buf();
            run_blocking(move || {
                let mut cmd = Command::new("nbd-client");
                cmd.arg("-d").arg(&dev);
                cmd
            })
            .await
            .map(|_| ())
            .map_err(|e| {
                Status::internal(format!(
                    "nbd-client could not detach {}: {e}",
                    device.display()
                ))
            })
        }
        None => Err(Status::internal(format!(
            "{} is not a device this driver attaches (ublk or NBD)",
            device.display()
        ))),
    }
}

/// The first /dev/nbdN without a connection (sysfs shows a `pid` for connected ones).
fn free_nbd_device() -> io::Result<PathBuf> {
    let mut names: Vec<String> = std::fs::read_dir("/sys/block")?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("nbd") && n[3..].bytes().all(|b| b.is_ascii_digit()))
        .collect();
    names.sort_by_key(|n| n[3..].parse::<u32>().unwrap_or(u32::MAX));
    names
        .into_iter()
        .find(|n| !Path::new("/sys/block").join(n).join("pid").exists())
        .map(|n| Path::new("/dev").join(n))
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no NBD device is free"))
}

/// Runs a command to completion off the async threads; Err with its stderr when it fails.
pub async fn run_blocking(
    make: impl FnOnce() -> Command + Send + 'static,
) -> Result<String, String> {
    tokio::task::spawn_blocking(move || {
        let mut cmd = make();
        let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "{cmd:?} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    })
    .await
    .map_err(|e| format!("command task failed: {e}"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_kinds_by_name() {
        assert_eq!(kind_of(Path::new("/dev/ublkb3")), Some(Kind::Ublk));
        assert_eq!(kind_of(Path::new("/dev/nbd12")), Some(Kind::Nbd));
        assert_eq!(kind_of(Path::new("/dev/sda")), None);
    }

    #[test]
    fn device_numbers_of_a_device_node() {
        // /dev/null is character device 1:3 on every Linux.
        assert_eq!(rdev_of(Path::new("/dev/null")).unwrap(), (1, 3));
    }
}

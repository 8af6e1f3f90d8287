//! The ublk devices this agent serves: the `multisnap-ublk` frontend wired to volumes. A
//! device serves a volume's origin (read-write) or one snapshot (read-only unless writable)
//! through the store's `VolumeView`, as the NBD exports do; this file adapts it to ublk.
//!
//! Attached devices are listed in `DIR/ublk.state` (one line each: id, volume, snapshot or
//! `-`, queues, depth). A device left behind by an agent that died is still in the kernel,
//! quiesced with its I/O held (user recovery); the next agent on the directory takes each
//! listed device over at start, so the filesystems on them carry on. SIGTERM removes them all.

use crate::metrics::UblkMetrics;
use crate::volumes::Volumes;
use multisnap_store::{ErrorKind, StoreError, VolumeView};
use multisnap_ublk::{BlockTarget, UblkDevice, UblkError, UblkOptions};
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

pub const STATE_FILE: &str = "ublk.state";

#[derive(Debug, thiserror::Error)]
pub enum UblkDevError {
    #[error(transparent)]
    Frontend(#[from] UblkError),
    #[error("no volume named {0:?}")]
    NoVolume(String),
    #[error("volume {volume} has no snapshot named {snapshot:?}")]
    NoSnapshot { volume: String, snapshot: String },
    #[error("snapshot {volume}@{snapshot} is not readable (state {state})")]
    SnapshotNotReady {
        volume: String,
        snapshot: String,
        state: String,
    },
    #[error("no ublk device {0} is served by this agent")]
    NoDevice(String),
    #[error("{0}")]
    InvalidArgument(String),
}

/// What one device serves, as the API reports it.
#[derive(Clone, Debug)]
pub struct DeviceInfo {
    pub id: u32,
    pub volume: String,
    pub snapshot: Option<String>,
    pub read_only: bool,
    pub size: u64,
    pub queues: u16,
    pub depth: u16,
}

impl DeviceInfo {
    pub fn path(&self) -> String {
        format!("/dev/ublkb{}", self.id)
    }
}

struct Attached {
    device: UblkDevice,
    info: DeviceInfo,
}

pub struct UblkDevices {
    volumes: Arc<Volumes>,
    state_path: PathBuf,
    devices: Mutex<BTreeMap<u32, Attached>>,
    /// Set once the metrics registry exists (before any device is attached or recovered).
    metrics: OnceLock<Arc<UblkMetrics>>,
}

/// A volume's origin or snapshot as a ublk target.
struct ViewTarget(VolumeView);

/// A store error as the errno the kernel gets, by its kind:
///
/// | kind | errno | why |
/// |---|---|---|
/// | ReadOnly | EROFS | what the ublk frontend itself answers for writes to a read-only device, so a snapshot made read-only after attaching looks the same |
/// | NoSpace | ENOSPC | the store, or the host filesystem under it, is full; filesystems report that to their writers instead of treating the disk as failed |
/// | InvalidArgument | EINVAL | a range outside the device (the frontend checks ranges first, so rare) |
/// | NotFound, AlreadyExists, FailedPrecondition, Unavailable, Corrupt, Io | EIO | the device cannot serve the request; logged here, as the kernel only sees the errno |
fn io_error(op: &'static str, offset: u64, e: StoreError) -> io::Error {
    let errno = match e.kind() {
        ErrorKind::ReadOnly => libc::EROFS,
        ErrorKind::NoSpace => libc::ENOSPC,
        ErrorKind::InvalidArgument | ErrorKind::OutOfRange => libc::EINVAL,
        ErrorKind::NotFound
        | ErrorKind::AlreadyExists
        | ErrorKind::FailedPrecondition
        | ErrorKind::Unavailable
        | ErrorKind::Corrupt
        | ErrorKind::Io => {
            tracing::error!(op, offset, error = %e, "ublk request failed in the store");
            libc::EIO
        }
    };
    io::Error::from_raw_os_error(errno)
}

impl BlockTarget for ViewTarget {
    fn size(&self) -> u64 {
        self.0.size()
    }
    fn read_only(&self) -> bool {
        self.0.is_read_only()
    }
    fn read(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.0
            .read(offset, buf)
            .map_err(|e| io_error("read", offset, e))
    }
    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.0
            .write(offset, data)
            .map_err(|e| io_error("write", offset, e))
    }
    /// Coalesced with every other flush of the volume (and the flush of a FUA write is one).
    fn flush(&self) -> io::Result<()> {
        self.0.flush().map_err(|e| io_error("flush", 0, e))
    }
    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.0
            .discard(offset, len)
            .map_err(|e| io_error("discard", offset, e))
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        self.0
            .write_zeroes(offset, len)
            .map_err(|e| io_error("write_zeroes", offset, e))
    }
}

/// One line of the state file: `ID VOLUME SNAPSHOT|- QUEUES DEPTH`.
fn parse_state_line(line: &str) -> Option<(u32, &str, Option<&str>, u16, u16)> {
    let f: Vec<&str> = line.split_whitespace().collect();
    match f.as_slice() {
        [id, vol, snap, q, d] => Some((
            id.parse().ok()?,
            *vol,
            (*snap != "-").then_some(*snap),
            q.parse().ok()?,
            d.parse().ok()?,
        )),
        _ => None,
    }
}

impl UblkDevices {
    pub fn new(volumes: Arc<Volumes>, data_dir: &Path) -> UblkDevices {
        UblkDevices {
            volumes,
            state_path: data_dir.join(STATE_FILE),
            devices: Mutex::new(BTreeMap::new()),
            metrics: OnceLock::new(),
        }
    }

    pub fn set_metrics(&self, metrics: Arc<UblkMetrics>) {
        let _ = self.metrics.set(metrics);
    }

    fn target(
        &self,
        volume: &str,
        snapshot: Option<&str>,
    ) -> Result<Arc<dyn BlockTarget>, UblkDevError> {
        let vol = self
            .volumes
            .get(volume)
            .ok_or_else(|| UblkDevError::NoVolume(volume.to_string()))?;
        let view = match snapshot {
            None => VolumeView::origin(vol.store.clone()),
            Some(s) => {
                let info = vol
                    .store
                    .snapshot_by_name(s)
                    .map_err(|_| UblkDevError::NoSnapshot {
                        volume: volume.to_string(),
                        snapshot: s.to_string(),
                    })?;
                VolumeView::snapshot(vol.store.clone(), &info).ok_or_else(|| {
                    UblkDevError::SnapshotNotReady {
                        volume: volume.to_string(),
                        snapshot: s.to_string(),
                        state: format!("{:?}", info.state).to_lowercase(),
                    }
                })?
            }
        };
        Ok(Arc::new(ViewTarget(view)))
    }

    /// Attaches a new device serving the volume's origin or the named snapshot.
    #[tracing::instrument(skip(self))]
    pub fn attach(
        &self,
        volume: &str,
        snapshot: Option<&str>,
        queues: u16,
        depth: u16,
    ) -> Result<DeviceInfo, UblkDevError> {
        let opts = UblkOptions {
            queues,
            depth,
            ..UblkOptions::default()
        };
        // A malformed request is that whatever the kernel; then the kernel must have ublk.
        opts.validate()?;
        multisnap_ublk::check_available()?;
        let target = self.target(volume, snapshot)?;
        self.start(target, volume, snapshot, &opts)
    }

    fn start(
        &self,
        target: Arc<dyn BlockTarget>,
        volume: &str,
        snapshot: Option<&str>,
        opts: &UblkOptions,
    ) -> Result<DeviceInfo, UblkDevError> {
        let (read_only, size) = (target.read_only(), target.size());
        let observer = self
            .metrics
            .get()
            .map(|m| m.observer(volume, snapshot.is_some()));
        let device = UblkDevice::start(target, opts, observer)?;
        let info = DeviceInfo {
            id: device.id(),
            volume: volume.to_string(),
            snapshot: snapshot.map(str::to_string),
            read_only,
            size,
            queues: opts.queues,
            depth: opts.depth,
        };
        tracing::info!(device = %info.path(), volume, snapshot, read_only, "ublk device attached");
        let mut devices = self.devices.lock();
        devices.insert(
            info.id,
            Attached {
                device,
                info: info.clone(),
            },
        );
        self.save(&devices);
        Ok(info)
    }

    /// Resolves a device given as an id or a /dev/ublkbN path.
    pub fn resolve(&self, id: u32, path: &str) -> Result<u32, UblkDevError> {
        if path.is_empty() {
            return Ok(id);
        }
        path.strip_prefix("/dev/ublkb")
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| {
                UblkDevError::InvalidArgument(format!(
                    "device {path:?} is not of the form /dev/ublkbN"
                ))
            })
    }

    #[tracing::instrument(skip(self))]
    pub fn detach(&self, id: u32, force: bool) -> Result<(), UblkDevError> {
        let mut devices = self.devices.lock();
        let Some(attached) = devices.remove(&id) else {
            return Err(UblkDevError::NoDevice(format!("/dev/ublkb{id}")));
        };
        if !force && attached.device.in_use() {
            devices.insert(id, attached);
            return Err(UblkError::DeviceBusy(id).into());
        }
        self.save(&devices);
        drop(devices);
        attached.device.stop(true)?;
        tracing::info!(device = %attached.info.path(), "ublk device detached");
        Ok(())
    }

    /// The device serving `volume` (any of its images when `snapshot` is `None`, else that
    /// snapshot), if one is attached: deleting what a kernel device serves would fail its I/O.
    pub fn serving(&self, volume: &str, snapshot: Option<&str>) -> Option<String> {
        self.devices
            .lock()
            .values()
            .find(|a| {
                a.info.volume == volume
                    && (snapshot.is_none() || a.info.snapshot.as_deref() == snapshot)
            })
            .map(|a| a.info.path())
    }

    /// The device serving `volume`'s origin (not one of its snapshots), if any.
    pub fn serving_origin(&self, volume: &str) -> Option<String> {
        self.devices
            .lock()
            .values()
            .find(|a| a.info.volume == volume && a.info.snapshot.is_none())
            .map(|a| a.info.path())
    }

    pub fn list(&self) -> Vec<DeviceInfo> {
        self.devices
            .lock()
            .values()
            .map(|a| a.info.clone())
            .collect()
    }

    /// SIGTERM: stops and removes every device.
    pub fn stop_all(&self) {
        let devices = std::mem::take(&mut *self.devices.lock());
        for (id, a) in devices {
            match a.device.stop(true) {
                Ok(()) => tracing::info!(device = %a.info.path(), "ublk device removed"),
                Err(e) => tracing::warn!(dev = id, error = %e, "ublk device not cleanly removed"),
            }
        }
        self.save(&BTreeMap::new());
    }

    /// Takes over the devices a previous agent on this data directory left in the kernel.
    pub fn recover(&self) {
        let Ok(text) = std::fs::read_to_string(&self.state_path) else {
            return;
        };
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let Some((id, vol, snap, queues, depth)) = parse_state_line(line) else {
                tracing::warn!(line, "unreadable line in {STATE_FILE}; ignored");
                continue;
            };
            if !Path::new(&format!("/sys/class/ublk-char/ublkc{id}")).exists() {
                tracing::info!(
                    dev = id,
                    "ublk device from the last run is gone; not recovered"
                );
                continue;
            }
            let opts = UblkOptions {
                queues,
                depth,
                recover_id: Some(id),
                ..UblkOptions::default()
            };
            let r = self
                .target(vol, snap)
                .and_then(|t| self.start(t, vol, snap, &opts));
            match r {
                Ok(info) => {
                    tracing::info!(device = %info.path(), volume = vol, "ublk device recovered")
                }
                Err(e) => tracing::warn!(dev = id, error = %e, "ublk device not recovered"),
            }
        }
        // Whatever was not recovered is forgotten.
        self.save(&self.devices.lock());
    }

    fn save(&self, devices: &BTreeMap<u32, Attached>) {
        let mut text = String::new();
        for a in devices.values() {
            let i = &a.info;
            text.push_str(&format!(
                "{} {} {} {} {}\n",
                i.id,
                i.volume,
                i.snapshot.as_deref().unwrap_or("-"),
                i.queues,
                i.depth
            ));
        }
        // After a power cut the list is the old one or the new one, never a torn or empty file.
        let r = crate::datadir::replace_file_durably(&self.state_path, text.as_bytes());
        if let Err(e) = r {
            tracing::warn!(path = %self.state_path.display(), error = %e, "cannot record ublk devices");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_state_line;

    #[test]
    fn state_lines_parse_and_junk_is_refused() {
        assert_eq!(
            parse_state_line("3 db - 2 128"),
            Some((3, "db", None, 2, 128))
        );
        assert_eq!(
            parse_state_line("0 db nightly-1 1 64"),
            Some((0, "db", Some("nightly-1"), 1, 64))
        );
        for bad in [
            "",
            "3 db -",
            "x db - 1 64",
            "3 db - 1 99999",
            "3 db - 1 64 extra",
        ] {
            assert_eq!(parse_state_line(bad), None, "{bad:?}");
        }
    }
}

#[cfg(test)]
mod kind_tests {
    use super::*;
    use crate::volumes::volume_for_tests;

    fn errno(r: io::Result<()>) -> i32 {
        r.unwrap_err().raw_os_error().unwrap()
    }

    #[test]
    fn a_read_only_snapshot_is_erofs_and_a_full_store_enospc() {
        let volume = volume_for_tests();
        let info = volume.store.create_snapshot("s").unwrap();
        let snap = ViewTarget(VolumeView::snapshot(volume.store.clone(), &info).unwrap());
        assert_eq!(errno(snap.write(0, &[1; 512])), libc::EROFS);
        assert_eq!(errno(snap.write_zeroes(0, 512)), libc::EROFS);
        assert_eq!(errno(snap.discard(0, 512)), libc::EROFS);
        let origin = ViewTarget(VolumeView::origin(volume.store.clone()));
        let full = (0..256u64)
            .find_map(|c| origin.write(c * 4096, &[9; 4096]).err())
            .expect("the store should fill");
        assert_eq!(full.raw_os_error(), Some(libc::ENOSPC));
    }

    #[test]
    fn store_error_kinds_map_to_errnos() {
        let device = |errno| StoreError::Io {
            device: "store",
            offset: 0,
            len: 4096,
            source: io::Error::from_raw_os_error(errno),
        };
        for (err, want) in [
            (device(libc::ENOSPC), libc::ENOSPC),
            (device(libc::EDQUOT), libc::ENOSPC),
            (device(libc::EIO), libc::EIO),
            (
                StoreError::OutOfRange {
                    offset: 0,
                    len: 1,
                    size: 0,
                },
                libc::EINVAL,
            ),
            (StoreError::Poisoned("earlier failure".into()), libc::EIO),
        ] {
            let what = err.to_string();
            assert_eq!(
                io_error("write", 0, err).raw_os_error(),
                Some(want),
                "{what}"
            );
        }
    }
}

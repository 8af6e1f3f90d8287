//! The NBD view of the volumes: export `VOLUME` is the origin (read-write), `VOLUME@SNAPSHOT`
//! a snapshot (read-only, or read-write if the snapshot is writable).
//!
//! Besides `base:allocation`, every export offers `multisnap:changed:BASE` for each live
//! snapshot BASE of its volume: flag 1 marks the chunks that differ between BASE and what the
//! export shows, so any libnbd-based backup tool can pull an increment
//! (`nbdinfo --map=multisnap:changed:BASE nbd://HOST/VOLUME@TARGET`).
//!
//! Reads, writes, WRITE_ZEROES, TRIM and FLUSH are the store's `VolumeView` operations (TRIM
//! is accepted and does nothing, FLUSH is coalesced across the volume's exports and devices);
//! this file only adapts them to NBD and maps store errors to NBD errors.

use crate::volumes::{Volume, Volumes};
use multisnap_nbd::{
    BlockSizes, ContextExtent, Export, ExportInfo, ExportListing, ExportProvider, Extent, Fua,
    NbdError, ZeroMode,
};
use multisnap_store::{ErrorKind, SnapshotId, StoreError, View, VolumeView};
use std::sync::Arc;

pub struct NbdProvider {
    volumes: Arc<Volumes>,
}

impl NbdProvider {
    pub fn new(volumes: Arc<Volumes>) -> NbdProvider {
        NbdProvider { volumes }
    }
}

impl ExportProvider for NbdProvider {
    fn list(&self) -> Result<Vec<ExportListing>, NbdError> {
        let mut out = Vec::new();
        for v in self.volumes.list() {
            out.push(ExportListing {
                name: v.name.clone(),
                description: Some(format!("multisnap volume {} (origin, read-write)", v.name)),
            });
            for s in v.store.list_snapshots() {
                if s.state == multisnap_store::SnapshotState::Ready {
                    out.push(ExportListing {
                        name: format!("{}@{}", v.name, s.name),
                        description: Some(format!(
                            "snapshot {} (id {}) of volume {}",
                            s.name, s.id.0, v.name
                        )),
                    });
                }
            }
        }
        Ok(out)
    }

    fn default_export(&self) -> Option<String> {
        self.volumes.get("default").map(|_| "default".to_string())
    }

    fn open(&self, name: &str) -> Result<Arc<dyn Export>, NbdError> {
        let not_found = || NbdError::ExportNotFound {
            name: name.to_string(),
        };
        let (vol_name, snap_name) = match name.split_once('@') {
            Some((v, s)) => (v, Some(s)),
            None => (name, None),
        };
        let volume = self.volumes.get(vol_name).ok_or_else(not_found)?;
        let store = volume.store.clone();
        let view = match snap_name {
            None => VolumeView::origin(store),
            Some(s) => {
                let info = volume.store.snapshot_by_name(s).map_err(|_| not_found())?;
                VolumeView::snapshot(store, &info).ok_or_else(not_found)?
            }
        };
        Ok(Arc::new(VolumeExport { volume, view }))
    }
}

struct VolumeExport {
    volume: Arc<Volume>,
    /// Read-only or not is fixed when the client connects (NBD cannot change it mid-session).
    view: VolumeView,
}

/// Metadata context naming the chunks changed since a snapshot.
const CHANGED_PREFIX: &str = "multisnap:changed:";

impl VolumeExport {
    /// A store error as the NBD error the client gets, by its kind:
    ///
    /// | kind | NBD error | why |
    /// |---|---|---|
    /// | ReadOnly | EPERM | what the NBD spec names for a write to a read-only export (a snapshot made read-only after this client connected as a writer) |
    /// | NoSpace | ENOSPC | the store, or the host filesystem under it, is full: a client may free space or stop, and must not take it for a failing disk |
    /// | InvalidArgument | EINVAL | a range outside the export (the protocol layer checks ranges first, so rare) |
    /// | OutOfRange | EINVAL | a size a volume cannot take comes only from a resize, never from I/O; if it did, the request asked for something outside what the image can be |
    /// | NotFound, AlreadyExists, FailedPrecondition, Unavailable, Corrupt, Io | EIO | the image cannot serve the request (its snapshot deleted under it, the store stopped after a failure, a device error); NBD has no closer code |
    fn nbd_error(&self, op: &'static str, offset: u64, e: StoreError) -> NbdError {
        match e.kind() {
            ErrorKind::ReadOnly => NbdError::ReadOnly {
                export: self.export_name(),
            },
            ErrorKind::NoSpace => NbdError::NoSpace { op, offset },
            ErrorKind::InvalidArgument | ErrorKind::OutOfRange => NbdError::InvalidRequest {
                reason: format!("{op} at offset {offset}: {e}"),
            },
            ErrorKind::NotFound
            | ErrorKind::AlreadyExists
            | ErrorKind::FailedPrecondition
            | ErrorKind::Unavailable
            | ErrorKind::Corrupt
            | ErrorKind::Io => NbdError::Io {
                op,
                offset,
                source: std::io::Error::other(e.to_string()),
            },
        }
    }

    fn export_name(&self) -> String {
        match self.view.view() {
            View::Origin => self.volume.name.clone(),
            View::Snapshot(SnapshotId(id)) => format!("{}@#{id}", self.volume.name),
        }
    }

    /// Answers a FUA flag with a (coalesced) flush of the volume.
    fn fua(&self, fua: Fua, op: &'static str, offset: u64) -> Result<(), NbdError> {
        if fua.0 {
            self.view
                .flush()
                .map_err(|e| self.nbd_error(op, offset, e))?;
        }
        Ok(())
    }
}

impl Export for VolumeExport {
    fn info(&self) -> ExportInfo {
        let chunk = self.volume.store.chunk_size();
        ExportInfo {
            size: self.view.size(),
            read_only: self.view.is_read_only(),
            // A flush on any connection flushes the whole volume, so it covers the writes
            // every other connection saw completed.
            multi_conn: true,
            block_sizes: BlockSizes {
                min: 1,
                preferred: chunk.min(64 * 1024),
                max: 32 * 1024 * 1024,
            },
            sparse_reads: false,
        }
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), NbdError> {
        self.view
            .read(offset, buf)
            .map_err(|e| self.nbd_error("read", offset, e))
    }

    fn write(&self, offset: u64, data: &[u8], fua: Fua) -> Result<(), NbdError> {
        self.view
            .write(offset, data)
            .map_err(|e| self.nbd_error("write", offset, e))?;
        self.fua(fua, "write", offset)
    }

    fn flush(&self) -> Result<(), NbdError> {
        self.view.flush().map_err(|e| self.nbd_error("flush", 0, e))
    }

    fn trim(&self, offset: u64, len: u64, fua: Fua) -> Result<(), NbdError> {
        self.view
            .discard(offset, len)
            .map_err(|e| self.nbd_error("trim", offset, e))?;
        self.fua(fua, "trim", offset)
    }

    fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        _mode: ZeroMode,
        fua: Fua,
    ) -> Result<(), NbdError> {
        self.view
            .write_zeroes(offset, len)
            .map_err(|e| self.nbd_error("write_zeroes", offset, e))?;
        self.fua(fua, "write_zeroes", offset)
    }

    fn meta_contexts(&self) -> Vec<String> {
        self.volume
            .store
            .list_snapshots()
            .into_iter()
            .filter(|s| s.state == multisnap_store::SnapshotState::Ready)
            .map(|s| format!("{CHANGED_PREFIX}{}", s.name))
            .collect()
    }

    fn context_status(
        &self,
        context: &str,
        offset: u64,
        len: u64,
    ) -> Result<Vec<ContextExtent>, NbdError> {
        let unsupported = || NbdError::Unsupported {
            op: "metadata context",
        };
        let base_name = context
            .strip_prefix(CHANGED_PREFIX)
            .ok_or_else(unsupported)?;
        // The base may have been deleted since the client negotiated it.
        let base = self
            .volume
            .store
            .snapshot_by_name(base_name)
            .map_err(|e| self.nbd_error("block_status", offset, e))?;
        let runs = self
            .volume
            .store
            .changed_extents(base.id, self.view.view(), offset, len)
            .map_err(|e| self.nbd_error("block_status", offset, e))?;
        Ok(runs
            .into_iter()
            .map(|(len, changed)| ContextExtent {
                len,
                flags: u32::from(changed),
            })
            .collect())
    }

    fn block_status(&self, offset: u64, len: u64) -> Result<Vec<Extent>, NbdError> {
        // Holes are the origin file's own holes (SEEK_HOLE) where the view reads the origin;
        // chunks held in the store are data.
        let runs = self
            .volume
            .store
            .allocation(self.view.view(), offset, len)
            .map_err(|e| self.nbd_error("block_status", offset, e))?;
        Ok(runs
            .into_iter()
            .map(|(len, data)| Extent {
                len,
                hole: !data,
                zero: !data,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volumes::volume_for_tests;
    use multisnap_nbd::Errno;

    fn export(volume: &Arc<Volume>, snapshot: Option<&str>) -> VolumeExport {
        let store = volume.store.clone();
        let view = match snapshot {
            None => VolumeView::origin(store),
            Some(s) => {
                VolumeView::snapshot(store, &volume.store.snapshot_by_name(s).unwrap()).unwrap()
            }
        };
        VolumeExport {
            volume: volume.clone(),
            view,
        }
    }

    #[test]
    fn writes_to_a_read_only_snapshot_are_eperm_however_it_became_read_only() {
        let volume = volume_for_tests();
        volume.store.create_snapshot("ro").unwrap();
        let info = volume.store.create_snapshot_with("was-rw", true).unwrap();
        let connected_as_writer = export(&volume, Some("was-rw"));
        volume.store.set_writable(info.id, false).unwrap();
        for (e, why) in [
            (
                export(&volume, Some("ro")),
                "read-only when the client connected",
            ),
            (
                connected_as_writer,
                "made read-only after the client connected",
            ),
        ] {
            for r in [
                e.write(0, &[1; 512], Fua(false)),
                e.write_zeroes(0, 512, ZeroMode::NoHole, Fua(false)),
            ] {
                let err = r.unwrap_err();
                assert!(matches!(err, NbdError::ReadOnly { .. }), "{why}: {err}");
                assert_eq!(err.errno(), Errno::EPERM, "{why}");
            }
        }
        // A trim changes nothing, so only the read-only flag fixed at connect time refuses it.
        let err = export(&volume, Some("ro"))
            .trim(0, 512, Fua(false))
            .unwrap_err();
        assert_eq!(err.errno(), Errno::EPERM);
    }

    #[test]
    fn a_full_store_is_enospc() {
        let volume = volume_for_tests();
        volume.store.create_snapshot("s").unwrap();
        let e = export(&volume, None);
        let err = (0..256u64)
            .find_map(|c| e.write(c * 4096, &[9; 4096], Fua(false)).err())
            .expect("the store should fill");
        assert!(matches!(err, NbdError::NoSpace { .. }), "{err}");
        assert_eq!(err.errno(), Errno::ENOSPC);
    }

    #[test]
    fn store_error_kinds_map_to_nbd_errors() {
        let volume = volume_for_tests();
        let e = export(&volume, None);
        let device = |errno| StoreError::Io {
            device: "origin",
            offset: 0,
            len: 4096,
            source: std::io::Error::from_raw_os_error(errno),
        };
        for (err, want) in [
            (device(libc::ENOSPC), Errno::ENOSPC),
            (device(libc::EIO), Errno::EIO),
            (
                StoreError::OutOfRange {
                    offset: 1 << 20,
                    len: 1,
                    size: 1 << 20,
                },
                Errno::EINVAL,
            ),
            (StoreError::SnapshotNotFound("s".into()), Errno::EIO),
            (StoreError::Poisoned("earlier failure".into()), Errno::EIO),
        ] {
            let what = err.to_string();
            assert_eq!(e.nbd_error("write", 0, err).errno(), want, "{what}");
        }
    }
}

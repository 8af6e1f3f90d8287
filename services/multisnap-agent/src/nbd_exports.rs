//! The NBD view of the volumes: export `VOLUME` is the origin (read-write), `VOLUME@SNAPSHOT`
//! a snapshot (read-only, or read-write if the snapshot is writable).
//!
//! Besides `base:allocation`, every export offers `multisnap:changed:BASE` for each live
//! snapshot BASE of its volume: flag 1 marks the chunks that differ between BASE and what the
//! export shows, so any libnbd-based backup tool can pull an increment
//! (`nbdinfo --map=multisnap:changed:BASE nbd://HOST/VOLUME@TARGET`).
//!
//! TRIM is accepted and does nothing: deallocating origin chunks could drop data a snapshot
//! still reads through the origin, and a trim is only a hint, so the safe answer is to keep
//! everything. WRITE_ZEROES writes zeroes through the normal copy-out path.

use crate::volumes::{Volume, Volumes};
use multisnap_nbd::{
    BlockSizes, ContextExtent, Export, ExportInfo, ExportListing, ExportProvider, Extent, Fua,
    NbdError, ZeroMode,
};
use multisnap_store::{SnapshotId, StoreError, View};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Coalesces the FLUSH (and FUA) requests of one volume's NBD exports.
///
/// A flush must make durable every write that returned before it was called; a flush that
/// *started* after all those writes returned, and has since succeeded, already did. Clients
/// send flushes in bursts (fio's `fsync=N` at queue depth 32 sends about half as many flushes
/// as writes, one per free slot until the first completes), and each store flush is an
/// `fdatasync` of the origin plus, when the index changed, a commit with two store flushes;
/// answering the burst from one flush is what qemu does too (its flush generations).
#[derive(Default)]
pub struct FlushGate {
    /// Writes of any export of the volume that have returned (counted before they are
    /// acknowledged, successful or not: a failed write may have changed some bytes).
    returned: AtomicU64,
    /// `returned` as read just before the latest successful flush started: every write
    /// counted there is durable. Held for the whole flush, so flushes queue behind it and
    /// most of them find their writes already covered.
    ///
    /// A `std` mutex, not `parking_lot`'s: the lock is held for a whole flush (~0.4 ms), and
    /// parking_lot's waiters call `sched_yield` up to seven times before they sleep. With a
    /// burst of flushes on 2 CPUs that was ~one `sched_yield` per write, taking CPU from the
    /// threads doing the writes (`perf record -e syscalls:sys_enter_sched_yield`, docs/
    /// BENCHMARKS.md §5, session 9). `std`'s futex mutex spins briefly without yielding, then
    /// sleeps.
    durable: std::sync::Mutex<u64>,
}

impl FlushGate {
    pub fn wrote(&self) {
        self.returned.fetch_add(1, Ordering::SeqCst);
    }

    pub fn flush<E>(&self, flush: impl FnOnce() -> Result<(), E>) -> Result<(), E> {
        let needed = self.returned.load(Ordering::SeqCst);
        // Poisoned only if a flush panicked; the count it guards was not changed by it (it is
        // set after a flush succeeds), so it is still right.
        let mut durable = self.durable.lock().unwrap_or_else(|e| e.into_inner());
        if *durable >= needed {
            return Ok(());
        }
        let covered = self.returned.load(Ordering::SeqCst);
        flush()?;
        *durable = covered;
        Ok(())
    }
}

pub struct NbdProvider {
    volumes: Arc<Volumes>,
}

impl NbdProvider {
    pub fn new(volumes: Arc<Volumes>) -> NbdProvider {
        NbdProvider { volumes }
    }
}

fn store_err(op: &'static str, offset: u64, e: StoreError) -> NbdError {
    match e {
        StoreError::StoreFull { .. } => NbdError::NoSpace { op, offset },
        // Made read-only after this client connected as a writer.
        StoreError::SnapshotReadOnly(id) => NbdError::ReadOnly {
            export: format!("snapshot id {}", id.0),
        },
        StoreError::OutOfRange { offset, len, size } => NbdError::OutOfRange {
            op,
            offset,
            len,
            size,
        },
        other => NbdError::Io {
            op,
            offset,
            source: std::io::Error::other(other.to_string()),
        },
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
        match snap_name {
            None => Ok(Arc::new(VolumeExport {
                volume,
                view: View::Origin,
                writable: true,
            })),
            Some(s) => {
                let info = volume.store.snapshot_by_name(s).map_err(|_| not_found())?;
                if info.state != multisnap_store::SnapshotState::Ready {
                    return Err(not_found());
                }
                Ok(Arc::new(VolumeExport {
                    volume,
                    view: View::Snapshot(info.id),
                    writable: info.writable,
                }))
            }
        }
    }
}

struct VolumeExport {
    volume: Arc<Volume>,
    view: View,
    /// Fixed when the client connects (NBD cannot change it mid-session).
    writable: bool,
}

const ZERO_PIECE: usize = 1 << 20;
/// Metadata context naming the chunks changed since a snapshot.
const CHANGED_PREFIX: &str = "multisnap:changed:";

impl VolumeExport {
    fn check_writable(&self) -> Result<(), NbdError> {
        if self.writable {
            Ok(())
        } else {
            Err(NbdError::ReadOnly {
                export: self.export_name(),
            })
        }
    }

    fn write_at(&self, op: &'static str, offset: u64, data: &[u8]) -> Result<(), NbdError> {
        let r = match self.view {
            View::Origin => self.volume.store.write_origin(offset, data),
            View::Snapshot(id) => self.volume.store.write_snapshot(id, offset, data),
        };
        self.volume.nbd_flush.wrote();
        r.map_err(|e| store_err(op, offset, e))
    }

    fn export_name(&self) -> String {
        match self.view {
            View::Origin => self.volume.name.clone(),
            View::Snapshot(SnapshotId(id)) => format!("{}@#{id}", self.volume.name),
        }
    }

    fn fua(&self, fua: Fua, op: &'static str, offset: u64) -> Result<(), NbdError> {
        if fua.0 {
            self.volume
                .nbd_flush
                .flush(|| self.volume.store.flush())
                .map_err(|e| store_err(op, offset, e))?;
        }
        Ok(())
    }
}

impl Export for VolumeExport {
    fn info(&self) -> ExportInfo {
        let chunk = self.volume.store.chunk_size();
        ExportInfo {
            size: self.volume.store.origin_size(),
            read_only: !self.writable,
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
        self.volume
            .store
            .read(self.view, offset, buf)
            .map_err(|e| store_err("read", offset, e))
    }

    fn write(&self, offset: u64, data: &[u8], fua: Fua) -> Result<(), NbdError> {
        self.check_writable()?;
        self.write_at("write", offset, data)?;
        self.fua(fua, "write", offset)
    }

    fn flush(&self) -> Result<(), NbdError> {
        self.volume
            .nbd_flush
            .flush(|| self.volume.store.flush())
            .map_err(|e| store_err("flush", 0, e))
    }

    fn trim(&self, offset: u64, _len: u64, fua: Fua) -> Result<(), NbdError> {
        self.check_writable()?;
        self.fua(fua, "trim", offset)
    }

    fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        _mode: ZeroMode,
        fua: Fua,
    ) -> Result<(), NbdError> {
        self.check_writable()?;
        let zeroes = vec![0u8; ZERO_PIECE.min(len as usize)];
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(ZERO_PIECE as u64) as usize;
            self.write_at("write_zeroes", offset + done, &zeroes[..n])?;
            done += n as u64;
        }
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
            .map_err(|e| store_err("block_status", offset, e))?;
        let runs = self
            .volume
            .store
            .changed_extents(base.id, self.view, offset, len)
            .map_err(|e| store_err("block_status", offset, e))?;
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
            .allocation(self.view, offset, len)
            .map_err(|e| store_err("block_status", offset, e))?;
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
    use super::FlushGate;
    use std::cell::Cell;

    #[test]
    fn flush_gate_flushes_only_when_a_write_returned_since_the_last_flush_started() {
        let gate = FlushGate::default();
        let flushes = Cell::new(0);
        let flush = || -> Result<(), ()> {
            flushes.set(flushes.get() + 1);
            Ok(())
        };
        gate.flush(flush).unwrap();
        assert_eq!(flushes.get(), 0, "nothing written yet");
        gate.wrote();
        gate.flush(flush).unwrap();
        gate.flush(flush).unwrap();
        assert_eq!(flushes.get(), 1, "the second flush is covered by the first");
        gate.wrote();
        gate.flush(flush).unwrap();
        assert_eq!(flushes.get(), 2);
    }

    #[test]
    fn flush_gate_retries_after_a_failed_flush() {
        let gate = FlushGate::default();
        gate.wrote();
        assert_eq!(gate.flush(|| Err("EIO")), Err("EIO"));
        let flushed = Cell::new(false);
        gate.flush(|| -> Result<(), ()> {
            flushed.set(true);
            Ok(())
        })
        .unwrap();
        assert!(flushed.get(), "a failed flush covers nothing");
    }

    #[test]
    fn flush_gate_does_not_count_a_write_that_returned_during_the_flush() {
        let gate = FlushGate::default();
        gate.wrote();
        // A write returns while the flush runs: the flush may or may not have caught it, so
        // the next flush must not be skipped.
        gate.flush(|| -> Result<(), ()> {
            gate.wrote();
            Ok(())
        })
        .unwrap();
        let flushed = Cell::new(false);
        gate.flush(|| -> Result<(), ()> {
            flushed.set(true);
            Ok(())
        })
        .unwrap();
        assert!(flushed.get());
    }

    /// Threads writing and flushing at once, as NBD workers do: every flush returns only after
    /// a flush that started once its caller's write had returned (the "disk" records, at the
    /// start of each flush, how many writes had returned by then).
    #[test]
    fn flush_gate_covers_each_callers_writes_under_contention() {
        use std::sync::atomic::{AtomicU64, Ordering};
        let gate = FlushGate::default();
        let returned = AtomicU64::new(0);
        let durable = AtomicU64::new(0);
        let flushes = AtomicU64::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..500 {
                        let mine = returned.fetch_add(1, Ordering::SeqCst) + 1;
                        gate.wrote();
                        gate.flush(|| -> Result<(), ()> {
                            let covered = returned.load(Ordering::SeqCst);
                            flushes.fetch_add(1, Ordering::SeqCst);
                            std::thread::yield_now();
                            durable.fetch_max(covered, Ordering::SeqCst);
                            Ok(())
                        })
                        .unwrap();
                        assert!(
                            durable.load(Ordering::SeqCst) >= mine,
                            "a flush returned before write {mine} was durable"
                        );
                    }
                });
            }
        });
        assert!(flushes.load(Ordering::SeqCst) >= 1);
    }
}

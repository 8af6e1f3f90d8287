//! Fault injection for tests (feature `fault-injection`): power cuts, slow and gated devices.
//!
//! A [`PowerRail`] stands for one power supply feeding several [`CrashDev`]s (the origin and
//! the store together), counting their writes. Each device remembers its durable image (as of
//! its last completed flush) and the writes since. When the power is cut — after a chosen
//! number of writes, or on demand — every further operation fails, and
//! [`CrashDev::crash_image`] builds what a disk could hold afterwards: the durable image plus
//! any subset of the unflushed writes, applied in order, some of them torn at 512-byte sector
//! boundaries.
//!
//! [`Delayed`] and [`FlushGate`] wrap any device to make reads or flushes slow, or hold
//! flushes until a test opens the gate. [`Failing`] makes chosen reads, writes or flushes
//! fail with a chosen errno.

mod delay;
mod failing;

pub use delay::{Delayed, FlushGate};
pub use failing::{Failing, Op as FailOp};

use crate::blockdev::BlockDev;
use parking_lot::Mutex;
use rand::Rng;
use std::io;
use std::sync::Arc;

static MIN_CACHE_NODES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Lets node caches opened from now on (in this process) be as small as `n` nodes, below the
/// production floor, so small crash workloads write dirty nodes out mid-transaction. The tree
/// code never relies on a node staying cached; this makes tests prove it.
pub fn set_min_cache_nodes(n: usize) {
    MIN_CACHE_NODES.store(n, std::sync::atomic::Ordering::Relaxed);
}

pub(crate) fn min_cache_nodes() -> Option<usize> {
    match MIN_CACHE_NODES.load(std::sync::atomic::Ordering::Relaxed) {
        0 => None,
        n => Some(n),
    }
}

/// The sector size below which writes are atomic.
pub const SECTOR: usize = 512;

#[derive(Default)]
struct RailState {
    writes: u64,
    cut_after: Option<u64>,
    cut: bool,
}

#[derive(Default)]
pub struct PowerRail {
    state: Mutex<RailState>,
}

impl PowerRail {
    pub fn new() -> Arc<PowerRail> {
        Arc::new(PowerRail::default())
    }
    /// Cuts the power when write number `n` (counting from 1 across all devices on this rail)
    /// is issued; that write itself may or may not reach the disk.
    pub fn cut_at_write(&self, n: u64) {
        self.state.lock().cut_after = Some(n);
    }
    pub fn cut_now(&self) {
        self.state.lock().cut = true;
    }
    pub fn is_cut(&self) -> bool {
        self.state.lock().cut
    }
    /// Writes issued so far.
    pub fn writes(&self) -> u64 {
        self.state.lock().writes
    }

    /// Accounts for one write; `Ok(false)` when this write is the one the cut interrupts.
    fn on_write(&self) -> io::Result<bool> {
        let mut s = self.state.lock();
        if s.cut {
            return Err(power_cut());
        }
        s.writes += 1;
        if s.cut_after == Some(s.writes) {
            s.cut = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn check(&self) -> io::Result<()> {
        if self.state.lock().cut {
            Err(power_cut())
        } else {
            Ok(())
        }
    }
}

fn power_cut() -> io::Error {
    io::Error::other("simulated power cut")
}

/// A change not yet made durable by a flush.
enum Pending {
    Write(u64, Vec<u8>),
    /// The device was extended to this length (a file's `set_len`): lost or kept by a cut like
    /// a write, and the writes into the extension go with it.
    Grow(usize),
}

struct DevState {
    current: Vec<u8>,
    durable: Vec<u8>,
    pending: Vec<Pending>,
}

/// A RAM disk with a volatile write cache that loses what a power cut would.
pub struct CrashDev {
    rail: Arc<PowerRail>,
    state: Mutex<DevState>,
    /// Takes [`BlockDev::copy_from`] (see [`CrashDev::copying`]).
    copies: bool,
}

impl CrashDev {
    pub fn new(rail: Arc<PowerRail>, size: usize) -> CrashDev {
        CrashDev::from_image(rail, vec![0; size])
    }

    /// A device whose durable contents are `image` (e.g. what survived an earlier crash).
    pub fn from_image(rail: Arc<PowerRail>, image: Vec<u8>) -> CrashDev {
        CrashDev {
            rail,
            state: Mutex::new(DevState {
                durable: image.clone(),
                current: image,
                pending: Vec::new(),
            }),
            copies: false,
        }
    }

    /// This device, taking [`BlockDev::copy_from`] from any other. A copy is one write on the
    /// rail into the volatile cache, lost, kept or torn by a cut like any other unflushed
    /// write: what `copy_file_range` into a file is until its `fdatasync` (a shared extent
    /// that never reached the disk is not there after the cut).
    pub fn copying(mut self) -> Self {
        self.copies = true;
        self
    }

    /// Number of writes not yet made durable by a flush.
    pub fn unflushed_writes(&self) -> usize {
        self.state.lock().pending.len()
    }

    /// What the device could hold after a power cut now: the durable image plus each unflushed
    /// write with probability `keep`, in issue order, a fraction `tear` of those cut down to a
    /// random subset of their sectors.
    pub fn crash_image(&self, rng: &mut impl Rng, keep: f64, tear: f64) -> Vec<u8> {
        let s = self.state.lock();
        let mut image = s.durable.clone();
        for change in &s.pending {
            if !rng.gen_bool(keep) {
                continue;
            }
            let (off, data) = match change {
                Pending::Write(off, data) => (*off as usize, data),
                Pending::Grow(len) => {
                    image.resize(image.len().max(*len), 0);
                    continue;
                }
            };
            if off + data.len() > image.len() {
                // Into an extension the cut lost.
                continue;
            }
            if data.len() > SECTOR && rng.gen_bool(tear) {
                for (i, sector) in data.chunks(SECTOR).enumerate() {
                    if rng.gen_bool(0.5) {
                        let at = off + i * SECTOR;
                        image[at..at + sector.len()].copy_from_slice(sector);
                    }
                }
            } else {
                image[off..off + data.len()].copy_from_slice(data);
            }
        }
        image
    }

    /// The image as of the last flush (every unflushed write lost).
    pub fn durable_image(&self) -> Vec<u8> {
        self.state.lock().durable.clone()
    }

    /// The image with every write applied (nothing lost).
    pub fn current_image(&self) -> Vec<u8> {
        self.state.lock().current.clone()
    }
}

fn bounds(len: usize, offset: u64, size: usize) -> io::Result<usize> {
    let start = usize::try_from(offset).map_err(|_| io::Error::other("offset overflow"))?;
    match start.checked_add(len) {
        Some(end) if end <= size => Ok(start),
        _ => Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "access past end of device",
        )),
    }
}

impl BlockDev for CrashDev {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.rail.check()?;
        let s = self.state.lock();
        let start = bounds(buf.len(), offset, s.current.len())?;
        buf.copy_from_slice(&s.current[start..start + buf.len()]);
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut s = self.state.lock();
        let start = bounds(buf.len(), offset, s.current.len())?;
        let completes = self.rail.on_write()?;
        // The interrupted write may still reach the disk, whole or torn: keep it as pending.
        s.pending.push(Pending::Write(offset, buf.to_vec()));
        if !completes {
            return Err(power_cut());
        }
        s.current[start..start + buf.len()].copy_from_slice(buf);
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        self.rail.check()?;
        let mut s = self.state.lock();
        let pending = std::mem::take(&mut s.pending);
        for change in pending {
            match change {
                Pending::Write(off, data) => {
                    let off = off as usize;
                    s.durable[off..off + data.len()].copy_from_slice(&data);
                }
                Pending::Grow(len) => {
                    let len = len.max(s.durable.len());
                    s.durable.resize(len, 0);
                }
            }
        }
        Ok(())
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.state.lock().current.len() as u64)
    }

    /// Extending counts as a write on the rail, so a cut can fall on it.
    fn grow_to(&self, size: u64) -> io::Result<()> {
        let mut s = self.state.lock();
        let size = usize::try_from(size).map_err(|_| io::Error::other("size overflow"))?;
        if s.current.len() >= size {
            return Ok(());
        }
        let completes = self.rail.on_write()?;
        s.pending.push(Pending::Grow(size));
        if !completes {
            return Err(power_cut());
        }
        s.current.resize(size, 0);
        Ok(())
    }

    fn can_copy_from(&self, _source: &dyn BlockDev, _granularity: u64) -> bool {
        self.copies
    }

    fn copy_from(&self, source: &dyn BlockDev, from: u64, to: u64, len: usize) -> io::Result<bool> {
        if !self.copies {
            return Ok(false);
        }
        crate::blockdev::copy_as_one_write(self, source, from, to, len)
    }
}

//! Shared pieces of the store-level benchmarks: block devices that drop data I/O so an index of
//! ten million exceptions can be built without writing 640 GB, and resident-memory probes.
//!
//! What the discarding devices change, and why it is sound for what the benches measure: the
//! exception index, the allocator bitmap and the superblocks are metadata and still go to a
//! real file, so index memory, cache behaviour, commit I/O and `verify` are measured for real.
//! Only the bytes of copied chunks (and, at the origin, of the client's data) are dropped; no
//! metadata decision depends on them.

use multisnap_store::BlockDev;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

/// Size of a metadata block in the store format; data chunks must be larger so the two kinds
/// of I/O can be told apart by length alone.
pub const META_BLOCK: u64 = 4096;

/// A store device that discards data-chunk writes and answers data-chunk reads with zeroes,
/// passing everything else (superblocks, bitmap, B+tree nodes: all 4 KiB) to `inner`.
///
/// A data chunk is recognised by shape only: exactly `chunk` bytes at a `chunk`-aligned offset.
/// Nothing is tracked per chunk, so memory stays flat. Smaller reads inside a data chunk (a
/// 4 KiB snapshot read) look like metadata reads and go to `inner`; on a sparse file that never
/// received the chunk they return zeroes or whatever metadata that region once held. Benches
/// using this device must not check snapshot contents.
pub struct DiscardChunks<D> {
    inner: D,
    chunk: u64,
    discarded_writes: AtomicU64,
    zero_reads: AtomicU64,
}

impl<D: BlockDev> DiscardChunks<D> {
    pub fn new(inner: D, chunk: u64) -> io::Result<Self> {
        if !chunk.is_power_of_two() || chunk <= META_BLOCK {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "chunk size {chunk} must be a power of two above {META_BLOCK}, or data and \
                     metadata I/O cannot be told apart"
                ),
            ));
        }
        Ok(DiscardChunks {
            inner,
            chunk,
            discarded_writes: AtomicU64::new(0),
            zero_reads: AtomicU64::new(0),
        })
    }

    fn is_chunk_io(&self, len: usize, offset: u64) -> bool {
        len as u64 == self.chunk && offset.is_multiple_of(self.chunk)
    }

    /// Data-chunk writes dropped so far.
    pub fn discarded_writes(&self) -> u64 {
        self.discarded_writes.load(Ordering::Relaxed)
    }

    /// Data-chunk reads answered with zeroes so far.
    pub fn zero_reads(&self) -> u64 {
        self.zero_reads.load(Ordering::Relaxed)
    }
}

impl<D: BlockDev> BlockDev for DiscardChunks<D> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if self.is_chunk_io(buf.len(), offset) {
            buf.fill(0);
            self.zero_reads.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if self.is_chunk_io(buf.len(), offset) {
            self.discarded_writes.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        self.inner.write_at(buf, offset)
    }
    fn flush(&self) -> io::Result<()> {
        self.inner.flush()
    }
    fn size(&self) -> io::Result<u64> {
        self.inner.size()
    }
    fn grow_to(&self, size: u64) -> io::Result<()> {
        self.inner.grow_to(size)
    }
}

/// An origin that takes its size from `inner` (a sparse file) but never touches it: writes are
/// dropped and reads return zeroes, which is what the never-written sparse file holds anyway.
/// Without it, S rounds of overwriting the origin would push S × origin size through the page
/// cache and, at every snapshot's origin flush, to disk.
pub struct NullOrigin<D> {
    inner: D,
}

impl<D: BlockDev> NullOrigin<D> {
    pub fn new(inner: D) -> Self {
        NullOrigin { inner }
    }
}

impl<D: BlockDev> BlockDev for NullOrigin<D> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let size = self.inner.size()?;
        match offset.checked_add(buf.len() as u64) {
            Some(end) if end <= size => {
                buf.fill(0);
                Ok(())
            }
            _ => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past the end of the origin",
            )),
        }
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let size = self.inner.size()?;
        match offset.checked_add(buf.len() as u64) {
            Some(end) if end <= size => Ok(()),
            _ => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "write past the end of the origin",
            )),
        }
    }
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
    fn size(&self) -> io::Result<u64> {
        self.inner.size()
    }
    fn grow_to(&self, size: u64) -> io::Result<()> {
        self.inner.grow_to(size)
    }
}

/// Counts a device's I/O, so a cost can be stated in operations and bytes rather than time.
pub struct Counting<D> {
    inner: D,
    reads: AtomicU64,
    read_bytes: AtomicU64,
    writes: AtomicU64,
    write_bytes: AtomicU64,
    flushes: AtomicU64,
}

impl<D> Counting<D> {
    pub fn new(inner: D) -> Self {
        Counting {
            inner,
            reads: AtomicU64::new(0),
            read_bytes: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            write_bytes: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
        }
    }

    /// `[reads, read bytes, writes, written bytes, flushes]` so far.
    pub fn snapshot(&self) -> [u64; 5] {
        [
            self.reads.load(Ordering::Relaxed),
            self.read_bytes.load(Ordering::Relaxed),
            self.writes.load(Ordering::Relaxed),
            self.write_bytes.load(Ordering::Relaxed),
            self.flushes.load(Ordering::Relaxed),
        ]
    }
}

impl<D: BlockDev> BlockDev for Counting<D> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        self.read_bytes
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.write_bytes
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        self.inner.write_at(buf, offset)
    }
    fn flush(&self) -> io::Result<()> {
        self.flushes.fetch_add(1, Ordering::Relaxed);
        self.inner.flush()
    }
    fn start_writeback(&self, offset: u64, len: u64) {
        self.inner.start_writeback(offset, len)
    }
    fn size(&self) -> io::Result<u64> {
        self.inner.size()
    }
    fn grow_to(&self, size: u64) -> io::Result<()> {
        self.inner.grow_to(size)
    }
    fn allocation(&self, offset: u64, len: u64) -> io::Result<Vec<(u64, bool)>> {
        self.inner.allocation(offset, len)
    }
}

/// Resident memory of this process, from /proc/self/status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rss {
    /// VmRSS: resident now, bytes.
    pub current: u64,
    /// VmHWM: the peak resident size so far, bytes.
    pub peak: u64,
}

/// Reads VmRSS and VmHWM. Fails off Linux, where /proc/self/status does not exist.
pub fn rss() -> io::Result<Rss> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let field = |name: &str| -> io::Result<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.trim().strip_suffix("kB"))
            .and_then(|kb| kb.trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("no {name} line in /proc/self/status"),
                )
            })
    };
    Ok(Rss {
        current: field("VmRSS:")?,
        peak: field("VmHWM:")?,
    })
}

/// A fresh directory for a bench's files, in $MULTISNAP_BENCH_DIR, else the system temp dir.
pub fn bench_dir() -> io::Result<tempfile::TempDir> {
    let base = std::env::var_os("MULTISNAP_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    tempfile::tempdir_in(&base)
        .map_err(|e| io::Error::new(e.kind(), format!("temp dir in {}: {e}", base.display())))
}

/// Writes `byte` over the first `size` bytes of `dev` (in 4 MiB pieces) and flushes: real,
/// allocated data, so later writes overwrite used blocks and copies read real bytes.
pub fn fill(dev: &dyn BlockDev, size: u64, byte: u8) -> io::Result<()> {
    let data = vec![byte; 4 << 20];
    let mut off = 0;
    while off < size {
        let n = (size - off).min(data.len() as u64) as usize;
        dev.write_at(&data[..n], off)?;
        off += n as u64;
    }
    dev.flush()
}

/// Bytes as MiB with one decimal, for reports.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use multisnap_store::MemDev;

    #[test]
    fn chunk_io_is_dropped_and_metadata_kept() {
        let dev = DiscardChunks::new(MemDev::new(1 << 20), 65536).expect("valid chunk");
        dev.write_at(&[7u8; 65536], 65536).expect("write");
        dev.write_at(&[9u8; 4096], 4096).expect("write");
        let mut big = vec![1u8; 65536];
        dev.read_at(&mut big, 65536).expect("read");
        assert!(big.iter().all(|&b| b == 0));
        let mut small = vec![0u8; 4096];
        dev.read_at(&mut small, 4096).expect("read");
        assert!(small.iter().all(|&b| b == 9));
        assert_eq!(dev.discarded_writes(), 1);
        assert_eq!(dev.zero_reads(), 1);
        assert!(DiscardChunks::new(MemDev::new(1 << 20), 4096).is_err());
    }

    #[test]
    fn rss_is_readable() {
        let r = rss().expect("/proc/self/status");
        assert!(r.current > 0 && r.peak >= r.current);
    }
}

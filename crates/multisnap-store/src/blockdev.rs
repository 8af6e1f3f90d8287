//! All store and origin I/O goes through [`BlockDev`], so tests can run the store on RAM disks
//! and fault injectors (see `fault`) exactly as it runs on files and block devices.

use parking_lot::RwLock;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// A byte-addressed device with disk semantics: writes may sit in a volatile cache until
/// [`BlockDev::flush`] returns, after which they survive a power cut.
pub trait BlockDev: Send + Sync {
    /// Reads exactly `buf.len()` bytes at `offset`.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes all of `buf` at `offset`.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Makes every completed write durable.
    fn flush(&self) -> io::Result<()>;
    /// Current size in bytes.
    fn size(&self) -> io::Result<u64>;

    /// Makes the device at least `size` bytes long: a file is extended (the new bytes read as
    /// zeros, and the new length is durable after the next [`BlockDev::flush`]); a device that
    /// cannot be extended (a block device, which grows only by its own means) must already be
    /// that long, or this fails with [`io::ErrorKind::InvalidInput`] and the sizes in the
    /// message ([`must_hold`]). Never shrinks. No default: a wrapper that forgot to pass it on
    /// would make every volume it wraps refuse to grow.
    fn grow_to(&self, size: u64) -> io::Result<()>;

    /// Which parts of `offset..offset+len` hold data (`true`) and which are holes that read
    /// as zeroes (`false`), as consecutive `(length, data)` runs covering the range. Devices
    /// that cannot tell say "all data", which is always a truthful answer.
    fn allocation(&self, offset: u64, len: u64) -> io::Result<Vec<(u64, bool)>> {
        let _ = offset;
        Ok(vec![(len, true)])
    }
}

/// `grow_to` of a device that cannot be extended: fine when it holds `wanted` bytes already,
/// else the error `Store::resize` reports as the device's limit.
pub fn must_hold(have: u64, wanted: u64) -> io::Result<()> {
    if have >= wanted {
        return Ok(());
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("the device holds {have} bytes and cannot be extended to {wanted}; grow it first"),
    ))
}

/// A regular file or block device, accessed with positional reads and writes.
pub struct FileDev {
    file: File,
}

impl FileDev {
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)?;
        Ok(FileDev { file })
    }

    /// Creates (or truncates) a sparse file of `size` bytes.
    pub fn create_sparse(path: &Path, size: u64) -> io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)?;
        file.set_len(size)?;
        Ok(FileDev { file })
    }

    pub fn from_file(file: File) -> Self {
        FileDev { file }
    }
}

/// `lseek(fd, offset, whence)` for SEEK_DATA / SEEK_HOLE; `None` past the last data (ENXIO).
fn seek_extent(file: &File, offset: u64, whence: libc::c_int) -> io::Result<Option<u64>> {
    use std::os::fd::AsRawFd;
    let off = libc::off_t::try_from(offset).map_err(|_| io::Error::other("offset overflow"))?;
    // SAFETY: lseek on a valid descriptor we own; it only moves the file offset, which this
    // type never uses (all I/O is positional).
    let r = unsafe { libc::lseek(file.as_raw_fd(), off, whence) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENXIO) {
            return Ok(None);
        }
        return Err(e);
    }
    Ok(Some(r as u64))
}

impl BlockDev for FileDev {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }
    fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }
    fn allocation(&self, offset: u64, len: u64) -> io::Result<Vec<(u64, bool)>> {
        let end = offset + len;
        let mut out = Vec::new();
        let mut pos = offset;
        while pos < end {
            let data_at = match seek_extent(&self.file, pos, libc::SEEK_DATA) {
                Ok(d) => d.unwrap_or(end).min(end),
                // Filesystems or devices without SEEK_DATA: everything is data.
                Err(_) => return Ok(vec![(len, true)]),
            };
            if data_at > pos {
                out.push((data_at - pos, false));
                pos = data_at;
                continue;
            }
            let hole_at = seek_extent(&self.file, pos, libc::SEEK_HOLE)?
                .unwrap_or(end)
                .min(end);
            let hole_at = hole_at.max(pos + 1);
            out.push((hole_at - pos, true));
            pos = hole_at;
        }
        Ok(out)
    }

    fn size(&self) -> io::Result<u64> {
        use std::os::unix::fs::FileTypeExt;
        let meta = self.file.metadata()?;
        if meta.file_type().is_block_device() {
            // Block devices report a zero length in their metadata; seek to the end instead.
            use std::io::Seek;
            let mut f = &self.file;
            return f.seek(io::SeekFrom::End(0));
        }
        Ok(meta.len())
    }

    fn grow_to(&self, size: u64) -> io::Result<()> {
        let meta = self.file.metadata()?;
        if !meta.file_type().is_file() {
            return must_hold(self.size()?, size);
        }
        if meta.len() < size {
            self.file.set_len(size)?;
        }
        Ok(())
    }
}

/// A RAM disk. Flush is a no-op: it never loses anything (see `fault::CrashDev` for one that
/// does).
pub struct MemDev {
    data: RwLock<Vec<u8>>,
}

impl MemDev {
    pub fn new(size: u64) -> Self {
        MemDev {
            data: RwLock::new(vec![0; size as usize]),
        }
    }
    pub fn from_vec(data: Vec<u8>) -> Self {
        MemDev {
            data: RwLock::new(data),
        }
    }
    pub fn contents(&self) -> Vec<u8> {
        self.data.read().clone()
    }
}

fn range_check(len: usize, offset: u64, size: usize) -> io::Result<std::ops::Range<usize>> {
    let start = usize::try_from(offset).map_err(|_| io::Error::other("offset overflow"))?;
    let end = start
        .checked_add(len)
        .filter(|&e| e <= size)
        .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "access past end of device"))?;
    Ok(start..end)
}

impl BlockDev for MemDev {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let data = self.data.read();
        let r = range_check(buf.len(), offset, data.len())?;
        buf.copy_from_slice(&data[r]);
        Ok(())
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut data = self.data.write();
        let r = range_check(buf.len(), offset, data.len())?;
        data[r].copy_from_slice(buf);
        Ok(())
    }
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
    fn size(&self) -> io::Result<u64> {
        Ok(self.data.read().len() as u64)
    }
    fn grow_to(&self, size: u64) -> io::Result<()> {
        let mut data = self.data.write();
        let size = usize::try_from(size).map_err(|_| io::Error::other("size overflow"))?;
        if data.len() < size {
            data.resize(size, 0);
        }
        Ok(())
    }
}

impl<T: BlockDev + ?Sized> BlockDev for std::sync::Arc<T> {
    fn allocation(&self, offset: u64, len: u64) -> io::Result<Vec<(u64, bool)>> {
        (**self).allocation(offset, len)
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        (**self).read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        (**self).write_at(buf, offset)
    }
    fn flush(&self) -> io::Result<()> {
        (**self).flush()
    }
    fn size(&self) -> io::Result<u64> {
        (**self).size()
    }
    fn grow_to(&self, size: u64) -> io::Result<()> {
        (**self).grow_to(size)
    }
}

//! All store and origin I/O goes through [`BlockDev`], so tests can run the store on RAM disks
//! and fault injectors (see `fault`) exactly as it runs on files and block devices.

use crate::direct_dev::DirectDev;
use parking_lot::RwLock;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::OnceLock;

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

    /// A hint: start writing the completed writes in `offset..offset+len` to the medium now,
    /// without waiting for them. Nothing becomes durable by it ([`BlockDev::flush`] still
    /// decides that, and reports any error the writing met); it only leaves the next flush
    /// less to do. Devices without a write-back cache ignore it.
    fn start_writeback(&self, offset: u64, len: u64) {
        let _ = (offset, len);
    }

    /// Writes `parts` one after the other from `offset`, for a caller that will not read them
    /// back soon (a full apply filling an empty origin): a file may write them past its page
    /// cache (`O_DIRECT`), which saves the kernel's copy of every byte into it. Durable after
    /// the next [`BlockDev::flush`], exactly like [`BlockDev::write_at`], which it is unless a
    /// device says otherwise.
    fn write_bulk(&self, parts: &[&[u8]], offset: u64) -> io::Result<()> {
        write_each(parts, offset, |p, at| self.write_at(p, at))
    }

    /// The open regular file or block device behind this device, so another device can ask the
    /// kernel to copy between the two ([`BlockDev::copy_from`]). `None` for anything else.
    fn as_file(&self) -> Option<&File> {
        None
    }

    /// Whether [`BlockDev::copy_from`] can copy from `source` into this device at offsets and
    /// lengths that are multiples of `granularity`. Asked once, when a store opens.
    fn can_copy_from(&self, source: &dyn BlockDev, granularity: u64) -> bool {
        let _ = (source, granularity);
        false
    }

    /// Copies `len` bytes at `from` on `source` to `to` on this device without passing them
    /// through the caller: on files of one filesystem, `copy_file_range(2)` (the filesystem
    /// shares the extent where it can, XFS and btrfs, or copies in the kernel). The copy is
    /// like a [`BlockDev::write_at`] of the same bytes: durable after the next
    /// [`BlockDev::flush`] of this device, not before. `Ok(false)` when this pair cannot copy
    /// so after all (the kernel refused it); then the caller writes the bytes itself, whatever
    /// part of the range was copied already.
    fn copy_from(&self, source: &dyn BlockDev, from: u64, to: u64, len: usize) -> io::Result<bool> {
        let _ = (source, from, to, len);
        Ok(false)
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

/// Writes `parts` laid end to end from `offset`, one `write` each.
pub(crate) fn write_each(
    parts: &[&[u8]],
    offset: u64,
    mut write: impl FnMut(&[u8], u64) -> io::Result<()>,
) -> io::Result<()> {
    let mut at = offset;
    for p in parts {
        write(p, at)?;
        at += p.len() as u64;
    }
    Ok(())
}

/// A regular file or block device, accessed with positional reads and writes.
pub struct FileDev {
    file: File,
    /// The same file opened again with `O_DIRECT` for [`BlockDev::write_bulk`], on its first
    /// use; `None` where the file refuses direct I/O (its bulk writes then go through `file`).
    bulk: OnceLock<Option<DirectDev>>,
}

impl FileDev {
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)?;
        Ok(FileDev::from_file(file))
    }

    /// Creates (or truncates) a sparse file of `size` bytes.
    pub fn create_sparse(path: &Path, size: u64) -> io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)?;
        file.set_len(size)?;
        Ok(FileDev::from_file(file))
    }

    pub fn from_file(file: File) -> Self {
        FileDev {
            file,
            bulk: OnceLock::new(),
        }
    }

    /// Whether [`BlockDev::write_bulk`] writes past the page cache (it does where the file
    /// takes `O_DIRECT` and its size was whole blocks when first asked).
    pub fn writes_bulk_directly(&self) -> bool {
        self.bulk_dev().is_some()
    }

    /// The direct twin of this file, opened on first use (`/proc/self/fd` gives a new open
    /// file of the same inode, whose flags are its own).
    fn bulk_dev(&self) -> Option<&DirectDev> {
        use std::os::fd::AsRawFd;
        self.bulk
            .get_or_init(|| {
                let path = format!("/proc/self/fd/{}", self.file.as_raw_fd());
                DirectDev::open(Path::new(&path)).ok()
            })
            .as_ref()
    }

    /// The open file, to reopen it another way (`DirectDev::from_file`).
    pub fn into_file(self) -> File {
        self.file
    }
}

/// The block size of the filesystem holding `file` (`fstatfs`): the unit extents are shared in.
fn fs_block_size(file: &File) -> Option<u64> {
    use std::os::fd::AsRawFd;
    // SAFETY: fstatfs fills the zeroed struct it is given for a descriptor we own.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) };
    (r == 0 && st.f_bsize > 0).then_some(st.f_bsize as u64)
}

/// Errors with which `copy_file_range` says it cannot copy between these two files at all
/// (other filesystems, a filesystem or kernel without it, files it does not take), as opposed
/// to an I/O error of a copy it attempted.
fn copy_refused(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EXDEV | libc::EOPNOTSUPP | libc::EINVAL | libc::ENOSYS)
    )
}

/// `copy_file_range` of `len` bytes, `from` in `src` to `to` in `dst`, looping over short
/// copies; `Ok(false)` when the kernel refuses the pair (see [`copy_refused`]).
fn copy_file_range_all(src: &File, dst: &File, from: u64, to: u64, len: usize) -> io::Result<bool> {
    use std::os::fd::AsRawFd;
    let offset =
        |o: u64| libc::loff_t::try_from(o).map_err(|_| io::Error::other("offset overflow"));
    let mut done = 0usize;
    while done < len {
        let mut off_in = offset(from + done as u64)?;
        let mut off_out = offset(to + done as u64)?;
        // SAFETY: both descriptors are open files we own; the offsets are our own variables,
        // so the files' positions are neither used nor moved.
        let n = unsafe {
            libc::copy_file_range(
                src.as_raw_fd(),
                &mut off_in,
                dst.as_raw_fd(),
                &mut off_out,
                len - done,
                0,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => continue,
                _ if copy_refused(&e) => return Ok(false),
                _ => return Err(e),
            }
        }
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "copy_file_range: the source ends before the range",
            ));
        }
        done += n as usize;
    }
    Ok(true)
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

/// [`BlockDev::allocation`] of an open file, from `SEEK_DATA` / `SEEK_HOLE`.
pub(crate) fn file_allocation(file: &File, offset: u64, len: u64) -> io::Result<Vec<(u64, bool)>> {
    let end = offset + len;
    let mut out = Vec::new();
    let mut pos = offset;
    while pos < end {
        let data_at = match seek_extent(file, pos, libc::SEEK_DATA) {
            Ok(d) => d.unwrap_or(end).min(end),
            // Filesystems or devices without SEEK_DATA: everything is data.
            Err(_) => return Ok(vec![(len, true)]),
        };
        if data_at > pos {
            out.push((data_at - pos, false));
            pos = data_at;
            continue;
        }
        let hole_at = seek_extent(file, pos, libc::SEEK_HOLE)?
            .unwrap_or(end)
            .min(end);
        let hole_at = hole_at.max(pos + 1);
        out.push((hole_at - pos, true));
        pos = hole_at;
    }
    Ok(out)
}

/// The size of an open regular file or block device.
pub(crate) fn file_size(file: &File) -> io::Result<u64> {
    use std::os::unix::fs::FileTypeExt;
    let meta = file.metadata()?;
    if meta.file_type().is_block_device() {
        // Block devices report a zero length in their metadata; seek to the end instead.
        use std::io::Seek;
        let mut f = file;
        return f.seek(io::SeekFrom::End(0));
    }
    Ok(meta.len())
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
    /// `sync_file_range(SYNC_FILE_RANGE_WRITE)`: queues the range's dirty pages for writing
    /// and returns. Without a wait flag it does not consume the file's write-back error, so
    /// the next `fdatasync` still reports one. Its own result is ignored: it is only a hint.
    fn start_writeback(&self, offset: u64, len: u64) {
        use std::os::fd::AsRawFd;
        let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
            return;
        };
        // SAFETY: a plain syscall on a descriptor this device owns; no memory is passed.
        unsafe {
            libc::sync_file_range(
                self.file.as_raw_fd(),
                offset,
                len,
                libc::SYNC_FILE_RANGE_WRITE,
            );
        }
    }
    /// Through the direct twin where the file takes `O_DIRECT` and its size is whole blocks;
    /// the kernel keeps the two coherent (a direct write first writes back and drops any
    /// cached pages of its range).
    fn write_bulk(&self, parts: &[&[u8]], offset: u64) -> io::Result<()> {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        match self.bulk_dev() {
            // Only what the twin writes as one gathered request of whole blocks: a direct
            // write never widens past the file's end, whatever the file grew to since the twin
            // was opened.
            Some(direct) if direct.gathers(offset, total) => direct.write_parts(parts, offset),
            _ => write_each(parts, offset, |p, at| self.write_at(p, at)),
        }
    }
    fn as_file(&self) -> Option<&File> {
        Some(&self.file)
    }
    /// Both regular files of one filesystem (`copy_file_range` takes nothing else since Linux
    /// 5.19), and `granularity` a multiple of its block size, the unit a shared extent needs.
    fn can_copy_from(&self, source: &dyn BlockDev, granularity: u64) -> bool {
        use std::os::unix::fs::MetadataExt;
        let Some(src) = source.as_file() else {
            return false;
        };
        let (Ok(a), Ok(b)) = (src.metadata(), self.file.metadata()) else {
            return false;
        };
        a.is_file()
            && b.is_file()
            && a.dev() == b.dev()
            && fs_block_size(&self.file).is_some_and(|bs| granularity.is_multiple_of(bs))
    }
    fn copy_from(&self, source: &dyn BlockDev, from: u64, to: u64, len: usize) -> io::Result<bool> {
        match source.as_file() {
            Some(src) => copy_file_range_all(src, &self.file, from, to, len),
            None => Ok(false),
        }
    }
    fn allocation(&self, offset: u64, len: u64) -> io::Result<Vec<(u64, bool)>> {
        file_allocation(&self.file, offset, len)
    }

    fn size(&self) -> io::Result<u64> {
        file_size(&self.file)
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

/// [`BlockDev::copy_from`] of a simulated device: the source's bytes read and written as one
/// write, which is what the copy is to the device's cache, so the store's copy path runs on
/// RAM disks and power-cut simulations with the same ordering it has on files.
pub(crate) fn copy_as_one_write(
    dst: &dyn BlockDev,
    source: &dyn BlockDev,
    from: u64,
    to: u64,
    len: usize,
) -> io::Result<bool> {
    let mut buf = vec![0u8; len];
    source.read_at(&mut buf, from)?;
    dst.write_at(&buf, to)?;
    Ok(true)
}

/// A RAM disk. Flush is a no-op: it never loses anything (see `fault::CrashDev` for one that
/// does).
pub struct MemDev {
    data: RwLock<Vec<u8>>,
    /// Takes [`BlockDev::copy_from`] from any device (see [`MemDev::copying`]).
    copies: bool,
}

impl MemDev {
    pub fn new(size: u64) -> Self {
        MemDev::from_vec(vec![0; size as usize])
    }
    pub fn from_vec(data: Vec<u8>) -> Self {
        MemDev {
            data: RwLock::new(data),
            copies: false,
        }
    }
    /// This device, taking [`BlockDev::copy_from`] from any other: a store on it copies out the
    /// way it does between files of one filesystem.
    pub fn copying(mut self) -> Self {
        self.copies = true;
        self
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
    fn can_copy_from(&self, _source: &dyn BlockDev, _granularity: u64) -> bool {
        self.copies
    }
    fn copy_from(&self, source: &dyn BlockDev, from: u64, to: u64, len: usize) -> io::Result<bool> {
        if !self.copies {
            return Ok(false);
        }
        copy_as_one_write(self, source, from, to, len)
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
    fn start_writeback(&self, offset: u64, len: u64) {
        (**self).start_writeback(offset, len)
    }
    fn write_bulk(&self, parts: &[&[u8]], offset: u64) -> io::Result<()> {
        (**self).write_bulk(parts, offset)
    }
    fn size(&self) -> io::Result<u64> {
        (**self).size()
    }
    fn grow_to(&self, size: u64) -> io::Result<()> {
        (**self).grow_to(size)
    }
    fn as_file(&self) -> Option<&File> {
        (**self).as_file()
    }
    fn can_copy_from(&self, source: &dyn BlockDev, granularity: u64) -> bool {
        (**self).can_copy_from(source, granularity)
    }
    fn copy_from(&self, source: &dyn BlockDev, from: u64, to: u64, len: usize) -> io::Result<bool> {
        (**self).copy_from(source, from, to, len)
    }
}

//! An origin opened with `O_DIRECT` ([`DirectDev`]): writes go from the caller's buffer to the
//! device without the page cache, as qemu's `cache=none` does, so a flush is a device cache
//! flush and never a write-back of dirty pages (see `Store`'s origin flush, which therefore
//! does not journal a direct origin's writes).
//!
//! `O_DIRECT` takes only I/O whose offset, length and memory address are multiples of the
//! device's logical block size. NBD clients send 512-byte aligned requests and the store
//! reads whole chunks into `Vec`s of any address, so requests that are not aligned go through
//! an aligned bounce buffer; a write that covers only part of its first or last block reads
//! that block, changes its bytes and writes it back (read-modify-write). Writes whose blocks
//! overlap are serialized ([`BusyBlocks`]), so two writes sharing an edge block never undo
//! each other's bytes.

use crate::blockdev::{must_hold, write_each, BlockDev};
use parking_lot::{Condvar, Mutex};
use std::alloc::Layout;
use std::cell::RefCell;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Alignment for regular files. Linux needs a file's direct I/O aligned to the logical block
/// size of the device under its filesystem, which is 512 or 4096 and not cheaply known for a
/// file (`statx`'s `STATX_DIOALIGN` needs Linux 6.1 and filesystem support); 4096 is a
/// multiple of both, and the filesystem block size of ext4 and XFS, so it is always accepted,
/// and 4 KiB client requests, the common ones, stay aligned and skip the bounce buffer.
pub const FILE_ALIGN: usize = 4096;

/// The error for a file or device that refuses `O_DIRECT` (tmpfs before Linux 6.6, FUSE
/// without direct I/O, sockets and pipes).
pub fn direct_refused(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        format!("origin_cache=direct needs a filesystem with O_DIRECT; {what} refuses it"),
    )
}

/// A regular file or block device read and written with `O_DIRECT`.
pub struct DirectDev {
    file: File,
    /// Logical block size: every request to the kernel is aligned to it.
    align: usize,
    busy: BusyBlocks,
}

impl DirectDev {
    /// Opens `path` read-write with `O_DIRECT`.
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)?;
        DirectDev::from_file(file).map_err(|e| {
            if e.kind() == io::ErrorKind::Unsupported {
                direct_refused(&path.display().to_string())
            } else {
                e
            }
        })
    }

    /// Turns an open read-write file into a direct one (`fcntl(F_SETFL, O_DIRECT)`, which
    /// fails with `EINVAL` where direct I/O is not supported). Its size must be a multiple of
    /// the alignment: a direct write of the last, partial block would extend the file.
    pub fn from_file(file: File) -> io::Result<Self> {
        let fd = file.as_raw_fd();
        // SAFETY: fcntl on a descriptor we own, with integer arguments only.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        if flags < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: as above.
        if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_DIRECT) } < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINVAL) {
                return Err(direct_refused("this file"));
            }
            return Err(e);
        }
        let align = logical_block_size(&file)?;
        let dev = DirectDev {
            file,
            align,
            busy: BusyBlocks::default(),
        };
        let size = dev.size()?;
        if size % align as u64 != 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "origin_cache=direct needs an origin whose size is a multiple of {align} bytes; it has {size}"
                ),
            ));
        }
        Ok(dev)
    }

    /// The alignment every request to the kernel has.
    pub fn alignment(&self) -> usize {
        self.align
    }

    /// `offset..offset+len` widened to whole blocks.
    fn widen(&self, offset: u64, len: usize) -> (u64, usize) {
        let a = self.align as u64;
        let start = offset / a * a;
        let end = (offset + len as u64).div_ceil(a) * a;
        (start, (end - start) as usize)
    }

    /// Writes `parts` one after the other from `offset` with as few requests as it can: one,
    /// from a bounce buffer they are gathered into, when the whole run is block-aligned and
    /// fits the kept bounce buffer; else each part as [`BlockDev::write_at`] would.
    pub fn write_parts(&self, parts: &[&[u8]], offset: u64) -> io::Result<()> {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        if !self.gathers(offset, total) {
            return write_each(parts, offset, |p, at| self.write_at(p, at));
        }
        let a = self.align as u64;
        let _busy = self.busy.lock(offset / a, (offset + total as u64) / a);
        with_bounce(total, |bounce| {
            let mut at = 0;
            for p in parts {
                bounce[at..at + p.len()].copy_from_slice(p);
                at += p.len();
            }
            self.file.write_all_at(bounce, offset)
        })
    }

    /// Whether [`DirectDev::write_parts`] writes `total` bytes at `offset` as one gathered
    /// request: whole blocks that fit the kept bounce buffer.
    pub(crate) fn gathers(&self, offset: u64, total: usize) -> bool {
        offset.is_multiple_of(self.align as u64)
            && total.is_multiple_of(self.align)
            && total <= KEEP_BOUNCE
    }

    fn aligned(&self, offset: u64, len: usize, addr: *const u8) -> bool {
        let a = self.align;
        offset.is_multiple_of(a as u64)
            && len.is_multiple_of(a)
            && (addr as usize).is_multiple_of(a)
    }
}

/// `BLKSSZGET` for a block device, [`FILE_ALIGN`] for anything else.
fn logical_block_size(file: &File) -> io::Result<usize> {
    use std::os::unix::fs::FileTypeExt;
    if !file.metadata()?.file_type().is_block_device() {
        return Ok(FILE_ALIGN);
    }
    let mut size: libc::c_int = 0;
    // SAFETY: BLKSSZGET writes one int into the variable we pass, on a descriptor we own.
    let r = unsafe { libc::ioctl(file.as_raw_fd(), libc::BLKSSZGET, &mut size) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    match usize::try_from(size) {
        Ok(s) if s.is_power_of_two() && s >= 512 => Ok(s),
        _ => Err(io::Error::other(format!(
            "the device reports a logical block size of {size}"
        ))),
    }
}

impl BlockDev for DirectDev {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if self.aligned(offset, buf.len(), buf.as_ptr()) {
            return self.file.read_exact_at(buf, offset);
        }
        let (start, len) = self.widen(offset, buf.len());
        let skip = (offset - start) as usize;
        with_bounce(len, |bounce| {
            self.file.read_exact_at(bounce, start)?;
            buf.copy_from_slice(&bounce[skip..skip + buf.len()]);
            Ok(())
        })
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let (start, len) = self.widen(offset, buf.len());
        let a = self.align as u64;
        let _busy = self.busy.lock(start / a, (start + len as u64) / a);
        if self.aligned(offset, buf.len(), buf.as_ptr()) {
            return self.file.write_all_at(buf, offset);
        }
        let skip = (offset - start) as usize;
        let end = skip + buf.len();
        with_bounce(len, |bounce| {
            // The edge blocks' bytes outside the write are read back first; the busy range
            // keeps any other write off these blocks until the whole range is written.
            if skip != 0 {
                self.file.read_exact_at(&mut bounce[..self.align], start)?;
            }
            let tail = len - self.align;
            if end < len && (skip == 0 || tail != 0) {
                self.file
                    .read_exact_at(&mut bounce[tail..], start + tail as u64)?;
            }
            bounce[skip..end].copy_from_slice(buf);
            self.file.write_all_at(bounce, start)
        })
    }

    fn write_bulk(&self, parts: &[&[u8]], offset: u64) -> io::Result<()> {
        self.write_parts(parts, offset)
    }

    /// `fdatasync`: with no dirty pages to write back, this is the device's cache flush (and
    /// the file's block allocations, for writes into holes of a sparse file).
    fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn size(&self) -> io::Result<u64> {
        crate::blockdev::file_size(&self.file)
    }

    fn grow_to(&self, size: u64) -> io::Result<()> {
        let meta = self.file.metadata()?;
        if !meta.file_type().is_file() {
            return must_hold(self.size()?, size);
        }
        if !size.is_multiple_of(self.align as u64) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "a direct origin grows in multiples of {} bytes, not to {size}",
                    self.align
                ),
            ));
        }
        if meta.len() < size {
            self.file.set_len(size)?;
        }
        Ok(())
    }

    fn allocation(&self, offset: u64, len: u64) -> io::Result<Vec<(u64, bool)>> {
        crate::blockdev::file_allocation(&self.file, offset, len)
    }

    /// The kernel copies out of an `O_DIRECT` file as out of any other (`copy_file_range`
    /// reads it through the direct path at the chunk-aligned offsets the store uses).
    fn as_file(&self) -> Option<&File> {
        Some(&self.file)
    }
}

/// Block ranges of the writes in progress: a write waits until no other write in progress
/// touches any of its blocks, so a read-modify-write of an edge block never runs beside another
/// write of that block. Writes to disjoint blocks go on in parallel.
#[derive(Default)]
struct BusyBlocks {
    ranges: Mutex<Vec<(u64, u64)>>,
    freed: Condvar,
}

struct BusyGuard<'a> {
    busy: &'a BusyBlocks,
    range: (u64, u64),
}

impl BusyBlocks {
    /// Claims blocks `first..end`.
    fn lock(&self, first: u64, end: u64) -> BusyGuard<'_> {
        let mut ranges = self.ranges.lock();
        while ranges.iter().any(|&(s, e)| s < end && first < e) {
            self.freed.wait(&mut ranges);
        }
        ranges.push((first, end));
        BusyGuard {
            busy: self,
            range: (first, end),
        }
    }
}

impl Drop for BusyGuard<'_> {
    fn drop(&mut self) {
        let mut ranges = self.busy.ranges.lock();
        if let Some(i) = ranges.iter().position(|r| *r == self.range) {
            ranges.swap_remove(i);
        }
        drop(ranges);
        self.busy.freed.notify_all();
    }
}

/// Memory aligned for any logical block size (4096 is a multiple of every one Linux uses
/// below the page size), kept per thread and reused, so the bounce path allocates only when
/// a request is larger than any the thread made before.
struct AlignedBuf {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
}

const BUF_ALIGN: usize = 4096;

impl AlignedBuf {
    fn new(len: usize) -> AlignedBuf {
        let layout =
            Layout::from_size_align(len.max(BUF_ALIGN), BUF_ALIGN).expect("bounce buffer layout");
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr =
            std::ptr::NonNull::new(ptr).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        AlignedBuf {
            ptr,
            len: layout.size(),
        }
    }
    fn slice(&mut self, len: usize) -> &mut [u8] {
        assert!(len <= self.len);
        // SAFETY: `ptr` owns `self.len` initialized bytes, borrowed mutably through `self`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        let layout = Layout::from_size_align(self.len, BUF_ALIGN).expect("bounce buffer layout");
        // SAFETY: allocated in `new` with this very layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), layout) }
    }
}

/// Bounce buffers larger than this are not kept for reuse (a rare huge request would pin its
/// memory to the thread); [`DirectDev::write_parts`] gathers at most this much.
pub const KEEP_BOUNCE: usize = 4 << 20;

thread_local! {
    static BOUNCE: RefCell<Option<AlignedBuf>> = const { RefCell::new(None) };
}

/// Runs `f` with an aligned buffer of `len` bytes (a multiple of the alignment).
fn with_bounce<R>(len: usize, f: impl FnOnce(&mut [u8]) -> io::Result<R>) -> io::Result<R> {
    if len > KEEP_BOUNCE {
        return f(AlignedBuf::new(len).slice(len));
    }
    BOUNCE.with(|cell| {
        // Taken out while in use: a nested use on this thread (none today) gets its own.
        let mut buf = match cell.borrow_mut().take() {
            Some(b) if b.len >= len => b,
            _ => AlignedBuf::new(len),
        };
        let r = f(buf.slice(len));
        *cell.borrow_mut() = Some(buf);
        r
    })
}

// SAFETY: the buffer is plain owned memory, like a Vec<u8>.
unsafe impl Send for AlignedBuf {}

#[cfg(test)]
mod tests;

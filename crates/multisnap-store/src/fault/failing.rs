//! A device that fails chosen operations with a chosen errno, the way a dying disk or a full
//! filesystem does, so tests can prove what the store does about each failure.

use crate::blockdev::BlockDev;
use parking_lot::Mutex;
use std::io;

/// Which operation a fault applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Read,
    Write,
    Flush,
}

#[derive(Debug, Clone, Copy)]
struct Fault {
    op: Op,
    /// Operations of that kind still to pass before the fault fires.
    pass: u64,
    errno: i32,
    /// Keep failing once fired (a dead disk) rather than failing once (a transient error).
    sticky: bool,
    fired: bool,
}

/// `inner`, with faults armed by [`Failing::fail`].
pub struct Failing<D> {
    inner: D,
    faults: Mutex<Vec<Fault>>,
    failed: Mutex<u64>,
}

impl<D: BlockDev> Failing<D> {
    pub fn new(inner: D) -> Self {
        Failing {
            inner,
            faults: Mutex::new(Vec::new()),
            failed: Mutex::new(0),
        }
    }

    /// The `op` after the next `pass` of them fails with `errno`; with `sticky`, so does every
    /// later one until [`Failing::heal`].
    pub fn fail(&self, op: Op, pass: u64, errno: i32, sticky: bool) {
        self.faults.lock().push(Fault {
            op,
            pass,
            errno,
            sticky,
            fired: false,
        });
    }

    /// Removes every fault: the disk works again (space was freed, a cable reseated).
    pub fn heal(&self) {
        self.faults.lock().clear();
    }

    /// Operations failed so far.
    pub fn failures(&self) -> u64 {
        *self.failed.lock()
    }

    pub fn inner(&self) -> &D {
        &self.inner
    }

    fn check(&self, op: Op) -> io::Result<()> {
        let mut faults = self.faults.lock();
        for f in faults.iter_mut().filter(|f| f.op == op) {
            if f.fired {
                if f.sticky {
                    *self.failed.lock() += 1;
                    return Err(io::Error::from_raw_os_error(f.errno));
                }
                continue;
            }
            if f.pass > 0 {
                f.pass -= 1;
                continue;
            }
            f.fired = true;
            *self.failed.lock() += 1;
            return Err(io::Error::from_raw_os_error(f.errno));
        }
        Ok(())
    }
}

impl<D: BlockDev> BlockDev for Failing<D> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.check(Op::Read)?;
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.check(Op::Write)?;
        self.inner.write_at(buf, offset)
    }
    fn flush(&self) -> io::Result<()> {
        self.check(Op::Flush)?;
        self.inner.flush()
    }
    fn start_writeback(&self, offset: u64, len: u64) {
        self.inner.start_writeback(offset, len)
    }
    fn size(&self) -> io::Result<u64> {
        self.inner.size()
    }
    fn grow_to(&self, size: u64) -> io::Result<()> {
        self.check(Op::Write)?;
        self.inner.grow_to(size)
    }
    fn allocation(&self, offset: u64, len: u64) -> io::Result<Vec<(u64, bool)>> {
        self.inner.allocation(offset, len)
    }
}

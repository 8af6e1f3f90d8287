//! Slow and stoppable devices: wrappers around any [`BlockDev`] that make reads or flushes
//! take time, or make flushes wait until a test lets them through.
//!
//! The RAM disk answers everything at once, so without these a test can never hold the store
//! in the window between a lookup and its data read, or between a commit's seal and its landing
//! — the windows where concurrency bugs live.

use crate::blockdev::BlockDev;
use parking_lot::{Condvar, Mutex};
use std::io;
use std::time::Duration;

/// `inner`, with a sleep before every read and/or every flush.
pub struct Delayed<D> {
    inner: D,
    read_delay: Duration,
    flush_delay: Duration,
}

impl<D: BlockDev> Delayed<D> {
    /// No delays yet: add them with [`Delayed::reads`] and [`Delayed::flushes`].
    pub fn new(inner: D) -> Self {
        Delayed {
            inner,
            read_delay: Duration::ZERO,
            flush_delay: Duration::ZERO,
        }
    }

    /// Every read sleeps `d` first.
    pub fn reads(mut self, d: Duration) -> Self {
        self.read_delay = d;
        self
    }

    /// Every flush sleeps `d` first (a real disk's cache flush takes milliseconds).
    pub fn flushes(mut self, d: Duration) -> Self {
        self.flush_delay = d;
        self
    }
}

fn pause(d: Duration) {
    if !d.is_zero() {
        std::thread::sleep(d);
    }
}

impl<D: BlockDev> BlockDev for Delayed<D> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        pause(self.read_delay);
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.inner.write_at(buf, offset)
    }
    fn flush(&self) -> io::Result<()> {
        pause(self.flush_delay);
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
    // A copy is a write to this device, which passes writes straight on.
    fn can_copy_from(&self, source: &dyn BlockDev, granularity: u64) -> bool {
        self.inner.can_copy_from(source, granularity)
    }
    fn copy_from(&self, source: &dyn BlockDev, from: u64, to: u64, len: usize) -> io::Result<bool> {
        self.inner.copy_from(source, from, to, len)
    }
}

#[derive(Default)]
struct GateState {
    closed: bool,
    /// Flushes waiting at the closed gate right now.
    waiting: usize,
}

/// `inner`, whose flushes wait while the gate is closed. It starts open.
pub struct FlushGate<D> {
    inner: D,
    state: Mutex<GateState>,
    changed: Condvar,
}

impl<D: BlockDev> FlushGate<D> {
    pub fn new(inner: D) -> Self {
        FlushGate {
            inner,
            state: Mutex::new(GateState::default()),
            changed: Condvar::new(),
        }
    }

    /// Flushes from now on wait until [`FlushGate::open`].
    pub fn close(&self) {
        self.state.lock().closed = true;
    }

    /// Lets waiting and future flushes through.
    pub fn open(&self) {
        self.state.lock().closed = false;
        self.changed.notify_all();
    }

    /// Whether a flush is (or within `limit` comes to be) waiting at the gate.
    pub fn wait_for_waiting_flush(&self, limit: Duration) -> bool {
        let mut g = self.state.lock();
        if g.waiting == 0 {
            let _ = self
                .changed
                .wait_while_for(&mut g, |g| g.waiting == 0, limit);
        }
        g.waiting > 0
    }
}

impl<D: BlockDev> BlockDev for FlushGate<D> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.inner.write_at(buf, offset)
    }
    fn flush(&self) -> io::Result<()> {
        {
            let mut g = self.state.lock();
            g.waiting += 1;
            self.changed.notify_all();
            self.changed.wait_while(&mut g, |g| g.closed);
            g.waiting -= 1;
        }
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
    // A copy is a write to this device, which passes writes straight on.
    fn can_copy_from(&self, source: &dyn BlockDev, granularity: u64) -> bool {
        self.inner.can_copy_from(source, granularity)
    }
    fn copy_from(&self, source: &dyn BlockDev, from: u64, to: u64, len: usize) -> io::Result<bool> {
        self.inner.copy_from(source, from, to, len)
    }
}

#[cfg(test)]
mod tests;

//! Flush coalescing: one store flush answers every flush request whose writes it covers.
//!
//! A flush must make durable every write that returned before it was called; a flush that
//! *started* after all those writes returned, and has since succeeded, already did. Clients
//! send flushes in bursts (fio's `fsync=N` at queue depth 32 sends about half as many flushes
//! as writes, one per free slot until the first completes; a ublk FUA write is a write and a
//! flush), and each store flush is an `fdatasync` of the origin plus, when the index changed, a
//! commit with two store flushes; answering the burst from one flush is what qemu does too (its
//! flush generations, kept in its block layer rather than in each frontend).
//!
//! The gate counts writes only. Changes that are not writes (a journal emptied for shutdown,
//! metadata left for the next commit by a management call) are not counted, so their callers
//! use [`crate::Store::flush`], which never skips.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Default)]
pub(crate) struct FlushCoalescer {
    /// Writes that have returned (counted before they are acknowledged, successful or not: a
    /// failed write may have changed some bytes).
    returned: AtomicU64,
    /// `returned` as read just before the latest successful flush started: every write
    /// counted there is durable. Held for the whole flush, so flushes queue behind it and
    /// most of them find their writes already covered.
    ///
    /// A `std` mutex, not `parking_lot`'s: the lock is held for a whole flush (~0.4 ms), and
    /// parking_lot's waiters call `sched_yield` up to seven times before they sleep. With a
    /// burst of flushes on 2 CPUs that was ~one `sched_yield` per write, taking CPU from the
    /// threads doing the writes (`perf record -e syscalls:sys_enter_sched_yield`, docs/
    /// BENCHMARKS.md §5, "The flush lock"). `std`'s futex mutex spins briefly without yielding, then
    /// sleeps.
    durable: std::sync::Mutex<u64>,
}

/// Counts one write as returned when dropped, so every way out of a write (success, error,
/// early return) is counted before the caller sees the result.
pub(crate) struct CountsOnReturn<'a>(&'a FlushCoalescer);

impl Drop for CountsOnReturn<'_> {
    fn drop(&mut self) {
        self.0.wrote();
    }
}

impl FlushCoalescer {
    pub(crate) fn wrote(&self) {
        self.returned.fetch_add(1, Ordering::SeqCst);
    }

    /// A guard for one write: hold it for the whole write.
    pub(crate) fn count_write(&self) -> CountsOnReturn<'_> {
        CountsOnReturn(self)
    }

    /// Runs `flush` unless a flush that started after every write counted so far returned
    /// has already succeeded.
    pub(crate) fn flush<E>(&self, flush: impl FnOnce() -> Result<(), E>) -> Result<(), E> {
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

#[cfg(test)]
mod tests;

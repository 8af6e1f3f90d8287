//! Payload buffers reused across a connection's READs and WRITEs.
//!
//! A fresh `vec![0; len]` per request costs, for 1 MiB requests, an mmap,
//! a page fault per page and the zeroing of every byte, all before the
//! payload is read or written once. So each connection keeps the buffers
//! of finished requests and hands them to the next ones: a [`Buffer`]
//! goes back to its pool when it is dropped, which is after the reply that
//! carried it was written (READ) or after the export wrote it (WRITE).
//!
//! A reused buffer was zeroed once when it was made; it is not zeroed
//! again, only cut or extended to the new length (`Vec::resize` zeroes
//! just the bytes it adds). That is safe because no byte of a buffer goes
//! on the wire unless it was overwritten for the request sending it: a
//! WRITE payload is filled by `read_exact` before it is used, and a READ
//! reply carries only the pieces the export filled, never a hole and
//! nothing at all when the read failed (`execute.rs`, `reply.rs`).
//!
//! Requests under 64 KiB do not use the pool (see [`MIN_POOLED_LEN`]).
//!
//! Bounds: the pool keeps at most `max_idle_buffers` buffers and
//! `max_idle_bytes` bytes idle, keeps no buffer larger than `max_buffer`,
//! and never lets idle plus in-use buffers exceed the connection's
//! in-flight byte budget when it keeps or makes a buffer (idle ones are
//! dropped first to make room). Buffers in use are the requests' own,
//! already bounded by the byte permits. A connection that waits longer than
//! [`RELEASE_IDLE_AFTER`] for its next request frees all its idle buffers
//! (`first_byte` in `mod.rs`), so an idle client holds none.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::config::ServerConfig;

/// Largest buffer kept for reuse: requests bigger than this are rare
/// (clients split large I/O into a few MiB at most), and keeping them would
/// hold that much memory for every idle connection.
const MAX_KEPT_BUFFER: usize = 4 * 1024 * 1024;

/// Smaller requests get a plain buffer: malloc serves them from memory it
/// already holds (no mmap, no page faults) and zeroing a few KiB costs less
/// than a trip through the pool's lock, which the workers and the writer
/// would contend for at tens of thousands of 4 KiB requests a second.
const MIN_POOLED_LEN: usize = 64 * 1024;

/// Most bytes one connection keeps idle: enough for 1 MiB requests at
/// iodepth 32.
const MAX_IDLE_BYTES: usize = 32 * 1024 * 1024;

/// How long a connection may wait for its next request before its idle
/// buffers are freed. A busy client sends its next request within
/// microseconds; one that has been quiet this long is idle (a mounted
/// filesystem nobody writes to, a paused VM), and a node may serve hundreds
/// of those: each would otherwise hold up to [`MAX_IDLE_BYTES`] for nothing.
pub(super) const RELEASE_IDLE_AFTER: std::time::Duration = std::time::Duration::from_secs(2);

/// What a pool may keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct PoolLimits {
    pub(super) max_idle_buffers: usize,
    pub(super) max_idle_bytes: usize,
    /// Largest single buffer kept.
    pub(super) max_buffer: usize,
    /// Idle plus in-use bytes (capacities) the pool keeps or makes room for.
    pub(super) budget: usize,
}

impl PoolLimits {
    /// The limits for a connection: as many idle buffers as requests may be
    /// in flight, within the in-flight byte budget.
    pub(super) fn for_connection(config: &ServerConfig, byte_budget: u32) -> Self {
        let budget = byte_budget as usize;
        PoolLimits {
            max_idle_buffers: config.max_in_flight.max(1),
            max_idle_bytes: MAX_IDLE_BYTES.min(budget),
            max_buffer: MAX_KEPT_BUFFER.min(config.max_payload as usize),
            budget,
        }
    }
}

/// A connection's idle payload buffers.
pub(super) struct BufferPool {
    state: Mutex<PoolState>,
    limits: PoolLimits,
}

#[derive(Default)]
struct PoolState {
    idle: Vec<Vec<u8>>,
    /// Sum of the capacities in `idle`.
    idle_bytes: usize,
    /// Sum of the capacities of this pool's buffers in use.
    out_bytes: usize,
}

impl BufferPool {
    pub(super) fn new(limits: PoolLimits) -> Arc<Self> {
        Arc::new(BufferPool {
            state: Mutex::new(PoolState::default()),
            limits,
        })
    }

    // Nothing panics while the lock is held (Vec bookkeeping only), so a
    // poisoned lock still guards consistent state.
    fn lock(&self) -> MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A buffer of exactly `len` bytes. Its contents are unspecified (zeros
    /// or an earlier request's bytes): the caller overwrites what it sends.
    pub(super) fn take(self: &Arc<Self>, len: usize) -> Buffer {
        if len < MIN_POOLED_LEN {
            return Buffer::from(vec![0u8; len]);
        }
        let mut evicted = Vec::new();
        let reused = {
            let mut st = self.lock();
            match best_fit(&st.idle, len) {
                Some(i) => {
                    let buf = st.idle.swap_remove(i);
                    st.idle_bytes -= buf.capacity();
                    st.out_bytes += buf.capacity();
                    Some(buf)
                }
                None => {
                    // Make room within the budget before allocating.
                    while st.idle_bytes + st.out_bytes + len > self.limits.budget {
                        let Some(old) = st.idle.pop() else { break };
                        st.idle_bytes -= old.capacity();
                        evicted.push(old);
                    }
                    st.out_bytes += len;
                    None
                }
            }
        };
        // Freed outside the lock: returning 1 MiB to the OS is a syscall.
        drop(evicted);
        let data = match reused {
            Some(mut buf) => {
                // Within capacity: no reallocation; zeroes only bytes past
                // the buffer's current length.
                buf.resize(len, 0);
                buf
            }
            None => vec![0u8; len],
        };
        Buffer {
            data,
            pool: Some(self.clone()),
        }
    }

    fn give_back(&self, buf: Vec<u8>) {
        let cap = buf.capacity();
        let mut st = self.lock();
        st.out_bytes = st.out_bytes.saturating_sub(cap);
        let l = &self.limits;
        let keep = cap > 0
            && cap <= l.max_buffer
            && st.idle.len() < l.max_idle_buffers
            && st.idle_bytes + cap <= l.max_idle_bytes
            && st.idle_bytes + st.out_bytes + cap <= l.budget;
        if keep {
            st.idle_bytes += cap;
            st.idle.push(buf);
            return;
        }
        drop(st);
        drop(buf);
    }

    /// Frees every idle buffer (see [`RELEASE_IDLE_AFTER`]); buffers in use
    /// are kept, and the pool fills again as requests come back.
    pub(super) fn release_idle(&self) {
        let idle = {
            let mut st = self.lock();
            st.idle_bytes = 0;
            std::mem::take(&mut st.idle)
        };
        // Freed outside the lock, like evictions.
        drop(idle);
    }

    /// (idle buffers, idle bytes, bytes in use).
    #[cfg(test)]
    pub(super) fn usage(&self) -> (usize, usize, usize) {
        let st = self.lock();
        (st.idle.len(), st.idle_bytes, st.out_bytes)
    }
}

/// The idle buffer to reuse for `len` bytes: one that holds `len` bytes
/// without reallocating, preferring one already that long (nothing to zero),
/// then the smallest (so large buffers stay for large requests).
fn best_fit(idle: &[Vec<u8>], len: usize) -> Option<usize> {
    idle.iter()
        .enumerate()
        .filter(|(_, b)| b.capacity() >= len)
        .min_by_key(|(_, b)| (b.len() < len, b.capacity()))
        .map(|(i, _)| i)
}

/// A request's payload: a WRITE's data or a READ's reply data. Derefs to
/// its bytes; goes back to its pool (if it has one) when dropped.
pub struct Buffer {
    data: Vec<u8>,
    pool: Option<Arc<BufferPool>>,
}

impl From<Vec<u8>> for Buffer {
    /// A buffer outside any pool, freed when dropped.
    fn from(data: Vec<u8>) -> Self {
        Buffer { data, pool: None }
    }
}

impl Deref for Buffer {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.data
    }
}

impl DerefMut for Buffer {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.data
    }
}

impl fmt::Debug for Buffer {
    // The bytes are client data; their length is what a log needs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Buffer({} bytes)", self.data.len())
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take() {
            pool.give_back(std::mem::take(&mut self.data));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> PoolLimits {
        PoolLimits {
            max_idle_buffers: 4,
            max_idle_bytes: 1 << 20,
            max_buffer: 256 * 1024,
            budget: 2 << 20,
        }
    }

    const K64: usize = 64 * 1024;

    #[test]
    fn a_returned_buffer_is_reused_without_reallocating() {
        let pool = BufferPool::new(limits());
        let mut a = pool.take(K64);
        a.fill(0xAB);
        let ptr = a.as_ptr();
        drop(a);
        assert_eq!(pool.usage(), (1, K64, 0));
        let b = pool.take(K64);
        assert_eq!(b.as_ptr(), ptr);
        assert_eq!(b.len(), K64);
        assert_eq!(pool.usage(), (0, 0, K64));
    }

    #[test]
    fn small_requests_bypass_the_pool() {
        let pool = BufferPool::new(limits());
        let a = pool.take(MIN_POOLED_LEN - 1);
        assert_eq!(pool.usage(), (0, 0, 0));
        drop(a);
        assert_eq!(pool.usage(), (0, 0, 0));
    }

    #[test]
    fn a_longer_reused_buffer_is_cut_and_a_shorter_one_extended_with_zeros() {
        let pool = BufferPool::new(limits());
        let mut a = pool.take(2 * K64);
        a.fill(0xAB);
        drop(a);
        let mut b = pool.take(K64 + 100);
        assert_eq!(b.len(), K64 + 100);
        b.fill(0xCD);
        drop(b);
        // Capacity 128 KiB, length 64 KiB + 100: the added bytes are zeroed anew.
        let c = pool.take(2 * K64);
        assert_eq!(c.len(), 2 * K64);
        assert!(c[..K64 + 100].iter().all(|&x| x == 0xCD));
        assert!(c[K64 + 100..].iter().all(|&x| x == 0));
    }

    #[test]
    fn prefers_a_buffer_already_long_enough_then_the_smallest() {
        let pool = BufferPool::new(limits());
        let (big, small) = (pool.take(3 * K64), pool.take(K64));
        let (big_ptr, small_ptr) = (big.as_ptr(), small.as_ptr());
        drop(big);
        drop(small);
        let first = pool.take(K64);
        assert_eq!(first.as_ptr(), small_ptr);
        let second = pool.take(K64);
        assert_eq!(second.as_ptr(), big_ptr);
        assert_eq!(second.len(), K64);
    }

    #[test]
    fn idle_buffers_stay_within_count_bytes_and_size_caps() {
        let l = limits();
        let pool = BufferPool::new(l);
        // More buffers than may stay idle, all in use at once.
        let many: Vec<_> = (0..10).map(|_| pool.take(128 * 1024)).collect();
        drop(many);
        let (count, bytes, out) = pool.usage();
        assert_eq!(count, l.max_idle_buffers);
        assert!(bytes <= l.max_idle_bytes);
        assert_eq!(out, 0);
        // Over the size cap: never kept.
        drop(pool.take(l.max_buffer + 1));
        assert_eq!(pool.usage().0, l.max_idle_buffers);
        // Idle bytes cap, with small buffers so the count cap is not what stops it.
        let pool = BufferPool::new(PoolLimits {
            max_idle_buffers: 100,
            ..l
        });
        let many: Vec<_> = (0..10).map(|_| pool.take(256 * 1024)).collect();
        drop(many);
        assert_eq!(pool.usage(), (4, 1 << 20, 0));
    }

    #[test]
    fn making_a_buffer_drops_idle_ones_to_stay_within_the_budget() {
        let pool = BufferPool::new(PoolLimits {
            max_idle_buffers: 8,
            max_idle_bytes: 1 << 20,
            max_buffer: 1 << 20,
            budget: 1 << 20,
        });
        let held = pool.take(512 * 1024);
        drop(pool.take(256 * 1024));
        drop(pool.take(100 * 1024)); // reuses the 256 KiB one
        assert_eq!(pool.usage(), (1, 256 * 1024, 512 * 1024));
        // 512 KiB more needs room: the idle buffer goes.
        let second = pool.take(512 * 1024);
        assert_eq!(pool.usage(), (0, 0, 1 << 20));
        drop((held, second));
        let (_, idle, out) = pool.usage();
        assert!(idle <= 1 << 20);
        assert_eq!(out, 0);
    }

    #[test]
    fn a_buffer_outside_a_pool_is_just_freed() {
        let b = Buffer::from(vec![1, 2, 3]);
        assert_eq!(&b[..], &[1, 2, 3]);
        assert_eq!(format!("{b:?}"), "Buffer(3 bytes)");
    }
}

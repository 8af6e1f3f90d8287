//! The queue between a connection's reader and its worker threads, and the
//! pool of those threads.
//!
//! A plain `Mutex<VecDeque>` + `Condvar` rather than a channel because the
//! reader needs one thing a channel does not tell it: whether some worker is
//! idle. Only then is a wake-up needed; a busy worker takes the next job
//! when it comes back to the queue, without any futex call, and the pool
//! grows (up to its cap) only when jobs wait with no idle worker to take
//! them: a connection whose requests finish quickly keeps a few threads
//! however many it is allowed.

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

/// Name of every worker thread (visible in `top -H`, `perf`, and used by the
/// tests to check that no worker outlives its connection).
pub const WORKER_THREAD_NAME: &str = "nbd-worker";

pub(super) struct WorkQueue<T> {
    state: Mutex<State<T>>,
    ready: Condvar,
}

struct State<T> {
    jobs: VecDeque<T>,
    /// Workers blocked in `pop` (including ones notified but not yet
    /// running again).
    idle: usize,
    closed: bool,
}

impl<T> WorkQueue<T> {
    pub(super) fn new() -> Self {
        WorkQueue {
            state: Mutex::new(State {
                jobs: VecDeque::new(),
                idle: 0,
                closed: false,
            }),
            ready: Condvar::new(),
        }
    }

    // Nothing panics while the lock is held (only VecDeque operations), so a
    // poisoned lock still guards consistent state.
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a job; returns true if more jobs now wait than idle workers
    /// can take, i.e. another worker would help.
    pub(super) fn push(&self, job: T) -> bool {
        let mut st = self.lock();
        st.jobs.push_back(job);
        let (idle, waiting) = (st.idle, st.jobs.len());
        drop(st);
        if idle > 0 {
            self.ready.notify_one();
        }
        waiting > idle
    }

    /// Next job; `None` once the queue is closed *and* empty, so jobs queued
    /// before `close` are still handed out.
    pub(super) fn pop(&self) -> Option<T> {
        let mut st = self.lock();
        loop {
            if let Some(job) = st.jobs.pop_front() {
                return Some(job);
            }
            if st.closed {
                return None;
            }
            st.idle += 1;
            st = self.ready.wait(st).unwrap_or_else(|e| e.into_inner());
            st.idle -= 1;
        }
    }

    pub(super) fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
    }
}

/// Up to `max` named threads, started on demand, each running `work` on
/// jobs from one queue until it is closed and drained.
///
/// Dropping the pool closes the queue (without joining), so even if the
/// connection's future is dropped mid-way (the server cutting connections
/// after the shutdown grace period) every worker finishes the queued jobs
/// and exits: none is left waiting forever.
pub(super) struct Pool<T: Send + 'static> {
    queue: Arc<WorkQueue<T>>,
    threads: Vec<JoinHandle<()>>,
    max: usize,
    work: Arc<dyn Fn(T) + Send + Sync>,
}

impl<T: Send + 'static> Pool<T> {
    pub(super) fn new(max: usize, work: Arc<dyn Fn(T) + Send + Sync>) -> Self {
        Pool {
            queue: Arc::new(WorkQueue::new()),
            threads: Vec::new(),
            max: max.max(1),
            work,
        }
    }

    /// Queues a job and starts a worker if it would otherwise wait. Fails
    /// only if no worker exists and none can be started (the job would
    /// never run); failing to add one more worker to a running pool is not
    /// an error, the existing ones will get to the job.
    pub(super) fn submit(&mut self, job: T) -> io::Result<()> {
        let wants_worker = self.queue.push(job);
        if (wants_worker && self.threads.len() < self.max) || self.threads.is_empty() {
            let queue = self.queue.clone();
            let work = self.work.clone();
            let spawned = std::thread::Builder::new()
                .name(WORKER_THREAD_NAME.into())
                .spawn(move || {
                    while let Some(job) = queue.pop() {
                        work(job);
                    }
                });
            match spawned {
                Ok(t) => self.threads.push(t),
                Err(e) if self.threads.is_empty() => return Err(e),
                Err(e) => tracing::debug!(error = %e, "cannot start another NBD worker"),
            }
        }
        Ok(())
    }

    #[cfg(test)]
    pub(super) fn queue_for_test(&self) -> Arc<WorkQueue<T>> {
        self.queue.clone()
    }

    /// Threads started so far.
    #[cfg(test)]
    pub(super) fn threads(&self) -> usize {
        self.threads.len()
    }

    /// Closes the queue: the workers run what is queued, then exit. Returns
    /// their handles for the caller to join (off the async runtime).
    pub(super) fn close(mut self) -> Vec<JoinHandle<()>> {
        self.queue.close();
        std::mem::take(&mut self.threads)
    }
}

impl<T: Send + 'static> Drop for Pool<T> {
    fn drop(&mut self) {
        self.queue.close();
    }
}

//! The per-connection worker threads: a backend panic is answered and the
//! workers survive it, requests of one connection really run concurrently
//! (and on no more threads than configured), and shutdown or a client
//! hang-up with requests queued ends with every worker thread gone.
//!
//! The tests count the process's `nbd-worker` threads, so they take a lock
//! and never run at the same time as each other.

mod common;
use common::*;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use multisnap_nbd::testing::{Hook, MemExport, MemProvider};
use multisnap_nbd::transmission::WORKER_THREAD_NAME;
use multisnap_nbd::{serve_tcp, CancellationToken, NbdError, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const CMD_READ: u16 = 0;
const CMD_WRITE: u16 = 1;
const EIO: u32 = 5;
const BLOCK: u64 = 4096;

struct Server {
    addr: String,
    export: Arc<MemExport>,
    shutdown: CancellationToken,
    task: JoinHandle<std::io::Result<()>>,
}

impl Server {
    /// A 512 KiB export `disk` whose 4 KiB block `i` holds the byte `i + 1`, calling
    /// `hook(op, offset)` before every read and write.
    async fn start(workers: usize, hook: Hook) -> Server {
        let export = MemExport::new(128 * BLOCK, false).with_hook(hook);
        for i in 0..128 {
            export.fill(i * BLOCK, BLOCK, i as u8 + 1);
        }
        let export = Arc::new(export);
        let mut provider = MemProvider::new();
        provider.add("disk", export.clone(), None);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let shutdown = CancellationToken::new();
        let config = ServerConfig {
            workers_per_connection: workers,
            ..ServerConfig::default()
        };
        let task = tokio::spawn(serve_tcp(
            listener,
            Arc::new(provider),
            config,
            shutdown.clone(),
        ));
        Server {
            addr,
            export,
            shutdown,
            task,
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .expect("server did not shut down within 20 s")
            .expect("server task panicked")
            .expect("server returned an error");
    }
}

/// Live threads of this process named like the NBD workers.
fn worker_threads() -> usize {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    dir.filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|c| c.trim_end() == WORKER_THREAD_NAME)
        .count()
}

/// Waits up to 10 s for `f` to hold.
async fn eventually(what: &str, f: impl Fn() -> bool) {
    for _ in 0..1000 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Reads one simple reply, with its 4 KiB payload if it is a successful
/// READ: (error, handle, data).
async fn read_reply(s: &mut TcpStream, is_read: bool) -> (u32, u64, Vec<u8>) {
    let (err, handle) = tokio::time::timeout(Duration::from_secs(20), read_simple_reply(s))
        .await
        .expect("no reply within 20 s")
        .expect("reply");
    let mut data = Vec::new();
    if is_read && err == 0 {
        data = vec![0u8; BLOCK as usize];
        s.read_exact(&mut data).await.expect("read payload");
    }
    (err, handle, data)
}

async fn send_write(s: &mut TcpStream, handle: u64, offset: u64, byte: u8) {
    send_request(s, 0, CMD_WRITE, handle, offset, BLOCK as u32).await;
    s.write_all(&vec![byte; BLOCK as usize])
        .await
        .expect("send payload");
}

/// Blocks backend calls until `open`, counting how many are inside at once.
#[derive(Default)]
struct Gate {
    state: Mutex<GateState>,
    cv: Condvar,
    entered: AtomicUsize,
}

#[derive(Default)]
struct GateState {
    inside: usize,
    max_inside: usize,
    open: bool,
}

impl Gate {
    /// Waits until the gate opens (at most 10 s, then fails the call);
    /// opens it itself when `open_at` calls are inside at once.
    fn pass(&self, open_at: Option<usize>) -> Result<(), NbdError> {
        self.entered.fetch_add(1, Ordering::SeqCst);
        let mut st = self.state.lock().unwrap();
        st.inside += 1;
        st.max_inside = st.max_inside.max(st.inside);
        if open_at.is_some_and(|k| st.inside >= k) {
            st.open = true;
            self.cv.notify_all();
        }
        let (mut st, _) = self
            .cv
            .wait_timeout_while(st, Duration::from_secs(10), |s| !s.open)
            .unwrap();
        st.inside -= 1;
        if st.open {
            Ok(())
        } else {
            Err(NbdError::Io {
                op: "gate",
                offset: 0,
                source: std::io::Error::from_raw_os_error(5),
            })
        }
    }

    fn open(&self) {
        self.state.lock().unwrap().open = true;
        self.cv.notify_all();
    }

    fn max_inside(&self) -> usize {
        self.state.lock().unwrap().max_inside
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_panic_is_eio_and_the_workers_survive_it() {
    let _serial = SERIAL.lock().await;
    const PANIC_AT: u64 = 7 * BLOCK;
    let srv = Server::start(
        2,
        Box::new(|op, offset| {
            if op == "write" && offset == PANIC_AT {
                panic!("injected backend panic");
            }
            Ok(())
        }),
    )
    .await;
    let mut s = raw_go(&srv.addr, "disk").await;
    // More panics than workers: if a panic killed its worker, the pool
    // would be empty before the loop ends and the next request would hang.
    for i in 0..5 {
        send_write(&mut s, 100 + i, PANIC_AT, 0xee).await;
        let (err, h, _) = read_reply(&mut s, false).await;
        assert_eq!((err, h), (EIO, 100 + i));
    }
    send_write(&mut s, 1, 0, 0xab).await;
    assert_eq!(read_reply(&mut s, false).await, (0, 1, vec![]));
    send_request(&mut s, 0, CMD_READ, 2, 0, BLOCK as u32).await;
    assert_eq!(
        read_reply(&mut s, true).await,
        (0, 2, vec![0xab; BLOCK as usize])
    );
    // The panicking write changed nothing.
    let block = &srv.export.snapshot()[PANIC_AT as usize..(PANIC_AT + BLOCK) as usize];
    assert!(block.iter().all(|&b| b == 8));
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_of_one_connection_run_concurrently_on_the_workers() {
    let _serial = SERIAL.lock().await;
    const WORKERS: usize = 4;
    const N: u64 = 64;
    let gate = Arc::new(Gate::default());
    let g = gate.clone();
    // No read completes until WORKERS of them are inside the backend at
    // once; then every read is slow, so replies come back out of order.
    let srv = Server::start(
        WORKERS,
        Box::new(move |op, _| {
            if op == "read" {
                g.pass(Some(WORKERS))?;
                std::thread::sleep(Duration::from_millis(2));
            }
            Ok(())
        }),
    )
    .await;
    let mut s = raw_go(&srv.addr, "disk").await;
    // Blocks in reverse order, so a handle/data mix-up cannot go unnoticed.
    for i in 0..N {
        send_request(
            &mut s,
            0,
            CMD_READ,
            1000 + i,
            (N - 1 - i) * BLOCK,
            BLOCK as u32,
        )
        .await;
    }
    let mut seen = vec![false; N as usize];
    for _ in 0..N {
        let (err, h, data) = read_reply(&mut s, true).await;
        assert_eq!(
            err, 0,
            "read {h} failed: the backend never saw {WORKERS} reads at once"
        );
        let i = h
            .checked_sub(1000)
            .filter(|&i| i < N)
            .expect("unknown handle");
        assert!(!seen[i as usize], "handle {h} answered twice");
        seen[i as usize] = true;
        let byte = (N - 1 - i) as u8 + 1;
        assert!(data.iter().all(|&b| b == byte), "wrong data for handle {h}");
    }
    // Concurrent, and never on more threads than configured.
    assert_eq!(gate.max_inside(), WORKERS);
    assert_eq!(worker_threads(), WORKERS);
    srv.stop().await;
    assert_eq!(worker_threads(), 0, "worker threads outlived the server");
}

/// A server with two workers whose backend holds every read at a gate, and a
/// connection that sent `n` reads: two are inside the backend, the rest
/// queued behind them (the pause lets the reader take every header off the
/// socket).
async fn two_workers_with_reads_queued(n: u64) -> (Server, Arc<Gate>, TcpStream) {
    let gate = Arc::new(Gate::default());
    let g = gate.clone();
    let srv = Server::start(
        2,
        Box::new(move |op, _| {
            if op == "read" {
                g.pass(None)?;
            }
            Ok(())
        }),
    )
    .await;
    let mut s = raw_go(&srv.addr, "disk").await;
    for i in 0..n {
        send_request(&mut s, 0, CMD_READ, i, i * BLOCK, BLOCK as u32).await;
    }
    eventually("two reads inside the backend", || {
        gate.entered.load(Ordering::SeqCst) == 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    (srv, gate, s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_queued_requests_then_the_workers_are_gone() {
    let _serial = SERIAL.lock().await;
    const N: u64 = 16;
    let (srv, gate, mut s) = two_workers_with_reads_queued(N).await;
    assert_eq!(worker_threads(), 2);

    srv.shutdown.cancel();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!srv.task.is_finished(), "returned with requests in flight");
    gate.open();
    let mut seen = vec![false; N as usize];
    for _ in 0..N {
        let (err, h, data) = read_reply(&mut s, true).await;
        assert_eq!(err, 0);
        let i = h as usize;
        assert!(i < N as usize && !seen[i], "bad or repeated handle {h}");
        seen[i] = true;
        assert!(data.iter().all(|&b| b == i as u8 + 1));
    }
    assert!(closed_by_server(&mut s).await);
    srv.stop().await;
    assert_eq!(worker_threads(), 0, "worker threads outlived shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_hanging_up_with_requests_queued_leaves_no_worker_behind() {
    let _serial = SERIAL.lock().await;
    const N: u64 = 16;
    let (srv, gate, s) = two_workers_with_reads_queued(N).await;
    drop(s);
    gate.open();
    // The connection ends by itself (no shutdown): the workers run the
    // queue, their replies have nowhere to go, and they exit.
    eventually("the workers to exit", || worker_threads() == 0).await;
    assert_eq!(gate.entered.load(Ordering::SeqCst), N as usize);
    // The server is still serving.
    let mut s = raw_go(&srv.addr, "disk").await;
    send_request(&mut s, 0, CMD_READ, 9, 0, BLOCK as u32).await;
    assert_eq!(
        read_reply(&mut s, true).await,
        (0, 9, vec![1; BLOCK as usize])
    );
    drop(s);
    srv.stop().await;
}

//! One ublk device: a server thread owns its control handle (libublk keeps the control
//! io_uring per thread) and runs one thread per hardware queue; each queue thread takes the
//! kernel's requests from its io_uring, serves them synchronously against the target and
//! commits the result with the next fetch.

use crate::{
    check_available, serve, BlockTarget, IoEvent, IoObserver, Request, UblkError, UblkOptions,
};
use libublk::ctrl::{UblkCtrl, UblkCtrlBuilder};
use libublk::io::{UblkDev, UblkIOCtx, UblkQueue};
use libublk::{BufDesc, BufDescList, UblkFlags, UblkIORes};
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A started `/dev/ublkbN`. Dropping it stops and removes the device.
pub struct UblkDevice {
    id: u32,
    server: Option<JoinHandle<()>>,
}

/// How long the kernel may take to bring a device up.
const START_TIMEOUT: Duration = Duration::from_secs(60);

impl UblkDevice {
    /// Adds (or, with `opts.recover_id`, recovers) a device serving `target`, and returns
    /// once `/dev/ublkbN` is live. `observer`, if any, sees every finished request.
    pub fn start(
        target: Arc<dyn BlockTarget>,
        opts: &UblkOptions,
        observer: Option<Arc<dyn IoObserver>>,
    ) -> Result<UblkDevice, UblkError> {
        opts.validate()?;
        check_available()?;
        let size = target.size();
        if size == 0 || !size.is_multiple_of(512) {
            return Err(UblkError::InvalidOptions(format!(
                "device size {size} is not a positive multiple of 512"
            )));
        }
        let (tx, rx) = mpsc::channel();
        let opts = opts.clone();
        let server = std::thread::Builder::new()
            .name("ublk-server".into())
            .spawn(move || run_server(target, opts, observer, tx))
            .map_err(|e| UblkError::Driver {
                op: "spawn server thread",
                detail: e.to_string(),
            })?;
        match rx.recv_timeout(START_TIMEOUT) {
            Ok(Ok(id)) => Ok(UblkDevice {
                id,
                server: Some(server),
            }),
            Ok(Err(e)) => {
                let _ = server.join();
                Err(e)
            }
            Err(mpsc::RecvTimeoutError::Timeout) => Err(UblkError::StartFailed(format!(
                "the device did not start within {}s",
                START_TIMEOUT.as_secs()
            ))),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let _ = server.join();
                Err(UblkError::StartFailed(
                    "the server thread ended without a device".into(),
                ))
            }
        }
    }

    /// The device id N of `/dev/ublkbN` (and `/dev/ublkcN`).
    pub fn id(&self) -> u32 {
        self.id
    }

    pub fn block_path(&self) -> PathBuf {
        PathBuf::from(format!("/dev/ublkb{}", self.id))
    }

    /// Whether someone holds the block device exclusively (a mounted filesystem does).
    pub fn in_use(&self) -> bool {
        use std::os::unix::fs::OpenOptionsExt;
        match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_EXCL)
            .open(self.block_path())
        {
            Ok(_) => false,
            Err(e) => e.raw_os_error() == Some(libc::EBUSY),
        }
    }

    /// Stops and removes the device. Unless `force`, refuses while it is in use: stopping a
    /// device under a mounted filesystem fails all its further I/O.
    pub fn stop(mut self, force: bool) -> Result<(), UblkError> {
        if !force && self.in_use() {
            return Err(UblkError::DeviceBusy(self.id));
        }
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<(), UblkError> {
        let Some(server) = self.server.take() else {
            return Ok(());
        };
        let ctrl = UblkCtrl::new_simple(self.id as i32)
            .map_err(|e| UblkError::driver("open device for stop", e))?;
        ctrl.kill_dev()
            .map_err(|e| UblkError::driver("stop device", e))?;
        server.join().map_err(|_| UblkError::Driver {
            op: "stop device",
            detail: "the server thread panicked".into(),
        })
    }
}

impl Drop for UblkDevice {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::warn!(dev = self.id, error = %e, "ublk device not cleanly removed");
        }
    }
}

type Started = mpsc::Sender<Result<u32, UblkError>>;

fn run_server(
    target: Arc<dyn BlockTarget>,
    opts: UblkOptions,
    observer: Option<Arc<dyn IoObserver>>,
    tx: Started,
) {
    let started = tx.clone();
    if let Err(e) = serve_device(target, &opts, observer, started) {
        tracing::error!(error = %e, "ublk device server failed");
        let _ = tx.send(Err(e));
    }
}

fn serve_device(
    target: Arc<dyn BlockTarget>,
    opts: &UblkOptions,
    observer: Option<Arc<dyn IoObserver>>,
    started: Started,
) -> Result<(), UblkError> {
    let mut ctrl_flags = 0u64;
    if opts.user_recovery {
        ctrl_flags |= u64::from(libublk::sys::UBLK_F_USER_RECOVERY);
    }
    let (id, dev_flags) = match opts.recover_id {
        Some(id) => (
            i32::try_from(id).map_err(|_| UblkError::InvalidOptions(format!("device id {id}")))?,
            UblkFlags::UBLK_DEV_F_RECOVER_DEV,
        ),
        None => (-1, UblkFlags::UBLK_DEV_F_ADD_DEV),
    };
    let ctrl = UblkCtrlBuilder::default()
        .name("multisnap")
        .id(id)
        .nr_queues(opts.queues)
        .depth(opts.depth)
        .io_buf_bytes(opts.max_io_bytes)
        .ctrl_flags(ctrl_flags)
        .dev_flags(dev_flags)
        .build()
        .map_err(|e| UblkError::driver("add device", e))?;
    if opts.recover_id.is_some() {
        ctrl.start_user_recover()
            .map_err(|e| UblkError::driver("start user recovery", e))?;
    }
    let dev_id = ctrl.dev_info().dev_id;
    let span = tracing::info_span!("ublk", dev = dev_id);
    let _enter = span.enter();
    let (size, read_only, max_io) = (target.size(), target.read_only(), opts.max_io_bytes);
    let set_params = move |dev: &mut UblkDev| {
        set_params(dev, size, read_only, max_io);
        Ok(())
    };
    let serve_queue_fn =
        move |qid: u16, dev: &UblkDev| serve_queue(qid, dev, &target, observer.as_ref());
    let on_started = move |c: &UblkCtrl| {
        tracing::info!(dev = c.dev_info().dev_id, "ublk device started");
        let _ = started.send(Ok(c.dev_info().dev_id));
    };
    ctrl.run_target(set_params, serve_queue_fn, on_started)
        .map_err(|e| UblkError::driver("start device", e))?;
    // The queues are down: the device was stopped. Remove it (a recovered handle would not
    // on its own); "already gone" is fine.
    if let Err(e) = ctrl.del_dev() {
        tracing::debug!(error = %e, "ublk delete after stop");
    }
    tracing::info!("ublk device removed");
    Ok(())
}

/// Block parameters: the size, a volatile cache with FUA (so the kernel sends FLUSH and FUA
/// and the store's flush semantics hold), read-only for read-only targets, and discard and
/// write-zeroes limits for the others.
fn set_params(dev: &mut UblkDev, size: u64, read_only: bool, max_io_bytes: u32) {
    use libublk::sys;
    dev.set_default_params(size);
    let p = &mut dev.tgt.params;
    p.basic.attrs = sys::UBLK_ATTR_VOLATILE_CACHE | sys::UBLK_ATTR_FUA;
    if read_only {
        p.basic.attrs |= sys::UBLK_ATTR_READ_ONLY;
    } else {
        p.types |= sys::UBLK_PARAM_TYPE_DISCARD;
        p.discard = sys::ublk_param_discard {
            discard_alignment: 0,
            discard_granularity: 4096,
            max_discard_sectors: 1 << 21,
            max_write_zeroes_sectors: (max_io_bytes >> 9).max(8),
            max_discard_segments: 1,
            ..Default::default()
        };
    }
}

fn serve_queue(
    qid: u16,
    dev: &UblkDev,
    target: &Arc<dyn BlockTarget>,
    observer: Option<&Arc<dyn IoObserver>>,
) {
    let dev_id = dev.dev_info.dev_id;
    let mut bufs = dev.alloc_queue_io_bufs();
    let queue = match UblkQueue::new(qid, dev)
        .and_then(|q| q.submit_fetch_commands_unified(BufDescList::Slices(Some(&bufs))))
    {
        Ok(q) => q,
        Err(e) => {
            tracing::error!(dev = dev_id, queue = qid, error = %e, "ublk queue setup failed");
            return;
        }
    };
    let target = Arc::clone(target);
    let observer = observer.cloned();
    queue.wait_and_handle_io(move |q: &UblkQueue, tag: u16, _io: &UblkIOCtx| {
        let iod = q.get_iod(tag);
        let req = Request::decode(iod.op_flags, iod.start_sector, iod.nr_sectors);
        let Some(buf) = bufs.get_mut(usize::from(tag)) else {
            tracing::error!(
                dev = dev_id,
                queue = qid,
                tag,
                "request tag beyond the queue depth"
            );
            return;
        };
        let t0 = Instant::now();
        let res = {
            let _span = tracing::trace_span!(
                "ublk_io",
                dev = dev_id,
                queue = qid,
                tag,
                op = req.op_name()
            )
            .entered();
            serve(&*target, req, buf.as_mut_slice())
        };
        if res < 0 {
            tracing::warn!(dev = dev_id, ?req, errno = -res, "ublk request failed");
        }
        if let Some(o) = &observer {
            o.request_finished(&IoEvent {
                op: req.op_name(),
                bytes: req.bytes(),
                errno: (res < 0).then_some(-res),
                latency: t0.elapsed(),
            });
        }
        if let Err(e) = q.complete_io_cmd_unified(
            tag,
            BufDesc::Slice(buf.as_slice()),
            Ok(UblkIORes::Result(res)),
        ) {
            tracing::error!(dev = dev_id, queue = qid, tag, error = %e, "ublk completion failed");
        }
    });
    tracing::debug!(dev = dev_id, queue = qid, "ublk queue down");
}

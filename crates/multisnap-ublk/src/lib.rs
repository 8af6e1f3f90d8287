//! The ublk frontend: serves a [`BlockTarget`] as a local block device `/dev/ublkbN` through
//! the Linux ublk driver (`ublk_drv`, Linux 6.0+), with libublk handling the io_uring
//! protocol. Independent of the store: the agent implements [`BlockTarget`] for a volume's
//! origin or one of its snapshots, the way it implements the NBD crate's `Export`.
//!
//! Requests map onto the target one to one: READ and WRITE, FLUSH (the device advertises a
//! volatile write cache, so the kernel sends flushes), FUA writes (a write, then a flush),
//! DISCARD and WRITE_ZEROES (advertised with the discard parameters). A read-only target is a
//! read-only disk (`UBLK_ATTR_READ_ONLY`), and any write reaching it anyway gets EROFS.
//!
//! Devices are made with `UBLK_F_USER_RECOVERY` unless told otherwise: when the serving
//! process dies, the kernel keeps `/dev/ublkbN` and queues its I/O until a new process
//! recovers the device ([`UblkOptions::recover_id`]), so a mounted filesystem survives an
//! agent restart.

mod device;

pub use device::UblkDevice;
use std::io;

/// The ublk driver's control device; absent when the kernel has no ublk driver loaded.
pub const CONTROL_PATH: &str = "/dev/ublk-control";

/// Everything the ublk frontend can fail with.
#[derive(Debug, thiserror::Error)]
pub enum UblkError {
    #[error(
        "{CONTROL_PATH} is absent: this kernel has no ublk driver loaded \
         (Linux 6.0+ with CONFIG_BLK_DEV_UBLK; try `modprobe ublk_drv`)"
    )]
    ControlMissing,
    #[error("invalid ublk options: {0}")]
    InvalidOptions(String),
    #[error("/dev/ublkb{0} is in use (mounted or held open); unmount or close it first")]
    DeviceBusy(u32),
    #[error("ublk {op} failed: {detail}")]
    Driver { op: &'static str, detail: String },
    #[error("the ublk device server stopped before the device started: {0}")]
    StartFailed(String),
}

impl UblkError {
    fn driver(op: &'static str, e: libublk::UblkError) -> UblkError {
        let detail = match e {
            libublk::UblkError::OtherError(errno) | libublk::UblkError::UringIOError(errno) => {
                format!("{} ({e})", io::Error::from_raw_os_error(errno.abs()))
            }
            other => other.to_string(),
        };
        UblkError::Driver { op, detail }
    }
}

/// Whether this kernel offers ublk at all.
pub fn check_available() -> Result<(), UblkError> {
    if std::path::Path::new(CONTROL_PATH).exists() {
        Ok(())
    } else {
        Err(UblkError::ControlMissing)
    }
}

/// How a device is set up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UblkOptions {
    /// Hardware queues, each served by its own thread (1..=16).
    pub queues: u16,
    /// Requests in flight per queue (1..=1024).
    pub depth: u16,
    /// Largest single request, in bytes (a multiple of 4 KiB, up to 1 MiB).
    pub max_io_bytes: u32,
    /// Keep the device (and queue its I/O) if the serving process dies, for recovery.
    pub user_recovery: bool,
    /// Recover this existing device (left by a dead process) instead of adding a new one.
    pub recover_id: Option<u32>,
}

impl Default for UblkOptions {
    fn default() -> Self {
        UblkOptions {
            queues: 1,
            depth: 64,
            max_io_bytes: 512 << 10,
            user_recovery: true,
            recover_id: None,
        }
    }
}

impl UblkOptions {
    pub fn validate(&self) -> Result<(), UblkError> {
        let bad = |m: String| Err(UblkError::InvalidOptions(m));
        if !(1..=16).contains(&self.queues) {
            return bad(format!("queues must be 1..=16, not {}", self.queues));
        }
        if !(1..=1024).contains(&self.depth) {
            return bad(format!("depth must be 1..=1024, not {}", self.depth));
        }
        if self.max_io_bytes == 0
            || self.max_io_bytes > 1 << 20
            || !self.max_io_bytes.is_multiple_of(4096)
        {
            return bad(format!(
                "max I/O size must be a multiple of 4096 up to 1 MiB, not {}",
                self.max_io_bytes
            ));
        }
        Ok(())
    }
}

/// What a ublk device serves: a volume's origin or snapshot, in the agent.
pub trait BlockTarget: Send + Sync + 'static {
    /// Size in bytes (a multiple of 512).
    fn size(&self) -> u64;
    fn read_only(&self) -> bool;
    fn read(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Makes every completed write durable.
    fn flush(&self) -> io::Result<()>;
    /// A hint that the range is no longer needed; may do nothing.
    fn discard(&self, offset: u64, len: u64) -> io::Result<()>;
    /// The range must read back as zeroes afterwards.
    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()>;
}

/// A finished request, reported to an [`IoObserver`] (the agent's metrics).
#[derive(Clone, Copy, Debug)]
pub struct IoEvent {
    /// `read`, `write`, `flush`, `discard`, `write_zeroes` or `unsupported`.
    pub op: &'static str,
    /// Payload for read/write, the range for discard/write-zeroes, 0 for flush.
    pub bytes: u64,
    /// The errno the kernel got, if the request failed.
    pub errno: Option<i32>,
    /// From taking the request off the queue to handing the result back.
    pub latency: std::time::Duration,
}

/// Sees every finished request of a device; called on the queue threads, so keep it cheap.
pub trait IoObserver: Send + Sync + 'static {
    fn request_finished(&self, event: &IoEvent);
}

/// One request from the kernel, decoded from its I/O descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    Read {
        offset: u64,
        len: usize,
    },
    Write {
        offset: u64,
        len: usize,
        fua: bool,
    },
    Flush,
    Discard {
        offset: u64,
        len: u64,
    },
    WriteZeroes {
        offset: u64,
        len: u64,
    },
    /// An operation this frontend does not serve (zoned commands, WRITE_SAME, …).
    Unsupported {
        op: u32,
    },
}

impl Request {
    /// Decodes `ublksrv_io_desc` fields: the op in the low byte of `op_flags`, flags above.
    pub fn decode(op_flags: u32, start_sector: u64, nr_sectors: u32) -> Request {
        let offset = start_sector.saturating_mul(512);
        let len = u64::from(nr_sectors) * 512;
        match op_flags & 0xff {
            libublk::sys::UBLK_IO_OP_READ => Request::Read {
                offset,
                len: len as usize,
            },
            libublk::sys::UBLK_IO_OP_WRITE => Request::Write {
                offset,
                len: len as usize,
                fua: op_flags & libublk::sys::UBLK_IO_F_FUA != 0,
            },
            libublk::sys::UBLK_IO_OP_FLUSH => Request::Flush,
            libublk::sys::UBLK_IO_OP_DISCARD => Request::Discard { offset, len },
            libublk::sys::UBLK_IO_OP_WRITE_ZEROES => Request::WriteZeroes { offset, len },
            op => Request::Unsupported { op },
        }
    }

    /// Bytes the request covers (see [`IoEvent::bytes`]).
    pub fn bytes(&self) -> u64 {
        match *self {
            Request::Read { len, .. } | Request::Write { len, .. } => len as u64,
            Request::Discard { len, .. } | Request::WriteZeroes { len, .. } => len,
            Request::Flush | Request::Unsupported { .. } => 0,
        }
    }

    pub fn op_name(&self) -> &'static str {
        match self {
            Request::Read { .. } => "read",
            Request::Write { .. } => "write",
            Request::Flush => "flush",
            Request::Discard { .. } => "discard",
            Request::WriteZeroes { .. } => "write_zeroes",
            Request::Unsupported { .. } => "unsupported",
        }
    }
}

fn errno_of(e: &io::Error) -> i32 {
    e.raw_os_error().filter(|n| *n > 0).unwrap_or(libc::EIO)
}

/// Serves one request against `target` using `buf` (the tag's I/O buffer: read data goes
/// there, write data comes from there). Returns what the kernel expects: the byte count on
/// success, `-errno` on failure. Never panics on what the kernel sends.
pub fn serve(target: &dyn BlockTarget, req: Request, buf: &mut [u8]) -> i32 {
    let size = target.size();
    let in_range = |offset: u64, len: u64| offset.checked_add(len).is_some_and(|e| e <= size);
    let done = |r: io::Result<()>, bytes: usize| match r {
        Ok(()) => i32::try_from(bytes).unwrap_or(i32::MAX),
        Err(e) => -errno_of(&e),
    };
    let writable = || {
        if target.read_only() {
            Err(io::Error::from_raw_os_error(libc::EROFS))
        } else {
            Ok(())
        }
    };
    match req {
        Request::Read { offset, len } | Request::Write { offset, len, .. }
            if len > buf.len() || !in_range(offset, len as u64) =>
        {
            -libc::EINVAL
        }
        Request::Read { offset, len } => done(target.read(offset, &mut buf[..len]), len),
        Request::Write { offset, len, fua } => {
            let r = writable()
                .and_then(|()| target.write(offset, &buf[..len]))
                .and_then(|()| if fua { target.flush() } else { Ok(()) });
            done(r, len)
        }
        Request::Flush => done(target.flush(), 0),
        Request::Discard { offset, len } | Request::WriteZeroes { offset, len }
            if !in_range(offset, len) =>
        {
            -libc::EINVAL
        }
        Request::Discard { offset, len } => {
            done(writable().and_then(|()| target.discard(offset, len)), 0)
        }
        Request::WriteZeroes { offset, len } => done(
            writable().and_then(|()| target.write_zeroes(offset, len)),
            0,
        ),
        Request::Unsupported { .. } => -libc::EOPNOTSUPP,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    struct Mem {
        data: Mutex<Vec<u8>>,
        ro: bool,
        flushes: Mutex<u32>,
        fail_writes: bool,
    }

    impl Mem {
        fn new(size: usize, ro: bool) -> Mem {
            Mem {
                data: Mutex::new(vec![0; size]),
                ro,
                flushes: Mutex::new(0),
                fail_writes: false,
            }
        }
    }

    impl BlockTarget for Mem {
        fn size(&self) -> u64 {
            self.data.lock().unwrap().len() as u64
        }
        fn read_only(&self) -> bool {
            self.ro
        }
        fn read(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
            let d = self.data.lock().unwrap();
            buf.copy_from_slice(&d[offset as usize..offset as usize + buf.len()]);
            Ok(())
        }
        fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
            if self.fail_writes {
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
            let mut d = self.data.lock().unwrap();
            d[offset as usize..offset as usize + data.len()].copy_from_slice(data);
            Ok(())
        }
        fn flush(&self) -> io::Result<()> {
            *self.flushes.lock().unwrap() += 1;
            Ok(())
        }
        fn discard(&self, _: u64, _: u64) -> io::Result<()> {
            Ok(())
        }
        fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
            let mut d = self.data.lock().unwrap();
            d[offset as usize..(offset + len) as usize].fill(0);
            Ok(())
        }
    }

    const W: u32 = libublk::sys::UBLK_IO_OP_WRITE;
    const R: u32 = libublk::sys::UBLK_IO_OP_READ;

    #[test]
    fn decodes_ops_and_flags() {
        assert_eq!(
            Request::decode(W | libublk::sys::UBLK_IO_F_FUA, 8, 2),
            Request::Write {
                offset: 4096,
                len: 1024,
                fua: true
            }
        );
        assert_eq!(
            Request::decode(R, 1, 1),
            Request::Read {
                offset: 512,
                len: 512
            }
        );
        assert_eq!(
            Request::decode(libublk::sys::UBLK_IO_OP_FLUSH, 0, 0),
            Request::Flush
        );
        assert_eq!(
            Request::decode(libublk::sys::UBLK_IO_OP_WRITE_ZEROES, 2, 4),
            Request::WriteZeroes {
                offset: 1024,
                len: 2048
            }
        );
        assert_eq!(
            Request::decode(libublk::sys::UBLK_IO_OP_DISCARD, 0, 8),
            Request::Discard {
                offset: 0,
                len: 4096
            }
        );
        assert_eq!(
            Request::decode(libublk::sys::UBLK_IO_OP_ZONE_APPEND, 0, 8),
            Request::Unsupported {
                op: libublk::sys::UBLK_IO_OP_ZONE_APPEND
            }
        );
        // A sector number that would overflow a byte offset does not wrap around.
        assert!(matches!(
            Request::decode(R, u64::MAX, 1),
            Request::Read {
                offset: u64::MAX,
                ..
            }
        ));
    }

    #[test]
    fn write_read_fua_and_zeroes_round_trip() {
        let t = Mem::new(64 << 10, false);
        let mut buf = vec![0xab; 8192];
        assert_eq!(serve(&t, Request::decode(W, 16, 16), &mut buf), 8192);
        assert_eq!(*t.flushes.lock().unwrap(), 0);
        let fua = Request::decode(W | libublk::sys::UBLK_IO_F_FUA, 0, 1);
        assert_eq!(serve(&t, fua, &mut buf), 512);
        assert_eq!(*t.flushes.lock().unwrap(), 1);
        let mut back = vec![0; 8192];
        assert_eq!(serve(&t, Request::decode(R, 16, 16), &mut back), 8192);
        assert!(back.iter().all(|b| *b == 0xab));
        let z = Request::decode(libublk::sys::UBLK_IO_OP_WRITE_ZEROES, 16, 8);
        assert_eq!(serve(&t, z, &mut []), 0);
        assert_eq!(serve(&t, Request::decode(R, 16, 16), &mut back), 8192);
        assert!(back[..4096].iter().all(|b| *b == 0));
        assert!(back[4096..].iter().all(|b| *b == 0xab));
        assert_eq!(serve(&t, Request::Flush, &mut []), 0);
        assert_eq!(*t.flushes.lock().unwrap(), 2);
    }

    #[test]
    fn bad_requests_get_errors_not_panics() {
        let t = Mem::new(4096, false);
        let mut small = vec![0; 512];
        // Longer than the tag's buffer, past the end, overflowing, unknown op.
        assert_eq!(
            serve(&t, Request::decode(R, 0, 2), &mut small),
            -libc::EINVAL
        );
        assert_eq!(
            serve(&t, Request::decode(W, 8, 1), &mut small),
            -libc::EINVAL
        );
        assert_eq!(
            serve(&t, Request::decode(R, u64::MAX / 512, 1), &mut small),
            -libc::EINVAL
        );
        let z = Request::decode(libublk::sys::UBLK_IO_OP_WRITE_ZEROES, 4, 8);
        assert_eq!(serve(&t, z, &mut []), -libc::EINVAL);
        assert_eq!(
            serve(&t, Request::Unsupported { op: 99 }, &mut small),
            -libc::EOPNOTSUPP
        );
    }

    #[test]
    fn read_only_targets_refuse_every_kind_of_write() {
        let t = Mem::new(4096, true);
        let mut buf = vec![1; 512];
        assert_eq!(serve(&t, Request::decode(W, 0, 1), &mut buf), -libc::EROFS);
        let z = Request::decode(libublk::sys::UBLK_IO_OP_WRITE_ZEROES, 0, 1);
        assert_eq!(serve(&t, z, &mut []), -libc::EROFS);
        let d = Request::decode(libublk::sys::UBLK_IO_OP_DISCARD, 0, 1);
        assert_eq!(serve(&t, d, &mut []), -libc::EROFS);
        assert!(t.data.lock().unwrap().iter().all(|b| *b == 0));
        // Reads still work.
        assert_eq!(serve(&t, Request::decode(R, 0, 1), &mut buf), 512);
    }

    #[test]
    fn target_errors_become_their_errno() {
        let mut t = Mem::new(4096, false);
        t.fail_writes = true;
        let mut buf = vec![1; 512];
        assert_eq!(serve(&t, Request::decode(W, 0, 1), &mut buf), -libc::ENOSPC);
    }

    #[test]
    fn options_are_validated() {
        assert!(UblkOptions::default().validate().is_ok());
        for bad in [
            UblkOptions {
                queues: 0,
                ..Default::default()
            },
            UblkOptions {
                depth: 4096,
                ..Default::default()
            },
            UblkOptions {
                max_io_bytes: 1000,
                ..Default::default()
            },
        ] {
            assert!(matches!(bad.validate(), Err(UblkError::InvalidOptions(_))));
        }
    }

    #[test]
    fn missing_control_device_is_reported_as_such() {
        match check_available() {
            Ok(()) => eprintln!("{CONTROL_PATH} present: nothing to check here"),
            Err(e) => {
                assert!(matches!(e, UblkError::ControlMissing));
                assert!(e.to_string().contains(CONTROL_PATH));
            }
        }
    }
}

//! Errors from the disk under the agent, made visible: every failed read, write or flush of a
//! volume's origin or store is counted by volume, file, operation and errno
//! (`multisnap_io_errors_total`) and logged at WARN with the offset. A dying disk can fail
//! thousands of requests a second, so each (volume, file, operation, errno) is logged at most
//! once per [`LOG_EVERY`], with the number of failures the log did not show.

use multisnap_store::BlockDev;
use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often one kind of failure may be logged.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IoErrorLabels {
    pub volume: String,
    /// `origin` or `store` (the store file holds the journal and the metadata too).
    pub file: String,
    pub op: String,
    pub errno: String,
}

/// The agent's record of device errors, shared by every volume's devices.
#[derive(Default)]
pub struct IoErrors {
    counts: Family<IoErrorLabels, Counter>,
    /// Every series made, so a deleted volume's can be dropped.
    series: Mutex<std::collections::HashSet<IoErrorLabels>>,
    /// Per kind of failure: when it was last logged, and failures since that were not.
    last_logged: Mutex<HashMap<IoErrorLabels, (Instant, u64)>>,
}

impl IoErrors {
    /// The counter family, for the metrics registry.
    pub fn family(&self) -> Family<IoErrorLabels, Counter> {
        self.counts.clone()
    }

    /// Starts `file`'s EIO series of `volume` at zero, so the first failure shows as a rate
    /// rather than as a series appearing from nowhere.
    fn start(&self, volume: &str, file: &'static str) {
        for op in ["read", "write", "flush"] {
            let labels = IoErrorLabels {
                volume: volume.into(),
                file: file.into(),
                op: op.into(),
                errno: "EIO".into(),
            };
            let _ = self.counts.get_or_create(&labels);
            self.series.lock().insert(labels);
        }
    }

    /// Drops a deleted volume's series.
    pub fn forget(&self, volume: &str) {
        let mut series = self.series.lock();
        series.retain(|labels| {
            if labels.volume == volume {
                self.counts.remove(labels);
                false
            } else {
                true
            }
        });
        self.last_logged
            .lock()
            .retain(|labels, _| labels.volume != volume);
    }

    fn record(&self, labels: IoErrorLabels, offset: Option<u64>, e: &io::Error) {
        self.counts.get_or_create(&labels).inc();
        self.series.lock().insert(labels.clone());
        let now = Instant::now();
        let suppressed = {
            let mut last = self.last_logged.lock();
            match last.get_mut(&labels) {
                Some((at, skipped)) if now.duration_since(*at) < LOG_EVERY => {
                    *skipped += 1;
                    return;
                }
                Some((at, skipped)) => {
                    *at = now;
                    std::mem::take(skipped)
                }
                None => {
                    last.insert(labels.clone(), (now, 0));
                    0
                }
            }
        };
        tracing::warn!(
            volume = %labels.volume,
            file = %labels.file,
            op = %labels.op,
            offset,
            errno = %labels.errno,
            error = %e,
            not_logged_since_last = suppressed,
            "I/O error on a volume's device"
        );
    }
}

/// The symbolic name of an errno for labels and logs (`EIO`, `ENOSPC`, ...); others as
/// `E<number>`, and `other` for errors that carry no errno.
pub fn errno_name(e: &io::Error) -> String {
    let Some(code) = e.raw_os_error() else {
        return "other".into();
    };
    let name = match code {
        libc::EIO => "EIO",
        libc::ENOSPC => "ENOSPC",
        libc::EDQUOT => "EDQUOT",
        libc::EFBIG => "EFBIG",
        libc::EROFS => "EROFS",
        libc::EACCES => "EACCES",
        libc::EPERM => "EPERM",
        libc::ENXIO => "ENXIO",
        libc::ENODEV => "ENODEV",
        libc::ENOMEM => "ENOMEM",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::EINVAL => "EINVAL",
        libc::EBADF => "EBADF",
        libc::ESTALE => "ESTALE",
        _ => return format!("E{code}"),
    };
    name.into()
}

/// A volume's origin or store file, reporting its errors to [`IoErrors`].
pub struct ObservedDev {
    /// A `FileDev`, or a `DirectDev` for a direct origin.
    inner: Box<dyn BlockDev>,
    volume: String,
    file: &'static str,
    errors: Arc<IoErrors>,
}

impl ObservedDev {
    pub fn new(
        inner: impl BlockDev + 'static,
        volume: &str,
        file: &'static str,
        errors: Arc<IoErrors>,
    ) -> Self {
        errors.start(volume, file);
        ObservedDev {
            inner: Box::new(inner),
            volume: volume.to_string(),
            file,
            errors,
        }
    }

    fn seen<T>(&self, op: &'static str, offset: Option<u64>, r: io::Result<T>) -> io::Result<T> {
        if let Err(e) = &r {
            let labels = IoErrorLabels {
                volume: self.volume.clone(),
                file: self.file.into(),
                op: op.into(),
                errno: errno_name(e),
            };
            self.errors.record(labels, offset, e);
        }
        r
    }
}

impl BlockDev for ObservedDev {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.seen("read", Some(offset), self.inner.read_at(buf, offset))
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.seen("write", Some(offset), self.inner.write_at(buf, offset))
    }
    fn flush(&self) -> io::Result<()> {
        self.seen("flush", None, self.inner.flush())
    }
    fn start_writeback(&self, offset: u64, len: u64) {
        self.inner.start_writeback(offset, len)
    }
    fn write_bulk(&self, parts: &[&[u8]], offset: u64) -> io::Result<()> {
        self.seen("write", Some(offset), self.inner.write_bulk(parts, offset))
    }
    fn size(&self) -> io::Result<u64> {
        self.inner.size()
    }
    fn grow_to(&self, size: u64) -> io::Result<()> {
        self.seen("grow", None, self.inner.grow_to(size))
    }
    fn allocation(&self, offset: u64, len: u64) -> io::Result<Vec<(u64, bool)>> {
        self.inner.allocation(offset, len)
    }
    fn as_file(&self) -> Option<&std::fs::File> {
        self.inner.as_file()
    }
    fn can_copy_from(&self, source: &dyn BlockDev, granularity: u64) -> bool {
        self.inner.can_copy_from(source, granularity)
    }
    /// Counted as the store's: the kernel does not say which of the two files failed.
    fn copy_from(&self, source: &dyn BlockDev, from: u64, to: u64, len: usize) -> io::Result<bool> {
        self.seen(
            "copy",
            Some(to),
            self.inner.copy_from(source, from, to, len),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(errors: &IoErrors) -> String {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register("multisnap_io_errors", "x", errors.family());
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        out
    }

    #[test]
    fn every_error_is_counted_and_repeats_are_logged_once_per_period() {
        let errors = IoErrors::default();
        let labels = IoErrorLabels {
            volume: "v".into(),
            file: "origin".into(),
            op: "read".into(),
            errno: "EIO".into(),
        };
        let e = io::Error::from_raw_os_error(libc::EIO);
        for _ in 0..5 {
            errors.record(labels.clone(), Some(4096), &e);
        }
        assert!(text(&errors).contains(
            r#"multisnap_io_errors_total{volume="v",file="origin",op="read",errno="EIO"} 5"#
        ));
        let last = errors.last_logged.lock();
        assert_eq!(last.get(&labels).map(|(_, skipped)| *skipped), Some(4));
    }

    #[test]
    fn errno_names() {
        assert_eq!(
            errno_name(&io::Error::from_raw_os_error(libc::ENOSPC)),
            "ENOSPC"
        );
        assert_eq!(
            errno_name(&io::Error::from_raw_os_error(libc::ELOOP)),
            format!("E{}", libc::ELOOP)
        );
        assert_eq!(errno_name(&io::Error::other("x")), "other");
    }
}

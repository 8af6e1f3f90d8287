//! ublk device requests, fed by each device's observer.

use super::requests::{ErrorLabels, OpHandles, OpLabels, RequestFamilies, ViewLabel};
use prometheus_client::registry::Registry;
use std::sync::{Arc, OnceLock};

/// Request series of the ublk frontend, labelled like the NBD ones.
pub struct UblkMetrics {
    req: RequestFamilies,
}

fn ublk_errno_name(errno: i32) -> &'static str {
    match errno {
        libc::EIO => "EIO",
        libc::ENOSPC => "ENOSPC",
        libc::EROFS => "EROFS",
        libc::EINVAL => "EINVAL",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        // A fixed label keeps the series bounded.
        _ => "other",
    }
}

impl UblkMetrics {
    pub(super) fn new(registry: &mut Registry) -> UblkMetrics {
        UblkMetrics {
            req: RequestFamilies::register(
                registry,
                "ublk",
                "ublk",
                "payload for read/write, range for discard/write_zeroes",
                "from taking the request off the queue to its result",
            ),
        }
    }

    /// The observer for one device serving `volume`'s origin or one of its snapshots.
    pub fn observer(
        self: &Arc<Self>,
        volume: &str,
        snapshot: bool,
    ) -> Arc<dyn multisnap_ublk::IoObserver> {
        Arc::new(UblkDeviceObserver {
            metrics: self.clone(),
            volume: volume.to_string(),
            view: if snapshot {
                ViewLabel::snapshot
            } else {
                ViewLabel::origin
            },
            handles: Default::default(),
        })
    }
}

struct UblkDeviceObserver {
    metrics: Arc<UblkMetrics>,
    volume: String,
    view: ViewLabel,
    /// Per op (in [`UBLK_OPS`] order), made on first use.
    handles: [OnceLock<OpHandles>; UBLK_OPS.len()],
}

const UBLK_OPS: [&str; 6] = [
    "read",
    "write",
    "flush",
    "discard",
    "write_zeroes",
    "unsupported",
];

impl multisnap_ublk::IoObserver for UblkDeviceObserver {
    fn request_finished(&self, ev: &multisnap_ublk::IoEvent) {
        let i = UBLK_OPS
            .iter()
            .position(|o| *o == ev.op)
            .unwrap_or(UBLK_OPS.len() - 1);
        let h = self.handles[i].get_or_init(|| {
            let l = OpLabels {
                volume: self.volume.clone(),
                view: self.view,
                op: UBLK_OPS[i],
            };
            self.metrics.req.handles(&l)
        });
        h.requests.inc();
        h.bytes.inc_by(ev.bytes);
        h.duration.observe(ev.latency.as_secs_f64());
        if let Some(errno) = ev.errno {
            self.metrics
                .req
                .errors
                .get_or_create(&ErrorLabels {
                    volume: self.volume.clone(),
                    view: self.view,
                    op: UBLK_OPS[i],
                    errno: ublk_errno_name(errno),
                })
                .inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ublk_series_encode() {
        let mut reg = Registry::default();
        let m = Arc::new(UblkMetrics::new(&mut reg));
        let o = m.observer("v", false);
        for (op, bytes, errno) in [
            ("write", 8192, None),
            ("write", 4096, Some(libc::ENOSPC)),
            ("flush", 0, None),
            ("something-new", 0, Some(12345)),
        ] {
            o.request_finished(&multisnap_ublk::IoEvent {
                op,
                bytes,
                errno,
                latency: std::time::Duration::from_micros(50),
            });
        }
        m.observer("v", true)
            .request_finished(&multisnap_ublk::IoEvent {
                op: "read",
                bytes: 512,
                errno: None,
                latency: std::time::Duration::from_micros(50),
            });
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &reg).unwrap_or_default();
        for want in [
            "multisnap_ublk_requests_total{volume=\"v\",view=\"origin\",op=\"write\"} 2",
            "multisnap_ublk_request_bytes_total{volume=\"v\",view=\"origin\",op=\"write\"} 12288",
            "multisnap_ublk_requests_total{volume=\"v\",view=\"origin\",op=\"flush\"} 1",
            "multisnap_ublk_requests_total{volume=\"v\",view=\"snapshot\",op=\"read\"} 1",
            "multisnap_ublk_request_errors_total{volume=\"v\",view=\"origin\",op=\"write\",errno=\"ENOSPC\"} 1",
            // Unknown ops and errnos fold into fixed labels.
            "multisnap_ublk_request_errors_total{volume=\"v\",view=\"origin\",op=\"unsupported\",errno=\"other\"} 1",
        ] {
            assert!(out.contains(want), "missing {want} in\n{out}");
        }
    }
}

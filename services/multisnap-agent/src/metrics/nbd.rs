//! NBD requests and connections, fed by the server's observer hook.

use super::requests::{ErrorLabels, OpHandles, OpLabels, RequestFamilies, ViewLabel};
use multisnap_nbd::{Errno, HandshakeOutcome, Observer, RequestEvent, RequestKind};
use parking_lot::RwLock;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandshakeLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnLabels {
    volume: String,
    view: ViewLabel,
}

const KINDS: [RequestKind; 8] = [
    RequestKind::Read,
    RequestKind::Write,
    RequestKind::Flush,
    RequestKind::Trim,
    RequestKind::WriteZeroes,
    RequestKind::BlockStatus,
    RequestKind::Disconnect,
    RequestKind::Unknown,
];

fn kind_index(k: RequestKind) -> usize {
    KINDS
        .iter()
        .position(|x| *x == k)
        .unwrap_or(KINDS.len() - 1)
}

/// Made on an op's first request, so ops nobody uses (and views nobody opens) add no series.
type ViewHandles = [OnceLock<OpHandles>; KINDS.len()];

pub struct NbdObserver {
    req: RequestFamilies,
    connections: Family<ConnLabels, Gauge>,
    handshakes: Family<HandshakeLabels, Counter>,
    /// volume -> [origin, snapshot] handles.
    handles: RwLock<HashMap<String, Arc<[ViewHandles; 2]>>>,
}

fn errno_name(e: Errno) -> &'static str {
    match e {
        Errno::EPERM => "EPERM",
        Errno::EIO => "EIO",
        Errno::ENOMEM => "ENOMEM",
        Errno::EINVAL => "EINVAL",
        Errno::ENOSPC => "ENOSPC",
        Errno::EOVERFLOW => "EOVERFLOW",
        Errno::ENOTSUP => "ENOTSUP",
        Errno::ESHUTDOWN => "ESHUTDOWN",
        // A fixed label keeps the series bounded whatever the server learns to send.
        _ => "other",
    }
}

/// `VOLUME` is the origin, `VOLUME@SNAPSHOT` a snapshot.
fn split_export(export: &str) -> (&str, ViewLabel) {
    match export.split_once('@') {
        Some((v, _)) => (v, ViewLabel::snapshot),
        None => (export, ViewLabel::origin),
    }
}

impl NbdObserver {
    pub(super) fn new(registry: &mut Registry) -> NbdObserver {
        let o = NbdObserver {
            req: RequestFamilies::register(
                registry,
                "nbd",
                "NBD",
                "payload for read/write, range for the others",
                "from the request header being read to the reply being queued",
            ),
            connections: Family::default(),
            handshakes: Family::default(),
            handles: RwLock::new(HashMap::new()),
        };
        registry.register(
            "multisnap_nbd_handshakes",
            "NBD connections by how their handshake ended: plaintext or tls session, tls_failed (no or a wrong client certificate), refused_limit (connection limit reached), abandoned (left, timed out or broke the protocol)",
            o.handshakes.clone(),
        );
        registry.register(
            "multisnap_nbd_connections",
            "Open NBD connections in the transmission phase",
            o.connections.clone(),
        );
        o
    }

    fn volume_handles(&self, volume: &str) -> Arc<[ViewHandles; 2]> {
        if let Some(h) = self.handles.read().get(volume) {
            return h.clone();
        }
        self.handles
            .write()
            .entry(volume.to_string())
            .or_insert_with(|| Arc::new(Default::default()))
            .clone()
    }

    fn op_handles<'a>(
        &self,
        all: &'a [ViewHandles; 2],
        volume: &str,
        view: ViewLabel,
        kind: RequestKind,
    ) -> &'a OpHandles {
        all[view as usize][kind_index(kind)].get_or_init(|| {
            let l = OpLabels {
                volume: volume.to_string(),
                view,
                op: kind.as_str(),
            };
            self.req.handles(&l)
        })
    }

    fn conn_labels(export: &str) -> ConnLabels {
        let (volume, view) = split_export(export);
        ConnLabels {
            volume: volume.to_string(),
            view,
        }
    }
}

impl Observer for NbdObserver {
    fn request_finished(&self, ev: &RequestEvent<'_>) {
        let (volume, view) = split_export(ev.export);
        let all = self.volume_handles(volume);
        let h = self.op_handles(&all, volume, view, ev.kind);
        h.requests.inc();
        h.bytes.inc_by(ev.bytes);
        h.duration.observe(ev.latency.as_secs_f64());
        if let Some(errno) = ev.error {
            self.req
                .errors
                .get_or_create(&ErrorLabels {
                    volume: volume.to_string(),
                    view,
                    op: ev.kind.as_str(),
                    errno: errno_name(errno),
                })
                .inc();
        }
    }

    fn connection_opened(&self, export: &str) {
        self.connections
            .get_or_create(&Self::conn_labels(export))
            .inc();
    }

    fn connection_closed(&self, export: &str) {
        self.connections
            .get_or_create(&Self::conn_labels(export))
            .dec();
    }

    fn handshake_finished(&self, outcome: HandshakeOutcome) {
        self.handshakes
            .get_or_create(&HandshakeLabels {
                result: outcome.as_str(),
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_names_map_to_bounded_labels() {
        assert!(matches!(split_export("vol"), ("vol", ViewLabel::origin)));
        assert!(matches!(
            split_export("vol@snap-1"),
            ("vol", ViewLabel::snapshot)
        ));
        assert_eq!(errno_name(Errno(9999)), "other");
        assert_eq!(kind_index(RequestKind::Unknown), KINDS.len() - 1);
    }

    #[test]
    fn observer_series_encode() {
        let mut reg = Registry::default();
        let o = NbdObserver::new(&mut reg);
        o.connection_opened("v@s");
        o.handshake_finished(HandshakeOutcome::Tls);
        o.request_finished(&RequestEvent {
            export: "v@s",
            kind: RequestKind::Read,
            bytes: 4096,
            latency: std::time::Duration::from_micros(100),
            error: Some(Errno::EIO),
        });
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &reg).unwrap_or_default();
        assert!(out.contains(
            "multisnap_nbd_requests_total{volume=\"v\",view=\"snapshot\",op=\"read\"} 1"
        ));
        assert!(out.contains(
            "multisnap_nbd_request_bytes_total{volume=\"v\",view=\"snapshot\",op=\"read\"} 4096"
        ));
        assert!(out.contains("errno=\"EIO\""));
        assert!(out.contains("multisnap_nbd_handshakes_total{result=\"tls\"} 1"));
        assert!(out.contains("multisnap_nbd_connections{volume=\"v\",view=\"snapshot\"} 1"));
        assert!(
            !out.contains("\"s\""),
            "snapshot names must not become labels"
        );
    }
}

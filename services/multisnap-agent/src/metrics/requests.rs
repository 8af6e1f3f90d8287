//! The request series both block frontends (NBD, ublk) keep, by volume, view and op.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub(super) enum ViewLabel {
    origin,
    snapshot,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct OpLabels {
    pub volume: String,
    pub view: ViewLabel,
    pub op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct ErrorLabels {
    pub volume: String,
    pub view: ViewLabel,
    pub op: &'static str,
    pub errno: &'static str,
}

/// Handles to one (volume, view, op)'s series, resolved once so a request costs a map lookup
/// by `&str` and a few atomic adds, not a label-set allocation.
pub(super) struct OpHandles {
    pub requests: Counter,
    pub bytes: Counter,
    pub duration: Histogram,
}

/// The request series both block frontends (NBD, ublk) keep, by volume, view and op.
pub(super) struct RequestFamilies {
    pub requests: Family<OpLabels, Counter>,
    pub bytes: Family<OpLabels, Counter>,
    pub errors: Family<ErrorLabels, Counter>,
    pub duration: Family<OpLabels, Histogram, fn() -> Histogram>,
}

impl RequestFamilies {
    /// Registers `multisnap_{prefix}_requests_total`, `_request_bytes_total`,
    /// `_request_errors_total` and `_request_duration_seconds`; `name` is the frontend as
    /// help texts spell it, `bytes_what` and `latency_what` finish their sentences.
    pub(super) fn register(
        registry: &mut Registry,
        prefix: &str,
        name: &str,
        bytes_what: &str,
        latency_what: &str,
    ) -> RequestFamilies {
        let f = RequestFamilies {
            requests: Family::default(),
            bytes: Family::default(),
            errors: Family::default(),
            duration: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
        };
        registry.register(
            format!("multisnap_{prefix}_requests"),
            format!("{name} requests finished, by volume, view (origin or snapshot) and op"),
            f.requests.clone(),
        );
        registry.register_with_unit(
            format!("multisnap_{prefix}_request"),
            format!("Bytes covered by finished {name} requests ({bytes_what})"),
            Unit::Bytes,
            f.bytes.clone(),
        );
        registry.register(
            format!("multisnap_{prefix}_request_errors"),
            format!("{name} requests answered with an error, by errno"),
            f.errors.clone(),
        );
        registry.register_with_unit(
            format!("multisnap_{prefix}_request_duration"),
            format!("{name} request latency, {latency_what}"),
            Unit::Seconds,
            f.duration.clone(),
        );
        f
    }

    pub(super) fn handles(&self, l: &OpLabels) -> OpHandles {
        OpHandles {
            requests: self.requests.get_or_create_owned(l),
            bytes: self.bytes.get_or_create_owned(l),
            duration: self.duration.get_or_create_owned(l),
        }
    }
}

fn latency_histogram() -> Histogram {
    // 25 µs (a cached read) to 10 s (a copy behind a slow commit on a busy disk), on the
    // 1-2.5-5 steps people read off a dashboard.
    Histogram::new([
        25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 0.1, 0.25,
        0.5, 1.0, 2.5, 5.0, 10.0,
    ])
}

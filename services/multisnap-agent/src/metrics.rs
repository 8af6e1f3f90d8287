//! Prometheus exposition at `/metrics`.
//!
//! Two sources feed one registry:
//! - the stores: read at scrape time by [`StoreCollector`], so the numbers are the store's own
//!   counters, always current, never a second copy that could drift;
//! - the NBD servers: every finished request reaches [`NbdObserver`], which keeps request,
//!   byte, error and latency series per volume, view and op.
//!
//! - the ublk devices: every finished request reaches a [`UblkMetrics`] observer, with the
//!   same series under `multisnap_ublk_*`.
//!
//! NBD and ublk series are labelled by volume and `view="origin"|"snapshot"`, never by snapshot name:
//! snapshots come and go by the thousand and each name would be a new series forever.
//!
//! Both the OpenMetrics text format (what Prometheus asks for first) and the classic
//! Prometheus text format 0.0.4 (what `curl` gets) are served, chosen from the `Accept` header.

use crate::volumes::Volumes;
use anyhow::Context;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use multisnap_nbd::{Errno, Observer, RequestEvent, RequestKind};
use parking_lot::RwLock;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use tokio_util::sync::CancellationToken;

const OPENMETRICS_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The agent's metrics: the registry to expose and the observer to hand to the NBD servers.
pub struct Metrics {
    pub registry: Arc<Registry>,
    pub nbd: Arc<NbdObserver>,
    pub ublk: Arc<UblkMetrics>,
}

impl Metrics {
    pub fn new(volumes: Arc<Volumes>) -> Metrics {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(StoreCollector { volumes }));
        let nbd = Arc::new(NbdObserver::new(&mut registry));
        let ublk = Arc::new(UblkMetrics::new(&mut registry));
        Metrics {
            registry: Arc::new(registry),
            nbd,
            ublk,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Store statistics, read at scrape time.

struct StoreCollector {
    volumes: Arc<Volumes>,
}

impl std::fmt::Debug for StoreCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreCollector").finish_non_exhaustive()
    }
}

/// One volume's numbers, taken under the store's lock once per scrape so every series of a
/// volume comes from the same instant.
struct Sample {
    volume: String,
    stats: multisnap_store::StoreStats,
    reclaim_scanned: u64,
    /// `[exported bytes, applied bytes, complete, incomplete, failed]` (see DeltaCounters).
    deltas: [u64; 5],
    receiving: bool,
}

enum Value {
    Counter(u64),
    CounterSeconds(f64),
    Gauge(u64),
}

/// A store metric: name without the unit and `_total` suffixes the encoder appends.
struct Def {
    name: &'static str,
    unit: Option<Unit>,
    help: &'static str,
    get: fn(&Sample) -> Value,
}

fn store_defs() -> Vec<Def> {
    use Value::{Counter as C, Gauge as G};
    let d = |name, unit, help, get| Def {
        name,
        unit,
        help,
        get,
    };
    let b = || Some(Unit::Bytes);
    vec![
        d("multisnap_cow_copies", None, "Origin chunks copied to the store before being overwritten (at most one per chunk whatever the number of snapshots).",
            |s| C(s.stats.copies_total)),
        d("multisnap_cow_copied", b(), "Bytes copied from the origin to the store.",
            |s| C(s.stats.bytes_copied_total)),
        d("multisnap_exceptions", None, "Exceptions in the store's index (chunk ranges kept for snapshots).",
            |s| G(s.stats.exceptions)),
        d("multisnap_snapshots", None, "Live snapshots of the volume.",
            |s| G(s.stats.snapshots)),
        d("multisnap_snapshots_invalidated", None, "Snapshots dropped by the invalidate-oldest store-full policy.",
            |s| C(s.stats.invalidated_total)),
        d("multisnap_cache_hits", None, "Index node lookups answered from the cache.",
            |s| C(s.stats.cache.hits)),
        d("multisnap_cache_misses", None, "Index node lookups that read the store.",
            |s| C(s.stats.cache.misses)),
        d("multisnap_cache_evictions", None, "Index nodes evicted from the cache.",
            |s| C(s.stats.cache.evictions)),
        d("multisnap_cache_nodes", None, "Index nodes in the cache.",
            |s| G(s.stats.cache.nodes)),
        d("multisnap_cache_capacity_nodes", None, "Index nodes the cache may hold.",
            |s| G(s.stats.cache.capacity_nodes)),
        d("multisnap_cache", b(), "Memory charged to the index nodes in the cache.",
            |s| G(s.stats.cache.nodes * multisnap_store::cache::NODE_MEMORY as u64)),
        d("multisnap_cache_capacity", b(), "Memory the index cache may use.",
            |s| G(s.stats.cache.capacity_nodes * multisnap_store::cache::NODE_MEMORY as u64)),
        d("multisnap_location_cache_hits", None, "Snapshot chunk lookups answered from the location cache, without descending the index.",
            |s| C(s.stats.locations.hits)),
        d("multisnap_location_cache_misses", None, "Snapshot chunk lookups that descended the index.",
            |s| C(s.stats.locations.misses)),
        d("multisnap_location_cache", b(), "Memory of the location cache (taken from the configured cache size).",
            |s| G(s.stats.locations.bytes)),
        d("multisnap_store_size", b(), "Size of the COW store.",
            |s| G(s.stats.store_bytes)),
        d("multisnap_store_used", b(), "Store space in use (copied chunks and metadata).",
            |s| G(s.stats.used_bytes)),
        d("multisnap_store_free", b(), "Store space available for new copies, in whole free chunks.",
            |s| G(s.stats.free_chunks * u64::from(s.stats.chunk_size))),
        d("multisnap_origin_size", b(), "Size of the origin volume.",
            |s| G(s.stats.origin_size)),
        d("multisnap_chunk_size", b(), "Copy-on-write unit of the volume.",
            |s| G(u64::from(s.stats.chunk_size))),
        d("multisnap_commits", None, "Store transactions committed.",
            |s| C(s.stats.commits.count)),
        d("multisnap_commit", Some(Unit::Seconds), "Time spent committing store transactions; divide by multisnap_commits_total for the mean commit latency.",
            |s| Value::CounterSeconds(s.stats.commits.seconds_total)),
        d("multisnap_journal_size", b(), "Size of the origin write journal in the store (0: the volume has none).",
            |s| G(s.stats.journal_size_bytes)),
        d("multisnap_journal_batches", None, "Volume flushes made durable by one journal batch instead of an origin sync.",
            |s| C(s.stats.journal_batches_total)),
        d("multisnap_journal_written", b(), "Origin bytes written to the journal by those batches.",
            |s| C(s.stats.journal_written_bytes_total)),
        d("multisnap_journal_discards", None, "Times a flush too big for one batch synced the origin itself and emptied the journal.",
            |s| C(s.stats.journal_discards_total)),
        d("multisnap_journal_retired_epochs", None, "Journal halves freed after the background origin sync that follows a filled half.",
            |s| C(s.stats.journal_retired_total)),
        d("multisnap_journal_waits", None, "Flushes that found both journal halves in use and waited for the origin sync (the journal is too small for the write rate).",
            |s| C(s.stats.journal_waits_total)),
        d("multisnap_store_generation", None, "Generation of the last committed superblock.",
            |s| G(s.stats.generation)),
        d("multisnap_reclaim_pending_snapshots", None, "Deleted snapshots whose space is still being reclaimed.",
            |s| G(s.stats.reclaim_pending)),
        d("multisnap_reclaim_scanned_chunks", None, "Origin chunk the reclamation scan has reached (moves while reclamation progresses).",
            |s| G(s.reclaim_scanned)),
        d("multisnap_reclaimed_chunks", None, "Store chunks freed by reclamation since the agent started.",
            |s| C(s.stats.chunks_reclaimed_total)),
        d("multisnap_delta_exported", b(), "Delta stream bytes sent by ExportDelta since the agent started.",
            |s| C(s.deltas[0])),
        d("multisnap_delta_applied", b(), "Delta stream bytes received by ApplyDelta since the agent started.",
            |s| C(s.deltas[1])),
        d("multisnap_delta_applies_completed", None, "ApplyDelta calls that created their snapshot.",
            |s| C(s.deltas[2])),
        d("multisnap_delta_applies_interrupted", None, "ApplyDelta calls whose stream ended before its trailer.",
            |s| C(s.deltas[3])),
        d("multisnap_delta_applies_failed", None, "ApplyDelta calls refused or failed (corrupt stream, wrong volume or base, store errors).",
            |s| C(s.deltas[4])),
        d("multisnap_delta_apply_in_progress", None, "1 while the volume holds an unfinished delta apply (running, or kept for resumption).",
            |s| G(u64::from(s.receiving))),
    ]
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VolumeLabel {
    volume: String,
}

impl Collector for StoreCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let _span = tracing::debug_span!("collect_store_metrics").entered();
        let samples: Vec<Sample> = self
            .volumes
            .list()
            .iter()
            .map(|v| Sample {
                volume: v.name.clone(),
                stats: v.store.stats(),
                reclaim_scanned: v.store.reclaim_progress().scanned_chunk,
                deltas: {
                    let d = &v.deltas;
                    let get = |a: &std::sync::atomic::AtomicU64| {
                        a.load(std::sync::atomic::Ordering::Relaxed)
                    };
                    [
                        get(&d.exported_bytes),
                        get(&d.applied_bytes),
                        get(&d.applies_complete),
                        get(&d.applies_incomplete),
                        get(&d.applies_failed),
                    ]
                },
                receiving: v.store.receive_pending(),
            })
            .collect();
        for def in store_defs() {
            let Some(first) = samples.first() else { break };
            let ty = match (def.get)(first) {
                Value::Counter(_) | Value::CounterSeconds(_) => MetricType::Counter,
                Value::Gauge(_) => MetricType::Gauge,
            };
            let mut family =
                encoder.encode_descriptor(def.name, def.help, def.unit.as_ref(), ty)?;
            for s in &samples {
                let labels = VolumeLabel {
                    volume: s.volume.clone(),
                };
                let mut m = family.encode_family(&labels)?;
                match (def.get)(s) {
                    Value::Counter(v) => m.encode_counter::<VolumeLabel, u64, f64>(&v, None)?,
                    Value::CounterSeconds(v) => {
                        m.encode_counter::<VolumeLabel, f64, f64>(&v, None)?
                    }
                    Value::Gauge(v) => m.encode_gauge(&v)?,
                }
            }
        }
        // Latency histograms: the store keeps the buckets, so these are read at scrape time
        // like everything above.
        type Pick = fn(&Sample) -> &multisnap_store::LatencyStats;
        let histograms: [(&str, &str, Pick); 2] = [
            ("multisnap_commit_duration",
             "Latency of store commits (write new metadata, flush, flip the superblock, flush).",
             |s| &s.stats.commits),
            ("multisnap_flush_duration",
             "Latency of volume flushes (fdatasync of the origin, plus a commit when metadata changed since the last one). \
              NBD flush requests that arrive while one runs share it: compare the count with multisnap_nbd_requests_total{op=\"flush\"}.",
             |s| &s.stats.flushes),
        ];
        for (name, help, get) in histograms {
            if samples.is_empty() {
                break;
            }
            let mut family = encoder.encode_descriptor(
                name,
                help,
                Some(&Unit::Seconds),
                MetricType::Histogram,
            )?;
            for s in &samples {
                let labels = VolumeLabel {
                    volume: s.volume.clone(),
                };
                let h = get(s);
                // The last bucket's bound is +Inf, which both encoders print as "+Inf".
                let mut m = family.encode_family(&labels)?;
                m.encode_histogram::<VolumeLabel>(h.seconds_total, h.count, &h.buckets, None)?;
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// NBD requests, fed by the server's observer hook.

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
enum ViewLabel {
    origin,
    snapshot,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabels {
    volume: String,
    view: ViewLabel,
    op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    volume: String,
    view: ViewLabel,
    op: &'static str,
    errno: &'static str,
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

/// Handles to one (volume, view, op)'s series, resolved once so a request costs a map lookup
/// by `&str` and a few atomic adds, not a label-set allocation.
struct OpHandles {
    requests: Counter,
    bytes: Counter,
    duration: Histogram,
}

/// Made on an op's first request, so ops nobody uses (and views nobody opens) add no series.
type ViewHandles = [OnceLock<OpHandles>; KINDS.len()];

/// The request series both block frontends (NBD, ublk) keep, by volume, view and op.
struct RequestFamilies {
    requests: Family<OpLabels, Counter>,
    bytes: Family<OpLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
    duration: Family<OpLabels, Histogram, fn() -> Histogram>,
}

impl RequestFamilies {
    /// Registers `multisnap_{prefix}_requests_total`, `_request_bytes_total`,
    /// `_request_errors_total` and `_request_duration_seconds`; `name` is the frontend as
    /// help texts spell it, `bytes_what` and `latency_what` finish their sentences.
    fn register(
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

    fn handles(&self, l: &OpLabels) -> OpHandles {
        OpHandles {
            requests: self.requests.get_or_create_owned(l),
            bytes: self.bytes.get_or_create_owned(l),
            duration: self.duration.get_or_create_owned(l),
        }
    }
}

pub struct NbdObserver {
    req: RequestFamilies,
    connections: Family<ConnLabels, Gauge>,
    /// volume -> [origin, snapshot] handles.
    handles: RwLock<HashMap<String, Arc<[ViewHandles; 2]>>>,
}

fn latency_histogram() -> Histogram {
    // 25 µs (a cached read) to 10 s (a copy behind a slow commit on a busy disk), on the
    // 1-2.5-5 steps people read off a dashboard.
    Histogram::new([
        25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 0.1, 0.25,
        0.5, 1.0, 2.5, 5.0, 10.0,
    ])
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
    fn new(registry: &mut Registry) -> NbdObserver {
        let o = NbdObserver {
            req: RequestFamilies::register(
                registry,
                "nbd",
                "NBD",
                "payload for read/write, range for the others",
                "from the request header being read to the reply being queued",
            ),
            connections: Family::default(),
            handles: RwLock::new(HashMap::new()),
        };
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
}

// ---------------------------------------------------------------------------------------------
// ublk devices.

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
    fn new(registry: &mut Registry) -> UblkMetrics {
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

// ---------------------------------------------------------------------------------------------
// HTTP.

fn wants_openmetrics(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"))
}

async fn scrape(State(registry): State<Arc<Registry>>, headers: HeaderMap) -> Response {
    let openmetrics = wants_openmetrics(&headers);
    // Collecting takes each store's metadata lock: keep it off the async workers.
    let encoded = tokio::task::spawn_blocking(move || {
        let mut out = String::with_capacity(16 * 1024);
        let r = if openmetrics {
            prometheus_client::encoding::text::encode(&mut out, &registry)
        } else {
            prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)
        };
        r.map(|()| out)
    })
    .await;
    match encoded {
        Ok(Ok(body)) => {
            let ty = if openmetrics {
                OPENMETRICS_TYPE
            } else {
                prometheus_client::encoding::prometheus_text::CONTENT_TYPE
            };
            ([(header::CONTENT_TYPE, ty)], body).into_response()
        }
        Ok(Err(e)) => {
            tracing::error!(error = %e, "cannot encode metrics");
            (StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics\n").into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, "metrics encoder task failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics\n").into_response()
        }
    }
}

/// Serves `/metrics` on `addr` until `shutdown`.
pub async fn serve(
    addr: SocketAddr,
    registry: Arc<Registry>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen for metrics on {addr}"))?;
    tracing::info!(addr = %addr, "serving metrics at /metrics");
    let app = axum::Router::new()
        .route("/metrics", axum::routing::get(scrape))
        .with_state(registry);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
        .context("metrics server failed")
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

    #[test]
    fn observer_series_encode() {
        let mut reg = Registry::default();
        let o = NbdObserver::new(&mut reg);
        o.connection_opened("v@s");
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
        assert!(out.contains("multisnap_nbd_connections{volume=\"v\",view=\"snapshot\"} 1"));
        assert!(
            !out.contains("\"s\""),
            "snapshot names must not become labels"
        );
    }
}

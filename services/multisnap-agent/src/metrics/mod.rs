//! Prometheus exposition at `/metrics`.
//!
//! Three sources feed one registry:
//! - the stores: read at scrape time by [`StoreCollector`], so the numbers are the store's own
//!   counters, always current, never a second copy that could drift;
//! - the NBD servers: every finished request reaches [`NbdObserver`], which keeps request,
//!   byte, error and latency series per volume, view and op;
//! - the snapshot policies: read at scrape time by `policy::PolicyCollector`, ages by the
//!   policy clock;
//! - the mirrors: read at scrape time by `mirror::MirrorCollector`;
//! - the ublk devices: every finished request reaches a [`UblkMetrics`] observer, with the
//!   same series under `multisnap_ublk_*`.
//!
//! NBD and ublk series are labelled by volume and `view="origin"|"snapshot"`, never by snapshot name:
//! snapshots come and go by the thousand and each name would be a new series forever.
//!
//! Both the OpenMetrics text format (what Prometheus asks for first) and the classic
//! Prometheus text format 0.0.4 (what `curl` gets) are served, chosen from the `Accept` header.
//!
//! Files by what they observe: `store` (the stores' own counters), `nbd`, `ublk` (request
//! series, sharing `requests`), `http` (the endpoint).

mod http;
mod mirror;
mod nbd;
mod policy;
mod requests;
mod store;
mod ublk;

pub use http::serve;
pub use nbd::NbdObserver;
pub use ublk::UblkMetrics;

use crate::volumes::Volumes;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use store::StoreCollector;

/// The agent's metrics: the registry to expose and the observer to hand to the NBD servers.
pub struct Metrics {
    pub registry: Arc<Registry>,
    pub nbd: Arc<NbdObserver>,
    pub ublk: Arc<UblkMetrics>,
}

impl Metrics {
    pub fn new(
        volumes: Arc<Volumes>,
        scheduler: Arc<crate::policy::scheduler::Scheduler>,
    ) -> Metrics {
        let mut registry = Registry::default();
        registry.register(
            "multisnap_io_errors",
            "Failed reads, writes and flushes of volumes' origin and store files, by errno (each also logged at WARN, at most once per 10 s per kind).",
            volumes.io_errors().family(),
        );
        registry.register(
            "multisnap_volume_reopens",
            "Reopens of failed volumes in place, by trigger (operator: ReopenVolume; automatic: the agent's retry after a full host filesystem) and result.",
            volumes.reopens().family(),
        );
        registry.register_collector(Box::new(policy::PolicyCollector {
            volumes: volumes.clone(),
            scheduler,
        }));
        registry.register_collector(Box::new(mirror::MirrorCollector {
            volumes: volumes.clone(),
        }));
        registry.register_collector(Box::new(StoreCollector { volumes }));
        registry.register(
            "multisnap_build",
            "The running agent's version and the git commit it was built from (always 1).",
            Info::new(vec![
                ("version", multisnap_build_info::VERSION),
                ("commit", multisnap_build_info::COMMIT),
            ]),
        );
        let nbd = Arc::new(NbdObserver::new(&mut registry));
        let ublk = Arc::new(UblkMetrics::new(&mut registry));
        Metrics {
            registry: Arc::new(registry),
            nbd,
            ublk,
        }
    }
}

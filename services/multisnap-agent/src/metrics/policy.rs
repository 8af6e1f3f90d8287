//! Snapshot policy series, read at scrape time from each volume's policy slot: the age of the
//! newest policy snapshot and the interval (for a schedule, its longest gap between scheduled
//! times, so one alert rule compares the two for both), and what the policy took, pruned and
//! failed at since the agent started.

use crate::policy::scheduler::Scheduler;
use crate::policy::FailureReason;
use crate::volumes::Volumes;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Unit;
use std::sync::atomic::Ordering;
use std::sync::Arc;

pub(super) struct PolicyCollector {
    pub(super) volumes: Arc<Volumes>,
    pub(super) scheduler: Arc<Scheduler>,
}

impl std::fmt::Debug for PolicyCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyCollector").finish_non_exhaustive()
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VolumeLabel {
    volume: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    volume: String,
    reason: &'static str,
}

/// One volume's numbers, taken once per scrape.
struct Sample {
    volume: String,
    /// (interval or longest gap, newest snapshot's age, policy snapshots) while a policy is set.
    active: Option<(i64, i64, i64)>,
    taken: u64,
    pruned: u64,
    failures: Vec<(FailureReason, u64)>,
}

impl Collector for PolicyCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let now = self.scheduler.now().ok();
        let samples: Vec<Sample> = self
            .volumes
            .list()
            .iter()
            .map(|v| {
                let c = &v.policy.counters;
                Sample {
                    volume: v.name.clone(),
                    active: v.policy.get().zip(now).map(|(a, now)| {
                        (
                            a.saved.spec.timing.longest_gap(),
                            a.newest_age(now),
                            a.saved.taken.len() as i64,
                        )
                    }),
                    taken: c.taken.load(Ordering::Relaxed),
                    pruned: c.pruned.load(Ordering::Relaxed),
                    failures: FailureReason::ALL
                        .iter()
                        .map(|r| (*r, c.failures(*r)))
                        .collect(),
                }
            })
            .collect();
        type Gauge = fn(&(i64, i64, i64)) -> i64;
        let gauges: [(&str, Option<Unit>, &str, Gauge); 3] = [
            ("multisnap_policy_interval", Some(Unit::Seconds),
             "Interval of the volume's snapshot policy; for a schedule, the longest time between two of its scheduled times (only for volumes with a policy).", |a| a.0),
            ("multisnap_policy_newest_snapshot_age", Some(Unit::Seconds),
             "Age of the newest snapshot the volume's policy took, by the policy clock (before its first: time since the policy was set).", |a| a.1),
            ("multisnap_policy_snapshots", None,
             "Snapshots the volume's policy took that still exist (the ones it may prune).", |a| a.2),
        ];
        for (name, unit, help, get) in gauges {
            let mut family =
                encoder.encode_descriptor(name, help, unit.as_ref(), MetricType::Gauge)?;
            for s in &samples {
                if let Some(a) = &s.active {
                    let labels = VolumeLabel {
                        volume: s.volume.clone(),
                    };
                    family.encode_family(&labels)?.encode_gauge(&get(a))?;
                }
            }
        }
        type Counter = fn(&Sample) -> u64;
        let counters: [(&str, &str, Counter); 2] = [
            (
                "multisnap_policy_snapshots_taken",
                "Snapshots the volume's policy took since the agent started.",
                |s| s.taken,
            ),
            (
                "multisnap_policy_snapshots_pruned",
                "Policy snapshots the volume's policy pruned since the agent started.",
                |s| s.pruned,
            ),
        ];
        for (name, help, get) in counters {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for s in &samples {
                let labels = VolumeLabel {
                    volume: s.volume.clone(),
                };
                family
                    .encode_family(&labels)?
                    .encode_counter::<VolumeLabel, u64, f64>(&get(s), None)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "multisnap_policy_failures",
            "Failed policy steps since the agent started, by reason: name_taken (the template's name is another snapshot's), no_space, snapshot (other snapshot errors), prune, persist (the policy file), clock. Each is logged at WARN.",
            None,
            MetricType::Counter,
        )?;
        for s in &samples {
            for (reason, n) in &s.failures {
                let labels = FailureLabels {
                    volume: s.volume.clone(),
                    reason: reason.label(),
                };
                family
                    .encode_family(&labels)?
                    .encode_counter::<FailureLabels, u64, f64>(n, None)?;
            }
        }
        Ok(())
    }
}

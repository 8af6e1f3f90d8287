//! Mirror series, one per volume and target, read at scrape time from each volume's mirror
//! slot: how far the target is behind (seconds and bytes), whether the mirror stopped, and
//! what it sent, synced and failed at since the agent started.

use crate::mirror::{behind, FailureReason, Phase};
use crate::volumes::Volumes;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Unit;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

pub(super) struct MirrorCollector {
    pub(super) volumes: Arc<Volumes>,
}

impl std::fmt::Debug for MirrorCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MirrorCollector").finish_non_exhaustive()
    }
}

/// A mirror's series: the volume, and the target as `ENDPOINT/VOLUME` (a volume may have
/// several mirrors, each its own series).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MirrorLabels {
    volume: String,
    target: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    volume: String,
    target: String,
    reason: &'static str,
}

/// One target's numbers, taken once per scrape.
struct Sample {
    labels: MirrorLabels,
    /// (lag seconds, bytes pending, stopped) while its mirror is set.
    active: Option<(i64, i64, i64)>,
    bytes_sent: u64,
    syncs: u64,
    failures: Vec<(FailureReason, u64)>,
}

/// Every target each volume mirrored to since the agent started: the counters of a cleared
/// mirror go on; its gauges go.
fn samples(volumes: &Volumes, now: SystemTime) -> Vec<Sample> {
    let mut out = Vec::new();
    for v in volumes.list() {
        let mirrors = v.mirror.list();
        for (key, c) in v.mirror.all_counters() {
            let active = mirrors.iter().find(|a| a.key() == key).map(|a| {
                let b = behind(&v, a, now);
                let stopped = i64::from(a.phase(b.snapshots > 0) == Phase::StoppedDiverged);
                (b.lag_seconds as i64, b.bytes_pending as i64, stopped)
            });
            out.push(Sample {
                labels: MirrorLabels {
                    volume: v.name.clone(),
                    target: key.label(),
                },
                active,
                bytes_sent: c.bytes_sent.load(Ordering::Relaxed),
                syncs: c.syncs.load(Ordering::Relaxed),
                failures: FailureReason::ALL
                    .iter()
                    .map(|r| (*r, c.failures(*r)))
                    .collect(),
            });
        }
    }
    out
}

impl Collector for MirrorCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let samples = samples(&self.volumes, SystemTime::now());
        type Gauge = fn(&(i64, i64, i64)) -> i64;
        let gauges: [(&str, Option<Unit>, &str, Gauge); 3] = [
            ("multisnap_mirror_lag", Some(Unit::Seconds),
             "Age of the oldest snapshot of the volume the mirror's target does not hold yet; 0 when in sync (one series per mirror set).", |a| a.0),
            ("multisnap_mirror_pending", Some(Unit::Bytes),
             "Estimated delta bytes the mirror still has to send to bring its target to the newest snapshot (changed chunks times the chunk size).", |a| a.1),
            ("multisnap_mirror_stopped", None,
             "1 when the mirror stopped because its target diverged (nothing is sent until SetMirror), else 0.", |a| a.2),
        ];
        for (name, unit, help, get) in gauges {
            let mut family =
                encoder.encode_descriptor(name, help, unit.as_ref(), MetricType::Gauge)?;
            for s in &samples {
                if let Some(a) = &s.active {
                    family.encode_family(&s.labels)?.encode_gauge(&get(a))?;
                }
            }
        }
        type Counter = fn(&Sample) -> u64;
        let counters: [(&str, Option<Unit>, &str, Counter); 2] = [
            (
                "multisnap_mirror_sent",
                Some(Unit::Bytes),
                "Delta stream bytes the volume's mirror sent to the target since the agent started.",
                |s| s.bytes_sent,
            ),
            (
                "multisnap_mirror_syncs",
                None,
                "Snapshots the volume's mirror brought to the target since the agent started.",
                |s| s.syncs,
            ),
        ];
        for (name, unit, help, get) in counters {
            let mut family =
                encoder.encode_descriptor(name, help, unit.as_ref(), MetricType::Counter)?;
            for s in &samples {
                family
                    .encode_family(&s.labels)?
                    .encode_counter::<MirrorLabels, u64, f64>(&get(s), None)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "multisnap_mirror_failures",
            "Failed mirror rounds since the agent started, by reason: connect (the target is unreachable), target (a call to it failed or it refused), busy (an apply the mirror cannot continue is in progress there), export, transfer (the stream was cut or the apply failed), diverged (the mirror stopped), persist (the mirror file). Each is logged at WARN.",
            None,
            MetricType::Counter,
        )?;
        for s in &samples {
            for (reason, n) in &s.failures {
                let labels = FailureLabels {
                    volume: s.labels.volume.clone(),
                    target: s.labels.target.clone(),
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

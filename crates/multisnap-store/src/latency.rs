//! Latency histograms for the store's durable operations (commits and flushes), kept by the
//! store itself so the agent can expose them at scrape time without a second copy of the
//! counts that could drift.

use std::time::Duration;

/// Upper bounds (seconds) of every histogram's buckets; the last is "+Inf". From 100 µs (a
/// flush with nothing to write back) to 2.5 s (a disk that has stalled).
pub const LATENCY_BOUNDS: [f64; 15] = [
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    f64::INFINITY,
];

/// Counts per bucket of [`LATENCY_BOUNDS`] (not cumulative), and their sum.
#[derive(Clone, Debug, Default)]
pub struct LatencyHistogram {
    count: u64,
    total: Duration,
    buckets: [u64; LATENCY_BOUNDS.len()],
}

impl LatencyHistogram {
    pub fn record(&mut self, took: Duration) {
        self.count += 1;
        self.total += took;
        let secs = took.as_secs_f64();
        let bucket = LATENCY_BOUNDS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BOUNDS.len() - 1);
        self.buckets[bucket] += 1;
    }

    pub fn stats(&self) -> LatencyStats {
        LatencyStats {
            count: self.count,
            seconds_total: self.total.as_secs_f64(),
            buckets: LATENCY_BOUNDS.iter().copied().zip(self.buckets).collect(),
        }
    }
}

/// A histogram as reported: how many, how long in all, and (upper bound in seconds, count in
/// that bucket) pairs, the last bound being `f64::INFINITY`. Counts are per bucket, not
/// cumulative.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LatencyStats {
    pub count: u64,
    pub seconds_total: f64,
    pub buckets: Vec<(f64, u64)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_latency_lands_in_the_first_bucket_that_holds_it() {
        let mut h = LatencyHistogram::default();
        for us in [50, 100, 101, 2_000, 3_000_000] {
            h.record(Duration::from_micros(us));
        }
        let s = h.stats();
        assert_eq!(s.count, 5);
        assert!((s.seconds_total - 3.002251).abs() < 1e-9);
        let count_at = |bound: f64| s.buckets.iter().find(|(b, _)| *b == bound).unwrap().1;
        assert_eq!(count_at(0.0001), 2, "50 µs and exactly 100 µs");
        assert_eq!(count_at(0.00025), 1);
        assert_eq!(count_at(0.0025), 1);
        assert_eq!(
            count_at(f64::INFINITY),
            1,
            "3 s is past the last finite bound"
        );
        assert_eq!(s.buckets.iter().map(|(_, n)| n).sum::<u64>(), 5);
    }
}

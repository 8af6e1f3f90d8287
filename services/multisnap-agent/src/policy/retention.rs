//! Which of a policy's snapshots retention keeps.
//!
//! The rule (docs/POLICY.md): for each class (hourly, daily, weekly, monthly) with a count N,
//! group the policy's snapshots by the class's UTC bucket (hour, day, ISO week, month); the
//! newest snapshot of a bucket represents it; the representatives of the N newest buckets are
//! kept. A snapshot kept by any class stays. With no count set, counts keep everything. A
//! maximum age then drops whatever is older than it. The newest policy snapshot always stays,
//! so a policy never prunes itself down to nothing.

use super::calendar::{Class, UnixSecs};
use std::collections::BTreeSet;

/// Counts per class and the age limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    pub hourly: u32,
    pub daily: u32,
    pub weekly: u32,
    pub monthly: u32,
    /// Seconds; 0 for none.
    pub max_age: u64,
}

impl Retention {
    pub fn count(&self, class: Class) -> u32 {
        match class {
            Class::Hourly => self.hourly,
            Class::Daily => self.daily,
            Class::Weekly => self.weekly,
            Class::Monthly => self.monthly,
        }
    }

    fn counts_anything(&self) -> bool {
        Class::ALL.iter().any(|c| self.count(*c) > 0)
    }
}

/// A policy snapshot as retention sees it: when it was taken and a tie-breaker that grows
/// with creation order (the store's snapshot id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Taken {
    pub at: UnixSecs,
    pub id: u64,
}

/// The snapshots of `all` that retention keeps at time `now`.
pub fn kept(all: &[Taken], rule: &Retention, now: UnixSecs) -> BTreeSet<Taken> {
    let mut newest_first: Vec<Taken> = all.to_vec();
    newest_first.sort_unstable_by(|a, b| b.cmp(a));
    newest_first.dedup();
    let Some(&newest) = newest_first.first() else {
        return BTreeSet::new();
    };
    let mut keep: BTreeSet<Taken> = if rule.counts_anything() {
        let mut keep = BTreeSet::new();
        for class in Class::ALL {
            let n = rule.count(class) as usize;
            let mut buckets_seen = 0usize;
            let mut last_bucket = None;
            // Newest first, so the first snapshot met in each bucket is its representative.
            for t in &newest_first {
                if buckets_seen >= n {
                    break;
                }
                let b = class.bucket(t.at);
                if last_bucket != Some(b) {
                    last_bucket = Some(b);
                    buckets_seen += 1;
                    keep.insert(*t);
                }
            }
        }
        keep
    } else {
        newest_first.iter().copied().collect()
    };
    if rule.max_age > 0 {
        let limit = i64::try_from(rule.max_age).unwrap_or(i64::MAX);
        keep.retain(|t| now.saturating_sub(t.at) <= limit);
    }
    keep.insert(newest);
    keep
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::calendar::{days_in_month, DAY, HOUR};
    use proptest::prelude::*;

    /// The rule as stated, by brute force over every pair: a snapshot is kept by a class when
    /// no snapshot in its bucket is newer and fewer than N buckets newer than its own hold
    /// snapshots. Buckets are computed independently of `Class::bucket`: weeks as days since
    /// a known Monday, months by walking years and months from 1970.
    fn reference(all: &[Taken], rule: &Retention, now: UnixSecs) -> BTreeSet<Taken> {
        fn month_index(t: UnixSecs) -> i64 {
            let mut days = t.div_euclid(DAY);
            let (mut y, mut m) = (1970i64, 0i64);
            loop {
                let len = i64::from(days_in_month(y, m as u32 + 1));
                if days < len {
                    return (y - 1970) * 12 + m;
                }
                days -= len;
                m += 1;
                if m == 12 {
                    m = 0;
                    y += 1;
                }
            }
        }
        let bucket = |class: Class, t: UnixSecs| -> i64 {
            match class {
                Class::Hourly => t / HOUR,
                Class::Daily => t / DAY,
                // 1970-01-05 was a Monday.
                Class::Weekly => (t / DAY - 4).div_euclid(7),
                Class::Monthly => month_index(t),
            }
        };
        let any_count = Class::ALL.iter().any(|c| rule.count(*c) > 0);
        let newest = all.iter().max().copied();
        let mut out = BTreeSet::new();
        for s in all {
            let by_count = !any_count
                || Class::ALL.iter().any(|&c| {
                    let mine = bucket(c, s.at);
                    let newest_in_bucket = all.iter().all(|o| bucket(c, o.at) != mine || o <= s);
                    let newer_buckets: BTreeSet<i64> = all
                        .iter()
                        .map(|o| bucket(c, o.at))
                        .filter(|b| *b > mine)
                        .collect();
                    newest_in_bucket && (newer_buckets.len() as u32) < rule.count(c)
                });
            let young = rule.max_age == 0 || now - s.at <= rule.max_age as i64;
            if (by_count && young) || Some(*s) == newest {
                out.insert(*s);
            }
        }
        out
    }

    fn hours(list: &[i64]) -> Vec<Taken> {
        list.iter()
            .enumerate()
            .map(|(i, h)| Taken {
                at: h * HOUR,
                id: i as u64 + 1,
            })
            .collect()
    }

    #[test]
    fn hourly_and_daily_over_thirty_hours() {
        // Every hour from day 0 00:00 to day 1 06:00; keep 6 hourly and 2 daily.
        let all = hours(&(0..=30).collect::<Vec<_>>());
        let rule = Retention {
            hourly: 6,
            daily: 2,
            ..Retention::default()
        };
        let kept: Vec<i64> = kept(&all, &rule, 30 * HOUR)
            .iter()
            .map(|t| t.at / HOUR)
            .collect();
        assert_eq!(kept, [23, 25, 26, 27, 28, 29, 30]);
    }

    #[test]
    fn age_limit_and_the_newest_always_stays() {
        let all = hours(&[0, 1, 2, 3]);
        let rule = Retention {
            max_age: 3600,
            ..Retention::default()
        };
        let at = |s: BTreeSet<Taken>| s.iter().map(|t| t.at / HOUR).collect::<Vec<_>>();
        assert_eq!(at(kept(&all, &rule, 3 * HOUR)), [2, 3]);
        // Long after: everything is too old, but the newest stays.
        assert_eq!(at(kept(&all, &rule, 100 * HOUR)), [3]);
        // No counts and no age: nothing is pruned.
        assert_eq!(
            at(kept(&all, &Retention::default(), 100 * HOUR)),
            [0, 1, 2, 3]
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]
        #[test]
        fn kept_set_matches_the_brute_force_reference(
            offsets in proptest::collection::vec(0i64..(3 * 366 * DAY), 0..60),
            start in 0i64..(60 * 366 * DAY),
            hourly in 0u32..8, daily in 0u32..8, weekly in 0u32..5, monthly in 0u32..4,
            max_age_hours in prop_oneof![Just(0u64), 1u64..(2 * 366 * 24)],
            late in 0i64..(30 * DAY),
        ) {
            let all: Vec<Taken> = offsets.iter().enumerate()
                .map(|(i, o)| Taken { at: start + o, id: i as u64 + 1 })
                .collect();
            let rule = Retention { hourly, daily, weekly, monthly, max_age: max_age_hours * 3600 };
            let now = all.iter().map(|t| t.at).max().unwrap_or(start) + late;
            prop_assert_eq!(kept(&all, &rule, now), reference(&all, &rule, now));
        }
    }
}

//! When a policy's snapshots are due: every interval (slots from the Unix epoch) or at the
//! times of a cron-like schedule (UTC). Either way time is cut into slots, each starting at a
//! scheduled time and lasting until the next; a snapshot is due once the clock is in a later
//! slot than the last snapshot taken.

use super::calendar::UnixSecs;
use super::cron::Cron;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Timing {
    /// Every this many seconds, at the multiples of it since the epoch.
    Every(i64),
    Schedule(Cron),
}

impl Timing {
    /// The start of the slot `t` is in: the latest scheduled time at or before `t`.
    pub fn slot_start(&self, t: UnixSecs) -> Option<UnixSecs> {
        match self {
            Timing::Every(i) => t.div_euclid(*i).checked_mul(*i),
            Timing::Schedule(c) => c.at_or_before(t),
        }
    }

    /// The first scheduled time after `t`.
    pub fn next_after(&self, t: UnixSecs) -> Option<UnixSecs> {
        match self {
            Timing::Every(i) => t.div_euclid(*i).checked_add(1)?.checked_mul(*i),
            Timing::Schedule(c) => c.next_after(t),
        }
    }

    /// The shortest time between two scheduled times: the floor of the age limit and the
    /// longest wait before a retry.
    pub fn shortest_gap(&self) -> i64 {
        match self {
            Timing::Every(i) => *i,
            Timing::Schedule(c) => c.shortest_gap(),
        }
    }

    /// The longest time between two scheduled times: what the overdue alert compares the
    /// newest snapshot's age with.
    pub fn longest_gap(&self) -> i64 {
        match self {
            Timing::Every(i) => *i,
            Timing::Schedule(c) => c.longest_gap(),
        }
    }

    /// The gap the name template must tell apart (see [`Cron::name_gap`]).
    pub fn name_gap(&self) -> i64 {
        match self {
            Timing::Every(i) => *i,
            Timing::Schedule(c) => c.name_gap(),
        }
    }

    /// For logs: `every 3600 s` or `at "0 * * * *" UTC`.
    pub fn describe(&self) -> String {
        match self {
            Timing::Every(i) => format!("every {i} s"),
            Timing::Schedule(c) => format!("at {:?} UTC", c.as_str()),
        }
    }
}

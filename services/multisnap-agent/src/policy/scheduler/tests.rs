//! The scheduler against a volume in memory and a clock the test sets.

use super::*;
use crate::policy::calendar::{DAY, HOUR};
use crate::policy::holds::Hold;
use crate::policy::{PolicyRequest, PolicySpec};
use multisnap_store::SnapshotInfo;
use std::sync::atomic::AtomicI64;

struct TestClock(AtomicI64);

impl Clock for TestClock {
    fn now(&self) -> Result<UnixSecs, String> {
        Ok(self.0.load(Ordering::SeqCst))
    }
    fn poll_interval(&self) -> std::time::Duration {
        std::time::Duration::from_millis(10)
    }
}

/// Holds every snapshot whose name is in the list (what a mirror's base hold will do).
struct NamedHold(Mutex<Vec<String>>);

impl Hold for NamedHold {
    fn holder(&self, _: &Volume, s: &SnapshotInfo) -> Option<String> {
        self.0
            .lock()
            .contains(&s.name)
            .then(|| "a test mirror".to_string())
    }
}

/// 2026-01-01T00:00:00Z, a Thursday.
const START: UnixSecs = 1_767_225_600;

struct Fixture {
    volume: Arc<Volume>,
    clock: Arc<TestClock>,
    scheduler: Scheduler,
    hold: Arc<NamedHold>,
}

struct ArcHold(Arc<NamedHold>);
impl Hold for ArcHold {
    fn holder(&self, v: &Volume, s: &SnapshotInfo) -> Option<String> {
        self.0.holder(v, s)
    }
}

fn fixture(req: PolicyRequest) -> Fixture {
    let volume = crate::volumes::volume_for_tests();
    let clock = Arc::new(TestClock(AtomicI64::new(START)));
    let hold = Arc::new(NamedHold(Mutex::new(Vec::new())));
    let holds = Holds::store_only().with(Box::new(ArcHold(hold.clone())));
    let scheduler = Scheduler::new(clock.clone(), holds);
    let spec = PolicySpec::check(&req).unwrap();
    volume.policy.set(spec, "uuid", START).unwrap();
    Fixture {
        volume,
        clock,
        scheduler,
        hold,
    }
}

impl Fixture {
    fn at(&self, t: UnixSecs) {
        self.clock.0.store(t, Ordering::SeqCst);
        self.scheduler.look(&self.volume);
    }

    /// The live snapshots (deleted ones stay listed, DELETING, until reclaimed).
    fn names(&self) -> Vec<String> {
        self.volume
            .store
            .list_snapshots()
            .into_iter()
            .filter(|s| s.state == SnapshotState::Ready)
            .map(|s| s.name)
            .collect()
    }
}

fn hourly(keep_hourly: u32, keep_daily: u32) -> PolicyRequest {
    PolicyRequest {
        interval_seconds: 3600,
        name_template: "p-%Y%m%d-%H%M".into(),
        retention: crate::policy::retention::Retention {
            hourly: keep_hourly,
            daily: keep_daily,
            ..Default::default()
        },
        ..Default::default()
    }
}

#[test]
fn thirty_hours_of_hourly_snapshots_keep_the_expected_set() {
    let f = fixture(hourly(6, 2));
    // A user snapshot named like the template, taken before the policy's first look: the
    // policy neither adopts nor prunes it.
    f.volume.store.create_snapshot("p-20251231-2300").unwrap();
    for h in 0..=30 {
        // A little late each time, as a real scheduler is.
        f.at(START + h * HOUR + 5);
        // Looking again within the same hour takes nothing more.
        f.at(START + h * HOUR + 1800);
    }
    assert_eq!(
        f.names(),
        [
            "p-20251231-2300",
            "p-20260101-2300",
            "p-20260102-0100",
            "p-20260102-0200",
            "p-20260102-0300",
            "p-20260102-0400",
            "p-20260102-0500",
            "p-20260102-0600",
        ]
    );
    let c = &f.volume.policy.counters;
    assert_eq!(c.taken.load(Ordering::Relaxed), 31);
    assert_eq!(c.pruned.load(Ordering::Relaxed), 24);
}

#[test]
fn a_user_snapshot_taking_the_templates_name_is_never_adopted() {
    let f = fixture(hourly(1, 0));
    f.volume.store.create_snapshot("p-20260101-0000").unwrap();
    f.at(START);
    let a = f.volume.policy.get().unwrap();
    assert!(a.last_error.unwrap().contains("exists already"));
    assert_eq!(
        f.volume.policy.counters.failures(FailureReason::NameTaken),
        1
    );
    // Retried a minute later, under the name of that minute.
    f.at(START + 30);
    assert_eq!(f.names(), ["p-20260101-0000"]);
    f.at(START + 60);
    assert_eq!(f.names(), ["p-20260101-0000", "p-20260101-0001"]);
    f.at(START + HOUR);
    f.at(START + 2 * HOUR);
    assert_eq!(f.names(), ["p-20260101-0000", "p-20260101-0200"]);
}

#[test]
fn held_snapshots_stay_until_let_go() {
    let f = fixture(hourly(1, 0));
    f.at(START);
    f.hold.0.lock().push("p-20260101-0000".into());
    f.at(START + HOUR);
    f.at(START + 2 * HOUR);
    assert_eq!(
        f.names(),
        ["p-20260101-0000", "p-20260101-0200"],
        "the held one stays, the unheld 01:00 goes"
    );
    let a = f.volume.policy.get().unwrap();
    assert_eq!(a.held, ["p-20260101-0000 (held by a test mirror)"]);
    f.hold.0.lock().clear();
    f.at(START + 2 * HOUR + 60);
    assert_eq!(f.names(), ["p-20260101-0200"]);
    assert!(f.volume.policy.get().unwrap().held.is_empty());
}

#[test]
fn a_long_gap_takes_one_snapshot_not_one_per_missed_slot() {
    let f = fixture(hourly(100, 0));
    f.at(START);
    f.at(START + 10 * HOUR + 17);
    f.at(START + 10 * HOUR + 600);
    assert_eq!(f.names(), ["p-20260101-0000", "p-20260101-1000"]);
    // The clock going back (a corrected system clock) takes nothing until it passes the
    // last slot again.
    f.at(START + 5 * HOUR);
    assert_eq!(f.names().len(), 2);
}

#[test]
fn max_age_prunes_old_ones_but_never_the_newest() {
    let mut req = hourly(0, 0);
    req.retention.max_age = 3 * HOUR as u64;
    let f = fixture(req);
    for h in 0..6 {
        f.at(START + h * HOUR);
    }
    assert_eq!(
        f.names(),
        [
            "p-20260101-0200",
            "p-20260101-0300",
            "p-20260101-0400",
            "p-20260101-0500"
        ]
    );
    f.at(START + 3 * DAY + 10);
    assert_eq!(f.names(), ["p-20260104-0000"]);
}

#[test]
fn snapshots_a_user_deleted_are_forgotten_and_cleared_policies_stop() {
    let f = fixture(hourly(5, 0));
    f.at(START);
    f.at(START + HOUR);
    let s = f.volume.store.snapshot_by_name("p-20260101-0000").unwrap();
    f.volume.store.delete_snapshot(s.id).unwrap();
    f.at(START + HOUR + 1);
    assert_eq!(f.volume.policy.get().unwrap().saved.taken.len(), 1);
    assert!(f.volume.policy.clear().unwrap());
    f.at(START + 5 * HOUR);
    assert_eq!(f.names(), ["p-20260101-0100"]);
    assert!(!f.volume.policy.clear().unwrap());
}

/// 09:00, 13:00 and 17:00 on weekdays, from Thursday 2026-01-01 to the Monday after.
#[test]
fn a_weekday_schedule_skips_the_weekend_and_makes_up_a_downtime_once() {
    let f = fixture(PolicyRequest {
        schedule: "0 9-17/4 * * mon-fri".into(),
        name_template: "p-%Y%m%d-%H%M".into(),
        retention: crate::policy::retention::Retention {
            hourly: 2,
            daily: 3,
            ..Default::default()
        },
        ..Default::default()
    });
    // The first look takes one at once (its slot began Wednesday 17:00).
    f.at(START + 8 * HOUR);
    let a = f.volume.policy.get().unwrap();
    assert_eq!(a.next_due(), Some(START + 9 * HOUR));
    for (day, hour) in [
        (0, 9),
        (0, 12),
        (0, 13),
        (0, 17),
        (0, 23),
        (1, 9),
        (1, 13),
        (1, 17),
    ] {
        f.at(START + day * DAY + hour * HOUR + 30);
    }
    // Keep 2 hourly (Friday 13:00 and 17:00) and the newest of 3 days (Thursday 17:00).
    assert_eq!(
        f.names(),
        ["p-20260101-1700", "p-20260102-1300", "p-20260102-1700"]
    );
    assert_eq!(f.volume.policy.counters.taken.load(Ordering::Relaxed), 7);
    // The weekend takes nothing; next is Monday 09:00.
    for hour in [9, 13, 17, 30, 37, 41] {
        f.at(START + 2 * DAY + hour * HOUR);
    }
    assert_eq!(f.volume.policy.counters.taken.load(Ordering::Relaxed), 7);
    let monday = START + 4 * DAY;
    assert_eq!(
        f.volume.policy.get().unwrap().next_due(),
        Some(monday + 9 * HOUR)
    );
    // Nothing looked from Sunday until Monday 15:30, past 09:00 and 13:00: one snapshot.
    f.at(monday + 15 * HOUR + 30 * 60);
    f.at(monday + 16 * HOUR);
    assert_eq!(f.volume.policy.counters.taken.load(Ordering::Relaxed), 8);
    // A clock set back to Friday takes nothing, nor does Monday 15:59 again.
    f.at(START + DAY + 17 * HOUR + 60);
    f.at(monday + 15 * HOUR + 59 * 60);
    assert_eq!(f.volume.policy.counters.taken.load(Ordering::Relaxed), 8);
    f.at(monday + 17 * HOUR);
    assert_eq!(
        f.names(),
        [
            "p-20260101-1700",
            "p-20260102-1700",
            "p-20260105-1530",
            "p-20260105-1700"
        ]
    );
}

/// Replacing an interval policy with a schedule keeps the record: the new schedule's slot of
/// the newest snapshot counts as taken.
#[test]
fn replacing_an_interval_with_a_schedule_keeps_the_record_and_the_slot() {
    let f = fixture(hourly(100, 0));
    f.at(START + 9 * HOUR + 5 * 60);
    let spec = PolicySpec::check(&PolicyRequest {
        schedule: "0 9,12 * * *".into(),
        name_template: "p-%Y%m%d-%H%M".into(),
        ..Default::default()
    })
    .unwrap();
    f.volume
        .policy
        .set(spec, "uuid", START + 9 * HOUR + 10 * 60)
        .unwrap();
    f.at(START + 9 * HOUR + 20 * 60);
    f.at(START + 11 * HOUR);
    assert_eq!(f.names(), ["p-20260101-0905"]);
    f.at(START + 12 * HOUR);
    assert_eq!(f.names(), ["p-20260101-0905", "p-20260101-1200"]);
}

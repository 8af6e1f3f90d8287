//! Schedules: parsing, known dates, and the searches against a brute-force minute-by-minute
//! reading of the five fields on random schedules and times.

use super::*;
use proptest::prelude::*;
use std::collections::BTreeSet;

/// 2026-01-01T00:00:00Z, a Thursday.
const NEW_YEAR_2026: UnixSecs = 1_767_225_600;

fn refused(text: &str) -> String {
    Cron::parse(text).unwrap_err()
}

#[test]
fn bad_schedules_say_which_field_and_why() {
    assert!(refused("* * * *").contains("has 4 fields; give 5"));
    assert!(refused("").contains("has 0 fields"));
    assert!(refused("61 * * * *").contains("minute 61 is out of range 0-59"));
    assert!(refused("0 24 * * *").contains("hour 24 is out of range 0-23"));
    assert!(refused("0 0 0 * *").contains("day of month 0 is out of range 1-31"));
    assert!(refused("0 0 * 13 *").contains("month 13 is out of range 1-12"));
    assert!(refused("0 0 * * 8").contains("day of week 8 is out of range 0-7"));
    assert!(refused("*/0 * * * *").contains("minute step \"0\" is not a whole number"));
    assert!(refused("0 0 * * fri-mon").contains("range \"fri-mon\" runs backwards"));
    let e = refused("0 0 * foo *");
    assert!(
        e.contains("month \"foo\" is not a number or a name (jan"),
        "{e}"
    );
    assert!(refused("0 0 * * ,").contains("day of week \"\" is not a number"));
    assert!(refused("x * * * *").contains("minute \"x\" is not a number"));
    for never in [
        "0 0 31 2 *",
        "0 0 30 2 *",
        "0 0 31 4,6,9,11 *",
        "0 0 30,31 feb *",
    ] {
        assert!(refused(never).contains("never matches"), "{never}");
    }
}

#[test]
fn names_steps_and_the_day_rule() {
    let c = Cron::parse("0   0 * JAN Mon-Fri").unwrap();
    assert_eq!(c.as_str(), "0 0 * JAN Mon-Fri");
    assert_eq!(c.months, 1 << 1);
    assert_eq!(c.weekdays, 0b011_1110);
    // Sunday is 0 or 7; a range may end on 7.
    assert_eq!(Cron::parse("0 0 * * 5-7").unwrap().weekdays, 0b110_0001);
    assert_eq!(Cron::parse("0 0 * * 7").unwrap().weekdays, 1);
    assert_eq!(Cron::parse("5/20 * * * *").unwrap().times[..3], [5, 25, 45]);
    assert_eq!(
        Cron::parse("0 8-18/5 * * *").unwrap().times,
        [480, 780, 1080]
    );
    // Both day fields restricted: either matches. The 1st of February 2026 is a Sunday.
    let c = Cron::parse("0 0 1 * mon").unwrap();
    assert!(c.either_day);
    let feb1 = NEW_YEAR_2026 / DAY + 31;
    assert!(c.matches_on(feb1) && c.matches_on(feb1 + 1) && !c.matches_on(feb1 + 2));
    // A day field starting with `*` is not a restriction for the rule: both must match.
    let c = Cron::parse("0 0 */2 * mon").unwrap();
    assert!(!c.either_day);
    assert!(!c.matches_on(feb1) && !c.matches_on(feb1 + 1) && c.matches_on(feb1 + 8));
}

#[test]
fn gaps_of_known_schedules() {
    let gaps = |t: &str| {
        let c = Cron::parse(t).unwrap();
        (c.shortest_gap(), c.longest_gap(), c.name_gap())
    };
    assert_eq!(gaps("*/15 * * * *"), (900, 900, 900));
    assert_eq!(gaps("0 */6 * * *"), (6 * HOUR, 6 * HOUR, 6 * HOUR));
    // Off the hour: names need the minute even though the gap is a day.
    assert_eq!(gaps("15 2 * * *"), (DAY, DAY, HOUR - MINUTE));
    assert_eq!(gaps("0 2 * * *"), (DAY, DAY, DAY - MINUTE));
    assert_eq!(gaps("0 0 * * *"), (DAY, DAY, DAY));
    // 09:00, 13:00, 17:00 on weekdays: Friday 17:00 to Monday 09:00 is the longest.
    assert_eq!(
        gaps("0 9-17/4 * * mon-fri"),
        (4 * HOUR, 64 * HOUR, 4 * HOUR)
    );
    assert_eq!(gaps("0,30 8-18 * * 1-5").0, 30 * MINUTE);
    // Leap days: four years apart, eight across a century year that is not a leap year.
    assert_eq!(gaps("0 0 29 2 *").0, 1461 * DAY);
    assert_eq!(gaps("0 0 29 2 *").1, 2921 * DAY);
    assert_eq!(gaps("0 0 1 1 *").1, 366 * DAY);
    // August 31st to October 31st.
    assert_eq!(gaps("0 0 31 * *").1, 61 * DAY);
}

#[test]
fn known_next_and_previous_times() {
    let c = Cron::parse("0 9-17/4 * * mon-fri").unwrap();
    let friday_17 = 1_767_373_200; // 2026-01-02T17:00:00Z
    let monday_9 = 1_767_603_600; // 2026-01-05T09:00:00Z
    assert_eq!(c.next_after(friday_17), Some(monday_9));
    assert_eq!(c.next_after(friday_17 - 1), Some(friday_17));
    assert_eq!(c.at_or_before(friday_17), Some(friday_17));
    assert_eq!(c.at_or_before(monday_9 - 1), Some(friday_17));
    assert_eq!(
        c.at_or_before(NEW_YEAR_2026),
        Some(NEW_YEAR_2026 - 7 * HOUR)
    );
    let leap = Cron::parse("0 0 29 2 *").unwrap();
    assert_eq!(leap.next_after(NEW_YEAR_2026), Some(1_835_395_200)); // 2028-02-29
    let june_2100 = 4_115_577_600;
    assert_eq!(leap.at_or_before(june_2100), Some(3_981_312_000)); // 2096-02-29
    assert_eq!(leap.next_after(june_2100), Some(4_233_686_400)); // 2104-02-29
                                                                 // The ends of time give no answer rather than overflow.
    assert_eq!(leap.next_after(i64::MAX), None);
    assert_eq!(leap.at_or_before(i64::MIN), None);
    assert!(leap.at_or_before(i64::MAX).is_some());
}

/// One field of a random schedule: its text, and the values it allows worked out here by
/// plain arithmetic, independently of the parser.
#[derive(Debug, Clone)]
struct FieldCase {
    text: String,
    values: BTreeSet<u32>,
}

fn field(min: u32, max: u32, names: &'static [&'static str]) -> impl Strategy<Value = FieldCase> {
    let value = min..=max;
    let show = move |v: u32, by_name: bool| match names.get((v - min) as usize) {
        Some(n) if by_name => n.to_string(),
        _ => v.to_string(),
    };
    prop_oneof![
        2 => Just(FieldCase {
            text: "*".into(),
            values: (min..=max).collect()
        }),
        1 => (1..=max / 2 + 1).prop_map(move |step| FieldCase {
            text: format!("*/{step}"),
            values: (min..=max).step_by(step as usize).collect(),
        }),
        2 => (value.clone(), value.clone(), 1..4u32, any::<bool>()).prop_map(move |(a, b, step, by_name)| {
            let (a, b) = (a.min(b), a.max(b));
            FieldCase {
                text: format!("{}-{}/{step}", show(a, by_name), show(b, by_name)),
                values: (a..=b).step_by(step as usize).collect(),
            }
        }),
        3 => (proptest::collection::btree_set(value, 1..4), any::<bool>()).prop_map(move |(set, by_name)| FieldCase {
            text: set.iter().map(|v| show(*v, by_name)).collect::<Vec<_>>().join(","),
            values: set,
        }),
    ]
}

/// A schedule that may never match, with its fields' value sets.
fn schedule() -> impl Strategy<Value = (String, [FieldCase; 5])> {
    // Day-of-month leaning to the ends of months, month to February, so leap days and short
    // months come up often.
    let day_of_month = prop_oneof![
        3 => field(1, 31, &[]),
        1 => proptest::sample::select(vec!["29", "30", "31", "28-31", "29,31"]).prop_map(|t| FieldCase {
            text: t.to_string(),
            values: match t {
                "28-31" => (28..=31).collect(),
                "29,31" => [29, 31].into(),
                n => [n.parse().unwrap()].into(),
            },
        }),
    ];
    let month = prop_oneof![3 => field(1, 12, &MONTHS), 1 => Just(FieldCase { text: "feb".into(), values: [2].into() })];
    (
        field(0, 59, &[]),
        field(0, 23, &[]),
        day_of_month,
        month,
        field(0, 7, &WEEKDAYS),
    )
        .prop_map(|(a, b, c, d, e)| {
            let text = format!("{} {} {} {} {}", a.text, b.text, c.text, d.text, e.text);
            (text, [a, b, c, d, e])
        })
}

/// The brute-force reading: does the minute starting at `t` match the fields?
fn matches(f: &[FieldCase; 5], t: UnixSecs) -> bool {
    let c = calendar::civil(t);
    f[0].values.contains(&c.minute) && f[1].values.contains(&c.hour) && day_matches(f, t)
}

/// Does the day of `t` match the month and day fields?
fn day_matches(f: &[FieldCase; 5], t: UnixSecs) -> bool {
    let c = calendar::civil(t);
    let weekday = (t.div_euclid(DAY) + 4).rem_euclid(7) as u32;
    let dom = f[2].values.contains(&c.day);
    let dow = f[4].values.contains(&weekday) || (weekday == 0 && f[4].values.contains(&7));
    let restricted = |x: &FieldCase| !x.text.starts_with('*');
    let day = if restricted(&f[2]) && restricted(&f[4]) {
        dom || dow
    } else {
        dom && dow
    };
    f[3].values.contains(&c.month) && day
}

/// Times near month ends around leap days of 2000, 2024 and 2100 (not a leap year), the turn
/// of a year, or anywhere from 1970 to 2400.
fn time() -> impl Strategy<Value = UnixSecs> {
    prop_oneof![
        (
            proptest::sample::select(vec![
                951_696_000i64,
                1_709_078_400,
                4_107_456_000,
                1_703_980_800
            ]),
            0..4 * DAY
        )
            .prop_map(|(base, off)| base + off),
        0..13_569_465_600i64,
    ]
}

/// How far the brute force looks: 35 days of minutes.
const WINDOW: i64 = 35 * DAY;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn searches_agree_with_a_minute_by_minute_reading((text, fields) in schedule(), t in time()) {
        let Ok(cron) = Cron::parse(&text) else {
            // Refused: then no day of a whole calendar cycle matches the fields.
            let any_day = (0..CYCLE_DAYS).any(|d| day_matches(&fields, d * DAY));
            prop_assert!(!any_day, "{text} refused but some day matches");
            return Ok(());
        };
        let first_minute_after = (t.div_euclid(MINUTE) + 1) * MINUTE;
        let want_next = (0..WINDOW / MINUTE)
            .map(|i| first_minute_after + i * MINUTE)
            .find(|m| matches(&fields, *m));
        let got_next = cron.next_after(t).unwrap();
        match want_next {
            Some(w) => prop_assert_eq!(got_next, w, "next after {} for {}", t, text),
            None => prop_assert!(got_next >= first_minute_after + WINDOW, "{text}: {got_next}"),
        }
        let last_minute = t.div_euclid(MINUTE) * MINUTE;
        let want_prev = (0..WINDOW / MINUTE)
            .map(|i| last_minute - i * MINUTE)
            .find(|m| matches(&fields, *m));
        let got_prev = cron.at_or_before(t).unwrap();
        match want_prev {
            Some(w) => prop_assert_eq!(got_prev, w, "at or before {} for {}", t, text),
            None => prop_assert!(got_prev <= last_minute - WINDOW, "{text}: {got_prev}"),
        }
        prop_assert!(matches(&fields, got_next) && matches(&fields, got_prev));
        // Consecutive scheduled times keep within the gaps found over the cycle.
        let mut at = got_prev;
        for _ in 0..20 {
            let next = cron.next_after(at).unwrap();
            let gap = next - at;
            prop_assert!(gap >= cron.shortest_gap() && gap <= cron.longest_gap(), "{text}: gap {gap}");
            prop_assert_eq!(cron.at_or_before(next), Some(next));
            prop_assert_eq!(cron.at_or_before(next - 1), Some(at));
            at = next;
        }
    }
}

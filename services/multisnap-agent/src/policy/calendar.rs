//! UTC calendar arithmetic on Unix seconds: civil dates, ISO weeks and the retention buckets.
//! The agent needs only these few conversions, so they are done here rather than with a
//! date library; leap seconds do not exist in Unix time, so every day has 86400 seconds.

/// Seconds since 1970-01-01T00:00:00Z. Negative times are before 1970.
pub type UnixSecs = i64;

pub const MINUTE: i64 = 60;
pub const HOUR: i64 = 3600;
pub const DAY: i64 = 86400;

/// A UTC date and time of day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Civil {
    pub year: i64,
    /// 1..=12
    pub month: u32,
    /// 1..=31
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian. The era arithmetic
/// (400-year cycles of 146097 days starting on March 1st) keeps February last in each
/// computed year so leap days need no special case.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

pub fn civil(t: UnixSecs) -> Civil {
    let days = t.div_euclid(DAY);
    let secs = t.rem_euclid(DAY);
    let (year, month, day) = civil_from_days(days);
    Civil {
        year,
        month,
        day,
        hour: (secs / HOUR) as u32,
        minute: (secs % HOUR / MINUTE) as u32,
        second: (secs % MINUTE) as u32,
    }
}

/// The retention classes: each snapshot falls in one bucket per class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Class {
    Hourly,
    Daily,
    Weekly,
    Monthly,
}

impl Class {
    pub const ALL: [Class; 4] = [Class::Hourly, Class::Daily, Class::Weekly, Class::Monthly];

    pub fn name(self) -> &'static str {
        match self {
            Class::Hourly => "hourly",
            Class::Daily => "daily",
            Class::Weekly => "weekly",
            Class::Monthly => "monthly",
        }
    }

    /// The bucket of `t` in this class, as a number that grows with time: the UTC hour, the
    /// UTC day, the ISO week (numbered by its Monday) or the UTC month since the epoch.
    pub fn bucket(self, t: UnixSecs) -> i64 {
        match self {
            Class::Hourly => t.div_euclid(HOUR),
            Class::Daily => t.div_euclid(DAY),
            Class::Weekly => iso_week_index(t),
            Class::Monthly => {
                let c = civil(t);
                c.year * 12 + i64::from(c.month) - 1
            }
        }
    }
}

/// The ISO week of `t` (weeks run Monday to Sunday), numbered by the days from the epoch to
/// its Monday over 7. 1970-01-01 was a Thursday, so the Monday of its week is day -3.
pub fn iso_week_index(t: UnixSecs) -> i64 {
    (t.div_euclid(DAY) + 3).div_euclid(7)
}

/// Days in a 400-year Gregorian cycle: the calendar, weekdays included (146097 is a multiple
/// of 7), repeats with it, so a rule on dates that matches no day of one cycle never does.
pub const CYCLE_DAYS: i64 = 146_097;

/// The day of the week of the `days`th day since the epoch: 0 is Sunday, 6 Saturday
/// (1970-01-01 was a Thursday).
pub fn weekday(days: i64) -> u32 {
    (days + 4).rem_euclid(7) as u32
}

/// Days in `month` (1..=12) of `year`, by the Gregorian rule spelled out (the tests use it
/// as a reference independent of the era arithmetic above).
pub fn days_in_month(year: i64, month: u32) -> u32 {
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ISO 8601 (year, week number) of `t`: the year is that of the week's Thursday.
    pub fn iso_year_week(t: UnixSecs) -> (i64, u32) {
        let monday = iso_week_index(t) * 7 - 3;
        let thursday = monday + 3;
        let (year, _, _) = civil_from_days(thursday);
        let jan1 = days_from_year_start(year);
        let week = (thursday - jan1) / 7 + 1;
        (year, week as u32)
    }

    /// Days from the epoch to January 1st of `year`.
    fn days_from_year_start(year: i64) -> i64 {
        // Inverse of civil_from_days for (year, 1, 1), by the same era arithmetic.
        let y = year - 1;
        let era = y.div_euclid(400);
        let yoe = y.rem_euclid(400);
        let doy = 306; // January 1st is day 306 of the March-based year before.
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        era * 146_097 + doe - 719_468
    }

    #[test]
    fn known_dates() {
        assert_eq!(
            civil(0),
            Civil {
                year: 1970,
                month: 1,
                day: 1,
                hour: 0,
                minute: 0,
                second: 0
            }
        );
        // 2000-02-29T12:34:56Z, a leap day of a century leap year.
        let c = civil(951_827_696);
        assert_eq!((c.year, c.month, c.day), (2000, 2, 29));
        assert_eq!((c.hour, c.minute, c.second), (12, 34, 56));
        // 2026-12-06T14:10:26Z
        let c = civil(1_796_566_226);
        assert_eq!((c.year, c.month, c.day, c.hour), (2026, 12, 6, 14));
        // 1969-12-31T23:59:59Z
        let c = civil(-1);
        assert_eq!((c.year, c.month, c.day, c.second), (1969, 12, 31, 59));
    }

    #[test]
    fn iso_weeks() {
        // 2021-01-03 (Sunday) belongs to 2020-W53; 2021-01-04 (Monday) starts 2021-W01.
        assert_eq!(iso_year_week(1_609_632_000), (2020, 53));
        assert_eq!(iso_year_week(1_609_718_400), (2021, 1));
        // 2026-12-06 is a Sunday in 2026-W49; the Monday after starts W50.
        assert_eq!(iso_year_week(1_796_566_226), (2026, 49));
        assert_eq!(iso_year_week(1_796_601_600), (2026, 50));
        assert_eq!(
            iso_week_index(1_796_566_226) + 1,
            iso_week_index(1_796_601_600)
        );
        assert_eq!(days_from_year_start(1970), 0);
        assert_eq!(days_from_year_start(2000), 10_957);
    }

    #[test]
    fn each_day_of_four_centuries_round_trips() {
        // Walking day by day from 1900 to 2300, the civil date advances by exactly one day.
        let mut prev = civil_from_days(-25_567); // 1900-01-01
        assert_eq!(prev, (1900, 1, 1));
        for d in -25_566..120_000 {
            let next = civil_from_days(d);
            let (y, m, day) = prev;
            let month_len = days_in_month(y, m);
            let want = if day < month_len {
                (y, m, day + 1)
            } else if m < 12 {
                (y, m + 1, 1)
            } else {
                (y + 1, 1, 1)
            };
            assert_eq!(next, want, "day {d}");
            if next.1 == 1 && next.2 == 1 {
                assert_eq!(days_from_year_start(next.0), d);
            }
            prev = next;
        }
    }
}

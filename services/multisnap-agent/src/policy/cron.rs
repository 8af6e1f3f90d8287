//! Cron-like schedules in UTC: the standard five fields `minute hour day-of-month month
//! day-of-week`, each `*`, a number, a range `1-5`, a step `*/15`, `8-18/2` or `5/10` (from 5
//! to the end), or a comma-separated list of these; months and weekdays also by their English
//! three-letter names (`jan`, `mon-fri`), and Sunday as 0 or 7. As in Vixie cron, when neither
//! day field starts with `*` a day matches if either does; otherwise both must.
//!
//! The search for the next or previous scheduled time goes day by day and skips the months the
//! schedule leaves out, so even `0 0 29 2 *` (every leap day) takes a few hundred steps. The
//! Gregorian calendar repeats every 400 years, weekdays included, so a schedule is checked at
//! parse time against one whole cycle: one that matches no day of it never matches and is
//! refused, and the cycle gives the shortest and longest gaps between scheduled times exactly.

use super::calendar::{self, civil_from_days, UnixSecs, CYCLE_DAYS, DAY, HOUR, MINUTE};

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const WEEKDAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

/// One of the five fields: its name in errors, its range, and the names it accepts (the first
/// name stands for `min`).
struct FieldRule {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
}

const FIELD_RULES: [FieldRule; 5] = [
    FieldRule {
        name: "minute",
        min: 0,
        max: 59,
        names: &[],
    },
    FieldRule {
        name: "hour",
        min: 0,
        max: 23,
        names: &[],
    },
    FieldRule {
        name: "day of month",
        min: 1,
        max: 31,
        names: &[],
    },
    FieldRule {
        name: "month",
        min: 1,
        max: 12,
        names: &MONTHS,
    },
    FieldRule {
        name: "day of week",
        min: 0,
        max: 7,
        names: &WEEKDAYS,
    },
];

/// A parsed schedule. Each field is a bit set of the values it allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    source: String,
    months: u64,
    days_of_month: u64,
    /// Bit 0 is Sunday (a 7 in the text is folded onto it).
    weekdays: u64,
    /// Both day fields restricted: a day matches if either does (the Vixie cron rule).
    either_day: bool,
    /// The scheduled times of a matching day, in minutes after midnight, ascending.
    times: Vec<i64>,
    shortest_gap: i64,
    longest_gap: i64,
}

impl FieldRule {
    fn value(&self, text: &str) -> Result<u32, String> {
        let lower = text.to_ascii_lowercase();
        if let Some(i) = self.names.iter().position(|n| *n == lower) {
            return Ok(self.min + i as u32);
        }
        let n: u32 = text.parse().map_err(|_| {
            let names = if self.names.is_empty() {
                String::new()
            } else {
                format!(" or a name ({})", self.names.join(" "))
            };
            format!("{} {text:?} is not a number{names}", self.name)
        })?;
        if n < self.min || n > self.max {
            return Err(format!(
                "{} {n} is out of range {}-{}",
                self.name, self.min, self.max
            ));
        }
        Ok(n)
    }

    /// The bit set of one field's text.
    fn parse(&self, text: &str) -> Result<u64, String> {
        let mut bits = 0u64;
        for part in text.split(',') {
            let (range, step) = match part.split_once('/') {
                Some((r, s)) => {
                    let step: u32 = s.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                        format!("{} step {s:?} is not a whole number over 0", self.name)
                    })?;
                    (r, Some(step))
                }
                None => (part, None),
            };
            let (first, last) = if range == "*" {
                (self.min, self.max)
            } else if let Some((a, b)) = range.split_once('-') {
                (self.value(a)?, self.value(b)?)
            } else {
                let a = self.value(range)?;
                // `5/10` runs from 5 to the end of the field, as in Vixie cron.
                (a, if step.is_some() { self.max } else { a })
            };
            if first > last {
                return Err(format!("{} range {range:?} runs backwards", self.name));
            }
            for v in (first..=last).step_by(step.unwrap_or(1) as usize) {
                bits |= 1 << v;
            }
        }
        Ok(bits)
    }
}

impl Cron {
    /// Parses `text`; the error says which field is wrong and how (the caller prefixes the
    /// API field's name).
    pub fn parse(text: &str) -> Result<Cron, String> {
        let fields: Vec<&str> = text.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(format!(
                "{text:?} has {} fields; give 5: minute hour day-of-month month day-of-week (e.g. \"0 */6 * * *\")",
                fields.len()
            ));
        }
        let mut sets = [0u64; 5];
        for (i, rule) in FIELD_RULES.iter().enumerate() {
            sets[i] = rule
                .parse(fields[i])
                .map_err(|e| format!("{text:?}: {e}"))?;
        }
        let [minutes, hours, days_of_month, months, mut weekdays] = sets;
        if weekdays & (1 << 7) != 0 {
            weekdays = (weekdays & !(1 << 7)) | 1;
        }
        let times = (0..24u32)
            .filter(|h| hours & (1 << h) != 0)
            .flat_map(|h| {
                (0..60u32)
                    .filter(move |m| minutes & (1 << m) != 0)
                    .map(move |m| i64::from(h * 60 + m))
            })
            .collect();
        let mut cron = Cron {
            source: fields.join(" "),
            months,
            days_of_month,
            weekdays,
            either_day: !fields[2].starts_with('*') && !fields[4].starts_with('*'),
            times,
            shortest_gap: 0,
            longest_gap: 0,
        };
        let (shortest_days, longest_days) = cron.day_gaps_over_a_cycle().ok_or_else(|| {
            format!("{text:?} never matches: no month it allows has the day of month it allows")
        })?;
        cron.set_gaps(shortest_days, longest_days);
        Ok(cron)
    }

    /// The schedule as given, fields separated by single spaces.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The shortest time between two consecutive scheduled times, in seconds.
    pub fn shortest_gap(&self) -> i64 {
        self.shortest_gap
    }

    /// The longest time between two consecutive scheduled times, in seconds.
    pub fn longest_gap(&self) -> i64 {
        self.longest_gap
    }

    /// The gap a name template must tell apart. Two snapshots of different slots can be taken
    /// less than the shortest gap apart (the earlier one late, after a retry or a downtime), but
    /// always on either side of a scheduled time: names down to the minute differ if the times
    /// fall on minutes (always), down to the hour only if they all fall on the hour, down to
    /// the day only if they all fall at midnight.
    pub fn name_gap(&self) -> i64 {
        let mut gap = self.shortest_gap;
        if self.times.iter().any(|m| m % 60 != 0) {
            gap = gap.min(HOUR - MINUTE);
        }
        if self.times != [0] {
            gap = gap.min(DAY - MINUTE);
        }
        gap
    }

    fn day_matches(&self, days: i64, month: u32, day: u32) -> bool {
        let by_date = self.days_of_month & (1 << day) != 0;
        let by_weekday = self.weekdays & (1 << calendar::weekday(days)) != 0;
        self.months & (1 << month) != 0
            && if self.either_day {
                by_date || by_weekday
            } else {
                by_date && by_weekday
            }
    }

    fn matches_on(&self, days: i64) -> bool {
        let (_, month, day) = civil_from_days(days);
        self.day_matches(days, month, day)
    }

    /// The first matching day from `start` in direction `step` (+1 or -1), `start` included,
    /// within one calendar cycle; months the schedule leaves out are skipped whole.
    fn find_day(&self, start: i64, step: i64) -> Option<i64> {
        let end = start + step * CYCLE_DAYS;
        let mut d = start;
        while (d - end) * step <= 0 {
            let (year, month, day) = civil_from_days(d);
            if self.months & (1 << month) == 0 {
                let month_start = d - i64::from(day) + 1;
                d = if step > 0 {
                    month_start + i64::from(calendar::days_in_month(year, month))
                } else {
                    month_start - 1
                };
                continue;
            }
            if self.day_matches(d, month, day) {
                return Some(d);
            }
            d += step;
        }
        None
    }

    /// The earliest scheduled time after `t`.
    pub fn next_after(&self, t: UnixSecs) -> Option<UnixSecs> {
        let today = t.div_euclid(DAY);
        let second_of_day = t.rem_euclid(DAY);
        if self.matches_on(today) {
            if let Some(m) = self.times.iter().find(|m| **m * MINUTE > second_of_day) {
                return time_of(today, *m);
            }
        }
        time_of(self.find_day(today.checked_add(1)?, 1)?, self.times[0])
    }

    /// The latest scheduled time at or before `t`: the start of the slot `t` is in.
    pub fn at_or_before(&self, t: UnixSecs) -> Option<UnixSecs> {
        let today = t.div_euclid(DAY);
        let second_of_day = t.rem_euclid(DAY);
        if self.matches_on(today) {
            if let Some(m) = self
                .times
                .iter()
                .rev()
                .find(|m| **m * MINUTE <= second_of_day)
            {
                return time_of(today, *m);
            }
        }
        time_of(
            self.find_day(today.checked_sub(1)?, -1)?,
            *self.times.last()?,
        )
    }

    /// The shortest and longest number of days between consecutive matching days, over one
    /// whole calendar cycle (the last day of it followed by the first of the next); `None` if
    /// no day matches.
    fn day_gaps_over_a_cycle(&self) -> Option<(i64, i64)> {
        let (mut first, mut previous) = (None, None);
        let (mut shortest, mut longest) = (i64::MAX, 0);
        let mut d = 0;
        for year in 1970..1970 + 400 {
            for month in 1..=12 {
                for day in 1..=calendar::days_in_month(year, month) {
                    if self.day_matches(d, month, day) {
                        if let Some(p) = previous {
                            shortest = shortest.min(d - p);
                            longest = longest.max(d - p);
                        }
                        first.get_or_insert(d);
                        previous = Some(d);
                    }
                    d += 1;
                }
            }
        }
        debug_assert_eq!(d, CYCLE_DAYS);
        let wrap = first? + CYCLE_DAYS - previous?;
        Some((shortest.min(wrap), longest.max(wrap)))
    }

    /// The gaps between scheduled times, from the day gaps and the times of day.
    fn set_gaps(&mut self, shortest_days: i64, longest_days: i64) {
        let first = self.times[0];
        let last = self.times[self.times.len() - 1];
        let across_days = |days: i64| days * DAY + (first - last) * MINUTE;
        let within_day = self.times.windows(2).map(|w| (w[1] - w[0]) * MINUTE);
        self.shortest_gap = within_day
            .clone()
            .chain([across_days(shortest_days)])
            .min()
            .unwrap_or(0);
        self.longest_gap = within_day
            .chain([across_days(longest_days)])
            .max()
            .unwrap_or(0);
    }
}

/// The Unix time of `minute` (after midnight) of the `day`th day since the epoch; `None`
/// past the ends of `i64`.
fn time_of(day: i64, minute: i64) -> Option<UnixSecs> {
    day.checked_mul(DAY)?.checked_add(minute * MINUTE)
}

#[cfg(test)]
mod tests;

//! Snapshot name templates: text with strftime-like placeholders of the UTC time a policy
//! snapshot is taken.
//!
//! | placeholder | meaning |
//! | --- | --- |
//! | `%Y` | year, four digits |
//! | `%m` | month, 01-12 |
//! | `%d` | day of the month, 01-31 |
//! | `%H` | hour, 00-23 |
//! | `%M` | minute, 00-59 |
//! | `%S` | second, 00-59 |
//! | `%s` | Unix seconds |
//! | `%%` | a literal `%` |

use super::calendar::{civil, UnixSecs, DAY, HOUR, MINUTE};

pub const DEFAULT_TEMPLATE: &str = "auto-%Y%m%d-%H%M%S";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Year,
    Month,
    Day,
    Hour,
    Minute,
    Second,
    Unix,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Time(Field),
}

/// A parsed template; [`NameTemplate::parse`] has checked that it can only make valid,
/// distinct names for the interval it was parsed for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameTemplate {
    source: String,
    pieces: Vec<Piece>,
}

fn parse_pieces(template: &str) -> Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut text = String::new();
    let mut chars = template.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            text.push(c);
            continue;
        }
        let field = match chars.next() {
            Some('%') => {
                text.push('%');
                continue;
            }
            Some('Y') => Field::Year,
            Some('m') => Field::Month,
            Some('d') => Field::Day,
            Some('H') => Field::Hour,
            Some('M') => Field::Minute,
            Some('S') => Field::Second,
            Some('s') => Field::Unix,
            Some(other) => {
                return Err(format!(
                    "name_template {template:?}: unknown placeholder %{other} (known: %Y %m %d %H %M %S %s %%)"
                ))
            }
            None => return Err(format!("name_template {template:?} ends in a lone '%'")),
        };
        if !text.is_empty() {
            pieces.push(Piece::Text(std::mem::take(&mut text)));
        }
        pieces.push(Piece::Time(field));
    }
    if !text.is_empty() {
        pieces.push(Piece::Text(text));
    }
    Ok(pieces)
}

impl NameTemplate {
    /// Parses `template` for snapshots of slots `gap` seconds apart (the interval, or what a
    /// schedule's names must tell apart, `Timing::name_gap`). Refused: unknown placeholders,
    /// text that cannot be in a snapshot name, and templates that could give two snapshots of
    /// the policy the same name: without `%s` the name needs the date (`%Y`, `%m`, `%d`) and,
    /// for gaps under a day, `%H`, under an hour `%M`, under a minute `%S`.
    pub fn parse(template: &str, gap: i64) -> Result<NameTemplate, String> {
        let pieces = parse_pieces(template)?;
        let has = |f: Field| pieces.contains(&Piece::Time(f));
        if !has(Field::Unix) {
            let mut needed = vec![
                (Field::Year, "%Y"),
                (Field::Month, "%m"),
                (Field::Day, "%d"),
            ];
            if gap < DAY {
                needed.push((Field::Hour, "%H"));
            }
            if gap < HOUR {
                needed.push((Field::Minute, "%M"));
            }
            if gap < MINUTE {
                needed.push((Field::Second, "%S"));
            }
            let missing: Vec<&str> = needed
                .iter()
                .filter(|(f, _)| !has(*f))
                .map(|(_, s)| *s)
                .collect();
            if !missing.is_empty() {
                return Err(format!(
                    "name_template {template:?} could give two snapshots of the policy the same name: it needs {} (or %s)",
                    missing.join(" ")
                ));
            }
        }
        let t = NameTemplate {
            source: template.to_string(),
            pieces,
        };
        // The longest rendering (a late year, all two-digit fields, eleven-digit Unix time)
        // and the shortest both have to be valid names.
        for sample in [0, 253_402_300_799] {
            let name = t.render(sample);
            multisnap_store::validate_snapshot_name(&name)
                .map_err(|e| format!("name_template {template:?} makes {name:?}: {e}"))?;
        }
        Ok(t)
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The name for a snapshot taken at `t` (UTC).
    pub fn render(&self, t: UnixSecs) -> String {
        let c = civil(t);
        let mut out = String::new();
        for p in &self.pieces {
            match p {
                Piece::Text(s) => out.push_str(s),
                Piece::Time(f) => {
                    let s = match f {
                        Field::Year => format!("{:04}", c.year),
                        Field::Month => format!("{:02}", c.month),
                        Field::Day => format!("{:02}", c.day),
                        Field::Hour => format!("{:02}", c.hour),
                        Field::Minute => format!("{:02}", c.minute),
                        Field::Second => format!("{:02}", c.second),
                        Field::Unix => t.to_string(),
                    };
                    out.push_str(&s);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_utc_fields() {
        let t = NameTemplate::parse(DEFAULT_TEMPLATE, 3600).unwrap();
        assert_eq!(t.render(1_796_566_226), "auto-20261206-141026");
        let t = NameTemplate::parse("db.%s", 60).unwrap();
        assert_eq!(t.render(1_796_566_226), "db.1796566226");
        let t = NameTemplate::parse("daily_%Y-%m-%d", DAY).unwrap();
        assert_eq!(t.render(0), "daily_1970-01-01");
    }

    #[test]
    fn refuses_bad_templates_with_the_reason() {
        let err = |s: &str, i: i64| NameTemplate::parse(s, i).unwrap_err();
        assert!(err("snap-%q", 3600).contains("unknown placeholder %q"));
        assert!(err("snap-%", 3600).contains("lone '%'"));
        // Hourly snapshots named by the day would collide.
        let e = err("snap-%Y%m%d", 3600);
        assert!(e.contains("needs %H"), "{e}");
        assert!(err("%H%M", 60).contains("needs %Y %m %d"));
        // Not a valid snapshot name: a space, a leading '-', too long.
        assert!(err("snap %s", 60).contains("only letters"));
        assert!(err("-%s", 60).contains("must not start"));
        assert!(err(&format!("{}%s", "x".repeat(120)), 60).contains("longer than 128"));
        // A literal '%' renders into the name, which snapshot names cannot hold.
        assert!(err("a%%%s", 60).contains("only letters"));
    }
}

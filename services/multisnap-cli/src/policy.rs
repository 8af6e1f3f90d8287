//! `multisnap policy …`: PolicyService, a volume's snapshot schedule and retention.

use crate::exit::rpc;
use crate::output::{self, Format};
use crate::Ctx;
use anyhow::Result;
use clap::Subcommand;
use multisnap_proto::v1 as pb;
use multisnap_proto::v1::policy_service_client::PolicyServiceClient;
use serde_json::{json, Value};

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Set (or replace) VOLUME's policy: a snapshot every --every or at the --schedule's
    /// times, named by --name-template, pruned by the --keep-* classes and --max-age.
    ///
    /// Only snapshots the policy took are ever pruned (the agent records them; a snapshot of
    /// yours named like the template is not one), and never one that a clone, a ublk device or
    /// a rollback still needs. A class keeps the newest snapshot of each of its newest N UTC
    /// hours, days, ISO weeks or months; a snapshot kept by any class stays.
    Set(SetArgs),
    /// Show VOLUME's policy and how it is doing.
    Show { volume: String },
    /// Stop VOLUME's policy; the snapshots it took stay, as ordinary snapshots.
    Clear { volume: String },
}

#[derive(clap::Args)]
pub struct SetArgs {
    volume: String,
    /// Interval between snapshots: 90s, 15m, 1h, 1d, 1w (at least 1m). Snapshots are due on
    /// multiples of it since the Unix epoch: 1h means on the hour (UTC).
    #[arg(long, value_parser = parse_duration, required_unless_present = "schedule")]
    every: Option<u64>,
    /// Instead of --every: snapshots at the times of a cron-like schedule in UTC, `minute hour
    /// day-of-month month day-of-week`, e.g. '0 */6 * * *' (every 6 hours), '15 2 * * *'
    /// (02:15 daily), '0 9-17/4 * * mon-fri'.
    #[arg(long, conflicts_with = "every")]
    schedule: Option<String>,
    /// Names from the UTC time: %Y %m %d %H %M %S, %s (Unix seconds), %% [agent default:
    /// auto-%Y%m%d-%H%M%S].
    #[arg(long)]
    name_template: Option<String>,
    /// Keep the newest snapshot of each of the newest N hours.
    #[arg(long, default_value_t = 0)]
    keep_hourly: u32,
    /// ... of each of the newest N days.
    #[arg(long, default_value_t = 0)]
    keep_daily: u32,
    /// ... of each of the newest N ISO weeks (Monday to Sunday).
    #[arg(long, default_value_t = 0)]
    keep_weekly: u32,
    /// ... of each of the newest N months.
    #[arg(long, default_value_t = 0)]
    keep_monthly: u32,
    /// Prune policy snapshots older than this (e.g. 30d) whatever the classes say; the newest
    /// is always kept.
    #[arg(long, value_parser = parse_duration)]
    max_age: Option<u64>,
}

/// Seconds in `90s`, `15m`, `1h`, `1d`, `1w` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let scale = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => {
            return Err(format!(
                "{s:?}: unknown unit {unit:?} (use s, m, h, d or w, e.g. 90s, 15m, 1h, 1d)"
            ))
        }
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 90s, 15m, 1h, 1d)"))?;
    n.checked_mul(scale)
        .ok_or_else(|| format!("{s:?} is too long"))
}

/// `3600` as `1h`, `5400` as `1h30m`: the largest units that add up exactly.
pub fn duration_word(mut secs: u64) -> String {
    if secs == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
        if secs >= size {
            out.push_str(&format!("{}{unit}", secs / size));
            secs %= size;
        }
    }
    out
}

fn time_json(t: &Option<prost_types::Timestamp>) -> Value {
    t.as_ref()
        .map_or(Value::Null, |t| Value::from(t.to_string()))
}

pub fn policy_json(p: &pb::VolumePolicy) -> Value {
    let spec = p.policy.clone().unwrap_or_default();
    let st = p.status.clone().unwrap_or_default();
    json!({
        "volume": p.volume,
        "policy": {
            "intervalSeconds": spec.interval_seconds,
            "schedule": spec.schedule,
            "nameTemplate": spec.name_template,
            "keepHourly": spec.keep_hourly,
            "keepDaily": spec.keep_daily,
            "keepWeekly": spec.keep_weekly,
            "keepMonthly": spec.keep_monthly,
            "maxAgeSeconds": spec.max_age_seconds,
        },
        "status": {
            "evaluatedAt": time_json(&st.evaluated_at),
            "nextSnapshotAt": time_json(&st.next_snapshot_at),
            "newestSnapshot": st.newest_snapshot,
            "newestSnapshotAt": time_json(&st.newest_snapshot_at),
            "policySnapshots": st.policy_snapshots,
            "lastError": st.last_error,
            "held": st.held,
        },
    })
}

/// When the policy takes snapshots: `every 1h`, or `at '0 */6 * * *' UTC`.
fn timing_words(spec: &pb::SnapshotPolicy) -> String {
    if spec.schedule.is_empty() {
        format!("every {}", duration_word(spec.interval_seconds))
    } else {
        format!("at '{}' UTC", spec.schedule)
    }
}

/// One line for `volume show`: `every 1h, keep 24 hourly 7 daily`.
pub fn summary(p: &pb::VolumePolicy) -> String {
    let spec = p.policy.clone().unwrap_or_default();
    let mut keep = Vec::new();
    for (n, class) in [
        (spec.keep_hourly, "hourly"),
        (spec.keep_daily, "daily"),
        (spec.keep_weekly, "weekly"),
        (spec.keep_monthly, "monthly"),
    ] {
        if n > 0 {
            keep.push(format!("{n} {class}"));
        }
    }
    if spec.max_age_seconds > 0 {
        keep.push(format!("none over {}", duration_word(spec.max_age_seconds)));
    }
    let keep = if keep.is_empty() {
        "all".to_string()
    } else {
        keep.join(" ")
    };
    format!(
        "{}, keep {keep}, named {}",
        timing_words(&spec),
        spec.name_template
    )
}

fn time_word(t: &Option<prost_types::Timestamp>) -> String {
    t.as_ref().map_or_else(|| "-".into(), |t| t.to_string())
}

fn show(format: Format, p: &pb::VolumePolicy) -> Result<()> {
    if format == Format::Json {
        return Ok(output::print_json(&policy_json(p))?);
    }
    let spec = p.policy.clone().unwrap_or_default();
    let st = p.status.clone().unwrap_or_default();
    let count = |n: u32| {
        if n == 0 {
            "-".to_string()
        } else {
            n.to_string()
        }
    };
    output::print_details(&[
        ("volume", p.volume.clone()),
        ("snapshots", timing_words(&spec)),
        ("name template", spec.name_template.clone()),
        ("keep hourly", count(spec.keep_hourly)),
        ("keep daily", count(spec.keep_daily)),
        ("keep weekly", count(spec.keep_weekly)),
        ("keep monthly", count(spec.keep_monthly)),
        (
            "max age",
            if spec.max_age_seconds == 0 {
                "-".into()
            } else {
                duration_word(spec.max_age_seconds)
            },
        ),
        ("policy snapshots", st.policy_snapshots.to_string()),
        (
            "newest",
            if st.newest_snapshot.is_empty() {
                "-".into()
            } else {
                format!(
                    "{} ({})",
                    st.newest_snapshot,
                    time_word(&st.newest_snapshot_at)
                )
            },
        ),
        ("next snapshot", time_word(&st.next_snapshot_at)),
        ("last looked", time_word(&st.evaluated_at)),
        (
            "held",
            if st.held.is_empty() {
                "-".into()
            } else {
                st.held.join(", ")
            },
        ),
        (
            "last error",
            if st.last_error.is_empty() {
                "-".into()
            } else {
                st.last_error.clone()
            },
        ),
    ])?;
    Ok(())
}

pub async fn run(ctx: &Ctx, cmd: PolicyCommand) -> Result<()> {
    let mut client = PolicyServiceClient::new(ctx.channel.clone());
    match cmd {
        PolicyCommand::Set(a) => {
            let p = client
                .set_policy(pb::SetPolicyRequest {
                    volume: a.volume.clone(),
                    policy: Some(pb::SnapshotPolicy {
                        interval_seconds: a.every.unwrap_or(0),
                        schedule: a.schedule.unwrap_or_default(),
                        name_template: a.name_template.unwrap_or_default(),
                        keep_hourly: a.keep_hourly,
                        keep_daily: a.keep_daily,
                        keep_weekly: a.keep_weekly,
                        keep_monthly: a.keep_monthly,
                        max_age_seconds: a.max_age.unwrap_or(0),
                    }),
                })
                .await
                .map_err(rpc(format!("cannot set the policy of {:?}", a.volume)))?
                .into_inner();
            show(ctx.format, &p)
        }
        PolicyCommand::Show { volume } => {
            let p = client
                .get_policy(pb::GetPolicyRequest {
                    volume: volume.clone(),
                })
                .await
                .map_err(rpc(format!("cannot get the policy of {volume:?}")))?
                .into_inner();
            show(ctx.format, &p)
        }
        PolicyCommand::Clear { volume } => {
            let cleared = client
                .clear_policy(pb::ClearPolicyRequest {
                    volume: volume.clone(),
                })
                .await
                .map_err(rpc(format!("cannot clear the policy of {volume:?}")))?
                .into_inner()
                .cleared;
            match ctx.format {
                Format::Json => output::print_json(&json!({ "cleared": cleared })),
                Format::Table if cleared => output::print_line(&format!(
                    "cleared the policy of {volume}; the snapshots it took stay"
                )),
                Format::Table => output::print_line(&format!("{volume} had no policy")),
            }?;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_print() {
        assert_eq!(parse_duration("90s"), Ok(90));
        assert_eq!(parse_duration("15m"), Ok(900));
        assert_eq!(parse_duration("1h"), Ok(3600));
        assert_eq!(parse_duration("1d"), Ok(86_400));
        assert_eq!(parse_duration("2w"), Ok(1_209_600));
        assert_eq!(parse_duration("45"), Ok(45));
        assert!(parse_duration("1y").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("h").unwrap_err().contains("not a duration"));
        assert!(parse_duration("1.5h").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
        assert_eq!(duration_word(3600), "1h");
        assert_eq!(duration_word(5400), "1h30m");
        assert_eq!(duration_word(90), "1m30s");
        assert_eq!(duration_word(86_400 * 7), "7d");
    }
}

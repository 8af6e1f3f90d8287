//! `multisnap mirror …`: MirrorService, a volume mirrored continuously to another agent.

use crate::exit::rpc;
use crate::output::{self, Format};
use crate::size::human;
use crate::stream_cost::StreamCost;
use crate::Ctx;
use anyhow::Result;
use clap::Subcommand;
use multisnap_proto::v1 as pb;
use multisnap_proto::v1::mirror_service_client::MirrorServiceClient;
use serde_json::{json, Value};
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum MirrorCommand {
    /// Mirror VOLUME to a volume on another agent: after each new snapshot (by policy or by
    /// hand) this agent sends the changes since the newest snapshot the target holds.
    ///
    /// A volume may have up to 8 mirrors, each to its own endpoint and target volume; setting
    /// the same endpoint and target volume again replaces that mirror (and restarts it if it
    /// stopped), another pair adds one. The target volume is made with VOLUME's size and chunk
    /// size if it does not exist. A cut transfer resumes where it stopped; failures are
    /// retried with growing waits (up to 30 s). A target that was written to or snapshotted
    /// stops the mirror instead of being overwritten.
    Set(SetArgs),
    /// Show VOLUME's mirrors (or the one --to and --target-volume name): target, the last
    /// snapshot the target holds, lag, last error.
    Show {
        volume: String,
        #[command(flatten)]
        which: Which,
    },
    /// Stop one of VOLUME's mirrors; the target keeps what it received. With several
    /// mirrors, --to (and --target-volume, if the endpoint has several) says which.
    Clear {
        volume: String,
        #[command(flatten)]
        which: Which,
    },
}

/// Which of a volume's mirrors: the parts given must match; none given means the only one.
#[derive(clap::Args)]
pub struct Which {
    /// The mirror's target agent endpoint, as given to `mirror set --to`.
    #[arg(long)]
    to: Option<String>,
    /// The mirror's target volume.
    #[arg(long)]
    target_volume: Option<String>,
}

impl Which {
    fn given(&self) -> bool {
        self.to.is_some() || self.target_volume.is_some()
    }

    fn fields(&self) -> (String, String) {
        (
            self.to.clone().unwrap_or_default(),
            self.target_volume.clone().unwrap_or_default(),
        )
    }
}

#[derive(clap::Args)]
pub struct SetArgs {
    volume: String,
    /// The target agent's gRPC address, as the source agent reaches it: HOST:PORT,
    /// http://HOST:PORT, https://HOST:PORT (with --tls-ca) or unix:/path/to/grpc.sock.
    #[arg(long)]
    to: String,
    /// The volume on the target agent.
    #[arg(long)]
    target_volume: String,
    /// For https: the CA that signed the target agent's certificate (a path on the source
    /// agent's machine).
    #[arg(long)]
    tls_ca: Option<PathBuf>,
    /// For a target that requires client certificates: the source agent's certificate and
    /// key (paths on its machine).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// How every round's stream travels (`--compress zstd` for a link where bytes cost more
    /// than the source's CPU; the target must read delta format version 2).
    #[command(flatten)]
    stream: StreamCost,
}

fn state_word(s: i32) -> &'static str {
    match pb::MirrorState::try_from(s) {
        Ok(pb::MirrorState::Syncing) => "syncing",
        Ok(pb::MirrorState::InSync) => "in-sync",
        Ok(pb::MirrorState::Retrying) => "retrying",
        Ok(pb::MirrorState::StoppedDiverged) => "stopped-diverged",
        _ => "unknown",
    }
}

fn time_json(t: &Option<prost_types::Timestamp>) -> Value {
    t.as_ref()
        .map_or(Value::Null, |t| Value::from(t.to_string()))
}

pub fn mirror_json(m: &pb::VolumeMirror) -> Value {
    let t = m.target.clone().unwrap_or_default();
    let st = m.status.clone().unwrap_or_default();
    json!({
        "volume": m.volume,
        "target": {
            "endpoint": t.endpoint,
            "volume": t.volume,
            "tlsCaFile": t.tls_ca_file,
            "tlsCertFile": t.tls_cert_file,
            "tlsKeyFile": t.tls_key_file,
            "compression": compression_word(&t),
            "bandwidthLimitBytesPerSec": t.bandwidth_limit_bytes_per_sec,
        },
        "status": {
            "state": state_word(st.state),
            "lastReplicatedSnapshot": st.last_replicated_snapshot,
            "lastReplicatedAt": time_json(&st.last_replicated_at),
            "lagSeconds": st.lag_seconds,
            "bytesPending": st.bytes_pending,
            "syncingSnapshot": st.syncing_snapshot,
            "consecutiveFailures": st.consecutive_failures,
            "nextAttemptAt": time_json(&st.next_attempt_at),
            "lastError": st.last_error,
        },
    })
}

/// `none` or `zstd:LEVEL` (the agent fills in the default level).
fn compression_word(t: &pb::MirrorTarget) -> String {
    match pb::DeltaCompression::try_from(t.compression) {
        Ok(pb::DeltaCompression::None) => "none".into(),
        Ok(pb::DeltaCompression::Zstd) => format!("zstd:{}", t.compression_level),
        Err(_) => "unknown".into(),
    }
}

/// The stream's settings in words: `zstd:3, at most 10.0 MiB/s`; empty for the defaults.
fn stream_words(t: &pb::MirrorTarget) -> String {
    let mut words = Vec::new();
    if t.compression != pb::DeltaCompression::None as i32 {
        words.push(compression_word(t));
    }
    if t.bandwidth_limit_bytes_per_sec > 0 {
        words.push(format!(
            "at most {}/s",
            human(t.bandwidth_limit_bytes_per_sec)
        ));
    }
    words.join(", ")
}

fn dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.to_string()
    }
}

/// One line for `volume show`: `in-sync to http://dr:50051 replica, last s7, lag 0s`.
pub fn summary(m: &pb::VolumeMirror) -> String {
    let t = m.target.clone().unwrap_or_default();
    let st = m.status.clone().unwrap_or_default();
    let mut line = format!(
        "{} to {} {}, last {}, lag {}s",
        state_word(st.state),
        t.endpoint,
        t.volume,
        dash(&st.last_replicated_snapshot),
        st.lag_seconds
    );
    let stream = stream_words(&t);
    if !stream.is_empty() {
        line.push_str(&format!(", {stream}"));
    }
    if !st.last_error.is_empty() {
        line.push_str(&format!(" ({})", st.last_error));
    }
    line
}

fn show(format: Format, m: &pb::VolumeMirror) -> Result<()> {
    if format == Format::Json {
        return Ok(output::print_json(&mirror_json(m))?);
    }
    let t = m.target.clone().unwrap_or_default();
    let st = m.status.clone().unwrap_or_default();
    let time = |t: &Option<prost_types::Timestamp>| {
        t.as_ref().map_or_else(|| "-".into(), |t| t.to_string())
    };
    let tls = if t.tls_ca_file.is_empty() {
        "-".to_string()
    } else if t.tls_cert_file.is_empty() {
        format!("CA {}", t.tls_ca_file)
    } else {
        format!(
            "CA {}, client {} / {}",
            t.tls_ca_file, t.tls_cert_file, t.tls_key_file
        )
    };
    output::print_details(&[
        ("volume", m.volume.clone()),
        ("target", t.endpoint.clone()),
        ("target volume", t.volume.clone()),
        ("tls", tls),
        ("stream", {
            let words = stream_words(&t);
            if words.is_empty() {
                "uncompressed, no limit".into()
            } else {
                words
            }
        }),
        ("state", state_word(st.state).to_string()),
        (
            "last replicated",
            if st.last_replicated_snapshot.is_empty() {
                "-".into()
            } else {
                format!(
                    "{} ({})",
                    st.last_replicated_snapshot,
                    time(&st.last_replicated_at)
                )
            },
        ),
        ("sending", dash(&st.syncing_snapshot)),
        ("lag", format!("{}s", st.lag_seconds)),
        ("pending", human(st.bytes_pending)),
        ("failures in a row", st.consecutive_failures.to_string()),
        ("next attempt", time(&st.next_attempt_at)),
        ("last error", dash(&st.last_error)),
    ])?;
    Ok(())
}

/// Every mirror of `volume`: their details one after another (a blank line between), or in
/// JSON `{"volume": ..., "mirrors": [...]}`.
fn show_all(format: Format, volume: &str, all: &[pb::VolumeMirror]) -> Result<()> {
    if format == Format::Json {
        let mirrors: Vec<Value> = all.iter().map(mirror_json).collect();
        return Ok(output::print_json(
            &json!({ "volume": volume, "mirrors": mirrors }),
        )?);
    }
    for (i, m) in all.iter().enumerate() {
        if i > 0 {
            output::print_line("")?;
        }
        show(format, m)?;
    }
    Ok(())
}

pub async fn run(ctx: &Ctx, cmd: MirrorCommand) -> Result<()> {
    let mut client = MirrorServiceClient::new(ctx.channel.clone());
    let path = |p: Option<PathBuf>| p.map(|p| p.display().to_string()).unwrap_or_default();
    match cmd {
        MirrorCommand::Set(a) => {
            let (compression, compression_level, bandwidth_limit_bytes_per_sec) = a.stream.fields();
            let m = client
                .set_mirror(pb::SetMirrorRequest {
                    volume: a.volume.clone(),
                    target: Some(pb::MirrorTarget {
                        endpoint: a.to,
                        volume: a.target_volume,
                        tls_ca_file: path(a.tls_ca),
                        tls_cert_file: path(a.tls_cert),
                        tls_key_file: path(a.tls_key),
                        compression: compression as i32,
                        compression_level,
                        bandwidth_limit_bytes_per_sec,
                    }),
                })
                .await
                .map_err(rpc(format!("cannot set the mirror of {:?}", a.volume)))?
                .into_inner();
            show(ctx.format, &m)
        }
        MirrorCommand::Show { volume, which } => {
            let get = |endpoint: String, target_volume: String| pb::GetMirrorRequest {
                volume: volume.clone(),
                endpoint,
                target_volume,
            };
            let failed = || rpc(format!("cannot get the mirror of {volume:?}"));
            if which.given() {
                let (endpoint, target_volume) = which.fields();
                let m = client
                    .get_mirror(get(endpoint, target_volume))
                    .await
                    .map_err(failed())?
                    .into_inner();
                return show(ctx.format, &m);
            }
            let all = client
                .list_mirrors(pb::ListMirrorsRequest {
                    volume: volume.clone(),
                })
                .await
                .map_err(rpc(format!("cannot list the mirrors of {volume:?}")))?
                .into_inner()
                .mirrors;
            if all.is_empty() {
                // The agent's own answer for a volume without a mirror (NOT_FOUND, exit 2).
                client
                    .get_mirror(get(String::new(), String::new()))
                    .await
                    .map_err(failed())?;
            }
            show_all(ctx.format, &volume, &all)
        }
        MirrorCommand::Clear { volume, which } => {
            let (endpoint, target_volume) = which.fields();
            let r = client
                .clear_mirror(pb::ClearMirrorRequest {
                    volume: volume.clone(),
                    endpoint,
                    target_volume,
                })
                .await
                .map_err(rpc(format!("cannot clear the mirror of {volume:?}")))?
                .into_inner();
            match ctx.format {
                Format::Json => output::print_json(&json!({
                    "cleared": r.cleared,
                    "endpoint": r.endpoint,
                    "targetVolume": r.target_volume,
                })),
                Format::Table if r.cleared => output::print_line(&format!(
                    "cleared the mirror of {volume} to {} {}; the target keeps what it received",
                    r.endpoint, r.target_volume
                )),
                Format::Table if which.given() => {
                    output::print_line(&format!("{volume} had no such mirror"))
                }
                Format::Table => output::print_line(&format!("{volume} had no mirror")),
            }?;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_says_state_target_and_error() {
        let m = pb::VolumeMirror {
            volume: "db".into(),
            target: Some(pb::MirrorTarget {
                endpoint: "http://dr:50051".into(),
                volume: "db-copy".into(),
                ..Default::default()
            }),
            status: Some(pb::MirrorStatus {
                state: pb::MirrorState::Retrying as i32,
                last_replicated_snapshot: "s7".into(),
                lag_seconds: 42,
                last_error: "cannot connect".into(),
                ..Default::default()
            }),
        };
        assert_eq!(
            summary(&m),
            "retrying to http://dr:50051 db-copy, last s7, lag 42s (cannot connect)"
        );
        assert_eq!(mirror_json(&m)["status"]["state"], "retrying");
        assert_eq!(mirror_json(&m)["target"]["compression"], "none");
        let mut packed = m.clone();
        let t = packed.target.as_mut().unwrap();
        t.compression = pb::DeltaCompression::Zstd as i32;
        t.compression_level = 3;
        t.bandwidth_limit_bytes_per_sec = 10 << 20;
        assert_eq!(
            summary(&packed),
            "retrying to http://dr:50051 db-copy, last s7, lag 42s, zstd:3, at most 10 MiB/s (cannot connect)"
        );
        assert_eq!(state_word(99), "unknown");
    }
}

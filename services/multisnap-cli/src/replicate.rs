//! `multisnap replicate`: one agent's snapshot copied to another agent, incrementally.
//!
//! The decisions (which snapshot, from which base, continue or refuse an unfinished apply) are
//! pure functions, [`choose`] and [`plan`], fed with what the two agents report; [`run`] only
//! makes the calls around them. The receiver's apply state is asked for only once there is
//! something to send, so a snapshot the receiver already holds costs no further call.

use crate::delta::{apply_stream, bar, delta_client, report_apply, show_progress};
use crate::exit::rpc;
use crate::output::{self, Format};
use crate::size::human;
use crate::stream_cost::StreamCost;
use crate::{endpoint, Ctx};
use anyhow::Result;
use clap::Args;
use indicatif::ProgressBar;
use multisnap_proto::v1 as pb;
use multisnap_proto::v1::snapshot_service_client::SnapshotServiceClient;
use multisnap_proto::v1::volume_service_client::VolumeServiceClient;
use serde_json::json;
use std::fmt;
use std::time::Duration;
use tokio::sync::mpsc;
use tonic::transport::Channel;
use tonic::Streaming;

/// `multisnap replicate`: one agent to another, incrementally.
#[derive(Args)]
pub struct ReplicateArgs {
    /// The volume on the source agent (--endpoint).
    pub volume: String,
    /// The receiving agent: http://HOST:PORT or unix:/path/to/grpc.sock.
    #[arg(long, value_parser = endpoint::parse)]
    pub to: endpoint::Target,
    /// The volume on the receiving agent (default: the same name). Made there, with the
    /// source's size and chunk size, if it does not exist.
    #[arg(long)]
    pub to_volume: Option<String>,
    /// The snapshot to replicate (default: the source's newest).
    #[arg(long)]
    pub snapshot: Option<String>,
    /// Send everything even if the receiver holds an older snapshot.
    #[arg(long)]
    pub full: bool,
    /// Do not keep a partial apply when the transfer is cut (default: keep it and continue it
    /// on the next run).
    #[arg(long)]
    pub no_resume: bool,
    #[command(flatten)]
    pub cost: StreamCost,
}

impl ReplicateArgs {
    /// The volume on the receiver: `--to-volume`, or the source volume's name.
    fn receiver_volume(&self) -> &str {
        self.to_volume.as_deref().unwrap_or(&self.volume)
    }
}

/// Why a replication cannot go ahead, decided without a further call to either agent.
#[derive(Debug, PartialEq)]
pub enum PlanError {
    /// The receiver's volume exists with another size or chunk size than the source's.
    GeometryMismatch {
        to_volume: String,
        receiver_size: u64,
        receiver_chunk: u32,
        source_size: u64,
        source_chunk: u32,
    },
    /// `--snapshot NAME`, and the source has no ready snapshot of that name.
    NoSuchSnapshot { volume: String, name: String },
    /// No `--snapshot`, and the source has no ready snapshot at all.
    NoSnapshots { volume: String },
    /// The receiver is in the middle of an apply this run must not continue: of another
    /// snapshot, not resumable, or `--no-resume` was given.
    UnfinishedApply {
        to_volume: String,
        snapshot: String,
        receiver: endpoint::Target,
    },
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlanError::GeometryMismatch {
                to_volume,
                receiver_size,
                receiver_chunk,
                source_size,
                source_chunk,
            } => write!(
                f,
                "volume {to_volume} on the receiver is {receiver_size} bytes in chunks of \
                 {receiver_chunk}, the source {source_size} in chunks of {source_chunk}"
            ),
            PlanError::NoSuchSnapshot { volume, name } => {
                write!(f, "volume {volume} has no ready snapshot named {name:?}")
            }
            PlanError::NoSnapshots { volume } => write!(
                f,
                "volume {volume} has no snapshot to replicate; create one first"
            ),
            PlanError::UnfinishedApply {
                to_volume,
                snapshot,
                receiver,
            } => write!(
                f,
                "volume {to_volume} on the receiver has an unfinished apply of {snapshot:?}; \
                 run `multisnap --endpoint {receiver} delta abort {to_volume}` to drop it"
            ),
        }
    }
}

impl std::error::Error for PlanError {}

/// What the snapshot lists decide.
#[derive(Debug, PartialEq, Eq)]
pub enum Choice {
    /// The receiver holds the snapshot already: nothing to send.
    AlreadyThere { snapshot: String },
    /// The snapshot must be sent; the receiver's apply state has the last word.
    Send(Wanted),
}

/// A snapshot to send, and the newest one both agents hold below it.
#[derive(Debug, PartialEq, Eq)]
pub struct Wanted {
    pub snapshot: String,
    /// Its id on the source, which the receiver records as `source_snapshot_id`.
    pub source_id: u64,
    /// `None`: a full stream.
    pub base: Option<String>,
}

/// What is sent, once the receiver's apply state is known.
#[derive(Debug, PartialEq, Eq)]
pub struct Plan {
    pub snapshot: String,
    pub base: Option<String>,
    /// Empty unless an interrupted apply of the same snapshot is continued.
    pub resume_token: Vec<u8>,
    /// Whether the receiver keeps a partial apply when the transfer is cut.
    pub resumable: bool,
}

impl Plan {
    pub fn resume(&self) -> bool {
        !self.resume_token.is_empty()
    }

    /// How the transfer is described to people and scripts (`mode` in JSON).
    pub fn mode(&self) -> String {
        match (&self.base, self.resume()) {
            (_, true) => "resumed".to_string(),
            (Some(b), _) => format!("incremental since {b}"),
            (None, _) => "full".to_string(),
        }
    }
}

/// The receiver's volume must have the source's geometry: a delta's chunks are addressed by
/// index, so the same index must cover the same bytes on both sides.
pub fn check_geometry(
    source: &pb::Volume,
    receiver: &pb::Volume,
    to_volume: &str,
) -> Result<(), PlanError> {
    if receiver.size_bytes != source.size_bytes
        || receiver.chunk_size_bytes != source.chunk_size_bytes
    {
        return Err(PlanError::GeometryMismatch {
            to_volume: to_volume.to_string(),
            receiver_size: receiver.size_bytes,
            receiver_chunk: receiver.chunk_size_bytes,
            source_size: source.size_bytes,
            source_chunk: source.chunk_size_bytes,
        });
    }
    Ok(())
}

/// Picks the snapshot to send (`--snapshot`, or the source's newest by id) and its base: the
/// newest older source snapshot the receiver holds under the same name and source id, unless
/// `--full`. Only ready snapshots count, on either side.
pub fn choose(
    source: &[pb::Snapshot],
    receiver: &[pb::Snapshot],
    args: &ReplicateArgs,
) -> Result<Choice, PlanError> {
    let ready = |s: &&pb::Snapshot| s.state == pb::SnapshotState::Ready as i32;
    let source: Vec<&pb::Snapshot> = source.iter().filter(ready).collect();
    let receiver: Vec<&pb::Snapshot> = receiver.iter().filter(ready).collect();
    let target =
        match &args.snapshot {
            Some(name) => source.iter().find(|s| &s.name == name).ok_or_else(|| {
                PlanError::NoSuchSnapshot {
                    volume: args.volume.clone(),
                    name: name.clone(),
                }
            })?,
            None => source
                .iter()
                .max_by_key(|s| s.id)
                .ok_or_else(|| PlanError::NoSnapshots {
                    volume: args.volume.clone(),
                })?,
        };
    let held = |s: &pb::Snapshot| {
        receiver
            .iter()
            .any(|r| r.source_snapshot_id == s.id && r.name == s.name)
    };
    if held(target) {
        return Ok(Choice::AlreadyThere {
            snapshot: target.name.clone(),
        });
    }
    let base = if args.full {
        None
    } else {
        source
            .iter()
            .filter(|s| s.id < target.id && held(s))
            .max_by_key(|s| s.id)
            .map(|s| s.name.clone())
    };
    Ok(Choice::Send(Wanted {
        snapshot: target.name.clone(),
        source_id: target.id,
        base,
    }))
}

/// With no apply in progress on the receiver, sends `wanted` as chosen. An apply in progress
/// is continued, from the base it started with, only if it is of the same snapshot (name and
/// source id), resumable, and `--no-resume` was not given; otherwise the run is refused rather
/// than clobbering it.
pub fn plan(
    wanted: Wanted,
    state: &pb::ApplyState,
    args: &ReplicateArgs,
) -> Result<Plan, PlanError> {
    let resumable = !args.no_resume;
    if !state.in_progress {
        return Ok(Plan {
            snapshot: wanted.snapshot,
            base: wanted.base,
            resume_token: Vec::new(),
            resumable,
        });
    }
    let same =
        state.snapshot_name == wanted.snapshot && state.source_snapshot_id == wanted.source_id;
    if !(same && state.resumable && resumable) {
        return Err(PlanError::UnfinishedApply {
            to_volume: args.receiver_volume().to_string(),
            snapshot: state.snapshot_name.clone(),
            receiver: args.to.clone(),
        });
    }
    Ok(Plan {
        snapshot: wanted.snapshot,
        base: (!state.base_snapshot.is_empty()).then(|| state.base_snapshot.clone()),
        resume_token: state.resume_token.clone(),
        resumable,
    })
}

/// Replicates a volume from the `--endpoint` agent to the `--to` agent: the newest snapshot
/// both hold is the base (unless `--full`), an interrupted earlier transfer of the same
/// snapshot is continued.
pub async fn run(ctx: &Ctx, args: ReplicateArgs, timeout: Duration) -> Result<()> {
    let source = ctx.channel.clone();
    let receiver = endpoint::connect(&args.to, timeout, true).await?;
    let volume = args.volume.as_str();
    let to_volume = args.receiver_volume();
    ensure_receiver_volume(&source, &receiver, volume, to_volume).await?;

    let source_snapshots = list_snapshots(&source, volume)
        .await
        .map_err(rpc(format!("cannot list the snapshots of {volume}")))?;
    let receiver_snapshots = list_snapshots(&receiver, to_volume)
        .await
        .map_err(rpc(format!(
            "cannot list the snapshots of {to_volume} on the receiver"
        )))?;
    let wanted = match choose(&source_snapshots, &receiver_snapshots, &args)? {
        Choice::AlreadyThere { snapshot } => {
            return done(
                ctx.format,
                volume,
                to_volume,
                &snapshot,
                None,
                0,
                "already there",
            )
        }
        Choice::Send(wanted) => wanted,
    };
    let state = delta_client(&receiver)
        .get_apply_state(pb::GetApplyStateRequest {
            volume: to_volume.to_string(),
        })
        .await
        .map_err(rpc(format!("cannot read the apply state of {to_volume}")))?
        .into_inner();
    let plan = plan(wanted, &state, &args)?;

    let (sent, resp) = transfer(&source, &receiver, volume, to_volume, &plan, &args.cost).await?;
    if !resp.complete {
        report_apply(ctx.format, to_volume, &resp, sent)?;
    }
    done(
        ctx.format,
        volume,
        to_volume,
        &plan.snapshot,
        plan.base.as_deref(),
        sent,
        &plan.mode(),
    )
}

/// Makes `to_volume` on the receiver, with the source volume's size and chunk size, unless it
/// exists; an existing one must have the source's geometry.
async fn ensure_receiver_volume(
    source: &Channel,
    receiver: &Channel,
    volume: &str,
    to_volume: &str,
) -> Result<()> {
    let source_volume = VolumeServiceClient::new(source.clone())
        .get_volume(pb::GetVolumeRequest {
            name: volume.to_string(),
        })
        .await
        .map_err(rpc(format!("cannot read volume {volume} on the source")))?
        .into_inner();
    let mut volumes = VolumeServiceClient::new(receiver.clone());
    let receiver_volume = match volumes
        .get_volume(pb::GetVolumeRequest {
            name: to_volume.to_string(),
        })
        .await
    {
        Ok(v) => v.into_inner(),
        Err(s) if s.code() == tonic::Code::NotFound => volumes
            .create_volume(pb::CreateVolumeRequest {
                name: to_volume.to_string(),
                size_bytes: source_volume.size_bytes,
                chunk_size_bytes: source_volume.chunk_size_bytes,
                ..Default::default()
            })
            .await
            .map_err(rpc(format!(
                "cannot create volume {to_volume} on the receiver"
            )))?
            .into_inner(),
        Err(s) => {
            return Err(rpc(format!("cannot read volume {to_volume} on the receiver"))(s).into())
        }
    };
    check_geometry(&source_volume, &receiver_volume, to_volume)?;
    Ok(())
}

async fn list_snapshots(ch: &Channel, volume: &str) -> Result<Vec<pb::Snapshot>, tonic::Status> {
    SnapshotServiceClient::new(ch.clone())
        .list_snapshots(pb::ListSnapshotsRequest {
            volume: volume.to_string(),
        })
        .await
        .map(|r| r.into_inner().snapshots)
}

/// Streams the planned delta from the source's export straight into the receiver's apply.
/// Returns the stream bytes sent and the receiver's answer.
async fn transfer(
    source: &Channel,
    receiver: &Channel,
    volume: &str,
    to_volume: &str,
    plan: &Plan,
    cost: &StreamCost,
) -> Result<(u64, pb::ApplyDeltaResponse)> {
    let mut req = pb::ExportDeltaRequest {
        volume: volume.to_string(),
        base_snapshot: plan.base.clone().unwrap_or_default(),
        target_snapshot: plan.snapshot.clone(),
        resume_token: plan.resume_token.clone(),
        ..Default::default()
    };
    cost.apply(&mut req);
    let export = delta_client(source)
        .export_delta(req)
        .await
        .map_err(rpc(format!("cannot export {volume}@{}", plan.snapshot)))?
        .into_inner();
    let first = pb::ApplyDeltaRequest {
        volume: to_volume.to_string(),
        resumable: plan.resumable,
        resume: plan.resume(),
        data: Default::default(),
    };
    let bar = bar(&format!("{volume}@{} -> {to_volume}", plan.snapshot));
    let label = plan.snapshot.clone();
    let (fed, resp) = apply_stream(&mut delta_client(receiver), first, |tx| {
        relay_export(export, tx, bar, label)
    })
    .await;
    let sent = fed?;
    let resp = resp.map_err(rpc(format!("cannot apply to {to_volume} on the receiver")))?;
    Ok((sent, resp))
}

/// Passes the export's pieces on to the apply until either side ends; the bar is cleared as
/// soon as the export is done, before the receiver's answer arrives.
async fn relay_export(
    mut export: Streaming<pb::ExportDeltaResponse>,
    tx: mpsc::Sender<pb::ApplyDeltaRequest>,
    bar: ProgressBar,
    label: String,
) -> Result<u64> {
    let mut sent = 0u64;
    loop {
        match export.message().await {
            Ok(Some(m)) => {
                sent += m.data.len() as u64;
                show_progress(&bar, &m.progress);
                let piece = pb::ApplyDeltaRequest {
                    data: m.data,
                    ..Default::default()
                };
                if tx.send(piece).await.is_err() {
                    bar.finish_and_clear();
                    return Ok(sent);
                }
            }
            Ok(None) => {
                bar.finish_and_clear();
                return Ok(sent);
            }
            Err(s) => {
                bar.finish_and_clear();
                return Err(rpc(format!("export of {label} failed"))(s).into());
            }
        }
    }
}

fn done(
    format: Format,
    volume: &str,
    to_volume: &str,
    snapshot: &str,
    base: Option<&str>,
    bytes: u64,
    how: &str,
) -> Result<()> {
    match format {
        Format::Json => output::print_json(&json!({
            "volume": volume, "toVolume": to_volume, "snapshot": snapshot,
            "base": base, "streamBytes": bytes, "mode": how,
        }))?,
        Format::Table => output::print_line(&format!(
            "replicated {volume}@{snapshot} -> {to_volume}@{snapshot} ({how}, {})",
            human(bytes)
        ))?,
    }
    Ok(())
}

#[cfg(test)]
mod tests;

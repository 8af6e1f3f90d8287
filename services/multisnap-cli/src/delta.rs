//! `multisnap delta …` and `multisnap replicate`: DeltaService.
//!
//! Deltas stream through the CLI in 1 MiB pieces: from the agent to a file or stdout, from a
//! file or stdin to the agent, or from one agent straight to another. Progress bars go to
//! stderr (and only to a terminal), so stdout stays the stream or the JSON document.

use crate::exit::rpc;
use crate::output::{self, Format};
use crate::size::human;
use crate::{endpoint, Ctx};
use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use multisnap_proto::v1 as pb;
use multisnap_proto::v1::delta_service_client::DeltaServiceClient;
use multisnap_proto::v1::snapshot_service_client::SnapshotServiceClient;
use multisnap_proto::v1::volume_service_client::VolumeServiceClient;
use serde_json::json;
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

const PIECE: usize = 1 << 20;
const MAX_MESSAGE: usize = 32 << 20;

#[derive(Subcommand)]
pub enum DeltaCommand {
    /// Write the delta of VOLUME from --base (omit for a full stream) to --target, to a file
    /// or stdout.
    Export {
        volume: String,
        /// The snapshot the receiver already has; omit for everything in --target.
        #[arg(long)]
        base: Option<String>,
        /// The snapshot the receiver will end up with.
        #[arg(long)]
        target: String,
        /// Where to write the stream; `-` is stdout.
        #[arg(long, short = 'f', default_value = "-")]
        file: PathBuf,
        /// Continue an interrupted apply: the receiver's token (hex, from `delta status`).
        #[arg(long)]
        resume_token: Option<String>,
    },
    /// Apply a delta stream from a file or stdin to VOLUME (a replica of the stream's volume,
    /// or a new, empty volume for a full stream).
    Apply {
        volume: String,
        /// Where to read the stream; `-` is stdin.
        #[arg(long, short = 'f', default_value = "-")]
        file: PathBuf,
        /// Keep what arrived if the stream is cut, so the apply can be continued.
        #[arg(long)]
        resumable: bool,
        /// Continue VOLUME's interrupted apply; the stream must come from `delta export
        /// --resume-token`.
        #[arg(long)]
        resume: bool,
    },
    /// Show the apply in progress on VOLUME, if any, with its resume token.
    Status { volume: String },
    /// Drop the apply in progress on VOLUME; its space is reclaimed.
    Abort { volume: String },
}

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
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Result<Vec<u8>> {
    let s = s.trim();
    if !s.len().is_multiple_of(2) || !s.bytes().all(|c| c.is_ascii_hexdigit()) {
        bail!("resume token {s:?} is not hex");
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).context("bad hex"))
        .collect()
}

fn delta_client(ch: &Channel) -> DeltaServiceClient<Channel> {
    DeltaServiceClient::new(ch.clone())
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE)
}

fn bar(what: &str) -> ProgressBar {
    let bar = ProgressBar::new(1);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} {prefix} [{bar:30}] {pos}/{len} chunks, {msg} ({elapsed}, eta {eta})",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    bar.set_prefix(what.to_string());
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}

fn show_progress(bar: &ProgressBar, p: &Option<pb::DeltaProgress>) {
    if let Some(p) = p {
        bar.set_length(p.chunks_total.max(1));
        bar.set_position(p.chunks_done);
        bar.set_message(format!("{} sent", human(p.bytes_sent)));
    }
}

pub async fn run(ctx: &Ctx, cmd: DeltaCommand) -> Result<()> {
    let mut client = delta_client(&ctx.channel);
    match cmd {
        DeltaCommand::Export {
            volume,
            base,
            target,
            file,
            resume_token,
        } => {
            let token = resume_token.as_deref().map(unhex).transpose()?;
            let mut stream = client
                .export_delta(pb::ExportDeltaRequest {
                    volume: volume.clone(),
                    base_snapshot: base.clone().unwrap_or_default(),
                    target_snapshot: target.clone(),
                    resume_token: token.unwrap_or_default(),
                })
                .await
                .map_err(rpc(format!("cannot export {volume}@{target}")))?
                .into_inner();
            let mut out: Box<dyn tokio::io::AsyncWrite + Unpin> = if file.as_os_str() == "-" {
                Box::new(tokio::io::stdout())
            } else {
                Box::new(
                    tokio::fs::File::create(&file)
                        .await
                        .with_context(|| format!("cannot create {}", file.display()))?,
                )
            };
            let bar = bar(&format!("exporting {volume}@{target}"));
            let mut sent = 0u64;
            let mut last = None;
            while let Some(m) = stream
                .message()
                .await
                .map_err(rpc(format!("export of {volume}@{target} failed")))?
            {
                out.write_all(&m.data)
                    .await
                    .context("cannot write the stream")?;
                sent += m.data.len() as u64;
                show_progress(&bar, &m.progress);
                last = m.progress;
            }
            out.flush().await.context("cannot write the stream")?;
            bar.finish_and_clear();
            // The stream may be on stdout: the summary goes to stderr unless asked as JSON.
            let chunks = last.map_or(0, |p| p.chunks_total);
            match ctx.format {
                Format::Json if file.as_os_str() != "-" => output::print_json(&json!({
                    "volume": volume, "base": base, "target": target,
                    "bytes": sent, "chunks": chunks,
                }))?,
                _ => eprintln!(
                    "exported {volume}@{target} ({}): {} in {chunks} changed chunk(s)",
                    base.map_or("full".to_string(), |b| format!("since {b}")),
                    human(sent)
                ),
            }
            Ok(())
        }
        DeltaCommand::Apply {
            volume,
            file,
            resumable,
            resume,
        } => {
            let (mut input, size): (Box<dyn tokio::io::AsyncRead + Unpin + Send>, _) =
                if file.as_os_str() == "-" {
                    (Box::new(tokio::io::stdin()), None)
                } else {
                    let f = tokio::fs::File::open(&file)
                        .await
                        .with_context(|| format!("cannot open {}", file.display()))?;
                    let size = f.metadata().await.ok().map(|m| m.len());
                    (Box::new(f), size)
                };
            // Progress in stream bytes: the stream's own chunk counts are only known to the
            // agent. Unknown length (stdin) shows a byte counter.
            let bar = ProgressBar::new(size.unwrap_or(0));
            let template = if size.is_some() {
                "{spinner} applying to {prefix} [{bar:30}] {bytes}/{total_bytes} ({elapsed}, eta {eta})"
            } else {
                "{spinner} applying to {prefix}: {bytes} ({elapsed})"
            };
            bar.set_style(
                ProgressStyle::with_template(template)
                    .expect("static template")
                    .progress_chars("=> "),
            );
            bar.set_prefix(volume.clone());
            bar.enable_steady_tick(Duration::from_millis(100));
            let shown = bar.clone();
            let (tx, rx) = mpsc::channel(4);
            let first = pb::ApplyDeltaRequest {
                volume: volume.clone(),
                resumable,
                resume,
                data: Vec::new(),
            };
            tx.send(first).await.ok();
            let feed = async move {
                let mut total = 0u64;
                loop {
                    let mut buf = vec![0u8; PIECE];
                    let n = input
                        .read(&mut buf)
                        .await
                        .context("cannot read the stream")?;
                    if n == 0 {
                        return Ok::<u64, anyhow::Error>(total);
                    }
                    buf.truncate(n);
                    shown.inc(n as u64);
                    total += n as u64;
                    if tx
                        .send(pb::ApplyDeltaRequest {
                            data: buf,
                            ..Default::default()
                        })
                        .await
                        .is_err()
                    {
                        return Ok(total);
                    }
                }
            };
            let call = client.apply_delta(ReceiverStream::new(rx));
            let (fed, resp) = tokio::join!(feed, call);
            bar.finish_and_clear();
            let resp = resp
                .map_err(rpc(format!("cannot apply the delta to {volume}")))?
                .into_inner();
            let fed = fed?;
            report_apply(ctx.format, &volume, &resp, fed)
        }
        DeltaCommand::Status { volume } => {
            let s = client
                .get_apply_state(pb::GetApplyStateRequest {
                    volume: volume.clone(),
                })
                .await
                .map_err(rpc(format!("cannot get the apply state of {volume}")))?
                .into_inner();
            match ctx.format {
                Format::Json => output::print_json(&json!({
                    "volume": volume,
                    "inProgress": s.in_progress,
                    "snapshotName": s.snapshot_name,
                    "sourceSnapshotId": s.source_snapshot_id,
                    "baseSnapshot": s.base_snapshot,
                    "resumable": s.resumable,
                    "committing": s.committing,
                    "resumeToken": hex(&s.resume_token),
                    "stagedChunks": s.staged_chunks,
                    "stagedBytes": s.staged_bytes,
                }))?,
                Format::Table if !s.in_progress => {
                    output::print_line(&format!("no delta apply in progress on {volume}"))?
                }
                Format::Table => output::print_details(&[
                    ("volume", volume.clone()),
                    ("snapshot", s.snapshot_name.clone()),
                    ("source snapshot id", s.source_snapshot_id.to_string()),
                    (
                        "base",
                        if s.base_snapshot.is_empty() {
                            "(full stream)".into()
                        } else {
                            s.base_snapshot.clone()
                        },
                    ),
                    ("resumable", s.resumable.to_string()),
                    ("committing", s.committing.to_string()),
                    (
                        "staged",
                        format!("{} chunk(s), {}", s.staged_chunks, human(s.staged_bytes)),
                    ),
                    ("resume token", hex(&s.resume_token)),
                ])?,
            }
            Ok(())
        }
        DeltaCommand::Abort { volume } => {
            client
                .abort_apply(pb::AbortApplyRequest {
                    volume: volume.clone(),
                })
                .await
                .map_err(rpc(format!("cannot abort the apply on {volume}")))?;
            match ctx.format {
                Format::Json => output::print_json(&json!({"volume": volume, "aborted": true}))?,
                Format::Table => output::print_line(&format!(
                    "aborted the delta apply on {volume}; its space is reclaimed"
                ))?,
            }
            Ok(())
        }
    }
}

fn report_apply(
    format: Format,
    volume: &str,
    resp: &pb::ApplyDeltaResponse,
    stream_bytes: u64,
) -> Result<()> {
    if !resp.complete {
        let how = if resp.resume_token.is_empty() {
            "the apply was discarded".to_string()
        } else {
            format!(
                "kept for resumption: export again with --resume-token {} and apply with --resume",
                hex(&resp.resume_token)
            )
        };
        return Err(anyhow!(
            "the delta stream for {volume} ended before its trailer; {how}"
        ));
    }
    let snap = resp.snapshot.clone().unwrap_or_default();
    match format {
        Format::Json => output::print_json(&json!({
            "volume": volume,
            "snapshot": output::snapshot_json(&snap),
            "recordsApplied": resp.records_applied,
            "bytesApplied": resp.bytes_applied,
            "streamBytes": stream_bytes,
        }))?,
        Format::Table => output::print_line(&format!(
            "applied: {volume}@{} ({} record(s), {} of data)",
            snap.name,
            resp.records_applied,
            human(resp.bytes_applied)
        ))?,
    }
    Ok(())
}

/// Replicates a volume from the `--endpoint` agent to the `--to` agent: the newest snapshot
/// both hold is the base (unless `--full`), an interrupted earlier transfer of the same
/// snapshot is continued.
pub async fn replicate(ctx: &Ctx, args: ReplicateArgs, timeout: Duration) -> Result<()> {
    let src_ch = ctx.channel.clone();
    let dst_ch = endpoint::connect(&args.to, timeout, true).await?;
    let volume = args.volume.clone();
    let to_volume = args.to_volume.clone().unwrap_or_else(|| volume.clone());

    let src_vol = VolumeServiceClient::new(src_ch.clone())
        .get_volume(pb::GetVolumeRequest {
            name: volume.clone(),
        })
        .await
        .map_err(rpc(format!("cannot read volume {volume} on the source")))?
        .into_inner();
    let mut dst_vols = VolumeServiceClient::new(dst_ch.clone());
    let dst_vol = match dst_vols
        .get_volume(pb::GetVolumeRequest {
            name: to_volume.clone(),
        })
        .await
    {
        Ok(v) => v.into_inner(),
        Err(s) if s.code() == tonic::Code::NotFound => dst_vols
            .create_volume(pb::CreateVolumeRequest {
                name: to_volume.clone(),
                size_bytes: src_vol.size_bytes,
                chunk_size_bytes: src_vol.chunk_size_bytes,
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
    if dst_vol.size_bytes != src_vol.size_bytes
        || dst_vol.chunk_size_bytes != src_vol.chunk_size_bytes
    {
        bail!(
            "volume {to_volume} on the receiver is {} bytes in chunks of {}, the source {} in chunks of {}",
            dst_vol.size_bytes,
            dst_vol.chunk_size_bytes,
            src_vol.size_bytes,
            src_vol.chunk_size_bytes
        );
    }

    let list = |ch: Channel, v: String| async move {
        SnapshotServiceClient::new(ch)
            .list_snapshots(pb::ListSnapshotsRequest { volume: v })
            .await
            .map(|r| r.into_inner().snapshots)
    };
    let ready = pb::SnapshotState::Ready as i32;
    let src_snaps: Vec<pb::Snapshot> = list(src_ch.clone(), volume.clone())
        .await
        .map_err(rpc(format!("cannot list the snapshots of {volume}")))?
        .into_iter()
        .filter(|s| s.state == ready)
        .collect();
    let dst_snaps: Vec<pb::Snapshot> = list(dst_ch.clone(), to_volume.clone())
        .await
        .map_err(rpc(format!(
            "cannot list the snapshots of {to_volume} on the receiver"
        )))?
        .into_iter()
        .filter(|s| s.state == ready)
        .collect();
    let target = match &args.snapshot {
        Some(name) => src_snaps
            .iter()
            .find(|s| &s.name == name)
            .cloned()
            .ok_or_else(|| anyhow!("volume {volume} has no ready snapshot named {name:?}"))?,
        None => src_snaps
            .iter()
            .max_by_key(|s| s.id)
            .cloned()
            .ok_or_else(|| {
                anyhow!("volume {volume} has no snapshot to replicate; create one first")
            })?,
    };
    let held = |s: &pb::Snapshot| {
        dst_snaps
            .iter()
            .any(|d| d.source_snapshot_id == s.id && d.name == s.name)
    };
    if held(&target) {
        return done(
            ctx.format,
            &volume,
            &to_volume,
            &target.name,
            None,
            0,
            "already there",
        );
    }
    let mut base = if args.full {
        None
    } else {
        src_snaps
            .iter()
            .filter(|s| s.id < target.id && held(s))
            .max_by_key(|s| s.id)
            .map(|s| s.name.clone())
    };

    let mut deltas = delta_client(&dst_ch);
    let state = deltas
        .get_apply_state(pb::GetApplyStateRequest {
            volume: to_volume.clone(),
        })
        .await
        .map_err(rpc(format!("cannot read the apply state of {to_volume}")))?
        .into_inner();
    let mut resume_token = Vec::new();
    if state.in_progress {
        let same = state.snapshot_name == target.name && state.source_snapshot_id == target.id;
        if !(same && state.resumable && !args.no_resume) {
            bail!(
                "volume {to_volume} on the receiver has an unfinished apply of {:?}; \
                 run `multisnap --endpoint {} delta abort {to_volume}` to drop it",
                state.snapshot_name,
                args.to
            );
        }
        // Continue it: same base as when it started.
        base = (!state.base_snapshot.is_empty()).then(|| state.base_snapshot.clone());
        resume_token = state.resume_token.clone();
    }
    let resume = !resume_token.is_empty();

    let mut export = delta_client(&src_ch)
        .export_delta(pb::ExportDeltaRequest {
            volume: volume.clone(),
            base_snapshot: base.clone().unwrap_or_default(),
            target_snapshot: target.name.clone(),
            resume_token,
        })
        .await
        .map_err(rpc(format!("cannot export {volume}@{}", target.name)))?
        .into_inner();
    let (tx, rx) = mpsc::channel(4);
    tx.send(pb::ApplyDeltaRequest {
        volume: to_volume.clone(),
        resumable: !args.no_resume,
        resume,
        data: Vec::new(),
    })
    .await
    .ok();
    let bar = bar(&format!("{volume}@{} -> {to_volume}", target.name));
    let label = target.name.clone();
    let feed = async move {
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
                    return Err(rpc(format!("export of {label} failed"))(s));
                }
            }
        }
    };
    let call = deltas.apply_delta(ReceiverStream::new(rx));
    let (fed, resp) = tokio::join!(feed, call);
    let sent = fed?;
    let resp = resp
        .map_err(rpc(format!("cannot apply to {to_volume} on the receiver")))?
        .into_inner();
    if !resp.complete {
        report_apply(ctx.format, &to_volume, &resp, sent)?;
    }
    let how = match (&base, resume) {
        (_, true) => "resumed".to_string(),
        (Some(b), _) => format!("incremental since {b}"),
        (None, _) => "full".to_string(),
    };
    done(
        ctx.format,
        &volume,
        &to_volume,
        &target.name,
        base.as_deref(),
        sent,
        &how,
    )
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

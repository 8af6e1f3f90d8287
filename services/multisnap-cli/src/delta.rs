//! `multisnap delta …`: DeltaService, and the streaming pieces `multisnap replicate` shares.
//!
//! Deltas stream through the CLI in 1 MiB pieces: from the agent to a file or stdout, from a
//! file or stdin to the agent, or from one agent straight to another (`replicate.rs`). Progress
//! bars go to stderr (and only to a terminal), so stdout stays the stream or the JSON document.

use crate::exit::rpc;
use crate::output::{self, Format};
use crate::size::human;
use crate::stream_cost::StreamCost;
use crate::Ctx;
use anyhow::{anyhow, bail, Context, Result};
use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};
use multisnap_proto::v1 as pb;
use multisnap_proto::v1::delta_service_client::DeltaServiceClient;
use serde_json::json;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
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
        #[command(flatten)]
        cost: StreamCost,
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

pub(crate) fn delta_client(ch: &Channel) -> DeltaServiceClient<Channel> {
    DeltaServiceClient::new(ch.clone())
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE)
}

pub(crate) fn bar(what: &str) -> ProgressBar {
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

pub(crate) fn show_progress(bar: &ProgressBar, p: &Option<pb::DeltaProgress>) {
    if let Some(p) = p {
        bar.set_length(p.chunks_total.max(1));
        bar.set_position(p.chunks_done);
        bar.set_message(format!("{} sent", human(p.bytes_sent)));
    }
}

pub async fn run(ctx: &Ctx, cmd: DeltaCommand) -> Result<()> {
    match cmd {
        DeltaCommand::Export {
            volume,
            base,
            target,
            file,
            resume_token,
            cost,
        } => export(ctx, volume, base, target, file, resume_token, cost).await,
        DeltaCommand::Apply {
            volume,
            file,
            resumable,
            resume,
        } => apply(ctx, volume, file, resumable, resume).await,
        DeltaCommand::Status { volume } => status(ctx, volume).await,
        DeltaCommand::Abort { volume } => abort(ctx, volume).await,
    }
}

/// `-` is stdout.
async fn open_output(file: &Path) -> Result<Box<dyn AsyncWrite + Unpin>> {
    if file.as_os_str() == "-" {
        return Ok(Box::new(tokio::io::stdout()));
    }
    let f = tokio::fs::File::create(file)
        .await
        .with_context(|| format!("cannot create {}", file.display()))?;
    Ok(Box::new(f))
}

/// `-` is stdin, whose length is unknown; a file's length sizes the progress bar.
async fn open_input(file: &Path) -> Result<(Box<dyn AsyncRead + Unpin + Send>, Option<u64>)> {
    if file.as_os_str() == "-" {
        return Ok((Box::new(tokio::io::stdin()), None));
    }
    let f = tokio::fs::File::open(file)
        .await
        .with_context(|| format!("cannot open {}", file.display()))?;
    let size = f.metadata().await.ok().map(|m| m.len());
    Ok((Box::new(f), size))
}

async fn export(
    ctx: &Ctx,
    volume: String,
    base: Option<String>,
    target: String,
    file: PathBuf,
    resume_token: Option<String>,
    cost: StreamCost,
) -> Result<()> {
    let token = resume_token.as_deref().map(unhex).transpose()?;
    let mut req = pb::ExportDeltaRequest {
        volume: volume.clone(),
        base_snapshot: base.clone().unwrap_or_default(),
        target_snapshot: target.clone(),
        resume_token: token.unwrap_or_default(),
        ..Default::default()
    };
    cost.apply(&mut req);
    let mut stream = delta_client(&ctx.channel)
        .export_delta(req)
        .await
        .map_err(rpc(format!("cannot export {volume}@{target}")))?
        .into_inner();
    let mut out = open_output(&file).await?;
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

/// Progress in stream bytes: the stream's own chunk counts are only known to the agent.
/// Unknown length (stdin) shows a byte counter.
fn apply_bar(volume: &str, size: Option<u64>) -> ProgressBar {
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
    bar.set_prefix(volume.to_string());
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}

async fn apply(
    ctx: &Ctx,
    volume: String,
    file: PathBuf,
    resumable: bool,
    resume: bool,
) -> Result<()> {
    let (input, size) = open_input(&file).await?;
    let bar = apply_bar(&volume, size);
    let first = pb::ApplyDeltaRequest {
        volume: volume.clone(),
        resumable,
        resume,
        data: Default::default(),
    };
    let shown = bar.clone();
    let (fed, resp) = apply_stream(&mut delta_client(&ctx.channel), first, |tx| {
        read_pieces(input, tx, shown)
    })
    .await;
    bar.finish_and_clear();
    let resp = resp.map_err(rpc(format!("cannot apply the delta to {volume}")))?;
    let fed = fed?;
    report_apply(ctx.format, &volume, &resp, fed)
}

/// Sends `input` to the apply in pieces until it ends or the apply stops listening; returns
/// the bytes read.
async fn read_pieces(
    mut input: Box<dyn AsyncRead + Unpin + Send>,
    tx: mpsc::Sender<pb::ApplyDeltaRequest>,
    shown: ProgressBar,
) -> Result<u64> {
    let mut total = 0u64;
    loop {
        let mut buf = vec![0u8; PIECE];
        let n = input
            .read(&mut buf)
            .await
            .context("cannot read the stream")?;
        if n == 0 {
            return Ok(total);
        }
        buf.truncate(n);
        shown.inc(n as u64);
        total += n as u64;
        if tx
            .send(pb::ApplyDeltaRequest {
                data: buf.into(),
                ..Default::default()
            })
            .await
            .is_err()
        {
            return Ok(total);
        }
    }
}

/// One ApplyDelta call: `first` (the volume and the resume flags) goes out before anything
/// `feed` sends, and `feed` runs beside the call so the agent consumes pieces as they come.
/// Returns what `feed` returned and the agent's answer, for the caller to judge in its order.
pub(crate) async fn apply_stream<F, Fut>(
    client: &mut DeltaServiceClient<Channel>,
    first: pb::ApplyDeltaRequest,
    feed: F,
) -> (Result<u64>, Result<pb::ApplyDeltaResponse, tonic::Status>)
where
    F: FnOnce(mpsc::Sender<pb::ApplyDeltaRequest>) -> Fut,
    Fut: Future<Output = Result<u64>>,
{
    let (tx, rx) = mpsc::channel(4);
    tx.send(first).await.ok();
    let call = client.apply_delta(ReceiverStream::new(rx));
    let (fed, resp) = tokio::join!(feed(tx), call);
    (fed, resp.map(tonic::Response::into_inner))
}

async fn status(ctx: &Ctx, volume: String) -> Result<()> {
    let s = delta_client(&ctx.channel)
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

async fn abort(ctx: &Ctx, volume: String) -> Result<()> {
    delta_client(&ctx.channel)
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

pub(crate) fn report_apply(
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

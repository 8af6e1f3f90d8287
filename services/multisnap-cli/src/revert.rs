//! `snapshot revert [--wait]`: roll a volume back to a snapshot, and follow the agent's
//! background merge until it is done.

use crate::exit::rpc;
use crate::output::{self, Format};
use crate::Ctx;
use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};
use multisnap_proto::v1 as pb;
use multisnap_proto::v1::snapshot_service_client::SnapshotServiceClient;
use multisnap_proto::v1::volume_service_client::VolumeServiceClient;
use std::time::Duration;
use tonic::transport::Channel;

const POLL: Duration = Duration::from_millis(200);

pub async fn run(
    ctx: &Ctx,
    client: &mut SnapshotServiceClient<Channel>,
    volume: &str,
    snapshot: &str,
    wait: bool,
) -> Result<()> {
    let started = client
        .revert_volume(pb::RevertVolumeRequest {
            volume: volume.to_string(),
            snapshot: snapshot.to_string(),
        })
        .await
        .map_err(rpc(format!(
            "cannot roll {volume} back to {volume}@{snapshot}"
        )))?
        .into_inner()
        .merge;
    let merge = match (wait, started) {
        (true, Some(m)) => wait_for_merge(ctx, volume, &m).await?,
        (_, m) => m,
    };
    match ctx.format {
        Format::Json => output::print_json(&serde_json::json!({
            "volume": volume,
            "snapshot": snapshot,
            "merge": merge.as_ref().map(output::merge_json),
        })),
        Format::Table => match merge {
            None => output::print_line(&format!(
                "rolled {volume} back to {volume}@{snapshot}; its data is merged into the origin"
            )),
            Some(m) => output::print_line(&format!(
                "rolled {volume} back to {volume}@{snapshot}; merging into the origin in the \
                 background ({} of {} chunks; --wait waits for it)",
                m.merged_chunks, m.total_chunks
            )),
        },
    }?;
    Ok(())
}

/// A progress bar over `total` chunks of a background operation (`what`: "merging", …) on
/// `prefix`. indicatif draws on stderr and only on a terminal, so stdout stays a clean
/// document.
pub fn chunk_bar(what: &str, total: u64, prefix: String) -> ProgressBar {
    let bar = ProgressBar::new(total.max(1));
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{{spinner}} {what} {{prefix}} [{{bar:30}}] {{pos}}/{{len}} chunks ({{elapsed}}, {{eta}} left)"
        ))
        .expect("a valid template")
        .progress_chars("=> "),
    );
    bar.set_prefix(prefix);
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}

/// Polls `GetVolume` until the volume has no rollback merge left; returns `None` then.
async fn wait_for_merge(
    ctx: &Ctx,
    volume: &str,
    started: &pb::MergeProgress,
) -> Result<Option<pb::MergeProgress>> {
    let mut client = VolumeServiceClient::new(ctx.channel.clone());
    let bar = chunk_bar(
        "merging",
        started.total_chunks,
        format!("{volume}@{}", started.snapshot),
    );
    loop {
        let v: pb::Volume = client
            .get_volume(pb::GetVolumeRequest {
                name: volume.to_string(),
            })
            .await
            .map_err(rpc(format!("cannot follow the rollback of {volume:?}")))?
            .into_inner();
        match v.merge {
            // Ended (a later rollback would show another snapshot; that is not ours to follow).
            None => {
                bar.finish_and_clear();
                return Ok(None);
            }
            Some(m) if m.snapshot != started.snapshot => {
                bar.finish_and_clear();
                return Ok(None);
            }
            Some(m) => {
                bar.set_length(m.total_chunks.max(1));
                bar.set_position(m.merged_chunks);
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

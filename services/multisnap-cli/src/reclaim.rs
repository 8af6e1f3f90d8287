//! `snapshot delete --wait`: follow the agent's background reclamation until it is done.

use crate::exit::rpc;
use crate::size::human;
use crate::Ctx;
use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};
use multisnap_proto::v1 as pb;
use multisnap_proto::v1::volume_service_client::VolumeServiceClient;
use std::time::Duration;

const POLL: Duration = Duration::from_millis(200);

/// Polls `GetVolume` until `reclaim_pending` reaches 0; returns that final count (0).
/// `pending` is what DeleteSnapshot reported, this snapshot included.
pub async fn wait(ctx: &Ctx, volume: &str, pending: u64) -> Result<u64> {
    let mut client = VolumeServiceClient::new(ctx.channel.clone());
    // The agent reports whole snapshots, not bytes, so the bar counts snapshots; the
    // message shows free space growing so a long single deletion still visibly moves.
    // indicatif draws on stderr and only on a terminal, so stdout stays a clean document.
    let bar = ProgressBar::new(pending.max(1));
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} reclaiming {prefix} [{bar:30}] {pos}/{len} snapshot(s), {msg} ({elapsed})",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    bar.set_prefix(volume.to_string());
    bar.enable_steady_tick(Duration::from_millis(100));
    let mut total = pending.max(1);
    loop {
        let v: pb::Volume = client
            .get_volume(pb::GetVolumeRequest {
                name: volume.to_string(),
            })
            .await
            .map_err(rpc(format!("cannot follow reclamation of {volume:?}")))?
            .into_inner();
        // Someone else may delete snapshots meanwhile; grow the bar rather than go negative.
        total = total.max(v.reclaim_pending);
        bar.set_length(total);
        bar.set_position(total - v.reclaim_pending);
        bar.set_message(format!("{} free", human(v.store_free_bytes)));
        if v.reclaim_pending == 0 {
            bar.finish_and_clear();
            return Ok(0);
        }
        tokio::time::sleep(POLL).await;
    }
}

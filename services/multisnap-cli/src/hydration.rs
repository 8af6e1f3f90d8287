//! Clones in the CLI: `volume create NAME --from VOLUME[@SNAPSHOT] [--wait]`, the hydration
//! line `volume show` and `volume list` print, and following a hydration with a progress bar.

use crate::exit::rpc;
use crate::Ctx;
use anyhow::Result;
use multisnap_proto::v1 as pb;
use multisnap_proto::v1::volume_service_client::VolumeServiceClient;
use std::time::Duration;

const POLL: Duration = Duration::from_millis(200);

/// `VOLUME` (its current contents) or `VOLUME@SNAPSHOT`.
pub fn parse_source(s: &str) -> Result<pb::VolumeSource, String> {
    let (volume, snapshot) = match s.split_once('@') {
        Some((_, "")) => {
            return Err(format!(
            "{s:?}: the snapshot after '@' is empty (give VOLUME alone for its current contents)"
        ))
        }
        Some((v, snap)) => (v, snap),
        None => (s, ""),
    };
    if volume.is_empty() {
        return Err(format!("{s:?}: the source volume is empty"));
    }
    Ok(pb::VolumeSource {
        volume: volume.to_string(),
        snapshot: snapshot.to_string(),
    })
}

/// What a clone copies from, as `VOLUME@SNAPSHOT` (`VOLUME (its contents at the clone)` for a
/// clone of a volume's current contents, whose snapshot is hidden).
pub fn source_words(h: &pb::Hydration) -> String {
    if h.source_snapshot.starts_with('.') || h.source_snapshot.is_empty() {
        format!("{} (its contents when cloned)", h.source_volume)
    } else {
        format!("{}@{}", h.source_volume, h.source_snapshot)
    }
}

/// The `volume show` line for a volume's hydration.
pub fn detail(h: Option<&pb::Hydration>) -> String {
    let Some(h) = h else {
        return "-".into();
    };
    let attached = if h.source_attached {
        ""
    } else {
        " (source not loaded: waiting)"
    };
    format!(
        "from {}: {} of {} chunks, {} copied{attached}",
        source_words(h),
        h.hydrated_chunks,
        h.total_chunks,
        crate::size::human(h.hydrated_bytes)
    )
}

/// The `volume list` column: the share hydrated, or `-`.
pub fn column(h: Option<&pb::Hydration>) -> String {
    match h {
        None => "-".into(),
        Some(h) => format!("{}%", h.hydrated_chunks * 100 / h.total_chunks.max(1)),
    }
}

/// Polls `GetVolume` with a progress bar until the volume has no hydration left; returns the
/// volume then.
pub async fn wait(ctx: &Ctx, volume: &str, started: &pb::Hydration) -> Result<pb::Volume> {
    let mut client = VolumeServiceClient::new(ctx.channel.clone());
    let bar = crate::revert::chunk_bar(
        "hydrating",
        started.total_chunks,
        format!("{volume} from {}", source_words(started)),
    );
    loop {
        let v: pb::Volume = client
            .get_volume(pb::GetVolumeRequest {
                name: volume.to_string(),
            })
            .await
            .map_err(rpc(format!("cannot follow the hydration of {volume:?}")))?
            .into_inner();
        match &v.hydration {
            None => {
                bar.finish_and_clear();
                return Ok(v);
            }
            Some(h) => {
                bar.set_length(h.total_chunks.max(1));
                bar.set_position(h.hydrated_chunks);
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_parse_with_and_without_a_snapshot() {
        let s = parse_source("db@nightly").unwrap();
        assert_eq!((s.volume.as_str(), s.snapshot.as_str()), ("db", "nightly"));
        let s = parse_source("db").unwrap();
        assert_eq!((s.volume.as_str(), s.snapshot.as_str()), ("db", ""));
        assert!(parse_source("db@").is_err());
        assert!(parse_source("@snap").is_err());
    }
}

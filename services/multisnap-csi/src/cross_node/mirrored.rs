//! A copy already here: a volume of this node that a mirror keeps (docs/MIRROR.md) may hold
//! the very snapshot a restore asks for. It is restored from there, and nothing travels.
//!
//! A mirror's target volume records the uuid of the volume it replicates (`replica_of`), and
//! each snapshot it received its id on that volume (`source_snapshot_id`): a snapshot there
//! with the source's uuid, name and id is the source snapshot. Telling needs the source
//! agent's answer (the uuid and the id); while it cannot be reached, nothing is taken from a
//! mirror and the pull reports the source as unavailable.

use crate::ids::SnapshotId;
use crate::peer::Peers;
use crate::status::from_agent;
use crate::Driver;
use multisnap_proto::v1 as pb;
use std::time::Duration;
use tonic::Status;

/// How long a restore waits for the source agent's answer before it goes on without it.
const ASK_SOURCE: Duration = Duration::from_secs(5);

/// The source snapshot as its agent knows it: the volume's uuid and the snapshot's id.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Identity {
    volume_uuid: String,
    snapshot_id: u64,
    snapshot_name: String,
}

/// The local source for `id` in a mirror target of this node, and its size; None when no
/// mirror here holds it or the source agent cannot say which snapshot it is.
pub(super) async fn find(
    d: &Driver,
    peers: &Peers,
    id: &SnapshotId,
) -> Result<Option<(pb::VolumeSource, u64)>, Status> {
    let Ok(Some(source)) = tokio::time::timeout(ASK_SOURCE, identify(peers, id)).await else {
        return Ok(None);
    };
    let volumes = d
        .agent
        .all_volumes()
        .await
        .map_err(|s| from_agent("listing this node's volumes", s))?;
    for v in volumes
        .iter()
        .filter(|v| !v.replica_of.is_empty() && v.replica_of == source.volume_uuid)
    {
        let snaps = d
            .agent
            .snapshots_of(&v.name)
            .await
            .map_err(|s| from_agent(&format!("listing the snapshots of {}", v.name), s))?;
        if let Some(s) = snaps.iter().find(|s| holds(s, &source)) {
            tracing::info!(snapshot = %id, mirror = %v.name, "restoring from a mirror on this node; nothing to pull");
            let size = if s.size_bytes == 0 {
                v.size_bytes
            } else {
                s.size_bytes
            };
            let from = pb::VolumeSource {
                volume: v.name.clone(),
                snapshot: s.name.clone(),
            };
            return Ok(Some((from, size)));
        }
    }
    Ok(None)
}

/// Whether `s`, a snapshot of a volume replicating the source, is the source snapshot.
fn holds(s: &pb::Snapshot, source: &Identity) -> bool {
    s.state == pb::SnapshotState::Ready as i32
        && s.source_snapshot_id == source.snapshot_id
        && s.name == source.snapshot_name
}

/// Asks the source agent which volume and snapshot `id` are; None when it cannot answer.
async fn identify(peers: &Peers, id: &SnapshotId) -> Option<Identity> {
    let ch = peers.connect(&id.volume.node).await.ok()?;
    let volume = pb::volume_service_client::VolumeServiceClient::new(ch.clone())
        .get_volume(pb::GetVolumeRequest {
            name: id.volume.volume.to_string(),
        })
        .await
        .ok()?
        .into_inner();
    let snapshot = pb::snapshot_service_client::SnapshotServiceClient::new(ch)
        .get_snapshot(pb::GetSnapshotRequest {
            volume: id.volume.volume.to_string(),
            name: id.snapshot.to_string(),
        })
        .await
        .ok()?
        .into_inner();
    let readable = snapshot.state == pb::SnapshotState::Ready as i32;
    (readable && !volume.uuid.is_empty()).then_some(Identity {
        volume_uuid: volume.uuid,
        snapshot_id: snapshot.id,
        snapshot_name: snapshot.name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(name: &str, source_id: u64, state: pb::SnapshotState) -> pb::Snapshot {
        pb::Snapshot {
            name: name.into(),
            source_snapshot_id: source_id,
            state: state as i32,
            ..Default::default()
        }
    }

    #[test]
    fn only_the_ready_snapshot_with_the_sources_name_and_id_counts() {
        let source = Identity {
            volume_uuid: "u".into(),
            snapshot_id: 7,
            snapshot_name: "csi-aa".into(),
        };
        assert!(holds(&snap("csi-aa", 7, pb::SnapshotState::Ready), &source));
        // Another snapshot of the same name (the source's was deleted and made again).
        assert!(!holds(
            &snap("csi-aa", 6, pb::SnapshotState::Ready),
            &source
        ));
        // The same id under another name is not what was asked for.
        assert!(!holds(
            &snap("csi-bb", 7, pb::SnapshotState::Ready),
            &source
        ));
        // Taken on this node (id 0), or still being deleted.
        assert!(!holds(
            &snap("csi-aa", 0, pb::SnapshotState::Ready),
            &source
        ));
        assert!(!holds(
            &snap("csi-aa", 7, pb::SnapshotState::Deleting),
            &source
        ));
    }
}

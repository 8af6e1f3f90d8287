//! A new volume's content source: a snapshot (restore) or a volume (clone). Both become the
//! agent's `CreateVolumeRequest.source`, so the new volume is usable at once and its data is
//! shared with or copied from the source by the agent, not by a copy the user waits for.

use crate::csi::volume_content_source::Type;
use crate::csi::VolumeContentSource;
use crate::ids::{SnapshotId, VolumeId};
use crate::status::{from_agent, invalid};
use crate::Driver;
use crate::{catalog, cross_node};
use multisnap_proto::v1 as pb;
use tonic::Status;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Snapshot(SnapshotId),
    Volume(VolumeId),
}

/// Checks the ids of a content source: one of another form names nothing (NOT_FOUND); a
/// volume on another node, or a snapshot there without peers configured, cannot be used here
/// (RESOURCE_EXHAUSTED, which makes the scheduler try another node for a
/// WaitForFirstConsumer claim).
pub fn parse(d: &Driver, s: Option<&VolumeContentSource>) -> Result<Option<Source>, Status> {
    let Some(s) = s else { return Ok(None) };
    let (source, node) = match &s.r#type {
        None => {
            return Err(invalid(
                "volume_content_source names neither a snapshot nor a volume",
            ))
        }
        Some(Type::Snapshot(snap)) => {
            if snap.snapshot_id.is_empty() {
                return Err(invalid(
                    "volume_content_source.snapshot.snapshot_id is required",
                ));
            }
            let id = SnapshotId::parse(&snap.snapshot_id).ok_or_else(|| {
                Status::not_found(format!(
                    "source snapshot {:?} does not exist",
                    snap.snapshot_id
                ))
            })?;
            let node = id.volume.node.clone();
            (Source::Snapshot(id), node)
        }
        Some(Type::Volume(vol)) => {
            if vol.volume_id.is_empty() {
                return Err(invalid(
                    "volume_content_source.volume.volume_id is required",
                ));
            }
            let id = VolumeId::parse(&vol.volume_id).ok_or_else(|| {
                Status::not_found(format!("source volume {:?} does not exist", vol.volume_id))
            })?;
            let node = id.node.clone();
            (Source::Volume(id), node)
        }
    };
    // A snapshot of another node is pulled here when peers are configured (see
    // [`crate::cross_node`]); a volume is cloned only on its own node.
    let pullable = matches!(source, Source::Snapshot(_)) && d.peers.is_some();
    if node != d.node && !pullable {
        return Err(Status::resource_exhausted(format!(
            "the content source lives on node {node}; a volume is restored or cloned on the node that holds its source (this is {})",
            d.node
        )));
    }
    Ok(Some(source))
}

impl Source {
    /// How the volume label [`catalog::CONTENT_SOURCE_LABEL`] records this source.
    pub fn label(&self) -> String {
        match self {
            Source::Snapshot(s) => format!("snapshot {s}"),
            Source::Volume(v) => format!("volume {v}"),
        }
    }

    /// The in-flight key of the volume the source belongs to: a source must not be deleted
    /// while a volume is being made from it.
    pub fn volume_key(&self) -> String {
        match self {
            Source::Snapshot(s) => format!("volume {}", s.volume),
            Source::Volume(v) => format!("volume {v}"),
        }
    }

    /// The agent's source and the smallest size the new volume may have (the source's).
    pub async fn resolve(&self, d: &Driver) -> Result<(pb::VolumeSource, u64), Status> {
        match self {
            Source::Snapshot(id) if id.volume.node != d.node => {
                cross_node::local_source(d, id).await
            }
            Source::Snapshot(id) => {
                let snap = d
                    .agent
                    .snapshots()
                    .get_snapshot(pb::GetSnapshotRequest {
                        volume: id.volume.volume.to_string(),
                        name: id.snapshot.to_string(),
                    })
                    .await
                    .map_err(|s| match s.code() {
                        tonic::Code::NotFound => {
                            Status::not_found(format!("source snapshot {id} does not exist"))
                        }
                        _ => from_agent(&format!("looking up snapshot {id}"), s),
                    })?
                    .into_inner();
                if snap.state != pb::SnapshotState::Ready as i32 {
                    return Err(Status::not_found(format!(
                        "source snapshot {id} is not readable (deleted, or dropped when its store filled up)"
                    )));
                }
                let size = super::snapshots::restore_size(d, &id.volume, &snap).await?;
                Ok((
                    pb::VolumeSource {
                        volume: id.volume.volume.to_string(),
                        snapshot: id.snapshot.to_string(),
                    },
                    size,
                ))
            }
            Source::Volume(id) => {
                let e = catalog::entry(&d.agent, &id.volume).await?;
                match e {
                    Some(e) if !e.retired() => Ok((
                        pb::VolumeSource {
                            volume: id.volume.to_string(),
                            snapshot: String::new(),
                        },
                        e.volume.size_bytes,
                    )),
                    _ => Err(Status::not_found(format!(
                        "source volume {id} does not exist"
                    ))),
                }
            }
        }
    }
}

//! CSI SnapshotMetadata (changed block tracking): GetMetadataAllocated and GetMetadataDelta,
//! answered from the agent's block maps (DeltaService.GetAllocatedRanges and
//! GetChangedRanges), which read the exception index and no data.
//!
//! Ranges are VARIABLE_LENGTH: each is a maximal extent. A delta's extents are whole chunks
//! (the copy-on-write unit, the natural block), but one range per run of changed chunks keeps
//! a 64 MiB change one tuple instead of a thousand, and an allocation map follows the origin's
//! holes finer than a chunk, which fixed-size blocks of the chunk size could not say. The
//! spec lets the plugin choose either style per stream.

use crate::csi::snapshot_metadata_server::SnapshotMetadata;
use crate::csi::*;
use crate::ids::SnapshotId;
use crate::status::{from_agent, invalid};
use crate::Driver;
use multisnap_proto::v1 as pb;
use std::pin::Pin;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

pub struct SnapshotMetadataService(pub Driver);

type AllocatedStream =
    Pin<Box<dyn Stream<Item = Result<GetMetadataAllocatedResponse, Status>> + Send>>;
type DeltaStream = Pin<Box<dyn Stream<Item = Result<GetMetadataDeltaResponse, Status>> + Send>>;

/// The request's offset and per-message limit as the agent takes them. CSI's table: a
/// negative starting offset is OUT_OF_RANGE (one past the end comes back from the agent as
/// OUT_OF_RANGE too); a negative max_results is an invalid argument.
fn limits(starting_offset: i64, max_results: i32) -> Result<(u64, u32), Status> {
    let offset = u64::try_from(starting_offset).map_err(|_| {
        Status::out_of_range(format!("starting_offset {starting_offset} is negative"))
    })?;
    let max = u32::try_from(max_results)
        .map_err(|_| invalid(format!("max_results {max_results} is negative")))?;
    Ok((offset, max))
}

/// A snapshot id of this node. CSI answers NOT_FOUND for an id it does not know, which
/// includes one not of this driver's form; a snapshot of another node's agent cannot be read
/// here (its data is there), which is a precondition, as for DeleteSnapshot.
fn local_snapshot(d: &Driver, field: &str, id: &str) -> Result<SnapshotId, Status> {
    if id.is_empty() {
        return Err(invalid(format!("{field} is required")));
    }
    let parsed = SnapshotId::parse(id)
        .ok_or_else(|| Status::not_found(format!("snapshot {id:?} does not exist")))?;
    if parsed.volume.node != d.node {
        return Err(Status::failed_precondition(format!(
            "snapshot {id} lives on node {}; this driver serves node {}",
            parsed.volume.node, d.node
        )));
    }
    Ok(parsed)
}

fn block_metadata(m: &pb::BlockRangesResponse) -> Vec<BlockMetadata> {
    m.ranges
        .iter()
        .map(|r| BlockMetadata {
            byte_offset: r.offset as i64,
            size_bytes: r.length as i64,
        })
        .collect()
}

/// The agent call behind each CSI call.
enum AgentMap {
    Allocated(pb::GetAllocatedRangesRequest),
    Changed(pb::GetChangedRangesRequest),
}

/// Starts the agent's block map; a refusal (checked before any range) is the call's status.
async fn agent_map(
    d: &Driver,
    what: &str,
    request: AgentMap,
) -> Result<Streaming<pb::BlockRangesResponse>, Status> {
    let mut deltas = d.agent.deltas();
    let reply = match request {
        AgentMap::Allocated(r) => deltas.get_allocated_ranges(r).await,
        AgentMap::Changed(r) => deltas.get_changed_ranges(r).await,
    };
    reply
        .map(|r| r.into_inner())
        .map_err(|s| from_agent(what, s))
}

/// The agent's stream, message for message, in CSI's form; an error mid-stream ends it with
/// the agent's code, as the spec asks (the CO then continues from the last range it got).
fn relay<T: Send + 'static>(
    what: String,
    agent: Streaming<pb::BlockRangesResponse>,
    make: fn(i64, Vec<BlockMetadata>) -> T,
) -> Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>> {
    Box::pin(agent.map(move |m| match m {
        Ok(m) => Ok(make(m.snapshot_size_bytes as i64, block_metadata(&m))),
        Err(s) => Err(from_agent(&what, s)),
    }))
}

#[tonic::async_trait]
impl SnapshotMetadata for SnapshotMetadataService {
    type GetMetadataAllocatedStream = AllocatedStream;
    type GetMetadataDeltaStream = DeltaStream;

    async fn get_metadata_allocated(
        &self,
        req: Request<GetMetadataAllocatedRequest>,
    ) -> Result<Response<AllocatedStream>, Status> {
        let r = req.into_inner();
        let id = local_snapshot(&self.0, "snapshot_id", &r.snapshot_id)?;
        let (starting_offset, max_results) = limits(r.starting_offset, r.max_results)?;
        let what = format!("mapping the allocated ranges of snapshot {id}");
        let request = AgentMap::Allocated(pb::GetAllocatedRangesRequest {
            volume: id.volume.volume.to_string(),
            snapshot: id.snapshot.to_string(),
            starting_offset,
            max_results,
        });
        let agent = agent_map(&self.0, &what, request).await?;
        Ok(Response::new(relay(what, agent, |size, ranges| {
            GetMetadataAllocatedResponse {
                block_metadata_type: BlockMetadataType::VariableLength as i32,
                volume_capacity_bytes: size,
                block_metadata: ranges,
            }
        })))
    }

    async fn get_metadata_delta(
        &self,
        req: Request<GetMetadataDeltaRequest>,
    ) -> Result<Response<DeltaStream>, Status> {
        let r = req.into_inner();
        let base = local_snapshot(&self.0, "base_snapshot_id", &r.base_snapshot_id)?;
        let target = local_snapshot(&self.0, "target_snapshot_id", &r.target_snapshot_id)?;
        if base.volume != target.volume {
            return Err(invalid(format!(
                "snapshots {base} and {target} are of different volumes; a delta is between two snapshots of one volume"
            )));
        }
        let (starting_offset, max_results) = limits(r.starting_offset, r.max_results)?;
        let what = format!("mapping the changes from snapshot {base} to {target}");
        let request = AgentMap::Changed(pb::GetChangedRangesRequest {
            volume: target.volume.volume.to_string(),
            base_snapshot: base.snapshot.to_string(),
            target_snapshot: target.snapshot.to_string(),
            starting_offset,
            max_results,
        });
        let agent = agent_map(&self.0, &what, request).await?;
        Ok(Response::new(relay(what, agent, |size, ranges| {
            GetMetadataDeltaResponse {
                block_metadata_type: BlockMetadataType::VariableLength as i32,
                volume_capacity_bytes: size,
                block_metadata: ranges,
            }
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn offsets_and_limits_are_checked_with_the_spec_codes() {
        assert_eq!(limits(0, 0).unwrap(), (0, 0));
        assert_eq!(limits(1 << 40, 7).unwrap(), (1 << 40, 7));
        assert_eq!(limits(-1, 0).unwrap_err().code(), Code::OutOfRange);
        assert_eq!(limits(0, -1).unwrap_err().code(), Code::InvalidArgument);
    }
}

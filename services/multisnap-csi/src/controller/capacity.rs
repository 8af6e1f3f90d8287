//! GetCapacity: the free space of the filesystem holding the agent's data directory, where
//! the volumes' origin and store files are made, for this node's topology segment.

use super::sizes::{BLOCK, MAX_BYTES};
use crate::capability;
use crate::csi::*;
use crate::params::VolumeParams;
use crate::status::invalid;
use crate::{topology, Driver};
use tonic::{Response, Status};

pub async fn get(
    d: &Driver,
    r: GetCapacityRequest,
) -> Result<Response<GetCapacityResponse>, Status> {
    VolumeParams::parse(&r.parameters).map_err(invalid)?;
    let none = || {
        Ok(Response::new(GetCapacityResponse {
            available_capacity: 0,
            ..Default::default()
        }))
    };
    // Capacity for volumes this driver cannot make, or on another node, is none.
    if !r.volume_capabilities.is_empty() && capability::check_all(&r.volume_capabilities).is_err() {
        return none();
    }
    if r.accessible_topology
        .as_ref()
        .is_some_and(|t| !topology::admits(t, &d.node))
    {
        return none();
    }
    let dir = d.agent.data_dir().to_path_buf();
    let free = tokio::task::spawn_blocking(move || crate::node::fs::usage(&dir).map(|u| u[1]))
        .await
        .map_err(|e| Status::internal(format!("capacity check failed: {e}")))?
        .map_err(|e| {
            Status::unavailable(format!(
                "cannot read the free space of the agent's data directory {}: {e}",
                d.agent.data_dir().display()
            ))
        })?;
    Ok(Response::new(GetCapacityResponse {
        available_capacity: free.min(i64::MAX as u64) as i64,
        maximum_volume_size: Some(MAX_BYTES as i64),
        minimum_volume_size: Some(BLOCK as i64),
    }))
}

#[cfg(test)]
mod tests {
    #[test]
    fn free_bytes_of_a_real_directory() {
        let dir = tempfile::tempdir().unwrap();
        let usage = crate::node::fs::usage(dir.path()).unwrap();
        assert!(usage[0] > 0 && usage[1] > 0 && usage[1] <= usage[0]);
        assert!(crate::node::fs::usage(&dir.path().join("missing")).is_err());
    }
}

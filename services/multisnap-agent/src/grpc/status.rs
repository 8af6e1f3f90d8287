//! One mapping from the agent's and the store's errors to gRPC status codes, so every RPC
//! answers the same failure the same way.

use crate::volumes::VolumeError;
use multisnap_store::StoreError;
use tonic::Status;

pub fn from_store(e: StoreError) -> Status {
    let msg = e.to_string();
    match e {
        StoreError::SnapshotNotFound(_) | StoreError::SnapshotIdNotFound(_) => {
            Status::not_found(msg)
        }
        StoreError::SnapshotExists(_) => Status::already_exists(msg),
        StoreError::InvalidName { .. }
        | StoreError::OutOfRange { .. }
        | StoreError::InvalidGeometry(_) => Status::invalid_argument(msg),
        StoreError::StoreFull { .. } => Status::resource_exhausted(msg),
        StoreError::SnapshotReadOnly(_) | StoreError::Unsupported { .. } => {
            Status::failed_precondition(msg)
        }
        StoreError::Poisoned(_) => Status::unavailable(msg),
        _ => Status::internal(msg),
    }
}

pub fn from_volume(e: VolumeError) -> Status {
    match e {
        VolumeError::NotFound(_) => Status::not_found(e.to_string()),
        VolumeError::AlreadyExists(_) => Status::already_exists(e.to_string()),
        VolumeError::InvalidArgument(m) => Status::invalid_argument(m),
        VolumeError::FailedPrecondition(m) => Status::failed_precondition(m),
        VolumeError::Io { .. } => Status::internal(e.to_string()),
        VolumeError::Store(s) => from_store(s),
    }
}

/// Runs blocking store work off the async threads.
pub async fn blocking<T, F>(f: F) -> Result<T, Status>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, Status> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("worker failed: {e}")))?
}

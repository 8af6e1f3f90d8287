//! One mapping from the agent's and the store's errors to gRPC status codes, so every RPC
//! answers the same failure the same way.

use crate::ublk_devices::UblkDevError;
use crate::volumes::VolumeError;
use multisnap_delta::DeltaError;
use multisnap_replication::ReplicationError;
use multisnap_store::{ErrorKind, StoreError};
use tonic::Status;

/// A store error as a gRPC status, by its kind:
///
/// | kind | status | why |
/// |---|---|---|
/// | NotFound | NOT_FOUND | |
/// | AlreadyExists | ALREADY_EXISTS | CreateSnapshot answers an identical repeat before this |
/// | InvalidArgument | INVALID_ARGUMENT | the request is wrong whatever the volume's state |
/// | OutOfRange | OUT_OF_RANGE | a size the volume cannot take (ResizeVolume: smaller than it is, or beyond what its store can grow to); what CSI's ControllerExpandVolume reports for an unsupported capacity, and what a caller may retry with another size |
/// | NoSpace | RESOURCE_EXHAUSTED | the store, or the host filesystem under it, is full |
/// | ReadOnly | FAILED_PRECONDITION | the snapshot's state forbids it; SetWritable changes that |
/// | FailedPrecondition | FAILED_PRECONDITION | |
/// | Unavailable | UNAVAILABLE | the store refuses changes until it is reopened (ReopenVolume, or the agent itself after a full host filesystem) |
/// | Corrupt, Io | INTERNAL | nothing the caller can change fixes it |
pub fn from_store(e: StoreError) -> Status {
    let msg = e.to_string();
    match e.kind() {
        ErrorKind::NotFound => Status::not_found(msg),
        ErrorKind::AlreadyExists => Status::already_exists(msg),
        ErrorKind::InvalidArgument => Status::invalid_argument(msg),
        ErrorKind::OutOfRange => Status::out_of_range(msg),
        ErrorKind::NoSpace => Status::resource_exhausted(msg),
        ErrorKind::ReadOnly | ErrorKind::FailedPrecondition => Status::failed_precondition(msg),
        ErrorKind::Unavailable => Status::unavailable(msg),
        ErrorKind::Corrupt | ErrorKind::Io => Status::internal(msg),
    }
}

pub fn from_volume(e: VolumeError) -> Status {
    match e {
        VolumeError::NotFound(_)
        | VolumeError::NoPolicy(_)
        | VolumeError::NoMirror(_)
        | VolumeError::NoSuchMirror(_)
        | VolumeError::GroupNotFound(_) => Status::not_found(e.to_string()),
        VolumeError::AlreadyExists(_) | VolumeError::GroupExists(_) => {
            Status::already_exists(e.to_string())
        }
        VolumeError::InvalidArgument(m) => Status::invalid_argument(m),
        VolumeError::FailedPrecondition(m) => Status::failed_precondition(m),
        VolumeError::PermissionDenied(m) => Status::permission_denied(m),
        VolumeError::OutOfRange(m) => Status::out_of_range(m),
        VolumeError::Io { ref source, .. } => match source.raw_os_error() {
            // The host filesystem under the data directory is full: the same answer as a
            // full store.
            Some(libc::ENOSPC | libc::EDQUOT) => Status::resource_exhausted(e.to_string()),
            _ => Status::internal(e.to_string()),
        },
        VolumeError::Store(s) => from_store(s),
    }
}

pub fn from_delta(e: DeltaError) -> Status {
    let msg = e.to_string();
    match e {
        // The bytes arrived but are not what was sent.
        DeltaError::HeaderChecksum { .. }
        | DeltaError::RecordChecksum { .. }
        | DeltaError::TrailerChecksum { .. }
        | DeltaError::DigestMismatch { .. }
        | DeltaError::CountMismatch { .. } => Status::data_loss(msg),
        // A sound stream this volume cannot take.
        DeltaError::WrongVolume { .. } | DeltaError::BaseNotHeld { .. } => {
            Status::failed_precondition(msg)
        }
        DeltaError::Io(_) => Status::unavailable(msg),
        _ => Status::invalid_argument(msg),
    }
}

pub fn from_replication(e: ReplicationError) -> Status {
    let msg = e.to_string();
    match e {
        ReplicationError::Delta(d) => from_delta(d),
        ReplicationError::Store(s) => from_store(s),
        ReplicationError::Geometry { .. }
        | ReplicationError::NothingToResume
        | ReplicationError::ResumeMismatch(_)
        | ReplicationError::NotReady(_) => Status::failed_precondition(msg),
        ReplicationError::TargetIsOrigin
        | ReplicationError::SameSnapshot(_)
        | ReplicationError::BaseNotOlder { .. } => Status::invalid_argument(msg),
        // gRPC's code for reading past the end; CSI's SnapshotMetadata answers it too.
        ReplicationError::OffsetPastEnd { .. } => Status::out_of_range(msg),
        ReplicationError::MapStalled { .. } | ReplicationError::Stager(_) => Status::internal(msg),
        ReplicationError::ReceiverGone => Status::cancelled(msg),
    }
}

pub fn from_ublk(e: UblkDevError) -> Status {
    use multisnap_ublk::UblkError;
    let msg = e.to_string();
    match e {
        UblkDevError::Frontend(UblkError::ControlMissing | UblkError::DeviceBusy(_)) => {
            Status::failed_precondition(msg)
        }
        UblkDevError::Frontend(UblkError::InvalidOptions(_)) | UblkDevError::InvalidArgument(_) => {
            Status::invalid_argument(msg)
        }
        UblkDevError::Frontend(UblkError::Driver { .. } | UblkError::StartFailed(_)) => {
            Status::internal(msg)
        }
        UblkDevError::NoVolume(_) | UblkDevError::NoSnapshot { .. } | UblkDevError::NoDevice(_) => {
            Status::not_found(msg)
        }
        UblkDevError::SnapshotNotReady { .. } => Status::failed_precondition(msg),
    }
}

/// The named volume, or INVALID_ARGUMENT (no name) / NOT_FOUND.
pub fn find_volume(
    volumes: &crate::volumes::Volumes,
    name: &str,
) -> Result<std::sync::Arc<crate::volumes::Volume>, Status> {
    if name.is_empty() {
        return Err(Status::invalid_argument("volume is required"));
    }
    volumes
        .get(name)
        .ok_or_else(|| Status::not_found(format!("no volume named {name:?}")))
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

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn store_error_kinds_map_to_status_codes() {
        let host_full = StoreError::Io {
            device: "store",
            offset: 0,
            len: 4096,
            source: std::io::Error::from_raw_os_error(libc::ENOSPC),
        };
        for (err, want) in [
            (host_full, Code::ResourceExhausted),
            (
                StoreError::SnapshotReadOnly(multisnap_store::SnapshotId(1)),
                Code::FailedPrecondition,
            ),
            (StoreError::SnapshotExists("a".into()), Code::AlreadyExists),
            (
                StoreError::InvalidGeometry("odd".into()),
                Code::InvalidArgument,
            ),
            (StoreError::Poisoned("earlier".into()), Code::Unavailable),
            // ReopenVolume of a volume that takes writes.
            (StoreError::NotFailed, Code::FailedPrecondition),
            (StoreError::NotAStore, Code::Internal),
        ] {
            let what = err.to_string();
            assert_eq!(from_store(err).code(), want, "{what}");
        }
    }
}

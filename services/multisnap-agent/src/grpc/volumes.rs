//! `multisnap.v1.VolumeService`.

use super::status::{blocking, from_volume};
use crate::clones::CloneFrom;
use crate::volume_labels::Labels;
use crate::volume_resize::resize_volume;
use crate::volumes::{NewVolume, Volume, Volumes};
use multisnap_proto::v1 as pb;
use multisnap_store::{FullPolicy, OriginCache};
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct VolumeApi {
    pub volumes: Arc<Volumes>,
    pub ublk: Arc<crate::ublk_devices::UblkDevices>,
}

pub fn volume_message(v: &Volume) -> pb::Volume {
    let stats = v.store.stats();
    let mirrors = super::mirrors::mirror_messages(v);
    let policy = match v.store.full_policy() {
        FullPolicy::Error => pb::StoreFullPolicy::Error,
        FullPolicy::InvalidateOldest => pb::StoreFullPolicy::InvalidateOldest,
    };
    pb::Volume {
        name: v.name.clone(),
        size_bytes: stats.origin_size,
        chunk_size_bytes: stats.chunk_size,
        store_size_bytes: stats.store_bytes,
        store_used_bytes: stats.used_bytes,
        store_free_bytes: stats.free_chunks * stats.chunk_size as u64,
        snapshot_count: stats.snapshots,
        store_full_policy: policy as i32,
        origin_path: v.origin_path.display().to_string(),
        store_path: v.store_path.display().to_string(),
        uuid: v.store.volume_uuid().to_string(),
        exception_count: stats.exceptions,
        reclaim_pending: stats.reclaim_pending,
        store_data_bytes: stats.data_bytes,
        store_metadata_bytes: stats.metadata_bytes,
        store_journal_bytes: stats.journal_size_bytes,
        failure: v.store.failure().unwrap_or_default(),
        replica_of: v
            .store
            .replica_source()
            .map(|u| u.to_string())
            .unwrap_or_default(),
        merge: v.store.merge_progress().as_ref().map(merge_message),
        hydration: v.store.hydration().as_ref().map(hydration_message),
        labels: v.labels.map().clone().into_iter().collect(),
        policy: v
            .policy
            .get()
            .map(|a| super::policies::policy_message(&v.name, &a)),
        mirror: match mirrors.as_slice() {
            [one] => Some(one.clone()),
            _ => None,
        },
        mirrors,
        origin_cache: origin_cache_message(v.store.origin_cache()) as i32,
    }
}

pub fn hydration_message(p: &multisnap_store::HydrationProgress) -> pb::Hydration {
    pb::Hydration {
        source_volume: p.source_volume_name.clone(),
        source_snapshot: p.source_snapshot_name.clone(),
        hydrated_chunks: p.cursor,
        total_chunks: p.chunk_count,
        hydrated_bytes: p.hydrated_bytes,
        source_attached: p.attached,
    }
}

pub fn merge_message(p: &multisnap_store::MergeProgress) -> pb::MergeProgress {
    pb::MergeProgress {
        snapshot: p.target_name.clone(),
        merged_chunks: p.cursor,
        total_chunks: p.chunk_count,
    }
}

fn policy_from(p: i32) -> Result<FullPolicy, Status> {
    match pb::StoreFullPolicy::try_from(p) {
        Ok(pb::StoreFullPolicy::Unspecified) | Ok(pb::StoreFullPolicy::Error) => {
            Ok(FullPolicy::Error)
        }
        Ok(pb::StoreFullPolicy::InvalidateOldest) => Ok(FullPolicy::InvalidateOldest),
        Err(_) => Err(Status::invalid_argument(format!(
            "unknown store_full_policy {p}"
        ))),
    }
}

fn origin_cache_from(c: i32) -> Result<OriginCache, Status> {
    match pb::OriginCache::try_from(c) {
        Ok(pb::OriginCache::Buffered) => Ok(OriginCache::Buffered),
        Ok(pb::OriginCache::Direct) => Ok(OriginCache::Direct),
        Err(_) => Err(Status::invalid_argument(format!(
            "unknown origin_cache {c}"
        ))),
    }
}

pub fn origin_cache_message(c: OriginCache) -> pb::OriginCache {
    match c {
        OriginCache::Buffered => pb::OriginCache::Buffered,
        OriginCache::Direct => pb::OriginCache::Direct,
    }
}

#[tonic::async_trait]
impl pb::volume_service_server::VolumeService for VolumeApi {
    #[tracing::instrument(skip_all, fields(volume = %req.get_ref().name))]
    async fn create_volume(
        &self,
        req: Request<pb::CreateVolumeRequest>,
    ) -> Result<Response<pb::Volume>, Status> {
        let r = req.into_inner();
        let from = match &r.source {
            Some(s) if s.volume.is_empty() => {
                return Err(Status::invalid_argument(
                    "source.volume is required for a clone",
                ))
            }
            Some(s) => Some(CloneFrom {
                volume: s.volume.clone(),
                snapshot: (!s.snapshot.is_empty()).then(|| s.snapshot.clone()),
            }),
            None => None,
        };
        let chunk_size = if r.chunk_size_bytes == 0 {
            65536
        } else {
            r.chunk_size_bytes
        };
        let spec = NewVolume {
            name: r.name,
            size_bytes: r.size_bytes,
            chunk_size,
            store_size_bytes: (r.store_size_bytes != 0).then_some(r.store_size_bytes),
            origin_path: (!r.origin_path.is_empty()).then(|| r.origin_path.into()),
            full_policy: policy_from(r.store_full_policy)?,
            origin_cache: origin_cache_from(r.origin_cache)?,
            labels: Labels::new(r.labels).map_err(Status::invalid_argument)?,
        };
        let volumes = self.volumes.clone();
        blocking(move || {
            let v = match &from {
                Some(from) => volumes.create_clone(&spec, from),
                None => volumes.create(&spec),
            }
            .map_err(from_volume)?;
            Ok(Response::new(volume_message(&v)))
        })
        .await
    }

    async fn list_volumes(
        &self,
        _req: Request<pb::ListVolumesRequest>,
    ) -> Result<Response<pb::ListVolumesResponse>, Status> {
        let volumes = self.volumes.clone();
        blocking(move || {
            Ok(Response::new(pb::ListVolumesResponse {
                volumes: volumes.list().iter().map(|v| volume_message(v)).collect(),
            }))
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(volume = %req.get_ref().name))]
    async fn get_volume(
        &self,
        req: Request<pb::GetVolumeRequest>,
    ) -> Result<Response<pb::Volume>, Status> {
        let name = req.into_inner().name;
        let v = self
            .volumes
            .get(&name)
            .ok_or_else(|| Status::not_found(format!("no volume named {name:?}")))?;
        blocking(move || Ok(Response::new(volume_message(&v)))).await
    }

    #[tracing::instrument(skip_all, fields(volume = %req.get_ref().name))]
    async fn delete_volume(
        &self,
        req: Request<pb::DeleteVolumeRequest>,
    ) -> Result<Response<pb::DeleteVolumeResponse>, Status> {
        let r = req.into_inner();
        if let Some(dev) = self.ublk.serving(&r.name, None) {
            return Err(Status::failed_precondition(format!(
                "volume {} is served as {dev}; detach it first (multisnap ublk detach {dev})",
                r.name
            )));
        }
        let volumes = self.volumes.clone();
        blocking(move || {
            volumes.delete(&r.name, r.force).map_err(from_volume)?;
            Ok(Response::new(pb::DeleteVolumeResponse {}))
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(volume = %req.get_ref().name))]
    async fn reopen_volume(
        &self,
        req: Request<pb::ReopenVolumeRequest>,
    ) -> Result<Response<pb::Volume>, Status> {
        let name = req.into_inner().name;
        if name.is_empty() {
            return Err(Status::invalid_argument("name is required"));
        }
        let volumes = self.volumes.clone();
        blocking(move || {
            let v = volumes
                .reopen(&name, crate::volume_reopen::Trigger::Operator)
                .map_err(from_volume)?;
            Ok(Response::new(volume_message(&v)))
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(volume = %req.get_ref().name, size = req.get_ref().size_bytes))]
    async fn resize_volume(
        &self,
        req: Request<pb::ResizeVolumeRequest>,
    ) -> Result<Response<pb::Volume>, Status> {
        let r = req.into_inner();
        if r.name.is_empty() {
            return Err(Status::invalid_argument("name is required"));
        }
        // Only the origin's device would change size; snapshots keep theirs.
        let attached = self.ublk.serving_origin(&r.name);
        let volumes = self.volumes.clone();
        blocking(move || {
            let v =
                resize_volume(&volumes, &r.name, r.size_bytes, attached).map_err(from_volume)?;
            Ok(Response::new(volume_message(&v)))
        })
        .await
    }
}

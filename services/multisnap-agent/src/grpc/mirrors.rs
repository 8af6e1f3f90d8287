//! `multisnap.v1.MirrorService`: a volume's mirror to another agent (see `crate::mirror`).

use super::status::{blocking, find_volume, from_volume};
use crate::mirror::stream::StreamSettings;
use crate::mirror::target::{MirrorTarget, TlsFiles};
use crate::mirror::worker::MirrorWorker;
use crate::mirror::{behind, Active, MirrorSelector, Phase};
use crate::volumes::{Volume, VolumeError, Volumes};
use multisnap_proto::v1 as pb;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;
use tonic::{Request, Response, Status};

pub struct MirrorApi {
    pub volumes: Arc<Volumes>,
    pub worker: Arc<MirrorWorker>,
}

fn timestamp(secs: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: secs,
        nanos: 0,
    }
}

fn path_text(p: &Option<PathBuf>) -> String {
    p.as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

pub fn target_message(t: &MirrorTarget) -> pb::MirrorTarget {
    let (compression, compression_level, bandwidth_limit_bytes_per_sec) = t.stream.to_api();
    pb::MirrorTarget {
        endpoint: t.endpoint.to_string(),
        volume: t.volume.clone(),
        tls_ca_file: path_text(&t.tls.ca),
        tls_cert_file: path_text(&t.tls.cert),
        tls_key_file: path_text(&t.tls.key),
        compression: compression as i32,
        compression_level,
        bandwidth_limit_bytes_per_sec,
    }
}

/// Every mirror of `v` and its state, as ListMirrors and GetVolume show them.
pub fn mirror_messages(v: &Volume) -> Vec<pb::VolumeMirror> {
    v.mirror
        .list()
        .iter()
        .map(|a| mirror_message(v, a))
        .collect()
}

/// A mirror and its state, as GetMirror shows it.
pub fn mirror_message(v: &Volume, a: &Active) -> pb::VolumeMirror {
    let b = behind(v, a, SystemTime::now());
    let phase = a.phase(b.snapshots > 0);
    let state = match phase {
        Phase::Syncing => pb::MirrorState::Syncing,
        Phase::InSync => pb::MirrorState::InSync,
        Phase::Retrying => pb::MirrorState::Retrying,
        Phase::StoppedDiverged => pb::MirrorState::StoppedDiverged,
    };
    let replicated = a.saved.replicated.as_ref();
    pb::VolumeMirror {
        volume: v.name.clone(),
        target: Some(target_message(&a.saved.target)),
        status: Some(pb::MirrorStatus {
            state: state as i32,
            last_replicated_snapshot: replicated.map(|r| r.name.clone()).unwrap_or_default(),
            last_replicated_at: replicated.map(|r| timestamp(r.at)),
            lag_seconds: b.lag_seconds,
            bytes_pending: b.bytes_pending,
            last_error: a
                .saved
                .stopped
                .clone()
                .or_else(|| a.last_error.clone())
                .unwrap_or_default(),
            next_attempt_at: a
                .retry_at
                .filter(|_| phase == Phase::Retrying)
                .map(|t| timestamp(crate::mirror::unix_secs(t))),
            consecutive_failures: a.failures_in_row,
            syncing_snapshot: a
                .sending
                .as_ref()
                .map(|s| s.name.clone())
                .unwrap_or_default(),
        }),
    }
}

/// Which mirror a GetMirror or ClearMirror names; a malformed endpoint is INVALID_ARGUMENT.
fn selector(endpoint: &str, target_volume: &str) -> Result<MirrorSelector, Status> {
    MirrorSelector::from_api(endpoint, target_volume)
        .map_err(|m| from_volume(VolumeError::InvalidArgument(m)))
}

fn target_from(t: Option<pb::MirrorTarget>) -> Result<MirrorTarget, Status> {
    let t = t.ok_or_else(|| Status::invalid_argument("target is required"))?;
    let path = |s: String| (!s.is_empty()).then(|| PathBuf::from(s));
    let invalid = |m: String| from_volume(VolumeError::InvalidArgument(m));
    let stream = StreamSettings::from_api(
        t.compression,
        t.compression_level,
        t.bandwidth_limit_bytes_per_sec,
    )
    .map_err(invalid)?;
    let mut target = MirrorTarget::check(
        &t.endpoint,
        &t.volume,
        TlsFiles {
            ca: path(t.tls_ca_file),
            cert: path(t.tls_cert_file),
            key: path(t.tls_key_file),
        },
    )
    .map_err(invalid)?;
    target.stream = stream;
    // Read now, so a wrong path is refused here rather than failing every round.
    target.tls_config().map_err(invalid)?;
    Ok(target)
}

#[tonic::async_trait]
impl pb::mirror_service_server::MirrorService for MirrorApi {
    #[tracing::instrument(skip_all, fields(volume = %req.get_ref().volume))]
    async fn set_mirror(
        &self,
        req: Request<pb::SetMirrorRequest>,
    ) -> Result<Response<pb::VolumeMirror>, Status> {
        let r = req.into_inner();
        let v = find_volume(&self.volumes, &r.volume)?;
        let target = target_from(r.target)?;
        let msg = blocking(move || {
            let uuid = v.store.volume_uuid().to_string();
            let a = v.mirror.set(&v.name, target, &uuid).map_err(from_volume)?;
            tracing::info!(volume = %v.name, target = %a.saved.target.endpoint, target_volume = %a.saved.target.volume, "mirror set");
            Ok(mirror_message(&v, &a))
        })
        .await?;
        self.worker.wake();
        Ok(Response::new(msg))
    }

    async fn get_mirror(
        &self,
        req: Request<pb::GetMirrorRequest>,
    ) -> Result<Response<pb::VolumeMirror>, Status> {
        let r = req.into_inner();
        let v = find_volume(&self.volumes, &r.volume)?;
        let sel = selector(&r.endpoint, &r.target_volume)?;
        blocking(move || {
            let a = v.mirror.select(&v.name, &sel).map_err(from_volume)?;
            Ok(Response::new(mirror_message(&v, &a)))
        })
        .await
    }

    async fn list_mirrors(
        &self,
        req: Request<pb::ListMirrorsRequest>,
    ) -> Result<Response<pb::ListMirrorsResponse>, Status> {
        let r = req.into_inner();
        let v = find_volume(&self.volumes, &r.volume)?;
        blocking(move || {
            Ok(Response::new(pb::ListMirrorsResponse {
                mirrors: mirror_messages(&v),
            }))
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(volume = %req.get_ref().volume))]
    async fn clear_mirror(
        &self,
        req: Request<pb::ClearMirrorRequest>,
    ) -> Result<Response<pb::ClearMirrorResponse>, Status> {
        let r = req.into_inner();
        let v = find_volume(&self.volumes, &r.volume)?;
        let sel = selector(&r.endpoint, &r.target_volume)?;
        blocking(move || {
            let cleared = v.mirror.clear(&v.name, &sel).map_err(from_volume)?;
            if let Some(k) = &cleared {
                tracing::info!(volume = %v.name, target = %k.endpoint, target_volume = %k.volume, "mirror cleared");
            }
            let (endpoint, target_volume) = cleared
                .as_ref()
                .map(|k| (k.endpoint.clone(), k.volume.clone()))
                .unwrap_or_default();
            Ok(Response::new(pb::ClearMirrorResponse {
                cleared: cleared.is_some(),
                endpoint,
                target_volume,
            }))
        })
        .await
    }
}

//! `multisnap.v1.UblkService`: volumes and snapshots as local /dev/ublkbN devices.

use super::status::{blocking, from_ublk};
use crate::ublk_devices::{DeviceInfo, UblkDevices};
use multisnap_proto::v1 as pb;
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct UblkApi {
    pub devices: Arc<UblkDevices>,
}

fn device_message(d: &DeviceInfo) -> pb::UblkDevice {
    pb::UblkDevice {
        id: d.id,
        device: d.path(),
        volume: d.volume.clone(),
        snapshot: d.snapshot.clone().unwrap_or_default(),
        read_only: d.read_only,
        size_bytes: d.size,
        queues: u32::from(d.queues),
        depth: u32::from(d.depth),
    }
}

/// 0 means the default; anything else must fit the frontend's range (checked there).
fn count(name: &str, v: u32, default: u16) -> Result<u16, Status> {
    match v {
        0 => Ok(default),
        v => u16::try_from(v)
            .map_err(|_| Status::invalid_argument(format!("{name} {v} is out of range"))),
    }
}

#[tonic::async_trait]
impl pb::ublk_service_server::UblkService for UblkApi {
    #[tracing::instrument(skip_all, fields(volume = %req.get_ref().volume, snapshot = %req.get_ref().snapshot))]
    async fn attach_ublk(
        &self,
        req: Request<pb::AttachUblkRequest>,
    ) -> Result<Response<pb::UblkDevice>, Status> {
        let r = req.into_inner();
        if r.volume.is_empty() {
            return Err(Status::invalid_argument("volume is required"));
        }
        let defaults = multisnap_ublk::UblkOptions::default();
        let queues = count("queues", r.queues, defaults.queues)?;
        let depth = count("depth", r.depth, defaults.depth)?;
        let devices = self.devices.clone();
        let info = blocking(move || {
            let snapshot = (!r.snapshot.is_empty()).then_some(r.snapshot.as_str());
            devices
                .attach(&r.volume, snapshot, queues, depth)
                .map_err(from_ublk)
        })
        .await?;
        Ok(Response::new(device_message(&info)))
    }

    #[tracing::instrument(skip_all, fields(id = req.get_ref().id, device = %req.get_ref().device))]
    async fn detach_ublk(
        &self,
        req: Request<pb::DetachUblkRequest>,
    ) -> Result<Response<pb::DetachUblkResponse>, Status> {
        let r = req.into_inner();
        let devices = self.devices.clone();
        blocking(move || {
            let id = devices.resolve(r.id, &r.device).map_err(from_ublk)?;
            devices.detach(id, r.force).map_err(from_ublk)
        })
        .await?;
        Ok(Response::new(pb::DetachUblkResponse {}))
    }

    async fn list_ublk(
        &self,
        _req: Request<pb::ListUblkRequest>,
    ) -> Result<Response<pb::ListUblkResponse>, Status> {
        let devices = self.devices.list().iter().map(device_message).collect();
        Ok(Response::new(pb::ListUblkResponse { devices }))
    }
}

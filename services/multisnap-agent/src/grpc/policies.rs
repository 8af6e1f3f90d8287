//! `multisnap.v1.PolicyService`: a volume's snapshot policy (see `crate::policy`).

use super::status::{blocking, find_volume, from_volume};
use crate::policy::calendar::UnixSecs;
use crate::policy::retention::Retention;
use crate::policy::scheduler::Scheduler;
use crate::policy::timing::Timing;
use crate::policy::{Active, PolicyRequest, PolicySpec};
use crate::volumes::{VolumeError, Volumes};
use multisnap_proto::v1 as pb;
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct PolicyApi {
    pub volumes: Arc<Volumes>,
    pub scheduler: Arc<Scheduler>,
}

fn timestamp(t: UnixSecs) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t,
        nanos: 0,
    }
}

pub fn spec_message(spec: &PolicySpec) -> pb::SnapshotPolicy {
    let r = &spec.retention;
    let (interval_seconds, schedule) = match &spec.timing {
        Timing::Every(i) => (*i as u64, String::new()),
        Timing::Schedule(c) => (0, c.as_str().to_string()),
    };
    pb::SnapshotPolicy {
        interval_seconds,
        schedule,
        name_template: spec.template.as_str().to_string(),
        keep_hourly: r.hourly,
        keep_daily: r.daily,
        keep_weekly: r.weekly,
        keep_monthly: r.monthly,
        max_age_seconds: r.max_age,
    }
}

/// The policy and its status, as GetPolicy and GetVolume show it.
pub fn policy_message(volume: &str, a: &Active) -> pb::VolumePolicy {
    let newest = a.newest();
    pb::VolumePolicy {
        volume: volume.to_string(),
        policy: Some(spec_message(&a.saved.spec)),
        status: Some(pb::PolicyStatus {
            evaluated_at: a.evaluated_at.map(timestamp),
            next_snapshot_at: a.next_due().map(timestamp),
            newest_snapshot: newest.map(|r| r.name.clone()).unwrap_or_default(),
            newest_snapshot_at: newest.map(|r| timestamp(r.at)),
            policy_snapshots: a.saved.taken.len() as u64,
            last_error: a.last_error.clone().unwrap_or_default(),
            held: a.held.clone(),
        }),
    }
}

fn request_from(p: Option<pb::SnapshotPolicy>) -> Result<PolicyRequest, Status> {
    let p = p.ok_or_else(|| Status::invalid_argument("policy is required"))?;
    Ok(PolicyRequest {
        interval_seconds: p.interval_seconds,
        schedule: p.schedule,
        name_template: p.name_template,
        retention: Retention {
            hourly: p.keep_hourly,
            daily: p.keep_daily,
            weekly: p.keep_weekly,
            monthly: p.keep_monthly,
            max_age: p.max_age_seconds,
        },
    })
}

#[tonic::async_trait]
impl pb::policy_service_server::PolicyService for PolicyApi {
    #[tracing::instrument(skip_all, fields(volume = %req.get_ref().volume))]
    async fn set_policy(
        &self,
        req: Request<pb::SetPolicyRequest>,
    ) -> Result<Response<pb::VolumePolicy>, Status> {
        let r = req.into_inner();
        let v = find_volume(&self.volumes, &r.volume)?;
        let spec = PolicySpec::check(&request_from(r.policy)?).map_err(from_volume)?;
        let now = self
            .scheduler
            .now()
            .map_err(|e| from_volume(VolumeError::FailedPrecondition(e)))?;
        let active = blocking(move || {
            let uuid = v.store.volume_uuid().to_string();
            let a = v.policy.set(spec, &uuid, now).map_err(from_volume)?;
            tracing::info!(volume = %v.name, timing = %a.saved.spec.timing.describe(), "snapshot policy set");
            Ok(policy_message(&v.name, &a))
        })
        .await?;
        self.scheduler.wake();
        Ok(Response::new(active))
    }

    async fn get_policy(
        &self,
        req: Request<pb::GetPolicyRequest>,
    ) -> Result<Response<pb::VolumePolicy>, Status> {
        let r = req.into_inner();
        let v = find_volume(&self.volumes, &r.volume)?;
        let a = v
            .policy
            .get()
            .ok_or_else(|| from_volume(VolumeError::NoPolicy(v.name.clone())))?;
        Ok(Response::new(policy_message(&v.name, &a)))
    }

    #[tracing::instrument(skip_all, fields(volume = %req.get_ref().volume))]
    async fn clear_policy(
        &self,
        req: Request<pb::ClearPolicyRequest>,
    ) -> Result<Response<pb::ClearPolicyResponse>, Status> {
        let r = req.into_inner();
        let v = find_volume(&self.volumes, &r.volume)?;
        blocking(move || {
            let cleared = v.policy.clear().map_err(from_volume)?;
            if cleared {
                tracing::info!(volume = %v.name, "snapshot policy cleared");
            }
            Ok(Response::new(pb::ClearPolicyResponse { cleared }))
        })
        .await
    }
}

//! CreateVolume, DeleteVolume, ValidateVolumeCapabilities, ListVolumes and
//! ControllerExpandVolume.

use super::sizes::Range;
use super::source::{self, Source};
use crate::capability::{self, Access};
use crate::catalog::{self, Entry};
use crate::csi::*;
use crate::ids::{VolumeId, REPLICA_PREFIX};
use crate::pagination::page;
use crate::params::VolumeParams;
use crate::status::{check_name, from_agent, invalid};
use crate::{retire, topology, Driver};
use multisnap_proto::v1 as pb;
use tonic::{Response, Status};

/// The agent's defaults, which a StorageClass that names no value gets.
const DEFAULT_CHUNK: u32 = 65536;

/// A checked CreateVolume request.
struct NewVolume {
    name: String,
    range: Range,
    params: VolumeParams,
    source: Option<Source>,
}

fn check_create(d: &Driver, r: &CreateVolumeRequest) -> Result<NewVolume, Status> {
    check_name(&r.name)?;
    let accesses = capability::check_all(&r.volume_capabilities).map_err(invalid)?;
    let mut params = VolumeParams::parse(&r.parameters).map_err(invalid)?;
    // A filesystem named by the capability (Kubernetes' StorageClass csi.storage.k8s.io/fstype)
    // and by the fsType parameter must agree.
    for a in &accesses {
        if let Access::Mount {
            fs_type: Some(fs), ..
        } = a
        {
            match params.fs_type {
                Some(p) if p != *fs => {
                    return Err(invalid(format!(
                        "the volume capability asks for {} but parameter fsType is {}",
                        fs.as_str(),
                        p.as_str()
                    )))
                }
                _ => params.fs_type = Some(*fs),
            }
        }
    }
    if let Some(req) = &r.accessibility_requirements {
        if !req.requisite.is_empty() && !req.requisite.iter().any(|t| topology::admits(t, &d.node))
        {
            return Err(Status::resource_exhausted(format!(
                "the requisite topology does not include node {}, the only node this driver provisions on",
                d.node
            )));
        }
    }
    Ok(NewVolume {
        name: r.name.clone(),
        range: Range::parse(r.capacity_range.as_ref())?,
        params,
        source: source::parse(d, r.volume_content_source.as_ref())?,
    })
}

fn volume_message(
    d: &Driver,
    e_name: &str,
    size: u64,
    new: &NewVolume,
    content: Option<VolumeContentSource>,
) -> Volume {
    Volume {
        capacity_bytes: size as i64,
        volume_id: format!("{}/{}", d.node, e_name),
        volume_context: new.params.volume_context(),
        content_source: content,
        accessible_topology: vec![topology::of_node(&d.node)],
    }
}

/// Why an existing volume of the same name does not match this request; None when it does.
fn mismatch(e: &Entry, new: &NewVolume) -> Option<String> {
    let v = &e.volume;
    if !new.range.admits(v.size_bytes) {
        return Some(format!(
            "it has {} bytes, outside the requested range ({} to {})",
            v.size_bytes,
            new.range.required,
            if new.range.limit == 0 {
                "unlimited".to_string()
            } else {
                new.range.limit.to_string()
            }
        ));
    }
    let chunk = new.params.chunk_size.unwrap_or(DEFAULT_CHUNK);
    if v.chunk_size_bytes != chunk {
        return Some(format!(
            "its chunk size is {}, not {chunk}",
            v.chunk_size_bytes
        ));
    }
    let policy = new
        .params
        .store_full_policy
        .unwrap_or(pb::StoreFullPolicy::Error) as i32;
    if v.store_full_policy != policy {
        return Some("its store-full policy differs".to_string());
    }
    let labels = new.labels();
    for (key, what) in [
        (catalog::FS_TYPE_LABEL, "filesystem type"),
        (catalog::CONTENT_SOURCE_LABEL, "content source"),
    ] {
        let (had, asked) = (v.labels.get(key), labels.get(key));
        if had != asked {
            let none = String::from("none");
            return Some(format!(
                "its {what} is {}, not {}",
                had.unwrap_or(&none),
                asked.unwrap_or(&none)
            ));
        }
    }
    None
}

impl NewVolume {
    /// The agent labels that record what the volume is made with (see [`catalog`]).
    fn labels(&self) -> std::collections::HashMap<String, String> {
        let mut labels = std::collections::HashMap::new();
        if let Some(fs) = self.params.fs_type {
            labels.insert(catalog::FS_TYPE_LABEL.to_string(), fs.as_str().to_string());
        }
        if let Some(s) = &self.source {
            labels.insert(catalog::CONTENT_SOURCE_LABEL.to_string(), s.label());
        }
        labels
    }
}

pub async fn create(
    d: &Driver,
    r: CreateVolumeRequest,
) -> Result<Response<CreateVolumeResponse>, Status> {
    let new = check_create(d, &r)?;
    let mut keys = vec![format!("volume name {:?}", new.name)];
    if let Some(s) = &new.source {
        keys.push(s.volume_key());
    }
    let _claim = d.inflight.claim(&keys)?;
    let (live, free_name) = catalog::by_csi_name(&d.agent, &new.name).await?;
    if let Some(e) = live {
        if let Some(why) = mismatch(&e, &new) {
            return Err(Status::already_exists(format!(
                "volume {:?} exists with other parameters: {why}",
                new.name
            )));
        }
        let msg = volume_message(
            d,
            e.name.as_str(),
            e.volume.size_bytes,
            &new,
            r.volume_content_source,
        );
        return Ok(Response::new(CreateVolumeResponse { volume: Some(msg) }));
    }
    let (agent_source, at_least) = match &new.source {
        Some(s) => {
            let (src, size) = s.resolve(d).await?;
            (Some(src), size)
        }
        None => (None, 0),
    };
    let size = new.range.choose(at_least)?;
    let created = d
        .agent
        .volumes()
        .create_volume(pb::CreateVolumeRequest {
            name: free_name.to_string(),
            size_bytes: size,
            chunk_size_bytes: new.params.chunk_size.unwrap_or(0),
            store_full_policy: new
                .params
                .store_full_policy
                .unwrap_or(pb::StoreFullPolicy::Unspecified) as i32,
            source: agent_source.clone(),
            labels: new.labels(),
            ..Default::default()
        })
        .await
        .map_err(|s| from_agent(&format!("creating volume {:?}", new.name), s))?
        .into_inner();
    tracing::info!(csi_name = %new.name, volume = %free_name, size, "volume created");
    if let Some(src) = agent_source
        .as_ref()
        .filter(|s| s.volume.starts_with(REPLICA_PREFIX))
    {
        crate::cross_node::prune(d, &src.volume).await;
    }
    let msg = volume_message(
        d,
        &created.name,
        created.size_bytes,
        &new,
        r.volume_content_source,
    );
    Ok(Response::new(CreateVolumeResponse { volume: Some(msg) }))
}

/// A volume id of this node's, or why it is unknown here (NOT_FOUND).
pub fn local_id(d: &Driver, id: &str) -> Result<VolumeId, Status> {
    let v = VolumeId::parse(id).ok_or_else(|| {
        Status::not_found(format!(
            "volume {id:?} does not exist (not an id of this driver)"
        ))
    })?;
    if v.node != d.node {
        return Err(Status::not_found(format!(
            "volume {id:?} lives on node {}, not on {}",
            v.node, d.node
        )));
    }
    Ok(v)
}

/// The live volume of an id of this node; NOT_FOUND for one that is unknown or deleted.
pub async fn live_entry(d: &Driver, id: &str) -> Result<(VolumeId, Entry), Status> {
    let v = local_id(d, id)?;
    match catalog::entry(&d.agent, &v.volume).await? {
        Some(e) if !e.retired() => Ok((v, e)),
        _ => Err(Status::not_found(format!("volume {id:?} does not exist"))),
    }
}

pub async fn delete(
    d: &Driver,
    r: DeleteVolumeRequest,
) -> Result<Response<DeleteVolumeResponse>, Status> {
    if r.volume_id.is_empty() {
        return Err(invalid("volume_id is required"));
    }
    // An id that is not of this driver's form names no volume: deleting it succeeds.
    let Some(v) = VolumeId::parse(&r.volume_id) else {
        return Ok(Response::new(DeleteVolumeResponse {}));
    };
    if v.node != d.node {
        return Err(Status::failed_precondition(format!(
            "volume {} lives on node {}; the driver on that node deletes it",
            r.volume_id, v.node
        )));
    }
    let _claim = d.inflight.claim(&[format!("volume {v}")])?;
    if let Some(e) = catalog::entry(&d.agent, &v.volume).await? {
        retire::delete_or_retire(&d.agent, &e).await?;
    }
    Ok(Response::new(DeleteVolumeResponse {}))
}

pub async fn validate(
    d: &Driver,
    r: ValidateVolumeCapabilitiesRequest,
) -> Result<Response<ValidateVolumeCapabilitiesResponse>, Status> {
    if r.volume_id.is_empty() {
        return Err(invalid("volume_id is required"));
    }
    if r.volume_capabilities.is_empty() {
        return Err(invalid("volume_capabilities is required"));
    }
    live_entry(d, &r.volume_id).await?;
    if let Err(e) = VolumeParams::parse(&r.parameters) {
        return Ok(Response::new(ValidateVolumeCapabilitiesResponse {
            confirmed: None,
            message: e,
        }));
    }
    let reply = match capability::check_all(&r.volume_capabilities) {
        Ok(_) => ValidateVolumeCapabilitiesResponse {
            confirmed: Some(validate_volume_capabilities_response::Confirmed {
                volume_context: r.volume_context,
                volume_capabilities: r.volume_capabilities,
                parameters: r.parameters,
                mutable_parameters: Default::default(),
            }),
            message: String::new(),
        },
        Err(e) => ValidateVolumeCapabilitiesResponse {
            confirmed: None,
            message: e,
        },
    };
    Ok(Response::new(reply))
}

pub async fn list(
    d: &Driver,
    r: ListVolumesRequest,
) -> Result<Response<ListVolumesResponse>, Status> {
    let live: Vec<Entry> = catalog::entries(&d.agent)
        .await?
        .into_iter()
        .filter(|e| !e.retired())
        .collect();
    let (entries, next_token) = page(live, r.max_entries, &r.starting_token)?;
    let entries = entries
        .into_iter()
        .map(|e| list_volumes_response::Entry {
            volume: Some(Volume {
                capacity_bytes: e.volume.size_bytes as i64,
                volume_id: format!("{}/{}", d.node, e.name),
                accessible_topology: vec![topology::of_node(&d.node)],
                ..Default::default()
            }),
            status: None,
        })
        .collect();
    Ok(Response::new(ListVolumesResponse {
        entries,
        next_token,
    }))
}

pub async fn expand(
    d: &Driver,
    r: ControllerExpandVolumeRequest,
) -> Result<Response<ControllerExpandVolumeResponse>, Status> {
    if r.volume_id.is_empty() {
        return Err(invalid("volume_id is required"));
    }
    let Some(range) = r.capacity_range.as_ref() else {
        return Err(invalid("capacity_range is required"));
    };
    let range = Range::parse(Some(range))?;
    let block = matches!(
        r.volume_capability.as_ref().map(capability::check),
        Some(Ok(Access::Block))
    );
    let _claim = d.inflight.claim(&[format!("volume {}", r.volume_id)])?;
    let (v, e) = live_entry(d, &r.volume_id).await?;
    let mut size = e.volume.size_bytes;
    if size < range.required {
        let wanted = range.choose(0)?;
        size = d
            .agent
            .volumes()
            .resize_volume(pb::ResizeVolumeRequest {
                name: v.volume.to_string(),
                size_bytes: wanted,
            })
            .await
            .map_err(|s| from_agent(&format!("expanding volume {v}"), s))?
            .into_inner()
            .size_bytes;
    } else if range.limit != 0 && size > range.limit {
        return Err(Status::out_of_range(format!(
            "volume {v} already has {size} bytes, more than limit_bytes {} (volumes only grow)",
            range.limit
        )));
    }
    Ok(Response::new(ControllerExpandVolumeResponse {
        capacity_bytes: size as i64,
        // A filesystem grows on the node (NodeExpandVolume); a raw block volume is done.
        node_expansion_required: !block,
    }))
}

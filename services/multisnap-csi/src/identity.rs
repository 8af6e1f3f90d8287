//! CSI Identity: the driver's name and version, what it offers, and whether it is ready (the
//! agent answers and serves).

use crate::csi::identity_server::Identity;
use crate::csi::plugin_capability::{service, volume_expansion, Service, Type, VolumeExpansion};
use crate::csi::*;
use crate::Driver;
use tonic::{Request, Response, Status};

pub struct IdentityService(pub Driver);

/// The rule CSI gives a plugin name (a DNS-style name of at most 63 characters).
pub fn check_driver_name(name: &str) -> Result<(), String> {
    let inner_ok = |c: char| c.is_ascii_alphanumeric() || "-._".contains(c);
    let ok = (2..=63).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name.ends_with(|c: char| c.is_ascii_alphabetic())
        && name.chars().all(inner_ok);
    if ok {
        Ok(())
    } else {
        Err(format!(
            "driver name {name:?} must be 2 to 63 characters of letters, digits, '-', '.' and '_', starting and ending with a letter"
        ))
    }
}

fn service_capability(t: service::Type) -> PluginCapability {
    PluginCapability {
        r#type: Some(Type::Service(Service { r#type: t as i32 })),
    }
}

#[tonic::async_trait]
impl Identity for IdentityService {
    async fn get_plugin_info(
        &self,
        _req: Request<GetPluginInfoRequest>,
    ) -> Result<Response<GetPluginInfoResponse>, Status> {
        Ok(Response::new(GetPluginInfoResponse {
            name: self.0.name.clone(),
            vendor_version: env!("CARGO_PKG_VERSION").to_string(),
            manifest: [(
                "commit".to_string(),
                multisnap_build_info::COMMIT.to_string(),
            )]
            .into(),
        }))
    }

    async fn get_plugin_capabilities(
        &self,
        _req: Request<GetPluginCapabilitiesRequest>,
    ) -> Result<Response<GetPluginCapabilitiesResponse>, Status> {
        // Changed block tracking, from the agent's exception index (snapshot_metadata.rs).
        let snapshot_metadata = service_capability(service::Type::SnapshotMetadataService);
        // Expansion is offline: the agent refuses to resize an origin a ublk device serves.
        let offline = PluginCapability {
            r#type: Some(Type::VolumeExpansion(VolumeExpansion {
                r#type: volume_expansion::Type::Offline as i32,
            })),
        };
        Ok(Response::new(GetPluginCapabilitiesResponse {
            capabilities: vec![
                service_capability(service::Type::ControllerService),
                service_capability(service::Type::VolumeAccessibilityConstraints),
                service_capability(service::Type::GroupControllerService),
                offline,
                snapshot_metadata,
            ],
        }))
    }

    async fn probe(&self, _req: Request<ProbeRequest>) -> Result<Response<ProbeResponse>, Status> {
        // Not ready (rather than an error) while the agent is away: the sidecars' ProbeForever
        // waits for ready, and the liveness probe should not restart the driver for it.
        let ready = match self.0.agent.healthy().await {
            Ok(serving) => serving,
            Err(e) => {
                tracing::warn!(error = %e, "probe: the agent does not answer");
                false
            }
        };
        Ok(Response::new(ProbeResponse { ready: Some(ready) }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn driver_names() {
        assert!(check_driver_name("csi.multisnap.dev").is_ok());
        assert!(check_driver_name("csi.multisnap.dev1").is_err());
        assert!(check_driver_name("1abc").is_err());
        assert!(check_driver_name(&"a".repeat(64)).is_err());
    }
}

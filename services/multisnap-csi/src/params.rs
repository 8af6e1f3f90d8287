//! StorageClass parameters (CreateVolumeRequest.parameters):
//!
//! | key | values | meaning |
//! |---|---|---|
//! | `chunkSize` | bytes, a power of two from 4096 to 1048576; `K`/`Ki`/`M`/`Mi` suffixes | the volume's copy unit |
//! | `storeFullPolicy` | `error` (default), `invalidate-oldest` | what a write does when the snapshot store is full |
//! | `fsType` | `ext4` (default), `xfs` | the filesystem NodeStageVolume makes for a mount volume |
//!
//! Keys under `csi.storage.k8s.io/` (what the external-provisioner adds) are ignored; any other
//! key is refused, so a typo in a StorageClass is reported rather than silently ignored.

use crate::capability::FsType;
use multisnap_proto::v1::StoreFullPolicy;
use std::collections::HashMap;

pub const CHUNK_SIZE: &str = "chunkSize";
pub const STORE_FULL_POLICY: &str = "storeFullPolicy";
pub const FS_TYPE: &str = "fsType";
const KUBERNETES_PREFIX: &str = "csi.storage.k8s.io/";

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VolumeParams {
    pub chunk_size: Option<u32>,
    pub store_full_policy: Option<StoreFullPolicy>,
    pub fs_type: Option<FsType>,
}

impl VolumeParams {
    pub fn parse(params: &HashMap<String, String>) -> Result<VolumeParams, String> {
        let mut p = VolumeParams::default();
        for (key, value) in params {
            match key.as_str() {
                CHUNK_SIZE => p.chunk_size = Some(parse_chunk_size(value)?),
                STORE_FULL_POLICY => p.store_full_policy = Some(parse_policy(value)?),
                FS_TYPE => p.fs_type = Some(FsType::parse(value)?),
                k if k.starts_with(KUBERNETES_PREFIX) => {}
                other => {
                    return Err(format!(
                        "unknown parameter {other:?}; multisnap takes {CHUNK_SIZE}, {STORE_FULL_POLICY} and {FS_TYPE}"
                    ))
                }
            }
        }
        Ok(p)
    }

    /// What NodeStageVolume needs to know later, carried by Kubernetes in the PV.
    pub fn volume_context(&self) -> HashMap<String, String> {
        self.fs_type
            .map(|f| (FS_TYPE.to_string(), f.as_str().to_string()))
            .into_iter()
            .collect()
    }
}

fn parse_chunk_size(s: &str) -> Result<u32, String> {
    let (digits, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, ""),
    };
    let scale: u64 = match unit {
        "" => 1,
        "K" | "Ki" => 1024,
        "M" | "Mi" => 1024 * 1024,
        _ => {
            return Err(format!(
                "{CHUNK_SIZE} {s:?}: unknown unit (use bytes, K or M)"
            ))
        }
    };
    let n = digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .ok_or_else(|| format!("{CHUNK_SIZE} {s:?} is not a size"))?;
    if !(4096..=1 << 20).contains(&n) || !n.is_power_of_two() {
        return Err(format!(
            "{CHUNK_SIZE} {s:?} must be a power of two from 4096 to 1048576 bytes"
        ));
    }
    Ok(n as u32)
}

fn parse_policy(s: &str) -> Result<StoreFullPolicy, String> {
    match s {
        "error" => Ok(StoreFullPolicy::Error),
        "invalidate-oldest" => Ok(StoreFullPolicy::InvalidateOldest),
        _ => Err(format!(
            "{STORE_FULL_POLICY} {s:?}: use error or invalidate-oldest"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&str, &str)]) -> Result<VolumeParams, String> {
        VolumeParams::parse(
            &pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn storage_class_parameters() {
        let p = parse(&[
            ("chunkSize", "16Ki"),
            ("storeFullPolicy", "invalidate-oldest"),
            ("fsType", "xfs"),
            ("csi.storage.k8s.io/pvc/name", "data"),
        ])
        .unwrap();
        assert_eq!(p.chunk_size, Some(16384));
        assert_eq!(p.store_full_policy, Some(StoreFullPolicy::InvalidateOldest));
        assert_eq!(p.fs_type, Some(FsType::Xfs));
        assert_eq!(p.volume_context()["fsType"], "xfs");
        assert_eq!(
            parse(&[("chunkSize", "65536")]).unwrap().chunk_size,
            Some(65536)
        );
        assert_eq!(
            parse(&[("chunkSize", "1M")]).unwrap().chunk_size,
            Some(1 << 20)
        );
    }

    #[test]
    fn bad_parameters_are_named() {
        for (k, v, says) in [
            ("chunkSize", "3000", "power of two"),
            ("chunkSize", "2M", "power of two"),
            ("chunkSize", "64KB", "unit"),
            ("chunkSize", "", "not a size"),
            ("chunkSize", "99999999999999999999", "not a size"),
            ("storeFullPolicy", "drop", "invalidate-oldest"),
            ("fsType", "btrfs", "btrfs"),
            ("chunksize", "4096", "unknown parameter"),
        ] {
            let e = parse(&[(k, v)]).unwrap_err();
            assert!(e.contains(says), "{k}={v}: {e}");
        }
    }
}

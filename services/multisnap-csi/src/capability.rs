//! Which CSI volume capabilities multisnap serves: a volume lives on one node, so the
//! single-node access modes, as a raw block device or as an ext4 or xfs filesystem.

use crate::csi::volume_capability::access_mode::Mode;
use crate::csi::volume_capability::AccessType;
use crate::csi::VolumeCapability;

/// The filesystems NodeStageVolume makes and mounts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsType {
    Ext4,
    Xfs,
}

impl FsType {
    /// The filesystem a mount capability asks for when it names none.
    pub const DEFAULT: FsType = FsType::Ext4;

    pub fn parse(s: &str) -> Result<FsType, String> {
        match s {
            "ext4" => Ok(FsType::Ext4),
            "xfs" => Ok(FsType::Xfs),
            other => Err(format!(
                "filesystem type {other:?} is not supported; use ext4 or xfs"
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            FsType::Ext4 => "ext4",
            FsType::Xfs => "xfs",
        }
    }
}

/// What a capability asks for, once checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Access {
    Block,
    /// `None` when the capability names no filesystem type (the volume's own or ext4 is used).
    Mount {
        fs_type: Option<FsType>,
        flags: Vec<String>,
    },
}

/// Why a capability cannot be served, in words a person can act on; Ok with what it asks.
pub fn check(cap: &VolumeCapability) -> Result<Access, String> {
    let mode = cap
        .access_mode
        .as_ref()
        .map(|m| Mode::try_from(m.mode).unwrap_or(Mode::Unknown))
        .ok_or("volume capability has no access_mode")?;
    match mode {
        Mode::SingleNodeWriter | Mode::SingleNodeReaderOnly => {}
        Mode::Unknown => return Err("volume capability has an unknown access mode".into()),
        other => {
            return Err(format!(
                "access mode {} is not supported: a multisnap volume lives on one node (use SINGLE_NODE_WRITER or SINGLE_NODE_READER_ONLY)",
                other.as_str_name()
            ))
        }
    }
    match &cap.access_type {
        Some(AccessType::Block(_)) => Ok(Access::Block),
        Some(AccessType::Mount(m)) => {
            if !m.volume_mount_group.is_empty() {
                return Err("volume_mount_group is not supported".into());
            }
            let fs_type = if m.fs_type.is_empty() {
                None
            } else {
                Some(FsType::parse(&m.fs_type)?)
            };
            Ok(Access::Mount {
                fs_type,
                flags: m.mount_flags.clone(),
            })
        }
        None => Err("volume capability has no access_type (block or mount)".into()),
    }
}

/// Checks every capability; the first refusal, naming its position.
pub fn check_all(caps: &[VolumeCapability]) -> Result<Vec<Access>, String> {
    if caps.is_empty() {
        return Err("volume_capabilities is empty".into());
    }
    caps.iter()
        .enumerate()
        .map(|(i, c)| check(c).map_err(|e| format!("volume_capabilities[{i}]: {e}")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::csi::volume_capability::{AccessMode, BlockVolume, MountVolume};

    fn cap(mode: Mode, access: Option<AccessType>) -> VolumeCapability {
        VolumeCapability {
            access_mode: Some(AccessMode { mode: mode as i32 }),
            access_type: access,
        }
    }

    fn mount(fs: &str) -> Option<AccessType> {
        Some(AccessType::Mount(MountVolume {
            fs_type: fs.into(),
            ..Default::default()
        }))
    }

    #[test]
    fn single_node_block_and_mount_are_served() {
        let block = Some(AccessType::Block(BlockVolume {}));
        assert_eq!(
            check(&cap(Mode::SingleNodeWriter, block)),
            Ok(Access::Block)
        );
        assert_eq!(
            check(&cap(Mode::SingleNodeReaderOnly, mount("xfs"))),
            Ok(Access::Mount {
                fs_type: Some(FsType::Xfs),
                flags: vec![]
            })
        );
        assert_eq!(
            check(&cap(Mode::SingleNodeWriter, mount(""))),
            Ok(Access::Mount {
                fs_type: None,
                flags: vec![]
            })
        );
    }

    #[test]
    fn other_modes_types_and_missing_parts_are_refused() {
        assert!(check(&cap(Mode::MultiNodeMultiWriter, mount("ext4")))
            .unwrap_err()
            .contains("MULTI_NODE_MULTI_WRITER"));
        assert!(check(&cap(Mode::SingleNodeWriter, mount("btrfs")))
            .unwrap_err()
            .contains("btrfs"));
        assert!(check(&cap(Mode::SingleNodeWriter, None)).is_err());
        assert!(check(&VolumeCapability::default()).is_err());
        assert!(check_all(&[]).is_err());
    }
}

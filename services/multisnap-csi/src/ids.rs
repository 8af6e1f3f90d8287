//! The ids this driver hands to Kubernetes and the agent names behind them.
//!
//! A volume id is `<node>/<agent volume>` and a snapshot id `<node>/<agent volume>@<agent
//! snapshot>`: every id names the node whose agent holds the data, so a restore on another node
//! can later find where to copy from. Agent names are derived from the CSI names by a digest:
//! CSI names may be 128 bytes and more, of any characters, while the agent takes 63 bytes
//! (volumes) of `[A-Za-z0-9._-]`. The same CSI name always maps to the same agent name, which
//! is what makes CreateVolume and CreateSnapshot idempotent across driver restarts without a
//! record of their own.

use sha2::{Digest, Sha256};
use std::fmt;

/// Every agent name this driver makes starts with this, so an id can never reach a volume the
/// driver did not make (the agent's `default` volume, volumes made with the CLI).
const AGENT_PREFIX: &str = "csi-";
/// Hex digits of the SHA-256 digest kept in an agent name: 96 bits, so two CSI names never
/// share one in practice (one chance in 2^48 among 2^24 names), and short enough that a
/// snapshot id of a node name up to [`MAX_NODE_FOR_SHORT_IDS`] bytes stays within CSI's
/// 128-byte limit for strings.
const DIGEST_HEX: usize = 24;
/// `<node>/csi-<digest>.<generation up to 9 digits>@csi-<digest>` is 68 bytes plus the node.
pub const MAX_NODE_FOR_SHORT_IDS: usize = 128 - (1 + 4 + DIGEST_HEX + 10 + 1 + 4 + DIGEST_HEX);
/// Longest node name: a Kubernetes node name is a DNS subdomain.
const MAX_NODE_NAME: usize = 253;

/// A Kubernetes node name (a DNS subdomain: lower-case letters, digits, '-' and '.').
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeName(String);

impl NodeName {
    pub fn parse(s: &str) -> Result<NodeName, String> {
        let ok_char =
            |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.';
        let alnum =
            |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        if s.is_empty() || s.len() > MAX_NODE_NAME {
            return Err(format!(
                "node name {s:?} must be 1 to {MAX_NODE_NAME} characters"
            ));
        }
        if !s.chars().all(ok_char) || !alnum(s.chars().next()) || !alnum(s.chars().last()) {
            return Err(format!(
                "node name {s:?} is not a DNS subdomain (a-z, 0-9, '-' and '.', starting and ending with a letter or digit)"
            ));
        }
        Ok(NodeName(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn digest_hex(name: &str) -> String {
    let digest = Sha256::digest(name.as_bytes());
    let mut hex = String::with_capacity(DIGEST_HEX);
    for b in digest.iter().take(DIGEST_HEX / 2) {
        hex.push_str(&format!("{b:02x}"));
    }
    hex
}

/// Whether `hex` is exactly `DIGEST_HEX` lower-case hex digits.
fn is_digest(hex: &str) -> bool {
    hex.len() == DIGEST_HEX
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The agent volume behind a CSI volume: `csi-<digest of the CSI name>`, and `.<generation>`
/// appended when the name was used before by a volume that was deleted while its snapshots
/// live on (that retired volume keeps its agent name until its last snapshot goes).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AgentVolumeName(String);

impl AgentVolumeName {
    pub fn for_csi_name(csi_name: &str, generation: u32) -> AgentVolumeName {
        let base = format!("{AGENT_PREFIX}{}", digest_hex(csi_name));
        if generation == 0 {
            AgentVolumeName(base)
        } else {
            AgentVolumeName(format!("{base}.{generation}"))
        }
    }

    /// An agent volume name this driver made, or None for any other name.
    pub fn parse(s: &str) -> Option<AgentVolumeName> {
        let rest = s.strip_prefix(AGENT_PREFIX)?;
        let (digest, generation) = match rest.split_once('.') {
            Some((d, g)) => (d, Some(g)),
            None => (rest, None),
        };
        let generation_ok = generation.is_none_or(|g| {
            !g.is_empty()
                && g.len() <= 9
                && g.bytes().all(|b| b.is_ascii_digit())
                && !g.starts_with('0')
        });
        (is_digest(digest) && generation_ok).then(|| AgentVolumeName(s.to_string()))
    }

    /// Whether this is one of the generations of `csi_name`'s volume.
    pub fn is_for(&self, csi_name: &str) -> bool {
        let base = Self::for_csi_name(csi_name, 0);
        self.0 == base.0
            || self
                .0
                .strip_prefix(&base.0)
                .is_some_and(|g| g.starts_with('.'))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AgentVolumeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The volume on this node that holds the snapshots pulled from one volume of another node
/// (a cross-node restore): `csi-replica-<digest of "<node>\0<agent volume>">`. It never
/// parses as an [`AgentVolumeName`] (no 24-digit digest follows `csi-`), so the catalog, and
/// with it ListVolumes, ListSnapshots and the retired-volume sweep, never sees it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReplicaVolumeName(String);

/// How every replica volume's name starts.
pub const REPLICA_PREFIX: &str = "csi-replica-";

impl ReplicaVolumeName {
    pub fn of(source: &VolumeId) -> ReplicaVolumeName {
        let key = format!("{}\0{}", source.node, source.volume);
        ReplicaVolumeName(format!("{REPLICA_PREFIX}{}", digest_hex(&key)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ReplicaVolumeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The agent snapshot behind a CSI snapshot: `csi-<digest of the CSI name>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AgentSnapshotName(String);

impl AgentSnapshotName {
    pub fn for_csi_name(csi_name: &str) -> AgentSnapshotName {
        AgentSnapshotName(format!("{AGENT_PREFIX}{}", digest_hex(csi_name)))
    }

    /// An agent snapshot name this driver made, or None for any other name.
    pub fn parse(s: &str) -> Option<AgentSnapshotName> {
        let digest = s.strip_prefix(AGENT_PREFIX)?;
        is_digest(digest).then(|| AgentSnapshotName(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AgentSnapshotName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `<node>/<agent volume>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VolumeId {
    pub node: NodeName,
    pub volume: AgentVolumeName,
}

impl VolumeId {
    /// None when `s` is not an id of this driver's form (CSI treats such an id as unknown).
    pub fn parse(s: &str) -> Option<VolumeId> {
        let (node, volume) = s.split_once('/')?;
        Some(VolumeId {
            node: NodeName::parse(node).ok()?,
            volume: AgentVolumeName::parse(volume)?,
        })
    }
}

impl fmt::Display for VolumeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.node, self.volume)
    }
}

/// `<node>/<agent volume>@<agent snapshot>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SnapshotId {
    pub volume: VolumeId,
    pub snapshot: AgentSnapshotName,
}

impl SnapshotId {
    /// None when `s` is not an id of this driver's form.
    pub fn parse(s: &str) -> Option<SnapshotId> {
        let (volume, snapshot) = s.split_once('@')?;
        Some(SnapshotId {
            volume: VolumeId::parse(volume)?,
            snapshot: AgentSnapshotName::parse(snapshot)?,
        })
    }
}

impl fmt::Display for SnapshotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.volume, self.snapshot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The agent's naming rule (proto/multisnap/v1/multisnap.proto): 1..=max bytes of
    /// [A-Za-z0-9._-], not starting with '.' or '-'.
    fn agent_accepts(name: &str, max: usize) -> bool {
        !name.is_empty()
            && name.len() <= max
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            && !name.starts_with(['.', '-'])
    }

    proptest! {
        #[test]
        fn any_csi_name_maps_to_a_valid_agent_name(name in "\\PC{1,300}", generation in 0u32..1000) {
            let v = AgentVolumeName::for_csi_name(&name, generation);
            prop_assert!(agent_accepts(v.as_str(), 63), "{v}");
            prop_assert_eq!(AgentVolumeName::parse(v.as_str()), Some(v.clone()));
            prop_assert!(v.is_for(&name));
            let s = AgentSnapshotName::for_csi_name(&name);
            prop_assert!(agent_accepts(s.as_str(), 128), "{s}");
            prop_assert_eq!(AgentSnapshotName::parse(s.as_str()), Some(s));
        }

        #[test]
        fn ids_round_trip(name in "\\PC{1,200}", node in "[a-z0-9]([a-z0-9.-]{0,40}[a-z0-9])?") {
            let id = SnapshotId {
                volume: VolumeId {
                    node: NodeName::parse(&node).unwrap(),
                    volume: AgentVolumeName::for_csi_name(&name, 0),
                },
                snapshot: AgentSnapshotName::for_csi_name(&name),
            };
            prop_assert_eq!(SnapshotId::parse(&id.to_string()), Some(id.clone()));
            prop_assert_eq!(VolumeId::parse(&id.volume.to_string()), Some(id.volume.clone()));
        }

        #[test]
        fn parsing_never_panics(s in "\\PC{0,200}") {
            let _ = VolumeId::parse(&s);
            let _ = SnapshotId::parse(&s);
        }
    }

    #[test]
    fn same_name_same_agent_name_and_generations_are_distinct() {
        let a = AgentVolumeName::for_csi_name("pvc-1", 0);
        assert_eq!(a, AgentVolumeName::for_csi_name("pvc-1", 0));
        assert_ne!(a, AgentVolumeName::for_csi_name("pvc-2", 0));
        let g1 = AgentVolumeName::for_csi_name("pvc-1", 1);
        assert!(g1.as_str().ends_with(".1") && g1.is_for("pvc-1"));
        assert!(!AgentVolumeName::for_csi_name("pvc-2", 1).is_for("pvc-1"));
    }

    #[test]
    fn foreign_and_malformed_ids_are_refused() {
        for bad in [
            "fake-vol-id",
            "fake-vol-id-0123456789",
            "node-1/default",
            "node-1/csi-xyz",
            "Node/csi-000000000000000000000000",
            "/csi-000000000000000000000000",
            "node-1/csi-000000000000000000000000.0",
            "node-1/csi-000000000000000000000000.",
            "node-1/csi-000000000000000000000000/x",
        ] {
            assert_eq!(VolumeId::parse(bad), None, "{bad}");
        }
        assert!(VolumeId::parse("node-1/csi-000000000000000000000000.7").is_some());
        assert_eq!(
            SnapshotId::parse("node-1/csi-000000000000000000000000"),
            None
        );
        assert_eq!(
            SnapshotId::parse("node-1/csi-000000000000000000000000@before"),
            None
        );
    }

    #[test]
    fn replica_names_are_per_source_volume_and_hidden_from_the_catalog() {
        let v = |s: &str| VolumeId::parse(s).unwrap();
        let a = ReplicaVolumeName::of(&v("node-a/csi-000000000000000000000000"));
        assert_eq!(
            a,
            ReplicaVolumeName::of(&v("node-a/csi-000000000000000000000000"))
        );
        assert_ne!(
            a,
            ReplicaVolumeName::of(&v("node-b/csi-000000000000000000000000"))
        );
        assert_ne!(
            a,
            ReplicaVolumeName::of(&v("node-a/csi-000000000000000000000001"))
        );
        assert!(a.as_str().starts_with("csi-replica-") && a.as_str().len() <= 63);
        assert_eq!(AgentVolumeName::parse(a.as_str()), None);
    }

    #[test]
    fn node_names_follow_dns_rules() {
        assert!(NodeName::parse("worker-1.example.com").is_ok());
        for bad in ["", "-a", "a-", "A", "a/b", "a@b", &"a".repeat(254)] {
            assert!(NodeName::parse(bad).is_err(), "{bad}");
        }
    }
}

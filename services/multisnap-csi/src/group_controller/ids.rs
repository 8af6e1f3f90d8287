//! A group snapshot's id: `<node>/group@<agent group>`, where the agent group (and every
//! member snapshot, which carries the group's name) is `csi-<digest>` of the CSI name. The
//! digest input starts with a NUL byte, which CSI bans from names, so a group never takes the
//! agent name of a single snapshot. The `group@` part keeps these ids apart from volume ids
//! (`<node>/csi-…`) and snapshot ids (`<node>/csi-…@csi-…`): neither parses as the other.

use crate::ids::{AgentSnapshotName, NodeName};
use std::fmt;

const GROUP_MARK: &str = "group@";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupSnapshotId {
    pub node: NodeName,
    pub group: AgentSnapshotName,
}

impl GroupSnapshotId {
    /// The agent group (and member snapshot) name of CSI group snapshot `csi_name`.
    pub fn agent_name(csi_name: &str) -> AgentSnapshotName {
        AgentSnapshotName::for_csi_name(&format!("\u{0}group\u{0}{csi_name}"))
    }

    /// None when `s` is not an id of this form (CSI treats it as unknown).
    pub fn parse(s: &str) -> Option<GroupSnapshotId> {
        let (node, rest) = s.split_once('/')?;
        Some(GroupSnapshotId {
            node: NodeName::parse(node).ok()?,
            group: AgentSnapshotName::parse(rest.strip_prefix(GROUP_MARK)?)?,
        })
    }
}

impl fmt::Display for GroupSnapshotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{GROUP_MARK}{}", self.node, self.group)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{SnapshotId, VolumeId};
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn ids_round_trip_and_stay_apart(name in "\\PC{1,200}", node in "[a-z0-9]([a-z0-9.-]{0,40}[a-z0-9])?") {
            let id = GroupSnapshotId {
                node: NodeName::parse(&node).unwrap(),
                group: GroupSnapshotId::agent_name(&name),
            };
            let text = id.to_string();
            prop_assert!(text.len() <= 128 || node.len() > 80, "{text}");
            prop_assert_eq!(GroupSnapshotId::parse(&text), Some(id.clone()));
            prop_assert_eq!(VolumeId::parse(&text), None);
            prop_assert_eq!(SnapshotId::parse(&text), None);
            prop_assert_ne!(id.group, AgentSnapshotName::for_csi_name(&name));
        }

        #[test]
        fn parsing_never_panics(s in "\\PC{0,200}") {
            let _ = GroupSnapshotId::parse(&s);
        }
    }

    #[test]
    fn foreign_ids_are_refused() {
        for bad in [
            "",
            "fake-group-id",
            "node-1/csi-000000000000000000000000",
            "node-1/group@before",
            "Node/group@csi-000000000000000000000000",
        ] {
            assert_eq!(GroupSnapshotId::parse(bad), None, "{bad}");
        }
    }
}

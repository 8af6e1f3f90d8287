//! Topology: a multisnap volume lives on the node whose agent holds it, so the one segment is
//! the node name (the external-provisioner's per-node mode provisions on that node).

use crate::csi::Topology;
use crate::ids::NodeName;

/// The segment key shared with the chart's StorageClass and CSIDriver objects.
pub const NODE_KEY: &str = "topology.csi.multisnap.dev/node";

pub fn of_node(node: &NodeName) -> Topology {
    Topology {
        segments: [(NODE_KEY.to_string(), node.as_str().to_string())].into(),
    }
}

/// Whether a topology the CO names includes `node`: it must not name another node (segments
/// under other keys do not restrict a multisnap volume).
pub fn admits(t: &Topology, node: &NodeName) -> bool {
    t.segments.get(NODE_KEY).is_none_or(|n| n == node.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_other_nodes_are_excluded() {
        let n = NodeName::parse("n1").unwrap();
        assert!(admits(&of_node(&n), &n));
        assert!(admits(&Topology::default(), &n));
        assert!(!admits(&of_node(&NodeName::parse("n2").unwrap()), &n));
    }
}

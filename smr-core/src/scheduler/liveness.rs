//! Node liveness: a node not seen (heartbeat, Raft append acknowledged, status report) for longer
//! than a timeout counts as dead, and [`super::place`] moves its replicas elsewhere.
//!
//! The caller owns the "last seen" clock. A node that just became leader knows nothing about
//! when the others were last seen: it should start every node at its own `now_ms` (a grace
//! period of one timeout) rather than at 0, or it would declare the whole cluster dead.

use std::collections::{BTreeMap, BTreeSet};

use super::placement::{NodeId, NodeInfo};

pub const DEFAULT_NODE_TIMEOUT_MS: u64 = 15_000;

/// The nodes not seen for more than `timeout_ms` at `now_ms`. A node seen "in the future" (clock
/// skew between the stamp and `now_ms`) is live.
pub fn liveness(
    last_seen_ms: &BTreeMap<NodeId, u64>,
    now_ms: u64,
    timeout_ms: u64,
) -> BTreeSet<NodeId> {
    last_seen_ms
        .iter()
        .filter(|&(_, &seen)| now_ms.saturating_sub(seen) > timeout_ms)
        .map(|(&id, _)| id)
        .collect()
}

/// Set [`NodeInfo::live`] of every node from its `last_seen_ms`.
pub fn mark_liveness(nodes: &mut [NodeInfo], now_ms: u64, timeout_ms: u64) {
    for node in nodes {
        node.live = now_ms.saturating_sub(node.last_seen_ms) <= timeout_ms;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_after_timeout_strictly() {
        let seen = BTreeMap::from([(1, 100_000), (2, 85_000), (3, 84_999), (4, 120_000)]);
        assert_eq!(
            liveness(&seen, 100_000, DEFAULT_NODE_TIMEOUT_MS),
            BTreeSet::from([3])
        );
        assert_eq!(
            liveness(&seen, 200_000, 15_000),
            BTreeSet::from([1, 2, 3, 4])
        );
        assert_eq!(liveness(&BTreeMap::new(), 5, 1), BTreeSet::new());
    }

    #[test]
    fn mark_sets_live_flags() {
        let node = |id, last_seen_ms| NodeInfo {
            id,
            name: format!("n{id}"),
            labels: BTreeMap::new(),
            live: false,
            last_seen_ms,
            availability: Default::default(),
        };
        let mut nodes = vec![node(1, 50_000), node(2, 10_000)];
        mark_liveness(&mut nodes, 60_000, 15_000);
        assert_eq!(
            nodes.iter().map(|n| n.live).collect::<Vec<_>>(),
            vec![true, false]
        );
    }
}

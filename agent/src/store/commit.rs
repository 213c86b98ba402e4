//! The commit index, which openraft 0.9's metrics do not report (for `smr_store_commit_index`).

use std::collections::BTreeSet;

use super::Store;
use crate::state::NodeId;

/// The highest index a majority of `voters` has: `matched` gives each voter's last replicated
/// index (absent: nothing). Pure.
pub fn quorum_index(
    voters: &BTreeSet<NodeId>,
    matched: impl Fn(NodeId) -> Option<u64>,
) -> Option<u64> {
    let mut indexes: Vec<u64> = voters.iter().map(|v| matched(*v).unwrap_or(0)).collect();
    if indexes.is_empty() {
        return None;
    }
    indexes.sort_unstable_by(|a, b| b.cmp(a));
    Some(indexes[indexes.len() / 2])
}

impl Store {
    /// The highest log index known committed: on the Raft leader, the index a quorum of voters
    /// holds; on a follower (which learns the commit point only with the next append) and on
    /// etcd, the last applied index.
    pub fn commit_index(&self) -> Option<u64> {
        match self {
            Store::Raft(s) => {
                let metrics = s.raft.metrics().borrow().clone();
                let applied = metrics.last_applied.map(|l| l.index);
                let Some(replication) = &metrics.replication else {
                    return applied;
                };
                let voters: BTreeSet<NodeId> =
                    metrics.membership_config.membership().voter_ids().collect();
                let me = metrics.id;
                let quorum = quorum_index(&voters, |v| {
                    if v == me {
                        metrics.last_log_index
                    } else {
                        replication.get(&v).cloned().flatten().map(|l| l.index)
                    }
                });
                // Never report less than what is applied (committed by definition).
                quorum.max(applied)
            }
            #[cfg(feature = "etcd")]
            Store::Etcd(s) => s.status().last_applied,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_quorum_index_is_the_majoritys_lowest() {
        let voters: BTreeSet<NodeId> = [1, 2, 3].into();
        let at = |v: NodeId| [Some(10), Some(7), None][v as usize - 1];
        assert_eq!(quorum_index(&voters, at), Some(7));
        let five: BTreeSet<NodeId> = [1, 2, 3, 4, 5].into();
        let at = |v: NodeId| Some([9, 3, 8, 1, 5][v as usize - 1]);
        assert_eq!(quorum_index(&five, at), Some(5));
        assert_eq!(quorum_index(&[1].into(), |_| Some(4)), Some(4));
        assert_eq!(quorum_index(&BTreeSet::new(), |_| Some(4)), None);
    }
}

//! The two commands that put a whole state into a cluster that holds nothing yet: a backup's
//! objects (`smrmgr restore`) and a surviving node's state (`smrmgr start --force-new-cluster`).
//! See [`crate::backup`] for what each keeps.

use super::{ClusterState, CommandResult, Event, NodeId};
use crate::backup;

impl ClusterState {
    pub(super) fn restore(&mut self, backup: &ClusterState, now: u64) -> CommandResult {
        if !self.objects.is_empty() {
            return CommandResult::Rejected {
                reason: format!(
                    "this cluster already holds {} object(s): a backup is restored only into a \
                     new cluster",
                    self.objects.len()
                ),
            };
        }
        if let (Some(mine), Some(theirs)) = (&self.network, &backup.network)
            && mine != theirs
        {
            return CommandResult::Rejected {
                reason: format!(
                    "the backup's cluster network is {} /{} ({}), this cluster's {} /{} ({})",
                    theirs.cidr,
                    theirs.subnet_len,
                    theirs.backend,
                    mine.cidr,
                    mine.subnet_len,
                    mine.backend
                ),
            };
        }
        let kept = backup::restored(backup);
        self.objects = kept.objects;
        self.gitops = kept.gitops;
        self.placements = Default::default();
        self.placement_errors = Default::default();
        self.readers_index = Default::default();
        self.revision = self.revision.max(kept.revision);
        let revision = self.revision + 1;
        self.push_event(Event {
            revision,
            at_ms: now,
            subject: "cluster".into(),
            replica: None,
            node: None,
            reason: "Restored".into(),
            message: format!(
                "restored {} object(s) from a backup at revision {}",
                self.objects.len(),
                backup.revision
            ),
        });
        self.bump()
    }

    pub(super) fn force_new_cluster(
        &mut self,
        local: &ClusterState,
        keep: NodeId,
        now: u64,
    ) -> CommandResult {
        if !self.objects.is_empty() || !self.nodes.is_empty() {
            return CommandResult::Rejected {
                reason: "a state is forced only into a new Raft group that holds nothing yet"
                    .into(),
            };
        }
        if !local.nodes.contains_key(&keep) {
            return CommandResult::Rejected {
                reason: format!("node {keep} is not in the state it would keep"),
            };
        }
        let gone: Vec<String> = local
            .nodes
            .values()
            .filter(|n| n.id != keep)
            .map(|n| format!("{} (id {})", n.name, n.id))
            .collect();
        let revision = self.revision.max(local.revision);
        *self = backup::forced(local, keep);
        self.revision = revision;
        self.push_event(Event {
            revision: revision + 1,
            at_ms: now,
            subject: "cluster".into(),
            replica: None,
            node: Some(keep),
            reason: "ForcedNewCluster".into(),
            message: if gone.is_empty() {
                format!("node {keep} forced a new one-node cluster")
            } else {
                format!(
                    "node {keep} forced a new one-node cluster; removed {}",
                    gone.join(", ")
                )
            },
        });
        self.bump()
    }
}

//! Replica reports as deltas (issue 14).
//!
//! A node reports only the replicas that changed since its last report ([`ReportDelta::between`]):
//! the ones added or changed in full, the ones gone by name. It sends its whole list
//! ([`ReportDelta::full`]) when it has no report in the state it can build on: on (re)start, and
//! when the state machine answered that its delta was based on a report the state does not hold
//! (`CommandResult::Reported::resend`). The node (or API node) that receives reports of many
//! nodes at once proposes them together as one [`Op::Reports`](super::Op::Reports) entry
//! ([`merge`]).
//!
//! ```text
//!  node: replicas (last sent) + replicas (now) --between--> ReportDelta {base: last seq, set, removed}
//!  receiving node: deltas of many nodes --merge--> Op::Reports (one log entry)
//!  state machine: NodeReport (seq == base?) --apply_to--> NodeReport; else resend: the node sends in full
//! ```

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::{NodeId, NodeReport, ReplicaReport};
use crate::definitions::ObjectKey;

/// One replica by object and index.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ReplicaRef {
    pub key: ObjectKey,
    pub index: u32,
}

/// What one node says changed about its replicas.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportDelta {
    pub node: NodeId,
    /// The report's sequence number (the node's, increasing).
    pub seq: u64,
    pub at_ms: u64,
    /// The sequence number of the report this one changes; `None`: a full report (`set` is every
    /// replica of the node), which replaces whatever the state holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<u64>,
    /// Replicas added or changed (for a full report: all of them, in the node's order).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set: Vec<ReplicaReport>,
    /// Replicas gone since `base`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<ReplicaRef>,
}

/// Why a delta cannot be applied: the state holds another report than the one it changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the report changes report {base}, the state holds {held:?}")]
pub struct StaleBase {
    pub base: u64,
    pub held: Option<u64>,
}

fn id(r: &ReplicaReport) -> (&ObjectKey, u32) {
    (&r.key, r.index)
}

impl ReportDelta {
    /// A full report: `replicas` replace whatever the state holds for `node`.
    pub fn full(node: NodeId, seq: u64, at_ms: u64, replicas: Vec<ReplicaReport>) -> ReportDelta {
        ReportDelta {
            node,
            seq,
            at_ms,
            base: None,
            set: replicas,
            removed: Vec::new(),
        }
    }

    /// Whether it replaces the node's report whole.
    pub fn is_full(&self) -> bool {
        self.base.is_none()
    }

    /// The delta from `before` (the replicas of report `base`) to `after`: the replicas of
    /// `after` that are new or differ, in `after`'s order, and those of `before` that `after`
    /// lacks, in `before`'s order. `None` when nothing differs. A list that names a replica
    /// twice cannot be said as a delta: then a full report.
    pub fn between(
        node: NodeId,
        seq: u64,
        at_ms: u64,
        base: u64,
        before: &[ReplicaReport],
        after: &[ReplicaReport],
    ) -> Option<ReportDelta> {
        let old: BTreeMap<(&ObjectKey, u32), &ReplicaReport> =
            before.iter().map(|r| (id(r), r)).collect();
        let new: BTreeSet<(&ObjectKey, u32)> = after.iter().map(id).collect();
        if old.len() != before.len() || new.len() != after.len() {
            return (before != after).then(|| ReportDelta::full(node, seq, at_ms, after.to_vec()));
        }
        let set: Vec<ReplicaReport> = after
            .iter()
            .filter(|r| old.get(&id(r)) != Some(r))
            .cloned()
            .collect();
        let removed: Vec<ReplicaRef> = before
            .iter()
            .filter(|r| !new.contains(&id(r)))
            .map(|r| ReplicaRef {
                key: r.key.clone(),
                index: r.index,
            })
            .collect();
        if set.is_empty() && removed.is_empty() {
            return None;
        }
        Some(ReportDelta {
            node,
            seq,
            at_ms,
            base: Some(base),
            set,
            removed,
        })
    }

    /// The node's report after this one, given the report the state holds (`current`): a full
    /// report as it is; a delta on the report numbered `base`, its replicas in their order with
    /// the changed ones replaced where they stand, the removed ones dropped and the new ones
    /// appended in `set`'s order. Costs O(r + d log r) for r replicas of the node and d named.
    pub fn apply_to(&self, current: Option<&NodeReport>) -> Result<NodeReport, StaleBase> {
        let Some(base) = self.base else {
            return Ok(NodeReport {
                seq: self.seq,
                at_ms: self.at_ms,
                replicas: self.set.clone(),
            });
        };
        let held = current.map(|c| c.seq);
        let current = match current {
            Some(current) if current.seq == base => current,
            _ => return Err(StaleBase { base, held }),
        };
        let gone: BTreeSet<(&ObjectKey, u32)> =
            self.removed.iter().map(|r| (&r.key, r.index)).collect();
        // Later entries of `set` win over earlier ones for the same replica.
        let mut changed: BTreeMap<(&ObjectKey, u32), &ReplicaReport> = BTreeMap::new();
        for r in &self.set {
            changed.insert(id(r), r);
        }
        let mut replicas = Vec::with_capacity(current.replicas.len() + self.set.len());
        let mut kept: BTreeSet<(&ObjectKey, u32)> = BTreeSet::new();
        for r in &current.replicas {
            let k = id(r);
            if let Some(new) = changed.get(&k) {
                if kept.insert(k) {
                    replicas.push((*new).clone());
                }
            } else if !gone.contains(&k) {
                replicas.push(r.clone());
            }
        }
        for r in &self.set {
            let k = id(r);
            if !kept.contains(&k) && changed.get(&k) == Some(&r) {
                kept.insert(k);
                replicas.push(r.clone());
            }
        }
        Ok(NodeReport {
            seq: self.seq,
            at_ms: self.at_ms,
            replicas,
        })
    }

    /// Folds `later` (the same node's next report) into this one when it builds on it: a full
    /// report replaces it; a delta on this one's sequence number adds to it (its replicas win).
    /// Returns `later` back when it builds on another report.
    fn absorb(&mut self, later: ReportDelta) -> Option<ReportDelta> {
        match later.base {
            None => {
                *self = later;
                None
            }
            Some(base) if base == self.seq => {
                // The later one's replicas replace this one's where they stand (so that the
                // fold applies to the same list as the two one after the other), its new ones
                // come after; what it removes leaves `set` and, for a delta, joins `removed`.
                let mut newer: BTreeMap<(&ObjectKey, u32), &ReplicaReport> = BTreeMap::new();
                for r in &later.set {
                    newer.insert(id(r), r);
                }
                let gone: BTreeSet<(&ObjectKey, u32)> =
                    later.removed.iter().map(|r| (&r.key, r.index)).collect();
                let mut set = Vec::with_capacity(self.set.len() + later.set.len());
                let mut placed: BTreeSet<(&ObjectKey, u32)> = BTreeSet::new();
                for r in &self.set {
                    let k = id(r);
                    if let Some(new) = newer.get(&k) {
                        if placed.insert(k) {
                            set.push((*new).clone());
                        }
                    } else if !gone.contains(&k) {
                        set.push(r.clone());
                    }
                }
                for r in &later.set {
                    let k = id(r);
                    if !placed.contains(&k) && newer.get(&k) == Some(&r) {
                        placed.insert(k);
                        set.push(r.clone());
                    }
                }
                let mut removed: Vec<ReplicaRef> = Vec::new();
                if !self.is_full() {
                    removed = self
                        .removed
                        .iter()
                        .filter(|r| !newer.contains_key(&(&r.key, r.index)))
                        .cloned()
                        .collect();
                    removed.extend(later.removed.iter().cloned());
                }
                self.set = set;
                self.removed = removed;
                self.seq = later.seq;
                self.at_ms = later.at_ms;
                None
            }
            Some(_) => Some(later),
        }
    }
}

/// The reports of many nodes that arrived together, as one list for one log entry: per node
/// (in the order of each node's first report) its reports folded into one where each builds
/// on the previous (`absorb`); a report that builds on another one stays as it is, where it
/// arrived (the state machine then asks its node for a full report).
pub fn merge(reports: Vec<ReportDelta>) -> Vec<ReportDelta> {
    let mut out: Vec<ReportDelta> = Vec::with_capacity(reports.len());
    // The position in `out` of each node's latest report.
    let mut last: BTreeMap<NodeId, usize> = BTreeMap::new();
    for report in reports {
        let node = report.node;
        let leftover = match last.get(&node) {
            Some(&at) => out[at].absorb(report),
            None => Some(report),
        };
        if let Some(report) = leftover {
            last.insert(node, out.len());
            out.push(report);
        }
    }
    out
}

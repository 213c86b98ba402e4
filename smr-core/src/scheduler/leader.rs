//! What the leader's placement loop decides, as pure values: which nodes are live (by their
//! report sequence numbers, on the leader's own clock, passed in) and the placement updates for
//! every `containers` object ([`plan`]: placements, rolling updates, rescheduling). The agent's
//! loop (`controllers::placement`) reads the state and proposes what this returns.
//!
//! Liveness is judged by the leader's own clock: a node is live while it was heard from within the
//! timeout, by a heartbeat (held in the leader's memory, [`super::heartbeat`]) or by a change of
//! its report sequence number (a report in the log). A new leader counts every node as seen when
//! it took over, so a leader change never makes the whole cluster look dead.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use super::{self as scheduler, NodeInfo, ReplicaState};
use crate::convert::{node_labels, workload_of};
use crate::definitions::{Kind, ObjectKey};
use crate::state::{ClusterState, NodeId, PlacementUpdate, ReplicaReport};

/// How long a node may stay silent before its replicas are placed elsewhere (default 15 s).
pub const DEFAULT_NODE_TIMEOUT: Duration = Duration::from_secs(15);

/// Leader-local memory of when each node's report last changed, and judge of liveness.
#[derive(Debug)]
pub struct Liveness {
    timeout: Duration,
    seen: BTreeMap<NodeId, (u64, Instant)>,
    since: Instant,
    /// Whether [`Liveness::observe`] ran: a node first seen later joined since, and is counted
    /// as heard from when it is first seen (not at the takeover, which may be long before).
    observed: bool,
}

impl Liveness {
    pub fn new(timeout: Duration, now: Instant) -> Liveness {
        Liveness {
            timeout,
            seen: BTreeMap::new(),
            since: now,
            observed: false,
        }
    }

    /// Updates from the state's reports and tells which nodes are live at `now`: heard from
    /// (a report that changed, a heartbeat in `heartbeats`, this leader taking over, or for a
    /// node that joined since, this leader first seeing it) within the timeout.
    pub fn observe(
        &mut self,
        state: &ClusterState,
        heartbeats: &BTreeMap<NodeId, Instant>,
        now: Instant,
    ) -> BTreeMap<NodeId, bool> {
        self.seen.retain(|id, _| state.nodes.contains_key(id));
        let first_heard = if self.observed { now } else { self.since };
        self.observed = true;
        state
            .nodes
            .keys()
            .map(|id| {
                let seq = state.reports.get(id).map(|r| r.seq);
                let entry = self
                    .seen
                    .entry(*id)
                    .or_insert((seq.unwrap_or(0), first_heard));
                if let Some(seq) = seq
                    && seq != entry.0
                {
                    *entry = (seq, now);
                }
                let heard = match heartbeats.get(id) {
                    Some(beat) => entry.1.max(*beat),
                    None => entry.1,
                };
                (*id, now.saturating_duration_since(heard) < self.timeout)
            })
            .collect()
    }
}

/// The placement changes the leader should propose, given which nodes are live. Pure.
pub fn plan(state: &ClusterState, live: &BTreeMap<NodeId, bool>) -> Vec<PlacementUpdate> {
    plan_some(state, live, None)
}

/// The objects whose placement may need to change after `delta`, when only they may: `None`
/// when every object's may (a node joined, left or changed, a node's availability or the
/// cluster's settings changed). The objects named are the containers definitions written or
/// deleted, the placements and placement errors that changed, and the objects whose replicas'
/// reports changed (rollout progress). Liveness is not in a delta: a change of it needs a full
/// [`plan`].
pub fn touched_by(delta: &crate::state::Delta) -> Option<BTreeSet<ObjectKey>> {
    if !delta.nodes.is_empty() || delta.settings {
        return None;
    }
    let mut keys: BTreeSet<ObjectKey> = delta
        .objects
        .touched()
        .filter(|k| k.kind == Kind::Containers)
        .cloned()
        .collect();
    keys.extend(delta.placements.touched().cloned());
    keys.extend(delta.placement_errors.touched().cloned());
    keys.extend(delta.replicas.iter().cloned());
    Some(keys)
}

/// Whether the placement of `key` reads no replica report: every slot at the object's
/// template generation (what [`workload_of`] rolls to), none a surge or moving (`previous`), none on a node that is not active. Then a
/// rollout has nothing to wait for and a drain nothing to move ([`plan`] reads reports for
/// those only), so a change of its replicas' reports alone cannot change its plan: the
/// placement loop leaves such an object out of the keys a report batch touched.
pub fn settled(state: &ClusterState, key: &ObjectKey) -> bool {
    let (Some(placement), Some(stored)) = (state.placements.get(key), state.objects.get(key))
    else {
        return false;
    };
    placement.replicas.values().all(|slot| {
        slot.generation == stored.template_generation
            && !slot.surge
            && slot.previous.is_none()
            && state
                .availability
                .get(&slot.node)
                .copied()
                .unwrap_or_default()
                == scheduler::Availability::Active
    })
}

/// [`touched_by`], less the objects named only because their replicas' reports changed whose
/// placement is [`settled`] in `state` (the newer version): their plan reads no report, so it
/// cannot differ from the last one. A batch of reports from every node (each node runs a
/// replica of every object) then replans only the objects a rollout or drain is moving.
pub fn touched_in(
    delta: &crate::state::Delta,
    state: &ClusterState,
) -> Option<BTreeSet<ObjectKey>> {
    let mut keys = touched_by(delta)?;
    keys.retain(|key| {
        !delta.replicas.contains(key)
            || delta.objects.contains(key)
            || delta.placements.contains(key)
            || delta.placement_errors.contains(key)
            || !settled(state, key)
    });
    Some(keys)
}

/// What [`plan`] would propose for the objects of `keys` only (their placements, or dropping the
/// placement of one deleted), in O(size of those objects' placements and of the reports of the
/// nodes they are on) plus one count of every node's replicas. After a delta, with the keys
/// [`touched_by`] names and the same liveness, this is what a full [`plan`] proposes when the
/// previous full pass left nothing to do: the other objects' decisions read nothing that changed.
pub fn plan_keys(
    state: &ClusterState,
    live: &BTreeMap<NodeId, bool>,
    keys: &BTreeSet<ObjectKey>,
) -> Vec<PlacementUpdate> {
    plan_some(state, live, Some(keys))
}

fn plan_some(
    state: &ClusterState,
    live: &BTreeMap<NodeId, bool>,
    keys: Option<&BTreeSet<ObjectKey>>,
) -> Vec<PlacementUpdate> {
    let nodes: Vec<NodeInfo> = state
        .nodes
        .values()
        .filter(|n| n.schedulable)
        .map(|n| NodeInfo {
            id: n.id,
            name: n.name.clone(),
            labels: node_labels(&n.labels, &n.name),
            live: live.get(&n.id).copied().unwrap_or(false),
            last_seen_ms: 0,
            availability: state.availability.get(&n.id).copied().unwrap_or_default(),
        })
        .collect();
    // Replicas per node over all placements, kept by the state's slot index (O(nodes), not
    // O(replicas)); each object's load is this minus its own (what `scheduler::node_load`
    // computes, in O(nodes) per object instead of O(replicas)). Kept up to date with the
    // decisions of this pass: objects placed in one pass (a dead node's replicas of every object)
    // then spread over the least loaded nodes together, not each onto the same ones.
    let mut total: BTreeMap<NodeId, u32> = state.placed_counts();
    let reports = match keys {
        None => ReportIndex::new(state),
        Some(keys) => ReportIndex::for_keys(state, keys),
    };
    let mut updates = Vec::new();
    let mut visit = |key: &ObjectKey, stored: &crate::state::StoredObject| {
        let Some(workload) = workload_of(stored) else {
            return;
        };
        let current = state.placements.get(key);
        let load = load_without(&total, current);
        match scheduler::place_with_load(&workload, &nodes, current, &load) {
            Ok(placed) => {
                let status = replica_states(&reports, key, &placed, live);
                let steps = scheduler::plan_rollout(&workload, &placed, &status);
                let next = scheduler::apply_rollout(&placed, &steps);
                let drain = scheduler::plan_drain(&workload, &next, &status, &nodes, &load);
                let next = scheduler::apply_drain(&next, &drain);
                if current != Some(&next) {
                    move_load(&mut total, current, &next);
                }
                if current != Some(&next) || state.placement_errors.contains_key(key) {
                    updates.push(PlacementUpdate {
                        key: key.clone(),
                        generation: stored.generation,
                        placement: Some(next),
                        error: None,
                    });
                }
            }
            Err(e) => {
                let error = e.to_string();
                if state.placement_errors.get(key) != Some(&error) {
                    updates.push(PlacementUpdate {
                        key: key.clone(),
                        generation: stored.generation,
                        placement: current.cloned(),
                        error: Some(error),
                    });
                }
            }
        }
    };
    // Only containers objects are placed; the others are not visited.
    match keys {
        None => {
            for (key, stored) in state.keyed_objects_of(Kind::Containers) {
                visit(key, stored);
            }
        }
        Some(keys) => {
            for key in keys.iter().filter(|k| k.kind == Kind::Containers) {
                if let Some(stored) = state.objects.get(key) {
                    visit(key, stored);
                }
            }
        }
    }
    let orphans: Vec<&ObjectKey> = match keys {
        None => state
            .placements
            .keys()
            .filter(|k| !state.objects.contains_key(*k))
            .collect(),
        Some(keys) => keys
            .iter()
            .filter(|k| state.placements.contains_key(*k) && !state.objects.contains_key(*k))
            .collect(),
    };
    for key in orphans {
        updates.push(PlacementUpdate {
            key: key.clone(),
            generation: 0,
            placement: None,
            error: None,
        });
    }
    updates
}

/// `total` with the replicas of `old` replaced by those of `new`.
fn move_load(
    total: &mut BTreeMap<NodeId, u32>,
    old: Option<&scheduler::Placement>,
    new: &scheduler::Placement,
) {
    for (node, count) in old.map(|p| p.per_node()).unwrap_or_default() {
        if let Some(n) = total.get_mut(&node) {
            *n = n.saturating_sub(count);
            if *n == 0 {
                total.remove(&node);
            }
        }
    }
    for (node, count) in new.per_node() {
        *total.entry(node).or_insert(0) += count;
    }
}

/// `total` less the replicas of `own` (zero counts left out, as `scheduler::node_load` does).
fn load_without(
    total: &BTreeMap<NodeId, u32>,
    own: Option<&scheduler::Placement>,
) -> BTreeMap<NodeId, u32> {
    let mut load = total.clone();
    if let Some(own) = own {
        for (node, count) in own.per_node() {
            if let Some(n) = load.get_mut(&node) {
                *n = n.saturating_sub(count);
                if *n == 0 {
                    load.remove(&node);
                }
            }
        }
    }
    load
}

/// Every node's reported replicas by (node, object, index): the first entry of a node's report
/// for a replica counts. Built once per plan, so that looking a replica up does not scan its
/// node's report.
struct ReportIndex<'a> {
    by_replica: BTreeMap<(NodeId, &'a crate::definitions::ObjectKey, u32), &'a ReplicaReport>,
}

impl<'a> ReportIndex<'a> {
    fn new(state: &'a ClusterState) -> Self {
        let mut by_replica = BTreeMap::new();
        for (node, report) in state.reports.iter() {
            for r in &report.replicas {
                by_replica.entry((*node, &r.key, r.index)).or_insert(r);
            }
        }
        ReportIndex { by_replica }
    }

    /// The entries of the replicas of `keys` only: the reports of the nodes their placements
    /// name, each read once.
    fn for_keys(state: &'a ClusterState, keys: &BTreeSet<ObjectKey>) -> Self {
        let on: BTreeSet<NodeId> = keys
            .iter()
            .filter_map(|k| state.placements.get(k))
            .flat_map(|p| p.replicas.values().map(|slot| slot.node))
            .collect();
        let mut by_replica = BTreeMap::new();
        for node in on {
            let Some(report) = state.reports.get(&node) else {
                continue;
            };
            for r in report.replicas.iter().filter(|r| keys.contains(&r.key)) {
                by_replica.entry((node, &r.key, r.index)).or_insert(r);
            }
        }
        ReportIndex { by_replica }
    }

    fn get(
        &self,
        node: NodeId,
        key: &'a crate::definitions::ObjectKey,
        index: u32,
    ) -> Option<&'a ReplicaReport> {
        self.by_replica.get(&(node, key, index)).copied()
    }
}

/// Readiness per replica index, as reported by the node the slot is on (live nodes only).
fn replica_states<'a>(
    reports: &ReportIndex<'a>,
    key: &'a crate::definitions::ObjectKey,
    placement: &scheduler::Placement,
    live: &BTreeMap<NodeId, bool>,
) -> BTreeMap<u32, ReplicaState> {
    let mut status = BTreeMap::new();
    for (index, slot) in &placement.replicas {
        if !live.get(&slot.node).copied().unwrap_or(false) {
            continue;
        }
        if let Some(r) = reports.get(slot.node, key, *index) {
            status.insert(
                *index,
                ReplicaState {
                    generation: r.generation,
                    ready: r.ready,
                },
            );
        }
    }
    status
}

#[cfg(test)]
mod tests;

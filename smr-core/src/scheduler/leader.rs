//! What the leader's placement loop decides, as pure values: which nodes are live (by their
//! report sequence numbers, on the leader's own clock, passed in) and the placement updates for
//! every `containers` object ([`plan`]: placements, rolling updates, rescheduling). The agent's
//! loop (`controllers::placement`) reads the state and proposes what this returns.
//!
//! Liveness is judged by the leader's own clock: a node is live while it was heard from within the
//! timeout, by a heartbeat (held in the leader's memory, [`super::heartbeat`]) or by a change of
//! its report sequence number (a report in the log). A new leader counts every node as seen when
//! it took over, so a leader change never makes the whole cluster look dead.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::{self as scheduler, NodeInfo, ReplicaState};
use crate::convert::{node_labels, workload_of};
use crate::state::{ClusterState, NodeId, PlacementUpdate};

/// How long a node may stay silent before its replicas are placed elsewhere (default 15 s).
pub const DEFAULT_NODE_TIMEOUT: Duration = Duration::from_secs(15);

/// Leader-local memory of when each node's report last changed, and judge of liveness.
#[derive(Debug)]
pub struct Liveness {
    timeout: Duration,
    seen: BTreeMap<NodeId, (u64, Instant)>,
    since: Instant,
}

impl Liveness {
    pub fn new(timeout: Duration, now: Instant) -> Liveness {
        Liveness {
            timeout,
            seen: BTreeMap::new(),
            since: now,
        }
    }

    /// Updates from the state's reports and tells which nodes are live at `now`: heard from
    /// (a report that changed, a heartbeat in `heartbeats`, or this leader taking over) within
    /// the timeout.
    pub fn observe(
        &mut self,
        state: &ClusterState,
        heartbeats: &BTreeMap<NodeId, Instant>,
        now: Instant,
    ) -> BTreeMap<NodeId, bool> {
        self.seen.retain(|id, _| state.nodes.contains_key(id));
        state
            .nodes
            .keys()
            .map(|id| {
                let seq = state.reports.get(id).map(|r| r.seq);
                let entry = self
                    .seen
                    .entry(*id)
                    .or_insert((seq.unwrap_or(0), self.since));
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
    let placements: BTreeMap<String, scheduler::Placement> = state
        .placements
        .iter()
        .map(|(k, p)| (k.to_string(), p.clone()))
        .collect();
    let mut updates = Vec::new();
    // Only containers objects are placed; the others are not visited.
    for (key, stored) in state.keyed_objects_of(crate::definitions::Kind::Containers) {
        let Some(workload) = workload_of(stored) else {
            continue;
        };
        let current = state.placements.get(key);
        let load = scheduler::node_load(&placements, &workload.key);
        match scheduler::place_with_load(&workload, &nodes, current, &load) {
            Ok(placed) => {
                let status = replica_states(state, key, &placed, live);
                let steps = scheduler::plan_rollout(&workload, &placed, &status);
                let next = scheduler::apply_rollout(&placed, &steps);
                let drain = scheduler::plan_drain(&workload, &next, &status, &nodes, &load);
                let next = scheduler::apply_drain(&next, &drain);
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
    }
    for key in state
        .placements
        .keys()
        .filter(|k| !state.objects.contains_key(*k))
    {
        updates.push(PlacementUpdate {
            key: key.clone(),
            generation: 0,
            placement: None,
            error: None,
        });
    }
    updates
}

/// Readiness per replica index, as reported by the node the slot is on (live nodes only).
fn replica_states(
    state: &ClusterState,
    key: &crate::definitions::ObjectKey,
    placement: &scheduler::Placement,
    live: &BTreeMap<NodeId, bool>,
) -> BTreeMap<u32, ReplicaState> {
    let mut status = BTreeMap::new();
    for (index, slot) in &placement.replicas {
        if !live.get(&slot.node).copied().unwrap_or(false) {
            continue;
        }
        let reported = state.reports.get(&slot.node).and_then(|r| {
            r.replicas
                .iter()
                .find(|r| &r.key == key && r.index == *index)
        });
        if let Some(r) = reported {
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

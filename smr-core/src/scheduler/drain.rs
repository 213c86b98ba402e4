//! Draining: the replicas of a draining node move to other nodes, one batch at a time, and the
//! new replica of each is ready before the old one stops.
//!
//! A replica's container is named after its index, but the old and the new container of a move
//! run on two different engines, so they can run side by side. A move therefore sets the slot's
//! node to the target and records the draining node in [`ReplicaSlot::previous`]:
//! [`Placement::on_node`] keeps the slot on both nodes, the old container keeps serving while
//! the new one starts, and [`DrainStep::Release`] clears `previous` once the replica reports
//! ready on its new node (the old node then stops its container). Rules:
//! - Moves in flight (slots with `previous`) are at most the workload's rolling-update batch,
//!   `max(max_unavailable, max_surge, 1)`; the next batch starts as the previous one is released.
//! - A target is a live, active (not cordoned or draining) node that the workload's spread and
//!   node selector allow, with the fewest replicas of the workload, then of all workloads, then
//!   the lowest rank ([`super::place`]'s order). With no such node the replica stays put.
//! - A replica that is not ready on the draining node (or whose node is down) has nothing to
//!   keep: it moves without `previous`. A move whose old node goes down is released at once.
//! - [`super::plan_rollout`] does not update a slot while it moves.

use std::collections::BTreeMap;

use super::placement::{
    Availability, NodeId, NodeInfo, Placement, Workload, active_only, least_loaded, live_eligible,
};
use super::rollout::ReplicaState;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DrainStep {
    /// Place `index` on `to`; with `keep_old` its current node keeps running the old container
    /// until the new one is ready.
    Move {
        index: u32,
        to: NodeId,
        keep_old: bool,
    },
    /// The move of `index` is complete: its old container may stop.
    Release { index: u32 },
}

/// The drain steps for `workload` now (see the module doc). `status` maps replica index to
/// what the node of its slot reports; `load` counts the other workloads' replicas per node.
pub fn plan_drain(
    workload: &Workload,
    placement: &Placement,
    status: &BTreeMap<u32, ReplicaState>,
    nodes: &[NodeInfo],
    load: &BTreeMap<NodeId, u32>,
) -> Vec<DrainStep> {
    // By id once: not a scan of every node per slot (1,000 nodes, 1,000 slots per object).
    let by_id: BTreeMap<NodeId, &NodeInfo> = nodes.iter().map(|n| (n.id, n)).collect();
    let node = |id: NodeId| by_id.get(&id).copied();
    let live = |id: NodeId| node(id).is_some_and(|n| n.live);
    let ready = |index: &u32, generation: u64| {
        status
            .get(index)
            .is_some_and(|s| s.ready && s.generation == generation)
    };
    let mut steps = Vec::new();
    let mut in_flight = 0u32;
    for (index, slot) in &placement.replicas {
        if let Some(old) = slot.previous {
            if ready(index, slot.generation) || !live(old) {
                steps.push(DrainStep::Release { index: *index });
            } else {
                in_flight += 1;
            }
        }
    }
    let leaving: Vec<(&u32, NodeId, u64)> = placement
        .replicas
        .iter()
        .filter(|(_, s)| {
            s.previous.is_none()
                && node(s.node).is_some_and(|n| n.availability == Availability::Draining)
        })
        .map(|(i, s)| (i, s.node, s.generation))
        .collect();
    if leaving.is_empty() {
        return steps;
    }
    let Ok(candidates) = live_eligible(workload, nodes) else {
        return steps;
    };
    let targets = active_only(&candidates, nodes);
    let batch = workload.max_unavailable.max(workload.max_surge).max(1);
    let mut budget = batch.saturating_sub(in_flight);
    let mut count = placement.per_node();
    for (index, from, generation) in leaving {
        if budget == 0 {
            break;
        }
        let Some(to) = least_loaded(&targets, &count, load) else {
            break;
        };
        let keep_old = live(from) && ready(index, generation);
        steps.push(DrainStep::Move {
            index: *index,
            to,
            keep_old,
        });
        *count.entry(to).or_insert(0) += 1;
        if let Some(c) = count.get_mut(&from) {
            *c = c.saturating_sub(1);
        }
        budget -= 1;
    }
    steps
}

/// The placement after `steps`.
pub fn apply_drain(placement: &Placement, steps: &[DrainStep]) -> Placement {
    let mut next = placement.clone();
    for step in steps {
        match *step {
            DrainStep::Move {
                index,
                to,
                keep_old,
            } => {
                if let Some(slot) = next.replicas.get_mut(&index) {
                    slot.previous = keep_old.then_some(slot.node);
                    slot.node = to;
                }
            }
            DrainStep::Release { index } => {
                if let Some(slot) = next.replicas.get_mut(&index) {
                    slot.previous = None;
                }
            }
        }
    }
    next
}

#[cfg(test)]
mod tests;

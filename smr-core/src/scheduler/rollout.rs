//! Rolling update across the cluster, planned by the Raft leader.
//!
//! A replica's container is named `<group>-<name>-<index>`, so the new container of an index
//! cannot exist next to the old one: replacing an index means its old container goes, then its
//! new one comes up. A rollout therefore advances the generation of placement slots one batch
//! at a time, and each agent's [`super::plan_node`] replaces the container of a slot whose
//! generation changed (Stop, Remove, Create).
//!
//! [`plan_rollout`] is called whenever replica readiness or the placement changes; it returns
//! the [`RolloutStep`]s to apply now ([`apply_rollout`]), an empty list while it waits. Rules:
//! - A slot is "available" when its replica reports ready at the slot's generation. At all
//!   times at least `replicas - max_unavailable` slots stay available.
//! - Slots of an old generation that are not available anyway are updated at once (it costs no
//!   availability); available ones are updated lowest index first while the budget allows.
//!   With `max_surge = 0` and the default `max_unavailable = 1` that is: replace one index,
//!   wait until its new replica is ready, replace the next. The next old replica goes only once
//!   the previous new one is ready.
//! - `max_surge > 0` adds up to that many temporary surge slots (indexes above `replicas`, at
//!   the new generation, on the node of an index still to update). Their ready replicas count as
//!   available, so with `max_unavailable = 0, max_surge = 1` the new surge replica is ready
//!   before any old one goes. Surge slots are removed once every regular slot is updated and
//!   ready; a surge slot of an outdated generation is removed at once.
//! - `max_unavailable = 0` with `max_surge = 0` could never progress; it is taken as
//!   `max_unavailable = 1`.
//!
//! The caller must not report replicas of dead nodes as ready. Then a node failure during a
//! rollout pauses the replacement of available replicas until [`super::place`] has moved the
//! lost ones and they are ready again.

use std::collections::BTreeMap;

use super::placement::{NodeId, Placement, ReplicaSlot, Workload};

/// What a replica reports: the generation it runs and whether it is ready.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplicaState {
    pub generation: u64,
    pub ready: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RolloutStep {
    /// Set the generation of a regular slot (its replica gets replaced).
    Update {
        index: u32,
        generation: u64,
    },
    /// Add a temporary surge slot.
    AddSurge {
        index: u32,
        node: NodeId,
        generation: u64,
    },
    RemoveSurge {
        index: u32,
    },
}

/// The next rollout steps for `workload` (see the module doc). `status` maps replica index to
/// what that replica reports; a missing index counts as not ready.
pub fn plan_rollout(
    workload: &Workload,
    placement: &Placement,
    status: &BTreeMap<u32, ReplicaState>,
) -> Vec<RolloutStep> {
    let target = workload.generation;
    let available = |index: &u32, slot: &ReplicaSlot| {
        status
            .get(index)
            .is_some_and(|s| s.ready && s.generation == slot.generation)
    };
    let mut steps = Vec::new();

    let (surge, regular): (Vec<_>, Vec<_>) = placement.replicas.iter().partition(|(_, s)| s.surge);
    // A slot moving off a draining node is updated once its move completed.
    let pending: Vec<(&u32, &ReplicaSlot)> = regular
        .iter()
        .copied()
        .filter(|(_, s)| s.generation != target && s.previous.is_none())
        .collect();

    // Outdated surge slots go at once; current ones stay until the rollout is complete.
    let mut current_surge = 0u32;
    for (index, slot) in &surge {
        if slot.generation != target {
            steps.push(RolloutStep::RemoveSurge { index: **index });
        } else {
            current_surge += 1;
        }
    }
    if pending.is_empty() {
        if regular.iter().all(|(i, s)| available(i, s)) {
            for (index, slot) in &surge {
                if slot.generation == target {
                    steps.push(RolloutStep::RemoveSurge { index: **index });
                }
            }
        }
        return steps;
    }

    // Surge slots up to max_surge (never more than there are slots left to update).
    let want_surge = workload.max_surge.min(pending.len() as u32);
    let mut next_index = workload.replicas;
    for n in current_surge..want_surge {
        let Some(free) =
            (next_index.saturating_add(1)..=u32::MAX).find(|i| !placement.replicas.contains_key(i))
        else {
            break;
        };
        next_index = free;
        let (_, slot) = pending[n as usize % pending.len()];
        steps.push(RolloutStep::AddSurge {
            index: next_index,
            node: slot.node,
            generation: target,
        });
    }

    let max_unavailable = if workload.max_unavailable == 0 && workload.max_surge == 0 {
        1
    } else {
        workload.max_unavailable
    };
    let min_available = workload.replicas.saturating_sub(max_unavailable);
    let mut available_now = placement
        .replicas
        .iter()
        .filter(|(i, s)| (!s.surge || s.generation == target) && available(i, s))
        .count() as u32;
    let (ready_pending, unready_pending): (Vec<_>, Vec<_>) =
        pending.iter().partition(|(i, s)| available(i, s));
    for (index, _) in unready_pending {
        steps.push(RolloutStep::Update {
            index: *index,
            generation: target,
        });
    }
    for (index, _) in ready_pending {
        if available_now <= min_available {
            break;
        }
        available_now -= 1;
        steps.push(RolloutStep::Update {
            index: *index,
            generation: target,
        });
    }
    steps
}

/// The placement after `steps`.
pub fn apply_rollout(placement: &Placement, steps: &[RolloutStep]) -> Placement {
    let mut next = placement.clone();
    for step in steps {
        match *step {
            RolloutStep::Update { index, generation } => {
                if let Some(slot) = next.replicas.get_mut(&index) {
                    slot.generation = generation;
                }
            }
            RolloutStep::AddSurge {
                index,
                node,
                generation,
            } => {
                next.replicas.insert(
                    index,
                    ReplicaSlot {
                        node,
                        generation,
                        surge: true,
                        previous: None,
                    },
                );
            }
            RolloutStep::RemoveSurge { index } => {
                if next.replicas.get(&index).is_some_and(|s| s.surge) {
                    next.replicas.remove(&index);
                }
            }
        }
    }
    next
}

#[cfg(test)]
mod tests;

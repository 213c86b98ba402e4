use std::collections::BTreeMap;

use super::*;
use crate::scheduler::placement::{ReplicaSlot, Workload};

fn nodes(availability: &[Availability]) -> Vec<NodeInfo> {
    availability
        .iter()
        .enumerate()
        .map(|(i, a)| NodeInfo {
            id: i as u64 + 1,
            name: format!("n{}", i + 1),
            labels: BTreeMap::new(),
            live: true,
            last_seen_ms: 0,
            availability: *a,
        })
        .collect()
}

fn placement(slots: &[(u32, NodeId, Option<NodeId>)]) -> Placement {
    Placement {
        replicas: slots
            .iter()
            .map(|&(i, node, previous)| {
                let mut slot = ReplicaSlot::new(node, 1);
                slot.previous = previous;
                (i, slot)
            })
            .collect(),
    }
}

fn ready(indexes: &[u32]) -> BTreeMap<u32, ReplicaState> {
    indexes
        .iter()
        .map(|&i| {
            (
                i,
                ReplicaState {
                    generation: 1,
                    ready: true,
                },
            )
        })
        .collect()
}

use Availability::{Active, Cordoned, Draining};

#[test]
fn one_ready_replica_moves_at_a_time_keeping_the_old_one() {
    let w = Workload::new("g", "n", 3);
    let ns = nodes(&[Draining, Active, Active]);
    let p = placement(&[(1, 1, None), (2, 2, None), (3, 1, None)]);
    let steps = plan_drain(&w, &p, &ready(&[1, 2, 3]), &ns, &BTreeMap::new());
    // Node 3 holds none of the workload: it gets index 1; index 3 waits for the next batch.
    assert_eq!(
        steps,
        vec![DrainStep::Move {
            index: 1,
            to: 3,
            keep_old: true
        }]
    );
    let p = apply_drain(&p, &steps);
    assert_eq!(p, placement(&[(1, 3, Some(1)), (2, 2, None), (3, 1, None)]));
    // Node 1 keeps running index 1 until it is ready on node 3.
    let on_1: Vec<u32> = p.on_node(1).map(|(i, _)| i).collect();
    assert_eq!(on_1, vec![1, 3]);

    // Not ready on node 3 yet: nothing happens.
    assert_eq!(
        plan_drain(&w, &p, &ready(&[2, 3]), &ns, &BTreeMap::new()),
        vec![]
    );
    // Ready: released, and the next batch starts in the same pass.
    let steps = plan_drain(&w, &p, &ready(&[1, 2, 3]), &ns, &BTreeMap::new());
    assert_eq!(
        steps,
        vec![
            DrainStep::Release { index: 1 },
            DrainStep::Move {
                index: 3,
                to: 2,
                keep_old: true
            }
        ]
    );
    let p = apply_drain(&p, &steps);
    assert_eq!(p, placement(&[(1, 3, None), (2, 2, None), (3, 2, Some(1))]));
    let p = apply_drain(
        &p,
        &plan_drain(&w, &p, &ready(&[1, 2, 3]), &ns, &BTreeMap::new()),
    );
    assert_eq!(p, placement(&[(1, 3, None), (2, 2, None), (3, 2, None)]));
    assert_eq!(p.on_node(1).count(), 0, "node 1 is empty");
    assert_eq!(
        plan_drain(&w, &p, &ready(&[1, 2, 3]), &ns, &BTreeMap::new()),
        vec![]
    );
}

#[test]
fn the_batch_is_the_rolling_update_limit_and_unready_replicas_keep_nothing() {
    let mut w = Workload::new("g", "n", 4);
    w.max_unavailable = 2;
    let ns = nodes(&[Draining, Active]);
    let p = placement(&[(1, 1, None), (2, 1, None), (3, 1, None), (4, 2, None)]);
    let steps = plan_drain(&w, &p, &ready(&[1, 4]), &ns, &BTreeMap::new());
    assert_eq!(
        steps,
        vec![
            DrainStep::Move {
                index: 1,
                to: 2,
                keep_old: true
            },
            DrainStep::Move {
                index: 2,
                to: 2,
                keep_old: false
            },
        ]
    );
}

#[test]
fn cordoned_nodes_are_no_targets_and_a_down_old_node_releases_at_once() {
    let w = Workload::new("g", "n", 2);
    let ns = nodes(&[Draining, Cordoned]);
    let p = placement(&[(1, 1, None), (2, 2, None)]);
    assert_eq!(
        plan_drain(&w, &p, &ready(&[1, 2]), &ns, &BTreeMap::new()),
        vec![],
        "no active node: the replica stays"
    );
    let mut ns = nodes(&[Draining, Active]);
    ns[0].live = false;
    let p = placement(&[(1, 2, Some(1)), (2, 1, None)]);
    assert_eq!(
        plan_drain(&w, &p, &ready(&[]), &ns, &BTreeMap::new()),
        vec![
            DrainStep::Release { index: 1 },
            DrainStep::Move {
                index: 2,
                to: 2,
                keep_old: false
            }
        ]
    );
}

#[test]
fn a_moving_slot_is_not_updated_by_a_rollout() {
    let mut w = Workload::new("g", "n", 2);
    w.generation = 2;
    let p = placement(&[(1, 2, Some(1)), (2, 2, None)]);
    let steps = crate::scheduler::plan_rollout(&w, &p, &ready(&[1, 2]));
    assert_eq!(
        steps,
        vec![crate::scheduler::RolloutStep::Update {
            index: 2,
            generation: 2
        }]
    );
}

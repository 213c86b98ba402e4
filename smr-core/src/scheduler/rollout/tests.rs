use super::*;
use crate::scheduler::place;
use crate::scheduler::placement::NodeInfo;

fn nodes(n: u64) -> Vec<NodeInfo> {
    (1..=n)
        .map(|id| NodeInfo {
            id,
            name: format!("n{id}"),
            labels: BTreeMap::new(),
            live: true,
            last_seen_ms: 0,
            availability: Default::default(),
        })
        .collect()
}

/// A workload at generation 1 placed on `n` nodes, every replica ready; then bumped to 2.
fn setup(
    replicas: u32,
    n: u64,
    max_unavailable: u32,
    max_surge: u32,
) -> (Workload, Placement, BTreeMap<u32, ReplicaState>) {
    let mut w = Workload::new("web", "api", replicas);
    let p = place(&w, &nodes(n), None).unwrap();
    let status = p
        .replicas
        .keys()
        .map(|&i| {
            (
                i,
                ReplicaState {
                    generation: 1,
                    ready: true,
                },
            )
        })
        .collect();
    w.generation = 2;
    w.max_unavailable = max_unavailable;
    w.max_surge = max_surge;
    (w, p, status)
}

fn update(index: u32) -> RolloutStep {
    RolloutStep::Update {
        index,
        generation: 2,
    }
}

fn state(generation: u64, ready: bool) -> ReplicaState {
    ReplicaState { generation, ready }
}

#[test]
fn one_index_at_a_time_waiting_for_readiness() {
    let (w, p, mut status) = setup(3, 3, 1, 0);
    let steps = plan_rollout(&w, &p, &status);
    assert_eq!(steps, vec![update(1)]);
    let p = apply_rollout(&p, &steps);
    assert_eq!(p.replicas[&1], ReplicaSlot::new(1, 2));
    // The old replica still reports ready, but not at the slot's generation: wait.
    assert_eq!(plan_rollout(&w, &p, &status), vec![]);
    status.insert(1, state(2, false));
    assert_eq!(plan_rollout(&w, &p, &status), vec![]);
    status.insert(1, state(2, true));
    let steps = plan_rollout(&w, &p, &status);
    assert_eq!(steps, vec![update(2)]);
    let p = apply_rollout(&p, &steps);
    status.insert(2, state(2, true));
    let steps = plan_rollout(&w, &p, &status);
    assert_eq!(steps, vec![update(3)]);
    let p = apply_rollout(&p, &steps);
    status.insert(3, state(2, true));
    assert_eq!(plan_rollout(&w, &p, &status), vec![]);
    assert!(p.replicas.values().all(|s| s.generation == 2 && !s.surge));
}

#[test]
fn larger_budget_updates_several_and_unready_old_replicas_go_first() {
    let (w, p, mut status) = setup(5, 2, 2, 0);
    assert_eq!(plan_rollout(&w, &p, &status), vec![update(1), update(2)]);
    // Replica 4 is down anyway: replacing it costs nothing, and it uses one unit of the budget.
    status.insert(4, state(1, false));
    assert_eq!(plan_rollout(&w, &p, &status), vec![update(4), update(1)]);
    status.remove(&2);
    assert_eq!(plan_rollout(&w, &p, &status), vec![update(2), update(4)]);
}

#[test]
fn zero_unavailable_without_surge_is_taken_as_one() {
    let (w, p, status) = setup(2, 2, 0, 0);
    assert_eq!(plan_rollout(&w, &p, &status), vec![update(1)]);
}

#[test]
fn surge_replica_is_ready_before_an_old_one_goes() {
    let (w, p, mut status) = setup(2, 2, 0, 1);
    let steps = plan_rollout(&w, &p, &status);
    assert_eq!(
        steps,
        vec![RolloutStep::AddSurge {
            index: 3,
            node: 1,
            generation: 2
        }]
    );
    let p = apply_rollout(&p, &steps);
    assert_eq!(plan_rollout(&w, &p, &status), vec![]);
    status.insert(3, state(2, true));
    let steps = plan_rollout(&w, &p, &status);
    assert_eq!(steps, vec![update(1)]);
    let p = apply_rollout(&p, &steps);
    status.insert(1, state(2, true));
    let steps = plan_rollout(&w, &p, &status);
    assert_eq!(steps, vec![update(2)]);
    let p = apply_rollout(&p, &steps);
    // Index 2 not ready yet: the surge replica stays.
    assert_eq!(plan_rollout(&w, &p, &status), vec![]);
    status.insert(2, state(2, true));
    let steps = plan_rollout(&w, &p, &status);
    assert_eq!(steps, vec![RolloutStep::RemoveSurge { index: 3 }]);
    let p = apply_rollout(&p, &steps);
    assert_eq!(
        p.replicas,
        BTreeMap::from([(1, ReplicaSlot::new(1, 2)), (2, ReplicaSlot::new(2, 2))])
    );
}

#[test]
fn outdated_surge_slot_is_dropped_and_replaced() {
    let (mut w, p, status) = setup(2, 2, 1, 1);
    let p = apply_rollout(&p, &plan_rollout(&w, &p, &status));
    assert_eq!(p.replicas[&3].generation, 2);
    w.generation = 3;
    assert_eq!(
        plan_rollout(&w, &p, &status),
        vec![
            RolloutStep::RemoveSurge { index: 3 },
            RolloutStep::AddSurge {
                index: 4,
                node: 1,
                generation: 3
            },
            RolloutStep::Update {
                index: 1,
                generation: 3
            },
        ]
    );
}

/// Deterministic generator for the simulation (Knuth's MMIX LCG).
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

fn available(p: &Placement, status: &BTreeMap<u32, ReplicaState>) -> u32 {
    p.replicas
        .iter()
        .filter(|(i, s)| {
            status
                .get(i)
                .is_some_and(|r| r.ready && r.generation == s.generation)
        })
        .count() as u32
}

#[test]
fn simulated_rollouts_never_exceed_max_unavailable_and_finish() {
    let mut rng = Lcg(7);
    for replicas in 1..=6 {
        for max_unavailable in 0..=3 {
            for max_surge in 0..=2 {
                let (w, mut p, mut status) = setup(replicas, 3, max_unavailable, max_surge);
                let budget = if max_unavailable == 0 && max_surge == 0 {
                    1
                } else {
                    max_unavailable
                };
                let min_available = replicas.saturating_sub(budget);
                let ctx =
                    format!("replicas {replicas} unavailable {max_unavailable} surge {max_surge}");
                let mut finished = false;
                for _tick in 0..500 {
                    let steps = plan_rollout(&w, &p, &status);
                    p = apply_rollout(&p, &steps);
                    // Agents replace every container whose slot generation changed (it is
                    // unready until it starts), and drop removed slots.
                    status.retain(|i, _| p.replicas.contains_key(i));
                    for (i, slot) in &p.replicas {
                        if status
                            .get(i)
                            .is_none_or(|s| s.generation != slot.generation)
                        {
                            status.insert(*i, state(slot.generation, false));
                        }
                    }
                    assert!(
                        available(&p, &status) >= min_available,
                        "{ctx}: {p:?} {status:?}"
                    );
                    if max_surge == 0 {
                        let unready = p.replicas.len() as u32 - available(&p, &status);
                        assert!(unready <= budget, "{ctx}");
                    }
                    assert!(p.replicas.len() as u32 <= replicas + max_surge, "{ctx}");
                    if p.replicas.len() as u32 == replicas
                        && p.replicas.values().all(|s| s.generation == 2 && !s.surge)
                        && available(&p, &status) == replicas
                    {
                        finished = true;
                        break;
                    }
                    // Starting replicas become ready at random.
                    for s in status.values_mut() {
                        if !s.ready && rng.below(3) == 0 {
                            s.ready = true;
                        }
                    }
                }
                assert!(finished, "{ctx}: rollout did not finish: {p:?} {status:?}");
            }
        }
    }
}

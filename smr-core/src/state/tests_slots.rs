//! The per-node slot index (issue 14) answers exactly what a scan of every placement answers,
//! through random placements, moves, deletions, clones held by readers and serialization.

use super::tests::{cmd, obj};
use super::*;
use crate::scheduler::{Placement, ReplicaSlot};

const NODES: NodeId = 6;
const OBJECTS: usize = 8;

/// What [`ClusterState::slots_on`] answered before the index: a scan of every placement.
fn scan(state: &ClusterState, node: NodeId) -> Vec<(ObjectKey, Vec<u32>)> {
    state
        .placements
        .iter()
        .filter_map(|(key, placement)| {
            let indexes: Vec<u32> = placement.on_node(node).map(|(i, _)| i).collect();
            (!indexes.is_empty()).then(|| (key.clone(), indexes))
        })
        .collect()
}

fn indexed(state: &ClusterState, node: NodeId) -> Vec<(ObjectKey, Vec<u32>)> {
    state
        .slots_on(node)
        .iter()
        .map(|(k, v)| (k.clone(), v.iter().copied().collect()))
        .collect()
}

fn assert_same(state: &ClusterState, step: usize) {
    for node in 0..=NODES + 1 {
        assert_eq!(
            indexed(state, node),
            scan(state, node),
            "step {step}, node {node}"
        );
        assert_eq!(
            state.slot_count_on(node),
            scan(state, node)
                .iter()
                .map(|(_, v)| v.len())
                .sum::<usize>(),
            "step {step}, node {node}: count"
        );
    }
    let mut placed = std::collections::BTreeMap::new();
    for slot in state.placements.values().flat_map(|p| p.replicas.values()) {
        *placed.entry(slot.node).or_insert(0u32) += 1;
    }
    assert_eq!(state.placed_counts(), placed, "step {step}: placed counts");
}

/// A small deterministic generator (xorshift), so a failure repeats.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn name(i: usize) -> String {
    format!("o{i}")
}

fn random_placement(rng: &mut Rng) -> Placement {
    let mut replicas = std::collections::BTreeMap::new();
    for _ in 0..rng.below(7) {
        let node = 1 + rng.below(NODES) as NodeId;
        let previous = match rng.below(4) {
            0 => Some(1 + rng.below(NODES) as NodeId),
            _ => None,
        };
        replicas.insert(
            1 + rng.below(9) as u32,
            ReplicaSlot {
                node,
                generation: 1 + rng.below(3),
                surge: rng.below(5) == 0,
                previous,
            },
        );
    }
    Placement { replicas }
}

#[test]
fn slots_on_equals_the_scan_of_every_placement_through_random_changes() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut state = ClusterState::default();
    let objects: Vec<Object> = (0..OBJECTS).map(|i| obj(&name(i), "a")).collect();
    state.apply(&cmd(
        "apply",
        Op::Apply {
            objects,
            owner: None,
        },
    ));
    // Versions readers held at some point: each must keep answering for its own placements.
    let mut held: Vec<ClusterState> = Vec::new();
    for step in 0..2_000 {
        let i = rng.below(OBJECTS as u64) as usize;
        let key = obj(&name(i), "a").key();
        let op = match rng.below(10) {
            0 => Op::Delete {
                keys: vec![key.clone()],
            },
            1 => Op::Apply {
                objects: vec![obj(&name(i), if rng.below(2) == 0 { "a" } else { "b" })],
                owner: None,
            },
            2 => Op::Noop,
            _ => {
                let updates = (0..1 + rng.below(3))
                    .map(|_| {
                        let k = obj(&name(rng.below(OBJECTS as u64) as usize), "a").key();
                        let generation = state.objects.get(&k).map_or(1, |o| o.generation);
                        PlacementUpdate {
                            key: k,
                            // Now and then a stale decision, which the state drops.
                            generation: if rng.below(8) == 0 {
                                generation + 1
                            } else {
                                generation
                            },
                            placement: (rng.below(6) != 0).then(|| random_placement(&mut rng)),
                            error: None,
                        }
                    })
                    .collect();
                Op::Place { updates }
            }
        };
        state.apply(&cmd(&format!("op{step}"), op));
        assert_same(&state, step);
        match rng.below(20) {
            0 => held.push(state.clone()),
            // A state read back (a snapshot, the API): the index is built on first use.
            1 => {
                let json = serde_json::to_string(&state).expect("serialize");
                let read: ClusterState = serde_json::from_str(&json).expect("deserialize");
                assert_same(&read, step);
            }
            _ => {}
        }
    }
    assert!(held.len() > 10, "readers held versions");
    for (i, version) in held.iter().enumerate() {
        assert_same(version, i);
    }
}

#[test]
fn placements_changed_without_an_apply_are_answered_by_a_scan_not_the_stale_index() {
    let mut state = ClusterState::default();
    state.apply(&cmd(
        "apply",
        Op::Apply {
            objects: vec![obj("x", "a")],
            owner: None,
        },
    ));
    let key = obj("x", "a").key();
    let slot = |node| ReplicaSlot {
        node,
        generation: 1,
        surge: false,
        previous: None,
    };
    state.apply(&cmd(
        "place",
        Op::Place {
            updates: vec![PlacementUpdate {
                key: key.clone(),
                generation: 1,
                placement: Some(Placement {
                    replicas: [(1, slot(1)), (2, slot(2))].into(),
                }),
                error: None,
            }],
        },
    ));
    assert_eq!(indexed(&state, 1), vec![(key.clone(), vec![1])]);
    state.placements.insert(
        key.clone(),
        Placement {
            replicas: [(1, slot(2)), (2, slot(2))].into(),
        },
    );
    assert_eq!(indexed(&state, 1), vec![]);
    assert_eq!(indexed(&state, 2), vec![(key.clone(), vec![1, 2])]);
    // The next apply brings the index up to date.
    state.apply(&cmd("noop", Op::Noop));
    assert_eq!(indexed(&state, 2), vec![(key, vec![1, 2])]);
    assert_eq!(state.slot_count_on(2), 2);
    assert_eq!(state.slot_count_on(1), 0);
}

#[test]
fn the_index_is_not_serialized_and_states_compare_without_it() {
    let mut state = ClusterState::default();
    state.apply(&cmd(
        "apply",
        Op::Apply {
            objects: vec![obj("x", "a")],
            owner: None,
        },
    ));
    let fresh: ClusterState =
        serde_json::from_str(&serde_json::to_string(&state).expect("json")).expect("read");
    assert!(
        !serde_json::to_string(&state)
            .expect("json")
            .contains("slot_index")
    );
    assert_eq!(fresh, state);
}

use super::*;
use crate::definitions;
use crate::state::{Command, CommandResult, NodeRecord, NodeReport, Op, ReplicaReport};

fn apply(state: &mut ClusterState, op: Op) -> CommandResult {
    state.apply(&Command {
        op_id: String::new(),
        at_ms: 0,
        op,
    })
}

fn cluster(nodes: usize, yaml: &str) -> ClusterState {
    let mut state = ClusterState::default();
    for i in 1..=nodes {
        let node = NodeRecord {
            id: 0,
            name: format!("n{i}"),
            host: String::new(),
            domain: String::new(),
            ip: format!("10.0.0.{i}"),
            api_port: 1443,
            raft_port: 9212,
            labels: Default::default(),
            joined_ms: 0,
            schedulable: true,
            lease: None,
            vtep_mac: None,
            public_ip: None,
            wg_port: None,
            wg_public_key: None,
        };
        apply(&mut state, Op::RegisterNode { node });
    }
    let objects = definitions::parse_str("t.yaml", yaml).expect("valid");
    apply(
        &mut state,
        Op::Apply {
            objects,
            owner: None,
        },
    );
    state
}

const FIVE: &str = "kind: containers\nprefix: simplecontainer.io/v1\nmeta:\n  group: g\n  name: n\nspec:\n  image: busybox\n  replicas: 5\n";

/// A running replica's report.
fn running(
    key: &crate::definitions::ObjectKey,
    index: u32,
    generation: u64,
    ready: bool,
) -> ReplicaReport {
    ReplicaReport {
        key: key.clone(),
        index,
        name: format!("{}-{}-{index}", key.group, key.name),
        container_id: None,
        phase: "running".into(),
        ready,
        ip: None,
        restarts: 0,
        generation,
        image: String::new(),
        started_ms: None,
        message: None,
        ips: Default::default(),
    }
}

fn all_live(state: &ClusterState) -> BTreeMap<NodeId, bool> {
    state.nodes.keys().map(|id| (*id, true)).collect()
}

fn per_node(state: &ClusterState) -> BTreeMap<NodeId, u32> {
    state.placements.values().next().expect("placed").per_node()
}

#[test]
fn places_new_objects_then_is_quiet() {
    let mut state = cluster(3, FIVE);
    let updates = plan(&state, &all_live(&state));
    assert_eq!(updates.len(), 1);
    apply(&mut state, Op::Place { updates });
    assert_eq!(per_node(&state), BTreeMap::from([(1, 2), (2, 2), (3, 1)]));
    assert!(
        plan(&state, &all_live(&state)).is_empty(),
        "nothing to do once placed"
    );
}

#[test]
fn dead_node_replicas_move_to_live_nodes() {
    let mut state = cluster(3, FIVE);
    let updates = plan(&state, &all_live(&state));
    apply(&mut state, Op::Place { updates });
    let mut live = all_live(&state);
    live.insert(2, false);
    let updates = plan(&state, &live);
    apply(&mut state, Op::Place { updates });
    let counts = per_node(&state);
    assert_eq!(counts.get(&2), None, "{counts:?}");
    assert_eq!(counts.values().sum::<u32>(), 5);
}

/// Objects placed in the same pass see each other's decisions: four objects of one replica on
/// two nodes go two and two, not all four on the first node; a dead node's replicas of several
/// objects spread over the live nodes together.
#[test]
fn objects_placed_in_one_pass_spread_over_the_nodes_together() {
    let one = |name: &str| {
        format!(
            "kind: containers\nprefix: simplecontainer.io/v1\nmeta:\n  group: g\n  name: {name}\nspec:\n  image: busybox\n  replicas: 1\n"
        )
    };
    let yaml: Vec<String> = ["a", "b", "c", "d"].iter().map(|n| one(n)).collect();
    let mut state = cluster(2, &yaml.join("---\n"));
    let updates = plan(&state, &all_live(&state));
    apply(&mut state, Op::Place { updates });
    assert_eq!(state.placed_counts(), BTreeMap::from([(1, 2), (2, 2)]));

    // Three nodes, six objects of one replica: two on each. Node 3 dies: its two replicas go
    // one to node 1 and one to node 2.
    let yaml: Vec<String> = ["a", "b", "c", "d", "e", "f"]
        .iter()
        .map(|n| one(n))
        .collect();
    let mut state = cluster(3, &yaml.join("---\n"));
    let updates = plan(&state, &all_live(&state));
    apply(&mut state, Op::Place { updates });
    assert_eq!(
        state.placed_counts(),
        BTreeMap::from([(1, 2), (2, 2), (3, 2)])
    );
    let mut live = all_live(&state);
    live.insert(3, false);
    let updates = plan(&state, &live);
    apply(&mut state, Op::Place { updates });
    assert_eq!(state.placed_counts(), BTreeMap::from([(1, 3), (2, 3)]));
}

#[test]
fn deleted_objects_lose_their_placement() {
    let mut state = cluster(2, FIVE);
    let updates = plan(&state, &all_live(&state));
    apply(&mut state, Op::Place { updates });
    let key = state.objects.keys().next().unwrap().clone();
    apply(&mut state, Op::Delete { keys: vec![key] });
    assert!(state.placements.is_empty());
    assert!(plan(&state, &all_live(&state)).is_empty());
}

#[test]
fn unplaceable_objects_get_an_error_once() {
    let yaml = "kind: containers\nprefix: simplecontainer.io/v1\nmeta:\n  group: g\n  name: n\nspec:\n  image: busybox\n  nodeSelector:\n    disk: ssd\n";
    let mut state = cluster(2, yaml);
    let updates = plan(&state, &all_live(&state));
    assert!(
        updates[0]
            .error
            .as_deref()
            .is_some_and(|e| e.contains("disk")),
        "{updates:?}"
    );
    apply(&mut state, Op::Place { updates });
    assert!(plan(&state, &all_live(&state)).is_empty());
}

#[test]
fn a_template_change_rolls_one_replica_at_a_time() {
    let mut state = cluster(2, FIVE.replace("replicas: 5", "replicas: 2").as_str());
    let updates = plan(&state, &all_live(&state));
    apply(&mut state, Op::Place { updates });
    let key = state.objects.keys().next().unwrap().clone();
    let report = |state: &mut ClusterState, node: NodeId, seq: u64, generation: u64| {
        let placement = state.placements[&key].clone();
        let replicas = placement
            .on_node(node)
            .map(|(index, slot)| {
                running(&key, index, slot.generation, slot.generation == generation)
            })
            .collect();
        apply(
            state,
            Op::Report {
                node,
                report: NodeReport {
                    seq,
                    at_ms: 0,
                    replicas,
                },
            },
        );
    };
    report(&mut state, 1, 1, 1);
    report(&mut state, 2, 1, 1);
    let objects = definitions::parse_str(
        "t.yaml",
        &FIVE
            .replace("replicas: 5", "replicas: 2")
            .replace("busybox", "nginx"),
    )
    .unwrap();
    apply(
        &mut state,
        Op::Apply {
            objects,
            owner: None,
        },
    );
    let updates = plan(&state, &all_live(&state));
    apply(&mut state, Op::Place { updates });
    let generations: Vec<u64> = state.placements[&key]
        .replicas
        .values()
        .map(|s| s.generation)
        .collect();
    assert_eq!(generations, vec![2, 1], "one replica at a time");
    // Until the new replica is ready, nothing more moves.
    assert!(plan(&state, &all_live(&state)).is_empty());
}

#[test]
fn liveness_uses_report_sequence_changes() {
    let mut state = cluster(2, FIVE);
    let t0 = Instant::now();
    let mut liveness = Liveness::new(Duration::from_secs(15), t0);
    assert_eq!(
        liveness.observe(&state, &BTreeMap::new(), t0),
        BTreeMap::from([(1, true), (2, true)])
    );
    apply(
        &mut state,
        Op::Report {
            node: 1,
            report: NodeReport {
                seq: 1,
                at_ms: 0,
                replicas: vec![],
            },
        },
    );
    let t1 = t0 + Duration::from_secs(10);
    liveness.observe(&state, &BTreeMap::new(), t1);
    let t2 = t0 + Duration::from_secs(20);
    assert_eq!(
        liveness.observe(&state, &BTreeMap::new(), t2),
        BTreeMap::from([(1, true), (2, false)])
    );
}

#[test]
fn heartbeats_keep_nodes_live_without_any_report() {
    let state = cluster(3, FIVE);
    let t0 = Instant::now();
    let s = Duration::from_secs;
    let mut liveness = Liveness::new(s(15), t0);
    let mut beats = crate::scheduler::heartbeat::Heartbeats::default();
    // Nodes 1 and 2 beat every 3 s for 30 s; node 3 never does.
    for step in 1..=10 {
        beats.beat(1, t0 + s(3 * step));
        beats.beat(2, t0 + s(3 * step));
    }
    // Node 2 then falls silent; node 1 goes on.
    for step in 11..=20 {
        beats.beat(1, t0 + s(3 * step));
    }
    let mut at = |secs| liveness_at(&mut liveness, &state, &beats, t0 + s(secs));
    // The grace period of a new leader: all live until one timeout after it took over.
    assert_eq!(at(14), vec![(1, true), (2, true), (3, true)]);
    // Exactly one timeout after the takeover, node 3 (never heard from) is dead.
    assert_eq!(at(15), vec![(1, true), (2, true), (3, false)]);
    // Node 2's last beat was at 30 s: live before 45 s, dead from 45 s on.
    assert_eq!(at(44), vec![(1, true), (2, true), (3, false)]);
    assert_eq!(at(45), vec![(1, true), (2, false), (3, false)]);
    assert_eq!(at(60), vec![(1, true), (2, false), (3, false)]);
    assert_eq!(at(75), vec![(1, false), (2, false), (3, false)]);
}

#[test]
fn a_heartbeat_older_than_the_takeover_does_not_shorten_the_grace_period() {
    let state = cluster(1, FIVE);
    let t0 = Instant::now();
    let s = Duration::from_secs;
    let mut beats = crate::scheduler::heartbeat::Heartbeats::default();
    beats.beat(1, t0);
    // This node became leader (again) 100 s after that beat, which it kept from an earlier term.
    let mut liveness = Liveness::new(s(15), t0 + s(100));
    let at = |l: &mut Liveness, secs| liveness_at(l, &state, &beats, t0 + s(secs));
    assert_eq!(at(&mut liveness, 114), vec![(1, true)]);
    assert_eq!(at(&mut liveness, 115), vec![(1, false)]);
}

#[test]
fn a_node_that_joins_after_the_takeover_is_live_for_a_timeout_from_when_it_is_first_seen() {
    let mut state = cluster(1, FIVE);
    let t0 = Instant::now();
    let s = Duration::from_secs;
    let mut liveness = Liveness::new(s(15), t0);
    let beats = crate::scheduler::heartbeat::Heartbeats::default();
    assert_eq!(
        liveness_at(&mut liveness, &state, &beats, t0),
        vec![(1, true)]
    );
    // A second node joins 60 s after the takeover; the leader sees it before its first beat.
    let mut joined = cluster(2, FIVE);
    std::mem::swap(&mut state.nodes, &mut joined.nodes);
    assert_eq!(
        liveness_at(&mut liveness, &state, &beats, t0 + s(60)),
        vec![(1, false), (2, true)]
    );
    assert_eq!(
        liveness_at(&mut liveness, &state, &beats, t0 + s(74)),
        vec![(1, false), (2, true)]
    );
    assert_eq!(
        liveness_at(&mut liveness, &state, &beats, t0 + s(75)),
        vec![(1, false), (2, false)]
    );
}

#[test]
fn dead_by_silence_means_rescheduled_and_a_beat_brings_the_node_back() {
    let mut state = cluster(3, FIVE);
    let t0 = Instant::now();
    let s = Duration::from_secs;
    let mut liveness = Liveness::new(s(15), t0);
    let mut beats = crate::scheduler::heartbeat::Heartbeats::default();
    let live = liveness.observe(&state, beats.last(), t0);
    let updates = plan(&state, &live);
    apply(&mut state, Op::Place { updates });
    assert_eq!(per_node(&state), BTreeMap::from([(1, 2), (2, 2), (3, 1)]));
    beats.beat(1, t0 + s(10));
    beats.beat(2, t0 + s(10));
    let live = liveness.observe(&state, beats.last(), t0 + s(16));
    assert_eq!(live, BTreeMap::from([(1, true), (2, true), (3, false)]));
    let updates = plan(&state, &live);
    apply(&mut state, Op::Place { updates });
    assert_eq!(per_node(&state), BTreeMap::from([(1, 3), (2, 2)]));
    // Node 3 beats again: live, and nothing moves back (placement is stable).
    beats.beat(1, t0 + s(17));
    beats.beat(2, t0 + s(17));
    beats.beat(3, t0 + s(17));
    let live = liveness.observe(&state, beats.last(), t0 + s(18));
    assert_eq!(live, BTreeMap::from([(1, true), (2, true), (3, true)]));
    assert!(plan(&state, &live).is_empty());
}

fn liveness_at(
    liveness: &mut Liveness,
    state: &ClusterState,
    beats: &crate::scheduler::heartbeat::Heartbeats,
    now: Instant,
) -> Vec<(NodeId, bool)> {
    liveness
        .observe(state, beats.last(), now)
        .into_iter()
        .collect()
}

/// Writes `op`, then checks that the plan of the objects the change touched is exactly the full
/// plan (the state was quiet before), and applies it. Returns the updates.
fn step_and_compare(state: &mut ClusterState, op: Op) -> Vec<PlacementUpdate> {
    let live = all_live(state);
    assert!(plan(state, &live).is_empty(), "quiet before the step");
    let before = state.clone();
    apply(state, op);
    let delta = ClusterState::delta(&before, state);
    let full = plan(state, &live);
    if let Some(keys) = touched_by(&delta) {
        assert_eq!(plan_keys(state, &live, &keys), full, "{keys:?}");
    }
    if let Some(keys) = touched_in(&delta, state) {
        assert_eq!(
            plan_keys(state, &live, &keys),
            full,
            "settled left out: {keys:?}"
        );
    }
    // Settle: place, then each placement's own change is a step of its own.
    let mut updates = full.clone();
    while !updates.is_empty() {
        let before = state.clone();
        apply(state, Op::Place { updates });
        let delta = ClusterState::delta(&before, state);
        let full = plan(state, &live);
        let keys = touched_by(&delta).expect("a placement names its objects");
        assert_eq!(plan_keys(state, &live, &keys), full, "{keys:?}");
        let keys = touched_in(&delta, state).expect("a placement names its objects");
        assert_eq!(
            plan_keys(state, &live, &keys),
            full,
            "settled left out: {keys:?}"
        );
        updates = full;
    }
    full
}

fn containers(name: &str, replicas: u32, image: &str) -> Op {
    let yaml = format!(
        "kind: containers\nprefix: simplecontainer.io/v1\nmeta:\n  group: g\n  name: {name}\nspec:\n  image: {image}\n  replicas: {replicas}\n  spread:\n    spread: uniform\n"
    );
    Op::Apply {
        objects: definitions::parse_str("t.yaml", &yaml).unwrap(),
        owner: None,
    }
}

/// Every node reports what it is assigned as running and ready, at sequence `seq`.
fn report_all(state: &ClusterState, seq: u64) -> Vec<Op> {
    state
        .nodes
        .keys()
        .map(|node| {
            let replicas = state
                .placements
                .iter()
                .flat_map(|(key, p)| {
                    p.on_node(*node)
                        .map(|(index, slot)| running(key, index, slot.generation, true))
                })
                .collect();
            Op::Report {
                node: *node,
                report: NodeReport {
                    seq,
                    at_ms: 0,
                    replicas,
                },
            }
        })
        .collect()
}

#[test]
fn the_plan_of_the_touched_objects_is_the_full_plan() {
    let mut state = cluster(4, FIVE);
    let updates = plan(&state, &all_live(&state));
    apply(&mut state, Op::Place { updates });
    // New objects, one scaled up and down, one rolled to a new image with reports between the
    // steps of the rollout, one deleted, an unplaceable one.
    assert!(!step_and_compare(&mut state, containers("a", 3, "busybox")).is_empty());
    assert!(!step_and_compare(&mut state, containers("b", 7, "busybox")).is_empty());
    step_and_compare(&mut state, containers("a", 6, "busybox"));
    step_and_compare(&mut state, containers("b", 2, "busybox"));
    for op in report_all(&state, 1) {
        step_and_compare(&mut state, op);
    }
    let rolled = step_and_compare(&mut state, containers("a", 6, "nginx"));
    assert_eq!(rolled.len(), 1, "the rollout's first step: {rolled:?}");
    for seq in 2..10 {
        for op in report_all(&state, seq) {
            step_and_compare(&mut state, op);
        }
    }
    let key: crate::definitions::ObjectKey = "containers/g/a".parse().unwrap();
    assert!(
        state.placements[&key]
            .replicas
            .values()
            .all(|s| s.generation == 2),
        "the rollout went through on incremental plans"
    );
    step_and_compare(&mut state, Op::Delete { keys: vec![key] });
    let unplaceable = "kind: containers\nprefix: simplecontainer.io/v1\nmeta:\n  group: g\n  name: u\nspec:\n  image: busybox\n  nodeSelector:\n    disk: ssd\n";
    let errors = step_and_compare(
        &mut state,
        Op::Apply {
            objects: definitions::parse_str("t.yaml", unplaceable).unwrap(),
            owner: None,
        },
    );
    assert!(errors[0].error.is_some(), "{errors:?}");
}

#[test]
fn a_node_or_settings_change_asks_for_a_full_plan() {
    let state = cluster(2, FIVE);
    let mut more = state.clone();
    let node = more.nodes.values().next().unwrap().clone();
    apply(
        &mut more,
        Op::RegisterNode {
            node: NodeRecord {
                name: "n9".into(),
                ip: "10.0.0.9".into(),
                ..node
            },
        },
    );
    assert_eq!(touched_by(&ClusterState::delta(&state, &more)), None);
}

#[test]
fn a_placement_is_settled_unless_a_rollout_or_drain_moves_it() {
    let mut state = cluster(3, FIVE);
    let updates = plan(&state, &all_live(&state));
    apply(&mut state, Op::Place { updates });
    let key = state.objects.keys().next().unwrap().clone();
    assert!(settled(&state, &key), "placed at its generation");
    // Reports alone: the settled object is left out, and nothing was to plan for it.
    let before = state.clone();
    for op in report_all(&state, 1) {
        apply(&mut state, op);
    }
    let delta = ClusterState::delta(&before, &state);
    assert!(touched_by(&delta).is_some_and(|k| k.contains(&key)));
    assert_eq!(touched_in(&delta, &state), Some(BTreeSet::new()));
    assert!(plan(&state, &all_live(&state)).is_empty());
    // A new template: rolling, not settled until every slot runs it.
    apply(&mut state, containers("n", 5, "nginx"));
    assert!(!settled(&state, &key), "a new template is not rolled yet");
    let updates = plan(&state, &all_live(&state));
    apply(&mut state, Op::Place { updates });
    assert!(!settled(&state, &key), "rolling one replica at a time");
    // A draining node: its replicas move, reading the reports.
    let mut drained = before.clone();
    let node = *drained.nodes.keys().next().unwrap();
    drained
        .availability
        .insert(node, crate::scheduler::Availability::Draining);
    assert!(!settled(&drained, &key), "a slot on a draining node");
}

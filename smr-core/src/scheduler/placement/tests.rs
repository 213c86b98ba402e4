use std::collections::{BTreeMap, BTreeSet};

use super::*;

fn node(id: NodeId) -> NodeInfo {
    NodeInfo {
        id,
        name: format!("node-{}", (b'a' + (id as u8 - 1)) as char),
        labels: BTreeMap::new(),
        live: true,
        last_seen_ms: 0,
        availability: Availability::Active,
    }
}

fn nodes(n: u64) -> Vec<NodeInfo> {
    (1..=n).map(node).collect()
}

fn dead(mut nodes: Vec<NodeInfo>, id: NodeId) -> Vec<NodeInfo> {
    for n in &mut nodes {
        if n.id == id {
            n.live = false;
        }
    }
    nodes
}

/// index -> node, for compact exact assertions.
fn layout(p: &Placement) -> Vec<(u32, NodeId)> {
    p.replicas.iter().map(|(&i, s)| (i, s.node)).collect()
}

fn workload(replicas: u32) -> Workload {
    Workload::new("web", "api", replicas)
}

#[test]
fn five_replicas_over_three_nodes_is_two_two_one() {
    let p = place(&workload(5), &nodes(3), None).unwrap();
    assert_eq!(layout(&p), vec![(1, 1), (2, 2), (3, 3), (4, 1), (5, 2)]);
    assert_eq!(p.per_node(), BTreeMap::from([(1, 2), (2, 2), (3, 1)]));
    assert!(p.replicas.values().all(|s| s.generation == 1 && !s.surge));
    assert_eq!(p.on_node(2).map(|(i, _)| i).collect::<Vec<_>>(), vec![2, 5]);
}

#[test]
fn scale_five_to_two_to_four_is_stable_and_uses_lowest_indexes() {
    let ns = nodes(3);
    let five = place(&workload(5), &ns, None).unwrap();
    let two = place(&workload(2), &ns, Some(&five)).unwrap();
    assert_eq!(layout(&two), vec![(1, 1), (2, 2)]);
    let mut w4 = workload(4);
    w4.generation = 2;
    let four = place(&w4, &ns, Some(&two)).unwrap();
    assert_eq!(layout(&four), vec![(1, 1), (2, 2), (3, 3), (4, 1)]);
    // Kept slots keep their generation (the rollout advances them); new slots run the new one.
    let gens: Vec<u64> = four.replicas.values().map(|s| s.generation).collect();
    assert_eq!(gens, vec![1, 1, 2, 2]);
}

#[test]
fn node_death_moves_only_its_replicas_and_return_does_not_move_them_back() {
    let ns = nodes(3);
    let mut w = workload(5);
    let before = place(&w, &ns, None).unwrap();
    w.generation = 3;
    let after_death = place(&w, &dead(ns.clone(), 2), Some(&before)).unwrap();
    // Indexes 2 and 5 were on node 2: 2 goes to node 3 (fewest), 5 to node 1 (tie, lowest id).
    assert_eq!(
        layout(&after_death),
        vec![(1, 1), (2, 3), (3, 3), (4, 1), (5, 1)]
    );
    let gens: Vec<u64> = after_death
        .replicas
        .values()
        .map(|s| s.generation)
        .collect();
    assert_eq!(gens, vec![1, 3, 1, 1, 3]);
    let after_return = place(&w, &ns, Some(&after_death)).unwrap();
    assert_eq!(after_return, after_death);
}

#[test]
fn node_that_left_or_lost_its_label_gives_up_its_replicas() {
    let mut ns = nodes(3);
    for n in &mut ns {
        n.labels.insert("disk".into(), "ssd".into());
    }
    let mut w = workload(3);
    w.node_selector.insert("disk".into(), "ssd".into());
    let p = place(&w, &ns, None).unwrap();
    assert_eq!(layout(&p), vec![(1, 1), (2, 2), (3, 3)]);
    ns[0].labels.clear();
    let p2 = place(&w, &ns, Some(&p)).unwrap();
    assert_eq!(layout(&p2), vec![(1, 2), (2, 2), (3, 3)]);
    let p3 = place(&w, &ns[1..2], Some(&p2)).unwrap();
    assert_eq!(layout(&p3), vec![(1, 2), (2, 2), (3, 2)]);
}

#[test]
fn specific_spread_by_id_and_by_name() {
    let ns = nodes(3);
    let mut w = workload(2);
    w.spread = Spread::Specific(vec![AgentRef::Id(1), AgentRef::Id(2)]);
    assert_eq!(layout(&place(&w, &ns, None).unwrap()), vec![(1, 1), (2, 2)]);
    w.replicas = 3;
    assert_eq!(
        layout(&place(&w, &ns, None).unwrap()),
        vec![(1, 1), (2, 2), (3, 1)]
    );
    // By name; ties follow the list order, not the ids.
    w.spread = Spread::Specific(vec![
        AgentRef::Name("node-c".into()),
        AgentRef::Name("node-a".into()),
    ]);
    assert_eq!(
        layout(&place(&w, &ns, None).unwrap()),
        vec![(1, 3), (2, 1), (3, 3)]
    );
    // A numeric name that is no agent's name is an id; duplicates and unknowns are ignored.
    w.spread = Spread::Specific(vec![
        AgentRef::Name("2".into()),
        AgentRef::Id(2),
        AgentRef::Id(9),
    ]);
    assert_eq!(
        layout(&place(&w, &ns, None).unwrap()),
        vec![(1, 2), (2, 2), (3, 2)]
    );
}

#[test]
fn load_of_other_workloads_breaks_ties() {
    let ns = nodes(3);
    let mut all = BTreeMap::new();
    all.insert(
        "containers/db/mysql".to_string(),
        Placement {
            replicas: BTreeMap::from([
                (1, ReplicaSlot::new(1, 1)),
                (2, ReplicaSlot::new(1, 1)),
                (3, ReplicaSlot::new(3, 1)),
            ]),
        },
    );
    all.insert(
        "containers/web/api".to_string(),
        Placement {
            replicas: BTreeMap::from([(1, ReplicaSlot::new(2, 1))]),
        },
    );
    let load = node_load(&all, "containers/web/api");
    assert_eq!(load, BTreeMap::from([(1, 2), (3, 1)]));
    let p = place_with_load(&workload(4), &ns, None, &load).unwrap();
    assert_eq!(layout(&p), vec![(1, 2), (2, 3), (3, 1), (4, 2)]);
}

#[test]
fn errors_say_why_nothing_is_eligible() {
    let ns = nodes(3);
    let mut w = workload(2);
    w.node_selector.insert("disk".into(), "ssd".into());
    assert_eq!(
        place(&w, &ns, None).unwrap_err().to_string(),
        "containers/web/api: cannot place replicas: node selector {disk=ssd} matches none of \
         the 3 nodes (check the node labels with `smrctl nodes`)"
    );
    w.spread = Spread::Specific(vec![AgentRef::Id(1), AgentRef::Name("node-b".into())]);
    assert_eq!(
        place(&w, &ns, None).unwrap_err().to_string(),
        "containers/web/api: cannot place replicas: none of the agents listed in spread.agents \
         (1, \"node-b\") matches node selector {disk=ssd}"
    );
    w.node_selector.clear();
    w.spread = Spread::Specific(vec![AgentRef::Id(7), AgentRef::Name("vm9".into())]);
    assert_eq!(
        place(&w, &ns, None).unwrap_err().to_string(),
        "containers/web/api: cannot place replicas: none of the agents listed in spread.agents \
         (7, \"vm9\") is a node of the cluster (known nodes: 1 node-a, 2 node-b, 3 node-c)"
    );
    w.spread = Spread::Uniform;
    let all_dead = dead(dead(dead(ns, 1), 2), 3);
    assert_eq!(
        place(&w, &all_dead, None).unwrap_err().to_string(),
        "containers/web/api: cannot place replicas: all eligible nodes are down \
         (1 node-a, 2 node-b, 3 node-c)"
    );
    assert_eq!(
        place(&w, &[], None).unwrap_err(),
        ScheduleError::NoNodes {
            workload: "containers/web/api".into()
        }
    );
    w.replicas = MAX_REPLICAS + 1;
    assert_eq!(
        place(&w, &nodes(1), None).unwrap_err().to_string(),
        "containers/web/api: 10001 replicas is more than the limit of 10000"
    );
}

#[test]
fn zero_replicas_needs_no_node() {
    let p = place(&workload(0), &[], None).unwrap();
    assert_eq!(p, Placement::default());
}

#[test]
fn surge_slots_are_kept_and_become_regular_on_scale_up() {
    let ns = nodes(2);
    let mut current = place(&workload(2), &ns, None).unwrap();
    current.replicas.insert(
        3,
        ReplicaSlot {
            node: 2,
            generation: 2,
            surge: true,
            previous: None,
        },
    );
    let same = place(&workload(2), &ns, Some(&current)).unwrap();
    assert_eq!(same, current);
    let up = place(&workload(3), &ns, Some(&current)).unwrap();
    assert_eq!(up.replicas.get(&3), Some(&ReplicaSlot::new(2, 2)));
    let gone = place(&workload(2), &dead(ns, 2), Some(&current)).unwrap();
    assert_eq!(layout(&gone), vec![(1, 1), (2, 1)]);
}

/// A small deterministic generator (no crates): Knuth's MMIX LCG.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn random_nodes(rng: &mut Lcg) -> Vec<NodeInfo> {
    let count = 1 + rng.below(7);
    (1..=count)
        .map(|id| {
            let mut n = node(id);
            n.live = rng.below(4) != 0;
            let zone = if rng.below(2) == 0 { "a" } else { "b" };
            n.labels.insert("zone".into(), zone.into());
            if rng.below(2) == 0 {
                n.labels.insert("disk".into(), "ssd".into());
            }
            n
        })
        .collect()
}

fn random_workload(rng: &mut Lcg) -> Workload {
    let mut w = workload(rng.below(21) as u32);
    match rng.below(3) {
        0 => {}
        1 => {
            w.node_selector.insert("zone".into(), "a".into());
        }
        _ => {
            w.node_selector.insert("disk".into(), "ssd".into());
        }
    }
    if rng.below(3) == 0 {
        let agents = (0..1 + rng.below(4))
            .map(|_| {
                let id = 1 + rng.below(9);
                if rng.below(2) == 0 {
                    AgentRef::Id(id)
                } else {
                    AgentRef::Name(node(id).name)
                }
            })
            .collect();
        w.spread = Spread::Specific(agents);
    }
    w.generation = 1 + rng.below(5);
    w
}

/// Independent statement of eligibility (not the code under test).
fn live_eligible_ids(w: &Workload, ns: &[NodeInfo]) -> BTreeSet<NodeId> {
    ns.iter()
        .filter(|n| n.live)
        .filter(|n| {
            w.node_selector
                .iter()
                .all(|(k, v)| n.labels.get(k) == Some(v))
        })
        .filter(|n| match &w.spread {
            Spread::Uniform => true,
            Spread::Specific(agents) => agents.iter().any(|a| match a {
                AgentRef::Id(id) => *id == n.id,
                AgentRef::Name(name) => *name == n.name,
            }),
        })
        .map(|n| n.id)
        .collect()
}

fn spread_width(p: &Placement, eligible: &BTreeSet<NodeId>) -> u32 {
    let per_node = p.per_node();
    let counts: Vec<u32> = eligible
        .iter()
        .map(|id| per_node.get(id).copied().unwrap_or(0))
        .collect();
    counts.iter().max().unwrap_or(&0) - counts.iter().min().unwrap_or(&0)
}

#[test]
fn property_fresh_placements_are_complete_live_eligible_and_even() {
    let mut rng = Lcg(0x5eed);
    let mut placed = 0;
    for case in 0..3000 {
        let ns = random_nodes(&mut rng);
        let w = random_workload(&mut rng);
        let eligible = live_eligible_ids(&w, &ns);
        match place(&w, &ns, None) {
            Ok(p) => {
                let indexes: Vec<u32> = p.replicas.keys().copied().collect();
                assert_eq!(indexes, (1..=w.replicas).collect::<Vec<_>>(), "case {case}");
                for slot in p.replicas.values() {
                    assert!(
                        eligible.contains(&slot.node),
                        "case {case}: {w:?} {ns:?} {p:?}"
                    );
                    assert_eq!(slot.generation, w.generation);
                    assert!(!slot.surge);
                }
                if w.replicas > 0 {
                    assert!(spread_width(&p, &eligible) <= 1, "case {case}: {p:?}");
                    placed += 1;
                }
            }
            Err(e) => {
                assert!(w.replicas > 0 && eligible.is_empty(), "case {case}: {e}");
            }
        }
    }
    assert!(placed > 1000, "only {placed} non-trivial placements");
}

#[test]
fn property_histories_are_stable_and_additions_keep_balance() {
    let mut rng = Lcg(42);
    for history in 0..300 {
        let mut ns = nodes(2 + rng.below(5));
        let mut w = workload(1 + rng.below(10) as u32);
        let mut current = place(&w, &ns, None).unwrap();
        for step in 0..40 {
            let before_nodes = ns.clone();
            let before_replicas = current.replicas.len() as u32;
            let was_live = |id: &NodeId| ns.iter().any(|n| n.id == *id && n.live);
            let all_were_live = current.replicas.values().all(|s| was_live(&s.node));
            let op = rng.below(3);
            match op {
                0 => w.replicas = rng.below(13) as u32,
                1 => {
                    let i = rng.below(ns.len() as u64) as usize;
                    ns[i].live = false;
                }
                _ => {
                    let i = rng.below(ns.len() as u64) as usize;
                    ns[i].live = true;
                }
            }
            w.generation += 1;
            let eligible = live_eligible_ids(&w, &ns);
            let next = match place(&w, &ns, Some(&current)) {
                Ok(p) => p,
                Err(_) => {
                    assert!(eligible.is_empty() && w.replicas > 0);
                    continue;
                }
            };
            let ctx = format!("history {history} step {step} op {op}");
            let indexes: Vec<u32> = next.replicas.keys().copied().collect();
            assert_eq!(indexes, (1..=w.replicas).collect::<Vec<_>>(), "{ctx}");
            assert!(
                next.replicas.values().all(|s| eligible.contains(&s.node)),
                "{ctx}"
            );
            // Stability: a kept index on a live node did not move or change generation.
            for (i, slot) in &current.replicas {
                if *i <= w.replicas && eligible.contains(&slot.node) {
                    assert_eq!(next.replicas.get(i), Some(slot), "{ctx}");
                }
            }
            // A node coming back moves nothing.
            if op == 2 && all_were_live && before_replicas == w.replicas && before_nodes != ns {
                assert_eq!(next, current, "{ctx}");
            }
            // Without a scale down, water-filling keeps an even layout even.
            let restricted = Placement {
                replicas: current
                    .replicas
                    .iter()
                    .filter(|(_, s)| eligible.contains(&s.node))
                    .map(|(i, s)| (*i, s.clone()))
                    .collect(),
            };
            if w.replicas >= before_replicas && spread_width(&restricted, &eligible) <= 1 {
                assert!(spread_width(&next, &eligible) <= 1, "{ctx}: {next:?}");
            }
            current = next;
        }
    }
}

#[test]
fn cordoned_nodes_keep_their_replicas_and_get_no_new_ones() {
    let mut ns = nodes(3);
    let current = place(&workload(3), &ns, None).unwrap();
    assert_eq!(layout(&current), vec![(1, 1), (2, 2), (3, 3)]);
    ns[2].availability = Availability::Cordoned;
    ns[1].availability = Availability::Draining;
    let same = place(&workload(3), &ns, Some(&current)).unwrap();
    assert_eq!(same, current, "a cordon moves nothing");
    let scaled = place(&workload(5), &ns, Some(&current)).unwrap();
    assert_eq!(
        layout(&scaled),
        vec![(1, 1), (2, 2), (3, 3), (4, 1), (5, 1)]
    );
    ns[0].availability = Availability::Cordoned;
    let err = place(&workload(1), &ns, None).unwrap_err();
    assert_eq!(
        err.to_string(),
        "containers/web/api: cannot place replicas: every live eligible node is cordoned or \
         draining (1 node-a, 2 node-b, 3 node-c; `smrctl uncordon NODE` lets one take replicas \
         again)"
    );
}

/// The pick of each new slot one by one over every candidate (`least_loaded`), as placement did
/// before it kept the candidates ordered: the reference the ordered pick must equal.
fn place_by_scan(
    workload: &Workload,
    nodes: &[NodeInfo],
    current: Option<&Placement>,
    load: &BTreeMap<NodeId, u32>,
) -> Placement {
    let candidates = live_eligible(workload, nodes).unwrap();
    let active = active_only(&candidates, nodes);
    let mut slots = BTreeMap::new();
    let mut count: BTreeMap<NodeId, u32> = BTreeMap::new();
    for (&index, slot) in current.map(|c| &c.replicas).into_iter().flatten() {
        if index >= 1 && candidates.contains_key(&slot.node) && index <= workload.replicas {
            *count.entry(slot.node).or_insert(0) += 1;
            slots.insert(index, slot.clone());
        }
    }
    for index in 1..=workload.replicas {
        if slots.contains_key(&index) {
            continue;
        }
        let node = least_loaded(&active, &count, load).unwrap();
        *count.entry(node).or_insert(0) += 1;
        slots.insert(index, ReplicaSlot::new(node, workload.generation));
    }
    Placement { replicas: slots }
}

#[test]
fn the_ordered_pick_places_exactly_as_a_scan_of_every_candidate() {
    // Loads, dead and cordoned nodes and kept slots that make ties and uneven counts.
    for n in [1u64, 3, 7, 20] {
        for replicas in [1u32, 5, 13, 64] {
            let mut ns = nodes(n);
            if n > 2 {
                ns = dead(ns, 2);
                ns[0].availability = Availability::Cordoned;
            }
            let load: BTreeMap<NodeId, u32> =
                (1..=n).map(|id| (id, ((id * 7) % 5) as u32)).collect();
            let current = place_by_scan(&workload(replicas / 2 + 1), &nodes(n), None, &load);
            for (cur, load) in [
                (None, BTreeMap::new()),
                (None, load.clone()),
                (Some(&current), load.clone()),
            ] {
                let w = workload(replicas);
                assert_eq!(
                    place_with_load(&w, &ns, cur, &load).unwrap(),
                    place_by_scan(&w, &ns, cur, &load),
                    "{n} nodes, {replicas} replicas, kept {:?}, load {load:?}",
                    cur.map(layout)
                );
            }
        }
    }
}

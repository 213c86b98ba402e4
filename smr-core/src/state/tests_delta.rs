//! Deltas (exact outputs), structural sharing and the snapshot format.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use rand::{Rng, SeedableRng, rngs::StdRng};

use super::tests::{READERS, cmd, data_object, gitops_obj, node, obj, placement, replica, yaml};
use super::*;

fn keys<K: Ord, const N: usize>(items: [K; N]) -> BTreeSet<K> {
    items.into_iter().collect()
}

fn changed<K: Ord, const N: usize>(items: [K; N]) -> Changes<K> {
    Changes {
        changed: keys(items),
        removed: BTreeSet::new(),
    }
}

fn removed<K: Ord, const N: usize>(items: [K; N]) -> Changes<K> {
    Changes {
        changed: BTreeSet::new(),
        removed: keys(items),
    }
}

fn apply_op(objects: Vec<Object>) -> Op {
    Op::Apply {
        objects,
        owner: None,
    }
}

#[test]
fn an_apply_names_the_objects_it_created_or_changed_and_nothing_else() {
    let mut s = ClusterState::default();
    let x = obj("x", "a").key();
    let (_, d) = s.apply_with_delta(&cmd("1", apply_op(vec![obj("x", "a")])));
    assert_eq!(
        d,
        Delta {
            from_revision: 0,
            to_revision: 1,
            objects: changed([x.clone()]),
            ..Delta::default()
        }
    );
    let (_, d) = s.apply_with_delta(&cmd("2", apply_op(vec![obj("x", "a")])));
    assert_eq!(
        d,
        Delta {
            from_revision: 1,
            to_revision: 1,
            ..Delta::default()
        },
        "an unchanged apply changes nothing"
    );
    assert!(d.is_empty());
    let y = obj("y", "a").key();
    let (_, d) = s.apply_with_delta(&cmd("3", apply_op(vec![obj("x", "b"), obj("y", "a")])));
    assert_eq!(
        d,
        Delta {
            from_revision: 1,
            to_revision: 2,
            objects: changed([x.clone(), y.clone()]),
            ..Delta::default()
        }
    );
    // A repeated op id is answered from the window: nothing changes.
    let (_, d) = s.apply_with_delta(&cmd("3", apply_op(vec![obj("x", "c")])));
    assert!(d.is_empty(), "{d:?}");
}

#[test]
fn placements_errors_and_deletes_are_named() {
    let mut s = ClusterState::default();
    let x = obj("x", "a").key();
    s.apply(&cmd("1", apply_op(vec![obj("x", "a")])));
    let (_, d) = s.apply_with_delta(&cmd(
        "2",
        Op::Place {
            updates: vec![PlacementUpdate {
                key: x.clone(),
                generation: 1,
                placement: Some(placement(&[1, 2])),
                error: None,
            }],
        },
    ));
    assert_eq!(
        d,
        Delta {
            from_revision: 1,
            to_revision: 2,
            placements: changed([x.clone()]),
            ..Delta::default()
        }
    );
    let (_, d) = s.apply_with_delta(&cmd(
        "3",
        Op::Place {
            updates: vec![PlacementUpdate {
                key: x.clone(),
                generation: 1,
                placement: None,
                error: Some("no nodes".into()),
            }],
        },
    ));
    assert_eq!(
        d,
        Delta {
            from_revision: 2,
            to_revision: 3,
            placements: removed([x.clone()]),
            placement_errors: changed([x.clone()]),
            events: 1,
            ..Delta::default()
        }
    );
    let (_, d) = s.apply_with_delta(&cmd(
        "4",
        Op::Delete {
            keys: vec![x.clone()],
        },
    ));
    assert_eq!(
        d,
        Delta {
            from_revision: 3,
            to_revision: 4,
            objects: removed([x.clone()]),
            placement_errors: removed([x.clone()]),
            ..Delta::default()
        }
    );
}

#[test]
fn reports_name_the_objects_whose_replicas_changed_and_a_heartbeat_names_none() {
    let mut s = ClusterState::default();
    let (_, d) = s.apply_with_delta(&cmd("n1", Op::RegisterNode { node: node("a") }));
    assert_eq!(
        d,
        Delta {
            from_revision: 0,
            to_revision: 1,
            nodes: changed([1]),
            ..Delta::default()
        }
    );
    s.apply(&cmd("n2", Op::RegisterNode { node: node("b") }));
    let x = obj("x", "a").key();
    let report = |seq, replicas| Op::Report {
        node: 1,
        report: NodeReport {
            seq,
            at_ms: seq * 1000,
            replicas,
        },
    };
    let (_, d) = s.apply_with_delta(&cmd("r1", report(1, vec![replica("starting", false)])));
    assert_eq!(
        d,
        Delta {
            from_revision: 2,
            to_revision: 3,
            reports: changed([1]),
            replicas: keys([x.clone()]),
            events: 1,
            ..Delta::default()
        }
    );
    // Same replicas, new sequence number: a heartbeat. The report changed, no replica did.
    let (_, d) = s.apply_with_delta(&cmd("r2", report(2, vec![replica("starting", false)])));
    assert_eq!(
        d,
        Delta {
            from_revision: 3,
            to_revision: 4,
            reports: changed([1]),
            ..Delta::default()
        }
    );
    let (_, d) = s.apply_with_delta(&cmd("r3", report(3, vec![replica("running", true)])));
    assert_eq!(
        d,
        Delta {
            from_revision: 4,
            to_revision: 5,
            reports: changed([1]),
            replicas: keys([x.clone()]),
            events: 1,
            ..Delta::default()
        }
    );
    // The node leaves: its record, its report and so its replicas go.
    let (_, d) = s.apply_with_delta(&cmd("rm", Op::RemoveNode { id: 1 }));
    assert_eq!(
        d,
        Delta {
            from_revision: 5,
            to_revision: 6,
            nodes: removed([1]),
            reports: removed([1]),
            replicas: keys([x]),
            events: 1,
            ..Delta::default()
        }
    );
}

#[test]
fn a_changed_input_names_the_definitions_it_rolls() {
    let mut s = ClusterState::default();
    s.apply(&cmd("1", apply_op(yaml(READERS))));
    s.apply(&cmd(
        "2",
        apply_op(data_object("configuration", "shared", "1")),
    ));
    let (_, d) = s.apply_with_delta(&cmd(
        "3",
        apply_op(data_object("configuration", "shared", "2")),
    ));
    let web: ObjectKey = "containers/app/web".parse().unwrap();
    let shared: ObjectKey = "configuration/app/shared".parse().unwrap();
    assert_eq!(
        d,
        Delta {
            from_revision: 2,
            to_revision: 3,
            objects: changed([shared, web]),
            events: 1,
            ..Delta::default()
        }
    );
}

#[test]
fn settings_and_gitops_status_are_named() {
    let mut s = ClusterState::default();
    let (_, d) = s.apply_with_delta(&cmd(
        "net",
        Op::SetNetwork {
            network: NetworkSettings {
                cidr: "10.10.0.0/16".parse().unwrap(),
                subnet_len: 24,
                backend: "vxlan".into(),
            },
        },
    ));
    assert_eq!(
        d,
        Delta {
            from_revision: 0,
            to_revision: 1,
            settings: true,
            ..Delta::default()
        }
    );
    s.apply(&cmd("g", apply_op(vec![gitops_obj("repo")])));
    let key = gitops_obj("repo").key();
    let (_, d) = s.apply_with_delta(&cmd(
        "sync",
        Op::GitopsRequestSync {
            gitops: key.clone(),
        },
    ));
    assert_eq!(
        d,
        Delta {
            from_revision: 2,
            to_revision: 3,
            gitops: changed([key]),
            ..Delta::default()
        }
    );
}

#[test]
fn merging_lets_the_later_change_win() {
    let mut a = Changes {
        changed: keys([1, 2]),
        removed: keys([3]),
    };
    a.merge(Changes {
        changed: keys([3]),
        removed: keys([2, 4]),
    });
    assert_eq!(
        a,
        Changes {
            changed: keys([1, 3]),
            removed: keys([2, 4]),
        }
    );
    let mut d = Delta {
        from_revision: 1,
        to_revision: 2,
        replicas: keys([obj("x", "a").key()]),
        events: 2,
        ..Delta::default()
    };
    d.merge(Delta {
        from_revision: 2,
        to_revision: 5,
        settings: true,
        events: 1,
        ..Delta::default()
    });
    assert_eq!(
        d,
        Delta {
            from_revision: 1,
            to_revision: 5,
            replicas: keys([obj("x", "a").key()]),
            settings: true,
            events: 3,
            ..Delta::default()
        }
    );
}

/// What a consumer keeps: each object's generation, each placement, each object's replicas.
#[derive(Debug, Default, PartialEq)]
struct View {
    generations: BTreeMap<ObjectKey, u64>,
    placements: BTreeMap<ObjectKey, Placement>,
    replicas: BTreeMap<ObjectKey, Vec<(NodeId, u32, String, bool)>>,
}

impl View {
    fn replicas_of(s: &ClusterState, key: &ObjectKey) -> Vec<(NodeId, u32, String, bool)> {
        let mut out = Vec::new();
        for (node, report) in &s.reports {
            for r in report.replicas.iter().filter(|r| &r.key == key) {
                out.push((*node, r.index, r.phase.clone(), r.ready));
            }
        }
        out
    }

    fn full(s: &ClusterState) -> View {
        let mut view = View {
            generations: s
                .objects
                .iter()
                .map(|(k, o)| (k.clone(), o.generation))
                .collect(),
            placements: s
                .placements
                .iter()
                .map(|(k, p)| (k.clone(), p.clone()))
                .collect(),
            replicas: BTreeMap::new(),
        };
        for report in s.reports.values() {
            for r in &report.replicas {
                view.replicas
                    .insert(r.key.clone(), View::replicas_of(s, &r.key));
            }
        }
        view
    }

    fn update(&mut self, s: &ClusterState, d: &Delta) {
        for key in &d.objects.changed {
            self.generations
                .insert(key.clone(), s.objects[key].generation);
        }
        for key in &d.objects.removed {
            self.generations.remove(key);
        }
        for key in &d.placements.changed {
            self.placements
                .insert(key.clone(), s.placements[key].clone());
        }
        for key in &d.placements.removed {
            self.placements.remove(key);
        }
        for key in &d.replicas {
            let now = View::replicas_of(s, key);
            if now.is_empty() {
                self.replicas.remove(key);
            } else {
                self.replicas.insert(key.clone(), now);
            }
        }
    }
}

fn random_command(rng: &mut StdRng, s: &ClusterState, op: usize) -> Command {
    let name = format!("o{}", rng.random_range(0..12));
    let op_id = format!("op{op}");
    let phases = ["pending", "starting", "running", "exited"];
    let body = match rng.random_range(0..10) {
        0..=2 => apply_op(vec![obj(&name, ["a", "b", "c"][rng.random_range(0..3)])]),
        3 => Op::Delete {
            keys: vec![obj(&name, "a").key()],
        },
        4 | 5 => {
            let key = obj(&name, "a").key();
            let generation = s.objects.get(&key).map(|o| o.generation).unwrap_or(1);
            let nodes: Vec<u64> = (0..rng.random_range(0..3))
                .map(|_| rng.random_range(1..4))
                .collect();
            Op::Place {
                updates: vec![PlacementUpdate {
                    key,
                    generation,
                    placement: (!nodes.is_empty()).then(|| placement(&nodes)),
                    error: None,
                }],
            }
        }
        6..=8 => {
            let ids: Vec<NodeId> = s.nodes.keys().copied().collect();
            let node = ids[rng.random_range(0..ids.len())];
            let replicas = (0..rng.random_range(0..4))
                .map(|i| {
                    let mut r = replica(phases[rng.random_range(0..4)], rng.random_bool(0.5));
                    r.key = obj(&format!("o{}", rng.random_range(0..12)), "a").key();
                    r.index = i;
                    r
                })
                .collect();
            Op::Report {
                node,
                report: NodeReport {
                    seq: op as u64,
                    at_ms: op as u64,
                    replicas,
                },
            }
        }
        _ if s.nodes.len() > 2 => {
            let ids: Vec<NodeId> = s.nodes.keys().copied().collect();
            Op::RemoveNode {
                id: ids[rng.random_range(0..ids.len())],
            }
        }
        _ => Op::RegisterNode {
            node: node(&format!("n{op}")),
        },
    };
    cmd(&op_id, body)
}

#[test]
fn consumers_updating_from_deltas_match_a_full_rebuild() {
    let mut rng = StdRng::seed_from_u64(14);
    let mut s = ClusterState::default();
    for n in 1..=3 {
        s.apply(&cmd(
            &format!("join{n}"),
            Op::RegisterNode {
                node: node(&format!("n{n}")),
            },
        ));
    }
    // Per apply; every few applies from a kept version; every few applies from merged deltas.
    let mut each = View::full(&s);
    let mut lagging = View::full(&s);
    let mut merged_view = View::full(&s);
    let mut seen = s.clone();
    let mut pending = Delta {
        from_revision: s.revision,
        to_revision: s.revision,
        ..Delta::default()
    };
    let mut deltas_with_replicas = 0;
    for op in 0..3_000 {
        let command = random_command(&mut rng, &s, op);
        let (_, d) = s.apply_with_delta(&command);
        deltas_with_replicas += usize::from(!d.replicas.is_empty());
        each.update(&s, &d);
        pending.merge(d);
        assert_eq!(each, View::full(&s), "after {command:?}");
        if op % 7 == 6 {
            lagging.update(&s, &ClusterState::delta(&seen, &s));
            merged_view.update(&s, &pending);
            assert_eq!(lagging, View::full(&s));
            assert_eq!(merged_view, View::full(&s));
            assert!(ClusterState::delta(&s, &s).is_empty());
            seen = s.clone();
            pending = Delta {
                from_revision: s.revision,
                to_revision: s.revision,
                ..Delta::default()
            };
        }
    }
    assert!(deltas_with_replicas > 500, "{deltas_with_replicas}");
    assert!(!s.objects.is_empty() && !s.placements.is_empty() && !s.reports.is_empty());
}

#[test]
fn a_reader_keeps_its_version_while_the_state_moves_on() {
    let mut s = ClusterState::default();
    s.apply(&cmd("n", Op::RegisterNode { node: node("a") }));
    s.apply(&cmd("1", apply_op(vec![obj("x", "a"), obj("y", "a")])));
    let reader = s.clone();
    s.apply(&cmd("2", apply_op(vec![obj("x", "b")])));
    s.apply(&cmd(
        "3",
        Op::Delete {
            keys: vec![obj("y", "a").key()],
        },
    ));
    assert_eq!(reader.objects[&obj("x", "a").key()].object, obj("x", "a"));
    assert!(reader.objects.contains_key(&obj("y", "a").key()));
    assert_eq!(reader.revision, 2);
    assert_eq!(s.objects[&obj("x", "a").key()].object, obj("x", "b"));
    assert!(!s.objects.contains_key(&obj("y", "a").key()));
    // What the applies did not touch is still shared, not copied.
    assert!(reader.nodes.ptr_eq(&s.nodes));
    assert!(!reader.objects.ptr_eq(&s.objects));
}

#[test]
fn the_dedup_window_forgets_oldest_first_and_survives_a_snapshot() {
    let mut s = ClusterState::default();
    for i in 0..DEDUP_WINDOW + 3 {
        s.apply(&cmd(&format!("op{i}"), Op::Noop));
    }
    assert_eq!(s.recent_ops.len(), DEDUP_WINDOW);
    for i in 0..3 {
        assert_eq!(s.recent_result(&format!("op{i}")), None);
    }
    assert_eq!(
        s.recent_result("op3"),
        Some(&CommandResult::Done { revision: 4 })
    );
    let back: ClusterState = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
    assert_eq!(back, s);
    let ids: Vec<&str> = back.recent_ops.iter().map(|(id, _)| id).take(2).collect();
    assert_eq!(ids, ["op3", "op4"]);
    // A snapshot that lists an id twice keeps its first result.
    let twice = r#"[["a",{"result":"done","revision":1}],["a",{"result":"done","revision":2}]]"#;
    let recent: RecentOps = serde_json::from_str(twice).unwrap();
    assert_eq!(recent.len(), 1);
    assert_eq!(recent.get("a"), Some(&CommandResult::Done { revision: 1 }));
}

/// The state as it was declared before its collections were persistent.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct LegacyState {
    revision: u64,
    objects: BTreeMap<ObjectKey, StoredObject>,
    nodes: BTreeMap<NodeId, NodeRecord>,
    last_node_id: NodeId,
    join_tokens: Vec<JoinTokenRecord>,
    #[serde(default)]
    ca: Option<CaRecord>,
    #[serde(default)]
    recent_ops: VecDeque<(String, CommandResult)>,
    #[serde(default)]
    placements: BTreeMap<ObjectKey, Placement>,
    #[serde(default)]
    placement_errors: BTreeMap<ObjectKey, String>,
    #[serde(default)]
    reports: BTreeMap<NodeId, NodeReport>,
    #[serde(default)]
    events: VecDeque<Event>,
    #[serde(default)]
    network: Option<NetworkSettings>,
    #[serde(default)]
    gitops: BTreeMap<ObjectKey, GitopsStatus>,
}

#[test]
fn snapshots_are_written_and_read_as_before() {
    let mut s = ClusterState::default();
    s.apply(&cmd("n", Op::RegisterNode { node: node("a") }));
    s.apply(&cmd("1", apply_op(vec![obj("x", "a"), gitops_obj("repo")])));
    let x = obj("x", "a").key();
    s.apply(&cmd(
        "2",
        Op::Place {
            updates: vec![PlacementUpdate {
                key: x.clone(),
                generation: 1,
                placement: Some(placement(&[1])),
                error: None,
            }],
        },
    ));
    s.apply(&cmd(
        "3",
        Op::Report {
            node: 1,
            report: NodeReport {
                seq: 1,
                at_ms: 1,
                replicas: vec![replica("running", true)],
            },
        },
    ));
    s.apply(&cmd(
        "4",
        Op::GitopsRequestSync {
            gitops: gitops_obj("repo").key(),
        },
    ));
    s.placement_errors.insert(x, "example".into());
    let json = serde_json::to_string(&s).unwrap();
    let legacy: LegacyState = serde_json::from_str(&json).unwrap();
    assert_eq!(legacy.objects.len(), 2);
    assert_eq!(legacy.recent_ops.len(), 5);
    assert_eq!(legacy.events.len(), s.events.len());
    assert_eq!(serde_json::to_string(&legacy).unwrap(), json, "same bytes");
    let back: ClusterState =
        serde_json::from_str(&serde_json::to_string(&legacy).unwrap()).unwrap();
    assert_eq!(back, s);
}

fn key(text: &str) -> ObjectKey {
    text.parse().unwrap()
}

#[test]
fn the_readers_index_names_what_each_definition_reads() {
    let mut s = ClusterState::default();
    s.apply(&cmd("1", apply_op(yaml(READERS))));
    s.apply(&cmd(
        "2",
        apply_op(yaml(
            "kind: resource\nprefix: simplecontainer.io/v1\nmeta: {group: app, name: page}\n\
             spec:\n  data: {index: '(( lookup \"configuration/app/site:title\" ))'}\n",
        )),
    ));
    assert_eq!(
        s.readers_index.inputs(),
        vec![
            (
                key("containers/app/other"),
                vec![key("configuration/app/other")]
            ),
            (
                key("containers/app/web"),
                vec![
                    key("configuration/app/shared"),
                    key("configuration/app/site"),
                    key("configuration/app/web"),
                    key("secret/app/db"),
                    key("resource/app/page"),
                ]
            ),
        ]
    );
    // The resource no longer looks anything up: the definition no longer reads the site.
    s.apply(&cmd(
        "3",
        apply_op(data_object("resource", "page", "plain")),
    ));
    assert_eq!(
        s.readers_index
            .readers_of(&key("configuration/app/site"))
            .count(),
        0
    );
    s.apply(&cmd(
        "4",
        Op::Delete {
            keys: vec![key("containers/app/web")],
        },
    ));
    assert_eq!(
        s.readers_index.readers(),
        vec![(
            key("configuration/app/other"),
            vec![key("containers/app/other")]
        )]
    );
}

#[test]
fn a_loaded_state_builds_its_readers_index_on_the_first_write() {
    let mut s = ClusterState::default();
    s.apply(&cmd("1", apply_op(yaml(READERS))));
    s.apply(&cmd(
        "2",
        apply_op(data_object("configuration", "shared", "1")),
    ));
    let mut loaded: ClusterState =
        serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
    assert_eq!(loaded.readers_index.inputs(), vec![], "not in the snapshot");
    let web = key("containers/app/web");
    let before = loaded.objects[&web].template_generation;
    loaded.apply(&cmd(
        "3",
        apply_op(data_object("configuration", "shared", "2")),
    ));
    assert_eq!(
        loaded.objects[&web].template_generation,
        before + 1,
        "the reader rolled"
    );
    assert_eq!(
        loaded.objects[&key("containers/app/other")].template_generation,
        1
    );
}

/// Containers definitions that read configurations, resources and secrets in every way, and
/// writes of all of them, at random: the index kept by the writes is the one built from scratch.
#[test]
fn the_readers_index_kept_by_writes_equals_a_rebuild() {
    let mut rng = StdRng::seed_from_u64(13);
    let mut s = ClusterState::default();
    let names = ["a", "b", "c", "d"];
    for op in 0..600 {
        let name = names[rng.random_range(0..4)];
        let other = names[rng.random_range(0..4)];
        let text = match rng.random_range(0..7) {
            0 => format!(
                "kind: containers\nprefix: simplecontainer.io/v1\nmeta: {{group: app, name: {name}}}\n\
                 spec:\n  image: busybox\n  configurations: [{{group: app, name: {other}}}]\n"
            ),
            1 => format!(
                "kind: containers\nprefix: simplecontainer.io/v1\nmeta: {{group: app, name: {name}}}\n\
                 spec:\n  image: busybox\n  resources: [{{group: app, name: {other}, key: k, mountPoint: /f}}]\n"
            ),
            2 => format!(
                "kind: containers\nprefix: simplecontainer.io/v1\nmeta: {{group: app, name: {name}}}\n\
                 spec:\n  image: busybox\n  envs: ['X=(( lookup \"secret/app/{other}:k\" ))']\n"
            ),
            3 => format!(
                "kind: resource\nprefix: simplecontainer.io/v1\nmeta: {{group: app, name: {name}}}\n\
                 spec:\n  data: {{k: '(( lookup \"configuration/app/{other}:k\" ))'}}\n"
            ),
            4 => format!(
                "kind: resource\nprefix: simplecontainer.io/v1\nmeta: {{group: app, name: {name}}}\n\
                 spec:\n  data: {{k: 'plain {op}'}}\n"
            ),
            5 => format!(
                "kind: configuration\nprefix: simplecontainer.io/v1\nmeta: {{group: app, name: {name}}}\n\
                 spec:\n  data: {{k: 'v{op}'}}\n"
            ),
            _ => String::new(),
        };
        let command = if text.is_empty() {
            let kind = ["containers", "resource", "configuration"][rng.random_range(0..3)];
            Op::Delete {
                keys: vec![key(&format!("{kind}/app/{name}"))],
            }
        } else {
            apply_op(yaml(&text))
        };
        let mut scanned = s.clone();
        scanned.rebuild_readers_index();
        s.apply(&cmd(&format!("op{op}"), command.clone()));
        // The same write on a state whose index was just rebuilt whole: the same result.
        scanned.apply(&cmd(&format!("op{op}"), command));
        assert_eq!(scanned, s);
        assert_eq!(scanned.events, s.events);
        let mut fresh = s.clone();
        fresh.rebuild_readers_index();
        assert_eq!(fresh.readers_index.inputs(), s.readers_index.inputs());
        assert_eq!(fresh.readers_index.readers(), s.readers_index.readers());
    }
    let rolls = s
        .events
        .iter()
        .filter(|e| e.reason == "InputChanged")
        .count();
    assert!(rolls > 20, "{rolls} input-driven rolls");
}

#[test]
fn a_follower_hands_out_a_full_pass_first_then_what_changed() {
    let mut s = ClusterState::default();
    let mut follower = Follower::new();
    assert_eq!(follower.next(&s, false), Step::Full);
    assert_eq!(
        follower.next(&s, false),
        Step::Changes(Box::default()),
        "nothing changed: nothing to do"
    );
    s.apply(&cmd("1", apply_op(vec![obj("x", "a")])));
    s.apply(&cmd("2", apply_op(vec![obj("y", "a")])));
    assert_eq!(
        follower.next(&s, false),
        Step::Changes(Box::new(Delta {
            from_revision: 0,
            to_revision: 2,
            objects: changed([obj("x", "a").key(), obj("y", "a").key()]),
            ..Delta::default()
        }))
    );
    assert_eq!(follower.next(&s, true), Step::Full, "a resync was asked");
    assert_eq!(follower.revision(), Some(2));
    // An older state (a snapshot of another history installed): start over.
    assert_eq!(follower.next(&ClusterState::default(), false), Step::Full);
}

/// Each node's replicas as reported, without the sequence number and time of the report (a
/// node that reports none has none).
fn replica_view(s: &ClusterState) -> BTreeMap<NodeId, Vec<ReplicaReport>> {
    s.reports
        .iter()
        .filter(|(_, r)| !r.replicas.is_empty())
        .map(|(id, r)| (*id, r.replicas.clone()))
        .collect()
}

fn nodes_view(s: &ClusterState) -> Vec<NodeRecord> {
    s.nodes.values().cloned().collect()
}

fn objects_view(s: &ClusterState, keep: impl Fn(Kind) -> bool) -> Vec<StoredObject> {
    s.objects
        .values()
        .filter(|o| keep(o.object.kind))
        .cloned()
        .collect()
}

#[test]
fn what_a_delta_says_it_does_not_touch_is_unchanged() {
    let mut rng = StdRng::seed_from_u64(15);
    let mut s = ClusterState::default();
    for n in 1..=3 {
        s.apply(&cmd(
            &format!("join{n}"),
            Op::RegisterNode {
                node: node(&format!("n{n}")),
            },
        ));
    }
    let mut skipped = [0; 3];
    for op in 0..3_000 {
        let before = s.clone();
        let command = random_command(&mut rng, &s, op);
        let (_, d) = s.apply_with_delta(&command);
        if !d.touches_network() {
            skipped[0] += 1;
            assert_eq!(nodes_view(&before), nodes_view(&s));
            assert_eq!(replica_view(&before), replica_view(&s));
            assert_eq!(before.network, s.network);
        }
        if !d.touches_scheduling() {
            skipped[1] += 1;
            assert_eq!(nodes_view(&before), nodes_view(&s));
            assert_eq!(replica_view(&before), replica_view(&s));
            assert_eq!(before.placements, s.placements);
            assert_eq!(before.placement_errors, s.placement_errors);
            let containers = |k| k == Kind::Containers;
            assert_eq!(
                objects_view(&before, containers),
                objects_view(&s, containers)
            );
        }
        if !d.touches_replicas() {
            skipped[2] += 1;
            assert_eq!(nodes_view(&before), nodes_view(&s));
            assert_eq!(replica_view(&before), replica_view(&s));
            assert_eq!(before.placements, s.placements);
            let not_data = |k| !matches!(k, Kind::Configuration | Kind::Secret | Kind::Resource);
            assert_eq!(objects_view(&before, not_data), objects_view(&s, not_data));
        }
    }
    assert!(skipped.iter().all(|n| *n > 300), "{skipped:?}");
}

#[test]
fn a_heartbeat_and_an_unread_configuration_touch_no_loop() {
    let mut s = ClusterState::default();
    s.apply(&cmd("n", Op::RegisterNode { node: node("a") }));
    s.apply(&cmd("1", apply_op(yaml(READERS))));
    let report = |seq| Op::Report {
        node: 1,
        report: NodeReport {
            seq,
            at_ms: seq,
            replicas: vec![replica("running", true)],
        },
    };
    s.apply(&cmd("r1", report(1)));
    let mut follower = Follower::new();
    assert!(
        follower.next(&s, false).needs(|_| false),
        "a full pass first"
    );
    let quiet = |s: &mut ClusterState, follower: &mut Follower, c: Command| {
        s.apply(&c);
        let step = follower.next(s, false);
        (
            step.needs(Delta::touches_network),
            step.needs(Delta::touches_scheduling),
            step.needs(Delta::touches_replicas),
        )
    };
    assert_eq!(
        quiet(&mut s, &mut follower, cmd("r2", report(2))),
        (false, false, false)
    );
    assert_eq!(
        quiet(
            &mut s,
            &mut follower,
            cmd("c1", apply_op(data_object("configuration", "unread", "1")))
        ),
        (false, false, false)
    );
    // Read by app/web: the write rolls it, which the scheduler and the replicas care about.
    assert_eq!(
        quiet(
            &mut s,
            &mut follower,
            cmd("c2", apply_op(data_object("configuration", "shared", "1")))
        ),
        (false, true, true)
    );
    assert!(
        follower.next(&s, true).needs(|_| false),
        "a resync is a full pass"
    );
}

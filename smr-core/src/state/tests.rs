use super::*;
use crate::definitions::Meta;

pub(super) fn obj(name: &str, image: &str) -> Object {
    Object {
        kind: Kind::Containers,
        prefix: "simplecontainer.io/v1".into(),
        meta: Meta {
            group: "g".into(),
            name: name.into(),
            labels: Default::default(),
        },
        spec: crate::definitions::ContainersSpec {
            image: image.into(),
            ..Default::default()
        }
        .into(),
    }
}

pub(super) fn cmd(op_id: &str, op: Op) -> Command {
    Command {
        op_id: op_id.into(),
        at_ms: 1000,
        op,
    }
}

pub(super) fn node(name: &str) -> NodeRecord {
    NodeRecord {
        id: 0,
        name: name.into(),
        host: name.into(),
        domain: name.into(),
        ip: "127.0.0.1".into(),
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
    }
}

fn outcomes(r: CommandResult) -> Vec<(String, Outcome, u64)> {
    match r {
        CommandResult::Objects { outcomes, .. } => outcomes
            .into_iter()
            .map(|o| (o.key.to_string(), o.outcome, o.generation))
            .collect(),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn apply_creates_then_configures_then_is_unchanged() {
    let mut s = ClusterState::default();
    let r = s.apply(&cmd(
        "a",
        Op::Apply {
            objects: vec![obj("x", "busybox")],
            owner: None,
        },
    ));
    assert_eq!(
        outcomes(r),
        vec![("containers/g/x".into(), Outcome::Created, 1)]
    );
    assert_eq!(s.revision, 1);
    let r = s.apply(&cmd(
        "b",
        Op::Apply {
            objects: vec![obj("x", "busybox")],
            owner: None,
        },
    ));
    assert_eq!(
        outcomes(r),
        vec![("containers/g/x".into(), Outcome::Unchanged, 1)]
    );
    assert_eq!(
        s.revision, 1,
        "an unchanged apply does not move the revision"
    );
    let r = s.apply(&cmd(
        "c",
        Op::Apply {
            objects: vec![obj("x", "nginx")],
            owner: None,
        },
    ));
    assert_eq!(
        outcomes(r),
        vec![("containers/g/x".into(), Outcome::Configured, 2)]
    );
    assert_eq!(s.revision, 2);
}

#[test]
fn repeated_op_id_is_applied_once() {
    let mut s = ClusterState::default();
    let c = cmd(
        "same",
        Op::Apply {
            objects: vec![obj("x", "a")],
            owner: None,
        },
    );
    let first = s.apply(&c);
    let c2 = cmd(
        "same",
        Op::Apply {
            objects: vec![obj("x", "b")],
            owner: None,
        },
    );
    assert_eq!(s.apply(&c2), first);
    assert_eq!(s.objects.values().next().unwrap().generation, 1);
    assert_eq!(s.revision, 1);
}

#[test]
fn dedup_window_is_bounded() {
    let mut s = ClusterState::default();
    for i in 0..DEDUP_WINDOW + 5 {
        s.apply(&cmd(&format!("op{i}"), Op::Noop));
    }
    assert_eq!(s.recent_ops.len(), DEDUP_WINDOW);
}

#[test]
fn duplicate_keys_in_one_batch_reject_everything() {
    let mut s = ClusterState::default();
    let r = s.apply(&cmd(
        "a",
        Op::Apply {
            objects: vec![obj("x", "a"), obj("x", "b")],
            owner: None,
        },
    ));
    assert!(matches!(r, CommandResult::Rejected { .. }));
    assert!(s.objects.is_empty());
    assert_eq!(s.revision, 0);
}

#[test]
fn a_hand_change_to_a_gitops_object_keeps_its_owner_and_gitops_never_takes_over() {
    let mut s = ClusterState::default();
    s.apply(&cmd(
        "a",
        Op::Apply {
            objects: vec![obj("x", "a")],
            owner: Some("gitops/g/repo".into()),
        },
    ));
    s.apply(&cmd(
        "b",
        Op::Apply {
            objects: vec![obj("x", "b"), obj("y", "a")],
            owner: None,
        },
    ));
    let x = &s.objects[&obj("x", "a").key()];
    assert_eq!(
        x.owner.as_deref(),
        Some("gitops/g/repo"),
        "drift, not a takeover"
    );
    assert_eq!(x.generation, 2);
    let r = s.apply(&cmd(
        "c",
        Op::Apply {
            objects: vec![obj("z", "a"), obj("y", "b")],
            owner: Some("gitops/g/other".into()),
        },
    ));
    assert!(
        matches!(r, CommandResult::Rejected { ref reason } if reason.contains("hand-applied")),
        "{r:?}"
    );
    assert_eq!(s.objects.len(), 2, "nothing of a refused batch is applied");
}

pub(super) fn gitops_obj(name: &str) -> Object {
    Object::new(
        "g",
        name,
        crate::definitions::Spec::Gitops(Box::new(crate::definitions::GitopsSpec {
            repo_url: "git://127.0.0.1/r".into(),
            ..Default::default()
        })),
    )
}

fn sync(apply: Vec<Object>, delete: Vec<ObjectKey>, commit: &str) -> Op {
    Op::GitopsSync {
        sync: Box::new(GitopsSync {
            gitops: gitops_obj("repo").key(),
            generation: 1,
            apply,
            delete,
            status: GitopsStatus {
                state: GitopsState::Synced,
                synced_commit: Some(commit.into()),
                synced_generation: 1,
                ..Default::default()
            },
        }),
    }
}

#[test]
fn a_gitops_sync_applies_prunes_and_records_the_commit_in_one_step() {
    let mut s = ClusterState::default();
    s.apply(&cmd(
        "g",
        Op::Apply {
            objects: vec![gitops_obj("repo")],
            owner: None,
        },
    ));
    let r = s.apply(&cmd(
        "s1",
        sync(vec![obj("x", "a"), obj("y", "a")], vec![], "c1"),
    ));
    assert_eq!(outcomes(r).len(), 2);
    let key = gitops_obj("repo").key();
    assert_eq!(s.gitops[&key].synced_commit.as_deref(), Some("c1"));
    assert_eq!(s.owned_by(&key).len(), 2);
    let revision = s.revision;
    // Same commit again: nothing changes, not even the revision.
    s.apply(&cmd(
        "s1b",
        sync(vec![obj("x", "a"), obj("y", "a")], vec![], "c1"),
    ));
    assert_eq!(s.revision, revision);
    // Next commit: y left git, x changed.
    let r = s.apply(&cmd(
        "s2",
        sync(vec![obj("x", "b")], vec![obj("y", "a").key()], "c2"),
    ));
    assert_eq!(
        outcomes(r),
        vec![
            ("containers/g/x".into(), Outcome::Configured, 2),
            ("containers/g/y".into(), Outcome::Deleted, 1)
        ]
    );
    assert_eq!(s.revision, revision + 1, "one revision for the whole sync");
    assert!(
        s.events
            .iter()
            .any(|e| e.reason == "Synced" && e.message.contains("1 pruned"))
    );
}

#[test]
fn a_gitops_sync_is_refused_whole_when_one_object_is_held_by_someone_else() {
    let mut s = ClusterState::default();
    s.apply(&cmd(
        "g",
        Op::Apply {
            objects: vec![gitops_obj("repo"), obj("mine", "a")],
            owner: None,
        },
    ));
    let r = s.apply(&cmd(
        "s",
        sync(vec![obj("x", "a"), obj("mine", "b")], vec![], "c1"),
    ));
    assert!(matches!(r, CommandResult::Rejected { .. }), "{r:?}");
    assert!(!s.objects.contains_key(&obj("x", "a").key()));
    assert!(s.gitops.is_empty());
    // A sync computed for an older generation of the gitops object is refused too.
    s.apply(&cmd(
        "g2",
        Op::Apply {
            objects: vec![Object {
                meta: Meta {
                    labels: [("v".to_string(), "2".to_string())].into(),
                    ..gitops_obj("repo").meta
                },
                ..gitops_obj("repo")
            }],
            owner: None,
        },
    ));
    let r = s.apply(&cmd("s2", sync(vec![obj("x", "a")], vec![], "c1")));
    assert!(matches!(r, CommandResult::Rejected { ref reason } if reason.contains("generation")));
}

#[test]
fn deleting_a_gitops_object_deletes_what_it_deployed_and_sync_requests_count() {
    let mut s = ClusterState::default();
    s.apply(&cmd(
        "g",
        Op::Apply {
            objects: vec![gitops_obj("repo"), obj("hand", "a")],
            owner: None,
        },
    ));
    let key = gitops_obj("repo").key();
    assert_eq!(
        s.apply(&cmd(
            "r1",
            Op::GitopsRequestSync {
                gitops: key.clone()
            }
        )),
        CommandResult::SyncRequested { request: 1 }
    );
    s.apply(&cmd(
        "s",
        sync(vec![obj("x", "a"), obj("y", "a")], vec![], "c1"),
    ));
    assert_eq!(
        s.gitops[&key].sync_requested, 1,
        "a sync keeps the request count"
    );
    let r = s.apply(&cmd(
        "d",
        Op::Delete {
            keys: vec![key.clone()],
        },
    ));
    assert_eq!(outcomes(r).len(), 3);
    assert_eq!(
        s.objects.keys().map(|k| k.to_string()).collect::<Vec<_>>(),
        vec!["containers/g/hand"]
    );
    assert!(s.gitops.is_empty());
    assert!(matches!(
        s.apply(&cmd("r2", Op::GitopsRequestSync { gitops: key })),
        CommandResult::Rejected { .. }
    ));
}

#[test]
fn delete_reports_missing_keys() {
    let mut s = ClusterState::default();
    s.apply(&cmd(
        "a",
        Op::Apply {
            objects: vec![obj("x", "a")],
            owner: None,
        },
    ));
    let keys = vec![obj("x", "a").key(), obj("nope", "a").key()];
    let r = s.apply(&cmd("b", Op::Delete { keys }));
    assert_eq!(
        outcomes(r),
        vec![
            ("containers/g/x".into(), Outcome::Deleted, 1),
            ("containers/g/nope".into(), Outcome::NotFound, 0)
        ]
    );
    assert!(s.objects.is_empty());
}

#[test]
fn node_ids_follow_join_order_and_names_are_unique() {
    let mut s = ClusterState::default();
    assert_eq!(
        s.apply(&cmd("1", Op::RegisterNode { node: node("a") })),
        CommandResult::NodeRegistered { id: 1 }
    );
    assert_eq!(
        s.apply(&cmd("2", Op::RegisterNode { node: node("b") })),
        CommandResult::NodeRegistered { id: 2 }
    );
    assert!(matches!(
        s.apply(&cmd("3", Op::RegisterNode { node: node("a") })),
        CommandResult::Rejected { .. }
    ));
    s.apply(&cmd("4", Op::RemoveNode { id: 1 }));
    assert_eq!(
        s.apply(&cmd("5", Op::RegisterNode { node: node("c") })),
        CommandResult::NodeRegistered { id: 3 }
    );
}

#[test]
fn join_tokens_expire() {
    let mut s = ClusterState::default();
    s.apply(&cmd(
        "t",
        Op::AddJoinToken {
            token: JoinTokenRecord {
                secret_sha256: "ab".into(),
                expires_ms: 2000,
            },
        },
    ));
    assert!(s.join_token_valid("ab", 1500));
    assert!(!s.join_token_valid("ab", 2500));
    assert!(!s.join_token_valid("ac", 1500));
}

#[test]
fn state_round_trips_through_json() {
    let mut s = ClusterState::default();
    s.apply(&cmd(
        "a",
        Op::Apply {
            objects: vec![obj("x", "a")],
            owner: None,
        },
    ));
    s.apply(&cmd("b", Op::RegisterNode { node: node("n") }));
    let json = serde_json::to_string(&s).unwrap();
    let back: ClusterState = serde_json::from_str(&json).unwrap();
    assert_eq!(back, s);
}

pub(super) fn placement(nodes: &[u64]) -> Placement {
    let mut p = Placement::default();
    for (i, n) in nodes.iter().enumerate() {
        p.replicas.insert(
            i as u32 + 1,
            crate::scheduler::ReplicaSlot {
                node: *n,
                generation: 1,
                surge: false,
                previous: None,
            },
        );
    }
    p
}

#[test]
fn placements_follow_the_generation_they_were_made_for() {
    let mut s = ClusterState::default();
    s.apply(&cmd(
        "a",
        Op::Apply {
            objects: vec![obj("x", "a")],
            owner: None,
        },
    ));
    let key = obj("x", "a").key();
    let stale = PlacementUpdate {
        key: key.clone(),
        generation: 7,
        placement: Some(placement(&[1])),
        error: None,
    };
    s.apply(&cmd(
        "p1",
        Op::Place {
            updates: vec![stale],
        },
    ));
    assert!(
        s.placements.is_empty(),
        "a decision for another generation is dropped"
    );
    let good = PlacementUpdate {
        key: key.clone(),
        generation: 1,
        placement: Some(placement(&[1, 2])),
        error: None,
    };
    s.apply(&cmd(
        "p2",
        Op::Place {
            updates: vec![good],
        },
    ));
    assert_eq!(s.placements[&key], placement(&[1, 2]));
    s.apply(&cmd(
        "d",
        Op::Delete {
            keys: vec![key.clone()],
        },
    ));
    assert!(
        s.placements.is_empty(),
        "deleting the object drops its placement"
    );
}

#[test]
fn placement_errors_are_recorded_once_as_events() {
    let mut s = ClusterState::default();
    s.apply(&cmd(
        "a",
        Op::Apply {
            objects: vec![obj("x", "a")],
            owner: None,
        },
    ));
    let key = obj("x", "a").key();
    let failed = PlacementUpdate {
        key: key.clone(),
        generation: 1,
        placement: None,
        error: Some("no nodes".into()),
    };
    s.apply(&cmd(
        "p1",
        Op::Place {
            updates: vec![failed.clone()],
        },
    ));
    s.apply(&cmd(
        "p2",
        Op::Place {
            updates: vec![failed],
        },
    ));
    assert_eq!(s.placement_errors[&key], "no nodes");
    assert_eq!(
        s.events
            .iter()
            .filter(|e| e.reason == "FailedScheduling")
            .count(),
        1
    );
}

pub(super) fn replica(phase: &str, ready: bool) -> ReplicaReport {
    ReplicaReport {
        key: obj("x", "a").key(),
        index: 1,
        name: "g-x-1".into(),
        container_id: Some("c1".into()),
        phase: phase.into(),
        ready,
        ip: Some("10.10.1.2".into()),
        restarts: 0,
        generation: 1,
        image: "a:latest".into(),
        started_ms: None,
        message: None,
        ips: Default::default(),
    }
}

#[test]
fn reports_record_transitions_as_events() {
    let mut s = ClusterState::default();
    s.apply(&cmd("n", Op::RegisterNode { node: node("a") }));
    let report = |seq, replicas| NodeReport {
        seq,
        at_ms: 0,
        replicas,
    };
    s.apply(&cmd(
        "r1",
        Op::Report {
            node: 1,
            report: report(1, vec![replica("starting", false)]),
        },
    ));
    s.apply(&cmd(
        "r2",
        Op::Report {
            node: 1,
            report: report(2, vec![replica("running", true)]),
        },
    ));
    s.apply(&cmd(
        "r3",
        Op::Report {
            node: 1,
            report: report(3, vec![replica("running", true)]),
        },
    ));
    s.apply(&cmd(
        "r4",
        Op::Report {
            node: 1,
            report: report(4, vec![]),
        },
    ));
    let reasons: Vec<&str> = s.events.iter().map(|e| e.reason.as_str()).collect();
    assert_eq!(reasons, vec!["Starting", "Ready", "Removed"]);
    assert!(matches!(
        s.apply(&cmd(
            "r5",
            Op::Report {
                node: 9,
                report: report(1, vec![])
            }
        )),
        CommandResult::Rejected { .. }
    ));
}

#[test]
fn scaling_keeps_the_template_generation() {
    let mut s = ClusterState::default();
    let mut scaled = obj("x", "a");
    s.apply(&cmd(
        "a",
        Op::Apply {
            objects: vec![scaled.clone()],
            owner: None,
        },
    ));
    if let crate::definitions::Spec::Containers(spec) = &mut scaled.spec {
        spec.replicas = 5;
    }
    s.apply(&cmd(
        "b",
        Op::Apply {
            objects: vec![scaled],
            owner: None,
        },
    ));
    let stored = s.objects.values().next().unwrap();
    assert_eq!((stored.generation, stored.template_generation), (2, 1));
    s.apply(&cmd(
        "c",
        Op::Apply {
            objects: vec![obj("x", "b")],
            owner: None,
        },
    ));
    let stored = s.objects.values().next().unwrap();
    assert_eq!((stored.generation, stored.template_generation), (3, 2));
}

#[test]
fn joining_nodes_get_distinct_subnets_until_the_pool_runs_out() {
    let mut s = ClusterState::default();
    let network = NetworkSettings {
        cidr: "10.10.0.0/22".parse().unwrap(),
        subnet_len: 24,
        backend: "vxlan".into(),
    };
    s.apply(&cmd("net", Op::SetNetwork { network }));
    for i in 0..4 {
        assert!(matches!(
            s.apply(&cmd(
                &format!("j{i}"),
                Op::RegisterNode {
                    node: node(&format!("n{i}"))
                }
            )),
            CommandResult::NodeRegistered { .. }
        ));
    }
    let leases: Vec<String> = s
        .nodes
        .values()
        .map(|n| n.lease.unwrap().to_string())
        .collect();
    assert_eq!(
        leases,
        vec![
            "10.10.0.0/24",
            "10.10.1.0/24",
            "10.10.2.0/24",
            "10.10.3.0/24"
        ]
    );
    let refused = s.apply(&cmd("j5", Op::RegisterNode { node: node("n5") }));
    assert!(
        matches!(&refused, CommandResult::Rejected { reason } if reason.contains("n5") && reason.contains("10.10.0.0/22")),
        "{refused:?}"
    );
    // A removed node's subnet is free again.
    s.apply(&cmd("rm", Op::RemoveNode { id: 2 }));
    s.apply(&cmd("j6", Op::RegisterNode { node: node("n6") }));
    assert_eq!(s.nodes[&5].lease.unwrap().to_string(), "10.10.1.0/24");
}

#[test]
fn the_cluster_network_cannot_change() {
    let mut s = ClusterState::default();
    let a = NetworkSettings {
        cidr: "10.10.0.0/16".parse().unwrap(),
        subnet_len: 24,
        backend: "vxlan".into(),
    };
    let b = NetworkSettings {
        subnet_len: 26,
        ..a.clone()
    };
    s.apply(&cmd("a", Op::SetNetwork { network: a.clone() }));
    assert!(matches!(
        s.apply(&cmd("a2", Op::SetNetwork { network: a })),
        CommandResult::Done { .. }
    ));
    assert!(matches!(
        s.apply(&cmd("b", Op::SetNetwork { network: b })),
        CommandResult::Rejected { .. }
    ));
}

#[test]
fn commands_round_trip_through_json() {
    let key = obj("x", "a").key();
    let ops = vec![
        Op::Apply {
            objects: vec![obj("x", "a")],
            owner: Some("gitops/g/r".into()),
        },
        Op::Delete {
            keys: vec![key.clone()],
        },
        Op::RegisterNode { node: node("n") },
        Op::Place {
            updates: vec![PlacementUpdate {
                key: key.clone(),
                generation: 1,
                placement: Some(placement(&[1, 2])),
                error: None,
            }],
        },
        Op::Report {
            node: 1,
            report: NodeReport {
                seq: 3,
                at_ms: 4,
                replicas: vec![replica("running", true)],
            },
        },
        sync(vec![obj("x", "a")], vec![key.clone()], "c"),
        Op::GitopsRequestSync {
            gitops: key.clone(),
        },
        Op::Restart { key: key.clone() },
        Op::Noop,
    ];
    for op in ops {
        let command = cmd("id", op);
        let json = serde_json::to_vec(&command).unwrap();
        let back: Command =
            serde_json::from_slice(&json).unwrap_or_else(|e| panic!("{command:?}: {e}"));
        assert_eq!(back, command);
    }
}

pub(super) fn yaml(text: &str) -> Vec<Object> {
    crate::definitions::parse_str("test.yaml", text).unwrap()
}

fn template_generation(s: &ClusterState, key: &str) -> u64 {
    s.objects[&key.parse::<ObjectKey>().unwrap()].template_generation
}

pub(super) const READERS: &str = "
kind: containers
prefix: simplecontainer.io/v1
meta: {group: app, name: web}
spec:
  image: busybox
  configurations: [{group: app, name: shared}]
  envs: ['PASSWORD=(( lookup \"secret/app/db:password\" | base64decode ))']
  resources: [{group: app, name: page, key: index, mountPoint: /www/index.html}]
---
kind: containers
prefix: simplecontainer.io/v1
meta: {group: app, name: other}
spec:
  image: busybox
";

pub(super) fn data_object(kind: &str, name: &str, value: &str) -> Vec<Object> {
    yaml(&format!(
        "kind: {kind}\nprefix: simplecontainer.io/v1\nmeta: {{group: app, name: {name}}}\nspec:\n  data: {{v: '{value}'}}\n"
    ))
}

#[test]
fn changing_what_a_definition_reads_rolls_it_and_only_it() {
    let mut s = ClusterState::default();
    let mut n = 0;
    let mut apply = |s: &mut ClusterState, objects: Vec<Object>| {
        n += 1;
        s.apply(&cmd(
            &format!("op{n}"),
            Op::Apply {
                objects,
                owner: None,
            },
        ))
    };
    apply(&mut s, yaml(READERS));
    assert_eq!(template_generation(&s, "containers/app/web"), 1);
    // Creating what it reads, then changing it: one new template each time.
    let mut expected = 1;
    for (kind, name) in [
        ("configuration", "shared"),
        ("configuration", "web"),
        ("secret", "db"),
        ("resource", "page"),
    ] {
        for value in ["1", "2", "2"] {
            let r = apply(&mut s, data_object(kind, name, value));
            if outcomes(r)[0].1 != Outcome::Unchanged {
                expected += 1;
            }
            assert_eq!(
                template_generation(&s, "containers/app/web"),
                expected,
                "{kind}/{name}={value}"
            );
        }
    }
    assert_eq!(template_generation(&s, "containers/app/other"), 1);
    // A new label on an input changes nothing its readers render.
    let mut labelled = data_object("secret", "db", "2");
    labelled[0].meta.labels.insert("team".into(), "a".into());
    apply(&mut s, labelled);
    assert_eq!(template_generation(&s, "containers/app/web"), expected);
    assert!(
        s.events
            .iter()
            .any(|e| e.reason == "InputChanged" && e.message.contains("secret/app/db"))
    );
    // Unrelated data: nothing rolls.
    apply(&mut s, data_object("configuration", "unrelated", "1"));
    assert_eq!(template_generation(&s, "containers/app/web"), expected);
    // A lookup inside a mounted resource is read too.
    apply(
        &mut s,
        data_object("resource", "page", "(( lookup \"secret/app/tls:key\" ))"),
    );
    expected += 1;
    apply(&mut s, data_object("secret", "tls", "k"));
    expected += 1;
    assert_eq!(template_generation(&s, "containers/app/web"), expected);
    // Deleting an input rolls too (its replicas then fail to render, one batch at a time).
    s.apply(&cmd(
        "delete",
        Op::Delete {
            keys: vec!["secret/app/db".parse().unwrap()],
        },
    ));
    assert_eq!(template_generation(&s, "containers/app/web"), expected + 1);
}

#[test]
fn a_definition_changed_with_its_input_rolls_once() {
    let mut s = ClusterState::default();
    let mut objects = yaml(READERS);
    objects.extend(data_object("configuration", "shared", "1"));
    s.apply(&cmd(
        "a",
        Op::Apply {
            objects,
            owner: None,
        },
    ));
    assert_eq!(template_generation(&s, "containers/app/web"), 1);
    let mut objects = yaml(&READERS.replace(
        "image: busybox\n  configurations",
        "image: nginx\n  configurations",
    ));
    objects.extend(data_object("configuration", "shared", "2"));
    s.apply(&cmd(
        "b",
        Op::Apply {
            objects,
            owner: None,
        },
    ));
    assert_eq!(template_generation(&s, "containers/app/web"), 2);
}

#[test]
fn a_node_publishes_its_wireguard_key_and_dial_address() {
    let mut s = ClusterState::default();
    let mut a = node("a");
    a.ip = "10.1.0.11".into();
    a.public_ip = Some("203.0.113.10".into());
    s.apply(&cmd("r1", Op::RegisterNode { node: a }));
    let a = &s.nodes[&1];
    assert_eq!(a.dial_ip(), "203.0.113.10");
    assert_eq!(a.api_addr(), "203.0.113.10:1443");
    assert_eq!(a.raft_addr(), "203.0.113.10:9212");
    // Without a public address the node is dialled at its own.
    assert_eq!(node("b").api_addr(), "127.0.0.1:1443");

    let set = |op_id: &str, key: &str, port: u16| {
        cmd(
            op_id,
            Op::SetNodeWireguard {
                id: 1,
                public_key: key.into(),
                port,
            },
        )
    };
    let before = s.revision;
    assert!(matches!(
        s.apply(&set("k1", "AAAA", 51820)),
        CommandResult::Done { .. }
    ));
    assert_eq!(s.revision, before + 1);
    assert_eq!(s.nodes[&1].wg_public_key.as_deref(), Some("AAAA"));
    assert_eq!(s.nodes[&1].wg_port, Some(51820));
    // The same key again changes nothing.
    s.apply(&set("k2", "AAAA", 51820));
    assert_eq!(s.revision, before + 1);
    // A rotated key replaces the old one.
    s.apply(&set("k3", "BBBB", 51821));
    assert_eq!(s.nodes[&1].wg_public_key.as_deref(), Some("BBBB"));
    assert_eq!(s.nodes[&1].wg_port, Some(51821));
    assert_eq!(
        s.apply(&cmd(
            "k4",
            Op::SetNodeWireguard {
                id: 9,
                public_key: "CCCC".into(),
                port: 1
            }
        )),
        CommandResult::Rejected {
            reason: "node 9 is not a member".into()
        }
    );
}

#[test]
fn node_availability_is_recorded_with_an_event_and_dropped_with_the_node() {
    use crate::scheduler::Availability;
    let mut s = ClusterState::default();
    s.apply(&cmd("n1", Op::RegisterNode { node: node("a") }));
    s.apply(&cmd("n2", Op::RegisterNode { node: node("b") }));
    let set = |s: &mut ClusterState, op_id: &str, id, availability| {
        s.apply(&cmd(op_id, Op::SetNodeAvailability { id, availability }))
    };
    let revision = s.revision;
    assert_eq!(
        set(&mut s, "c1", 2, Availability::Cordoned),
        CommandResult::Done {
            revision: revision + 1
        }
    );
    assert_eq!(
        s.availability,
        BTreeMap::from([(2, Availability::Cordoned)])
    );
    let event = s.events.back().expect("event");
    assert_eq!(
        (event.reason.as_str(), event.message.as_str()),
        ("Cordoned", "node b (id 2) is cordoned")
    );
    // The same again changes nothing.
    assert_eq!(
        set(&mut s, "c2", 2, Availability::Cordoned),
        CommandResult::Done {
            revision: revision + 1
        }
    );
    set(&mut s, "c3", 2, Availability::Draining);
    assert_eq!(
        s.availability,
        BTreeMap::from([(2, Availability::Draining)])
    );
    set(&mut s, "c4", 2, Availability::Active);
    assert!(
        s.availability.is_empty(),
        "active is the absence of an entry"
    );
    assert_eq!(
        set(&mut s, "c5", 9, Availability::Cordoned),
        CommandResult::Rejected {
            reason: "node 9 is not a member".into()
        }
    );
    set(&mut s, "c6", 1, Availability::Cordoned);
    s.apply(&cmd("r1", Op::RemoveNode { id: 1 }));
    assert!(s.availability.is_empty(), "{:?}", s.availability);
}

#[test]
fn restart_rolls_one_definition_without_changing_it() {
    let mut s = ClusterState::default();
    let mut objects = yaml(READERS);
    objects.extend(data_object("configuration", "shared", "1"));
    s.apply(&cmd(
        "a",
        Op::Apply {
            objects,
            owner: None,
        },
    ));
    s.apply(&cmd(
        "p",
        Op::Place {
            updates: vec![PlacementUpdate {
                key: "containers/app/web".parse().unwrap(),
                generation: 1,
                placement: Some(placement(&[1])),
                error: None,
            }],
        },
    ));
    let before = s.clone();
    assert_eq!(s.revision, 2);

    let r = s.apply(&cmd(
        "r",
        Op::Restart {
            key: "containers/app/web".parse().unwrap(),
        },
    ));
    assert_eq!(
        r,
        CommandResult::Objects {
            revision: 3,
            outcomes: vec![ObjectOutcome {
                key: "containers/app/web".parse().unwrap(),
                outcome: Outcome::Restarted,
                generation: 1,
            }],
        }
    );
    // Only the template generation moved: the definition, its generation and its placement
    // (made for generation 1) stay, and no other object changed.
    let web = &s.objects[&"containers/app/web".parse::<ObjectKey>().unwrap()];
    let web_before = &before.objects[&"containers/app/web".parse::<ObjectKey>().unwrap()];
    assert_eq!(
        (web.generation, web.template_generation, web.revision),
        (1, 2, 1)
    );
    assert_eq!(web.object, web_before.object);
    for (key, stored) in &s.objects {
        if key.to_string() != "containers/app/web" {
            assert_eq!(Some(stored), before.objects.get(key), "{key}");
        }
    }
    assert_eq!(s.placements, before.placements);
    assert_eq!(
        s.events.back(),
        Some(&Event {
            revision: 3,
            at_ms: 1000,
            subject: "containers/app/web".into(),
            replica: None,
            node: None,
            reason: "Restarted".into(),
            message: "restart requested: rolling update of its replicas to template 2".into(),
        })
    );

    // A retry of the same operation does not restart twice; a new one does.
    let again = s.apply(&cmd(
        "r",
        Op::Restart {
            key: "containers/app/web".parse().unwrap(),
        },
    ));
    assert_eq!(again, r);
    assert_eq!(template_generation(&s, "containers/app/web"), 2);
    s.apply(&cmd(
        "r2",
        Op::Restart {
            key: "containers/app/web".parse().unwrap(),
        },
    ));
    assert_eq!(template_generation(&s, "containers/app/web"), 3);
    assert_eq!(template_generation(&s, "containers/app/other"), 1);
    assert_eq!(s.revision, 4);

    // Unknown objects and other kinds change nothing.
    let settled = s.clone();
    let r = s.apply(&cmd(
        "nope",
        Op::Restart {
            key: "containers/app/nope".parse().unwrap(),
        },
    ));
    assert_eq!(
        outcomes(r),
        vec![("containers/app/nope".into(), Outcome::NotFound, 0)]
    );
    let r = s.apply(&cmd(
        "conf",
        Op::Restart {
            key: "configuration/app/shared".parse().unwrap(),
        },
    ));
    assert_eq!(
        r,
        CommandResult::Rejected {
            reason: "configuration/app/shared cannot be restarted: only containers definitions \
                     have replicas to restart (not configuration)"
                .into()
        }
    );
    let mut settled_ops = settled.clone();
    settled_ops.recent_ops = s.recent_ops.clone();
    assert_eq!(s, settled_ops);
}

#[test]
fn objects_whose_docker_names_clash_are_refused_whole_by_hand_and_in_a_sync() {
    let named = |group: &str, name: &str| Object {
        meta: Meta {
            group: group.into(),
            name: name.into(),
            labels: Default::default(),
        },
        ..obj("x", "a")
    };
    let mut s = ClusterState::default();
    s.apply(&cmd(
        "g",
        Op::Apply {
            objects: vec![gitops_obj("repo")],
            owner: None,
        },
    ));
    s.apply(&cmd("s1", sync(vec![named("a-b", "c")], vec![], "c1")));
    let revision = s.revision;
    // By hand, with another object in the same batch: nothing of it is applied.
    let r = s.apply(&cmd(
        "h",
        Op::Apply {
            objects: vec![named("x", "y"), named("a", "b-c")],
            owner: None,
        },
    ));
    assert_eq!(
        r,
        CommandResult::Rejected {
            reason: "containers/a-b/c and containers/a/b-c would both be named \"a-b-c\" in Docker (smr names replicas GROUP-NAME-INDEX): rename one of them".into()
        }
    );
    assert_eq!((s.revision, s.objects.len()), (revision, 2));
    // A sync that adds the clashing one is refused; one that renames (deletes the other in
    // the same step) is applied.
    let r = s.apply(&cmd(
        "s2",
        sync(vec![named("a-b", "c"), named("a", "b-c")], vec![], "c2"),
    ));
    assert!(matches!(r, CommandResult::Rejected { .. }), "{r:?}");
    assert_eq!(s.revision, revision);
    let r = s.apply(&cmd(
        "s3",
        sync(vec![named("a", "b-c")], vec![named("a-b", "c").key()], "c3"),
    ));
    assert_eq!(
        outcomes(r),
        vec![
            ("containers/a/b-c".into(), Outcome::Created, 1),
            ("containers/a-b/c".into(), Outcome::Deleted, 1)
        ]
    );
}

#[test]
fn custom_objects_are_keyed_by_their_prefix_and_old_states_are_rekeyed_on_load() {
    let custom = |prefix: &str, value: &str| {
        let mut o = crate::definitions::parse_str(
            "c.yaml",
            &format!("prefix: {prefix}\nkind: custom\nmeta: {{group: proxy, name: routes}}\nspec: {{v: {value}}}\n"),
        )
        .unwrap()
        .remove(0);
        o.prefix = prefix.into();
        o
    };
    let mut s = ClusterState::default();
    let r = s.apply(&cmd(
        "a",
        Op::Apply {
            objects: vec![
                custom("traefik.io/v1", "1"),
                custom("example.com/v2", "2"),
                custom("simplecontainer.io/v1", "3"),
            ],
            owner: None,
        },
    ));
    let mut keys: Vec<String> = outcomes(r).into_iter().map(|(k, _, _)| k).collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "custom/proxy/routes",
            "example.com/v2/custom/proxy/routes",
            "traefik.io/v1/custom/proxy/routes"
        ]
    );
    assert_eq!(s.objects.len(), 3, "no prefix replaces another");
    let r = s.apply(&cmd(
        "d",
        Op::Delete {
            keys: vec!["example.com/v2/custom/proxy/routes".parse().unwrap()],
        },
    ));
    assert_eq!(
        outcomes(r),
        [(
            "example.com/v2/custom/proxy/routes".into(),
            Outcome::Deleted,
            1
        )]
    );
    let traefik: ObjectKey = "traefik.io/v1/custom/proxy/routes".parse().unwrap();
    assert_eq!(s.objects[&traefik].object, custom("traefik.io/v1", "1"));

    // A state saved before keys held the prefix: the custom object sits under
    // custom/proxy/routes. Loading it moves it to its prefixed key; nothing else changes.
    let mut old = serde_json::to_value(&s).unwrap();
    let objects = old["objects"].as_object_mut().unwrap();
    let stored = objects.remove("traefik.io/v1/custom/proxy/routes").unwrap();
    objects.remove("custom/proxy/routes");
    objects.insert("custom/proxy/routes".into(), stored);
    let loaded: ClusterState = serde_json::from_value(old).unwrap();
    let keys: Vec<String> = loaded.objects.keys().map(|k| k.to_string()).collect();
    assert_eq!(keys, ["traefik.io/v1/custom/proxy/routes"]);
    assert_eq!(loaded.objects[&traefik], s.objects[&traefik]);
}

/// Every object the state holds is a `StoredObject` (one copy per node, issue 14): no kind's
/// spec may make all of them large. Unboxed, the gitops spec made each 480 bytes.
#[test]
fn a_stored_object_stays_small_whatever_its_kind() {
    assert!(
        std::mem::size_of::<crate::definitions::Spec>() <= 64,
        "Spec is {} bytes",
        std::mem::size_of::<crate::definitions::Spec>()
    );
    assert!(
        std::mem::size_of::<StoredObject>() <= 256,
        "StoredObject is {} bytes",
        std::mem::size_of::<StoredObject>()
    );
}

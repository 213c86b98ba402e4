use super::*;
use crate::definitions::{DataSpec, Spec};
use crate::state::{Command, CommandResult, Op, new_op_id};

fn config(name: &str, value: &str) -> Object {
    Object::new(
        "app",
        name,
        Spec::Configuration(DataSpec {
            data: [("k".to_string(), value.to_string())].into(),
        }),
    )
}

fn gitops_object(auto: bool) -> Object {
    Object::new(
        "ops",
        "repo",
        Spec::Gitops(Box::new(GitopsSpec {
            repo_url: "git://127.0.0.1/r".into(),
            automatic_sync: auto,
            ..Default::default()
        })),
    )
}

fn key() -> ObjectKey {
    gitops_object(true).key()
}

fn state_with(auto: bool) -> ClusterState {
    let mut s = ClusterState::default();
    apply(
        &mut s,
        Op::Apply {
            objects: vec![gitops_object(auto)],
            owner: None,
        },
    );
    s
}

fn apply(s: &mut ClusterState, op: Op) -> CommandResult {
    s.apply(&Command {
        op_id: new_op_id(),
        at_ms: 5,
        op,
    })
}

fn desired(commit: &str, objects: &[Object]) -> Desired {
    Desired {
        commit: commit.into(),
        generation: 1,
        objects: objects.iter().map(|o| (o.key(), o.clone())).collect(),
    }
}

/// Applies the decision like the loop would and returns the sync it proposed.
fn step(s: &mut ClusterState, d: &Desired, request: u64) -> Option<GitopsSync> {
    match decide(s, &key(), d, request, 7) {
        Decision::Nothing => None,
        Decision::Propose(sync) => {
            let r = apply(s, Op::GitopsSync { sync: sync.clone() });
            assert!(!matches!(r, CommandResult::Rejected { .. }), "{r:?}");
            Some(*sync)
        }
    }
}

#[test]
fn first_sync_deploys_then_nothing_is_left_to_do() {
    let mut s = state_with(true);
    let d = desired("c1", &[config("a", "1"), config("b", "1")]);
    let sync = step(&mut s, &d, 0).expect("a first sync");
    assert_eq!(sync.apply.len(), 2);
    let status = &s.gitops[&key()];
    assert_eq!(status.state, GitopsState::Synced);
    assert_eq!(status.synced_commit.as_deref(), Some("c1"));
    assert_eq!(status.last_sync_ms, Some(7));
    assert_eq!(s.owned_by(&key()).len(), 2);
    assert_eq!(
        step(&mut s, &d, 0),
        None,
        "a new leader finds nothing to do"
    );
}

#[test]
fn a_new_commit_updates_and_prunes() {
    let mut s = state_with(true);
    step(
        &mut s,
        &desired("c1", &[config("a", "1"), config("b", "1")]),
        0,
    );
    let sync = step(&mut s, &desired("c2", &[config("a", "2")]), 0).unwrap();
    assert_eq!(sync.apply, vec![config("a", "2")]);
    assert_eq!(sync.delete, vec![config("b", "1").key()]);
    assert_eq!(s.owned_by(&key()), vec![config("a", "2").key()]);
}

#[test]
fn without_automatic_sync_a_new_commit_waits_for_a_request() {
    let mut s = state_with(false);
    let d = desired("c1", &[config("a", "1")]);
    let sync = step(&mut s, &d, 0).unwrap();
    assert!(sync.apply.is_empty());
    let status = &s.gitops[&key()];
    assert_eq!(status.state, GitopsState::OutOfSync);
    assert!(
        status.message.contains("smrctl gitops sync ops/repo"),
        "{}",
        status.message
    );
    assert!(!s.objects.contains_key(&config("a", "1").key()));
    apply(&mut s, Op::GitopsRequestSync { gitops: key() });
    let sync = step(&mut s, &d, 1).unwrap();
    assert_eq!(sync.apply.len(), 1);
    assert_eq!(s.gitops[&key()].sync_handled, 1);
    assert_eq!(s.gitops[&key()].state, GitopsState::Synced);
}

#[test]
fn drift_is_reported_or_put_back() {
    for auto in [false, true] {
        let mut s = state_with(auto);
        apply(&mut s, Op::GitopsRequestSync { gitops: key() });
        let d = desired("c1", &[config("a", "1"), config("b", "1")]);
        step(&mut s, &d, 1);
        // By hand: change a, delete b.
        apply(
            &mut s,
            Op::Apply {
                objects: vec![config("a", "hand")],
                owner: None,
            },
        );
        apply(
            &mut s,
            Op::Delete {
                keys: vec![config("b", "1").key()],
            },
        );
        let sync = step(&mut s, &d, 0).unwrap();
        if auto {
            assert_eq!(sync.apply.len(), 2, "both put back");
            assert_eq!(s.objects[&config("a", "1").key()].object, config("a", "1"));
            assert!(s.events.iter().any(|e| e.reason == "DriftCorrected"));
        } else {
            let status = &s.gitops[&key()];
            assert_eq!(status.state, GitopsState::Drifted);
            assert_eq!(
                status.drifted,
                vec![config("a", "1").key(), config("b", "1").key()]
            );
            assert_eq!(
                s.objects[&config("a", "1").key()].object,
                config("a", "hand")
            );
        }
    }
}

#[test]
fn objects_held_by_someone_else_are_left_alone_and_reported() {
    let mut s = state_with(true);
    apply(
        &mut s,
        Op::Apply {
            objects: vec![config("mine", "hand")],
            owner: None,
        },
    );
    step(
        &mut s,
        &desired("c1", &[config("mine", "git"), config("a", "1")]),
        0,
    );
    let status = &s.gitops[&key()];
    assert_eq!(status.state, GitopsState::Conflict);
    assert!(
        status.message.contains("configuration/app/mine"),
        "{}",
        status.message
    );
    assert_eq!(
        s.objects[&config("mine", "x").key()].object,
        config("mine", "hand")
    );
    assert!(s.objects.contains_key(&config("a", "1").key()));
}

#[test]
fn a_failure_keeps_what_was_synced() {
    let mut s = state_with(true);
    step(&mut s, &desired("c1", &[config("a", "1")]), 0);
    let sync = failed(
        &s,
        &key(),
        1,
        Some("c2".into()),
        "x.yaml:3:1: bad".into(),
        0,
    )
    .unwrap();
    apply(
        &mut s,
        Op::GitopsSync {
            sync: Box::new(sync),
        },
    );
    let status = &s.gitops[&key()];
    assert_eq!(status.state, GitopsState::Error);
    assert_eq!(status.synced_commit.as_deref(), Some("c1"));
    assert_eq!(status.head_commit.as_deref(), Some("c2"));
    assert!(s.objects.contains_key(&config("a", "1").key()));
    assert!(
        failed(
            &s,
            &key(),
            1,
            Some("c2".into()),
            "x.yaml:3:1: bad".into(),
            0
        )
        .is_none()
    );
}

#[test]
fn a_commit_whose_objects_clash_in_docker_is_an_error_and_a_prefixed_custom_object_syncs() {
    let mut s = state_with(true);
    let containers = |group: &str, name: &str| {
        Object::new(
            group,
            name,
            crate::definitions::ContainersSpec {
                image: "busybox".into(),
                ..Default::default()
            },
        )
    };
    let mut custom = Object::new("app", "routes", Spec::Custom(Default::default()));
    custom.prefix = "traefik.io/v1".into();
    let d = desired("c1", &[containers("a-b", "c"), custom.clone()]);
    step(&mut s, &d, 0).expect("a first sync");
    assert!(
        s.objects
            .contains_key(&"traefik.io/v1/custom/app/routes".parse().unwrap())
    );
    // The next commit adds a/b-c beside a-b/c: nothing of it is applied, the status says why.
    let d = desired(
        "c2",
        &[
            containers("a-b", "c"),
            containers("a", "b-c"),
            config("x", "1"),
        ],
    );
    step(&mut s, &d, 0).expect("an error status");
    let status = &s.gitops[&key()];
    assert_eq!(status.state, GitopsState::Error);
    assert_eq!(
        status.message,
        "commit c2: containers/a-b/c and containers/a/b-c would both be named \"a-b-c\" in Docker (smr names replicas GROUP-NAME-INDEX): rename one of them"
    );
    assert_eq!(status.synced_commit.as_deref(), Some("c1"));
    assert!(!s.objects.contains_key(&config("x", "1").key()));
    // A commit that renames a-b/c to a/b-c is applied.
    let d = desired("c3", &[containers("a", "b-c")]);
    step(&mut s, &d, 0).expect("a sync");
    assert_eq!(s.gitops[&key()].state, GitopsState::Synced);
    assert!(s.objects.contains_key(&containers("a", "b-c").key()));
    assert!(!s.objects.contains_key(&containers("a-b", "c").key()));
    assert!(
        !s.objects
            .contains_key(&"traefik.io/v1/custom/app/routes".parse().unwrap())
    );
}

use super::*;
use crate::scheduler::replica_name;

const NOW: u64 = 1_000_000;

fn desired(index: u32, generation: u64) -> DesiredReplica {
    DesiredReplica {
        index,
        name: replica_name("web", "api", index),
        generation,
        config_hash: "h1".into(),
        restart: RestartPolicy::Always,
    }
}

fn running(id: &str, index: u32, generation: u64) -> ObservedContainer {
    ObservedContainer {
        id: id.into(),
        name: replica_name("web", "api", index),
        index: Some(index),
        generation,
        config_hash: "h1".into(),
        state: ContainerState::Running,
        ready: true,
        restarts: 0,
        smr_managed: true,
        started_ms: Some(10_000),
        finished_ms: None,
    }
}

fn exited(
    id: &str,
    index: u32,
    code: i64,
    restarts: u32,
    started: u64,
    finished: u64,
) -> ObservedContainer {
    ObservedContainer {
        state: ContainerState::Exited { code },
        ready: false,
        restarts,
        started_ms: Some(started),
        finished_ms: Some(finished),
        ..running(id, index, 1)
    }
}

fn status(
    index: u32,
    container: Option<&str>,
    phase: Phase,
    ready: bool,
    restarts: u32,
) -> ReplicaStatus {
    ReplicaStatus {
        index,
        name: replica_name("web", "api", index),
        container: container.map(str::to_owned),
        phase,
        ready,
        restarts,
    }
}

fn plan(d: &[DesiredReplica], o: &[ObservedContainer]) -> NodePlan {
    plan_node(7, d, o, NOW, &Backoff::default())
}

#[test]
fn adopts_running_containers_without_any_action() {
    let mut not_ready = running("c2", 2, 1);
    not_ready.ready = false;
    let p = plan(
        &[desired(1, 1), desired(2, 1)],
        &[not_ready, running("c1", 1, 1)],
    );
    assert_eq!(
        p,
        NodePlan {
            node: 7,
            actions: vec![],
            replicas: vec![
                status(1, Some("c1"), Phase::Running, true, 0),
                status(2, Some("c2"), Phase::Running, false, 0),
            ],
            wake_at_ms: None,
        }
    );
}

#[test]
fn creates_missing_and_starts_created() {
    let created = ObservedContainer {
        state: ContainerState::Created,
        ready: false,
        started_ms: None,
        ..running("c2", 2, 1)
    };
    let p = plan(&[desired(1, 1), desired(2, 1), desired(3, 1)], &[created]);
    assert_eq!(
        p.actions,
        vec![
            Action::Create { index: 1 },
            Action::Start { id: "c2".into() },
            Action::Create { index: 3 },
        ]
    );
    assert_eq!(
        p.replicas,
        vec![
            status(1, None, Phase::Pending, false, 0),
            status(2, Some("c2"), Phase::Starting, false, 0),
            status(3, None, Phase::Pending, false, 0),
        ]
    );
}

#[test]
fn never_touches_unmanaged_containers() {
    let foreign = |id: &str, name: &str, index: Option<u32>, state| ObservedContainer {
        name: name.into(),
        index,
        smr_managed: false,
        state,
        ..running(id, 1, 1)
    };
    let observed = [
        foreign("u1", "web-api-1", None, ContainerState::Running),
        foreign(
            "u2",
            "postgres",
            Some(2),
            ContainerState::Exited { code: 1 },
        ),
        foreign("u3", "web-api-9", Some(9), ContainerState::Running),
    ];
    let p = plan(&[desired(1, 1), desired(2, 1)], &observed);
    assert_eq!(p.actions, vec![Action::Create { index: 2 }]);
    assert_eq!(
        p.replicas[0],
        status(
            1,
            None,
            Phase::Blocked {
                reason: "the name web-api-1 is taken by container u1 which smr does not manage"
                    .into()
            },
            false,
            0
        )
    );
    assert_eq!(p.replicas[0].phase.as_str(), "blocked");
    // Nothing desired: still nothing done to them.
    assert_eq!(plan(&[], &observed).actions, vec![]);
}

#[test]
fn removes_undesired_first_then_replaces_stale() {
    let broken = ObservedContainer {
        index: None,
        ..exited("b0", 1, 0, 0, 1, 2)
    };
    let mut other_config = exited("c2", 2, 0, 0, 1, 2);
    other_config.config_hash = "h0".into();
    let observed = [
        running("c3", 3, 1),
        running("c1", 1, 1),
        other_config,
        broken,
    ];
    let p = plan(&[desired(1, 2), desired(2, 1)], &observed);
    assert_eq!(
        p.actions,
        vec![
            Action::Remove { id: "b0".into() },
            Action::Stop { id: "c3".into() },
            Action::Remove { id: "c3".into() },
            Action::Stop { id: "c1".into() },
            Action::Remove { id: "c1".into() },
            Action::Create { index: 1 },
            Action::Remove { id: "c2".into() },
            Action::Create { index: 2 },
        ]
    );
    assert_eq!(
        p.replicas,
        vec![
            status(1, None, Phase::Replacing, false, 0),
            status(2, None, Phase::Replacing, false, 0),
        ]
    );
}

#[test]
fn keeps_the_best_of_duplicate_claims() {
    let mut older = running("old", 1, 1);
    older.started_ms = Some(5);
    let mut stale = running("stale", 1, 0);
    stale.started_ms = Some(99_999);
    let dead = exited("dead", 1, 1, 0, 1, 2);
    let p = plan(
        &[desired(1, 1)],
        &[stale, dead, older, running("new", 1, 1)],
    );
    assert_eq!(
        p.actions,
        vec![
            Action::Stop { id: "old".into() },
            Action::Remove { id: "old".into() },
            Action::Remove { id: "dead".into() },
            Action::Stop { id: "stale".into() },
            Action::Remove { id: "stale".into() },
        ]
    );
    assert_eq!(
        p.replicas,
        vec![status(1, Some("new"), Phase::Running, true, 0)]
    );
}

#[test]
fn backoff_doubles_from_one_second_up_to_five_minutes() {
    let b = Backoff::default();
    let delays: Vec<u64> = [0, 1, 2, 3, 4, 8, 9, 10, 63, 64, u32::MAX]
        .iter()
        .map(|&n| b.delay_ms(n))
        .collect();
    assert_eq!(
        delays,
        vec![
            1_000, 2_000, 4_000, 8_000, 16_000, 256_000, 300_000, 300_000, 300_000, 300_000,
            300_000
        ]
    );
}

#[test]
fn crash_restarts_wait_for_the_backoff_and_show_crash_loop() {
    let d = [desired(1, 1)];
    // First exit: 1 s after it finished; not yet due, so plan again then.
    let p = plan(&d, &[exited("c1", 1, 137, 0, NOW - 5_000, NOW - 200)]);
    assert_eq!(
        p.actions,
        vec![Action::Restart {
            id: "c1".into(),
            after_ms: NOW + 800
        }]
    );
    assert_eq!(
        p.replicas,
        vec![status(
            1,
            Some("c1"),
            Phase::Restarting { at_ms: NOW + 800 },
            false,
            0
        )]
    );
    assert_eq!(p.wake_at_ms, Some(NOW + 800));

    // Fourth consecutive quick exit: 8 s; crash-loop.
    let p = plan(&d, &[exited("c1", 1, 1, 3, NOW - 3_000, NOW - 1_000)]);
    assert_eq!(
        p.actions,
        vec![Action::Restart {
            id: "c1".into(),
            after_ms: NOW + 7_000
        }]
    );
    assert_eq!(p.replicas[0].phase, Phase::CrashLoop { at_ms: NOW + 7_000 });
    assert_eq!(p.replicas[0].phase.as_str(), "crash-loop");
    assert_eq!(p.wake_at_ms, Some(NOW + 7_000));

    // Many restarts: capped at 5 minutes; already due, so no wake-up needed.
    let p = plan(&d, &[exited("c1", 1, 1, 20, NOW - 400_000, NOW - 300_000)]);
    assert_eq!(
        p.actions,
        vec![Action::Restart {
            id: "c1".into(),
            after_ms: NOW
        }]
    );
    assert_eq!(p.wake_at_ms, None);

    // A run of 10 minutes resets the count: 1 s again, not a crash loop.
    let p = plan(&d, &[exited("c1", 1, 1, 20, NOW - 700_000, NOW - 100_000)]);
    assert_eq!(
        p.actions,
        vec![Action::Restart {
            id: "c1".into(),
            after_ms: NOW - 99_000
        }]
    );
    assert_eq!(
        p.replicas,
        vec![status(
            1,
            Some("c1"),
            Phase::Restarting {
                at_ms: NOW - 99_000
            },
            false,
            0
        )]
    );
}

#[test]
fn restart_policies() {
    let with = |restart| DesiredReplica {
        restart,
        ..desired(1, 1)
    };
    let ok = exited("c1", 1, 0, 0, NOW - 10, NOW - 5);
    let failed = exited("c1", 1, 2, 0, NOW - 10, NOW - 5);

    let p = plan(&[with(RestartPolicy::OnFailure)], std::slice::from_ref(&ok));
    assert_eq!(
        (p.actions, p.replicas[0].phase.clone()),
        (vec![], Phase::Completed)
    );
    let p = plan(
        &[with(RestartPolicy::OnFailure)],
        std::slice::from_ref(&failed),
    );
    assert_eq!(
        p.actions,
        vec![Action::Restart {
            id: "c1".into(),
            after_ms: NOW + 995
        }]
    );
    let p = plan(&[with(RestartPolicy::Never)], &[failed]);
    assert_eq!(
        (p.actions, p.replicas[0].phase.clone()),
        (vec![], Phase::Exited { code: 2 })
    );
    let p = plan(&[with(RestartPolicy::Always)], &[ok]);
    assert_eq!(
        p.actions,
        vec![Action::Restart {
            id: "c1".into(),
            after_ms: NOW + 995
        }]
    );
}

#[test]
fn docker_restarting_is_left_alone() {
    let c = ObservedContainer {
        state: ContainerState::Restarting,
        ready: false,
        ..running("c1", 1, 1)
    };
    let p = plan(&[desired(1, 1)], &[c]);
    assert_eq!(p.actions, vec![]);
    assert_eq!(
        p.replicas,
        vec![status(1, Some("c1"), Phase::Starting, false, 0)]
    );
}

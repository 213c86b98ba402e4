//! The executor against the recording [`FakeRuntime`]: the calls it makes, in order.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::fake::{Call, FakeRuntime};
use super::*;
use crate::definitions::{ContainersSpec, Dependency, DurationValue, Object, ObjectKey};
use crate::runtime::State;
use crate::state::NodeReport;

const T0: u64 = 1_000_000;

fn key(group: &str, name: &str) -> ObjectKey {
    format!("containers/{group}/{name}").parse().unwrap()
}

fn put(state: &mut ClusterState, group: &str, name: &str, spec: ContainersSpec, replicas: u32) {
    crate::fixtures::put_placed(state, Object::new(group, name, spec), 1, replicas);
}

fn spec(image: &str) -> ContainersSpec {
    ContainersSpec {
        image: image.into(),
        ..Default::default()
    }
}

struct Harness {
    fake: Arc<FakeRuntime>,
    executor: Executor<FakeRuntime>,
    state: ClusterState,
    now: u64,
    _files: tempfile::TempDir,
}

impl Harness {
    fn new() -> Self {
        Self::over(Arc::new(FakeRuntime::new()))
    }

    /// A new agent process over the same engine.
    fn over(fake: Arc<FakeRuntime>) -> Self {
        let files = tempfile::tempdir().unwrap();
        let config = ReplicasConfig {
            node: 1,
            network: None,
            dns: Vec::new(),
            files_dir: files.path().to_path_buf(),
            stop_grace: Duration::from_secs(1),
        };
        Harness {
            executor: Executor::new(fake.clone(), config),
            fake,
            state: ClusterState::default(),
            now: T0,
            _files: files,
        }
    }

    async fn pass(&mut self) -> Vec<ReplicaReport> {
        self.fake.set_clock(self.now);
        let observed = self.fake.list_managed().await.unwrap();
        self.executor.pass(&self.state, &observed, self.now).await.0
    }

    /// Passes (letting background tasks run in between) until `done`; at most 20.
    async fn pass_until(&mut self, done: impl Fn(&[Call]) -> bool) -> Vec<Call> {
        let mut calls = Vec::new();
        for _ in 0..20 {
            self.pass().await;
            calls.extend(self.fake.take_calls());
            if done(&calls) {
                return calls;
            }
            for _ in 0..5 {
                tokio::task::yield_now().await;
            }
        }
        panic!("not done after 20 passes: {calls:?}");
    }
}

fn create(name: &str) -> Call {
    Call::Create { name: name.into() }
}

fn start(name: &str) -> Call {
    Call::Start { name: name.into() }
}

fn report<'a>(reports: &'a [ReplicaReport], name: &str) -> &'a ReplicaReport {
    reports.iter().find(|r| r.name == name).unwrap()
}

#[tokio::test]
async fn dependencies_order_creation_on_the_engine() {
    let mut h = Harness::new();
    put(&mut h.state, "app", "db", spec("db"), 2);
    let web = ContainersSpec {
        dependencies: vec![Dependency {
            prefix: None,
            group: "app".into(),
            name: "db".into(),
            timeout: Some(DurationValue::from_secs(30)),
        }],
        ..spec("web")
    };
    put(&mut h.state, "app", "web", web, 1);
    h.pass().await;
    assert_eq!(
        h.fake.take_calls(),
        vec![
            create("app-db-1"),
            start("app-db-1"),
            create("app-db-2"),
            start("app-db-2")
        ]
    );
    let reports = h.pass().await;
    assert_eq!(h.fake.take_calls(), vec![], "web waits for db");
    assert_eq!(report(&reports, "app-web-1").phase, "pending");
    assert_eq!(report(&reports, "app-db-1").phase, "running");

    // The db replicas are reported ready (the report the reconciler proposes).
    let ready: Vec<ReplicaReport> = reports
        .iter()
        .filter(|r| r.key == key("app", "db"))
        .map(|r| ReplicaReport {
            ready: true,
            ..r.clone()
        })
        .collect();
    h.state.reports.insert(
        1,
        NodeReport {
            seq: 1,
            at_ms: T0,
            replicas: ready,
        },
    );
    h.pass().await;
    assert_eq!(
        h.fake.take_calls(),
        vec![create("app-web-1"), start("app-web-1")]
    );
}

#[tokio::test]
async fn an_init_container_runs_to_completion_before_its_replica_is_created() {
    let mut h = Harness::new();
    let with_init = ContainersSpec {
        init_container: Some(Box::new(spec("setup"))),
        ..spec("main")
    };
    put(&mut h.state, "g", "n", with_init, 1);
    let calls = h.pass_until(|c| c.contains(&start("g-n-1"))).await;
    assert_eq!(
        calls,
        vec![
            Call::RunToCompletion {
                name: "g-n-1-init".into()
            },
            create("g-n-1"),
            start("g-n-1")
        ]
    );
    h.pass().await;
    h.pass().await;
    assert_eq!(h.fake.take_calls(), vec![], "not run again");
}

#[tokio::test]
async fn a_failed_init_container_is_reported_and_retried_after_its_backoff() {
    let mut h = Harness::new();
    let with_init = ContainersSpec {
        init_container: Some(Box::new(spec("setup"))),
        ..spec("main")
    };
    put(&mut h.state, "g", "n", with_init, 1);
    h.fake.script_init("g-n-1-init", 1, "boom");
    h.pass().await;
    for _ in 0..5 {
        tokio::task::yield_now().await;
    }
    let reports = h.pass().await;
    assert_eq!(
        report(&reports, "g-n-1").message.as_deref(),
        Some("init container exited with code 1: boom")
    );
    h.now += 999;
    h.pass().await;
    let init = Call::RunToCompletion {
        name: "g-n-1-init".into(),
    };
    assert_eq!(h.fake.take_calls(), vec![init.clone()]);
    h.now += 1;
    h.fake.script_init("g-n-1-init", 0, "");
    let calls = h.pass_until(|c| c.contains(&start("g-n-1"))).await;
    assert_eq!(calls, vec![init, create("g-n-1"), start("g-n-1")]);
}

#[tokio::test]
async fn a_crashed_replica_is_restarted_only_when_its_backoff_is_due() {
    let mut h = Harness::new();
    put(&mut h.state, "g", "n", spec("main"), 1);
    h.pass().await;
    h.fake.take_calls();
    h.now += 5_000;
    h.fake.set_clock(h.now);
    h.fake.exit("g-n-1", 1);
    h.now += 999;
    let reports = h.pass().await;
    assert_eq!(h.fake.take_calls(), vec![]);
    assert_eq!(report(&reports, "g-n-1").phase, "restarting");
    h.now += 1;
    h.pass().await;
    assert_eq!(h.fake.take_calls(), vec![start("g-n-1")]);
    let reports = h.pass().await;
    let r = report(&reports, "g-n-1");
    assert_eq!((r.phase.as_str(), r.restarts), ("running", 1));
    assert_eq!(h.fake.container("g-n-1").unwrap().state, State::Running);
}

#[tokio::test]
async fn a_restarted_agent_adopts_its_running_containers() {
    let mut h = Harness::new();
    put(&mut h.state, "g", "n", spec("main"), 2);
    h.pass().await;
    assert_eq!(h.fake.take_calls().len(), 4);
    let state = h.state.clone();
    let mut again = Harness::over(h.fake.clone());
    again.state = state;
    let reports = again.pass().await;
    assert_eq!(again.fake.take_calls(), vec![], "nothing recreated");
    assert_eq!(report(&reports, "g-n-1").phase, "running");
    assert!(
        report(&reports, "g-n-1").ready,
        "no readiness checks: ready once probed, and reported so by the same pass"
    );
}

/// A new replica is created, started, probed and reported running and ready by one pass: one
/// report (one log write) where each step was one.
#[tokio::test]
async fn one_pass_reports_a_new_replica_running_and_ready() {
    let mut h = Harness::new();
    put(&mut h.state, "g", "n", spec("main"), 2);
    let reports = h.pass().await;
    assert_eq!(
        h.fake.take_calls(),
        vec![
            create("g-n-1"),
            start("g-n-1"),
            create("g-n-2"),
            start("g-n-2")
        ]
    );
    for name in ["g-n-1", "g-n-2"] {
        let r = report(&reports, name);
        assert_eq!((r.phase.as_str(), r.ready), ("running", true), "{name}");
        assert!(r.container_id.is_some(), "{name}: its container named");
    }
    assert!(!h.executor.busy(), "nothing left to do");
}

#[tokio::test]
async fn a_foreign_container_holding_the_name_is_never_touched() {
    let mut h = Harness::new();
    put(&mut h.state, "g", "n", spec("main"), 1);
    let foreign = h.fake.add_foreign("g-n-1");
    let reports = h.pass().await;
    assert_eq!(h.fake.take_calls(), vec![create("g-n-1")]);
    assert_eq!(
        report(&reports, "g-n-1").message.as_deref(),
        Some("container name g-n-1 is already in use")
    );
    for _ in 0..3 {
        h.now += 10_000;
        h.pass().await;
        assert_eq!(h.fake.take_calls(), vec![create("g-n-1")]);
    }
    assert_eq!(h.fake.container("g-n-1").unwrap().id, foreign);
    assert_eq!(h.fake.container("g-n-1").unwrap().state, State::Running);
}

#[tokio::test]
async fn replicas_no_longer_desired_are_stopped_then_removed() {
    let mut h = Harness::new();
    put(&mut h.state, "g", "n", spec("main"), 2);
    h.pass().await;
    h.fake.take_calls();
    h.state.objects.clear();
    h.state.placements.clear();
    let calls = h
        .pass_until(|c| {
            c.contains(&Call::Remove {
                name: "g-n-2".into(),
            })
        })
        .await;
    assert_eq!(
        calls,
        vec![
            Call::Stop {
                name: "g-n-1".into()
            },
            Call::Stop {
                name: "g-n-2".into()
            },
            Call::Remove {
                name: "g-n-1".into()
            },
            Call::Remove {
                name: "g-n-2".into()
            },
        ]
    );
    assert!(h.fake.list_managed().await.unwrap().is_empty());
}

#[tokio::test]
async fn readiness_commands_run_in_the_container() {
    let mut h = Harness::new();
    let checked = ContainersSpec {
        readiness: vec![crate::definitions::Readiness {
            name: "r".into(),
            kind: None,
            url: None,
            method: None,
            body: BTreeMap::new(),
            command: vec!["check".into()],
            timeout: None,
        }],
        ..spec("main")
    };
    put(&mut h.state, "g", "n", checked, 1);
    h.fake.script_exec("g-n-1", 1);
    h.pass().await;
    let reports = h.pass().await;
    assert!(!report(&reports, "g-n-1").ready);
    let exec = Call::Exec {
        name: "g-n-1".into(),
        cmd: vec!["check".into()],
    };
    assert_eq!(h.fake.take_calls().last(), Some(&exec));
    h.fake.script_exec("g-n-1", 0);
    h.pass().await;
    let reports = h.pass().await;
    assert!(report(&reports, "g-n-1").ready);
    assert_eq!(
        h.fake.take_calls(),
        vec![exec],
        "probed once, then known ready"
    );
}

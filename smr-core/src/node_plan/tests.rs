//! The node plan's decisions, asserted as exact action lists (in the style of openraft's engine
//! tests): a world of state and containers, one `plan` per pass, outcomes fed back by hand.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::pass::{Unmet, waiting_status};
use super::*;
use crate::container::{ContainerConfig, ContainerInfo, State, labels};
use crate::convert::restart_of;
use crate::definitions::{
    ContainersSpec, Dependency, DurationValue, Kind, Meta, Object, ObjectKey, RestartMode,
    RestartPolicy,
};
use crate::scheduler::{NodeId, Placement, ReplicaSlot, replica_name};
use crate::state::{ClusterState, NodeReport, ReplicaReport, StoredObject};

const NODE: NodeId = 1;
const T0: u64 = 1_000_000;

fn key(group: &str, name: &str) -> ObjectKey {
    format!("containers/{group}/{name}").parse().unwrap()
}

fn spec(image: &str) -> ContainersSpec {
    ContainersSpec {
        image: image.into(),
        ..Default::default()
    }
}

fn depending_on(image: &str, group: &str, name: &str, timeout_s: u64) -> ContainersSpec {
    ContainersSpec {
        dependencies: vec![Dependency {
            prefix: None,
            group: group.into(),
            name: name.into(),
            timeout: Some(DurationValue::from_secs(timeout_s)),
        }],
        ..spec(image)
    }
}

fn with_restart(image: &str, policy: RestartMode) -> ContainersSpec {
    ContainersSpec {
        restart: Some(RestartPolicy {
            policy,
            initial_backoff: None,
            max_backoff: None,
            max_retries: None,
        }),
        ..spec(image)
    }
}

fn with_init(image: &str, init_image: &str) -> ContainersSpec {
    ContainersSpec {
        init_container: Some(Box::new(spec(init_image))),
        ..spec(image)
    }
}

/// Puts `group/name` with slots `indexes` on this node at generation `template`.
fn put(state: &mut ClusterState, group: &str, name: &str, spec: ContainersSpec, indexes: &[u32]) {
    let k = key(group, name);
    let template = state
        .objects
        .get(&k)
        .map_or(1, |s| s.template_generation + 1);
    state.objects.insert(
        k.clone(),
        StoredObject {
            object: Object {
                kind: Kind::Containers,
                prefix: "simplecontainer.io/v1".into(),
                meta: Meta {
                    group: group.into(),
                    name: name.into(),
                    labels: Default::default(),
                },
                spec: spec.into(),
            },
            generation: template,
            template_generation: template,
            revision: 1,
            created_ms: 0,
            updated_ms: 0,
            owner: None,
        },
    );
    let slots = indexes
        .iter()
        .map(|&i| {
            (
                i,
                ReplicaSlot {
                    node: NODE,
                    generation: template,
                    surge: false,
                    previous: None,
                },
            )
        })
        .collect();
    state.placements.insert(k, Placement { replicas: slots });
}

/// What the executor's renderer would give, without I/O: the hash follows the image.
fn render_one(stored: &StoredObject, index: u32, generation: u64) -> Result<Rendered, String> {
    let key = stored.object.key();
    let spec = stored.object.spec.as_containers().unwrap();
    if spec.image == "broken" {
        return Err("envs: configuration key missing".into());
    }
    let name = replica_name(&key.group, &key.name, index);
    let config = |name: String, image: &str, init: Option<&str>| {
        let mut labels = BTreeMap::from([
            (labels::OWNER.to_string(), key.to_string()),
            (labels::REPLICA.to_string(), index.to_string()),
            (labels::GENERATION.to_string(), generation.to_string()),
            (labels::CONFIG_HASH.to_string(), format!("h-{image}")),
        ]);
        match init {
            Some(replica) => labels.insert(labels::INIT.into(), replica.into()),
            None => labels.insert(labels::MANAGED.into(), "true".into()),
        };
        ContainerConfig {
            name: name.clone(),
            hostname: name,
            image: image.into(),
            labels,
            ..Default::default()
        }
    };
    Ok(Rendered {
        container: config(name.clone(), &spec.image, None),
        init: spec
            .init_container
            .as_ref()
            .map(|i| config(format!("{name}-init"), &i.image, Some(&name))),
        files: Vec::new(),
    })
}

/// A world: the replicated state, the engine's containers and a clock.
struct World {
    state: ClusterState,
    containers: Vec<ContainerInfo>,
    stopping: BTreeSet<String>,
    now: u64,
    planner: NodePlanner,
}

impl World {
    fn new() -> Self {
        World {
            state: ClusterState::default(),
            containers: Vec::new(),
            stopping: BTreeSet::new(),
            now: T0,
            planner: NodePlanner::new(NODE, Some("cluster".into())),
        }
    }

    fn desired(&self) -> Desired<'_> {
        Desired {
            state: &self.state,
            replicas: desired_replicas(&self.state, NODE, restart_of, render_one),
        }
    }

    /// One plan; the outcomes are recorded by the caller, then [`World::reports`].
    fn plan(&mut self) -> Pass {
        let replicas = desired_replicas(&self.state, NODE, restart_of, render_one);
        let d = Desired {
            state: &self.state,
            replicas,
        };
        let o = Observed {
            containers: &self.containers,
            stopping: &self.stopping,
            now_ms: self.now,
        };
        self.planner.plan(&d, &o)
    }

    fn reports(&mut self, pass: &Pass) -> Vec<ReplicaReport> {
        let observed = self.containers.clone();
        self.reports_of(pass, &observed)
    }

    /// Reports over the containers observed before the actions ran, as the executor does.
    fn reports_of(&mut self, pass: &Pass, observed: &[ContainerInfo]) -> Vec<ReplicaReport> {
        let replicas = desired_replicas(&self.state, NODE, restart_of, render_one);
        let d = Desired {
            state: &self.state,
            replicas,
        };
        let o = Observed {
            containers: observed,
            stopping: &self.stopping,
            now_ms: self.now,
        };
        let reports = self.planner.reports(&d, &o, pass);
        self.planner.retain(&d, &o);
        reports
    }

    /// A pass whose actions all succeed: creates and starts become running containers.
    fn pass(&mut self) -> (Vec<NodeAction>, Vec<ReplicaReport>) {
        let observed = self.containers.clone();
        let pass = self.plan();
        for action in &pass.actions {
            self.apply(action);
        }
        let reports = self.reports_of(&pass, &observed);
        (pass.actions, reports)
    }

    fn apply(&mut self, action: &NodeAction) {
        match action {
            NodeAction::CreateBatch { replicas } => {
                for (name, config) in replicas {
                    self.run(config);
                    self.planner.record(
                        Outcome::Created {
                            replica: name.clone(),
                        },
                        self.now,
                    );
                }
            }
            NodeAction::Create { replica, config } => {
                self.run(config);
                let outcome = Outcome::Created {
                    replica: replica.clone(),
                };
                self.planner.record(outcome, self.now);
            }
            NodeAction::Stop { id } => {
                self.stopping.insert(id.clone());
            }
            NodeAction::Remove { id, .. } => self.containers.retain(|c| &c.id != id),
            NodeAction::Start { id, .. } | NodeAction::Restart { id, .. } => {
                let now = self.now;
                let c = self.containers.iter_mut().find(|c| &c.id == id).unwrap();
                c.state = State::Running;
                c.started_ms = Some(now);
                c.finished_ms = None;
                c.exit_code = None;
                if let NodeAction::Restart { replica, .. } = action {
                    let outcome = Outcome::Restarted {
                        replica: replica.clone(),
                    };
                    self.planner.record(outcome, now);
                }
            }
            NodeAction::RunInit { .. } => {}
        }
    }

    /// A running container of `config`, id `id-<name>`.
    fn run(&mut self, config: &ContainerConfig) {
        self.containers.push(ContainerInfo {
            id: format!("id-{}", config.name),
            name: config.name.clone(),
            labels: config.labels.clone(),
            state: State::Running,
            exit_code: None,
            started_ms: Some(self.now),
            finished_ms: None,
            ips: BTreeMap::from([("cluster".into(), "10.1.0.7".parse().unwrap())]),
            image: config.image.clone(),
        });
    }

    fn container(&mut self, name: &str) -> &mut ContainerInfo {
        self.containers.iter_mut().find(|c| c.name == name).unwrap()
    }

    /// The stop of `id` finished: the container exited.
    fn stopped(&mut self, id: &str) {
        self.stopping.remove(id);
        let c = self.containers.iter_mut().find(|c| c.id == id).unwrap();
        c.state = State::Exited;
        c.exit_code = Some(137);
    }

    fn exit(&mut self, name: &str, code: i64) {
        let now = self.now;
        let c = self.container(name);
        c.state = State::Exited;
        c.exit_code = Some(code);
        c.finished_ms = Some(now);
    }

    /// Another node's report says every replica of `group/name` is ready.
    fn all_ready(&mut self, group: &str, name: &str) {
        let k = key(group, name);
        let replicas = self.state.placements[&k]
            .replicas
            .keys()
            .map(|&index| ReplicaReport {
                key: k.clone(),
                index,
                name: replica_name(group, name, index),
                container_id: None,
                phase: "running".into(),
                ready: true,
                ip: None,
                restarts: 0,
                generation: 1,
                image: String::new(),
                started_ms: None,
                message: None,
                ips: Default::default(),
            })
            .collect();
        self.state.reports.insert(
            7,
            NodeReport {
                seq: 1,
                at_ms: 0,
                replicas,
            },
        );
    }

    fn config(&self, group: &str, name: &str, index: u32) -> ContainerConfig {
        let stored = &self.state.objects[&key(group, name)];
        let generation = self.state.placements[&key(group, name)].replicas[&index].generation;
        render_one(stored, index, generation).unwrap().container
    }

    fn init(&self, group: &str, name: &str, index: u32) -> ContainerConfig {
        let stored = &self.state.objects[&key(group, name)];
        render_one(stored, index, 1).unwrap().init.unwrap()
    }
}

fn batch(configs: &[&ContainerConfig]) -> NodeAction {
    NodeAction::CreateBatch {
        replicas: configs
            .iter()
            .map(|c| (c.name.clone(), (*c).clone()))
            .collect(),
    }
}

fn report<'a>(reports: &'a [ReplicaReport], name: &str) -> &'a ReplicaReport {
    reports
        .iter()
        .find(|r| r.name == name)
        .unwrap_or_else(|| panic!("no report for {name} in {reports:?}"))
}

fn phase(reports: &[ReplicaReport], name: &str) -> (String, Option<String>) {
    let r = report(reports, name);
    (r.phase.clone(), r.message.clone())
}

#[test]
fn a_late_dependency_turns_a_waiting_replica_blocked_after_its_timeout() {
    let unmet = Unmet {
        what: "dependency app/db (containers/app/db: 0/2 ready)".into(),
        timeout: Some(Duration::from_secs(30)),
    };
    let (phase, message) = waiting_status(&unmet, Duration::from_secs(12));
    assert_eq!(phase, "pending");
    assert_eq!(
        message,
        "waiting for dependency app/db (containers/app/db: 0/2 ready) (for 12s)"
    );
    let (phase, message) = waiting_status(&unmet, Duration::from_secs(31));
    assert_eq!(phase, "blocked");
    assert!(
        message.contains("not ready after 31s (dependency timeout 30s)"),
        "{message}"
    );
    let forever = Unmet {
        timeout: None,
        ..unmet
    };
    assert_eq!(
        waiting_status(&forever, Duration::from_secs(3600)).0,
        "pending"
    );
}

#[test]
fn a_replica_is_created_only_once_its_dependency_is_ready() {
    let mut w = World::new();
    put(&mut w.state, "app", "db", spec("db"), &[1, 2]);
    put(
        &mut w.state,
        "app",
        "web",
        depending_on("web", "app", "db", 30),
        &[1],
    );
    let (db1, db2, web1) = (
        w.config("app", "db", 1),
        w.config("app", "db", 2),
        w.config("app", "web", 1),
    );

    let (actions, reports) = w.pass();
    assert_eq!(actions, vec![batch(&[&db1, &db2])], "web waits for db");
    assert_eq!(
        phase(&reports, "app-web-1"),
        (
            "pending".into(),
            Some("waiting for dependency app/db (containers/app/db: 0/2 ready) (for 0s)".into())
        )
    );
    assert_eq!(report(&reports, "app-db-1").phase, "pending");

    w.now += 31_000;
    let (actions, reports) = w.pass();
    assert_eq!(actions, vec![]);
    let (p, message) = phase(&reports, "app-web-1");
    assert_eq!(p, "blocked");
    assert!(
        message
            .unwrap()
            .contains("is not ready after 31s (dependency timeout 30s); still waiting")
    );

    w.all_ready("app", "db");
    let (actions, reports) = w.pass();
    assert_eq!(actions, vec![batch(&[&web1])]);
    assert_eq!(report(&reports, "app-web-1").phase, "pending");
    assert_eq!(report(&w.pass().1, "app-web-1").phase, "running");

    // Once it exists, a replica is no longer gated: db going unready changes nothing for web.
    w.state.reports.clear();
    w.exit("app-web-1", 1);
    let (actions, _) = w.pass();
    assert_eq!(
        actions,
        vec![],
        "restart not due yet, and no gating of an existing replica"
    );
}

#[test]
fn a_dependency_that_matches_nothing_is_waited_for() {
    let mut w = World::new();
    put(
        &mut w.state,
        "app",
        "web",
        depending_on("web", "app", "cache", 30),
        &[1],
    );
    let (actions, reports) = w.pass();
    assert_eq!(actions, vec![]);
    assert_eq!(
        phase(&reports, "app-web-1"),
        (
            "pending".into(),
            Some("waiting for dependency app/cache (for 0s)".into())
        )
    );
}

#[test]
fn init_container_runs_first_fails_backs_off_and_the_replica_is_created_after_success() {
    let mut w = World::new();
    put(&mut w.state, "g", "n", with_init("main", "setup"), &[1]);
    let (main, init) = (w.config("g", "n", 1), w.init("g", "n", 1));
    let run_init = |hash: &str| NodeAction::RunInit {
        replica: "g-n-1".into(),
        hash: hash.into(),
        config: init.clone(),
    };

    let (actions, reports) = w.pass();
    assert_eq!(actions, vec![run_init("h-main")]);
    assert_eq!(
        phase(&reports, "g-n-1"),
        (
            "pending".into(),
            Some("init container g-n-1-init running".into())
        )
    );
    // Still running: nothing new.
    let (actions, reports) = w.pass();
    assert_eq!(actions, vec![]);
    assert_eq!(
        report(&reports, "g-n-1").message.as_deref(),
        Some("init container g-n-1-init running")
    );

    // It fails: the failure shows alone in this pass, with the countdown in the next.
    let failed = |w: &mut World| {
        let outcome = Outcome::InitFinished {
            replica: "g-n-1".into(),
            hash: "h-main".into(),
            result: Ok((1, "no config".into())),
        };
        w.planner.record(outcome, w.now);
    };
    failed(&mut w);
    let (actions, reports) = w.pass();
    assert_eq!(actions, vec![]);
    let why = "init container exited with code 1: no config";
    assert_eq!(report(&reports, "g-n-1").message.as_deref(), Some(why));
    w.now += 500;
    let (actions, reports) = w.pass();
    assert_eq!(actions, vec![]);
    assert_eq!(
        report(&reports, "g-n-1").message.clone().unwrap(),
        format!("{why} (again in 1s)")
    );
    // After the backoff (1 s), it runs again; then 2 s, 4 s... at most 60 s.
    w.now += 500;
    let (actions, reports) = w.pass();
    assert_eq!(actions, vec![run_init("h-main")]);
    assert_eq!(
        report(&reports, "g-n-1").message.clone().unwrap(),
        format!("init container g-n-1-init running again; last run: {why}")
    );
    for pause_s in [2, 4, 8, 16, 32, 60, 60] {
        failed(&mut w);
        w.pass();
        w.now += pause_s * 1000 - 1;
        assert_eq!(w.pass().0, vec![], "still backing off before {pause_s}s");
        w.now += 1;
        assert_eq!(
            w.pass().0,
            vec![run_init("h-main")],
            "again after {pause_s}s"
        );
    }

    // It completes: the replica is created alone (not batched), once.
    let outcome = Outcome::InitFinished {
        replica: "g-n-1".into(),
        hash: "h-main".into(),
        result: Ok((0, String::new())),
    };
    w.planner.record(outcome, w.now);
    let (actions, reports) = w.pass();
    assert_eq!(
        actions,
        vec![NodeAction::Create {
            replica: "g-n-1".into(),
            config: main.clone()
        }]
    );
    assert_eq!(report(&reports, "g-n-1").phase, "pending");
    let (actions, reports) = w.pass();
    assert_eq!(actions, vec![], "the init container is not run again");
    assert_eq!(report(&reports, "g-n-1").phase, "running");

    // A new template (new hash) runs the init container again, already while the old
    // container stops (the init path is not held by the stopping name, as before).
    put(&mut w.state, "g", "n", with_init("main2", "setup"), &[1]);
    let init2 = render_one(&w.state.objects[&key("g", "n")], 1, 2)
        .unwrap()
        .init
        .unwrap();
    let (actions, _) = w.pass();
    assert_eq!(
        actions,
        vec![
            NodeAction::Stop {
                id: "id-g-n-1".into()
            },
            NodeAction::RunInit {
                replica: "g-n-1".into(),
                hash: "h-main2".into(),
                config: init2
            }
        ]
    );
    w.stopped("id-g-n-1");
    let (actions, _) = w.pass();
    assert_eq!(
        actions,
        vec![NodeAction::Remove {
            id: "id-g-n-1".into(),
            replica: "g-n-1".into()
        }]
    );
    // An outcome for a run nobody waits for any more (old hash) changes nothing.
    w.planner.record(
        Outcome::InitFinished {
            replica: "g-n-1".into(),
            hash: "h-main".into(),
            result: Ok((0, String::new())),
        },
        w.now,
    );
    assert!(w.planner.init_running("g-n-1", "h-main2"));
    assert_eq!(w.pass().0, vec![]);

    // Without an init container any more, the run is forgotten (the executor aborts it).
    put(&mut w.state, "g", "n", spec("main3"), &[1]);
    let (actions, _) = w.pass();
    assert_eq!(actions, vec![batch(&[&w.config("g", "n", 1)])]);
    assert!(!w.planner.init_running("g-n-1", "h-main2"));
}

#[test]
fn an_exited_replica_is_restarted_when_its_backoff_is_due_with_growing_delays() {
    let mut w = World::new();
    put(&mut w.state, "g", "a", spec("a"), &[1]);
    w.pass();
    w.now += 5_000;
    w.exit("g-a-1", 1);
    let finished = w.now;

    let pass = w.plan();
    assert_eq!(pass.actions, vec![]);
    assert_eq!(pass.wake_at_ms, Some(finished + 1_000));
    let reports = w.reports(&pass);
    assert_eq!(
        phase(&reports, "g-a-1"),
        ("restarting".into(), Some("exited with code 1".into()))
    );

    w.now = finished + 1_000;
    let restart = NodeAction::Restart {
        id: "id-g-a-1".into(),
        replica: "g-a-1".into(),
    };
    let (actions, reports) = w.pass();
    assert_eq!(actions, vec![restart.clone()]);
    assert_eq!(report(&reports, "g-a-1").restarts, 1);

    // A quick second exit waits 2 s, in crash-loop.
    w.now += 100;
    w.exit("g-a-1", 1);
    let finished = w.now;
    let pass = w.plan();
    assert_eq!(
        (pass.actions.clone(), pass.wake_at_ms),
        (vec![], Some(finished + 2_000))
    );
    assert_eq!(report(&w.reports(&pass), "g-a-1").phase, "crash-loop");
    w.now = finished + 1_999;
    assert_eq!(w.pass().0, vec![]);
    w.now += 1;
    assert_eq!(w.pass().0, vec![restart.clone()]);

    // A run of 10 minutes resets the count: 1 s again.
    w.now += 600_000;
    w.exit("g-a-1", 1);
    let pass = w.plan();
    assert_eq!(pass.wake_at_ms, Some(w.now + 1_000));
    assert_eq!(report(&w.reports(&pass), "g-a-1").phase, "restarting");
}

#[test]
fn restart_policies_never_and_on_failure_leave_exited_containers_alone() {
    let mut w = World::new();
    put(
        &mut w.state,
        "g",
        "never",
        with_restart("a", RestartMode::Never),
        &[1],
    );
    put(
        &mut w.state,
        "g",
        "once",
        with_restart("b", RestartMode::OnFailure),
        &[1],
    );
    w.pass();
    w.exit("g-never-1", 3);
    w.exit("g-once-1", 0);
    w.now += 3_600_000;
    let (actions, reports) = w.pass();
    assert_eq!(actions, vec![]);
    assert_eq!(
        phase(&reports, "g-never-1"),
        ("exited".into(), Some("exited with code 3".into()))
    );
    assert_eq!(report(&reports, "g-once-1").phase, "completed");
}

#[test]
fn an_agent_restart_adopts_running_containers_then_probes_them() {
    let mut w = World::new();
    put(&mut w.state, "g", "a", spec("a"), &[1, 2]);
    w.pass();
    // A new agent process: a fresh planner over the same containers.
    w.planner = NodePlanner::new(NODE, Some("cluster".into()));
    let pass = w.plan();
    assert_eq!(pass.actions, vec![], "nothing is recreated");
    let reports = w.reports(&pass);
    let r = report(&reports, "g-a-1");
    assert_eq!((r.phase.as_str(), r.ready), ("running", false));
    assert_eq!(r.container_id.as_deref(), Some("id-g-a-1"));
    assert_eq!(r.ip.as_deref(), Some("10.1.0.7"));
    assert_eq!(r.image, "a");

    let d = w.desired();
    let o = Observed {
        containers: &w.containers,
        stopping: &w.stopping,
        now_ms: w.now,
    };
    let probes = w.planner.probes(&d, &o);
    assert_eq!(
        probes,
        vec![
            Probe {
                id: "id-g-a-1".into(),
                started_ms: T0,
                checks: vec![]
            },
            Probe {
                id: "id-g-a-2".into(),
                started_ms: T0,
                checks: vec![]
            }
        ]
    );
    w.planner.record(
        Outcome::Probed {
            id: "id-g-a-1".into(),
            started_ms: T0,
        },
        w.now,
    );
    let (actions, reports) = w.pass();
    assert_eq!(actions, vec![]);
    assert!(report(&reports, "g-a-1").ready);
    assert!(!report(&reports, "g-a-2").ready);
}

#[test]
fn probes_carry_the_checks_with_the_replica_address_and_capped_timeouts() {
    let mut w = World::new();
    let readiness = crate::definitions::parse_str(
        "t.yaml",
        "kind: containers\nmeta: {group: g, name: a}\nspec:\n  image: a\n  readiness:\n    - name: c\n      command: [\"true\"]\n      timeout: 60s\n    - name: h\n      type: http\n      url: http://localhost:8080/health\n      method: post\n      timeout: 1s\n",
    )
    .unwrap()[0]
        .spec
        .as_containers()
        .unwrap()
        .readiness
        .clone();
    put(
        &mut w.state,
        "g",
        "a",
        ContainersSpec {
            readiness,
            ..spec("a")
        },
        &[1],
    );
    w.pass();
    let d = w.desired();
    let o = Observed {
        containers: &w.containers,
        stopping: &w.stopping,
        now_ms: w.now,
    };
    assert_eq!(
        w.planner.probes(&d, &o)[0].checks,
        vec![
            Check::Command {
                cmd: vec!["true".into()],
                timeout: Duration::from_secs(5)
            },
            Check::Http {
                url: Some("http://10.1.0.7:8080/health".into()),
                method: "POST".into(),
                body: BTreeMap::new(),
                timeout: Duration::from_secs(1)
            }
        ]
    );
}

#[test]
fn a_slot_the_rollout_has_not_reached_keeps_its_container() {
    let mut w = World::new();
    put(&mut w.state, "g", "a", spec("a"), &[1]);
    w.pass();
    // The template changes; the slot stays at generation 1 until the rollout reaches it.
    put(&mut w.state, "g", "a", spec("b"), &[1]);
    w.state
        .placements
        .get_mut(&key("g", "a"))
        .unwrap()
        .replicas
        .get_mut(&1)
        .unwrap()
        .generation = 1;
    let (actions, reports) = w.pass();
    assert_eq!(actions, vec![]);
    assert_eq!(report(&reports, "g-a-1").image, "a");
}

#[test]
fn a_new_template_replaces_the_container_stop_in_the_background_then_remove_and_create() {
    let mut w = World::new();
    put(&mut w.state, "g", "a", spec("a"), &[1]);
    w.pass();
    put(&mut w.state, "g", "a", spec("b"), &[1]);
    let new = w.config("g", "a", 1);
    // plan_node says [Stop, Remove, Create]: the pass only stops (in the background).
    let (actions, reports) = w.pass();
    assert_eq!(
        actions,
        vec![NodeAction::Stop {
            id: "id-g-a-1".into()
        }]
    );
    assert_eq!(report(&reports, "g-a-1").phase, "replacing");
    // While the stop runs: no second stop, no remove, no create of the held name.
    assert_eq!(w.pass().0, vec![]);
    assert_eq!(w.pass().0, vec![]);
    w.stopped("id-g-a-1");
    let (actions, reports) = w.pass();
    assert_eq!(
        actions,
        vec![
            NodeAction::Remove {
                id: "id-g-a-1".into(),
                replica: "g-a-1".into()
            },
            batch(&[&new])
        ]
    );
    let r = report(&reports, "g-a-1");
    assert_eq!(
        (r.phase.as_str(), r.generation, r.image.as_str()),
        ("replacing", 2, "a")
    );
    let (actions, reports) = w.pass();
    assert_eq!(actions, vec![]);
    assert_eq!(report(&reports, "g-a-1").image, "b");
}

#[test]
fn replicas_no_longer_desired_are_removed_and_foreign_or_broken_labels_handled() {
    let mut w = World::new();
    put(&mut w.state, "g", "a", spec("a"), &[1, 2, 3]);
    w.pass();
    // Scale down to one, and delete object g/gone whose exited container is still there.
    put(&mut w.state, "g", "a", spec("a"), &[1]);
    w.state
        .objects
        .get_mut(&key("g", "a"))
        .unwrap()
        .template_generation = 1;
    w.state
        .placements
        .get_mut(&key("g", "a"))
        .unwrap()
        .replicas
        .get_mut(&1)
        .unwrap()
        .generation = 1;
    let mut gone = w.containers[0].clone();
    gone.id = "id-gone".into();
    gone.name = "g-gone-1".into();
    gone.state = State::Exited;
    gone.labels
        .insert(labels::OWNER.into(), "containers/g/gone".into());
    w.containers.push(gone);
    // A managed container whose labels cannot be read.
    let mut odd = w.containers[0].clone();
    odd.id = "id-odd".into();
    odd.name = "odd".into();
    odd.labels = BTreeMap::from([(labels::MANAGED.into(), "true".into())]);
    w.containers.push(odd);
    let observed: BTreeSet<String> = w.containers.iter().map(|c| c.id.clone()).collect();
    let (actions, reports) = w.pass();
    assert_eq!(
        actions,
        vec![
            // Owner "" sorts first; it has no plan, so its container goes.
            NodeAction::Stop {
                id: "id-odd".into()
            },
            NodeAction::Stop {
                id: "id-g-a-2".into()
            },
            NodeAction::Stop {
                id: "id-g-a-3".into()
            },
            NodeAction::Remove {
                id: "id-gone".into(),
                replica: "g-gone-1".into()
            },
        ]
    );
    for a in &actions {
        if let NodeAction::Stop { id } | NodeAction::Remove { id, .. } = a {
            assert!(observed.contains(id), "{id} is not an observed container");
        }
    }
    assert_eq!(
        reports.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
        ["g-a-1"]
    );
    for id in ["id-odd", "id-g-a-2", "id-g-a-3"] {
        w.stopped(id);
    }
    let (actions, _) = w.pass();
    assert_eq!(
        actions,
        vec![
            NodeAction::Remove {
                id: "id-odd".into(),
                replica: "odd".into()
            },
            NodeAction::Remove {
                id: "id-g-a-2".into(),
                replica: "g-a-2".into()
            },
            NodeAction::Remove {
                id: "id-g-a-3".into(),
                replica: "g-a-3".into()
            },
        ]
    );
    assert_eq!(w.pass().0, vec![]);
}

#[test]
fn a_replica_that_cannot_be_rendered_is_blocked_without_action() {
    let mut w = World::new();
    put(&mut w.state, "g", "a", spec("broken"), &[1]);
    let (actions, reports) = w.pass();
    assert_eq!(actions, vec![]);
    assert_eq!(
        phase(&reports, "g-a-1"),
        (
            "blocked".into(),
            Some("envs: configuration key missing".into())
        )
    );
}

#[test]
fn plain_creations_come_last_as_one_batch_after_the_removals() {
    let mut w = World::new();
    put(&mut w.state, "g", "a", spec("a"), &[1]);
    w.pass();
    w.now += 1_000;
    w.exit("g-a-1", 0);
    // The exited container of index 1 is dropped with index 1 (scale to 2..=7).
    put(&mut w.state, "g", "a", spec("a"), &[2, 3, 4, 5, 6, 7]);
    w.state
        .objects
        .get_mut(&key("g", "a"))
        .unwrap()
        .template_generation = 1;
    for slot in w
        .state
        .placements
        .get_mut(&key("g", "a"))
        .unwrap()
        .replicas
        .values_mut()
    {
        slot.generation = 1;
    }
    let configs: Vec<ContainerConfig> = (2..=7).map(|i| w.config("g", "a", i)).collect();
    let (actions, reports) = w.pass();
    assert_eq!(
        actions,
        vec![
            NodeAction::Remove {
                id: "id-g-a-1".into(),
                replica: "g-a-1".into()
            },
            batch(&configs.iter().collect::<Vec<_>>())
        ]
    );
    assert_eq!(reports.len(), 6);
    assert!(
        reports
            .iter()
            .all(|r| r.phase == "pending" && r.restarts == 0)
    );
}

#[test]
fn creation_failures_are_reported_on_the_replica() {
    let mut w = World::new();
    put(&mut w.state, "g", "a", spec("a"), &[1]);
    let pass = w.plan();
    assert_eq!(pass.actions, vec![batch(&[&w.config("g", "a", 1)])]);
    let outcome = Outcome::Failed {
        replica: "g-a-1".into(),
        error: "container name g-a-1 is already in use".into(),
    };
    w.planner.record(outcome, w.now);
    let reports = w.reports(&pass);
    assert_eq!(
        phase(&reports, "g-a-1"),
        (
            "pending".into(),
            Some("container name g-a-1 is already in use".into())
        )
    );
    // Reported once; the next pass tries again.
    let (actions, reports) = w.pass();
    assert_eq!(actions.len(), 1);
    assert_eq!(report(&reports, "g-a-1").message, None);
}

//! [`NodePlanner`]: one reconcile pass of a node, from (desired, observed) to exact actions.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use crate::container::{ContainerConfig, ContainerInfo, FileWrite, State, labels};
use crate::definitions::{ContainersSpec, ObjectKey, ReadinessType};
use crate::scheduler::{
    self, Action, Backoff, ContainerState, DesiredReplica, NodeId, ObservedContainer, Phase,
    ReplicaStatus, RestartPolicy,
};
use crate::state::{ClusterState, ReplicaReport, StoredObject};

/// A replica's rendered containers: the replica itself and its init container, if any, and the
/// files they mount (the executor writes them before planning; the plan does not look at them).
#[derive(Clone, Debug, PartialEq)]
pub struct Rendered {
    pub container: ContainerConfig,
    pub init: Option<ContainerConfig>,
    pub files: Vec<FileWrite>,
}

/// One placement slot of this node with its rendered configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct RenderedReplica {
    pub key: ObjectKey,
    pub index: u32,
    /// The container name, [`scheduler::replica_name`].
    pub name: String,
    pub slot_generation: u64,
    /// The object's template generation: a slot behind it keeps the container it runs.
    pub template_generation: u64,
    pub restart: RestartPolicy,
    /// Why the replica cannot be rendered (reported `blocked`, no action).
    pub rendered: Result<Rendered, String>,
}

/// What the replicated state asks of this node.
pub struct Desired<'a> {
    pub state: &'a ClusterState,
    pub replicas: Vec<RenderedReplica>,
}

/// What the engine and the executor's background work show at one instant.
pub struct Observed<'a> {
    /// Every container smr manages on the engine (`Runtime::list_managed`).
    pub containers: &'a [ContainerInfo],
    /// Ids whose background stop has not finished.
    pub stopping: &'a BTreeSet<String>,
    pub now_ms: u64,
}

/// The replicas placed on `node`, in placement order, rendered by `render(stored, index,
/// slot generation)`, with the restart policy `restart_of` gives. Objects that are not
/// `containers` objects are skipped. Costs O(log n + that node's slots): the node's slots come
/// from the state's per-node index ([`ClusterState::slots_on`]), not a scan of every placement.
pub fn desired_replicas(
    state: &ClusterState,
    node: NodeId,
    restart_of: fn(&ContainersSpec) -> RestartPolicy,
    mut render: impl FnMut(&StoredObject, u32, u64) -> Result<Rendered, String>,
) -> Vec<RenderedReplica> {
    let mut replicas = Vec::new();
    for (key, indexes) in &state.slots_on(node) {
        let (Some(placement), Some(stored)) = (state.placements.get(key), state.objects.get(key))
        else {
            continue;
        };
        let Some(spec) = stored.object.spec.as_containers() else {
            continue;
        };
        for &index in indexes {
            let Some(slot) = placement.replicas.get(&index) else {
                continue;
            };
            replicas.push(RenderedReplica {
                key: key.clone(),
                index,
                name: scheduler::replica_name(&key.group, &key.name, index),
                slot_generation: slot.generation,
                template_generation: stored.template_generation,
                restart: restart_of(spec),
                rendered: render(stored, index, slot.generation),
            });
        }
    }
    replicas
}

/// What the executor does, in list order.
#[derive(Clone, Debug, PartialEq)]
pub enum NodeAction {
    /// Stop in the background (grace period); the container is removed in a later pass.
    Stop {
        id: String,
    },
    Remove {
        id: String,
        replica: String,
    },
    Start {
        id: String,
        replica: String,
    },
    /// Start an exited container again (its backoff is due).
    Restart {
        id: String,
        replica: String,
    },
    /// Run the init container in the background; report back [`Outcome::InitFinished`].
    RunInit {
        replica: String,
        hash: String,
        config: ContainerConfig,
    },
    /// Create and start a replica whose init container completed.
    Create {
        replica: String,
        config: ContainerConfig,
    },
    /// Create and start these replicas, a few at a time.
    CreateBatch {
        replicas: Vec<(String, ContainerConfig)>,
    },
}

/// What came of an action or a probe.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Created {
        replica: String,
    },
    Restarted {
        replica: String,
    },
    Failed {
        replica: String,
        error: String,
    },
    /// An init container run ended: exit code and log tail, or why it could not run.
    InitFinished {
        replica: String,
        hash: String,
        result: Result<(i64, String), String>,
    },
    /// The readiness checks of container `id` (started at `started_ms`) passed.
    Probed {
        id: String,
        started_ms: u64,
    },
}

/// Readiness checks to run on one running container; ready when all pass (none: ready).
#[derive(Clone, Debug, PartialEq)]
pub struct Probe {
    pub id: String,
    pub started_ms: u64,
    pub checks: Vec<Check>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Check {
    /// Exec in the container; passes with exit code 0.
    Command { cmd: Vec<String>, timeout: Duration },
    /// Passes with a 2xx answer. `url` has `localhost`/`127.0.0.1` replaced by the replica's
    /// address; `None` (no url in the definition) never passes.
    Http {
        url: Option<String>,
        /// Upper case; `POST` sends `body` as JSON, anything else is a GET.
        method: String,
        body: BTreeMap<String, String>,
        timeout: Duration,
    },
}

/// The result of [`NodePlanner::plan`].
#[derive(Clone, Debug, PartialEq)]
pub struct Pass {
    pub actions: Vec<NodeAction>,
    /// When to plan again without an event (the earliest pending restart).
    pub wake_at_ms: Option<u64>,
    objects: Vec<ObjectPass>,
}

/// What the reports of one object need from its plan.
#[derive(Clone, Debug, PartialEq)]
struct ObjectPass {
    key_text: String,
    statuses: Vec<ReplicaStatus>,
    /// Replicas handed to `plan_node` or not rendered (`false`).
    wanted: Vec<(DesiredReplica, bool)>,
    /// Replicas held back by a dependency: phase and message.
    waiting: Vec<(DesiredReplica, Phase, String)>,
}

/// What the planner remembers between passes.
#[derive(Default)]
struct Memory {
    /// Restarts done per replica name.
    restarts: HashMap<String, u32>,
    /// Containers (by id and start time) whose readiness probe passed.
    ready: HashMap<String, u64>,
    /// When each replica started waiting for its dependencies.
    waiting_since_ms: HashMap<String, u64>,
    /// Failures to report per replica name (creation errors, rendering errors...).
    errors: HashMap<String, String>,
    /// Init container runs per replica name.
    inits: HashMap<String, InitRun>,
}

/// Where the init container of a replica about to be created stands. `hash` is the replica's
/// config hash: a new template runs the init container again.
#[derive(Clone, Debug, PartialEq)]
enum InitRun {
    Running {
        hash: String,
        /// Failed runs before this one, and why the last one failed.
        failures: u32,
        last: Option<String>,
    },
    Done {
        hash: String,
    },
    Failed {
        hash: String,
        why: String,
        at_ms: u64,
        failures: u32,
        /// Not planned since it failed: the next plan shows `why` alone.
        fresh: bool,
    },
}

/// What the init gate lets a replica with an init container do.
enum Gate {
    Create,
    Wait {
        message: String,
        run: Option<Box<NodeAction>>,
    },
}

/// Pause before running a failed init container again: 1 s, doubling, at most 60 s.
fn init_backoff(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.saturating_sub(1).min(6)).min(Duration::from_secs(60))
}

/// Why an init run failed, `None` when it completed with 0.
pub fn init_failure(result: &Result<(i64, String), String>) -> Option<String> {
    match result {
        Ok((0, _)) => None,
        Ok((code, log)) => Some(format!("init container exited with code {code}: {log}")),
        Err(why) => Some(format!("init container: {why}")),
    }
}

fn running(init: &ContainerConfig, last: Option<&str>) -> String {
    match last {
        Some(why) => format!(
            "init container {} running again; last run: {why}",
            init.name
        ),
        None => format!("init container {} running", init.name),
    }
}

fn config_hash(c: &ContainerConfig) -> String {
    c.labels
        .get(labels::CONFIG_HASH)
        .cloned()
        .unwrap_or_default()
}

/// The plan of one node's replicas, with its memory across passes.
pub struct NodePlanner {
    node: NodeId,
    /// Docker network replicas join: the address reported and probed is the one on it.
    network: Option<String>,
    backoff: Backoff,
    memory: Memory,
    pub(super) volumes: super::volumes::VolumeMemory,
    pub(super) bridges: super::bridges::BridgeMemory,
}

impl NodePlanner {
    pub fn new(node: NodeId, network: Option<String>) -> Self {
        NodePlanner {
            node,
            network,
            backoff: Backoff::default(),
            memory: Memory::default(),
            volumes: Default::default(),
            bridges: Default::default(),
        }
    }

    /// Takes in what came of an action or a probe, observed at `now_ms`.
    pub fn record(&mut self, outcome: Outcome, now_ms: u64) {
        let memory = &mut self.memory;
        match outcome {
            Outcome::Created { replica } => {
                memory.restarts.entry(replica).or_insert(0);
            }
            Outcome::Restarted { replica } => *memory.restarts.entry(replica).or_insert(0) += 1,
            Outcome::Failed { replica, error } => {
                memory.errors.insert(replica, error);
            }
            Outcome::InitFinished {
                replica,
                hash,
                result,
            } => {
                let Some(InitRun::Running {
                    hash: h, failures, ..
                }) = memory.inits.get(&replica)
                else {
                    return;
                };
                if *h != hash {
                    return;
                }
                let run = match init_failure(&result) {
                    None => InitRun::Done { hash },
                    Some(why) => InitRun::Failed {
                        hash,
                        why,
                        at_ms: now_ms,
                        failures: failures + 1,
                        fresh: true,
                    },
                };
                memory.inits.insert(replica, run);
            }
            Outcome::Probed { id, started_ms } => {
                memory.ready.insert(id, started_ms);
            }
        }
    }

    /// Whether an init run of `replica` for config `hash` is still wanted (else the executor
    /// aborts it).
    pub fn init_running(&self, replica: &str, hash: &str) -> bool {
        matches!(self.memory.inits.get(replica), Some(InitRun::Running { hash: h, .. }) if h == hash)
    }

    /// The actions of one pass, in execution order: per object (in key order) its
    /// `plan_node` actions, then its plain creations as one batch.
    pub fn plan(&mut self, d: &Desired, o: &Observed) -> Pass {
        let now = o.now_ms;
        let memory = &mut self.memory;
        let desired = by_object(memory, d, o);
        // Observed containers per owner; owners without a placement here are removed.
        let mut by_owner: BTreeMap<String, Vec<&ContainerInfo>> = BTreeMap::new();
        for c in o.containers {
            by_owner
                .entry(c.labels.get(labels::OWNER).cloned().unwrap_or_default())
                .or_default()
                .push(c);
        }
        let keys: BTreeSet<String> = desired
            .keys()
            .map(|k| k.to_string())
            .chain(by_owner.keys().cloned())
            .collect();

        let mut pass = Pass {
            actions: Vec::new(),
            wake_at_ms: None,
            objects: Vec::new(),
        };
        // Stops emitted by this pass: their containers are removed in a later one.
        let mut stopped: BTreeSet<String> = BTreeSet::new();
        for key_text in keys {
            let key: Option<ObjectKey> = key_text.parse().ok();
            let wanted = key
                .as_ref()
                .and_then(|k| desired.get(k))
                .cloned()
                .unwrap_or_default();
            let containers = by_owner.get(&key_text).cloned().unwrap_or_default();
            let stored = key.as_ref().and_then(|k| d.state.objects.get(k));

            // Dependencies gate creation: replicas not yet created wait until they are ready.
            let (wanted_now, mut waiting) = gate(memory, d.state, stored, wanted, &containers, now);
            // Replicas not created yet wait for the volumes they mount.
            let wanted_now =
                super::volumes::hold(&self.volumes, wanted_now, &mut waiting, &containers);
            // ...and for the bridge networks they join.
            let wanted_now =
                super::bridges::hold(&self.bridges, wanted_now, &mut waiting, &containers);

            let observed: Vec<ObservedContainer> =
                containers.iter().map(|c| observe(c, memory)).collect();
            let desired_replicas: Vec<DesiredReplica> = wanted_now
                .iter()
                .filter(|(_, r)| r.is_some())
                .map(|(r, _)| r.clone())
                .collect();
            let plan =
                scheduler::plan_node(self.node, &desired_replicas, &observed, now, &self.backoff);
            if let Some(at) = plan.wake_at_ms {
                pass.wake_at_ms = Some(pass.wake_at_ms.map_or(at, |w: u64| w.min(at)));
            }
            object_actions(
                memory,
                o,
                &mut stopped,
                &plan.actions,
                &wanted_now,
                &containers,
                &mut pass.actions,
            );
            pass.objects.push(ObjectPass {
                key_text,
                statuses: plan.replicas,
                wanted: wanted_now
                    .into_iter()
                    .map(|(r, c)| (r, c.is_some()))
                    .collect(),
                waiting,
            });
        }
        pass
    }

    /// The replica reports of a pass, once its actions ran and their outcomes were recorded:
    /// planned replicas, then replicas that could not be rendered or are waiting; sorted by
    /// (key, index).
    pub fn reports(&mut self, d: &Desired, o: &Observed, pass: &Pass) -> Vec<ReplicaReport> {
        let memory = &mut self.memory;
        let mut reports = Vec::new();
        // Observed containers per owner, once: not a scan of them all per object.
        let mut by_owner: HashMap<&str, Vec<&ContainerInfo>> = HashMap::new();
        for c in o.containers {
            if let Some(owner) = c.labels.get(labels::OWNER) {
                by_owner.entry(owner.as_str()).or_default().push(c);
            }
        }
        for object in &pass.objects {
            let Ok(key) = object.key_text.parse::<ObjectKey>() else {
                continue;
            };
            let stored = d.state.objects.get(&key);
            let containers: &[&ContainerInfo] = by_owner
                .get(object.key_text.as_str())
                .map_or(&[], Vec::as_slice);
            for status in &object.statuses {
                let container = containers.iter().find(|c| c.name == status.name);
                let replica = object
                    .wanted
                    .iter()
                    .find(|(r, _)| r.index == status.index)
                    .map(|(r, _)| r);
                let ready = status.ready || container.is_some_and(|c| is_ready(memory, c));
                let mut message = memory.errors.remove(&status.name);
                if let Phase::Blocked { reason } = &status.phase {
                    message = Some(reason.clone());
                }
                if message.is_none()
                    && let Some(c) = container
                    && matches!(c.state, State::Exited | State::Dead)
                {
                    message = Some(format!("exited with code {}", c.exit_code.unwrap_or(-1)));
                }
                reports.push(ReplicaReport {
                    key: key.clone(),
                    index: status.index,
                    name: status.name.clone(),
                    container_id: container.map(|c| c.id.clone()),
                    phase: status.phase.as_str().to_string(),
                    ready: ready && matches!(status.phase, Phase::Running),
                    ip: container.and_then(|c| replica_ip(c, self.network.as_deref())),
                    restarts: memory.restarts.get(&status.name).copied().unwrap_or(0),
                    generation: replica.map(|r| r.generation).unwrap_or(0),
                    // What runs, not what is asked for: during a rollout the two differ.
                    image: container.map(|c| c.image.clone()).unwrap_or_else(|| {
                        stored
                            .and_then(|s| s.object.spec.as_containers())
                            .map(|s| s.image_ref())
                            .unwrap_or_default()
                    }),
                    started_ms: container.and_then(|c| c.started_ms),
                    message,
                    ips: container
                        .map(|c| {
                            c.ips
                                .iter()
                                .map(|(n, ip)| (n.clone(), ip.to_string()))
                                .collect()
                        })
                        .unwrap_or_default(),
                });
            }
            for (replica, _) in object.wanted.iter().filter(|(_, rendered)| !rendered) {
                reports.push(blocked(
                    &key,
                    replica,
                    memory.errors.remove(&replica.name),
                    stored,
                ));
            }
            for (replica, phase, why) in &object.waiting {
                reports.push(ReplicaReport {
                    phase: phase.as_str().into(),
                    ..blocked(&key, replica, Some(why.clone()), stored)
                });
            }
        }
        reports.sort_by(|a, b| (&a.key, a.index).cmp(&(&b.key, b.index)));
        reports
    }

    /// Readiness probes for running replicas not known ready yet, whose object exists.
    pub fn probes(&self, d: &Desired, o: &Observed) -> Vec<Probe> {
        let mut probes = Vec::new();
        for c in o.containers {
            if c.state != State::Running || is_ready(&self.memory, c) {
                continue;
            }
            let Some(owner) = c
                .labels
                .get(labels::OWNER)
                .and_then(|o| o.parse::<ObjectKey>().ok())
            else {
                continue;
            };
            let Some(stored) = d.state.objects.get(&owner) else {
                continue;
            };
            let checks = stored
                .object
                .spec
                .as_containers()
                .map(|spec| {
                    spec.readiness
                        .iter()
                        .map(|check| self.check(c, check))
                        .collect()
                })
                .unwrap_or_default();
            probes.push(Probe {
                id: c.id.clone(),
                started_ms: c.started_ms.unwrap_or(0),
                checks,
            });
        }
        probes
    }

    fn check(&self, c: &ContainerInfo, check: &crate::definitions::Readiness) -> Check {
        let timeout = check
            .timeout
            .as_ref()
            .map(|t| t.0)
            .unwrap_or(Duration::from_secs(5))
            .min(Duration::from_secs(5));
        match check.check_type() {
            ReadinessType::Command => Check::Command {
                cmd: check.command.clone(),
                timeout,
            },
            ReadinessType::Http => {
                let ip =
                    replica_ip(c, self.network.as_deref()).unwrap_or_else(|| "127.0.0.1".into());
                Check::Http {
                    url: check
                        .url
                        .as_ref()
                        .map(|url| url.replace("localhost", &ip).replace("127.0.0.1", &ip)),
                    method: check.method.as_deref().unwrap_or("GET").to_uppercase(),
                    body: check.body.clone(),
                    timeout,
                }
            }
        }
    }

    /// Forgets readiness of containers that are gone and init runs of replicas that no longer
    /// have an init container (call at the end of a pass).
    pub fn retain(&mut self, d: &Desired, o: &Observed) {
        self.memory
            .ready
            .retain(|id, _| o.containers.iter().any(|c| &c.id == id));
        let inits: BTreeSet<&str> = d
            .replicas
            .iter()
            .filter(|r| r.rendered.as_ref().is_ok_and(|r| r.init.is_some()))
            .map(|r| r.name.as_str())
            .collect();
        self.memory
            .inits
            .retain(|name, _| inits.contains(name.as_str()));
    }
}

/// The desired replicas per object, each with its rendering (`None`: not renderable, error
/// remembered for the report).
#[allow(clippy::type_complexity)]
fn by_object<'d>(
    memory: &mut Memory,
    d: &'d Desired,
    o: &Observed,
) -> BTreeMap<&'d ObjectKey, Vec<(DesiredReplica, Option<&'d Rendered>)>> {
    let mut desired: BTreeMap<&ObjectKey, Vec<(DesiredReplica, Option<&Rendered>)>> =
        BTreeMap::new();
    for r in &d.replicas {
        let (mut hash, rendered) = match &r.rendered {
            Ok(rendered) => (config_hash(&rendered.container), Some(rendered)),
            Err(e) => {
                memory.errors.insert(r.name.clone(), e.clone());
                (String::new(), None)
            }
        };
        // A slot the rollout has not reached yet keeps running the template it runs: only
        // the current template can be rendered, so its container is taken as it is.
        if r.slot_generation != r.template_generation
            && let Some(running) = o.containers.iter().find(|c| {
                c.name == r.name
                    && c.labels.get(labels::GENERATION) == Some(&r.slot_generation.to_string())
            })
        {
            hash = running
                .labels
                .get(labels::CONFIG_HASH)
                .cloned()
                .unwrap_or_default();
        }
        desired.entry(&r.key).or_default().push((
            DesiredReplica {
                index: r.index,
                name: r.name.clone(),
                generation: r.slot_generation,
                config_hash: hash,
                restart: r.restart,
            },
            rendered,
        ));
    }
    desired
}

/// Splits an object's wanted replicas into those planned now and those held back by an unmet
/// dependency (with phase and message): a replica that has no container yet waits.
#[allow(clippy::type_complexity)]
fn gate<'r>(
    memory: &mut Memory,
    state: &ClusterState,
    stored: Option<&StoredObject>,
    wanted: Vec<(DesiredReplica, Option<&'r Rendered>)>,
    containers: &[&ContainerInfo],
    now: u64,
) -> (
    Vec<(DesiredReplica, Option<&'r Rendered>)>,
    Vec<(DesiredReplica, Phase, String)>,
) {
    let mut wanted_now = Vec::new();
    let mut waiting = Vec::new();
    for (replica, rendered) in wanted {
        let exists = containers.iter().any(|c| c.name == replica.name);
        match stored.and_then(|s| unmet_dependency(state, s)) {
            Some(missing) if !exists => {
                let since = *memory
                    .waiting_since_ms
                    .entry(replica.name.clone())
                    .or_insert(now);
                let waited = Duration::from_millis(now.saturating_sub(since));
                let (phase, why) = waiting_status(&missing, waited);
                waiting.push((replica, phase, why));
            }
            _ => {
                memory.waiting_since_ms.remove(&replica.name);
                wanted_now.push((replica, rendered));
            }
        }
    }
    (wanted_now, waiting)
}

/// The node actions for one object's `plan_node` actions: stops in the background (once),
/// removals once stopped, restarts when due, the init gate for replicas with an init
/// container, and the other creations last as one batch, without names still held.
fn object_actions(
    memory: &mut Memory,
    o: &Observed,
    stopped: &mut BTreeSet<String>,
    planned: &[Action],
    wanted_now: &[(DesiredReplica, Option<&Rendered>)],
    containers: &[&ContainerInfo],
    actions: &mut Vec<NodeAction>,
) {
    let now = o.now_ms;
    let rendered_of = |index: u32| {
        wanted_now
            .iter()
            .find(|(r, _)| r.index == index)
            .and_then(|(r, c)| Some((r, (*c)?)))
    };
    let name_of = |id: &str| {
        containers
            .iter()
            .find(|c| c.id == id)
            .map(|c| c.name.clone())
            .unwrap_or_default()
    };
    // Creations of replicas without an init container run a few at a time, after the
    // other actions (which remove what a creation may replace).
    let mut creates = Vec::new();
    for action in planned {
        match action {
            Action::Create { index } => {
                let Some((replica, rendered)) = rendered_of(*index) else {
                    continue;
                };
                let Some(init) = &rendered.init else {
                    creates.push((replica.name.clone(), rendered.container.clone()));
                    continue;
                };
                let hash = config_hash(&rendered.container);
                match init_gate(memory, &replica.name, init, &hash, now) {
                    Gate::Create => {
                        memory.inits.remove(&replica.name);
                        actions.push(NodeAction::Create {
                            replica: replica.name.clone(),
                            config: rendered.container.clone(),
                        });
                    }
                    Gate::Wait { message, run } => {
                        memory.errors.insert(replica.name.clone(), message);
                        actions.extend(run.map(|run| *run));
                    }
                }
            }
            Action::Stop { id } => {
                if !o.stopping.contains(id) && stopped.insert(id.clone()) {
                    actions.push(NodeAction::Stop { id: id.clone() });
                }
            }
            // Removed once stopped (a later pass).
            Action::Remove { id } if o.stopping.contains(id) || stopped.contains(id) => {}
            Action::Remove { id } => actions.push(NodeAction::Remove {
                id: id.clone(),
                replica: name_of(id),
            }),
            Action::Start { id } => actions.push(NodeAction::Start {
                id: id.clone(),
                replica: name_of(id),
            }),
            Action::Restart { id, after_ms } => {
                if now >= *after_ms {
                    actions.push(NodeAction::Restart {
                        id: id.clone(),
                        replica: name_of(id),
                    });
                }
            }
        }
    }
    // A name still held by a container being stopped is created in a later pass.
    let held: BTreeSet<&str> = containers
        .iter()
        .filter(|c| o.stopping.contains(&c.id) || stopped.contains(&c.id))
        .map(|c| c.name.as_str())
        .collect();
    creates.retain(|(name, _)| !held.contains(name.as_str()));
    if !creates.is_empty() {
        actions.push(NodeAction::CreateBatch { replicas: creates });
    }
}

/// A container with the smr labels decoded.
fn observe(c: &ContainerInfo, memory: &Memory) -> ObservedContainer {
    ObservedContainer {
        id: c.id.clone(),
        name: c.name.clone(),
        index: c.labels.get(labels::REPLICA).and_then(|i| i.parse().ok()),
        generation: c
            .labels
            .get(labels::GENERATION)
            .and_then(|g| g.parse().ok())
            .unwrap_or(0),
        config_hash: c
            .labels
            .get(labels::CONFIG_HASH)
            .cloned()
            .unwrap_or_default(),
        state: match c.state {
            State::Running | State::Paused => ContainerState::Running,
            State::Restarting => ContainerState::Restarting,
            State::Created => ContainerState::Created,
            State::Exited | State::Dead | State::Removing => ContainerState::Exited {
                code: c.exit_code.unwrap_or(-1),
            },
        },
        ready: memory.ready.get(&c.id) == Some(&c.started_ms.unwrap_or(0)),
        restarts: memory.restarts.get(&c.name).copied().unwrap_or(0),
        // `list_managed` never returns containers without the smr labels.
        smr_managed: true,
        started_ms: c.started_ms,
        finished_ms: c.finished_ms,
    }
}

/// Runs the init container of `replica` until it completed with 0 for this config `hash`;
/// else why the replica waits (running, or failed and backing off) and the run to start.
fn init_gate(
    memory: &mut Memory,
    replica: &str,
    init: &ContainerConfig,
    hash: &str,
    now_ms: u64,
) -> Gate {
    let mut failures = 0;
    let mut last = None;
    match memory.inits.get_mut(replica) {
        Some(InitRun::Done { hash: h }) if h == hash => return Gate::Create,
        Some(InitRun::Running { hash: h, last, .. }) if h == hash => {
            return Gate::Wait {
                message: running(init, last.as_deref()),
                run: None,
            };
        }
        Some(InitRun::Failed {
            hash: h,
            why,
            at_ms,
            failures: f,
            fresh,
        }) if h == hash => {
            if *fresh {
                *fresh = false;
                return Gate::Wait {
                    message: why.clone(),
                    run: None,
                };
            }
            let pause = init_backoff(*f);
            let elapsed = Duration::from_millis(now_ms.saturating_sub(*at_ms));
            if elapsed < pause {
                return Gate::Wait {
                    message: format!("{why} (again in {}s)", (pause - elapsed).as_secs() + 1),
                    run: None,
                };
            }
            failures = *f;
            last = Some(why.clone());
        }
        _ => {}
    }
    let message = running(init, last.as_deref());
    memory.inits.insert(
        replica.to_string(),
        InitRun::Running {
            hash: hash.to_string(),
            failures,
            last,
        },
    );
    Gate::Wait {
        message,
        run: Some(Box::new(NodeAction::RunInit {
            replica: replica.to_string(),
            hash: hash.to_string(),
            config: init.clone(),
        })),
    }
}

fn is_ready(memory: &Memory, c: &ContainerInfo) -> bool {
    c.state == State::Running && memory.ready.get(&c.id) == Some(&c.started_ms.unwrap_or(0))
}

fn blocked(
    key: &ObjectKey,
    replica: &DesiredReplica,
    message: Option<String>,
    stored: Option<&StoredObject>,
) -> ReplicaReport {
    ReplicaReport {
        key: key.clone(),
        index: replica.index,
        name: replica.name.clone(),
        container_id: None,
        phase: Phase::Blocked {
            reason: message.clone().unwrap_or_default(),
        }
        .as_str()
        .into(),
        ready: false,
        ip: None,
        restarts: 0,
        generation: replica.generation,
        image: stored
            .and_then(|s| s.object.spec.as_containers())
            .map(|s| s.image_ref())
            .unwrap_or_default(),
        started_ms: None,
        message,
        ips: Default::default(),
    }
}

fn replica_ip(c: &ContainerInfo, network: Option<&str>) -> Option<String> {
    network
        .and_then(|n| c.ips.get(n))
        .or_else(|| c.ips.values().next())
        .map(|ip| ip.to_string())
}

/// A dependency that is not ready yet, and how long the definition agreed to wait for it.
#[derive(Debug, PartialEq)]
pub(super) struct Unmet {
    pub(super) what: String,
    pub(super) timeout: Option<Duration>,
}

/// Phase and message of a replica held back by a dependency: `pending` while within the
/// dependency's `timeout`, `blocked` after it. Either way it is created as soon as the
/// dependency is ready; the phase makes a late dependency visible (and fails `smrctl apply`).
pub(super) fn waiting_status(unmet: &Unmet, waited: Duration) -> (Phase, String) {
    let secs = waited.as_secs();
    match unmet.timeout {
        Some(limit) if waited > limit => {
            let why = format!(
                "{} is not ready after {secs}s (dependency timeout {}s); still waiting",
                unmet.what,
                limit.as_secs()
            );
            (
                Phase::Blocked {
                    reason: why.clone(),
                },
                why,
            )
        }
        _ => (
            Phase::Pending,
            format!("waiting for {} (for {secs}s)", unmet.what),
        ),
    }
}

/// The first dependency of `stored` that is not ready, if any.
fn unmet_dependency(state: &ClusterState, stored: &StoredObject) -> Option<Unmet> {
    let spec = stored.object.spec.as_containers()?;
    for dep in &spec.dependencies {
        let timeout = dep.timeout.map(|t| t.get());
        let matching: Vec<&ObjectKey> = state
            .placements
            .keys()
            .filter(|k| k.group == dep.group && (dep.name == "*" || k.name == dep.name))
            .filter(|k| **k != stored.object.key())
            .collect();
        let label = format!("dependency {}/{}", dep.group, dep.name);
        if matching.is_empty() {
            return Some(Unmet {
                what: label,
                timeout,
            });
        }
        for key in matching {
            let placed = state.placements[key].replicas.len();
            let ready = state
                .reports
                .values()
                .flat_map(|r| &r.replicas)
                .filter(|r| &r.key == key && r.ready)
                .count();
            if ready < placed {
                return Some(Unmet {
                    what: format!("{label} ({key}: {ready}/{placed} ready)"),
                    timeout,
                });
            }
        }
    }
    None
}

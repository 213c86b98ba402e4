//! The node reconciler: runs this node's replicas on its Docker engine and reports their state.
//!
//! Every second, on every state change, and when a backoff expires it reads the placements of
//! this node, renders each replica's container configuration, lists the containers smr manages
//! on the engine, asks [`crate::scheduler::plan_node`] what to do per object, does it, probes
//! readiness, and proposes a [`NodeReport`] when anything changed (and at least every few seconds,
//! as the node's heartbeat). Dependencies gate creation: a replica whose dependencies are not all
//! ready is not created yet.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::convert::{ReplicaContext, container_config, init_config, restart_of};
use crate::definitions::{ObjectKey, ReadinessType};
use crate::node::{Node, now_ms};
use crate::runtime::{ContainerConfig, ContainerInfo, Runtime, State, labels};
use crate::scheduler::{
    self, Action, Backoff, ContainerState, DesiredReplica, ObservedContainer, Phase,
};
use crate::state::{ClusterState, NodeId, NodeReport, Op, ReplicaReport, StoredObject};

/// How many replicas a node creates at once.
const CREATE_CONCURRENCY: usize = 4;

/// A report is sent at least this often, as the node's heartbeat.
pub const HEARTBEAT: Duration = Duration::from_secs(3);

#[derive(Clone, Debug)]
pub struct ReconcileConfig {
    pub node: NodeId,
    /// Docker network replicas join (`cluster`), when the node has the overlay.
    pub network: Option<String>,
    /// This node's DNS server address, first resolver of every replica.
    pub dns: Vec<String>,
    pub files_dir: PathBuf,
    pub stop_grace: Duration,
}

/// What the loop remembers between passes.
#[derive(Default)]
struct Memory {
    /// Restarts done per replica name.
    restarts: HashMap<String, u32>,
    /// Containers (by id and start time) whose readiness probe passed.
    ready: HashMap<String, u64>,
    /// When each replica started waiting for its dependencies.
    waiting_since: HashMap<String, Instant>,
    /// Failures to report per replica name (creation errors, rendering errors...).
    errors: HashMap<String, String>,
    /// Init container runs per replica name.
    inits: HashMap<String, InitRun>,
    /// Stops in progress per container id: a stop waits up to the grace period, so it runs in
    /// the background instead of holding up the whole pass.
    stopping: HashMap<String, tokio::task::JoinHandle<()>>,
}

/// Where the init container of a replica about to be created stands. `hash` is the replica's
/// config hash: a new template runs the init container again.
enum InitRun {
    Running {
        hash: String,
        task: tokio::task::JoinHandle<Result<(i64, String), String>>,
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
        at: Instant,
        failures: u32,
    },
}

impl Drop for InitRun {
    fn drop(&mut self) {
        if let InitRun::Running { task, .. } = self {
            task.abort();
        }
    }
}

/// Pause before running a failed init container again: 1 s, doubling, at most 60 s.
fn init_backoff(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.saturating_sub(1).min(6)).min(Duration::from_secs(60))
}

/// Runs until `stop`.
pub async fn run<R: Runtime>(
    node: Arc<Node>,
    runtime: Arc<R>,
    config: ReconcileConfig,
    mut stop: watch::Receiver<bool>,
) {
    let mut changes = node.store.subscribe();
    let mut memory = Memory::default();
    let mut seq = now_ms();
    let mut last_sent: Option<(Vec<ReplicaReport>, Instant)> = None;
    let mut wake_at: Option<u64> = None;
    loop {
        let sleep = wake_at
            .map(|at| Duration::from_millis(at.saturating_sub(now_ms())))
            .unwrap_or(Duration::from_secs(1))
            .min(Duration::from_secs(1));
        tokio::select! {
            _ = crate::api::serve::stopped(&mut stop) => return,
            _ = changes.changed() => {},
            _ = tokio::time::sleep(sleep) => {},
        }
        let Ok(state) = node.store.read(false).await else {
            continue;
        };
        let observed = match runtime.list_managed().await {
            Ok(observed) => observed,
            Err(e) => {
                tracing::warn!("listing containers: {e}");
                continue;
            }
        };
        let (replicas, next_wake) = pass(&state, &runtime, &config, &observed, &mut memory).await;
        wake_at = next_wake;
        let changed = last_sent.as_ref().is_none_or(|(sent, _)| *sent != replicas);
        let due = last_sent
            .as_ref()
            .is_none_or(|(_, at)| at.elapsed() >= HEARTBEAT);
        if changed || due {
            seq += 1;
            let report = NodeReport {
                seq,
                at_ms: now_ms(),
                replicas: replicas.clone(),
            };
            match node
                .propose(
                    Op::Report {
                        node: config.node,
                        report,
                    },
                    None,
                )
                .await
            {
                Ok(_) => last_sent = Some((replicas, Instant::now())),
                Err(e) => tracing::warn!("reporting replicas: {e}"),
            }
        }
    }
}

/// One reconcile pass; returns the replica reports and when to wake up for a backoff.
async fn pass<R: Runtime>(
    state: &ClusterState,
    runtime: &Arc<R>,
    config: &ReconcileConfig,
    observed: &[ContainerInfo],
    memory: &mut Memory,
) -> (Vec<ReplicaReport>, Option<u64>) {
    let ctx = ReplicaContext {
        node: config.node,
        network: config.network.as_deref(),
        dns: config.dns.clone(),
        files_dir: &config.files_dir,
    };
    // Desired replicas of this node, per object.
    let mut desired: BTreeMap<ObjectKey, Vec<(DesiredReplica, Option<ContainerConfig>)>> =
        BTreeMap::new();
    let mut inits: HashMap<String, ContainerConfig> = HashMap::new();
    for (key, placement) in &state.placements {
        let Some(stored) = state.objects.get(key) else {
            continue;
        };
        let Some(spec) = stored.object.spec.as_containers() else {
            continue;
        };
        for (index, slot) in placement.on_node(config.node) {
            let name = scheduler::replica_name(&key.group, &key.name, index);
            let rendered =
                container_config(state, stored, index, slot.generation, &ctx).and_then(|c| {
                    let init = init_config(state, stored, index, slot.generation, &ctx)?;
                    if let Some(init) = init {
                        inits.insert(name.clone(), init);
                    }
                    Ok(c)
                });
            let (mut hash, container) = match rendered {
                Ok(c) => (
                    c.labels
                        .get(labels::CONFIG_HASH)
                        .cloned()
                        .unwrap_or_default(),
                    Some(c),
                ),
                Err(e) => {
                    memory.errors.insert(name.clone(), e);
                    (String::new(), None)
                }
            };
            // A slot the rollout has not reached yet keeps running the template it runs: only
            // the current template can be rendered, so its container is taken as it is.
            if slot.generation != stored.template_generation
                && let Some(running) = observed.iter().find(|c| {
                    c.name == name
                        && c.labels.get(labels::GENERATION) == Some(&slot.generation.to_string())
                })
            {
                hash = running
                    .labels
                    .get(labels::CONFIG_HASH)
                    .cloned()
                    .unwrap_or_default();
            }
            desired.entry(key.clone()).or_default().push((
                DesiredReplica {
                    index,
                    name,
                    generation: slot.generation,
                    config_hash: hash,
                    restart: restart_of(spec),
                },
                container,
            ));
        }
    }
    // Observed containers per owner; owners without a placement here are removed by the plan.
    let mut by_owner: BTreeMap<String, Vec<&ContainerInfo>> = BTreeMap::new();
    for c in observed {
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

    let now = now_ms();
    let backoff = Backoff::default();
    let mut reports = Vec::new();
    let mut wake: Option<u64> = None;
    for key_text in keys {
        let key: Option<ObjectKey> = key_text.parse().ok();
        let wanted = key
            .as_ref()
            .and_then(|k| desired.get(k))
            .cloned()
            .unwrap_or_default();
        let containers = by_owner.get(&key_text).cloned().unwrap_or_default();
        let stored = key.as_ref().and_then(|k| state.objects.get(k));

        // Dependencies gate creation: replicas not yet created wait until they are ready.
        let mut wanted_now = Vec::new();
        let mut waiting = Vec::new();
        for (replica, container) in wanted {
            let exists = containers.iter().any(|c| c.name == replica.name);
            match stored.and_then(|s| unmet_dependency(state, s)) {
                Some(missing) if !exists => {
                    let since = *memory
                        .waiting_since
                        .entry(replica.name.clone())
                        .or_insert_with(Instant::now);
                    let (phase, why) = waiting_status(&missing, since.elapsed());
                    waiting.push((replica, phase, why));
                }
                _ => {
                    memory.waiting_since.remove(&replica.name);
                    wanted_now.push((replica, container));
                }
            }
        }

        let observed_containers: Vec<ObservedContainer> = containers
            .iter()
            .map(|c| ObservedContainer {
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
                smr_managed: true,
                started_ms: c.started_ms,
                finished_ms: c.finished_ms,
            })
            .collect();
        let desired_replicas: Vec<DesiredReplica> = wanted_now
            .iter()
            .filter(|(_, c)| c.is_some())
            .map(|(r, _)| r.clone())
            .collect();
        let plan = scheduler::plan_node(
            config.node,
            &desired_replicas,
            &observed_containers,
            now,
            &backoff,
        );
        if let Some(at) = plan.wake_at_ms {
            wake = Some(wake.map_or(at, |w: u64| w.min(at)));
        }
        // Creations of replicas without an init container run a few at a time, after the
        // other actions (which remove what a creation may replace).
        let plain_create = |action: &&Action| match action {
            Action::Create { index } => wanted_now
                .iter()
                .find(|(r, _)| r.index == *index)
                .is_some_and(|(r, c)| c.is_some() && !inits.contains_key(&r.name)),
            _ => false,
        };
        let (creates, others): (Vec<&Action>, Vec<&Action>) =
            plan.actions.iter().partition(plain_create);
        memory.stopping.retain(|_, task| !task.is_finished());
        for action in others {
            match action {
                Action::Stop { id } => {
                    if !memory.stopping.contains_key(id) {
                        let (runtime, id, grace) = (runtime.clone(), id.clone(), config.stop_grace);
                        let task = tokio::spawn({
                            let id = id.clone();
                            async move {
                                if let Err(e) = runtime.stop(&id, grace).await {
                                    tracing::warn!("stopping {id}: {e}");
                                }
                            }
                        });
                        memory.stopping.insert(id, task);
                    }
                    continue;
                }
                // Removed once stopped (a later pass).
                Action::Remove { id } if memory.stopping.contains_key(id) => continue,
                _ => {}
            }
            let todo = Todo {
                wanted: &wanted_now,
                containers: &containers,
                inits: &inits,
            };
            if let Err(e) = execute(runtime, action, &todo, config, memory).await {
                tracing::warn!(object = %key_text, "{action:?}: {e}");
                let name = action_replica(action, &wanted_now, &containers);
                memory.errors.insert(name, e);
            }
        }
        // A name still held by a container being stopped is created in a later pass.
        let held: BTreeSet<&str> = containers
            .iter()
            .filter(|c| memory.stopping.contains_key(&c.id))
            .map(|c| c.name.as_str())
            .collect();
        let to_create: Vec<(&str, &ContainerConfig)> = creates
            .iter()
            .filter_map(|action| match action {
                Action::Create { index } => wanted_now
                    .iter()
                    .find(|(r, _)| r.index == *index)
                    .and_then(|(r, c)| Some((r.name.as_str(), c.as_ref()?))),
                _ => None,
            })
            .filter(|(name, _)| !held.contains(name))
            .collect();
        let mut outcomes = Vec::with_capacity(to_create.len());
        for chunk in to_create.chunks(CREATE_CONCURRENCY) {
            let runs = chunk
                .iter()
                .map(|(_, c)| create_and_start(runtime.as_ref(), c));
            let results = futures::future::join_all(runs).await;
            outcomes.extend(chunk.iter().map(|(n, _)| n.to_string()).zip(results));
        }
        for (name, result) in outcomes {
            match result {
                Ok(()) => created(memory, &name),
                Err(e) => {
                    tracing::warn!(object = %key_text, replica = %name, "create: {e}");
                    memory.errors.insert(name, e);
                }
            }
        }

        // Reports: planned replicas, then replicas that could not be rendered or are waiting.
        let Some(key) = key else { continue };
        for status in &plan.replicas {
            let container = containers.iter().find(|c| c.name == status.name);
            let replica = wanted_now
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
                ip: container.and_then(|c| replica_ip(c, config.network.as_deref())),
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
            });
        }
        for (replica, _) in wanted_now.iter().filter(|(_, c)| c.is_none()) {
            reports.push(blocked(
                &key,
                replica,
                memory.errors.remove(&replica.name),
                stored,
            ));
        }
        for (replica, phase, why) in waiting {
            reports.push(ReplicaReport {
                phase: phase.into(),
                ..blocked(&key, &replica, Some(why), stored)
            });
        }
    }
    // Readiness probes for running replicas not known ready yet.
    let unproven: Vec<&ContainerInfo> = observed
        .iter()
        .filter(|c| c.state == State::Running && !is_ready(memory, c))
        .collect();
    for c in unproven {
        let Some(owner) = c
            .labels
            .get(labels::OWNER)
            .and_then(|o| o.parse::<ObjectKey>().ok())
        else {
            continue;
        };
        let Some(stored) = state.objects.get(&owner) else {
            continue;
        };
        if probe(runtime.as_ref(), stored, c, config.network.as_deref()).await {
            memory.ready.insert(c.id.clone(), c.started_ms.unwrap_or(0));
        }
    }
    memory
        .ready
        .retain(|id, _| observed.iter().any(|c| &c.id == id));
    memory.inits.retain(|name, _| inits.contains_key(name));
    reports.sort_by(|a, b| (&a.key, a.index).cmp(&(&b.key, b.index)));
    (reports, wake)
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
        phase: "blocked".into(),
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
    }
}

fn replica_ip(c: &ContainerInfo, network: Option<&str>) -> Option<String> {
    network
        .and_then(|n| c.ips.get(n))
        .or_else(|| c.ips.values().next())
        .map(|ip| ip.to_string())
}

fn action_replica(
    action: &Action,
    wanted: &[(DesiredReplica, Option<ContainerConfig>)],
    containers: &[&ContainerInfo],
) -> String {
    match action {
        Action::Create { index } => wanted
            .iter()
            .find(|(r, _)| r.index == *index)
            .map(|(r, _)| r.name.clone()),
        Action::Start { id }
        | Action::Stop { id }
        | Action::Remove { id }
        | Action::Restart { id, .. } => containers
            .iter()
            .find(|c| &c.id == id)
            .map(|c| c.name.clone()),
    }
    .unwrap_or_default()
}

/// What one object's actions work on.
struct Todo<'a> {
    wanted: &'a [(DesiredReplica, Option<ContainerConfig>)],
    containers: &'a [&'a ContainerInfo],
    /// Init containers by replica name.
    inits: &'a HashMap<String, ContainerConfig>,
}

async fn execute<R: Runtime>(
    runtime: &Arc<R>,
    action: &Action,
    todo: &Todo<'_>,
    config: &ReconcileConfig,
    memory: &mut Memory,
) -> Result<(), String> {
    let containers = todo.containers;
    match action {
        Action::Create { index } => {
            let Some((replica, Some(container))) =
                todo.wanted.iter().find(|(r, _)| r.index == *index)
            else {
                return Ok(());
            };
            if let Some(init) = todo.inits.get(&replica.name) {
                let hash = container
                    .labels
                    .get(labels::CONFIG_HASH)
                    .cloned()
                    .unwrap_or_default();
                if let Some(waiting) = init_gate(runtime, &replica.name, init, &hash, memory).await
                {
                    memory.errors.insert(replica.name.clone(), waiting);
                    return Ok(());
                }
            }
            memory.inits.remove(&replica.name);
            create_and_start(runtime.as_ref(), container).await?;
            created(memory, &replica.name);
        }
        Action::Start { id } => runtime.start(id).await.map_err(|e| e.to_string())?,
        Action::Stop { id } => runtime
            .stop(id, config.stop_grace)
            .await
            .map_err(|e| e.to_string())?,
        Action::Remove { id } => {
            runtime.remove(id).await.map_err(|e| e.to_string())?;
            if let Some(c) = containers.iter().find(|c| &c.id == id) {
                tracing::info!(replica = %c.name, "removed");
            }
        }
        Action::Restart { id, after_ms } => {
            if now_ms() >= *after_ms {
                runtime.start(id).await.map_err(|e| e.to_string())?;
                if let Some(c) = containers.iter().find(|c| &c.id == id) {
                    *memory.restarts.entry(c.name.clone()).or_insert(0) += 1;
                    tracing::info!(replica = %c.name, "restarted after exit");
                }
            }
        }
    }
    Ok(())
}

/// Runs the init container of `replica` in the background; `None` once it completed with 0 for
/// this config `hash`, else why the replica waits (running, or failed and backing off).
async fn init_gate<R: Runtime>(
    runtime: &Arc<R>,
    replica: &str,
    init: &ContainerConfig,
    hash: &str,
    memory: &mut Memory,
) -> Option<String> {
    let mut failures = 0;
    let mut last = None;
    match memory.inits.get_mut(replica) {
        Some(InitRun::Done { hash: h }) if h == hash => return None,
        Some(InitRun::Running {
            hash: h,
            task,
            failures: previous,
            last,
        }) if h == hash => {
            let previous = *previous;
            if !task.is_finished() {
                return Some(running(init, last.as_deref()));
            }
            let result = match task.await {
                Ok(result) => result,
                Err(e) => Err(e.to_string()),
            };
            let run = match result {
                Ok((0, _)) => InitRun::Done {
                    hash: hash.to_string(),
                },
                Ok((code, log)) => InitRun::Failed {
                    hash: hash.to_string(),
                    why: format!("init container exited with code {code}: {log}"),
                    at: Instant::now(),
                    failures: previous + 1,
                },
                Err(why) => InitRun::Failed {
                    hash: hash.to_string(),
                    why: format!("init container: {why}"),
                    at: Instant::now(),
                    failures: previous + 1,
                },
            };
            let done = matches!(run, InitRun::Done { .. });
            let message = match &run {
                InitRun::Failed { why, .. } => Some(why.clone()),
                _ => None,
            };
            if let Some(why) = &message {
                tracing::warn!(replica, "{why}");
            }
            memory.inits.insert(replica.to_string(), run);
            return if done { None } else { message };
        }
        Some(InitRun::Failed {
            hash: h,
            why,
            at,
            failures: f,
        }) if h == hash => {
            let pause = init_backoff(*f);
            if at.elapsed() < pause {
                return Some(format!(
                    "{why} (again in {}s)",
                    (pause - at.elapsed()).as_secs() + 1
                ));
            }
            failures = *f;
            last = Some(why.clone());
        }
        _ => {}
    }
    let runtime = runtime.clone();
    let config = init.clone();
    let task = tokio::spawn(async move {
        runtime
            .run_to_completion(&config)
            .await
            .map_err(|e| e.to_string())
    });
    tracing::info!(replica, "init container started");
    memory.inits.insert(
        replica.to_string(),
        InitRun::Running {
            hash: hash.to_string(),
            task,
            failures,
            last: last.clone(),
        },
    );
    Some(running(init, last.as_deref()))
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

async fn create_and_start<R: Runtime>(runtime: &R, config: &ContainerConfig) -> Result<(), String> {
    let id = runtime.create(config).await.map_err(|e| e.to_string())?;
    runtime.start(&id).await.map_err(|e| e.to_string())
}

/// Bookkeeping for a replica whose container was just created and started.
fn created(memory: &mut Memory, replica: &str) {
    tracing::info!(replica, "created and started");
    memory.restarts.entry(replica.to_string()).or_insert(0);
}

/// A dependency that is not ready yet, and how long the definition agreed to wait for it.
#[derive(Debug, PartialEq)]
struct Unmet {
    what: String,
    timeout: Option<Duration>,
}

/// Phase and message of a replica held back by a dependency: `pending` while within the
/// dependency's `timeout`, `blocked` after it. Either way it is created as soon as the
/// dependency is ready; the phase makes a late dependency visible (and fails `smrctl apply`).
fn waiting_status(unmet: &Unmet, waited: Duration) -> (&'static str, String) {
    let secs = waited.as_secs();
    match unmet.timeout {
        Some(limit) if waited > limit => (
            "blocked",
            format!(
                "{} is not ready after {secs}s (dependency timeout {}s); still waiting",
                unmet.what,
                limit.as_secs()
            ),
        ),
        _ => (
            "pending",
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

/// Runs the readiness checks of the replica's definition; without any, running is ready.
async fn probe<R: Runtime>(
    runtime: &R,
    stored: &StoredObject,
    c: &ContainerInfo,
    network: Option<&str>,
) -> bool {
    let Some(spec) = stored.object.spec.as_containers() else {
        return true;
    };
    for check in &spec.readiness {
        let timeout = check
            .timeout
            .as_ref()
            .map(|t| t.0)
            .unwrap_or(Duration::from_secs(5))
            .min(Duration::from_secs(5));
        let ok = match check.check_type() {
            ReadinessType::Command => {
                matches!(
                    tokio::time::timeout(timeout, runtime.exec(&c.id, &check.command)).await,
                    Ok(Ok(out)) if out.exit_code == 0
                )
            }
            ReadinessType::Http => {
                let Some(url) = &check.url else { return false };
                let ip = replica_ip(c, network).unwrap_or_else(|| "127.0.0.1".into());
                let url = url.replace("localhost", &ip).replace("127.0.0.1", &ip);
                let client = reqwest::Client::builder()
                    .timeout(timeout)
                    .no_proxy()
                    .build();
                let Ok(client) = client else { return false };
                let method = check.method.as_deref().unwrap_or("GET").to_uppercase();
                let request = match method.as_str() {
                    "POST" => client.post(&url).json(&check.body),
                    _ => client.get(&url),
                };
                matches!(request.send().await, Ok(r) if r.status().is_success())
            }
        };
        if !ok {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

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
}

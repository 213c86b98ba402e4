//! The node reconciler: runs this node's replicas on its Docker engine and reports their state.
//!
//! Every second, on every state change, and when a backoff expires it reads the placements of
//! this node, renders each replica's container configuration, lists the containers smr manages
//! on the engine, asks the [`NodePlanner`] what to do (exact actions, decided without I/O), does
//! it, feeds the outcomes back, runs the readiness probes it asks for, and (after a round that
//! acted, a new round on what the engine then holds, up to three) reports what changed
//! (a delta on its last report, batched with other nodes' by `node::reports`), and only then: the
//! node's heartbeat goes to the leader's memory, not the log (`controllers::heartbeat`), so a
//! node where nothing changes writes nothing. Dependencies gate creation: a replica whose
//! dependencies are not all ready is not created yet.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::node::reports::{Reported, next_report};
use crate::node::{Node, now_ms};
use crate::runtime::{ContainerConfig, ContainerInfo, Runtime};
use crate::state::{ClusterState, Delta, Follower, NodeId, ReplicaReport};
use smr_core::container::FileWrite;
use smr_core::convert::{RenderError, ReplicaContext, container_config, init_config, restart_of};
use smr_core::networks::bridge::NetworkAction;
use smr_core::node_plan::{
    Check, Desired, NodeAction, NodePlanner, Observed, Outcome, Probe, Rendered, desired_replicas,
    init_failure,
};
use smr_core::volume::VolumeAction;

/// How many replicas a node creates at once.
const CREATE_CONCURRENCY: usize = 4;

/// Most rounds of one pass. A round plans, acts and probes; one that acted is followed by
/// another on what the engine then holds, and the last one reports. Three take a new replica
/// from "create and start" through "probe" to "report running and ready", in one report.
const ROUNDS: usize = 3;

#[derive(Clone, Debug)]
pub struct ReplicasConfig {
    pub node: NodeId,
    /// Docker network replicas join (`cluster`), when the node has the overlay.
    pub network: Option<String>,
    /// This node's DNS server address, first resolver of every replica.
    pub dns: Vec<String>,
    pub files_dir: PathBuf,
    pub stop_grace: Duration,
}

/// Runs until `stop`.
pub async fn run<R: Runtime>(
    node: Arc<Node>,
    runtime: Arc<R>,
    config: ReplicasConfig,
    mut stop: watch::Receiver<bool>,
) {
    let mut changes = node.subscribe();
    let mut executor = Executor::new(runtime.clone(), config.clone());
    let mut seq = now_ms();
    // The sequence number and replicas of the last report the state took: a report is proposed
    // when they change (not as a heartbeat), as a delta on it; `None`: the whole list.
    let mut last_sent: Option<(u64, Vec<ReplicaReport>)> = None;
    let mut wake_at: Option<u64> = None;
    let mut follower = Follower::new();
    let mut secrets = crate::secrets::SecretCache::default();
    // A full pass at least this often even while changes keep waking the loop.
    let mut full_due = Instant::now();
    loop {
        let sleep = wake_at
            .map(|at| Duration::from_millis(at.saturating_sub(now_ms())))
            .unwrap_or(Duration::from_secs(1))
            .min(Duration::from_secs(1));
        let timer = tokio::select! {
            _ = crate::shutdown::stopped(&mut stop) => return,
            _ = changes.changed() => false,
            _ = tokio::time::sleep(sleep) => true,
        };
        let Ok(state) = node.state(crate::node::Consistency::Stale).await else {
            continue;
        };
        // A change that concerns no replica (a heartbeat, a configuration nobody reads) waits
        // for the next full pass: woken by the timer (a backoff, the second), or a second after
        // the last pass however many changes arrive.
        let full = timer || Instant::now() >= full_due;
        if !follower.next(&state, full).needs(Delta::touches_replicas) {
            continue;
        }
        full_due = Instant::now() + Duration::from_secs(1);
        let observed = match runtime.list_managed().await {
            Ok(observed) => observed,
            Err(e) => {
                tracing::warn!("listing containers: {e}");
                continue;
            }
        };
        let started = Instant::now();
        // Secrets opened in memory for rendering only (a value unchanged since the last pass is
        // not opened again).
        let opened = node.open_secrets_cached(&state, &mut secrets);
        let (replicas, next_wake) = executor.pass(&opened, &observed, now_ms()).await;
        crate::metrics::reconcile_pass(started.elapsed());
        wake_at = next_wake;
        // A delta on a report the state does not hold is answered `SendFull`: then at once the
        // whole list.
        for _ in 0..2 {
            let Some(delta) = next_report(
                config.node,
                seq + 1,
                now_ms(),
                last_sent.as_ref(),
                &replicas,
            ) else {
                break;
            };
            seq += 1;
            // A node of the version before delta reports would stop on such an entry: the
            // whole list, as that version sent it, until every node reads them.
            if !node.members_read_report_deltas().await {
                match node
                    .report_in_full(config.node, seq, now_ms(), replicas.clone())
                    .await
                {
                    Ok(()) => last_sent = Some((seq, replicas)),
                    Err(e) => tracing::warn!("reporting replicas: {e}"),
                }
                break;
            }
            match node.report(delta).await {
                Ok(Reported::Applied) => {
                    last_sent = Some((seq, replicas));
                    break;
                }
                Ok(Reported::SendFull) => last_sent = None,
                Err(e) => {
                    tracing::warn!("reporting replicas: {e}");
                    break;
                }
            }
        }
    }
}

/// An init container run: its exit code and log tail, or why it could not run.
type InitTask = JoinHandle<Result<(i64, String), String>>;

/// Runs the [`NodePlanner`]'s actions against a [`Runtime`]: the I/O half of a pass.
pub(crate) struct Executor<R: Runtime> {
    runtime: Arc<R>,
    config: ReplicasConfig,
    planner: NodePlanner,
    /// Stops in progress per container id: a stop waits up to the grace period, so it runs in
    /// the background instead of holding up the whole pass.
    stopping: HashMap<String, JoinHandle<()>>,
    /// Init container runs per replica name, with the config hash they run for.
    inits: HashMap<String, (String, InitTask)>,
    /// Whether the last pass acted (actions, probes that passed), or left stops or init runs
    /// in flight: then the next pass may find more to do even if nothing else changes.
    busy: bool,
}

impl<R: Runtime> Drop for Executor<R> {
    fn drop(&mut self) {
        for (_, task) in self.inits.values() {
            task.abort();
        }
    }
}

impl<R: Runtime> Executor<R> {
    pub(crate) fn new(runtime: Arc<R>, config: ReplicasConfig) -> Self {
        Executor {
            planner: NodePlanner::new(config.node, config.network.clone()),
            runtime,
            config,
            stopping: HashMap::new(),
            inits: HashMap::new(),
            busy: false,
        }
    }

    /// Whether the last pass acted or left work in flight (see the field `busy`).
    pub(crate) fn busy(&self) -> bool {
        self.busy
    }

    /// One reconcile pass at `now` (up to [`ROUNDS`] rounds, the first on `observed`); returns
    /// the replica reports of the last round and when to wake up for a backoff.
    pub(crate) async fn pass(
        &mut self,
        state: &ClusterState,
        observed: &[ContainerInfo],
        now: u64,
    ) -> (Vec<ReplicaReport>, Option<u64>) {
        // Init runs that ended since the last pass.
        let finished: Vec<String> = self
            .inits
            .iter()
            .filter(|(_, (_, task))| task.is_finished())
            .map(|(name, _)| name.clone())
            .collect();
        for replica in finished {
            let Some((hash, task)) = self.inits.remove(&replica) else {
                continue;
            };
            let result = task.await.unwrap_or_else(|e| Err(e.to_string()));
            if self.planner.init_running(&replica, &hash)
                && let Some(why) = init_failure(&result)
            {
                tracing::warn!(replica, "{why}");
            }
            let outcome = Outcome::InitFinished {
                replica,
                hash,
                result,
            };
            self.planner.record(outcome, now);
        }

        let ctx = ReplicaContext {
            node: self.config.node,
            network: self.config.network.as_deref(),
            dns: self.config.dns.clone(),
            files_dir: &self.config.files_dir,
        };
        let mut replicas =
            desired_replicas(state, self.config.node, restart_of, |stored, index, g| {
                let render = || {
                    let (container, mut files) = container_config(state, stored, index, g, &ctx)?;
                    let init = init_config(state, stored, index, g, &ctx)?.map(|(init, more)| {
                        files.extend(more);
                        init
                    });
                    Ok::<_, RenderError>(Rendered {
                        container,
                        init,
                        files,
                    })
                };
                // The report shows why a replica cannot be rendered.
                render().map_err(|e| e.to_string())
            });
        // The files the replicas mount, written on every pass; a replica whose files cannot be
        // written is not rendered (reported blocked).
        for replica in &mut replicas {
            if let Ok(rendered) = &replica.rendered
                && let Err(e) = write_files(&rendered.files)
            {
                replica.rendered = Err(e);
            }
        }
        let desired = Desired { state, replicas };
        // What the engine holds after this round's actions: `observed` first, then listed again.
        let mut listed: Option<Vec<ContainerInfo>> = None;
        let mut round = 1;
        loop {
            self.stopping.retain(|_, task| !task.is_finished());
            let stopping: BTreeSet<String> = self.stopping.keys().cloned().collect();
            let observed = Observed {
                containers: listed.as_deref().unwrap_or(observed),
                stopping: &stopping,
                now_ms: now,
            };
            self.networks(&desired).await;
            self.volumes(&desired).await;
            let pass = self.planner.plan(&desired, &observed);
            let mut failed = false;
            for action in &pass.actions {
                failed |= !self.execute(action, now).await;
            }
            let mut probed = false;
            for probe in self.planner.probes(&desired, &observed) {
                if run_probe(self.runtime.as_ref(), &probe).await {
                    probed = true;
                    let outcome = Outcome::Probed {
                        id: probe.id,
                        started_ms: probe.started_ms,
                    };
                    self.planner.record(outcome, now);
                }
            }
            self.planner.retain(&desired, &observed);
            let planner = &self.planner;
            self.inits.retain(|replica, (hash, task)| {
                let wanted = planner.init_running(replica, hash);
                if !wanted {
                    task.abort();
                }
                wanted
            });
            let acted = !pass.actions.is_empty() || probed;
            // A round that acted changed what the engine holds (containers created, started,
            // proven ready): the next round sees it, so the report says so at once instead of
            // one report (one log write) per step. Not after a failed action: the next round
            // would try it again at once; the next pass does (a second later, or at its backoff).
            if acted && !failed && round < ROUNDS {
                match self.runtime.list_managed().await {
                    Ok(now_listed) => {
                        listed = Some(now_listed);
                        round += 1;
                        continue;
                    }
                    Err(e) => tracing::warn!("listing containers again: {e}"),
                }
            }
            let reports = self.planner.reports(&desired, &observed, &pass);
            self.busy = acted || !self.stopping.is_empty() || !self.inits.is_empty();
            return (reports, pass.wake_at_ms);
        }
    }

    /// The bridge network half of a pass (before the replicas': their creations wait for the
    /// networks they join).
    async fn networks(&mut self, desired: &Desired<'_>) {
        if !self.planner.wants_networks(desired) {
            return;
        }
        let listed = self
            .runtime
            .list_networks()
            .await
            .map_err(|e| e.to_string());
        let actions = self
            .planner
            .plan_networks(desired, listed.as_deref().map_err(String::as_str));
        for action in actions {
            let (name, what, result) = match &action {
                NetworkAction::Create(config) => (
                    &config.name,
                    "creating",
                    self.runtime.create_network(config).await,
                ),
                NetworkAction::Remove { name } => {
                    (name, "removing", self.runtime.remove_network(name).await)
                }
            };
            match &result {
                Ok(()) => tracing::info!(network = %name, "{what} bridge network: done"),
                Err(e) => tracing::warn!(network = %name, "{what} bridge network: {e}"),
            }
            self.planner
                .record_network(name, result.map_err(|e| e.to_string()));
        }
    }

    /// The volume half of a pass (before the replicas': their creations wait for the volumes
    /// they mount).
    async fn volumes(&mut self, desired: &Desired<'_>) {
        let listed = self.runtime.list_volumes().await.map_err(|e| e.to_string());
        let actions = self
            .planner
            .plan_volumes(desired, listed.as_deref().map_err(String::as_str));
        for action in actions {
            // Not the options: they may hold credentials (cifs, nfs).
            let (name, what, result) = match &action {
                VolumeAction::Create(config) => (
                    &config.name,
                    "creating",
                    self.runtime.create_volume(config).await,
                ),
                VolumeAction::Remove { name } => {
                    (name, "removing", self.runtime.remove_volume(name).await)
                }
            };
            match &result {
                Ok(()) => tracing::info!(volume = %name, "{what} volume: done"),
                Err(e) => tracing::warn!(volume = %name, "{what} volume: {e}"),
            }
            self.planner
                .record_volume(name, result.map_err(|e| e.to_string()));
        }
    }

    /// Runs `action` and records its outcomes; whether none of them is a failure.
    async fn execute(&mut self, action: &NodeAction, now: u64) -> bool {
        let runtime = self.runtime.as_ref();
        let failed = |replica: &str, e: String| Outcome::Failed {
            replica: replica.to_string(),
            error: e,
        };
        let outcomes = match action {
            NodeAction::Stop { id } => {
                let (runtime, grace) = (self.runtime.clone(), self.config.stop_grace);
                let task = tokio::spawn({
                    let id = id.clone();
                    async move {
                        if let Err(e) = runtime.stop(&id, grace).await {
                            tracing::warn!("stopping {id}: {e}");
                        }
                    }
                });
                self.stopping.insert(id.clone(), task);
                vec![]
            }
            NodeAction::Remove { id, replica } => match runtime.remove(id).await {
                Ok(()) => {
                    tracing::info!(replica = %replica, "removed");
                    vec![]
                }
                Err(e) => vec![failed(replica, e.to_string())],
            },
            NodeAction::Start { id, replica } => match runtime.start(id).await {
                Ok(()) => vec![],
                Err(e) => vec![failed(replica, e.to_string())],
            },
            NodeAction::Restart { id, replica } => match runtime.start(id).await {
                Ok(()) => {
                    tracing::info!(replica = %replica, "restarted after exit");
                    crate::metrics::container_restarted(replica);
                    vec![Outcome::Restarted {
                        replica: replica.clone(),
                    }]
                }
                Err(e) => vec![failed(replica, e.to_string())],
            },
            NodeAction::RunInit {
                replica,
                hash,
                config,
            } => {
                let runtime = self.runtime.clone();
                let config = config.clone();
                let task = tokio::spawn(async move {
                    runtime
                        .run_to_completion(&config)
                        .await
                        .map_err(|e| e.to_string())
                });
                tracing::info!(replica, "init container started");
                if let Some((_, previous)) =
                    self.inits.insert(replica.clone(), (hash.clone(), task))
                {
                    previous.abort();
                }
                vec![]
            }
            NodeAction::Create { replica, config } => {
                vec![created(replica, create_and_start(runtime, config).await)]
            }
            NodeAction::CreateBatch { replicas } => {
                let mut outcomes = Vec::with_capacity(replicas.len());
                for chunk in replicas.chunks(CREATE_CONCURRENCY) {
                    let runs = chunk.iter().map(|(_, c)| create_and_start(runtime, c));
                    let results = futures::future::join_all(runs).await;
                    outcomes.extend(chunk.iter().zip(results).map(|((n, _), r)| created(n, r)));
                }
                outcomes
            }
        };
        let mut succeeded = true;
        for outcome in outcomes {
            if let Outcome::Failed { replica, error } = &outcome {
                tracing::warn!(replica = %replica, "{action:?}: {error}");
                succeeded = false;
            }
            self.planner.record(outcome, now);
        }
        succeeded
    }
}

/// Writes rendered files, creating their directories.
fn write_files(files: &[FileWrite]) -> Result<(), String> {
    for file in files {
        if let Some(dir) = file.path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("writing files in {}: {e}", dir.display()))?;
        }
        std::fs::write(&file.path, file.content.as_bytes())
            .map_err(|e| format!("writing {}: {e}", file.path.display()))?;
    }
    Ok(())
}

/// The outcome of creating and starting `replica`.
fn created(replica: &str, result: Result<(), String>) -> Outcome {
    match result {
        Ok(()) => {
            tracing::info!(replica, "created and started");
            Outcome::Created {
                replica: replica.to_string(),
            }
        }
        Err(error) => Outcome::Failed {
            replica: replica.to_string(),
            error,
        },
    }
}

async fn create_and_start<R: Runtime>(runtime: &R, config: &ContainerConfig) -> Result<(), String> {
    let id = runtime.create(config).await.map_err(|e| e.to_string())?;
    runtime.start(&id).await.map_err(|e| e.to_string())
}

/// Runs the checks of a probe in order; ready when all pass.
async fn run_probe<R: Runtime>(runtime: &R, probe: &Probe) -> bool {
    for check in &probe.checks {
        let ok = match check {
            Check::Command { cmd, timeout } => {
                matches!(
                    tokio::time::timeout(*timeout, runtime.exec(&probe.id, cmd)).await,
                    Ok(Ok(out)) if out.exit_code == 0
                )
            }
            Check::Http {
                url,
                method,
                body,
                timeout,
            } => {
                let Some(url) = url else { return false };
                let client = reqwest::Client::builder()
                    .timeout(*timeout)
                    .no_proxy()
                    .build();
                let Ok(client) = client else { return false };
                let request = match method.as_str() {
                    "POST" => client.post(url).json(body),
                    _ => client.get(url),
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
mod conformance;
#[cfg(test)]
pub(crate) mod fake;
#[cfg(test)]
mod tests;

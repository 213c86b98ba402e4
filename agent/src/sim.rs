//! Simulated nodes (issue 14): many nodes in one process, each joining a real cluster through
//! its API, heartbeating to the leader, and running what it is assigned through the real node
//! reconciler ([`crate::controllers::replicas`]'s executor and `smr_core::node_plan`) on a
//! [`SimRuntime`]: containers that start at once, in memory, with a configurable latency and
//! failure rate. Scheduling, reporting, rescheduling and DNS are exercised at scale without
//! Docker. Used by the simulator test and `bench/scale.sh`; no agent ever runs one.
//!
//! ```text
//!  simulator process                                   real agent (leader)
//!  -----------------                                   -------------------
//!  SimNode::join   --POST join (token, CSRs)-------->  RegisterNode (raft_port 0: no Raft member)
//!  SimNode::heartbeat --POST internal/heartbeat----->  leader's memory -> liveness
//!  fetch_state     --GET internal/state------------->  the applied ClusterState
//!  SimNode::reconcile: Executor (node_plan) on SimRuntime
//!                  --POST internal/report (what changed)-->  batched with other nodes' into one Op::Reports
//! ```
//!
//! A node passes when the agent's reconciler would be woken with something to do: when a new
//! version of the state changes what it runs ([`woken`]: its slots, their definitions, anything
//! that concerns every node), when its last pass acted or left work in flight
//! ([`SimNode::needs_pass`]), at a backoff's end, and, as the agent's loop, again at once after
//! each report it sent (the report's commit is a change of its replicas that wakes it). The
//! agent's reconciler also passes every second whatever happened; such a pass with unchanged
//! inputs finds nothing to do, and 1,000 of them a second do not fit in one process, so the
//! simulator leaves them out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use api_types::types::{
    HeartbeatRequest, JoinRequest, JoinResponse, ReportRequest, ReportResponse,
};

use crate::controllers::replicas::{Executor, ReplicasConfig};
use crate::definitions::Kind;
use crate::node::reports::next_report;
use crate::pki::{Identity, Role};
use crate::runtime::{
    ContainerConfig, ContainerInfo, ExecOutput, Runtime, RuntimeError, State, VolumeConfig,
    VolumeInfo, labels,
};
use crate::state::{ClusterState, NodeId, ReplicaReport};
use smr_core::scheduler::placement::ReplicaSlot;

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("{0}")]
    Pki(#[from] crate::pki::PkiError),
    #[error("{what}: {why}")]
    Http { what: String, why: String },
    #[error("{0}")]
    Refused(String),
}

fn http_error(what: &str, e: impl std::fmt::Display) -> SimError {
    SimError::Http {
        what: what.to_string(),
        why: e.to_string(),
    }
}

/// How a [`SimRuntime`] behaves.
#[derive(Clone, Debug, Default)]
pub struct SimOptions {
    /// How long each create takes.
    pub latency: Duration,
    /// Every n-th create fails (0: never).
    pub fail_every: u64,
}

/// Addresses handed to simulated containers: 100.64.0.0/10, unique in the process.
static NEXT_IP: AtomicU32 = AtomicU32::new(1);

#[derive(Default)]
struct Engine {
    containers: BTreeMap<String, ContainerInfo>,
    /// Named volumes by name. Mounts are not simulated: no volume has users.
    volumes: BTreeMap<String, VolumeInfo>,
    /// Networks by name (bridge networks smr creates). Connections are not simulated.
    networks: BTreeMap<String, crate::runtime::NetworkInfo>,
    next_id: u64,
    creates: u64,
}

/// A container engine in memory: containers start at once and run until stopped.
#[derive(Default)]
pub struct SimRuntime {
    options: SimOptions,
    engine: Mutex<Engine>,
}

impl SimRuntime {
    pub fn new(options: SimOptions) -> SimRuntime {
        SimRuntime {
            options,
            engine: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Engine> {
        self.engine.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The names of the running containers.
    pub fn running(&self) -> Vec<String> {
        self.lock()
            .containers
            .values()
            .filter(|c| c.state == State::Running)
            .map(|c| c.name.clone())
            .collect()
    }
}

impl Runtime for SimRuntime {
    async fn list_managed(&self) -> Result<Vec<ContainerInfo>, RuntimeError> {
        Ok(self
            .lock()
            .containers
            .values()
            .filter(|c| c.labels.get(labels::MANAGED).map(String::as_str) == Some("true"))
            .cloned()
            .collect())
    }

    async fn create(&self, config: &ContainerConfig) -> Result<String, RuntimeError> {
        if !self.options.latency.is_zero() {
            tokio::time::sleep(self.options.latency).await;
        }
        let mut engine = self.lock();
        engine.creates += 1;
        if self.options.fail_every > 0 && engine.creates.is_multiple_of(self.options.fail_every) {
            return Err(RuntimeError::Docker(format!(
                "simulated failure creating {}",
                config.name
            )));
        }
        if engine.containers.values().any(|c| c.name == config.name) {
            return Err(RuntimeError::Conflict(config.name.clone()));
        }
        engine.next_id += 1;
        let id = format!("sim{:08}", engine.next_id);
        let n = NEXT_IP.fetch_add(1, Ordering::Relaxed);
        let ip = std::net::Ipv4Addr::from(0x6440_0000 | (n & 0x003f_ffff));
        let network = config.network.clone().unwrap_or_else(|| "bridge".into());
        engine.containers.insert(
            id.clone(),
            ContainerInfo {
                id: id.clone(),
                name: config.name.clone(),
                labels: config.labels.clone(),
                state: State::Created,
                exit_code: None,
                started_ms: None,
                finished_ms: None,
                ips: BTreeMap::from([(network, ip)]),
                image: config.image.clone(),
            },
        );
        Ok(id)
    }

    async fn start(&self, id: &str) -> Result<(), RuntimeError> {
        let mut engine = self.lock();
        let c = engine
            .containers
            .get_mut(id)
            .ok_or_else(|| RuntimeError::NotFound(id.to_string()))?;
        if c.state != State::Running {
            c.state = State::Running;
            c.exit_code = None;
            c.started_ms = Some(crate::node::now_ms());
            c.finished_ms = None;
        }
        Ok(())
    }

    async fn stop(&self, id: &str, _grace: Duration) -> Result<(), RuntimeError> {
        let mut engine = self.lock();
        let c = engine
            .containers
            .get_mut(id)
            .ok_or_else(|| RuntimeError::NotFound(id.to_string()))?;
        if c.state == State::Running {
            c.state = State::Exited;
            c.exit_code = Some(137);
            c.finished_ms = Some(crate::node::now_ms());
        }
        Ok(())
    }

    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        self.lock()
            .containers
            .remove(id)
            .map(|_| ())
            .ok_or_else(|| RuntimeError::NotFound(id.to_string()))
    }

    async fn run_to_completion(
        &self,
        _config: &ContainerConfig,
    ) -> Result<(i64, String), RuntimeError> {
        Ok((0, String::new()))
    }

    async fn exec(&self, id: &str, _cmd: &[String]) -> Result<ExecOutput, RuntimeError> {
        let engine = self.lock();
        match engine.containers.get(id) {
            Some(c) if c.state == State::Running => Ok(ExecOutput {
                exit_code: 0,
                output: String::new(),
            }),
            Some(_) => Err(RuntimeError::Docker(format!(
                "container {id} is not running"
            ))),
            None => Err(RuntimeError::NotFound(id.to_string())),
        }
    }

    async fn list_volumes(&self) -> Result<Vec<VolumeInfo>, RuntimeError> {
        Ok(self.lock().volumes.values().cloned().collect())
    }

    async fn create_volume(&self, config: &VolumeConfig) -> Result<(), RuntimeError> {
        crate::runtime::volumes::create_in_memory(&mut self.lock().volumes, config)
    }

    async fn remove_volume(&self, name: &str) -> Result<(), RuntimeError> {
        self.lock()
            .volumes
            .remove(name)
            .map(|_| ())
            .ok_or_else(|| RuntimeError::NotFound(name.to_string()))
    }

    async fn list_networks(&self) -> Result<Vec<crate::runtime::NetworkInfo>, RuntimeError> {
        Ok(self.lock().networks.values().cloned().collect())
    }

    async fn create_network(
        &self,
        config: &crate::runtime::BridgeConfig,
    ) -> Result<(), RuntimeError> {
        crate::runtime::networks::create_in_memory(&mut self.lock().networks, config)
    }

    async fn remove_network(&self, name: &str) -> Result<(), RuntimeError> {
        self.lock()
            .networks
            .remove(name)
            .map(|_| ())
            .ok_or_else(|| RuntimeError::NotFound(name.to_string()))
    }
}

/// One simulated node: its identity in the cluster, its engine and its reconciler.
pub struct SimNode {
    pub id: NodeId,
    pub name: String,
    api: String,
    http: reqwest::Client,
    runtime: Arc<SimRuntime>,
    executor: Executor<SimRuntime>,
    /// The sequence number and replicas of the last report the state took.
    last_sent: Option<(u64, Vec<ReplicaReport>)>,
    seq: u64,
    /// Whether the next pass must run whatever the state says: none ran yet, or the last one
    /// acted, left work in flight, or failed.
    pending: bool,
    /// When a backoff ends (ms since the epoch): a pass is due then.
    wake_at: Option<u64>,
}

/// At most this many passes in a row in one [`SimNode::reconcile`], each after a report the
/// one before sent (a replica's `waiting ... (for Ns)` message changes every second).
const FOLLOW_UPS: usize = 4;

impl SimNode {
    /// Joins the cluster whose API is `api` (`host:port`, whose CA is `ca_pem`) with `token`,
    /// as a schedulable node without a Raft server (`raft_port` 0).
    pub async fn join(
        api: &str,
        ca_pem: &str,
        token: &str,
        name: &str,
        ip: &str,
        files_dir: PathBuf,
        options: SimOptions,
    ) -> Result<SimNode, SimError> {
        let (node_key, node_csr) = crate::pki::new_key_and_csr(Role::Node, name, &[])?;
        let (_, admin_csr) = crate::pki::new_key_and_csr(Role::Admin, name, &[])?;
        let anonymous = crate::pki::reqwest_client(ca_pem, None, Duration::from_secs(30))?;
        let req = JoinRequest {
            token: token.to_string(),
            name: name.to_string(),
            host: name.to_string(),
            domain: name.to_string(),
            ip: ip.to_string(),
            public_ip: None,
            wg_port: None,
            wg_public_key: None,
            backend: None,
            api_port: 1443,
            raft_port: 0,
            labels: BTreeMap::new(),
            node_csr,
            admin_csr,
            vtep_mac: None,
            schedulable: true,
        };
        let joined: JoinResponse = post(&anonymous, api, "join", &req).await?;
        let identity = Identity::new(joined.node_cert, node_key, joined.ca_pem.clone())?;
        let http =
            crate::pki::reqwest_client(&joined.ca_pem, Some(&identity), Duration::from_secs(30))?;
        let runtime = Arc::new(SimRuntime::new(options));
        let config = ReplicasConfig {
            node: joined.id,
            network: None,
            dns: Vec::new(),
            files_dir,
            stop_grace: Duration::ZERO,
        };
        Ok(SimNode {
            id: joined.id,
            name: name.to_string(),
            api: api.to_string(),
            http,
            executor: Executor::new(runtime.clone(), config),
            runtime,
            last_sent: None,
            seq: crate::node::now_ms(),
            pending: true,
            wake_at: None,
        })
    }

    /// Whether this node must pass even if the state did not change what it runs: its first
    /// pass, after a pass that acted, left work in flight or failed, when a backoff ends.
    pub fn needs_pass(&self, now_ms: u64) -> bool {
        self.pending || self.wake_at.is_some_and(|at| at <= now_ms)
    }

    /// After this node was silent (killed): its next pass runs whatever the state says, as an
    /// agent starting again makes a full pass.
    pub fn woke_up(&mut self) {
        self.pending = true;
    }

    pub fn runtime(&self) -> &SimRuntime {
        &self.runtime
    }

    /// An HTTPS client with this node's certificate.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// One heartbeat to the agent this node joined through (the leader).
    pub async fn heartbeat(&self) -> Result<(), SimError> {
        heartbeat(&self.http, &self.api, self.id).await
    }

    /// Reconcile passes against `state`, each followed by a report of the replicas that
    /// changed (a delta, as the agent's reconciler sends), then by another pass while the pass
    /// before sent one (at most [`FOLLOW_UPS`]). Returns how many reports were sent.
    pub async fn reconcile(&mut self, state: &ClusterState) -> Result<usize, SimError> {
        self.pending = true;
        let mut sent = 0;
        for _ in 0..FOLLOW_UPS {
            if !self.pass(state).await? {
                break;
            }
            sent += 1;
        }
        self.pending = self.executor.busy();
        Ok(sent)
    }

    /// One reconcile pass and its report; whether a report was sent.
    async fn pass(&mut self, state: &ClusterState) -> Result<bool, SimError> {
        let observed = self
            .runtime
            .list_managed()
            .await
            .map_err(|e| SimError::Refused(e.to_string()))?;
        let now = crate::node::now_ms();
        let (replicas, wake_at) = self.executor.pass(state, &observed, now).await;
        self.wake_at = wake_at;
        // As the agent's reconciler: a delta on the last report the state took; in full when
        // there is none or the answer asks for it.
        for _ in 0..2 {
            let Some(report) = next_report(
                self.id,
                self.seq + 1,
                now,
                self.last_sent.as_ref(),
                &replicas,
            ) else {
                return Ok(false);
            };
            self.seq += 1;
            let answer: ReportResponse = post(
                &self.http,
                &self.api,
                "internal/report",
                &ReportRequest { report },
            )
            .await?;
            if !answer.send_full {
                self.last_sent = Some((self.seq, replicas));
                return Ok(true);
            }
            self.last_sent = None;
        }
        Err(SimError::Refused(
            "the full report was answered 'send in full'".into(),
        ))
    }
}

/// The nodes whose reconciler has work after the state went from `before` to `after`: those
/// the change concerns among what wakes the agent's reconciler
/// ([`crate::state::Delta::touches_replicas`]). `None`: every node (nodes or cluster settings
/// changed, a definition other than `containers` that any node may use, or `after` does not
/// follow `before`).
pub fn woken(before: &ClusterState, after: &ClusterState) -> Option<BTreeSet<NodeId>> {
    if after.revision < before.revision {
        return None;
    }
    let delta = ClusterState::delta(before, after);
    if !delta.touches_replicas() {
        return Some(BTreeSet::new());
    }
    // Configuration, secret and resource objects reach replicas through the definitions that
    // read them, which the same write rolls: they count through those.
    let data = |kind: Kind| matches!(kind, Kind::Configuration | Kind::Secret | Kind::Resource);
    if !delta.nodes.is_empty()
        || delta.settings
        || delta
            .objects
            .touched()
            .any(|k| k.kind != Kind::Containers && !data(k.kind))
    {
        return None;
    }
    let mut nodes = BTreeSet::new();
    let mut add =
        |slot: &ReplicaSlot| nodes.extend(std::iter::once(slot.node).chain(slot.previous));
    // A containers definition written or deleted: every node with one of its slots.
    for key in delta
        .objects
        .touched()
        .filter(|k| k.kind == Kind::Containers)
    {
        for state in [before, after] {
            slots_of(state, key).for_each(&mut add);
        }
    }
    // A placement: the nodes of the slots that differ.
    for key in delta.placements.touched() {
        let (old, new) = (before.placements.get(key), after.placements.get(key));
        let indexes: BTreeSet<u32> = old
            .into_iter()
            .chain(new)
            .flat_map(|p| p.replicas.keys().copied())
            .collect();
        for index in indexes {
            let (a, b) = (
                old.and_then(|p| p.replicas.get(&index)),
                new.and_then(|p| p.replicas.get(&index)),
            );
            if a != b {
                a.into_iter().chain(b).for_each(&mut add);
            }
        }
    }
    // Replica reports change whether dependencies are ready: every node with a slot of an
    // object that has dependencies.
    if !delta.replicas.is_empty() {
        for (key, stored) in after.objects.iter() {
            let depends = stored
                .object
                .spec
                .as_containers()
                .is_some_and(|spec| !spec.dependencies.is_empty());
            if depends {
                slots_of(after, key).for_each(&mut add);
            }
        }
    }
    Some(nodes)
}

/// Every slot of the placement of `key` in `state` (none when it is not placed).
fn slots_of<'a>(
    state: &'a ClusterState,
    key: &crate::definitions::ObjectKey,
) -> impl Iterator<Item = &'a ReplicaSlot> + use<'a> {
    state
        .placements
        .get(key)
        .into_iter()
        .flat_map(|p| p.replicas.values())
}

/// One heartbeat of node `id` to the agent at `api` (the leader), with that node's client.
pub async fn heartbeat(http: &reqwest::Client, api: &str, id: NodeId) -> Result<(), SimError> {
    let req = HeartbeatRequest { node: id };
    let _: api_types::types::HeartbeatResponse =
        post(http, api, "internal/heartbeat", &req).await?;
    Ok(())
}

/// The applied state of the agent at `api`, read with a node certificate.
pub async fn fetch_state(http: &reqwest::Client, api: &str) -> Result<ClusterState, SimError> {
    let url = format!("https://{api}/api/v1/internal/state");
    let answer = http
        .get(url)
        .send()
        .await
        .map_err(|e| http_error("reading the state", e))?;
    if !answer.status().is_success() {
        return Err(SimError::Refused(format!(
            "reading the state: {}",
            answer.status()
        )));
    }
    answer
        .json()
        .await
        .map_err(|e| http_error("reading the state", e))
}

async fn post<B: serde::Serialize, R: serde::de::DeserializeOwned>(
    http: &reqwest::Client,
    api: &str,
    path: &str,
    body: &B,
) -> Result<R, SimError> {
    let url = format!("https://{api}/api/v1/{path}");
    let answer = http
        .post(url)
        .json(body)
        .send()
        .await
        .map_err(|e| http_error(path, e))?;
    let status = answer.status();
    if !status.is_success() {
        let text = answer.text().await.unwrap_or_default();
        return Err(SimError::Refused(format!("{path}: {status}: {text}")));
    }
    answer.json().await.map_err(|e| http_error(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(name: &str) -> ContainerConfig {
        ContainerConfig {
            name: name.to_string(),
            labels: BTreeMap::from([(labels::MANAGED.to_string(), "true".to_string())]),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn the_engine_starts_at_once_fails_every_nth_create_and_refuses_a_taken_name() {
        let engine = SimRuntime::new(SimOptions {
            latency: Duration::ZERO,
            fail_every: 3,
        });
        let a = engine.create(&config("a")).await.expect("created");
        engine.start(&a).await.expect("started");
        assert!(matches!(
            engine.create(&config("a")).await,
            Err(RuntimeError::Conflict(_))
        ));
        assert!(matches!(
            engine.create(&config("b")).await,
            Err(RuntimeError::Docker(_))
        ));
        let b = engine.create(&config("b")).await.expect("created");
        engine.start(&b).await.expect("started");
        assert_eq!(engine.running(), vec!["a".to_string(), "b".to_string()]);
        let listed = engine.list_managed().await.expect("listed");
        assert_eq!(listed.len(), 2);
        assert_ne!(
            listed[0].ips, listed[1].ips,
            "each container its own address"
        );
        engine.stop(&a, Duration::ZERO).await.expect("stopped");
        engine.remove(&a).await.expect("removed");
        assert_eq!(engine.running(), vec!["b".to_string()]);
        assert!(matches!(
            engine.remove(&a).await,
            Err(RuntimeError::NotFound(_))
        ));
    }
}

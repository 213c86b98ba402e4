//! The embedded replicated store: openraft 0.9 with its log, vote and snapshots in redb.
//!
//! ```text
//!  Store::write(Command) --> batch::Batcher: queued commands go together (group commit)
//!    --> Raft::client_write(Proposal) --> log (redb, fsync, MessagePack) --> replicated to a quorum
//!        <-- its own CommandResult <-- StateMachineStore::apply (each command on its own) <--+
//!  Store::read(linearizable) --> Raft::ensure_linearizable --> applied ClusterState
//! ```
//! [`Store`] is the only thing the rest of the agent sees: the embedded [`RaftStore`] (default) or,
//! with the `etcd` feature, [`etcd::EtcdStore`] on an existing etcd cluster. Membership follows a fixed voter
//! policy ([`desired_voters`]): 1 voter for 1-2 nodes, 3 for 3-4, 5 from 5 nodes on; the others
//! are learners, promoted when a voter goes.

// openraft's storage traits return its `StorageError`, which is large; the store cannot choose.
#![allow(clippy::result_large_err)]

pub mod batch;
mod codec;
mod commit;
pub mod disk;
#[cfg(feature = "etcd")]
pub mod etcd;
mod log;
mod net;
pub mod recover;
mod segments;
mod sm;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::{ChangeMembers, Config, SnapshotPolicy};
use serde::{Deserialize, Serialize};

use crate::state::{ClusterState, Command, CommandResult, NodeId};

pub use log::LogStore;
pub use sm::StateMachineStore;

/// How a node is reached: its Raft RPC address and its API address.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftPeer {
    pub raft_addr: String,
    pub api_addr: String,
    pub name: String,
}

impl std::fmt::Display for RaftPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.name, self.raft_addr)
    }
}

openraft::declare_raft_types!(
    /// smr's Raft types: commands in, command results out.
    pub TypeConfig:
        D = batch::Proposal,
        R = Vec<CommandResult>,
        NodeId = NodeId,
        Node = RaftPeer,
);

pub type Raft = openraft::Raft<TypeConfig>;

/// The HTTP client Raft RPCs go through, and the URL scheme.
#[derive(Clone)]
pub struct Transport {
    /// Made again after this node's certificate is replaced (see [`crate::pki::PeerClient`]).
    pub client: crate::pki::PeerClient,
    pub scheme: String,
}

#[derive(Clone, Debug)]
pub struct StoreConfig {
    pub heartbeat: Duration,
    pub election_timeout_min: Duration,
    pub election_timeout_max: Duration,
    /// A snapshot is taken after this many applied entries.
    pub snapshot_every: u64,
    /// How long a write waits to be committed before `Unavailable`.
    pub write_timeout: Duration,
    /// Free space kept in reserve on the data dir's file system; `None`: [`disk::DEFAULT_RESERVE`],
    /// or 5 % of a smaller file system.
    pub reserve_bytes: Option<u64>,
}

/// A snapshot goes to a follower in chunks of this many bytes.
pub const SNAPSHOT_CHUNK: usize = 1024 * 1024;
/// How long one chunk of a snapshot has to reach the follower, and the last one to be installed
/// there. openraft's default is 200 ms; a slower chunk ends the whole transfer, and the next one
/// starts again from the first chunk. A chunk that takes longer every time (over a link between
/// clouds, or the install of a large state) meant a follower behind the log never caught up, and
/// a node joining such a cluster never finished joining: the leader sent the snapshot again, for
/// ever (as the leader did to a restarted follower in a CI run of the fault suite, a debug build).
pub const SNAPSHOT_CHUNK_TIMEOUT: Duration = Duration::from_secs(30);

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            heartbeat: Duration::from_millis(150),
            election_timeout_min: Duration::from_millis(750),
            election_timeout_max: Duration::from_millis(1500),
            snapshot_every: 5000,
            write_timeout: Duration::from_secs(5),
            reserve_bytes: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("opening {path}: {reason}")]
    Open { path: String, reason: String },
    #[error("raft: {0}")]
    Raft(String),
    #[error("etcd: {0}")]
    Etcd(String),
}

#[derive(Clone, Debug, thiserror::Error)]
pub enum WriteError {
    #[error("this node is not the leader (leader: {})", leader.as_ref().map(|l| l.to_string()).unwrap_or_else(|| "unknown".into()))]
    ForwardToLeader {
        leader_id: Option<NodeId>,
        leader: Option<RaftPeer>,
    },
    /// Definitely not applied (nothing was proposed, or the proposal was dropped).
    #[error("{0}")]
    Unavailable(String),
    /// Proposed, but whether it was or will be applied is not known (e.g. not committed in time):
    /// only a retry with the same `op_id` tells.
    #[error("{0}")]
    Unknown(String),
    /// Refused before it was proposed: this node's storage cannot take writes now (disk full,
    /// read-only or failing data dir; etcd's NOSPACE alarm). Nothing of the write was applied.
    #[error("{0}")]
    InsufficientStorage(String),
    #[error("{0}")]
    Fatal(String),
}

pub type ReadError = WriteError;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServerState {
    Leader,
    Follower,
    Candidate,
    Learner,
    Shutdown,
    /// The etcd store cannot reach etcd: the state is kept as last seen, writes fail.
    Degraded,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StoreStatus {
    pub id: NodeId,
    pub state: ServerState,
    pub leader: Option<NodeId>,
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub last_applied: Option<u64>,
    pub voters: BTreeSet<NodeId>,
    pub learners: BTreeSet<NodeId>,
    pub members: BTreeMap<NodeId, RaftPeer>,
    /// Why this node is degraded, if it is (e.g. its data dir is full): writes are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// The voters a cluster of `members` should have, keeping `current` voters where possible.
pub fn desired_voters(members: &BTreeSet<NodeId>, current: &BTreeSet<NodeId>) -> BTreeSet<NodeId> {
    let target = match members.len() {
        0 => 0,
        1 | 2 => 1,
        3 | 4 => 3,
        _ => 5,
    };
    let mut voters: BTreeSet<NodeId> = current
        .intersection(members)
        .copied()
        .take(target)
        .collect();
    for id in members {
        if voters.len() >= target {
            break;
        }
        voters.insert(*id);
    }
    voters
}

/// A handle on the node's embedded Raft store. Clones share it.
#[derive(Clone)]
pub struct RaftStore {
    id: NodeId,
    raft: Raft,
    sm: StateMachineStore,
    disk: Arc<disk::Disk>,
    /// Op ids of writes that timed out: they may still be applied later.
    in_doubt: Arc<std::sync::Mutex<std::collections::VecDeque<String>>>,
    /// Group commit: writes queue here and go to Raft many per entry.
    batcher: batch::Batcher,
    /// What this node heard of its peers' Raft RPC servers (whether they read batches); the
    /// batcher holds it too, tests read it here.
    #[cfg_attr(not(test), allow(dead_code))]
    peers: Arc<net::Peers>,
    write_timeout: Duration,
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// openraft's role of a node as the store reports it.
impl From<openraft::ServerState> for ServerState {
    fn from(state: openraft::ServerState) -> ServerState {
        match state {
            openraft::ServerState::Leader => ServerState::Leader,
            openraft::ServerState::Follower => ServerState::Follower,
            openraft::ServerState::Candidate => ServerState::Candidate,
            openraft::ServerState::Learner => ServerState::Learner,
            openraft::ServerState::Shutdown => ServerState::Shutdown,
        }
    }
}

fn raft_err<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Raft(e.to_string())
}

fn write_error(e: RaftError<NodeId, ClientWriteError<NodeId, RaftPeer>>) -> WriteError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => WriteError::ForwardToLeader {
            leader_id: f.leader_id,
            leader: f.leader_node,
        },
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            WriteError::Unavailable(e.to_string())
        }
        RaftError::Fatal(f) => WriteError::Fatal(f.to_string()),
    }
}

impl RaftStore {
    /// Opens (or creates) the store in `dir` and starts this node's Raft.
    pub async fn open(
        dir: &Path,
        id: NodeId,
        transport: Transport,
        config: StoreConfig,
    ) -> Result<RaftStore, StoreError> {
        let open_err = |reason: String| StoreError::Open {
            path: dir.display().to_string(),
            reason,
        };
        std::fs::create_dir_all(dir).map_err(|e| open_err(e.to_string()))?;
        let disk = Arc::new(
            disk::Disk::open(dir, config.reserve_bytes).map_err(|e| open_err(e.to_string()))?,
        );
        let (log, sm) = {
            let disk = disk.clone();
            tokio::task::spawn_blocking(move || {
                let log = LogStore::new(disk.clone()).map_err(|e| e.to_string())?;
                let sm = StateMachineStore::load(disk).map_err(|e| e.to_string())?;
                Ok::<_, String>((log, sm))
            })
            .await
            .map_err(|e| open_err(e.to_string()))?
            .map_err(open_err)?
        };
        let raft_config = Config {
            cluster_name: "smr".into(),
            heartbeat_interval: config.heartbeat.as_millis() as u64,
            election_timeout_min: config.election_timeout_min.as_millis() as u64,
            election_timeout_max: config.election_timeout_max.as_millis() as u64,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_every),
            // Entries kept behind a snapshot, for followers just behind it.
            max_in_snapshot_log_to_keep: config.snapshot_every.min(200),
            snapshot_max_chunk_size: SNAPSHOT_CHUNK as u64,
            install_snapshot_timeout: SNAPSHOT_CHUNK_TIMEOUT.as_millis() as u64,
            ..Config::default()
        }
        .validate()
        .map_err(raft_err)?;
        let peers = Arc::new(net::Peers::default());
        let raft = Raft::new(
            id,
            Arc::new(raft_config),
            net::Network {
                transport,
                peers: peers.clone(),
            },
            log,
            sm.clone(),
        )
        .await
        .map_err(raft_err)?;
        // openraft's policy counts entries; this one counts bytes, so that a log of few but large
        // entries (applies of many objects) does not grow far beyond the state either.
        // It holds the disk weakly: after a shutdown nothing of it keeps the database open.
        {
            let (raft, disk) = (raft.clone(), Arc::downgrade(&disk));
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tick.tick().await;
                    let Some(disk) = disk.upgrade() else { break };
                    if disk.is_closing() {
                        break;
                    }
                    if let Some(bytes) = disk.snapshot_due() {
                        tracing::info!(
                            "{} KiB of log since the last snapshot: taking one",
                            bytes / 1024
                        );
                        disk.snapshot_taken(None);
                        if raft.trigger().snapshot().await.is_err() {
                            break;
                        }
                    }
                }
            });
        }
        let in_doubt = Arc::default();
        let batcher = batch::Batcher::start(
            raft.clone(),
            config.write_timeout,
            Arc::clone(&in_doubt),
            peers.clone(),
        );
        Ok(RaftStore {
            id,
            raft,
            sm,
            disk,
            in_doubt,
            batcher,
            peers,
            write_timeout: config.write_timeout,
        })
    }

    /// Makes this node a one-node cluster, unless it already belongs to one (safe on restart).
    pub async fn bootstrap(&self, me: RaftPeer) -> Result<(), StoreError> {
        if self.raft.is_initialized().await.map_err(raft_err)? {
            return Ok(());
        }
        self.raft
            .initialize(BTreeMap::from([(self.id, me)]))
            .await
            .map_err(raft_err)
    }

    /// Proposes a command and waits until it is committed and applied. Commands proposed while
    /// others are being committed go together in one entry ([`batch`]), each with its own result.
    ///
    /// `ForwardToLeader` means the entry is not in the log (refused, or truncated by a new
    /// leader: committed entries never are); a timeout means it is appended here and may still
    /// commit, so the outcome is unknown. Refused without proposing anything while this node's
    /// storage cannot take writes (see [`disk`]).
    pub async fn write(&self, cmd: Command) -> Result<CommandResult, WriteError> {
        if let Some(problem) = self.disk.problem() {
            // A retry of a write that was applied gets its result, whatever the disk.
            if let Some(result) = self.sm.state().recent_result(&cmd.op_id) {
                return Ok(result.clone());
            }
            // An earlier attempt that timed out may still be waiting in the Raft core for the
            // disk: this one cannot say "not applied".
            if lock(&self.in_doubt).contains(&cmd.op_id) {
                return Err(WriteError::Unknown(format!(
                    "an earlier attempt of this write may still be applied once the disk takes \
                     writes again ({problem}); retry with the same op_id"
                )));
            }
            return Err(WriteError::InsufficientStorage(format!(
                "this node cannot store writes: {problem}"
            )));
        }
        self.batcher.write(cmd).await
    }

    /// Proposes `commands` together, in one entry ([`batch::Batcher::write_all`]), and waits
    /// for each one's result. While the disk cannot take writes, each is answered as
    /// [`RaftStore::write`] answers it.
    pub async fn write_all(
        &self,
        commands: Vec<Command>,
    ) -> Vec<Result<CommandResult, WriteError>> {
        if self.disk.problem().is_some() {
            let mut results = Vec::with_capacity(commands.len());
            for cmd in commands {
                results.push(self.write(cmd).await);
            }
            return results;
        }
        self.batcher.write_all(commands).await
    }

    /// The leader's commit point, confirmed by a quorum (ReadIndex). Leader only.
    pub async fn read_index(&self) -> Result<u64, ReadError> {
        match tokio::time::timeout(self.write_timeout, self.raft.ensure_linearizable()).await {
            Ok(Ok(log_id)) => Ok(log_id.map(|l| l.index).unwrap_or(0)),
            Ok(Err(RaftError::APIError(e))) => match e {
                openraft::error::CheckIsLeaderError::ForwardToLeader(f) => {
                    Err(WriteError::ForwardToLeader {
                        leader_id: f.leader_id,
                        leader: f.leader_node,
                    })
                }
                openraft::error::CheckIsLeaderError::QuorumNotEnough(q) => {
                    Err(WriteError::Unavailable(q.to_string()))
                }
            },
            Ok(Err(RaftError::Fatal(f))) => Err(WriteError::Fatal(f.to_string())),
            Err(_) => Err(WriteError::Unavailable(
                "a quorum did not confirm the leader in time".into(),
            )),
        }
    }

    /// The applied state: after a read index (linearizable, leader only) or as it is (stale).
    pub async fn read(&self, linearizable: bool) -> Result<Arc<ClusterState>, ReadError> {
        if linearizable {
            self.read_index().await?;
        }
        Ok(self.sm.state())
    }

    /// Changes whenever entries are applied (the value is the last applied log index).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.sm.subscribe()
    }

    /// This node's role alone: what [`RaftStore::status`] says, without copying the metrics,
    /// the membership or asking the file system (callers on every heartbeat and write).
    pub fn server_state(&self) -> ServerState {
        self.raft.metrics().borrow().state.into()
    }

    pub fn status(&self) -> StoreStatus {
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let learners: BTreeSet<NodeId> = membership.learner_ids().collect();
        StoreStatus {
            id: metrics.id,
            state: metrics.state.into(),
            leader: metrics.current_leader,
            term: metrics.current_term,
            last_log_index: metrics.last_log_index,
            last_applied: metrics.last_applied.map(|l| l.index),
            voters,
            learners,
            members: membership
                .nodes()
                .map(|(id, peer)| (*id, peer.clone()))
                .collect(),
            problem: self.disk.problem(),
        }
    }

    /// Adds a node as a learner (waiting until it caught up) and rebalances voters. Leader only.
    pub async fn add_member(&self, id: NodeId, peer: RaftPeer) -> Result<(), WriteError> {
        if !self.status().members.contains_key(&id) {
            self.raft
                .add_learner(id, peer, true)
                .await
                .map_err(write_error)?;
        }
        self.rebalance().await
    }

    /// Removes a node from the membership, promoting a learner if a voter goes. Leader only.
    pub async fn remove_member(&self, id: NodeId) -> Result<(), WriteError> {
        let status = self.status();
        if status.voters.contains(&id) {
            let members: BTreeSet<NodeId> = status
                .members
                .keys()
                .copied()
                .filter(|m| *m != id)
                .collect();
            let voters: BTreeSet<NodeId> =
                status.voters.iter().copied().filter(|v| *v != id).collect();
            let desired = desired_voters(&members, &voters);
            if desired.is_empty() {
                return Err(WriteError::Unavailable(format!(
                    "node {id} is the last voter: removing it would leave no voter"
                )));
            }
            self.raft
                .change_membership(ChangeMembers::ReplaceAllVoters(desired), true)
                .await
                .map_err(write_error)?;
        }
        if self.status().members.contains_key(&id) {
            self.raft
                .change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
                .await
                .map_err(write_error)?;
        }
        Ok(())
    }

    /// Applies the voter policy to the current membership. Leader only.
    pub async fn rebalance(&self) -> Result<(), WriteError> {
        let status = self.status();
        let members: BTreeSet<NodeId> = status.members.keys().copied().collect();
        let desired = desired_voters(&members, &status.voters);
        if desired != status.voters {
            self.raft
                .change_membership(ChangeMembers::ReplaceAllVoters(desired), true)
                .await
                .map_err(write_error)?;
        }
        Ok(())
    }

    /// The Raft RPC routes for this node (served on the Raft port).
    pub fn rpc_router(&self) -> axum::Router {
        net::router(self.raft.clone())
    }

    pub async fn shutdown(&self) {
        // A storage call waiting out a full disk gives up now, so the core can stop.
        self.disk.close();
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!("raft shutdown: {e}");
        }
        // Tasks of the core may still hold the disk for a moment; the file is closed now.
        let disk = self.disk.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || disk.release()).await {
            tracing::warn!("closing the Raft database: {e}");
        }
    }
}

/// Where an etcd-backed cluster keeps its state (`smrmgr start --store etcd://...`).
#[derive(Clone, Debug, Default)]
pub struct EtcdConfig {
    /// `host:port` or `http(s)://host:port` of every member to use.
    pub endpoints: Vec<String>,
    /// Key prefix of this cluster's keys, ending with `/` (default `/smr/`).
    pub prefix: String,
    /// PEM of the CA that signed the etcd server certificates (enables TLS).
    pub ca_pem: Option<String>,
    /// Client certificate and key (PEM) for etcd client-certificate authentication.
    pub cert_pem: Option<String>,
    pub key_pem: Option<String>,
    /// User and password for etcd's own authentication (`etcdctl auth enable`).
    pub credentials: Option<crate::credentials::Credentials>,
}

impl EtcdConfig {
    /// Parses `etcd://HOST:PORT[,HOST:PORT...]` (also `etcds://` for TLS endpoints).
    pub fn parse_url(url: &str) -> Result<EtcdConfig, StoreError> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| StoreError::Etcd(format!("{url:?} is not etcd://HOST:PORT[,...]")))?;
        if scheme != "etcd" && scheme != "etcds" {
            return Err(StoreError::Etcd(format!(
                "store {url:?}: only etcd:// is supported"
            )));
        }
        let endpoints: Vec<String> = rest
            .trim_end_matches('/')
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(str::to_string)
            .collect();
        if endpoints.is_empty() {
            return Err(StoreError::Etcd(format!("store {url:?} names no endpoint")));
        }
        Ok(EtcdConfig {
            endpoints,
            prefix: "/smr/".into(),
            ..EtcdConfig::default()
        })
    }
}

/// The node's state store: the embedded Raft group or an etcd cluster. Clones share it.
#[derive(Clone)]
pub enum Store {
    Raft(RaftStore),
    #[cfg(feature = "etcd")]
    Etcd(etcd::EtcdStore),
}

impl Store {
    /// Opens (or creates) the embedded Raft store in `dir` and starts this node's Raft.
    pub async fn open(
        dir: &Path,
        id: NodeId,
        transport: Transport,
        config: StoreConfig,
    ) -> Result<Store, StoreError> {
        Ok(Store::Raft(
            RaftStore::open(dir, id, transport, config).await?,
        ))
    }

    /// Opens the store on an existing etcd cluster, as node `id`.
    pub async fn open_etcd(
        config: &EtcdConfig,
        id: NodeId,
        store_config: StoreConfig,
    ) -> Result<Store, StoreError> {
        #[cfg(feature = "etcd")]
        {
            Ok(Store::Etcd(
                etcd::EtcdStore::open(config, id, etcd::EtcdOptions::from(&store_config)).await?,
            ))
        }
        #[cfg(not(feature = "etcd"))]
        {
            let _ = (config, id, store_config);
            Err(StoreError::Etcd(
                "this agent was built without the `etcd` feature".into(),
            ))
        }
    }

    /// Whether this store keeps its own Raft group (membership, Raft RPCs).
    pub fn is_raft(&self) -> bool {
        matches!(self, Store::Raft(_))
    }

    /// Makes this node a one-node cluster, unless it already belongs to one (safe on restart).
    pub async fn bootstrap(&self, me: RaftPeer) -> Result<(), StoreError> {
        match self {
            Store::Raft(s) => s.bootstrap(me).await,
            #[cfg(feature = "etcd")]
            Store::Etcd(_) => Ok(()),
        }
    }

    /// Writes a command and waits until it is committed and applied here.
    pub async fn write(&self, cmd: Command) -> Result<CommandResult, WriteError> {
        let started = std::time::Instant::now();
        let result = match self {
            Store::Raft(s) => s.write(cmd).await,
            #[cfg(feature = "etcd")]
            Store::Etcd(s) => s.write(cmd).await,
        };
        crate::metrics::store_write(&result, started.elapsed());
        result
    }

    /// Writes `commands` together: on the Raft store in one entry, so that they are applied
    /// at once; on etcd each is its own log key (etcd limits a request's size), written at
    /// the same time. One result per command, in order.
    pub async fn write_all(
        &self,
        commands: Vec<Command>,
    ) -> Vec<Result<CommandResult, WriteError>> {
        let started = std::time::Instant::now();
        let results = match self {
            Store::Raft(s) => s.write_all(commands).await,
            #[cfg(feature = "etcd")]
            Store::Etcd(s) => {
                futures::future::join_all(commands.into_iter().map(|c| s.write(c))).await
            }
        };
        for result in &results {
            crate::metrics::store_write(result, started.elapsed());
        }
        results
    }

    /// The point a linearizable read must have applied up to.
    pub async fn read_index(&self) -> Result<u64, ReadError> {
        match self {
            Store::Raft(s) => s.read_index().await,
            #[cfg(feature = "etcd")]
            Store::Etcd(s) => s.read_index().await,
        }
    }

    /// The applied state: linearizable or as it is here (stale).
    pub async fn read(&self, linearizable: bool) -> Result<Arc<ClusterState>, ReadError> {
        match self {
            Store::Raft(s) => s.read(linearizable).await,
            #[cfg(feature = "etcd")]
            Store::Etcd(s) => s.read(linearizable).await,
        }
    }

    /// Changes whenever commands are applied (the value is the last applied index/revision).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        match self {
            Store::Raft(s) => s.subscribe(),
            #[cfg(feature = "etcd")]
            Store::Etcd(s) => s.subscribe(),
        }
    }

    pub fn status(&self) -> StoreStatus {
        match self {
            Store::Raft(s) => s.status(),
            #[cfg(feature = "etcd")]
            Store::Etcd(s) => s.status(),
        }
    }

    /// This node's role: `status().state`, at the cost of reading one field.
    pub fn server_state(&self) -> ServerState {
        match self {
            Store::Raft(s) => s.server_state(),
            #[cfg(feature = "etcd")]
            Store::Etcd(s) => s.server_state(),
        }
    }

    /// Adds a node to the Raft membership (no-op on etcd). Leader only.
    pub async fn add_member(&self, id: NodeId, peer: RaftPeer) -> Result<(), WriteError> {
        match self {
            Store::Raft(s) => s.add_member(id, peer).await,
            #[cfg(feature = "etcd")]
            Store::Etcd(_) => Ok(()),
        }
    }

    /// Removes a node from the Raft membership (no-op on etcd). Leader only.
    pub async fn remove_member(&self, id: NodeId) -> Result<(), WriteError> {
        match self {
            Store::Raft(s) => s.remove_member(id).await,
            #[cfg(feature = "etcd")]
            Store::Etcd(_) => Ok(()),
        }
    }

    /// Applies the voter policy (no-op on etcd). Leader only.
    pub async fn rebalance(&self) -> Result<(), WriteError> {
        match self {
            Store::Raft(s) => s.rebalance().await,
            #[cfg(feature = "etcd")]
            Store::Etcd(_) => Ok(()),
        }
    }

    /// The Raft RPC routes for this node (none on etcd).
    pub fn rpc_router(&self) -> axum::Router {
        match self {
            Store::Raft(s) => s.rpc_router(),
            #[cfg(feature = "etcd")]
            Store::Etcd(_) => axum::Router::new().route(
                "/raft/{*rpc}",
                axum::routing::any(|| async {
                    (
                        axum::http::StatusCode::NOT_FOUND,
                        "this cluster keeps its state in etcd: no Raft here",
                    )
                }),
            ),
        }
    }

    pub async fn shutdown(&self) {
        match self {
            Store::Raft(s) => s.shutdown().await,
            #[cfg(feature = "etcd")]
            Store::Etcd(s) => s.shutdown().await,
        }
    }
}

#[cfg(test)]
mod tests;

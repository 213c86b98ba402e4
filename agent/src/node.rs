//! The node core behind the API: typed actions on the cluster, with leader forwarding.
//!
//! ```text
//!  HTTP handler --typed request--> Node::{propose, state, join, ...}
//!                                     |  this node leads?   yes: Store::write / Store::read
//!                                     |                     no:  forward to the leader's API (mTLS, node cert)
//! ```
//! Writes carry an `op_id`; a forwarded or retried write is applied at most once (see [`crate::state`]).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use api_types::retry::retry_until;
use serde::Serialize;
use serde::de::DeserializeOwned;
use smr_core::backend::NetworkBackend;

use crate::pki::{ClusterCa, JoinToken};
use crate::state::{ClusterState, Command, CommandResult, NodeId, NodeRecord, Op};
use crate::store::{RaftPeer, ServerState, Store, StoreError, WriteError};
use api_types::types::{
    ErrorBody, JoinRequest, JoinResponse, ReadIndexResponse, RotateKeyResponse, SignRequest,
    SignResponse,
};
use tokio::sync::watch;

pub mod availability;
mod backup;
mod ca_abort;
pub mod certs;
pub mod cluster_key;
mod error;
pub mod features;
mod forward;
pub mod heartbeat;
mod members;
mod objects;
mod overlay_slot;
mod replica;
pub mod reports;
mod sync;
mod users;
pub use error::NodeError;
pub use overlay_slot::{OverlaySlot, RotateError, RotateOutcome};
pub use replica::ReplicaHost;
pub use sync::WebhookOutcome;

/// How long a request waits for a leader before answering `unavailable` (or, for a write that
/// may have been applied, `outcome_unknown`).
pub const LEADER_WAIT: Duration = Duration::from_secs(10);

/// Longest wait for one forwarded request when the leader neither answers nor changes. A leader
/// that dies or freezes is given up sooner: as soon as this node learns of its successor.
const FORWARD_ATTEMPT: Duration = Duration::from_secs(4);

/// The pauses between attempts to reach a leader: doubling from the first to the last.
const LEADER_RETRY_FIRST: Duration = Duration::from_millis(20);
const LEADER_RETRY_MAX: Duration = Duration::from_millis(500);

/// How often the known leader is looked at while a forwarded request waits.
const LEADER_POLL: Duration = Duration::from_millis(20);

#[doc(hidden)] // transitional (issue 13): the clock helper moved to api-types.
pub use api_types::now_ms;

#[doc(hidden)] // transitional (issue 13): the op id now lives with the state machine.
pub use crate::state::new_op_id;

/// Read consistency requested by a client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Consistency {
    /// Reflects every write acknowledged before the read started.
    #[default]
    Linearizable,
    /// This node's applied state, possibly behind.
    Stale,
}

pub struct Node {
    pub id: NodeId,
    pub name: String,
    /// Reached only through the methods below: callers see typed actions and [`NodeError`].
    store: Store,
    /// Present on the node that holds the cluster CA key (the first CA's, in `pki/ca.key`).
    pub ca: Option<Arc<ClusterCa>>,
    /// mTLS client presenting this node's certificate, for node-to-node API calls (made again
    /// after the certificate is replaced: [`crate::pki::PeerClient`]).
    pub peers: crate::pki::PeerClient,
    /// The Docker engine this node runs replicas on.
    pub docker_host: Option<String>,
    /// The one connection to it, made on first use ([`Node::docker`]): the reconciler, logs,
    /// exec and attach share it.
    docker: tokio::sync::OnceCell<crate::runtime::DockerRuntime>,
    /// The overlay the network loop runs (peer statistics, WireGuard key rotation).
    pub overlay: Arc<OverlaySlot>,
    /// This node's WireGuard private key file.
    pub wg_key_path: std::path::PathBuf,
    /// Who signs here and the certificate this node presents ([`certs`]).
    certs: certs::Certs,
    /// Heartbeats received while this node leads, and its node timeout ([`heartbeat`]).
    heartbeats: heartbeat::Board,
    /// Replica reports waiting to go together in one log entry ([`reports`]).
    reports: reports::Batcher,
    /// Which kinds of log entries every member reads (rolling upgrades).
    features: features::Probes,
    /// Writes waiting to be forwarded to the leader together ([`forward`]).
    forwarder: forward::Forwarder,
}

impl Node {
    pub fn new(
        id: NodeId,
        name: String,
        store: Store,
        ca: Option<ClusterCa>,
        peers: crate::pki::PeerClient,
        docker_host: Option<String>,
        wg_key_path: std::path::PathBuf,
    ) -> Node {
        Node {
            id,
            name,
            store,
            ca: ca.map(Arc::new),
            peers,
            docker_host,
            docker: tokio::sync::OnceCell::new(),
            overlay: Default::default(),
            wg_key_path,
            certs: Default::default(),
            heartbeats: Default::default(),
            reports: Default::default(),
            features: Default::default(),
            forwarder: Default::default(),
        }
    }

    /// Changes whenever this node applies a command (the value is the applied index).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.store.subscribe()
    }

    /// Seals the secret values `op` carries with the cluster key ([`crate::secrets`]); nothing
    /// in a cluster without one, nor while some node may not hold it yet (a cluster created
    /// before the CA key was sealed, migrating: [`crate::migration`]).
    pub async fn seal_secrets(&self, op: &mut Op) {
        if !matches!(
            op,
            Op::Apply { .. } | Op::SealSecrets { .. } | Op::GitopsSync { .. }
        ) {
            return;
        }
        // One read for both: whether every node holds the key, and what is stored in clear.
        let state = self.store.read(false).await.ok();
        if let Some(key) = self.sealing_key_for(state.as_deref()) {
            crate::secrets::seal_op(key, op);
            if let Some(state) = &state {
                crate::secrets::keep_stored_in_clear(key, state, op);
            }
        }
    }

    /// The key secret values are sealed with now: this node's cluster key, once every node
    /// holds it (as `state`, or this node's applied state, says). A state that cannot be read
    /// does not stop the seal.
    pub async fn sealing_key(
        &self,
        state: Option<&ClusterState>,
    ) -> Option<&crate::pki::ClusterKey> {
        match state {
            Some(state) => self.sealing_key_for(Some(state)),
            None => {
                let read = self.store.read(false).await.ok();
                self.sealing_key_for(read.as_deref())
            }
        }
    }

    /// [`Node::sealing_key`] given the state read (`None`: it could not be read).
    fn sealing_key_for(&self, state: Option<&ClusterState>) -> Option<&crate::pki::ClusterKey> {
        let key = self.cluster_key()?;
        if crate::secrets::test_plain() {
            return None;
        }
        state
            .is_none_or(|s| s.cluster_key_everywhere())
            .then_some(key)
    }

    /// `state` with its secrets opened, for readers in this process only (never stored).
    pub fn open_secrets(&self, state: &ClusterState) -> ClusterState {
        self.open_secrets_cached(state, &mut Default::default())
    }

    /// [`Self::open_secrets`] for a reader that opens the state pass after pass: the values
    /// `cache` holds from the last pass are not opened again.
    pub fn open_secrets_cached(
        &self,
        state: &ClusterState,
        cache: &mut crate::secrets::SecretCache,
    ) -> ClusterState {
        match self.cluster_key() {
            Some(key) => cache.opened(key, state),
            None => state.clone(),
        }
    }

    /// Whether this node leads the cluster now.
    pub fn is_leader(&self) -> bool {
        self.store.server_state() == ServerState::Leader
    }

    /// The store's role, term, indexes and members, as this node sees them.
    pub fn store_status(&self) -> crate::store::StoreStatus {
        self.store.status()
    }

    /// The index a quorum holds (the leader's commit index), where the store knows it.
    pub fn commit_index(&self) -> Option<u64> {
        self.store.commit_index()
    }

    /// Whether the store is this cluster's own Raft (not etcd).
    pub fn is_raft(&self) -> bool {
        self.store.is_raft()
    }

    /// First node of a new cluster: makes `me` the store's only member.
    pub async fn bootstrap(&self, me: RaftPeer) -> Result<(), StoreError> {
        self.store.bootstrap(me).await
    }

    /// Writes a command forwarded by another node here, and only here: a node that lost
    /// leadership refuses it rather than relaying it again.
    pub async fn write_here(&self, mut command: Command) -> Result<CommandResult, NodeError> {
        self.seal_secrets(&mut command.op).await;
        let op_id = command.op_id.clone();
        match self.store.write(command).await {
            Ok(result) => Ok(result),
            Err(WriteError::Fatal(why)) => Err(NodeError::Internal(why)),
            Err(WriteError::Unknown(why)) => Err(NodeError::OutcomeUnknown { op_id, why }),
            Err(WriteError::InsufficientStorage(why)) => Err(NodeError::InsufficientStorage(why)),
            Err(e) => Err(NodeError::Unavailable(e.to_string())),
        }
    }

    /// Proposes `op` through Raft, forwarding to the leader when needed.
    pub async fn propose(&self, op: Op, op_id: Option<String>) -> Result<CommandResult, NodeError> {
        let command = Command {
            op_id: op_id.unwrap_or_else(new_op_id),
            at_ms: now_ms(),
            op,
        };
        self.propose_command(command).await
    }

    /// Proposes `ops` together: when this node leads they go into the store at once (on the
    /// Raft store in one entry once every member reads batched entries, so a reader sees all of
    /// them applied or none); any not answered by that attempt (this node does not lead, no
    /// quorum in time) then goes the way of [`Node::propose_command`], alone, under the same op
    /// id, so it is applied at most once. One result per op, in order.
    pub async fn propose_all(&self, ops: Vec<Op>) -> Vec<Result<CommandResult, NodeError>> {
        let mut commands = Vec::with_capacity(ops.len());
        for mut op in ops {
            self.seal_secrets(&mut op).await;
            commands.push(Command {
                op_id: new_op_id(),
                at_ms: now_ms(),
                op,
            });
        }
        let together = self.store.write_all(commands.clone()).await;
        let answers = commands
            .into_iter()
            .zip(together)
            .map(|(command, first)| async move {
                match first {
                    Ok(result) => Ok(result),
                    Err(WriteError::Fatal(why)) => Err(NodeError::Internal(why)),
                    Err(_) => self.propose_command(command).await,
                }
            });
        futures::future::join_all(answers).await
    }

    /// Writes `command` here when this node leads, else forwards it to the leader, following
    /// leadership until [`LEADER_WAIT`] runs out. Every attempt carries the same `op_id`, so the
    /// command is applied at most once however many attempts reach a leader.
    ///
    /// The answer is the command's result, or `Unavailable` when no attempt can have applied it
    /// (none was proposed), or `OutcomeUnknown` when one may have (sent to a leader that did not
    /// answer, proposed but not committed in time).
    ///
    /// Secret values are sealed with the cluster key here, before anything leaves this node.
    pub async fn propose_command(&self, mut command: Command) -> Result<CommandResult, NodeError> {
        self.seal_secrets(&mut command.op).await;
        let deadline = Instant::now() + LEADER_WAIT;
        let mut retry = retry_until(deadline, LEADER_RETRY_FIRST, LEADER_RETRY_MAX);
        // Why an earlier attempt's fate is unknown: then so is the whole write's, unless a later
        // attempt answers (the same op_id is applied once and answers with the first result).
        let mut unknown: Option<String> = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let written = tokio::time::timeout(left, self.store.write(command.clone()))
                .await
                .unwrap_or_else(|_| {
                    Err(WriteError::Unknown(
                        "the write was not committed in time".into(),
                    ))
                });
            let mut leader_seen = None;
            let failure = match written {
                Ok(result) => return Ok(result),
                Err(WriteError::ForwardToLeader {
                    leader: Some(leader),
                    leader_id,
                }) => {
                    leader_seen = leader_id;
                    match self
                        .forward_write(leader_id, &leader, command.clone(), deadline)
                        .await
                    {
                        Forwarded::Done(result) => return Ok(result),
                        Forwarded::NotApplied(e) => e,
                        Forwarded::Unknown(why) => {
                            unknown = Some(why.clone());
                            NodeError::Unavailable(why)
                        }
                        Forwarded::Final(e) => return Err(e),
                    }
                }
                Err(WriteError::ForwardToLeader { leader: None, .. }) => {
                    NodeError::Unavailable("no leader is elected".into())
                }
                Err(WriteError::Unavailable(why)) => NodeError::Unavailable(why),
                Err(WriteError::Unknown(why)) => {
                    unknown = Some(why.clone());
                    NodeError::Unavailable(why)
                }
                Err(WriteError::InsufficientStorage(why)) => {
                    return Err(NodeError::InsufficientStorage(why));
                }
                Err(WriteError::Fatal(why)) => return Err(NodeError::Internal(why)),
            };
            let Some(pause) = retry.next_pause() else {
                return Err(match unknown {
                    Some(why) => NodeError::OutcomeUnknown {
                        op_id: command.op_id.clone(),
                        why,
                    },
                    None => failure,
                });
            };
            // A new leader is worth trying at once.
            self.leader_moves_from(leader_seen, pause).await;
        }
    }

    /// The cluster state for a read at the requested consistency.
    ///
    /// A linearizable read on a follower asks the leader for its commit point (read index), waits
    /// until this node has applied up to it, then reads locally.
    pub async fn state(&self, consistency: Consistency) -> Result<Arc<ClusterState>, NodeError> {
        if consistency == Consistency::Stale {
            return self.store.read(false).await.map_err(read_error);
        }
        let deadline = Instant::now() + LEADER_WAIT;
        let mut retry = retry_until(deadline, LEADER_RETRY_FIRST, LEADER_RETRY_MAX);
        loop {
            let mut leader_seen = None;
            let outcome = match self.store.read_index().await {
                Ok(index) => return self.read_after(index, deadline).await,
                Err(WriteError::ForwardToLeader {
                    leader: Some(leader),
                    leader_id,
                }) => {
                    leader_seen = leader_id;
                    match self
                        .forward::<(), ReadIndexResponse>(
                            leader_id,
                            &leader,
                            "internal/read-index",
                            None,
                            deadline,
                        )
                        .await
                    {
                        Forwarded::Done(r) => return self.read_after(r.index, deadline).await,
                        Forwarded::NotApplied(e) => e,
                        Forwarded::Unknown(why) => NodeError::Unavailable(why),
                        Forwarded::Final(e) => return Err(e),
                    }
                }
                Err(e) => read_error(e),
            };
            if matches!(outcome, NodeError::Internal(_)) {
                return Err(outcome);
            }
            let Some(pause) = retry.next_pause() else {
                return Err(outcome);
            };
            self.leader_moves_from(leader_seen, pause).await;
        }
    }

    /// Sends a request to the leader `leader` as this node, for one attempt: until it answers,
    /// [`FORWARD_ATTEMPT`] or `deadline` passes, or this node learns of another leader (a
    /// frozen or cut-off leader is given up as soon as a new one is elected).
    async fn forward<B: Serialize, R: DeserializeOwned>(
        &self,
        leader_id: Option<NodeId>,
        leader: &RaftPeer,
        path: &str,
        body: Option<&B>,
        deadline: Instant,
    ) -> Forwarded<R> {
        let limit = deadline
            .saturating_duration_since(Instant::now())
            .min(FORWARD_ATTEMPT);
        let moved = async {
            loop {
                if self.store.status().leader != leader_id {
                    return;
                }
                tokio::time::sleep(LEADER_POLL).await;
            }
        };
        let answer = tokio::select! {
            answer = self.call_with(&leader.api_addr, path, body, Some(limit)) => answer,
            () = moved => {
                return Forwarded::Unknown(format!(
                    "the leader changed while {} handled the request",
                    leader.name
                ));
            }
        };
        match answer {
            Ok(result) => Forwarded::Done(result),
            Err(CallError::NotSent(why)) => Forwarded::NotApplied(NodeError::Unavailable(why)),
            Err(CallError::NoAnswer(why)) => Forwarded::Unknown(why),
            // An answer is relayed (with the other node's status) or a 503 of our own.
            Err(CallError::Answered(e)) => match e {
                NodeError::Unavailable(_) | NodeError::Relayed { status: 503, .. } => {
                    Forwarded::NotApplied(e)
                }
                NodeError::Relayed { status: 504, .. } => Forwarded::Unknown(e.to_string()),
                _ => Forwarded::Final(e),
            },
        }
    }

    /// Returns when this node knows a leader other than `from`, or after `limit`.
    async fn leader_moves_from(&self, from: Option<NodeId>, limit: Duration) {
        let until = Instant::now() + limit;
        while Instant::now() < until {
            let leader = self.store.status().leader;
            if leader.is_some() && leader != from {
                return;
            }
            tokio::time::sleep(LEADER_POLL.min(until.saturating_duration_since(Instant::now())))
                .await;
        }
    }

    async fn read_after(
        &self,
        index: u64,
        deadline: Instant,
    ) -> Result<Arc<ClusterState>, NodeError> {
        let mut applied = self.store.subscribe();
        loop {
            // The subscription carries the applied index; Raft's metrics may report it later.
            if *applied.borrow_and_update() >= index {
                return self.store.read(false).await.map_err(read_error);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if tokio::time::timeout(left, applied.changed()).await.is_err() {
                return Err(NodeError::Unavailable(format!(
                    "this node did not catch up to index {index}"
                )));
            }
        }
    }

    /// Removes node `id` from the cluster, unless that would leave no voter or no quorum (409,
    /// with why). A retry with the same `op_id` answers as the first attempt did.
    pub async fn remove_node(&self, id: NodeId, op_id: Option<String>) -> Result<(), NodeError> {
        let op_id = op_id.unwrap_or_else(new_op_id);
        let state = self.state(Consistency::Linearizable).await?;
        let refused = |result: &CommandResult| match result {
            CommandResult::Rejected { reason } => Some(reason.clone()),
            _ => None,
        };
        if let Some(previous) = state.recent_result(&op_id) {
            return refused(previous).map_or(Ok(()), |why| Err(NodeError::Conflict(why)));
        }
        if !state.nodes.contains_key(&id) {
            return Err(NodeError::NotFound(format!("node {id}")));
        }
        if state.nodes.len() == 1 {
            return Err(NodeError::Conflict(crate::state::last_node_refusal(id)));
        }
        if self.store.is_raft() {
            self.check_quorum_without(id, &state).await?;
        }
        let command = Command {
            op_id,
            at_ms: now_ms(),
            op: Op::RemoveNode { id },
        };
        match refused(&self.propose_command(command).await?) {
            None => Ok(()),
            Some(why) => Err(NodeError::Conflict(why)),
        }
    }

    /// Refuses the removal of `id` when the membership change it leads to could not commit: a
    /// majority of the current voters and of the voters after it must answer (Raft's joint
    /// consensus), or the cluster would be stuck without a quorum.
    async fn check_quorum_without(
        &self,
        id: NodeId,
        state: &ClusterState,
    ) -> Result<(), NodeError> {
        let status = self.store.status();
        let members: BTreeSet<NodeId> = state.nodes.keys().copied().filter(|n| *n != id).collect();
        let kept: BTreeSet<NodeId> = status.voters.iter().copied().filter(|v| *v != id).collect();
        let after = crate::store::desired_voters(&members, &kept);
        let probes = status.voters.union(&after).copied().map(|n| async move {
            if n == self.id {
                return Some(n);
            }
            let addr = state.nodes.get(&n)?.api_addr();
            let probe = tokio::time::timeout(
                Duration::from_secs(2),
                self.call::<(), api_types::types::HealthResponse>(&addr, "health", None),
            )
            .await;
            matches!(probe, Ok(Ok(_))).then_some(n)
        });
        let answering: BTreeSet<NodeId> = futures::future::join_all(probes)
            .await
            .into_iter()
            .flatten()
            .collect();
        match quorum_refusal(id, &status.voters, &after, &answering) {
            None => Ok(()),
            Some(why) => Err(NodeError::Conflict(why)),
        }
    }

    /// The leader's read index, for a follower's linearizable read.
    pub async fn read_index(&self) -> Result<u64, NodeError> {
        self.store.read_index().await.map_err(read_error)
    }

    /// Handles a join request. On a follower it is relayed to the leader unchanged.
    pub async fn join(&self, req: JoinRequest) -> Result<JoinResponse, NodeError> {
        if self.store.server_state() != ServerState::Leader {
            let leader = self.leader_peer().await?;
            return self.call(&leader.api_addr, "join", Some(&req)).await;
        }
        let token: JoinToken = req
            .token
            .parse()
            .map_err(|e| NodeError::Forbidden(format!("join token refused: {e}")))?;
        let state = self.state(Consistency::Linearizable).await?;
        let ca = state
            .ca
            .as_ref()
            .ok_or_else(|| NodeError::Internal("the cluster has no CA recorded".into()))?;
        if let Some(next) = &ca.next {
            return Err(NodeError::Conflict(format!(
                "a CA rotation (to {}) is under way: join once it has finished (`smrmgr ca \
                 status`), with a token minted then",
                next.fingerprint
            )));
        }
        if ca.previous.as_ref() == Some(&token.ca_fingerprint) {
            return Err(NodeError::Forbidden(
                "join token refused: it was minted before the cluster CA was rotated; mint a new \
                 one (`smrmgr token`)"
                    .into(),
            ));
        }
        if token.ca_fingerprint != ca.fingerprint {
            return Err(NodeError::Forbidden(
                "join token refused: it was issued by another cluster's CA".into(),
            ));
        }
        if !state.join_token_valid(&token.secret_sha256(), now_ms()) {
            return Err(NodeError::Forbidden(
                "join token refused: unknown or expired secret".into(),
            ));
        }
        if !crate::definitions::is_dns_label(&req.name) {
            return Err(NodeError::BadRequest(format!(
                "node name {:?} is not a DNS label (a-z, 0-9 and '-', at most 63 characters)",
                req.name
            )));
        }
        // The same request sent again (after an unknown outcome) is the same registration.
        let op_id = format!(
            "join-{}",
            &hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
                req.node_csr.as_bytes()
            ))[..32]
        );
        let registered = state.recent_result(&op_id).is_some();
        if let Some(existing) = state.nodes.values().find(|n| n.name == req.name)
            && !registered
        {
            return Err(NodeError::Conflict(format!(
                "a node named {} is already a member (id {}); remove it first or pick another name",
                req.name, existing.id
            )));
        }
        let backend = match &state.network {
            Some(n) => n
                .backend
                .parse::<NetworkBackend>()
                .map_err(|e| NodeError::Internal(format!("the cluster's network settings: {e}")))?,
            None => NetworkBackend::None,
        };
        if let Some(asked) = &req.backend
            && asked != backend.as_str()
        {
            return Err(NodeError::Conflict(format!(
                "the cluster runs the {backend} backend (fixed by the node that created it); \
                 join without --backend {asked}"
            )));
        }
        for (what, ip) in [("ip", Some(&req.ip)), ("public_ip", req.public_ip.as_ref())] {
            if let Some(ip) = ip
                && ip.parse::<std::net::IpAddr>().is_err()
            {
                return Err(NodeError::BadRequest(format!(
                    "{what} {ip:?} is not an IP address"
                )));
            }
        }
        if let Some(key) = &req.wg_public_key
            && key.parse::<overlay::WgPublicKey>().is_err()
        {
            return Err(NodeError::BadRequest(format!(
                "wg_public_key {key:?} is not a WireGuard public key (base64 of 32 bytes)"
            )));
        }
        if backend == NetworkBackend::WireGuard && req.wg_public_key.is_none() {
            return Err(NodeError::BadRequest(
                "the cluster runs the wireguard backend: the joining node must send its \
                 WireGuard public key (upgrade it)"
                    .into(),
            ));
        }
        let mut sans = vec![req.ip.clone(), req.host.clone(), req.domain.clone()];
        sans.extend(req.public_ip.clone());
        sans.sort();
        sans.dedup();
        let node_cert = self
            .sign(
                SignRequest {
                    csr: req.node_csr.clone(),
                    admin: false,
                    name: req.name.clone(),
                    sans,
                },
                ca.holder,
            )
            .await?;
        let admin_cert = self
            .sign(
                SignRequest {
                    csr: req.admin_csr.clone(),
                    admin: true,
                    name: format!("admin@{}", req.name),
                    sans: vec![],
                },
                ca.holder,
            )
            .await?;
        let public_ip = req.public_ip.clone().filter(|p| *p != req.ip);
        let record = NodeRecord {
            id: 0,
            name: req.name.clone(),
            host: req.host,
            domain: req.domain,
            ip: req.ip,
            public_ip,
            wg_port: req.wg_port,
            wg_public_key: req.wg_public_key,
            api_port: req.api_port,
            raft_port: req.raft_port,
            labels: req.labels,
            joined_ms: 0,
            schedulable: req.schedulable,
            lease: None,
            vtep_mac: req.vtep_mac,
        };
        match self
            .propose(Op::RegisterNode { node: record }, Some(op_id))
            .await?
        {
            CommandResult::NodeRegistered { id } => {
                tracing::info!(node = %req.name, id, "node joined");
                Ok(JoinResponse {
                    id,
                    node_cert,
                    admin_cert,
                    ca_pem: ca.cert_pem.clone(),
                    cluster_key: self.cluster_key_text(),
                })
            }
            CommandResult::Rejected { reason } => Err(NodeError::Conflict(reason)),
            other => Err(NodeError::Internal(format!("unexpected result {other:?}"))),
        }
    }

    /// Signs a CSR here if this node can (it holds the CA key, or the cluster key that opens
    /// the copy sealed in the state), otherwise on the node that holds the CA key.
    pub async fn sign(&self, req: SignRequest, holder: NodeId) -> Result<String, NodeError> {
        if let Some(cert) = self.sign_locally(&req).await? {
            return Ok(cert);
        }
        let state = self.store.read(false).await.map_err(read_error)?;
        let node = state.nodes.get(&holder).ok_or_else(|| {
            NodeError::Unavailable(format!("the CA holder (node {holder}) is not a member"))
        })?;
        let resp: SignResponse = self
            .call(&node.api_addr(), "internal/sign", Some(&req))
            .await?;
        Ok(resp.cert)
    }

    /// Rotates node `id`'s WireGuard key: here when `id` is this node, else relayed once to it
    /// (a request that was `forwarded` already is refused, never sent on again).
    pub async fn rotate_key(
        &self,
        id: NodeId,
        forwarded: bool,
    ) -> Result<RotateKeyResponse, NodeError> {
        if id != self.id {
            if forwarded {
                return Err(NodeError::Unavailable(format!("this is not node {id}")));
            }
            let state = self.state(Consistency::Stale).await?;
            let record = state
                .nodes
                .get(&id)
                .ok_or_else(|| NodeError::NotFound(format!("node {id}")))?;
            return self
                .call::<(), RotateKeyResponse>(
                    &record.api_addr(),
                    &format!("nodes/{id}/rotate-key"),
                    Some(&()),
                )
                .await;
        }
        let public_key = self.rotate_wireguard_key().await?;
        Ok(RotateKeyResponse {
            id,
            public_key: public_key.to_string(),
        })
    }

    /// Replaces this node's WireGuard key (see [`OverlaySlot::rotate`]).
    pub async fn rotate_wireguard_key(&self) -> Result<overlay::WgPublicKey, NodeError> {
        let id = self.id;
        let publish = |public: overlay::WgPublicKey, port: u16| async move {
            let op = Op::SetNodeWireguard {
                id,
                public_key: public.to_string(),
                port,
            };
            match self.propose(op, None).await? {
                CommandResult::Rejected { reason } => Err(NodeError::Conflict(reason)),
                _ => Ok(()),
            }
        };
        self.overlay
            .rotate(&self.wg_key_path, publish)
            .await
            .map_err(|e| match e {
                RotateOutcome::Publish(e) => e,
                RotateOutcome::Rotate(e @ RotateError::NotWireguard(_)) => {
                    NodeError::Conflict(e.to_string())
                }
                RotateOutcome::Rotate(e @ RotateError::NotReady) => {
                    NodeError::Unavailable(e.to_string())
                }
                RotateOutcome::Rotate(e) => NodeError::Internal(format!("rotate-key: {e}")),
            })
    }

    /// Mints a join token valid for `ttl`.
    pub async fn new_join_token(&self, ttl: Duration) -> Result<(JoinToken, u64), NodeError> {
        let state = self.store.read(false).await.map_err(read_error)?;
        let ca = state
            .ca
            .as_ref()
            .ok_or_else(|| NodeError::Internal("the cluster has no CA recorded".into()))?;
        if let Some(next) = &ca.next {
            return Err(NodeError::Conflict(format!(
                "a CA rotation (to {}) is under way: mint join tokens once it has finished \
                 (`smrmgr ca status`)",
                next.fingerprint
            )));
        }
        let token =
            JoinToken::generate(&ca.fingerprint).map_err(|e| NodeError::Internal(e.to_string()))?;
        let expires_ms = now_ms() + ttl.as_millis() as u64;
        let record = crate::state::JoinTokenRecord {
            secret_sha256: token.secret_sha256(),
            expires_ms,
        };
        self.propose(Op::AddJoinToken { token: record }, None)
            .await?;
        Ok((token, expires_ms))
    }

    /// The leader's address, waiting for an election if there is none.
    pub async fn leader_peer(&self) -> Result<RaftPeer, NodeError> {
        let deadline = Instant::now() + LEADER_WAIT;
        let mut changes = self.store.subscribe();
        loop {
            let status = self.store.status();
            if let Some(peer) = status.leader.and_then(|id| status.members.get(&id)) {
                return Ok(peer.clone());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(NodeError::Unavailable("no leader is elected".into()));
            }
            let _ =
                tokio::time::timeout(left.min(Duration::from_millis(200)), changes.changed()).await;
        }
    }

    /// Calls another node's API as this node. Errors from the other side are relayed as they are.
    pub async fn call<B: Serialize, R: DeserializeOwned>(
        &self,
        api_addr: &str,
        path: &str,
        body: Option<&B>,
    ) -> Result<R, NodeError> {
        self.call_with(api_addr, path, body, None)
            .await
            .map_err(|e| match e {
                CallError::NotSent(why) | CallError::NoAnswer(why) => NodeError::Unavailable(why),
                CallError::Answered(e) => e,
            })
    }

    /// [`Node::call`] with a time limit, telling a request that never left from one that got no
    /// answer.
    async fn call_with<B: Serialize, R: DeserializeOwned>(
        &self,
        api_addr: &str,
        path: &str,
        body: Option<&B>,
        timeout: Option<Duration>,
    ) -> Result<R, CallError> {
        let url = format!("https://{api_addr}/api/v1/{path}");
        let peers = self.peers.client();
        let mut request = match body {
            Some(body) => peers.post(&url).json(body),
            None => peers.get(&url),
        };
        if let Some(timeout) = timeout {
            request = request.timeout(timeout);
        }
        let response = request
            .header("x-smr-forwarded", self.name.as_str())
            .send()
            .await
            .map_err(|e| {
                let why = format!(
                    "node at {api_addr} did not answer: {}",
                    crate::client::error_chain(&e)
                );
                // A failed connection (TCP or TLS) carried no request.
                if e.is_connect() {
                    CallError::NotSent(why)
                } else {
                    CallError::NoAnswer(why)
                }
            })?;
        let status = response.status();
        if status.is_success() {
            return response.json().await.map_err(|e| {
                CallError::NoAnswer(format!("unreadable answer from {api_addr}: {e}"))
            });
        }
        match response.json::<ErrorBody>().await {
            Ok(body) => Err(CallError::Answered(NodeError::Relayed {
                status: status.as_u16(),
                body,
            })),
            Err(_) if status.is_server_error() => Err(CallError::NoAnswer(format!(
                "node at {api_addr} answered {status}"
            ))),
            Err(_) => Err(CallError::Answered(NodeError::Unavailable(format!(
                "node at {api_addr} answered {status}"
            )))),
        }
    }
}

/// How a request to another node ended, when it did not succeed.
enum CallError {
    /// The connection failed: the other node never saw the request.
    NotSent(String),
    /// Sent, but no usable answer came back (timeout, connection lost, unreadable answer).
    NoAnswer(String),
    /// The other node answered with this error.
    Answered(NodeError),
}

/// One forwarded attempt's end.
enum Forwarded<T> {
    Done(T),
    /// Surely not applied: never sent, or refused by a node that is no longer the leader.
    NotApplied(NodeError),
    /// Sent, and whether it was applied is unknown.
    Unknown(String),
    /// An answer to pass on as it is (a refusal of the request itself).
    Final(NodeError),
}

/// Why removing node `id` would leave the cluster without a quorum, if it would: the membership
/// change commits only when a majority of the `voters` and of the voters `after` it answer.
pub fn quorum_refusal(
    id: NodeId,
    voters: &BTreeSet<NodeId>,
    after: &BTreeSet<NodeId>,
    answering: &BTreeSet<NodeId>,
) -> Option<String> {
    let majority = |set: &BTreeSet<NodeId>| set.intersection(answering).count() * 2 > set.len();
    if after.is_empty() {
        return Some(crate::state::last_node_refusal(id));
    }
    if majority(voters) && majority(after) {
        return None;
    }
    let list = |set: &BTreeSet<NodeId>| set.iter().map(|n| n.to_string()).collect::<Vec<_>>();
    Some(format!(
        "removing node {id} would lose quorum: the voters are {:?} and would be {:?}, but only \
         {:?} answer; bring the others back (or remove the unreachable ones) first",
        list(voters),
        list(after),
        list(answering)
    ))
}

fn read_error(e: WriteError) -> NodeError {
    match e {
        WriteError::ForwardToLeader { .. } => NodeError::Unavailable("no leader is elected".into()),
        WriteError::Unavailable(why) | WriteError::Unknown(why) => NodeError::Unavailable(why),
        WriteError::InsufficientStorage(why) => NodeError::InsufficientStorage(why),
        WriteError::Fatal(why) => NodeError::Internal(why),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[NodeId]) -> BTreeSet<NodeId> {
        ids.iter().copied().collect()
    }

    #[test]
    fn a_removal_needs_a_quorum_before_and_after() {
        // A dead node goes: the two others answer, the one voter left answers.
        assert_eq!(
            quorum_refusal(3, &set(&[1, 2, 3]), &set(&[1]), &set(&[1, 2])),
            None
        );
        // A live node goes while another is dead and would be the only voter left.
        let why = quorum_refusal(2, &set(&[1, 2, 3]), &set(&[1]), &set(&[2, 3])).unwrap();
        assert!(why.contains("would lose quorum"), "{why}");
        // Five voters, two dead: the removed node still counts for the current voters.
        assert_eq!(
            quorum_refusal(
                5,
                &set(&[1, 2, 3, 4, 5]),
                &set(&[1, 2, 3]),
                &set(&[1, 2, 5])
            ),
            None
        );
        let why =
            quorum_refusal(5, &set(&[1, 2, 3, 4, 5]), &set(&[1, 2, 3]), &set(&[1, 5])).unwrap();
        assert!(why.contains("would lose quorum"), "{why}");
        // No voter after it.
        let why = quorum_refusal(1, &set(&[1]), &set(&[]), &set(&[1])).unwrap();
        assert!(why.contains("last node"), "{why}");
    }
}

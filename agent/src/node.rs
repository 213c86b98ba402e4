//! The node core behind the API: typed actions on the cluster, with leader forwarding.
//!
//! ```text
//!  HTTP handler --typed request--> Node::{propose, state, join, ...}
//!                                     |  this node leads?   yes: Store::write / Store::read
//!                                     |                     no:  forward to the leader's API (mTLS, node cert)
//! ```
//! Writes carry an `op_id`; a forwarded or retried write is applied at most once (see [`crate::state`]).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::api::error::ApiError;
use crate::api::types::{
    ErrorBody, JoinRequest, JoinResponse, ProposeRequest, ReadIndexResponse, SignRequest,
    SignResponse,
};
use crate::pki::{ClusterCa, JoinToken, Role};
use crate::state::{ClusterState, Command, CommandResult, NodeId, NodeRecord, Op};
use crate::store::{RaftPeer, ServerState, Store, WriteError};

/// How long a request waits for a leader before answering `unavailable`.
pub const LEADER_WAIT: Duration = Duration::from_secs(10);

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A fresh random operation id.
pub fn new_op_id() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

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
    pub store: Store,
    /// Present on the node that holds the cluster CA key.
    pub ca: Option<ClusterCa>,
    /// mTLS client presenting this node's certificate, for node-to-node API calls.
    pub peers: reqwest::Client,
    /// The Docker engine this node runs replicas on (for logs and exec).
    pub docker_host: Option<String>,
    /// The overlay the network loop runs (peer statistics, WireGuard key rotation).
    pub overlay: Arc<crate::controller::network::OverlaySlot>,
    /// This node's WireGuard private key file.
    pub wg_key_path: std::path::PathBuf,
}

impl Node {
    /// Proposes `op` through Raft, forwarding to the leader when needed.
    pub async fn propose(&self, op: Op, op_id: Option<String>) -> Result<CommandResult, ApiError> {
        let command = Command {
            op_id: op_id.unwrap_or_else(new_op_id),
            at_ms: now_ms(),
            op,
        };
        self.propose_command(command).await
    }

    pub async fn propose_command(&self, command: Command) -> Result<CommandResult, ApiError> {
        let deadline = Instant::now() + LEADER_WAIT;
        let mut pause = Duration::from_millis(20);
        loop {
            let outcome = match self.store.write(command.clone()).await {
                Ok(result) => return Ok(result),
                Err(WriteError::ForwardToLeader {
                    leader: Some(leader),
                    ..
                }) => {
                    let body = ProposeRequest {
                        command: command.clone(),
                    };
                    match self
                        .call::<_, CommandResult>(&leader.api_addr, "internal/propose", Some(&body))
                        .await
                    {
                        Ok(result) => return Ok(result),
                        // The leader may have just changed: retry until the deadline.
                        Err(e @ (ApiError::Unavailable(_) | ApiError::Relayed { .. })) => e,
                        Err(e) => return Err(e),
                    }
                }
                Err(WriteError::ForwardToLeader { leader: None, .. }) => {
                    ApiError::Unavailable("no leader is elected".into())
                }
                Err(WriteError::Unavailable(why)) => ApiError::Unavailable(why),
                Err(WriteError::Fatal(why)) => return Err(ApiError::Internal(why)),
            };
            if Instant::now() + pause > deadline {
                return Err(outcome);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    }

    /// The cluster state for a read at the requested consistency.
    ///
    /// A linearizable read on a follower asks the leader for its commit point (read index), waits
    /// until this node has applied up to it, then reads locally.
    pub async fn state(&self, consistency: Consistency) -> Result<Arc<ClusterState>, ApiError> {
        if consistency == Consistency::Stale {
            return self.store.read(false).await.map_err(read_error);
        }
        let deadline = Instant::now() + LEADER_WAIT;
        let mut pause = Duration::from_millis(20);
        loop {
            let outcome = match self.store.read_index().await {
                Ok(index) => return self.read_after(index, deadline).await,
                Err(WriteError::ForwardToLeader {
                    leader: Some(leader),
                    ..
                }) => {
                    match self
                        .call::<(), ReadIndexResponse>(
                            &leader.api_addr,
                            "internal/read-index",
                            None,
                        )
                        .await
                    {
                        Ok(r) => return self.read_after(r.index, deadline).await,
                        Err(e @ (ApiError::Unavailable(_) | ApiError::Relayed { .. })) => e,
                        Err(e) => return Err(e),
                    }
                }
                Err(e) => read_error(e),
            };
            if matches!(outcome, ApiError::Internal(_)) || Instant::now() + pause > deadline {
                return Err(outcome);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    }

    async fn read_after(
        &self,
        index: u64,
        deadline: Instant,
    ) -> Result<Arc<ClusterState>, ApiError> {
        let mut applied = self.store.subscribe();
        loop {
            // The subscription carries the applied index; Raft's metrics may report it later.
            if *applied.borrow_and_update() >= index {
                return self.store.read(false).await.map_err(read_error);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if tokio::time::timeout(left, applied.changed()).await.is_err() {
                return Err(ApiError::Unavailable(format!(
                    "this node did not catch up to index {index}"
                )));
            }
        }
    }

    /// The leader's read index, for a follower's linearizable read.
    pub async fn read_index(&self) -> Result<u64, ApiError> {
        self.store.read_index().await.map_err(read_error)
    }

    /// Handles a join request. On a follower it is relayed to the leader unchanged.
    pub async fn join(&self, req: JoinRequest) -> Result<JoinResponse, ApiError> {
        if self.store.status().state != ServerState::Leader {
            let leader = self.leader_peer().await?;
            return self.call(&leader.api_addr, "join", Some(&req)).await;
        }
        let token: JoinToken = req
            .token
            .parse()
            .map_err(|e| ApiError::Forbidden(format!("join token refused: {e}")))?;
        let state = self.state(Consistency::Linearizable).await?;
        let ca = state
            .ca
            .as_ref()
            .ok_or_else(|| ApiError::Internal("the cluster has no CA recorded".into()))?;
        if token.ca_fingerprint != ca.fingerprint {
            return Err(ApiError::Forbidden(
                "join token refused: it was issued by another cluster's CA".into(),
            ));
        }
        if !state.join_token_valid(&token.secret_sha256(), now_ms()) {
            return Err(ApiError::Forbidden(
                "join token refused: unknown or expired secret".into(),
            ));
        }
        if !crate::definitions::is_dns_label(&req.name) {
            return Err(ApiError::BadRequest(format!(
                "node name {:?} is not a DNS label (a-z, 0-9 and '-', at most 63 characters)",
                req.name
            )));
        }
        if let Some(existing) = state.nodes.values().find(|n| n.name == req.name) {
            return Err(ApiError::Conflict(format!(
                "a node named {} is already a member (id {}); remove it first or pick another name",
                req.name, existing.id
            )));
        }
        let backend = state
            .network
            .as_ref()
            .map(|n| n.backend.as_str())
            .unwrap_or("none");
        if let Some(asked) = &req.backend
            && asked != backend
        {
            return Err(ApiError::Conflict(format!(
                "the cluster runs the {backend} backend (fixed by the node that created it); \
                 join without --backend {asked}"
            )));
        }
        for (what, ip) in [("ip", Some(&req.ip)), ("public_ip", req.public_ip.as_ref())] {
            if let Some(ip) = ip
                && ip.parse::<std::net::IpAddr>().is_err()
            {
                return Err(ApiError::BadRequest(format!(
                    "{what} {ip:?} is not an IP address"
                )));
            }
        }
        if let Some(key) = &req.wg_public_key
            && key.parse::<overlay::WgPublicKey>().is_err()
        {
            return Err(ApiError::BadRequest(format!(
                "wg_public_key {key:?} is not a WireGuard public key (base64 of 32 bytes)"
            )));
        }
        if backend == "wireguard" && req.wg_public_key.is_none() {
            return Err(ApiError::BadRequest(
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
            .propose(Op::RegisterNode { node: record }, None)
            .await?
        {
            CommandResult::NodeRegistered { id } => {
                tracing::info!(node = %req.name, id, "node joined");
                Ok(JoinResponse {
                    id,
                    node_cert,
                    admin_cert,
                    ca_pem: ca.cert_pem.clone(),
                })
            }
            CommandResult::Rejected { reason } => Err(ApiError::Conflict(reason)),
            other => Err(ApiError::Internal(format!("unexpected result {other:?}"))),
        }
    }

    /// Signs a CSR here if this node holds the CA key, otherwise on the node that does.
    pub async fn sign(&self, req: SignRequest, holder: NodeId) -> Result<String, ApiError> {
        if let Some(ca) = &self.ca {
            let role = if req.admin { Role::Admin } else { Role::Node };
            return ca
                .sign_csr(&req.csr, role, &req.name, &req.sans)
                .map_err(|e| ApiError::BadRequest(format!("certificate request refused: {e}")));
        }
        let state = self.store.read(false).await.map_err(read_error)?;
        let node = state.nodes.get(&holder).ok_or_else(|| {
            ApiError::Unavailable(format!("the CA holder (node {holder}) is not a member"))
        })?;
        let resp: SignResponse = self
            .call(&node.api_addr(), "internal/sign", Some(&req))
            .await?;
        Ok(resp.cert)
    }

    /// Replaces this node's WireGuard key (see [`crate::controller::network::OverlaySlot::rotate`]).
    pub async fn rotate_wireguard_key(&self) -> Result<overlay::WgPublicKey, ApiError> {
        use crate::controller::network::{RotateError, RotateOutcome};
        let id = self.id;
        let publish = |public: overlay::WgPublicKey, port: u16| async move {
            let op = Op::SetNodeWireguard {
                id,
                public_key: public.to_string(),
                port,
            };
            match self.propose(op, None).await? {
                CommandResult::Rejected { reason } => Err(ApiError::Conflict(reason)),
                _ => Ok(()),
            }
        };
        self.overlay
            .rotate(&self.wg_key_path, publish)
            .await
            .map_err(|e| match e {
                RotateOutcome::Publish(e) => e,
                RotateOutcome::Rotate(e @ RotateError::NotWireguard(_)) => {
                    ApiError::Conflict(e.to_string())
                }
                RotateOutcome::Rotate(e @ RotateError::NotReady) => {
                    ApiError::Unavailable(e.to_string())
                }
                RotateOutcome::Rotate(e) => ApiError::Internal(format!("rotate-key: {e}")),
            })
    }

    /// Mints a join token valid for `ttl`.
    pub async fn new_join_token(&self, ttl: Duration) -> Result<(JoinToken, u64), ApiError> {
        let state = self.store.read(false).await.map_err(read_error)?;
        let ca = state
            .ca
            .as_ref()
            .ok_or_else(|| ApiError::Internal("the cluster has no CA recorded".into()))?;
        let token =
            JoinToken::generate(&ca.fingerprint).map_err(|e| ApiError::Internal(e.to_string()))?;
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
    pub async fn leader_peer(&self) -> Result<RaftPeer, ApiError> {
        let deadline = Instant::now() + LEADER_WAIT;
        let mut changes = self.store.subscribe();
        loop {
            let status = self.store.status();
            if let Some(peer) = status.leader.and_then(|id| status.members.get(&id)) {
                return Ok(peer.clone());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ApiError::Unavailable("no leader is elected".into()));
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
    ) -> Result<R, ApiError> {
        let url = format!("https://{api_addr}/api/v1/{path}");
        let request = match body {
            Some(body) => self.peers.post(&url).json(body),
            None => self.peers.get(&url),
        };
        let response = request
            .header("x-smr-forwarded", self.name.as_str())
            .send()
            .await
            .map_err(|e| {
                ApiError::Unavailable(format!("node at {api_addr} did not answer: {e}"))
            })?;
        let status = response.status();
        if status.is_success() {
            return response
                .json()
                .await
                .map_err(|e| ApiError::Unavailable(format!("bad answer from {api_addr}: {e}")));
        }
        match response.json::<ErrorBody>().await {
            Ok(body) => Err(ApiError::Relayed { status, body }),
            Err(_) => Err(ApiError::Unavailable(format!(
                "node at {api_addr} answered {status}"
            ))),
        }
    }
}

fn read_error(e: WriteError) -> ApiError {
    match e {
        WriteError::ForwardToLeader { .. } => ApiError::Unavailable("no leader is elected".into()),
        WriteError::Unavailable(why) => ApiError::Unavailable(why),
        WriteError::Fatal(why) => ApiError::Internal(why),
    }
}

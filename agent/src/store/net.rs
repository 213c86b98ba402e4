//! Raft RPC over HTTP: the client side (openraft's network factory) and the server routes.
//!
//! Requests and responses are JSON. In production the daemon hands in a reqwest client with the
//! node's certificate (mTLS) and serves [`router`] behind TLS that requires node certificates.

use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::routing::post;
use axum::{Json, Router};
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Raft, RaftPeer, Transport, TypeConfig};
use crate::state::NodeId;

/// Largest Raft RPC body accepted (snapshot chunks are kept well below it).
const RPC_BODY_LIMIT: usize = 64 * 1024 * 1024;

/// Response header by which a node's Raft RPC server says it reads batched entries
/// ([`super::batch::Proposal::Batch`]); earlier versions do not send it.
pub const FEATURES_HEADER: &str = "x-smr-raft-features";
const FEATURES: &str = "batch";

/// What this node learned of its peers' Raft RPC servers: whether each reads batched entries
/// (from its last answer). A peer not heard from yet counts as not reading them.
#[derive(Default)]
pub struct Peers {
    batch: std::sync::Mutex<std::collections::BTreeMap<NodeId, bool>>,
}

impl Peers {
    pub(super) fn heard(&self, id: NodeId, batch: bool) {
        super::lock(&self.batch).insert(id, batch);
    }

    /// Whether every one of `ids` reads batched entries.
    pub fn all_batch(&self, ids: impl IntoIterator<Item = NodeId>) -> bool {
        let batch = super::lock(&self.batch);
        ids.into_iter()
            .all(|id| batch.get(&id).copied().unwrap_or(false))
    }
}

#[derive(Clone)]
pub struct Network {
    pub transport: Transport,
    pub peers: std::sync::Arc<Peers>,
}

pub struct Connection {
    transport: Transport,
    target: NodeId,
    base: String,
    peers: std::sync::Arc<Peers>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, node: &RaftPeer) -> Connection {
        Connection {
            transport: self.transport.clone(),
            target,
            base: format!("{}://{}/raft", self.transport.scheme, node.raft_addr),
            peers: self.peers.clone(),
        }
    }
}

impl Connection {
    async fn call<Req, Resp, E>(
        &self,
        path: &str,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, RPCError<NodeId, RaftPeer, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let response = self
            .transport
            .client
            .client()
            .post(format!("{}/{path}", self.base))
            .timeout(timeout)
            .json(request)
            .send()
            .await
            .map_err(|e| {
                if e.is_connect() {
                    RPCError::Unreachable(Unreachable::new(&e))
                } else {
                    RPCError::Network(NetworkError::new(&e))
                }
            })?;
        let batch = response
            .headers()
            .get(FEATURES_HEADER)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|f| f.trim() == "batch"));
        self.peers.heard(self.target, batch);
        if !response.status().is_success() {
            let status = response.status();
            let text = response.text().await.unwrap_or_default();
            let error = std::io::Error::other(format!("raft rpc {path} answered {status}: {text}"));
            return Err(RPCError::Network(NetworkError::new(&error)));
        }
        let result: Result<Resp, RaftError<NodeId, E>> = response
            .json()
            .await
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, RaftPeer, RaftError<NodeId>>> {
        self.call("append", &rpc, option.hard_ttl()).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, RaftPeer, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call("snapshot", &rpc, option.hard_ttl()).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, RaftPeer, RaftError<NodeId>>> {
        self.call("vote", &rpc, option.hard_ttl()).await
    }
}

/// The Raft RPC routes, answered by `raft`.
pub fn router(raft: Raft) -> Router {
    Router::new()
        .route("/raft/append", post(append))
        .route("/raft/vote", post(vote))
        .route("/raft/snapshot", post(snapshot))
        .layer(DefaultBodyLimit::max(RPC_BODY_LIMIT))
        .layer(axum::middleware::map_response(
            |mut response: axum::response::Response| async move {
                response.headers_mut().insert(
                    FEATURES_HEADER,
                    axum::http::HeaderValue::from_static(FEATURES),
                );
                response
            },
        ))
        .with_state(raft)
}

async fn append(
    State(raft): State<Raft>,
    Json(rpc): Json<AppendEntriesRequest<TypeConfig>>,
) -> Json<Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>> {
    Json(raft.append_entries(rpc).await)
}

async fn vote(
    State(raft): State<Raft>,
    Json(rpc): Json<VoteRequest<NodeId>>,
) -> Json<Result<VoteResponse<NodeId>, RaftError<NodeId>>> {
    Json(raft.vote(rpc).await)
}

async fn snapshot(
    State(raft): State<Raft>,
    Json(rpc): Json<InstallSnapshotRequest<TypeConfig>>,
) -> Json<Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>> {
    Json(raft.install_snapshot(rpc).await)
}

//! Raft RPC over HTTP: the client side (openraft's network factory) and the server routes.
//!
//! Requests and responses are MessagePack ([`super::codec`], as the log stores entries) once the
//! peer said it reads them (`msgpack` in its [`FEATURES_HEADER`]), JSON before that and to a peer
//! of an earlier version. The server reads either (the codec tells them apart by the first byte)
//! and answers in the encoding of the request. In production the daemon hands in a reqwest client
//! with the node's certificate (mTLS) and serves [`router`] behind TLS that requires node
//! certificates.

use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError,
    Unreachable,
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

/// Most bytes (encoded) of entries in one AppendEntries, unless a single entry is larger.
/// openraft gives an AppendEntries one heartbeat interval (150 ms) to be sent, written and
/// answered, and sends up to 300 entries in one, each up to a batch (1 MiB): a follower behind
/// by large entries timed out on every attempt, and openraft sent the same again, for ever. A
/// larger request is refused here as too large, with how many entries fit; openraft then sends
/// that many (for its next 10 requests to that follower).
pub const APPEND_BUDGET: usize = 512 * 1024;

/// Response header by which a node's Raft RPC server says what it reads: `batch`, batched
/// entries ([`super::batch::Proposal::Batch`]); `msgpack`, MessagePack requests. Earlier versions
/// do not send it, or send only `batch`.
pub const FEATURES_HEADER: &str = "x-smr-raft-features";
const FEATURES: &str = "batch,msgpack";
/// Content type of a MessagePack request or answer.
const MSGPACK: &str = "application/vnd.smr.msgpack";

/// What a peer's Raft RPC server said it reads, in its last answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct PeerFeatures {
    batch: bool,
    msgpack: bool,
}

impl PeerFeatures {
    pub(super) fn parse(header: Option<&str>) -> PeerFeatures {
        let has = |name: &str| header.is_some_and(|v| v.split(',').any(|f| f.trim() == name));
        PeerFeatures {
            batch: has("batch"),
            msgpack: has("msgpack"),
        }
    }
}

/// What this node learned of its peers' Raft RPC servers (from each one's last answer). A peer
/// not heard from yet counts as reading neither batched entries nor MessagePack.
#[derive(Default)]
pub struct Peers {
    features: std::sync::Mutex<std::collections::BTreeMap<NodeId, PeerFeatures>>,
}

impl Peers {
    pub(super) fn heard(&self, id: NodeId, features: PeerFeatures) {
        super::lock(&self.features).insert(id, features);
    }

    pub(super) fn of(&self, id: NodeId) -> PeerFeatures {
        super::lock(&self.features)
            .get(&id)
            .copied()
            .unwrap_or_default()
    }

    /// Whether every one of `ids` reads batched entries.
    pub fn all_batch(&self, ids: impl IntoIterator<Item = NodeId>) -> bool {
        let features = super::lock(&self.features);
        ids.into_iter()
            .all(|id| features.get(&id).is_some_and(|f| f.batch))
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
    /// The peer's RPC addresses, parsed once: parsing a URL (and its host, IDNA rules included)
    /// for every AppendEntries was 5% of a leader's CPU under one client's writes. An address
    /// that does not parse fails each call with why.
    urls: Result<Urls, String>,
    peers: std::sync::Arc<Peers>,
}

/// The URLs of a peer's Raft RPC routes.
struct Urls {
    append: reqwest::Url,
    vote: reqwest::Url,
    snapshot: reqwest::Url,
}

impl Urls {
    fn parse(scheme: &str, addr: &str) -> Result<Urls, String> {
        let url = |path: &str| {
            let text = format!("{scheme}://{addr}/raft/{path}");
            reqwest::Url::parse(&text).map_err(|e| format!("raft rpc address {text}: {e}"))
        };
        Ok(Urls {
            append: url("append")?,
            vote: url("vote")?,
            snapshot: url("snapshot")?,
        })
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, node: &RaftPeer) -> Connection {
        Connection {
            transport: self.transport.clone(),
            target,
            urls: Urls::parse(&self.transport.scheme, &node.raft_addr),
            peers: self.peers.clone(),
        }
    }
}

/// A request's body and its content type.
type Encoded = (Vec<u8>, &'static str);

impl Connection {
    async fn call<Req, Resp, E>(
        &self,
        url: fn(&Urls) -> &reqwest::Url,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, RPCError<NodeId, RaftPeer, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let encoded = self.encode(request)?;
        self.send(url, encoded, timeout).await
    }

    fn encode<Req: Serialize, E: std::error::Error>(
        &self,
        request: &Req,
    ) -> Result<Encoded, RPCError<NodeId, RaftPeer, RaftError<NodeId, E>>> {
        encode(request, self.peers.of(self.target).msgpack)
            .map_err(|e| RPCError::Network(NetworkError::new(&std::io::Error::other(e))))
    }

    async fn send<Resp, E>(
        &self,
        url: fn(&Urls) -> &reqwest::Url,
        (body, content_type): Encoded,
        timeout: Duration,
    ) -> Result<Resp, RPCError<NodeId, RaftPeer, RaftError<NodeId, E>>>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let url = match &self.urls {
            Ok(urls) => url(urls),
            Err(why) => {
                let error = std::io::Error::other(why.clone());
                return Err(RPCError::Unreachable(Unreachable::new(&error)));
            }
        };
        let response = self
            .transport
            .client
            .client()
            .post(url.clone())
            .timeout(timeout)
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body)
            .send()
            .await
            .map_err(|e| {
                if e.is_connect() {
                    RPCError::Unreachable(Unreachable::new(&e))
                } else {
                    RPCError::Network(NetworkError::new(&e))
                }
            })?;
        let features = PeerFeatures::parse(
            response
                .headers()
                .get(FEATURES_HEADER)
                .and_then(|v| v.to_str().ok()),
        );
        self.peers.heard(self.target, features);
        if !response.status().is_success() {
            let status = response.status();
            let text = response.text().await.unwrap_or_default();
            let error =
                std::io::Error::other(format!("raft rpc {} answered {status}: {text}", url.path()));
            return Err(RPCError::Network(NetworkError::new(&error)));
        }
        let bytes = response
            .bytes()
            .await
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        // JSON or MessagePack, whichever the peer answered in (the codec tells them apart).
        let result: Result<Resp, RaftError<NodeId, E>> =
            super::codec::decode(&bytes).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, RaftPeer, RaftError<NodeId>>> {
        let encoded = self.encode(&rpc)?;
        if encoded.0.len() > APPEND_BUDGET && rpc.entries.len() > 1 {
            let msgpack = self.peers.of(self.target).msgpack;
            let fit = entries_within(&rpc.entries, APPEND_BUDGET, |e| {
                encode(e, msgpack).map_or(usize::MAX, |(bytes, _)| bytes.len())
            });
            return Err(RPCError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint(fit),
            ));
        }
        self.send(|u| &u.append, encoded, option.hard_ttl()).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, RaftPeer, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(|u| &u.snapshot, &rpc, option.hard_ttl()).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, RaftPeer, RaftError<NodeId>>> {
        self.call(|u| &u.vote, &rpc, option.hard_ttl()).await
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

/// A request in either encoding, and whether it was MessagePack; an unreadable body is a 400
/// naming the problem.
#[allow(clippy::result_large_err)]
fn read<Req: DeserializeOwned>(body: &[u8]) -> Result<(Req, bool), Response> {
    match super::codec::decode(body) {
        Ok(request) => Ok((request, body.first() == Some(&super::codec::TAG_MSGPACK))),
        Err(e) => Err((StatusCode::BAD_REQUEST, format!("raft rpc body: {e}")).into_response()),
    }
}

/// `response` in the encoding of the request.
fn reply<Resp: Serialize>(response: &Resp, msgpack: bool) -> Response {
    match encode(response, msgpack) {
        Ok((bytes, content_type)) => {
            ([(axum::http::header::CONTENT_TYPE, content_type)], bytes).into_response()
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
    }
}

/// How many of `entries`, from the first, fit in `budget` bytes by `size`; at least one.
fn entries_within<T>(entries: &[T], budget: usize, size: impl Fn(&T) -> usize) -> u64 {
    let mut total = 0usize;
    let mut fit = 0u64;
    for entry in entries {
        total = total.saturating_add(size(entry));
        if total > budget && fit > 0 {
            break;
        }
        fit += 1;
    }
    fit
}

/// `value` as MessagePack ([`super::codec`]) or JSON, with its content type.
fn encode<T: Serialize + ?Sized>(value: &T, msgpack: bool) -> Result<Encoded, String> {
    if msgpack {
        let bytes = super::codec::encode(value).map_err(|e| e.to_string())?;
        Ok((bytes, MSGPACK))
    } else {
        let bytes = serde_json::to_vec(value).map_err(|e| e.to_string())?;
        Ok((bytes, "application/json"))
    }
}

async fn append(State(raft): State<Raft>, body: Bytes) -> Response {
    match read::<AppendEntriesRequest<TypeConfig>>(&body) {
        Ok((rpc, msgpack)) => reply(&raft.append_entries(rpc).await, msgpack),
        Err(bad) => bad,
    }
}

async fn vote(State(raft): State<Raft>, body: Bytes) -> Response {
    match read::<VoteRequest<NodeId>>(&body) {
        Ok((rpc, msgpack)) => reply(&raft.vote(rpc).await, msgpack),
        Err(bad) => bad,
    }
}

async fn snapshot(State(raft): State<Raft>, body: Bytes) -> Response {
    match read::<InstallSnapshotRequest<TypeConfig>>(&body) {
        Ok((rpc, msgpack)) => reply(&raft.install_snapshot(rpc).await, msgpack),
        Err(bad) => bad,
    }
}

#[cfg(test)]
mod tests {
    use super::{Urls, entries_within};

    /// A peer's RPC URLs are parsed once, IPv6 addresses included; an address that is not one
    /// is refused naming it.
    #[test]
    fn peer_urls_are_parsed_once() {
        let urls = Urls::parse("https", "10.0.0.2:9212").expect("valid address");
        assert_eq!(urls.append.as_str(), "https://10.0.0.2:9212/raft/append");
        assert_eq!(urls.vote.as_str(), "https://10.0.0.2:9212/raft/vote");
        assert_eq!(
            urls.snapshot.as_str(),
            "https://10.0.0.2:9212/raft/snapshot"
        );
        let v6 = Urls::parse("https", "[fd00::2]:9212").expect("valid address");
        assert_eq!(v6.append.host_str(), Some("[fd00::2]"));
        let Err(why) = Urls::parse("https", "not a host:9212") else {
            panic!("an address with spaces parsed");
        };
        assert!(why.contains("not a host:9212"), "{why}");
    }

    /// An AppendEntries over the budget is cut where the entries stop fitting, never below one
    /// entry (a single entry larger than the budget still goes, alone).
    #[test]
    fn entries_are_cut_to_the_budget() {
        let size = |n: &usize| *n;
        assert_eq!(entries_within(&[4, 4, 4], 10, size), 2);
        assert_eq!(entries_within(&[4, 4, 2], 10, size), 3);
        assert_eq!(entries_within(&[20, 1], 10, size), 1);
        assert_eq!(entries_within(&[1, 20], 10, size), 1);
    }
}

//! The REST API's request and response bodies, shared by the server (agent) and [`crate::client`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::definitions::{Object, ObjectKey};
use crate::state::{Command, NodeId, ObjectOutcome};

/// Every error the API returns has this shape, with a matching HTTP status.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorInfo,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorInfo {
    /// Stable machine-readable code, e.g. `invalid_definition`, `not_found`, `unavailable`.
    pub code: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ApplyRequest {
    pub objects: Vec<Object>,
    /// Idempotency key: a retry with the same id is applied once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op_id: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ApplyResponse {
    pub revision: u64,
    pub outcomes: Vec<ObjectOutcome>,
    #[serde(default)]
    pub dry_run: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DeleteRequest {
    pub keys: Vec<ObjectKey>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op_id: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HealthResponse {
    pub node: String,
    pub id: NodeId,
    pub state: String,
    pub leader: Option<NodeId>,
    pub revision: u64,
    /// Why the node is `degraded` (e.g. its data dir is full and writes are refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// The Raft voters and learners as this node sees them.
    #[serde(default)]
    pub voters: Vec<NodeId>,
    #[serde(default)]
    pub learners: Vec<NodeId>,
    /// When this node's certificate expires (milliseconds since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_expires_ms: Option<u64>,
    /// Whether this node seals and opens secret values (an older version does not say so).
    #[serde(default)]
    pub seals_secrets: bool,
    /// The fingerprint (hex SHA-256) of the CA this node's certificate comes from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_ca: Option<String>,
    /// Whether this node applies batched delta reports (`Op::Reports`); an older version does
    /// not say so, and would fail on such a log entry.
    #[serde(default)]
    pub report_deltas: bool,
    /// Whether this node holds the cluster key (`pki/cluster.key`): an older version, or a
    /// node of a cluster created before the key existed that has not fetched it yet, does not.
    #[serde(default)]
    pub holds_cluster_key: bool,
    /// The kinds of log entries (and state) this node reads, by name (`report-deltas`,
    /// `user-certs`, `ca-abort`): a node proposes a new kind only once every member lists it.
    /// An older version lists none (or does not know some), and would stop on such an entry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeView {
    pub id: NodeId,
    pub name: String,
    pub host: String,
    pub domain: String,
    pub ip: String,
    pub api: String,
    pub raft: String,
    /// `voter`, `learner` or `joining` (registered, not yet in the Raft membership).
    pub role: String,
    pub leader: bool,
    /// `healthy` or `unreachable`, as probed by the node that answered.
    pub health: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    pub joined_ms: u64,
    /// The node's subnet of the cluster network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<String>,
    /// The overlay backend of the cluster (wireguard, vxlan, host-gw, none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vtep_mac: Option<String>,
    /// The address other nodes dial (WireGuard endpoint, API, Raft), when it differs from `ip`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wg_port: Option<u16>,
    /// The node's WireGuard public key (base64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wg_public_key: Option<String>,
    /// The WireGuard session between the node that answered and this node, as the answering
    /// node's device reports it (absent for the answering node itself and on other backends).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wireguard: Option<WgPeerView>,
    /// `active`, `cordoned` (no new replicas) or `draining` (its replicas move away).
    #[serde(default)]
    pub availability: smr_core::scheduler::Availability,
    /// Replicas placed on the node, those still moving off it and those it still runs.
    #[serde(default)]
    pub replicas: u32,
    /// When the node's certificate expires (ms since the epoch), as its health probe said
    /// (absent when it did not answer). Renewed by the node at 2/3 of its lifetime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_expires_ms: Option<u64>,
    /// The fingerprint of the CA the node's certificate comes from, as its health probe said
    /// (absent when it did not answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_ca: Option<String>,
}

/// `PUT /api/v1/nodes/{id}/availability`: cordon, drain or uncordon (`active`) a node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AvailabilityRequest {
    pub availability: smr_core::scheduler::Availability,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op_id: Option<String>,
}

/// One WireGuard peer as the answering node's device sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WgPeerView {
    /// The endpoint the device last heard the peer from (after NAT), or was configured with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Milliseconds since the epoch of the latest completed handshake; absent: none yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handshake_ms: Option<u64>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// `POST /api/v1/nodes/{id}/rotate-key`: the node's new WireGuard public key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RotateKeyResponse {
    pub id: NodeId,
    pub public_key: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TokenRequest {
    /// Lifetime of the token; default 24 h.
    #[serde(default)]
    pub ttl_seconds: Option<u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TokenResponse {
    pub token: String,
    pub expires_ms: u64,
}

/// Sent by a joining node, authenticated by the join token (it has no certificate yet).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    pub token: String,
    pub name: String,
    pub host: String,
    pub domain: String,
    /// The joiner's own underlay address.
    pub ip: String,
    /// The address other nodes dial (behind NAT: the public one); absent: `ip`.
    #[serde(default)]
    pub public_ip: Option<String>,
    /// UDP port of the joiner's WireGuard device.
    #[serde(default)]
    pub wg_port: Option<u16>,
    /// The joiner's WireGuard public key (base64).
    #[serde(default)]
    pub wg_public_key: Option<String>,
    /// The overlay backend the joiner was told to use (`--backend`); refused when the cluster
    /// runs another.
    #[serde(default)]
    pub backend: Option<String>,
    pub api_port: u16,
    pub raft_port: u16,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// CSR for the node certificate; the key stays on the joiner.
    pub node_csr: String,
    /// CSR for the node's admin (smrctl) certificate.
    pub admin_csr: String,
    /// MAC address the node's VXLAN device uses.
    #[serde(default)]
    pub vtep_mac: Option<String>,
    /// Whether replicas may be placed on the node.
    #[serde(default = "yes")]
    pub schedulable: bool,
}

fn yes() -> bool {
    true
}

#[derive(Clone, Serialize, Deserialize)]
pub struct JoinResponse {
    pub id: NodeId,
    pub node_cert: String,
    pub admin_cert: String,
    pub ca_pem: String,
    /// The cluster key (`SMRKEY-1-...`) that opens the CA key sealed in the state, so that the
    /// new node can sign joins and renewals too. Absent from a cluster created before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_key: Option<String>,
}

impl std::fmt::Debug for JoinResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinResponse")
            .field("id", &self.id)
            .field("cluster_key", &self.cluster_key.as_ref().map(|_| "***"))
            .finish_non_exhaustive()
    }
}

/// Node-to-node: ask the CA holder to sign a CSR.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SignRequest {
    pub csr: String,
    pub admin: bool,
    pub name: String,
    pub sans: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SignResponse {
    pub cert: String,
}

/// One replica as `smrctl ps` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReplicaView {
    /// `<group>-<name>-<index>`.
    pub name: String,
    pub object: ObjectKey,
    pub index: u32,
    pub node: NodeId,
    pub node_name: String,
    /// The template generation this replica's slot runs (equal to the object's
    /// `template_generation` once a rollout reached it).
    #[serde(default)]
    pub generation: u64,
    /// pending (placed, not reported yet), starting, running, crash-loop, exited...
    pub state: String,
    pub ready: bool,
    pub image: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    pub restarts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The end of a replica's log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LogsResponse {
    pub replica: String,
    pub node: NodeId,
    pub logs: String,
}

/// A command to run in a replica.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    pub command: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExecResponse {
    pub exit_code: i64,
    pub output: String,
}

/// One `*.private` name and its A records.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DnsRecordView {
    pub name: String,
    pub addresses: Vec<String>,
}

/// `smrctl describe`: an object with its placement, replicas and events.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DescribeView {
    pub object: crate::state::StoredObject,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement_error: Option<String>,
    pub replicas: Vec<ReplicaView>,
    pub events: Vec<crate::state::Event>,
}

/// Node-to-node: a follower hands a command to the leader.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProposeRequest {
    pub command: Command,
}

/// Node-to-node: a follower hands the leader every command that gathered while its previous
/// request was on the way (`POST /api/v1/internal/propose-batch`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProposeBatchRequest {
    pub commands: Vec<Command>,
}

/// The leader's answer to a [`ProposeBatchRequest`]: one per command, in order.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProposeBatchResponse {
    pub answers: Vec<ProposeAnswer>,
}

/// What became of one command of a batch: its result, or the error (HTTP status and body) the
/// leader would have answered to it alone.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProposeAnswer {
    Done(crate::state::CommandResult),
    Failed { status: u16, body: ErrorBody },
}

/// Node-to-node: the leader's confirmed commit point for a linearizable read on a follower.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReadIndexResponse {
    pub index: u64,
}

/// `POST /api/v1/users/{name}/certificate` (admin certificates only): a CSR made where the
/// user's key stays.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserCertRequest {
    pub csr: String,
}

/// `POST /api/v1/users/revoke`: revoke every certificate of user `name`, or the one with
/// `serial` (hex; `:` between bytes allowed). Exactly one of the two.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserRevokeRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
}

/// An admin client certificate signed for a named user.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UserCertResponse {
    pub name: String,
    pub cert: String,
    pub ca_pem: String,
}

/// Node-to-node: a node tells the leader it is alive (issue 14). Held in the leader's memory,
/// never written to the log. The node must be the one the client certificate names.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatRequest {
    pub node: NodeId,
}

/// The leader's answer to a heartbeat: when to send the next one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatResponse {
    /// The period the leader wants, in milliseconds (a fifth of its node timeout, 1 to 5 s).
    pub period_ms: u64,
}

/// `GET /api/v1/ca/status` and the answer to `POST /api/v1/ca/rotate`: the cluster CA, the
/// rotation under way if any, and the CA of each node's certificate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CaStatus {
    /// The fingerprint (hex SHA-256) of the cluster CA.
    pub fingerprint: String,
    /// The CA a rotation replaces it with, while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
    /// When the rotation started (ms since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_ms: Option<u64>,
    /// The CA the last rotation replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<String>,
    /// Nodes whose certificate comes from the CA that signs now (the next one during a
    /// rotation), and all nodes.
    pub done: usize,
    pub total: usize,
    pub nodes: Vec<CaNodeStatus>,
    /// When the rotation under way was aborted (`smrmgr ca abort`; ms since the epoch): the
    /// current CA signs again, `done` counts the nodes back on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aborted_ms: Option<u64>,
    /// The nodes a rotation (or its abort) waits for: their certificate is not of the CA that
    /// signs now, or they did not answer. Removing a node that will never answer
    /// (`smrctl remove-node ID`) lets the rotation end.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waiting: Vec<NodeId>,
}

/// One node in [`CaStatus`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CaNodeStatus {
    pub id: NodeId,
    pub name: String,
    /// `healthy` or `unreachable`.
    pub health: String,
    /// The CA its certificate comes from (absent when it did not answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_ca: Option<String>,
}

/// Node-to-node: a node's report of its replicas (issue 14), a delta on its last one or in full.
/// The node must be the one the client certificate names.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportRequest {
    pub report: crate::state::ReportDelta,
}

/// The answer to a report: applied, or to be sent again in full (the delta built on a report the
/// state does not hold).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReportResponse {
    pub send_full: bool,
}

/// Node-to-node (`GET /api/v1/internal/cluster-key`, node certificates of members only): the
/// cluster key, for a node of a cluster created before the CA key was sealed in the state that
/// does not hold it yet.
#[derive(Clone, Serialize, Deserialize)]
pub struct ClusterKeyResponse {
    /// `SMRKEY-1-...`
    pub cluster_key: String,
}

impl std::fmt::Debug for ClusterKeyResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterKeyResponse")
            .field("cluster_key", &"***")
            .finish()
    }
}

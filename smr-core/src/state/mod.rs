//! The replicated state machine: pure and deterministic.
//!
//! Every change to the cluster is a [`Command`] appended to the Raft log; every node applies the
//! same commands in the same order with [`ClusterState::apply`] and so holds the same state.
//! Nothing here reads a clock or does I/O: the time a command carries was stamped by the node
//! that proposed it.
//!
//! Commands carry an `op_id` chosen by the client. A command whose `op_id` was applied recently
//! is not applied again; its first result is returned. That makes a client's retry after a lost
//! reply (a leader killed mid-request) safe: a write is acknowledged at most once and applied once.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::definitions::{Kind, Object, ObjectKey};
use crate::scheduler::{Availability, Placement};

pub mod ca_rotation;
pub mod clear_secrets;
mod delta;
mod inputs;
pub mod key_migration;
pub mod lease;
mod recent;
mod report_delta;
mod reset;
pub mod shared;
mod slots;
mod sync_status;
pub mod user_certs;

pub use delta::{Changes, Delta, Follower, Step};
pub use inputs::ReadersIndex;
pub use recent::RecentOps;
pub use report_delta::{ReplicaRef, ReportDelta, StaleBase, merge as merge_reports};
pub use shared::{MapChange, SharedList, SharedMap};
pub use slots::{NodeSlots, SlotIndex};
pub use sync_status::{GitopsState, GitopsStatus, GitopsSync, owner_of};
pub use user_certs::UserCert;

pub type NodeId = u64;

/// How many recent operation ids are remembered for deduplication.
pub const DEDUP_WINDOW: usize = 10_000;

/// How many cluster events are kept (oldest dropped first).
pub const EVENT_WINDOW: usize = 2_000;

/// What a node says about one of its replicas.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaReport {
    pub key: ObjectKey,
    pub index: u32,
    /// `<group>-<name>-<index>`.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// The replica's phase: pending, starting, running, replacing, restarting, crash-loop, exited...
    pub phase: String,
    pub ready: bool,
    /// Address on the cluster network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    pub restarts: u32,
    pub generation: u64,
    pub image: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_ms: Option<u64>,
    /// Why the replica is not running, when it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Address per Docker network it is on (`cluster`, `smr.<group>.<name>` of an overlay
    /// network), for the per-network DNS names and isolation rules.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ips: BTreeMap<String, String>,
}

/// The latest report of a node: its replicas and a sequence number that proves it is alive.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeReport {
    /// Increases with every report the node sends (restarts from a random high value).
    pub seq: u64,
    pub at_ms: u64,
    pub replicas: Vec<ReplicaReport>,
}

/// Something that happened, for `smrctl events` and the per-replica history of `smrctl describe`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub revision: u64,
    pub at_ms: u64,
    /// `containers/group/name` or `node/<name>`.
    pub subject: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<NodeId>,
    pub reason: String,
    pub message: String,
}

/// A placement decided by the leader for the object generation it saw.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlacementUpdate {
    pub key: ObjectKey,
    /// The object's generation the decision was made for; a stale decision is dropped.
    pub generation: u64,
    /// `None` removes the placement.
    pub placement: Option<Placement>,
    /// Why the object cannot be placed, shown in status; placement is then left as it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A stored definition with the bookkeeping around it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredObject {
    pub object: Object,
    /// 1 on creation, +1 on every change of the definition.
    pub generation: u64,
    /// 1 on creation, +1 on every change of what a replica runs (a `containers` spec apart from
    /// replicas, spread, node selector and rollout settings): scaling does not restart replicas.
    #[serde(default = "one")]
    pub template_generation: u64,
    /// The cluster revision at which this object last changed.
    pub revision: u64,
    pub created_ms: u64,
    pub updated_ms: u64,
    /// Who manages this object: `None` for objects applied by hand, `gitops/<group>/<name>` otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

/// A node of the cluster as recorded in the registry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub id: NodeId,
    /// The agent name (`-a`), unique in the cluster.
    pub name: String,
    /// The node's host name (`-n`).
    pub host: String,
    /// The domain the API is reached under (`-d`).
    pub domain: String,
    /// The node's own underlay address (`--ip`): what it binds and where its packets leave.
    pub ip: String,
    /// What other nodes dial to reach it (`--public-ip`): WireGuard endpoint, API and Raft.
    /// Absent in records of older nodes: then `ip`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_ip: Option<String>,
    pub api_port: u16,
    pub raft_port: u16,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    pub joined_ms: u64,
    /// Whether replicas may be placed here (false for control-plane-only nodes).
    #[serde(default = "yes")]
    pub schedulable: bool,
    /// This node's subnet of the cluster network, allocated when it joined.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<ipnet::Ipv4Net>,
    /// MAC address of this node's VXLAN device (`aa:bb:cc:dd:ee:ff`), chosen by the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vtep_mac: Option<String>,
    /// UDP port of the node's WireGuard device (`--wg-port`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wg_port: Option<u16>,
    /// The node's WireGuard public key (base64, as `wg` prints it); its private key never leaves
    /// the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wg_public_key: Option<String>,
}

/// The cluster network, fixed when the cluster is created.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkSettings {
    pub cidr: ipnet::Ipv4Net,
    pub subnet_len: u8,
    /// `wireguard`, `vxlan`, `host-gw` or `none`.
    pub backend: String,
}

impl NodeRecord {
    /// The address other nodes dial: `public_ip`, or `ip` when the node has none.
    pub fn dial_ip(&self) -> &str {
        self.public_ip.as_deref().unwrap_or(&self.ip)
    }
    pub fn api_addr(&self) -> String {
        join_host_port(self.dial_ip(), self.api_port)
    }
    pub fn raft_addr(&self) -> String {
        join_host_port(self.dial_ip(), self.raft_port)
    }
}

/// `host:port`, bracketing IPv6 literals.
/// A fresh random operation id: the key the state machine deduplicates commands by.
pub fn new_op_id() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

pub fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// A join token as the cluster remembers it: only a hash of its secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinTokenRecord {
    /// Hex SHA-256 of the token secret.
    pub secret_sha256: String,
    pub expires_ms: u64,
}

/// The cluster CA's certificate, the node that created it, and its private key sealed with the
/// cluster key (AES-256-GCM, see `pki::ClusterKey`): never the key in clear. Any node that holds
/// the cluster key opens it to sign; a cluster created before the key was sealed has none, and
/// signs on `holder`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaRecord {
    pub cert_pem: String,
    pub fingerprint: String,
    pub holder: NodeId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_sealed: Option<String>,
    /// The CA rotation under way (`smrmgr ca rotate`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<NextCa>,
    /// The fingerprint of the CA this one replaced (join tokens minted before the last rotation
    /// name it, and are refused with that reason).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<String>,
    /// A cluster created before the CA key was sealed in the state is migrating
    /// ([`key_migration`]): the key is sealed now, but some node may not hold the cluster key
    /// yet. Until the leader sees every node hold it ([`Op::FinishKeyMigration`]), secrets are
    /// not sealed and the CA is not rotated.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub key_migrating: bool,
}

/// The CA that replaces the current one during a rotation: its certificate, its key sealed with
/// the cluster key like the current one's, and its certificate cross-signed by the current CA
/// (which nodes present after their leaf so that peers trusting only the current CA accept it).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NextCa {
    pub cert_pem: String,
    pub fingerprint: String,
    pub key_sealed: String,
    pub cross_pem: String,
    pub started_ms: u64,
    /// `smrmgr ca abort`: when the rotation was abandoned. The current CA signs again; every
    /// node still trusts both CAs until each one's certificate is of the current CA again, then
    /// the leader drops the next CA ([`Op::FinishCaAbort`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aborted_ms: Option<u64>,
}

impl std::fmt::Debug for NextCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NextCa")
            .field("fingerprint", &self.fingerprint)
            .field("started_ms", &self.started_ms)
            .field("aborted_ms", &self.aborted_ms)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for CaRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaRecord")
            .field("fingerprint", &self.fingerprint)
            .field("holder", &self.holder)
            .field("key_sealed", &self.key_sealed.as_ref().map(|_| "***"))
            .field("next", &self.next)
            .field("previous", &self.previous)
            .field("key_migrating", &self.key_migrating)
            .finish_non_exhaustive()
    }
}

/// The replicated state. Its large collections are persistent ([`SharedMap`], [`SharedList`]):
/// a clone (what a reader holds) costs O(1) and shares everything; an apply then copies only the
/// O(log n) path to what it changes, and [`ClusterState::delta`] finds what differs between two
/// versions in about the time it takes to walk the differences. Serialized exactly as the
/// `BTreeMap`/`VecDeque` fields it had before.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterState {
    /// Increases by one for every command that changed something.
    pub revision: u64,
    #[serde(deserialize_with = "objects_by_key")]
    pub objects: SharedMap<ObjectKey, StoredObject>,
    pub nodes: SharedMap<NodeId, NodeRecord>,
    /// Ids are handed out in join order from 1 and never reused.
    pub last_node_id: NodeId,
    pub join_tokens: Vec<JoinTokenRecord>,
    #[serde(default)]
    pub ca: Option<CaRecord>,
    /// Recently applied operation ids with their results, oldest first.
    #[serde(default)]
    pub recent_ops: RecentOps,
    /// Where each `containers` object's replicas run (decided by the leader).
    #[serde(default)]
    pub placements: SharedMap<ObjectKey, Placement>,
    /// Why an object could not be placed, if it could not.
    #[serde(default)]
    pub placement_errors: SharedMap<ObjectKey, String>,
    /// Each node's latest report of its replicas.
    #[serde(default)]
    pub reports: SharedMap<NodeId, NodeReport>,
    #[serde(default)]
    pub events: SharedList<Event>,
    /// The overlay settings; `None` until the first node records them.
    #[serde(default)]
    pub network: Option<NetworkSettings>,
    /// Sync status of every `gitops` object.
    #[serde(default)]
    pub gitops: SharedMap<ObjectKey, GitopsStatus>,
    /// Nodes taken out of scheduling (`smrctl cordon`, `drain`); absent: active.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub availability: BTreeMap<NodeId, Availability>,
    /// User certificates the cluster signed, and revoked ones ([`user_certs`]); an entry goes
    /// once its certificate has expired.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub user_certs: Vec<UserCert>,
    /// Which definitions read which objects: derived from `objects` by the writes, not stored
    /// (and not compared). Leave it alone.
    #[serde(skip)]
    pub readers_index: ReadersIndex,
    /// Which slots each node must run: derived from `placements` (kept up to date by every
    /// apply, built on first use after a load), not stored (and not compared). Leave it alone.
    #[serde(skip)]
    pub slot_index: SlotIndex,
}

/// Reads the objects map, each object under its own [`Object::key`]. A state written before
/// custom objects were keyed by their prefix holds a `prefix: traefik.io/v1` custom object under
/// `custom/GROUP/NAME`; it is moved to `traefik.io/v1/custom/GROUP/NAME` as the state is loaded
/// (a snapshot, the etcd store, a backup), the same way on every node.
fn objects_by_key<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<SharedMap<ObjectKey, StoredObject>, D::Error> {
    let objects = SharedMap::<ObjectKey, StoredObject>::deserialize(d)?;
    if objects.iter().all(|(k, o)| *k == o.object.key()) {
        return Ok(objects);
    }
    Ok(objects
        .iter()
        .map(|(_, o)| (o.object.key(), o.clone()))
        .collect())
}

/// A proposed change, as it travels through the Raft log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Command {
    /// Client-chosen id; a repeat within [`DEDUP_WINDOW`] returns the first result.
    pub op_id: String,
    /// Wall-clock milliseconds at the proposing node.
    pub at_ms: u64,
    pub op: Op,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// Create or update objects, all or none.
    Apply {
        objects: Vec<Object>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        owner: Option<String>,
    },
    /// Delete objects, all or none. Missing keys are reported, not an error.
    Delete {
        keys: Vec<ObjectKey>,
    },
    /// Gives a `containers` definition a new template generation without changing it: the
    /// leader then replaces its replicas batch by batch (`smrctl restart`). A missing object is
    /// reported as not found; any other kind is refused.
    Restart {
        key: ObjectKey,
    },
    /// Add a node to the registry; its id is assigned here.
    RegisterNode {
        node: NodeRecord,
    },
    RemoveNode {
        id: NodeId,
    },
    SetNodeLabels {
        id: NodeId,
        labels: BTreeMap<String, String>,
    },
    /// A node publishes its WireGuard public key and port (a new key after `smrmgr rotate-key`,
    /// or a key it made at start); peers replace the old key when they reconcile.
    SetNodeWireguard {
        id: NodeId,
        public_key: String,
        port: u16,
    },
    AddJoinToken {
        token: JoinTokenRecord,
    },
    SetCa {
        ca: CaRecord,
    },
    /// Fixes the cluster network; refused if a different one is already set.
    SetNetwork {
        network: NetworkSettings,
    },
    /// The leader's placement decisions.
    Place {
        updates: Vec<PlacementUpdate>,
    },
    /// A node's report of its replicas (also its heartbeat).
    Report {
        node: NodeId,
        report: NodeReport,
    },
    /// One gitops sync, applied whole: objects, prunes and status.
    GitopsSync {
        sync: Box<GitopsSync>,
    },
    /// Asks the leader to sync a gitops object now.
    GitopsRequestSync {
        gitops: ObjectKey,
    },
    /// Cordons, drains or uncordons (`active`) a node.
    SetNodeAvailability {
        id: NodeId,
        availability: Availability,
    },
    /// Does nothing; used to test the log.
    Noop,
    /// `smrmgr restore`: the objects and gitops status of a backup ([`crate::backup::restored`])
    /// into a cluster just created, which holds no object yet; refused otherwise, or when the
    /// backup's network differs from the cluster's.
    Restore {
        state: Box<ClusterState>,
    },
    /// `smrmgr start --force-new-cluster`: a surviving node's state, as a one-node cluster of
    /// node `keep` ([`crate::backup::forced`]), into the node's new Raft group, which holds
    /// nothing yet; refused otherwise.
    ForceNewCluster {
        state: Box<ClusterState>,
        keep: NodeId,
    },
    /// The leader seals the values of secrets a previous version stored in clear: each object
    /// replaces the stored secret of its key when that holds the same fields, labels and prefix
    /// (others are left alone: they changed meanwhile). Neither a new generation nor a rollout:
    /// the readers render the same values.
    SealSecrets {
        objects: Vec<Object>,
    },
    /// `smrmgr ca rotate`: starts the rotation to `next`; refused while another runs, or when
    /// the cluster has no CA (the same rotation again is accepted and changes nothing).
    StartCaRotation {
        next: NextCa,
    },
    /// Every node's certificate comes from the next CA: it becomes the CA, the old one is no
    /// longer trusted. Refused unless the rotation to `fingerprint` is under way (done already:
    /// accepted, nothing changes).
    FinishCaRotation {
        fingerprint: String,
    },
    /// Reports of many nodes in one entry (issue 14), each a full report or a delta on the
    /// node's report the state holds ([`ReportDelta`]); applied one after the other. A delta on
    /// another report than the one held changes nothing and its node is asked to send in full
    /// ([`CommandResult::Reported`]); a node that is not a member is named, not an error.
    Reports {
        reports: Vec<ReportDelta>,
    },
    /// The leader saw every node hold the cluster key: the migration of a cluster created before
    /// the CA key was sealed in the state ends ([`key_migration`]). Refused unless the CA is
    /// `fingerprint`; accepted and nothing changes when no migration runs. Proposed only once
    /// every node answered that it holds the key, so every node applying it knows this command.
    FinishKeyMigration {
        fingerprint: String,
    },
    /// `smrmgr ca abort`: abandons the rotation to `fingerprint` (the current CA signs again;
    /// both stay trusted until [`Op::FinishCaAbort`]). Refused unless that rotation is under way
    /// (aborted already: accepted, nothing changes).
    AbortCaRotation {
        fingerprint: String,
    },
    /// Every node's certificate is of the current CA again: the abandoned next CA is dropped
    /// (trusted no longer). Refused unless the rotation to `fingerprint` was aborted (dropped
    /// already: accepted, nothing changes).
    FinishCaAbort {
        fingerprint: String,
    },
    /// A user certificate was signed (`smrctl context export --user`): recorded so that
    /// `smrmgr user revoke NAME` finds it. Expired entries are dropped.
    RecordUserCert {
        cert: UserCert,
    },
    /// `smrmgr user revoke`: revokes every recorded certificate of user `name`, or the one with
    /// `serial` (not recorded: added, kept until `expires_ms`). Refused for a name with no
    /// certificate recorded. Every node's API refuses a revoked certificate.
    RevokeUserCerts {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        serial: Option<String>,
        expires_ms: u64,
    },
}

/// What became of one object in an apply or delete.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Created,
    Configured,
    Unchanged,
    Deleted,
    NotFound,
    /// A new template generation for an unchanged definition ([`Op::Restart`]).
    Restarted,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectOutcome {
    pub key: ObjectKey,
    pub outcome: Outcome,
    pub generation: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum CommandResult {
    Objects {
        revision: u64,
        outcomes: Vec<ObjectOutcome>,
    },
    NodeRegistered {
        id: NodeId,
    },
    Done {
        revision: u64,
    },
    /// A gitops sync request was recorded under this number.
    SyncRequested {
        request: u64,
    },
    /// The command was valid Raft-wise but the state refuses it; nothing changed.
    Rejected {
        reason: String,
    },
    /// [`Op::Reports`] applied: the nodes in `resend` sent a delta on a report the state does
    /// not hold (nothing of theirs changed: they must send in full), those in `unknown` are not
    /// members.
    Reported {
        revision: u64,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        resend: Vec<NodeId>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        unknown: Vec<NodeId>,
    },
}

/// A replica's new phase or readiness as an event.
fn replica_event(node: NodeId, replica: &ReplicaReport, revision: u64, now: u64) -> Event {
    let state = if replica.ready {
        format!("{} (ready)", replica.phase)
    } else {
        replica.phase.clone()
    };
    let mut message = format!("{} on node {node}: {state}", replica.name);
    if let Some(why) = &replica.message {
        message.push_str(": ");
        message.push_str(why);
    }
    Event {
        revision,
        at_ms: now,
        subject: replica.key.to_string(),
        replica: Some(replica.name.clone()),
        node: Some(node),
        reason: phase_reason(&replica.phase, replica.ready),
        message,
    }
}

/// A replica no longer reported, as an event.
fn removed_event(node: NodeId, gone: &ReplicaReport, revision: u64, now: u64) -> Event {
    Event {
        revision,
        at_ms: now,
        subject: gone.key.to_string(),
        replica: Some(gone.name.clone()),
        node: Some(node),
        reason: "Removed".into(),
        message: format!("{} on node {node}: removed", gone.name),
    }
}

/// Why an object of another kind than `containers` cannot be restarted.
pub fn restart_refusal(key: &ObjectKey) -> String {
    format!(
        "{key} cannot be restarted: only containers definitions have replicas to restart (not {})",
        key.kind.as_str()
    )
}

/// Why the last node of a cluster cannot be removed.
pub fn last_node_refusal(id: NodeId) -> String {
    format!(
        "node {id} is the last node of the cluster: removing it would leave no voter and no \
         cluster (stop its agent instead)"
    )
}

impl ClusterState {
    /// Applies one command. Deterministic: the same state and command give the same result.
    pub fn apply(&mut self, cmd: &Command) -> CommandResult {
        if let Some(previous) = self.recent_result(&cmd.op_id) {
            return previous.clone();
        }
        let result = self.apply_op(&cmd.op, cmd.at_ms);
        self.slot_index.sync(&self.placements);
        if !cmd.op_id.is_empty() {
            self.recent_ops.push(cmd.op_id.clone(), result.clone());
        }
        result
    }

    fn apply_op(&mut self, op: &Op, now: u64) -> CommandResult {
        match op {
            Op::Apply { objects, owner } => {
                let keys: Vec<ObjectKey> = objects.iter().map(Object::key).collect();
                if let Err(e) =
                    crate::docker_names::check(|k| self.objects.contains_key(k), &keys, &[])
                {
                    return CommandResult::Rejected {
                        reason: e.to_string(),
                    };
                }
                self.apply_objects(objects, owner.as_deref(), now)
            }
            Op::Delete { keys } => self.delete_objects(keys, now),
            Op::Restart { key } => self.restart(key, now),
            Op::RegisterNode { node } => self.register_node(node, now),
            Op::RemoveNode { id } if self.nodes.len() == 1 && self.nodes.contains_key(id) => {
                CommandResult::Rejected {
                    reason: last_node_refusal(*id),
                }
            }
            Op::RemoveNode { id } => match self.nodes.remove(id) {
                Some(node) => {
                    self.reports.remove(id);
                    self.availability.remove(id);
                    let revision = self.revision + 1;
                    self.push_event(Event {
                        revision,
                        at_ms: now,
                        subject: format!("node/{}", node.name),
                        replica: None,
                        node: Some(*id),
                        reason: "NodeRemoved".into(),
                        message: format!("node {} (id {id}) left the cluster", node.name),
                    });
                    self.bump()
                }
                None => CommandResult::Rejected {
                    reason: format!("node {id} is not a member"),
                },
            },
            Op::SetNodeLabels { id, labels } => match self.nodes.get_mut(id) {
                Some(node) => {
                    node.labels = labels.clone();
                    self.bump()
                }
                None => CommandResult::Rejected {
                    reason: format!("node {id} is not a member"),
                },
            },
            Op::SetNodeWireguard {
                id,
                public_key,
                port,
            } => match self.nodes.get_mut(id) {
                Some(node)
                    if node.wg_public_key.as_deref() == Some(public_key.as_str())
                        && node.wg_port == Some(*port) =>
                {
                    CommandResult::Done {
                        revision: self.revision,
                    }
                }
                Some(node) => {
                    node.wg_public_key = Some(public_key.clone());
                    node.wg_port = Some(*port);
                    self.bump()
                }
                None => CommandResult::Rejected {
                    reason: format!("node {id} is not a member"),
                },
            },
            Op::AddJoinToken { token } => {
                self.join_tokens.retain(|t| t.expires_ms > now);
                self.join_tokens.push(token.clone());
                self.bump()
            }
            Op::SetCa { ca } => match &self.ca {
                Some(existing) if existing.fingerprint != ca.fingerprint => {
                    CommandResult::Rejected {
                        reason: format!("the cluster already has CA {}", existing.fingerprint),
                    }
                }
                // The same CA again (a bootstrap repeated, the key sealed by a migration) never
                // undoes a rotation under way.
                Some(existing) if existing.next.is_some() && ca.next != existing.next => {
                    CommandResult::Rejected {
                        reason: "a CA rotation is under way".into(),
                    }
                }
                _ => {
                    self.ca = Some(ca.clone());
                    self.bump()
                }
            },
            Op::SetNetwork { network } => match &self.network {
                Some(existing) if existing != network => CommandResult::Rejected {
                    reason: format!(
                        "the cluster network is already {} /{} ({})",
                        existing.cidr, existing.subnet_len, existing.backend
                    ),
                },
                _ => {
                    self.network = Some(network.clone());
                    self.bump()
                }
            },
            Op::Place { updates } => self.place(updates, now),
            Op::Report { node, report } => self.report(*node, report, now),
            Op::GitopsSync { sync } => self.gitops_sync(sync, now),
            Op::GitopsRequestSync { gitops } => self.gitops_request_sync(gitops),
            Op::SetNodeAvailability { id, availability } => {
                self.set_node_availability(*id, *availability, now)
            }
            Op::Noop => self.bump(),
            Op::Restore { state } => self.restore(state, now),
            Op::ForceNewCluster { state, keep } => self.force_new_cluster(state, *keep, now),
            Op::SealSecrets { objects } => self.seal_secrets(objects, now),
            Op::StartCaRotation { next } => self.start_ca_rotation(next),
            Op::FinishCaRotation { fingerprint } => self.finish_ca_rotation(fingerprint),
            Op::Reports { reports } => self.reports(reports, now),
            Op::FinishKeyMigration { fingerprint } => self.finish_key_migration(fingerprint),
            Op::AbortCaRotation { fingerprint } => self.abort_ca_rotation(fingerprint, now),
            Op::FinishCaAbort { fingerprint } => self.finish_ca_abort(fingerprint),
            Op::RecordUserCert { cert } => self.record_user_cert(cert, now),
            Op::RevokeUserCerts {
                name,
                serial,
                expires_ms,
            } => self.revoke_user_certs(name.as_deref(), serial.as_deref(), *expires_ms, now),
        }
    }

    fn push_event(&mut self, event: Event) {
        self.events.push_back(event);
        while self.events.len() > EVENT_WINDOW {
            self.events.pop_front();
        }
    }

    fn place(&mut self, updates: &[PlacementUpdate], now: u64) -> CommandResult {
        let revision = self.revision + 1;
        let mut changed = false;
        for update in updates {
            let current = self.objects.get(&update.key).map(|o| o.generation);
            match (&update.placement, current) {
                // Object gone: its placement goes too, whatever generation was seen.
                (_, None) => {
                    changed |= self.placements.remove(&update.key).is_some();
                    changed |= self.placement_errors.remove(&update.key).is_some();
                }
                (_, Some(generation)) if generation != update.generation => {}
                (Some(placement), Some(_)) => {
                    if self.placements.get(&update.key) != Some(placement) {
                        self.placements
                            .insert(update.key.clone(), placement.clone());
                        changed = true;
                    }
                    changed |= self.placement_errors.remove(&update.key).is_some();
                }
                (None, Some(_)) => changed |= self.placements.remove(&update.key).is_some(),
            }
            if let (Some(error), Some(generation)) = (&update.error, current)
                && generation == update.generation
                && self.placement_errors.get(&update.key) != Some(error)
            {
                self.placement_errors
                    .insert(update.key.clone(), error.clone());
                self.push_event(Event {
                    revision,
                    at_ms: now,
                    subject: update.key.to_string(),
                    replica: None,
                    node: None,
                    reason: "FailedScheduling".into(),
                    message: error.clone(),
                });
                changed = true;
            }
        }
        self.bump_if(changed)
    }

    fn report(&mut self, node: NodeId, report: &NodeReport, now: u64) -> CommandResult {
        if !self.nodes.contains_key(&node) {
            return CommandResult::Rejected {
                reason: format!("node {node} is not a member"),
            };
        }
        self.record_report(node, report, self.revision + 1, now);
        self.bump()
    }

    /// [`Op::Reports`]: each in turn; one revision for all.
    fn reports(&mut self, reports: &[ReportDelta], now: u64) -> CommandResult {
        let revision = self.revision + 1;
        let (mut resend, mut unknown) = (Vec::new(), Vec::new());
        let mut changed = false;
        for delta in reports {
            let node = delta.node;
            if !self.nodes.contains_key(&node) {
                unknown.push(node);
                continue;
            }
            if delta.is_full() {
                let report = delta
                    .apply_to(None)
                    .expect("a full report applies to anything");
                self.record_report(node, &report, revision, now);
                changed = true;
                continue;
            }
            match delta.apply_to(self.reports.get(&node)) {
                Ok(report) => {
                    self.delta_events(delta, revision, now);
                    self.reports.insert(node, report);
                    changed = true;
                }
                Err(_) => resend.push(node),
            }
        }
        if changed {
            self.revision = revision;
        }
        CommandResult::Reported {
            revision: self.revision,
            resend,
            unknown,
        }
    }

    /// The events of a delta that applies: a replica named in `set` whose phase or readiness
    /// differs from the report held (or that is new), then each removed one that was there; in
    /// the delta's order. O(r log d) for r replicas held and d named.
    fn delta_events(&mut self, delta: &ReportDelta, revision: u64, now: u64) {
        let node = delta.node;
        let mut events = Vec::new();
        {
            let previous = self
                .reports
                .get(&node)
                .map(|r| r.replicas.as_slice())
                .unwrap_or_default();
            let named: BTreeSet<(&ObjectKey, u32)> = delta
                .set
                .iter()
                .map(|r| (&r.key, r.index))
                .chain(delta.removed.iter().map(|r| (&r.key, r.index)))
                .collect();
            // Only the replicas the delta names are looked up: first entry wins, as in a full
            // report.
            let mut before: BTreeMap<(&ObjectKey, u32), &ReplicaReport> = BTreeMap::new();
            for r in previous {
                let k = (&r.key, r.index);
                if named.contains(&k) {
                    before.entry(k).or_insert(r);
                }
            }
            for replica in &delta.set {
                let moved = before
                    .get(&(&replica.key, replica.index))
                    .is_none_or(|b| b.phase != replica.phase || b.ready != replica.ready);
                if moved {
                    events.push(replica_event(node, replica, revision, now));
                }
            }
            for gone in &delta.removed {
                if let Some(b) = before.get(&(&gone.key, gone.index)) {
                    events.push(removed_event(node, b, revision, now));
                }
            }
        }
        for event in events {
            self.push_event(event);
        }
    }

    /// Replaces node's report with `report`, with the events of what moved, at `revision`.
    fn record_report(&mut self, node: NodeId, report: &NodeReport, revision: u64, now: u64) {
        // Replicas by (object, index), before and after: O(r log r), not O(r^2), for a node
        // that runs many. Events in the same order as ever (the report's, then the previous
        // report's), so that every version of the state machine records the same.
        let mut events = Vec::new();
        {
            let previous = self.reports.get(&node).map(|r| r.replicas.as_slice());
            // Reversed: where a report names a replica twice, its first entry counts, as before.
            let before: BTreeMap<(&ObjectKey, u32), &ReplicaReport> = previous
                .unwrap_or_default()
                .iter()
                .rev()
                .map(|r| ((&r.key, r.index), r))
                .collect();
            let now_there: BTreeSet<(&ObjectKey, u32)> =
                report.replicas.iter().map(|r| (&r.key, r.index)).collect();
            for replica in &report.replicas {
                let moved = before
                    .get(&(&replica.key, replica.index))
                    .is_none_or(|b| b.phase != replica.phase || b.ready != replica.ready);
                if moved {
                    events.push(replica_event(node, replica, revision, now));
                }
            }
            for gone in previous
                .unwrap_or_default()
                .iter()
                .filter(|b| !now_there.contains(&(&b.key, b.index)))
            {
                events.push(removed_event(node, gone, revision, now));
            }
        }
        for event in events {
            self.push_event(event);
        }
        self.reports.insert(node, report.clone());
    }

    fn set_node_availability(
        &mut self,
        id: NodeId,
        availability: Availability,
        now: u64,
    ) -> CommandResult {
        let Some(node) = self.nodes.get(&id) else {
            return CommandResult::Rejected {
                reason: format!("node {id} is not a member"),
            };
        };
        let before = self.availability.get(&id).copied().unwrap_or_default();
        if before == availability {
            return CommandResult::Done {
                revision: self.revision,
            };
        }
        let event = Event {
            revision: self.revision + 1,
            at_ms: now,
            subject: format!("node/{}", node.name),
            replica: None,
            node: Some(id),
            reason: match availability {
                Availability::Active => "Uncordoned",
                Availability::Cordoned => "Cordoned",
                Availability::Draining => "Draining",
            }
            .into(),
            message: format!("node {} (id {id}) is {availability}", node.name),
        };
        match availability {
            Availability::Active => self.availability.remove(&id),
            other => self.availability.insert(id, other),
        };
        self.push_event(event);
        self.bump()
    }

    fn seal_secrets(&mut self, objects: &[Object], now: u64) -> CommandResult {
        let revision = self.revision + 1;
        let mut changed = false;
        for object in objects {
            let crate::definitions::Spec::Secret(sealed) = &object.spec else {
                continue;
            };
            let Some(stored) = self.objects.get_mut(&object.key()) else {
                continue;
            };
            let same_shape = match &stored.object.spec {
                // Only values still in clear: a seal computed from an older state never
                // replaces a value sealed since (a write that came in meanwhile).
                crate::definitions::Spec::Secret(data) => {
                    data.data.keys().eq(sealed.data.keys())
                        && data
                            .data
                            .values()
                            .all(|v| !v.starts_with(clear_secrets::SEALED_PREFIX))
                        && stored.object.meta == object.meta
                        && stored.object.prefix == object.prefix
                }
                _ => false,
            };
            if same_shape && stored.object != *object {
                stored.object = object.clone();
                stored.revision = revision;
                stored.updated_ms = now;
                changed = true;
            }
        }
        if changed {
            self.revision = revision;
        }
        CommandResult::Done {
            revision: self.revision,
        }
    }

    fn bump(&mut self) -> CommandResult {
        self.revision += 1;
        CommandResult::Done {
            revision: self.revision,
        }
    }

    /// [`Self::bump`] if `changed`; otherwise done at the current revision.
    fn bump_if(&mut self, changed: bool) -> CommandResult {
        if changed {
            self.bump()
        } else {
            CommandResult::Done {
                revision: self.revision,
            }
        }
    }

    fn apply_objects(
        &mut self,
        objects: &[Object],
        owner: Option<&str>,
        now: u64,
    ) -> CommandResult {
        // Refuse the whole batch before touching anything.
        let mut seen = BTreeSet::new();
        for object in objects {
            let key = object.key();
            if !seen.insert(key.clone()) {
                return CommandResult::Rejected {
                    reason: format!("{key} appears twice in one apply"),
                };
            }
            // A gitops object never takes over what someone else holds. A change by hand to an
            // object gitops deployed is allowed: it stays gitops's, which reports it as drift.
            if let Some(reason) = crate::volume::refuse_change(self, object) {
                return CommandResult::Rejected { reason };
            }
            if let (Some(owner), Some(existing)) = (owner, self.objects.get(&key))
                && existing.owner.as_deref() != Some(owner)
            {
                return CommandResult::Rejected {
                    reason: format!(
                        "{key} is held by {}; {owner} leaves it alone",
                        existing
                            .owner
                            .as_deref()
                            .unwrap_or("a hand-applied definition")
                    ),
                };
            }
        }
        if let Err(e) = crate::networks::check_apply(self, objects) {
            return CommandResult::Rejected {
                reason: e.to_string(),
            };
        }
        let revision = self.revision + 1;
        let mut changed = false;
        // Containers definitions that roll anyway (new, or a new template), and configuration,
        // secret and resource objects whose data changed.
        let mut rolled = BTreeSet::new();
        let mut data_changed = BTreeSet::new();
        let outcomes: Vec<ObjectOutcome> = objects
            .iter()
            .map(|object| {
                let key = object.key();
                if object.spec.data().is_some() {
                    data_changed.insert(key.clone());
                }
                let (outcome, generation) = match self.objects.get_mut(&key) {
                    Some(stored) if stored.object == *object => {
                        data_changed.remove(&key);
                        (Outcome::Unchanged, stored.generation)
                    }
                    Some(stored) => {
                        if !same_template(&stored.object, object) {
                            stored.template_generation += 1;
                            rolled.insert(key.clone());
                        }
                        if stored.object.spec.data() == object.spec.data() {
                            // Only its labels changed: its readers render the same.
                            data_changed.remove(&key);
                        }
                        stored.object = object.clone();
                        stored.generation += 1;
                        stored.revision = revision;
                        stored.updated_ms = now;
                        changed = true;
                        (Outcome::Configured, stored.generation)
                    }
                    None => {
                        self.objects.insert(
                            key.clone(),
                            StoredObject {
                                object: object.clone(),
                                generation: 1,
                                template_generation: 1,
                                revision,
                                created_ms: now,
                                updated_ms: now,
                                owner: owner.map(str::to_string),
                            },
                        );
                        changed = true;
                        rolled.insert(key.clone());
                        (Outcome::Created, 1)
                    }
                };
                ObjectOutcome {
                    key,
                    outcome,
                    generation,
                }
            })
            .collect();
        if changed {
            self.revision = revision;
        }
        let touched: BTreeSet<ObjectKey> = outcomes
            .iter()
            .filter(|o| o.outcome != Outcome::Unchanged)
            .map(|o| o.key.clone())
            .collect();
        self.reindex(&touched);
        self.roll_readers(&data_changed, &rolled, revision, now);
        CommandResult::Objects {
            revision: self.revision,
            outcomes,
        }
    }

    fn delete_objects(&mut self, keys: &[ObjectKey], now: u64) -> CommandResult {
        let revision = self.revision + 1;
        let mut changed = false;
        // Deleting a gitops object deletes what it deployed.
        let mut keys = keys.to_vec();
        let mut listed: BTreeSet<ObjectKey> = keys.iter().cloned().collect();
        let mut i = 0;
        while i < keys.len() {
            if keys[i].kind == Kind::Gitops && self.objects.contains_key(&keys[i]) {
                for owned in self.owned_by(&keys[i]) {
                    if listed.insert(owned.clone()) {
                        keys.push(owned);
                    }
                }
            }
            i += 1;
        }
        if let Some(reason) = crate::volume::refuse_delete(self, &keys) {
            return CommandResult::Rejected { reason };
        }
        // Refused before anything changes.
        if let Err(e) = crate::networks::check_delete(self, &keys) {
            return CommandResult::Rejected {
                reason: e.to_string(),
            };
        }
        for key in &keys {
            if key.kind == Kind::Gitops && self.objects.contains_key(key) {
                self.gitops.remove(key);
            }
        }
        let mut data_gone = BTreeSet::new();
        let outcomes: Vec<ObjectOutcome> = keys
            .iter()
            .map(|key| match self.objects.remove(key) {
                Some(stored) => {
                    changed = true;
                    if stored.object.spec.data().is_some() {
                        data_gone.insert(key.clone());
                    }
                    self.placements.remove(key);
                    self.placement_errors.remove(key);
                    ObjectOutcome {
                        key: key.clone(),
                        outcome: Outcome::Deleted,
                        generation: stored.generation,
                    }
                }
                None => ObjectOutcome {
                    key: key.clone(),
                    outcome: Outcome::NotFound,
                    generation: 0,
                },
            })
            .collect();
        if changed {
            self.revision = revision;
        }
        let touched: BTreeSet<ObjectKey> = outcomes
            .iter()
            .filter(|o| o.outcome == Outcome::Deleted)
            .map(|o| o.key.clone())
            .collect();
        self.reindex(&touched);
        self.roll_readers(&data_gone, &BTreeSet::new(), revision, now);
        CommandResult::Objects {
            revision: self.revision,
            outcomes,
        }
    }

    fn restart(&mut self, key: &ObjectKey, now: u64) -> CommandResult {
        if key.kind != Kind::Containers {
            return CommandResult::Rejected {
                reason: restart_refusal(key),
            };
        }
        let Some(stored) = self.objects.get_mut(key) else {
            return CommandResult::Objects {
                revision: self.revision,
                outcomes: vec![ObjectOutcome {
                    key: key.clone(),
                    outcome: Outcome::NotFound,
                    generation: 0,
                }],
            };
        };
        // Like a changed input (see `roll_readers`): the definition and its generation stay as
        // they are, so its placement stays valid; only what its replicas run is new.
        stored.template_generation += 1;
        let (generation, template) = (stored.generation, stored.template_generation);
        self.revision += 1;
        self.push_event(Event {
            revision: self.revision,
            at_ms: now,
            subject: key.to_string(),
            replica: None,
            node: None,
            reason: "Restarted".into(),
            message: format!(
                "restart requested: rolling update of its replicas to template {template}"
            ),
        });
        CommandResult::Objects {
            revision: self.revision,
            outcomes: vec![ObjectOutcome {
                key: key.clone(),
                outcome: Outcome::Restarted,
                generation,
            }],
        }
    }

    fn register_node(&mut self, node: &NodeRecord, now: u64) -> CommandResult {
        if let Some(existing) = self.nodes.values().find(|n| n.name == node.name) {
            return CommandResult::Rejected {
                reason: format!(
                    "a node named {} is already a member (id {})",
                    node.name, existing.id
                ),
            };
        }
        let mut record = node.clone();
        record.lease = match &self.network {
            Some(network) if network.backend != "none" => {
                let taken: Vec<ipnet::Ipv4Net> =
                    self.nodes.values().filter_map(|n| n.lease).collect();
                match lease::allocate_subnet(network.cidr, network.subnet_len, &taken) {
                    Ok(lease) => Some(lease),
                    Err(e) => {
                        return CommandResult::Rejected {
                            reason: format!("cannot give {} a subnet: {e}", node.name),
                        };
                    }
                }
            }
            _ => None,
        };
        self.last_node_id += 1;
        let id = self.last_node_id;
        record.id = id;
        record.joined_ms = now;
        self.nodes.insert(id, record);
        self.revision += 1;
        CommandResult::NodeRegistered { id }
    }

    /// The result of operation `op_id`, if it was applied within the dedup window.
    pub fn recent_result(&self, op_id: &str) -> Option<&CommandResult> {
        self.recent_ops.get(op_id)
    }

    /// Objects of one kind, in key order. Visits only that kind's keys (the kind leads the key
    /// order), not every object.
    pub fn objects_of(&self, kind: Kind) -> impl Iterator<Item = &StoredObject> {
        self.keyed_objects_of(kind).map(|(_, o)| o)
    }

    /// Keys and objects of one kind, in key order (see [`Self::objects_of`]).
    pub fn keyed_objects_of(
        &self,
        kind: Kind,
    ) -> impl Iterator<Item = (&ObjectKey, &StoredObject)> {
        let first = ObjectKey {
            kind,
            group: String::new(),
            name: String::new(),
            prefix: None,
        };
        self.objects
            .range(first..)
            .take_while(move |(key, _)| key.kind == kind)
    }

    /// True when `secret_sha256` names a join token that has not expired at `now`.
    pub fn join_token_valid(&self, secret_sha256: &str, now: u64) -> bool {
        self.join_tokens.iter().any(|t| {
            t.expires_ms > now
                && constant_time_eq(t.secret_sha256.as_bytes(), secret_sha256.as_bytes())
        })
    }
}

fn yes() -> bool {
    true
}

fn one() -> u64 {
    1
}

/// Whether two objects run the same replicas: equal apart from how many and where.
fn same_template(a: &Object, b: &Object) -> bool {
    match (a.spec.as_containers(), b.spec.as_containers()) {
        (Some(x), Some(y)) => {
            let strip = |spec: &crate::definitions::ContainersSpec| {
                let mut spec = spec.clone();
                spec.replicas = 0;
                spec.spread = None;
                spec.node_selector.clear();
                spec.rolling_update = None;
                spec.nodes.clear();
                spec
            };
            a.kind == b.kind && strip(x) == strip(y)
        }
        _ => a == b,
    }
}

fn phase_reason(phase: &str, ready: bool) -> String {
    match (phase, ready) {
        (_, true) => "Ready".into(),
        ("running", false) => "NotReady".into(),
        ("crash-loop", _) => "CrashLoop".into(),
        ("restarting", _) => "BackOff".into(),
        (other, _) => {
            let mut chars = other.chars();
            chars
                .next()
                .map(|c| c.to_uppercase().chain(chars).collect())
                .unwrap_or_default()
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_delta;
#[cfg(test)]
mod tests_reports;
#[cfg(test)]
mod tests_slots;

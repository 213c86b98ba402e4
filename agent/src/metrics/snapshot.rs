//! What a scrape reads at that moment, rendered by a pure function ([`render`]).
//!
//! Cluster-wide series (`smr_replicas`, `smr_gitops_*`) come from the answering node's applied
//! state and are the same on every node up to replication lag: aggregate them with `max by`,
//! not `sum`. The others (`smr_store_*`, `smr_overlay_*`, `smr_dns_*`) are this node's own.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use super::Labels;
use crate::definitions::ObjectKey;
use crate::node::{Node, now_ms};
use crate::scheduler::Placement;
use crate::state::shared::SharedMap;
use crate::state::{ClusterState, GitopsState, NodeId, NodeRecord, NodeReport};
use crate::store::{ServerState, StoreStatus};

/// Everything [`render`] needs, gathered from the running node.
pub struct Input {
    pub status: StoreStatus,
    /// The highest log index known committed (see [`crate::store::Store::commit_index`]).
    pub commit_index: Option<u64>,
    /// This node's applied state (absent if it cannot be read).
    pub state: Option<Arc<ClusterState>>,
    pub peers: Vec<overlay::PeerStats>,
    pub dns: [(&'static str, u64); 7],
    pub now_ms: u64,
}

impl Input {
    /// Reads the node: store status, applied state (stale read: a scrape needs no quorum),
    /// overlay device and DNS counters.
    pub async fn gather(node: &Node) -> Input {
        let peers = match node.overlay.peer_stats().await {
            Ok(peers) => peers,
            Err(e) => {
                tracing::debug!("metrics: WireGuard peer statistics: {e}");
                Vec::new()
            }
        };
        Input {
            status: node.store_status(),
            commit_index: node.commit_index(),
            state: node.state(crate::node::Consistency::Stale).await.ok(),
            peers,
            dns: dns::stats::query_counts(),
            now_ms: now_ms(),
        }
    }
}

const ROLES: [(ServerState, &str); 6] = [
    (ServerState::Leader, "leader"),
    (ServerState::Follower, "follower"),
    (ServerState::Candidate, "candidate"),
    (ServerState::Learner, "learner"),
    (ServerState::Shutdown, "shutdown"),
    (ServerState::Degraded, "degraded"),
];

const GITOPS_STATES: [GitopsState; 6] = [
    GitopsState::Pending,
    GitopsState::Synced,
    GitopsState::OutOfSync,
    GitopsState::Drifted,
    GitopsState::Conflict,
    GitopsState::Error,
];

type GaugeF = Gauge<f64, AtomicU64>;

fn gauge(registry: &mut Registry, name: &str, help: &str, value: i64) {
    let g = Gauge::<i64>::default();
    g.set(value);
    registry.register(name, help, g);
}

/// The scrape-time series of `input` (see the module doc), in a registry of their own.
pub fn render(input: &Input) -> Registry {
    let mut r = Registry::with_prefix("smr");
    let status = &input.status;

    let info = Family::<Labels, Gauge>::default();
    info.get_or_create(&vec![("id", status.id.to_string())])
        .set(1);
    r.register("node_info", "This node's id", info);

    let role = Family::<Labels, Gauge>::default();
    for (state, name) in ROLES {
        role.get_or_create(&vec![("role", name.to_string())])
            .set(i64::from(status.state == state));
    }
    r.register(
        "store_role",
        "1 for this node's current store role (leader, follower, candidate, learner, shutdown, \
         degraded)",
        role,
    );
    let index = |i: Option<u64>| i.unwrap_or(0) as i64;
    gauge(
        &mut r,
        "store_term",
        "Current Raft term",
        status.term as i64,
    );
    gauge(
        &mut r,
        "store_last_log_index",
        "Index of the last entry in this node's log",
        index(status.last_log_index),
    );
    gauge(
        &mut r,
        "store_commit_index",
        "Highest log index known committed (on the leader: replicated to a quorum; elsewhere: \
         applied)",
        index(input.commit_index),
    );
    gauge(
        &mut r,
        "store_applied_index",
        "Index of the last entry applied to this node's state",
        index(status.last_applied),
    );
    gauge(
        &mut r,
        "store_voters",
        "Voters in the Raft membership",
        status.voters.len() as i64,
    );
    gauge(
        &mut r,
        "store_leader_id",
        "Node id of the known leader (0: none)",
        status.leader.unwrap_or(0) as i64,
    );
    gauge(
        &mut r,
        "store_degraded",
        "1 while this node refuses writes (data dir full, read-only or failing)",
        i64::from(status.problem.is_some()),
    );

    if let Some(state) = &input.state {
        replicas(&mut r, state);
        gitops(&mut r, state, input.now_ms);
    }
    overlay(&mut r, input);

    let queries = Family::<Labels, Counter>::default();
    for (result, count) in input.dns {
        queries
            .get_or_create(&vec![("result", result.to_string())])
            .inc_by(count);
    }
    r.register(
        "dns_queries",
        "DNS queries this node's *.private server answered, by response code",
        queries,
    );
    r
}

/// `smr_replicas` and `smr_replicas_ready`: placed replicas by node label (its name, or its id
/// if it has none) and phase, and the ready ones by node label.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct ReplicaCounts {
    pub by_phase: BTreeMap<(String, String), i64>,
    pub ready: BTreeMap<String, i64>,
}

/// What [`crate::views::replicas`] says of every placed replica, counted without building the
/// views (a scrape at 100,000 replicas built 100,000 views of eight strings each).
pub(crate) fn count_replicas(state: &ClusterState) -> ReplicaCounts {
    // What each node reports, by (node, object, index); the first entry for a replica counts,
    // as in `views::replicas`.
    let mut reports: HashMap<(NodeId, &ObjectKey, u32), (&str, bool)> = HashMap::new();
    for (node, report) in state.reports.iter() {
        for r in &report.replicas {
            reports
                .entry((*node, &r.key, r.index))
                .or_insert((r.phase.as_str(), r.ready));
        }
    }
    let pending = crate::scheduler::Phase::Pending.as_str();
    let mut by_phase: BTreeMap<(NodeId, &str), i64> = BTreeMap::new();
    let mut ready: BTreeMap<NodeId, i64> = BTreeMap::new();
    for (key, placement) in &state.placements {
        for (index, slot) in &placement.replicas {
            let (phase, is_ready) = reports
                .get(&(slot.node, key, *index))
                .copied()
                .unwrap_or((pending, false));
            *by_phase.entry((slot.node, phase)).or_default() += 1;
            *ready.entry(slot.node).or_default() += i64::from(is_ready);
        }
    }
    let label = |id: &NodeId| match state.nodes.get(id) {
        Some(n) if !n.name.is_empty() => n.name.clone(),
        _ => id.to_string(),
    };
    let mut counts = ReplicaCounts::default();
    for ((node, phase), n) in by_phase {
        *counts
            .by_phase
            .entry((label(&node), phase.to_string()))
            .or_default() += n;
    }
    for (node, n) in ready {
        *counts.ready.entry(label(&node)).or_default() += n;
    }
    counts
}

/// The counts of the last state scraped, with the versions of what they were counted from
/// (held, so that "the same version" cannot be a new one at a reused address).
struct Counted {
    placements: SharedMap<ObjectKey, Placement>,
    reports: SharedMap<NodeId, NodeReport>,
    nodes: SharedMap<NodeId, NodeRecord>,
    counts: Arc<ReplicaCounts>,
}

static COUNTED: Mutex<Option<Counted>> = Mutex::new(None);

/// [`count_replicas`], counted again only when the placements, reports or nodes changed since
/// the last scrape: an idle cluster scraped every few seconds counts once.
fn replica_counts(state: &ClusterState) -> Arc<ReplicaCounts> {
    let mut last = COUNTED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(c) = last.as_ref()
        && c.placements.ptr_eq(&state.placements)
        && c.reports.ptr_eq(&state.reports)
        && c.nodes.ptr_eq(&state.nodes)
    {
        return c.counts.clone();
    }
    let counts = Arc::new(count_replicas(state));
    *last = Some(Counted {
        placements: state.placements.clone(),
        reports: state.reports.clone(),
        nodes: state.nodes.clone(),
        counts: counts.clone(),
    });
    counts
}

fn replicas(r: &mut Registry, state: &ClusterState) {
    let counts = replica_counts(state);
    let phases = Family::<Labels, Gauge>::default();
    for ((node, phase), n) in &counts.by_phase {
        phases
            .get_or_create(&vec![("node", node.clone()), ("phase", phase.clone())])
            .set(*n);
    }
    r.register(
        "replicas",
        "Placed replicas by node and phase (pending, running, crash-loop, ...), cluster-wide",
        phases,
    );
    let ready_family = Family::<Labels, Gauge>::default();
    for (node, n) in &counts.ready {
        ready_family
            .get_or_create(&vec![("node", node.clone())])
            .set(*n);
    }
    r.register(
        "replicas_ready",
        "Placed replicas that are ready, by node, cluster-wide",
        ready_family,
    );
}

fn gitops(r: &mut Registry, state: &ClusterState, now_ms: u64) {
    let states = Family::<Labels, Gauge>::default();
    let last = Family::<Labels, GaugeF>::default();
    let age = Family::<Labels, GaugeF>::default();
    for (key, status) in &state.gitops {
        let name = format!("{}/{}", key.group, key.name);
        for s in GITOPS_STATES {
            states
                .get_or_create(&vec![("gitops", name.clone()), ("state", s.to_string())])
                .set(i64::from(status.state == s));
        }
        if let Some(at) = status.last_sync_ms {
            last.get_or_create(&vec![("gitops", name.clone())])
                .set(at as f64 / 1000.0);
            age.get_or_create(&vec![("gitops", name)])
                .set(now_ms.saturating_sub(at) as f64 / 1000.0);
        }
    }
    r.register(
        "gitops_status",
        "1 for the current state of each gitops object (pending, synced, out-of-sync, drifted, \
         conflict, error)",
        states,
    );
    r.register_with_unit(
        "gitops_last_sync_timestamp",
        "When the cluster last took a commit of each gitops object (Unix time)",
        Unit::Seconds,
        last,
    );
    r.register_with_unit(
        "gitops_last_sync_age",
        "Time since the cluster last took a commit of each gitops object",
        Unit::Seconds,
        age,
    );
}

fn overlay(r: &mut Registry, input: &Input) {
    let names: BTreeMap<String, String> = input
        .state
        .iter()
        .flat_map(|s| s.nodes.values())
        .filter_map(|n| Some((n.wg_public_key.clone()?, n.name.clone())))
        .collect();
    gauge(
        r,
        "overlay_peers",
        "WireGuard peers configured on this node's device",
        input.peers.len() as i64,
    );
    let handshake = Family::<Labels, GaugeF>::default();
    let rx = Family::<Labels, Counter>::default();
    let tx = Family::<Labels, Counter>::default();
    for peer in &input.peers {
        let key = peer.public_key.to_string();
        let name = names.get(&key).cloned().unwrap_or(key);
        let labels = vec![("peer", name)];
        if let Some(at) = peer
            .last_handshake
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        {
            handshake.get_or_create(&labels).set(at.as_secs_f64());
        }
        rx.get_or_create(&labels).inc_by(peer.rx_bytes);
        tx.get_or_create(&labels).inc_by(peer.tx_bytes);
    }
    r.register_with_unit(
        "overlay_peer_last_handshake_timestamp",
        "Latest completed WireGuard handshake with each peer (Unix time; absent before the first)",
        Unit::Seconds,
        handshake,
    );
    r.register_with_unit(
        "overlay_peer_receive",
        "Bytes received from each WireGuard peer",
        Unit::Bytes,
        rx,
    );
    r.register_with_unit(
        "overlay_peer_transmit",
        "Bytes sent to each WireGuard peer",
        Unit::Bytes,
        tx,
    );
}

//! Placement: which node runs which replica index of a workload.
//!
//! The Raft leader calls [`place`] whenever a workload, the node set or node liveness changes,
//! and stores the resulting [`Placement`] in the replicated state; agents only read it.
//!
//! Rules, in order:
//! 1. Eligible nodes match every `node_selector` label and, for [`Spread::Specific`], are one of
//!    the listed agents (by id, or by name). Only live eligible nodes receive replicas.
//! 2. Stability first. A slot of the current placement stays where it is, with its generation,
//!    as long as its node is live and eligible. Scale down drops the highest indexes; scale up
//!    fills the lowest free indexes `1..=replicas`. Slots on dead or no longer eligible nodes
//!    (or on nodes that left the cluster) are placed again on live eligible ones, at the
//!    workload's current generation (they are new containers anyway).
//! 3. Each slot to fill goes to the live eligible node with the fewest replicas of this
//!    workload, then the fewest replicas of all other workloads (the optional load map, see
//!    [`node_load`]), then the lowest id ([`Spread::Uniform`]) or the earliest position in the
//!    agents list ([`Spread::Specific`], so `agents: [1, 2]` with 3 replicas gives 1, 2, 1).
//!
//! Consequence (a deliberate choice): a fresh placement, scale up and moving replicas off dead
//! nodes keep the per-node counts within one of each other, but nothing is moved back when a
//! node returns or joins, and a scale down may leave the counts uneven. Restarting healthy
//! replicas only to even out counts is churn we do not do automatically.
//!
//! Surge slots (see [`super::rollout`]) are temporary slots above `replicas`, flagged
//! [`ReplicaSlot::surge`]; [`place`] keeps them while their node is live and eligible, and turns
//! one into a regular slot if a scale up reaches its index.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use super::ScheduleError;

pub type NodeId = u64;

pub const DEFAULT_MAX_UNAVAILABLE: u32 = 1;
pub const DEFAULT_MAX_SURGE: u32 = 0;
/// An upper bound on `replicas`, so that a typo cannot make the leader allocate billions of slots.
pub const MAX_REPLICAS: u32 = 10_000;

/// A node as the scheduler sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    pub id: NodeId,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub live: bool,
    pub last_seen_ms: u64,
    /// Whether it takes new replicas (`smrctl cordon`, `drain`).
    pub availability: Availability,
}

/// Whether a node takes new replicas, as the operator set it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Availability {
    /// Takes new replicas.
    #[default]
    Active,
    /// Keeps the replicas it runs, takes no new ones (`smrctl cordon`).
    Cordoned,
    /// Takes no new replicas, and its replicas move to other nodes (`smrctl drain`).
    Draining,
}

impl fmt::Display for Availability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Availability::Active => "active",
            Availability::Cordoned => "cordoned",
            Availability::Draining => "draining",
        })
    }
}

/// An entry of `spread.agents`: a node id (join order from 1) or an agent name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentRef {
    Id(NodeId),
    Name(String),
}

impl fmt::Display for AgentRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AgentRef::Id(id) => write!(f, "{id}"),
            AgentRef::Name(name) => write!(f, "{name:?}"),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Spread {
    /// Evenly over all eligible nodes.
    #[default]
    Uniform,
    /// Evenly over the listed agents only, round robin in list order.
    Specific(Vec<AgentRef>),
}

/// A `containers` definition, reduced to what placement and rollout need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    /// `containers/<group>/<name>`.
    pub key: String,
    pub group: String,
    pub name: String,
    pub replicas: u32,
    pub spread: Spread,
    pub node_selector: BTreeMap<String, String>,
    /// The definition's generation; new and replaced replicas run this one.
    pub generation: u64,
    pub max_unavailable: u32,
    pub max_surge: u32,
}

impl Workload {
    /// A uniform workload at generation 1 with default rollout settings.
    pub fn new(group: &str, name: &str, replicas: u32) -> Self {
        Workload {
            key: format!("containers/{group}/{name}"),
            group: group.to_owned(),
            name: name.to_owned(),
            replicas,
            spread: Spread::Uniform,
            node_selector: BTreeMap::new(),
            generation: 1,
            max_unavailable: DEFAULT_MAX_UNAVAILABLE,
            max_surge: DEFAULT_MAX_SURGE,
        }
    }
}

/// Where one replica index runs and which generation of the definition it should run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaSlot {
    pub node: NodeId,
    pub generation: u64,
    /// A temporary extra replica of a rolling update (index above `replicas`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub surge: bool,
    /// While the replica moves off a draining node: the node that keeps running its old
    /// container until the new one on `node` is ready (see [`super::drain`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<NodeId>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl ReplicaSlot {
    pub fn new(node: NodeId, generation: u64) -> Self {
        ReplicaSlot {
            node,
            generation,
            surge: false,
            previous: None,
        }
    }
}

/// The placement of one workload: replica index (from 1) to slot.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    pub replicas: BTreeMap<u32, ReplicaSlot>,
}

impl Placement {
    /// Number of slots (regular and surge) per node; nodes without slots are absent.
    pub fn per_node(&self) -> BTreeMap<NodeId, u32> {
        let mut counts = BTreeMap::new();
        for slot in self.replicas.values() {
            *counts.entry(slot.node).or_insert(0) += 1;
        }
        counts
    }

    /// The slots a node must run, by index: its own, and those moving off it whose new replica
    /// is not ready yet.
    pub fn on_node(&self, node: NodeId) -> impl Iterator<Item = (u32, &ReplicaSlot)> + '_ {
        self.replicas
            .iter()
            .filter(move |(_, slot)| slot.node == node || slot.previous == Some(node))
            .map(|(&index, slot)| (index, slot))
    }

    /// Whether slot `index` is among [`Placement::on_node`]'s for `node`, in O(log r).
    pub fn runs_on(&self, node: NodeId, index: u32) -> bool {
        self.replicas
            .get(&index)
            .is_some_and(|slot| slot.node == node || slot.previous == Some(node))
    }
}

/// Replicas per node over all placements except the one under `exclude` (a workload key):
/// the load map for [`place_with_load`].
pub fn node_load(placements: &BTreeMap<String, Placement>, exclude: &str) -> BTreeMap<NodeId, u32> {
    let mut load = BTreeMap::new();
    for (key, placement) in placements {
        if key == exclude {
            continue;
        }
        for (node, count) in placement.per_node() {
            *load.entry(node).or_insert(0) += count;
        }
    }
    load
}

/// [`place_with_load`] without a load map.
pub fn place(
    workload: &Workload,
    nodes: &[NodeInfo],
    current: Option<&Placement>,
) -> Result<Placement, ScheduleError> {
    place_with_load(workload, nodes, current, &BTreeMap::new())
}

/// Place `workload` on `nodes`, keeping what can be kept of `current` (see the module doc).
/// `load` counts the replicas of the other workloads per node (see [`node_load`]).
pub fn place_with_load(
    workload: &Workload,
    nodes: &[NodeInfo],
    current: Option<&Placement>,
    load: &BTreeMap<NodeId, u32>,
) -> Result<Placement, ScheduleError> {
    if workload.replicas > MAX_REPLICAS {
        return Err(ScheduleError::TooManyReplicas {
            workload: workload.key.clone(),
            replicas: workload.replicas,
            max: MAX_REPLICAS,
        });
    }
    if workload.replicas == 0 {
        return Ok(Placement::default());
    }
    // Live eligible node id -> rank for the last tie-break. Slots stay on cordoned or draining
    // nodes (a drain moves them); new slots go to active nodes only.
    let candidates = live_eligible(workload, nodes)?;
    let active = active_only(&candidates, nodes);

    let mut slots = BTreeMap::new();
    let mut count: BTreeMap<NodeId, u32> = BTreeMap::new();
    if let Some(current) = current {
        for (&index, slot) in &current.replicas {
            let keep = index >= 1
                && candidates.contains_key(&slot.node)
                && (index <= workload.replicas || slot.surge);
            if !keep {
                continue;
            }
            let mut slot = slot.clone();
            if index <= workload.replicas {
                slot.surge = false;
            }
            *count.entry(slot.node).or_insert(0) += 1;
            slots.insert(index, slot);
        }
    }
    // The active nodes ordered as `least_loaded` picks them: (count, load, rank, id), the least
    // first. Built only when a slot is missing; each pick takes the first and puts it back with
    // one more, so placing r replicas on n nodes costs O((n + r) log n), not O(n r).
    let mut queue: Option<BTreeSet<(u32, u32, u64, NodeId)>> = None;
    for index in 1..=workload.replicas {
        if slots.contains_key(&index) {
            continue;
        }
        let queue = queue.get_or_insert_with(|| {
            active
                .iter()
                .map(|(&id, &rank)| {
                    (
                        count.get(&id).copied().unwrap_or(0),
                        load.get(&id).copied().unwrap_or(0),
                        rank,
                        id,
                    )
                })
                .collect()
        });
        let (c, l, rank, node) =
            queue
                .pop_first()
                .ok_or_else(|| ScheduleError::AllEligibleCordoned {
                    workload: workload.key.clone(),
                    nodes: names(candidates.keys(), nodes),
                })?;
        queue.insert((c + 1, l, rank, node));
        *count.entry(node).or_insert(0) += 1;
        slots.insert(index, ReplicaSlot::new(node, workload.generation));
    }
    Ok(Placement { replicas: slots })
}

/// The candidates that take new replicas.
pub(super) fn active_only(
    candidates: &BTreeMap<NodeId, u64>,
    nodes: &[NodeInfo],
) -> BTreeMap<NodeId, u64> {
    candidates
        .iter()
        .filter(|(id, _)| {
            nodes
                .iter()
                .any(|n| n.id == **id && n.availability == Availability::Active)
        })
        .map(|(id, rank)| (*id, *rank))
        .collect()
}

/// The candidate with the fewest replicas of this workload (`count`), then of the others
/// (`load`), then the lowest rank.
pub(super) fn least_loaded(
    candidates: &BTreeMap<NodeId, u64>,
    count: &BTreeMap<NodeId, u32>,
    load: &BTreeMap<NodeId, u32>,
) -> Option<NodeId> {
    candidates
        .iter()
        .min_by_key(|&(id, rank)| {
            (
                count.get(id).copied().unwrap_or(0),
                load.get(id).copied().unwrap_or(0),
                *rank,
            )
        })
        .map(|(&id, _)| id)
}

fn names<'a>(ids: impl Iterator<Item = &'a NodeId>, nodes: &[NodeInfo]) -> String {
    ids.filter_map(|id| nodes.iter().find(|n| n.id == *id))
        .map(|n| format!("{} {}", n.id, n.name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The live eligible nodes with their tie-break rank, or why there are none.
pub(super) fn live_eligible(
    workload: &Workload,
    nodes: &[NodeInfo],
) -> Result<BTreeMap<NodeId, u64>, ScheduleError> {
    let key = || workload.key.clone();
    if nodes.is_empty() {
        return Err(ScheduleError::NoNodes { workload: key() });
    }
    // Candidates by spread, with their rank.
    let mut listed: Vec<(&NodeInfo, u64)> = Vec::new();
    match &workload.spread {
        Spread::Uniform => listed.extend(nodes.iter().map(|n| (n, n.id))),
        Spread::Specific(agents) => {
            let mut seen = BTreeSet::new();
            for (position, agent) in agents.iter().enumerate() {
                if let Some(node) = resolve(agent, nodes)
                    && seen.insert(node.id)
                {
                    listed.push((node, position as u64));
                }
            }
            if listed.is_empty() {
                let mut known: Vec<String> = nodes
                    .iter()
                    .map(|n| format!("{} {}", n.id, n.name))
                    .collect();
                known.sort();
                return Err(ScheduleError::UnknownAgents {
                    workload: key(),
                    agents: join(agents.iter()),
                    known: known.join(", "),
                });
            }
        }
    }
    let matching: Vec<(&NodeInfo, u64)> = listed
        .into_iter()
        .filter(|(node, _)| {
            workload
                .node_selector
                .iter()
                .all(|(k, v)| node.labels.get(k) == Some(v))
        })
        .collect();
    if matching.is_empty() {
        let selector = format_selector(&workload.node_selector);
        return Err(match &workload.spread {
            Spread::Uniform => ScheduleError::SelectorMatchesNone {
                workload: key(),
                selector,
                nodes: nodes.len(),
            },
            Spread::Specific(agents) => ScheduleError::ListedAgentsExcludedBySelector {
                workload: key(),
                agents: join(agents.iter()),
                selector,
            },
        });
    }
    let live: BTreeMap<NodeId, u64> = matching
        .iter()
        .filter(|(node, _)| node.live)
        .map(|(node, rank)| (node.id, *rank))
        .collect();
    if live.is_empty() {
        let mut down: Vec<&NodeInfo> = matching.iter().map(|(node, _)| *node).collect();
        down.sort_by_key(|n| n.id);
        let names: Vec<String> = down
            .iter()
            .map(|n| format!("{} {}", n.id, n.name))
            .collect();
        return Err(ScheduleError::AllEligibleDown {
            workload: key(),
            nodes: names.join(", "),
        });
    }
    Ok(live)
}

/// A name that is no node's name but parses as a number is taken as an id ("2" in YAML).
fn resolve<'a>(agent: &AgentRef, nodes: &'a [NodeInfo]) -> Option<&'a NodeInfo> {
    match agent {
        AgentRef::Id(id) => nodes.iter().find(|n| n.id == *id),
        AgentRef::Name(name) => nodes.iter().find(|n| &n.name == name).or_else(|| {
            let id: NodeId = name.parse().ok()?;
            nodes.iter().find(|n| n.id == id)
        }),
    }
}

fn join<T: fmt::Display>(items: impl Iterator<Item = T>) -> String {
    items.map(|i| i.to_string()).collect::<Vec<_>>().join(", ")
}

fn format_selector(selector: &BTreeMap<String, String>) -> String {
    let pairs: Vec<String> = selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{{{}}}", pairs.join(", "))
}

#[cfg(test)]
mod tests;

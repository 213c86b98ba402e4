//! Bridge networks (`driver: bridge`) on one node, pure: what Docker network a bridge network
//! object is ([`bridge_config`]) and what a node does about its bridge networks
//! ([`plan_bridges`]). Like volumes: created on the nodes whose replicas join them before the
//! replicas' containers, marked with smr's labels, and a same-named network smr did not create is
//! never touched (the replicas that need it are blocked, saying so). Unlike volumes they hold no
//! data: one no replica of this node needs and no container uses is removed.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::Ipv4Net;

use super::{BRIDGE_LABEL, BridgeNetwork, SUBNET_LABEL, bridge_networks};
use crate::container::{ContainerConfig, labels};
use crate::node_resource::{self, Action, Plan, Resource, Shown};
use crate::state::ClusterState;

/// What Docker needs to create one bridge network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BridgeConfig {
    /// The Docker network's name, `smr.<group>.<name>`.
    pub name: String,
    pub subnet: Ipv4Net,
    pub gateway: std::net::Ipv4Addr,
    /// The Linux bridge's name (`smrb<hash>`).
    pub bridge: String,
    /// smr's labels: managed, [`BRIDGE_LABEL`], [`SUBNET_LABEL`].
    pub labels: BTreeMap<String, String>,
}

/// What Docker shows of one network on a node.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct NetworkInfo {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// Containers (by name, managed or not, in any state) connected to it.
    pub users: Vec<String>,
}

impl NetworkInfo {
    /// A bridge network smr made (overlay networks and Docker's own are not).
    pub fn ours(&self) -> bool {
        self.labels.get(labels::MANAGED).map(String::as_str) == Some("true")
            && self.labels.contains_key(BRIDGE_LABEL)
    }
}

/// The Docker network of a bridge network object.
pub fn bridge_config(n: &BridgeNetwork) -> BridgeConfig {
    BridgeConfig {
        name: n.docker_name(),
        subnet: n.subnet,
        gateway: n.gateway(),
        bridge: n.bridge(),
        labels: BTreeMap::from([
            (labels::MANAGED.to_string(), "true".to_string()),
            (BRIDGE_LABEL.to_string(), n.label()),
            (SUBNET_LABEL.to_string(), n.subnet.to_string()),
        ]),
    }
}

/// The Docker networks a container configuration joins.
pub fn joined(c: &ContainerConfig) -> impl Iterator<Item = &str> {
    c.network
        .iter()
        .chain(&c.extra_networks)
        .map(String::as_str)
}

/// What a node does about a bridge network. A removal is of a bridge network smr created that
/// no replica here needs (or that is recreated on a new subnet).
pub type NetworkAction = Action<BridgeConfig>;

/// The result of [`plan_bridges`].
pub type BridgePlan = Plan<BridgeConfig>;

impl Shown for NetworkInfo {
    fn name(&self) -> &str {
        &self.name
    }
    fn labels(&self) -> &BTreeMap<String, String> {
        &self.labels
    }
    fn users(&self) -> &[String] {
        &self.users
    }
    fn ours(&self) -> bool {
        NetworkInfo::ours(self)
    }
}

impl Resource for BridgeConfig {
    type Shown = NetworkInfo;
    const NOUN: &'static str = "network";
    const A_NOUN: &'static str = "a Docker network";
    const MATCH_LABEL: &'static str = SUBNET_LABEL;

    fn labels(&self) -> &BTreeMap<String, String> {
        &self.labels
    }
    fn recreating(&self, name: &str) -> String {
        format!("recreating network {name} on {}", self.subnet)
    }
    fn mismatch_in_use(&self, name: &str, users: &str) -> String {
        format!(
            "network {name} on this node is on another subnet than {} and is used by {users}",
            self.subnet
        )
    }
}

/// The bridge network actions of a node: `needed` are the Docker networks its replicas join,
/// `observed` what Docker shows (`Err`: it could not be listed), `errors` the last failed action
/// per network name. Creates what a replica needs and is missing; removes smr's bridge networks
/// that no replica here needs once no container uses them.
pub fn plan_bridges(
    state: &ClusterState,
    needed: &BTreeSet<String>,
    observed: Result<&[NetworkInfo], &str>,
    errors: &BTreeMap<String, String>,
) -> BridgePlan {
    let objects: BTreeMap<String, BridgeConfig> = bridge_networks(state)
        .iter()
        .map(|n| (n.docker_name(), bridge_config(n)))
        .collect();
    // Bridge networks hold no data: one no replica here needs goes.
    let not_needed = |n: &NetworkInfo, needed: &BTreeSet<&String>| !needed.contains(&n.name);
    node_resource::plan(&objects, needed, observed, errors, not_needed)
}

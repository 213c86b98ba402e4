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
use crate::state::ClusterState;
use crate::volume::Missing;

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

/// What a node does about a bridge network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetworkAction {
    Create(BridgeConfig),
    /// Removes a bridge network smr created that no replica here needs (or that is recreated on
    /// a new subnet), only once no container uses it.
    Remove {
        name: String,
    },
}

/// The result of [`plan_bridges`].
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct BridgePlan {
    pub actions: Vec<NetworkAction>,
    /// Bridge networks needed on this node that are not there yet: replicas that join one are
    /// not created yet.
    pub missing: BTreeMap<String, Missing>,
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
    let mut plan = BridgePlan::default();
    let objects: BTreeMap<String, BridgeConfig> = bridge_networks(state)
        .iter()
        .map(|n| (n.docker_name(), bridge_config(n)))
        .collect();
    let needed: BTreeSet<&String> = needed.iter().filter(|n| objects.contains_key(*n)).collect();
    let blocked = |why: String| Missing { blocked: true, why };
    let observed = match observed {
        Ok(observed) => observed,
        Err(why) => {
            for name in needed {
                plan.missing.insert(
                    name.clone(),
                    blocked(format!("cannot list networks: {why}")),
                );
            }
            return plan;
        }
    };
    let by_name: BTreeMap<&str, &NetworkInfo> =
        observed.iter().map(|n| (n.name.as_str(), n)).collect();
    for name in &needed {
        let config = &objects[*name];
        let waiting = |why: String| match errors.get(*name) {
            Some(e) => blocked(format!("{why} (last attempt: {e})")),
            None => Missing {
                blocked: false,
                why,
            },
        };
        match by_name.get(name.as_str()) {
            None => {
                plan.actions.push(NetworkAction::Create(config.clone()));
                plan.missing
                    .insert((*name).clone(), waiting(format!("creating network {name}")));
            }
            Some(n) if !n.ours() => {
                plan.missing.insert(
                    (*name).clone(),
                    blocked(format!(
                        "a Docker network named {name} exists on this node that smr did not \
                         create; remove it (docker network rm {name}) or rename the network object"
                    )),
                );
            }
            Some(n) if n.labels.get(SUBNET_LABEL) != config.labels.get(SUBNET_LABEL) => {
                if n.users.is_empty() {
                    plan.actions.push(NetworkAction::Remove {
                        name: (*name).clone(),
                    });
                    plan.missing.insert(
                        (*name).clone(),
                        waiting(format!("recreating network {name} on {}", config.subnet)),
                    );
                } else {
                    plan.missing.insert(
                        (*name).clone(),
                        blocked(format!(
                            "network {name} on this node is on another subnet than {} and is \
                             used by {}",
                            config.subnet,
                            n.users.join(", ")
                        )),
                    );
                }
            }
            Some(_) => {}
        }
    }
    // smr's bridge networks no replica here needs: removed once unused.
    for n in observed.iter().filter(|n| n.ours()) {
        if !needed.contains(&n.name) && n.users.is_empty() {
            plan.actions.push(NetworkAction::Remove {
                name: n.name.clone(),
            });
        }
    }
    plan
}

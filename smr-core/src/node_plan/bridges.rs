//! The bridge networks of a node's pass: [`NodePlanner::plan_networks`] decides the network
//! actions (see [`crate::networks::bridge::plan_bridges`]) and remembers which networks are
//! missing, so that [`NodePlanner::plan`] holds back the replicas that join one until it exists.

use super::pass::{Desired, NodePlanner, Rendered};
use super::volumes::ResourceMemory;
use crate::container::ContainerInfo;
use crate::networks::bridge::{self, NetworkAction, NetworkInfo};
use crate::scheduler::{DesiredReplica, Phase};

/// What the planner remembers about bridge networks between passes.
#[derive(Default)]
pub(super) struct BridgeMemory {
    /// Missing networks and failed actions.
    networks: ResourceMemory,
    /// The last pass saw no bridge network object and none of smr's bridge networks on the
    /// engine: until an object appears, there is nothing to list.
    idle: bool,
}

impl NodePlanner {
    /// Whether this pass needs the engine's networks for [`Self::plan_networks`]: not while
    /// there is no bridge network object and the last listing showed none of smr's (a pass then
    /// costs no Docker call for networks). The first pass always lists (leftovers of a stopped
    /// agent are removed).
    pub fn wants_networks(&self, d: &Desired) -> bool {
        !self.bridges.idle || !crate::networks::bridge_networks(d.state).is_empty()
    }

    /// The bridge network actions of a pass, to run before [`Self::plan`]'s (whose creations
    /// wait for the networks they join). `observed`: the engine's networks, or why they could
    /// not be listed.
    pub fn plan_networks(
        &mut self,
        d: &Desired,
        observed: Result<&[NetworkInfo], &str>,
    ) -> Vec<NetworkAction> {
        let memory = &mut self.bridges;
        memory.idle = crate::networks::bridge_networks(d.state).is_empty()
            && observed.is_ok_and(|o| !o.iter().any(NetworkInfo::ours));
        memory.networks.plan(d, bridge::joined, |needed, errors| {
            bridge::plan_bridges(d.state, needed, observed, errors)
        })
    }

    /// What came of a network action on network `name`.
    pub fn record_network(&mut self, name: &str, result: Result<(), String>) {
        self.bridges.networks.record(name, result);
    }
}

/// Moves the replicas without a container that join a missing network from `wanted` to
/// `waiting`.
#[allow(clippy::type_complexity)]
pub(super) fn hold<'r>(
    memory: &BridgeMemory,
    wanted: Vec<(DesiredReplica, Option<&'r Rendered>)>,
    waiting: &mut Vec<(DesiredReplica, Phase, String)>,
    containers: &[&ContainerInfo],
) -> Vec<(DesiredReplica, Option<&'r Rendered>)> {
    memory
        .networks
        .hold(bridge::joined, wanted, waiting, containers)
}

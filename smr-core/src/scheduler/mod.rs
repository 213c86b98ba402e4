//! The scheduler: where replicas run, and how each node brings its replicas to the desired state.
//!
//! Everything here is pure (sans-IO): no clocks, no Docker, no Raft. Time comes in as `now_ms`
//! arguments, observations come in as plain values, and decisions go out as values that the
//! caller applies. The agent maps its typed definitions and Docker observations into the plain
//! input types of this module.
//!
//! ```text
//!  Raft leader                                        every agent (for ITS replicas)
//!  -----------                                        ------------------------------
//!  heartbeats (leader memory) + reports --> leader::Liveness --> NodeInfo.live
//!  Workload + NodeInfo + old Placement
//!        --> place() --> Placement  --(Raft)-->  slots of this node --> DesiredReplica
//!  Placement + replica readiness                      Docker containers --> ObservedContainer
//!        --> plan_rollout() --> RolloutStep           plan_node() --> Action + ReplicaStatus
//!        --> apply_rollout() --> Placement --(Raft)-->     executor runs the actions
//! ```
//!
//! - [`placement`]: [`place`] decides once, on the leader, which node runs which replica index;
//!   the result is stored in the replicated state. Placement is stable: it never moves a replica
//!   that sits on a live eligible node.
//! - [`liveness`]: which nodes count as dead, from when each was last seen.
//! - [`lifecycle`]: [`plan_node`], what one agent does with its own replicas (create, start,
//!   stop, remove, restart with backoff), adopting healthy containers it already finds.
//! - [`rollout`]: [`plan_rollout`], a rolling update across the cluster that advances the
//!   generation of one placement slot at a time, gated on readiness and `max_unavailable`.
//! - [`drain`]: [`plan_drain`], replicas moving off draining nodes one batch at a time, each
//!   new replica ready before the old one stops.

pub mod drain;
pub mod heartbeat;
pub mod leader;
pub mod lifecycle;
pub mod liveness;
pub mod placement;
pub mod rollout;

pub use drain::{DrainStep, apply_drain, plan_drain};
pub use lifecycle::{
    Action, Backoff, ContainerState, DesiredReplica, NodePlan, ObservedContainer, Phase,
    ReplicaStatus, RestartPolicy, plan_node,
};
pub use liveness::{DEFAULT_NODE_TIMEOUT_MS, liveness, mark_liveness};
pub use placement::{
    AgentRef, Availability, DEFAULT_MAX_SURGE, DEFAULT_MAX_UNAVAILABLE, MAX_REPLICAS, NodeId,
    NodeInfo, Placement, ReplicaSlot, Spread, Workload, node_load, place, place_with_load,
};
pub use rollout::{ReplicaState, RolloutStep, apply_rollout, plan_rollout};

/// Why a workload cannot be placed. Every message names the workload and says what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("{workload}: cannot place replicas: the cluster has no nodes")]
    NoNodes { workload: String },
    #[error(
        "{workload}: cannot place replicas: node selector {selector} matches none of the \
         {nodes} nodes (check the node labels with `smrctl nodes`)"
    )]
    SelectorMatchesNone {
        workload: String,
        selector: String,
        nodes: usize,
    },
    #[error(
        "{workload}: cannot place replicas: none of the agents listed in spread.agents \
         ({agents}) is a node of the cluster (known nodes: {known})"
    )]
    UnknownAgents {
        workload: String,
        agents: String,
        known: String,
    },
    #[error(
        "{workload}: cannot place replicas: none of the agents listed in spread.agents \
         ({agents}) matches node selector {selector}"
    )]
    ListedAgentsExcludedBySelector {
        workload: String,
        agents: String,
        selector: String,
    },
    #[error("{workload}: cannot place replicas: all eligible nodes are down ({nodes})")]
    AllEligibleDown { workload: String, nodes: String },
    #[error(
        "{workload}: cannot place replicas: every live eligible node is cordoned or draining \
         ({nodes}; `smrctl uncordon NODE` lets one take replicas again)"
    )]
    AllEligibleCordoned { workload: String, nodes: String },
    #[error("{workload}: {replicas} replicas is more than the limit of {max}")]
    TooManyReplicas {
        workload: String,
        replicas: u32,
        max: u32,
    },
}

/// The container name and host name of a replica: `<group>-<name>-<index>`, index from 1.
pub fn replica_name(group: &str, name: &str, index: u32) -> String {
    format!("{group}-{name}-{index}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replica_names() {
        assert_eq!(replica_name("busybox", "busybox", 1), "busybox-busybox-1");
        assert_eq!(replica_name("mysql", "db", 12), "mysql-db-12");
    }
}

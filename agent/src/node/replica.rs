//! "Run this against the node that owns the replica": the one lookup behind the logs, exec and
//! attach routes (plain and streamed).

use super::{Consistency, Node, NodeError};
use crate::runtime::{DockerRuntime, RuntimeError};
use crate::state::NodeRecord;

/// Where a replica runs, as seen from this node.
pub enum ReplicaHost {
    /// Here: its container, and this node's Docker engine.
    Here {
        container: String,
        runtime: DockerRuntime,
    },
    /// On another node, where the request goes (once: see [`Node::replica_host`]).
    Elsewhere { node: NodeRecord },
}

impl Node {
    /// Where replica `name` runs, from this node's applied state (the reports). A request that
    /// was already `forwarded` once is refused if the replica is not here, never sent on again.
    pub async fn replica_host(
        &self,
        name: &str,
        forwarded: bool,
    ) -> Result<ReplicaHost, NodeError> {
        let (record, container) = self.locate(name).await?;
        if record.id != self.id {
            if forwarded {
                return Err(NodeError::Unavailable(format!(
                    "replica {name} is not on this node"
                )));
            }
            return Ok(ReplicaHost::Elsewhere { node: record });
        }
        Ok(ReplicaHost::Here {
            container,
            runtime: self.runtime().await?,
        })
    }

    /// This node's Docker engine, for a request.
    pub async fn runtime(&self) -> Result<DockerRuntime, NodeError> {
        self.docker()
            .await
            .map_err(|e| NodeError::Unavailable(e.to_string()))
    }

    /// The node's one connection to its Docker engine, made (version negotiated, pinged) on the
    /// first call that succeeds; a failed attempt is tried again on the next call.
    pub async fn docker(&self) -> Result<DockerRuntime, RuntimeError> {
        self.docker
            .get_or_try_init(|| DockerRuntime::connect(self.docker_host.as_deref()))
            .await
            .cloned()
    }

    /// The node whose report lists replica `name`, and the replica's container id.
    async fn locate(&self, name: &str) -> Result<(NodeRecord, String), NodeError> {
        let state = self.state(Consistency::Stale).await?;
        for (id, report) in &state.reports {
            if let Some(replica) = report.replicas.iter().find(|r| r.name == name) {
                let container = replica.container_id.clone().ok_or_else(|| {
                    NodeError::Conflict(format!(
                        "replica {name} has no container (it is {})",
                        replica.phase
                    ))
                })?;
                let record = state
                    .nodes
                    .get(id)
                    .cloned()
                    .ok_or_else(|| NodeError::NotFound(format!("node {id}")))?;
                return Ok((record, container));
            }
        }
        Err(NodeError::NotFound(format!("replica {name}")))
    }
}

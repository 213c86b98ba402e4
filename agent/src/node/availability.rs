//! Cordon, drain, uncordon: the node action behind `PUT /api/v1/nodes/{id}/availability`, and
//! what a node still holds (`smrctl drain` waits for none).

use super::{Node, NodeError};
use crate::scheduler::Availability;
use crate::state::{ClusterState, CommandResult, NodeId, Op};

impl Node {
    /// Sets node `id`'s availability; the leader's scheduler acts on it (a draining node's
    /// replicas move, see [`crate::scheduler::drain`]).
    pub async fn set_availability(
        &self,
        id: NodeId,
        availability: Availability,
        op_id: Option<String>,
    ) -> Result<(), NodeError> {
        match self
            .propose(Op::SetNodeAvailability { id, availability }, op_id)
            .await?
        {
            CommandResult::Rejected { reason } => Err(NodeError::NotFound(reason)),
            _ => Ok(()),
        }
    }
}

/// Replicas node `id` holds: slots placed on it or moving off it, or, if more, the containers its
/// last report lists (a released replica runs until the node stopped it). Pure.
pub fn replicas_on(state: &ClusterState, id: NodeId) -> u32 {
    let placed = state.slot_count_on(id) as u32;
    let reported = state
        .reports
        .get(&id)
        .map(|r| r.replicas.len() as u32)
        .unwrap_or(0);
    placed.max(reported)
}

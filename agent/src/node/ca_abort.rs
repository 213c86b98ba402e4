//! `smrmgr ca abort` (`POST /api/v1/ca/abort`): abandons the CA rotation under way. The state
//! marks it aborted; every node then renews from the current CA while still trusting both, and
//! the leader drops the next CA once every node's certificate is of the current one again
//! ([`crate::state::ca_rotation`]).

use api_types::types::CaStatus;

use super::{Consistency, Node, NodeError};
use crate::state::{CaRecord, CommandResult, Op};

/// Refuses (409) to start a rotation while one is being aborted.
pub(super) fn refuse_while_aborting(record: &CaRecord) -> Result<(), NodeError> {
    match &record.next {
        Some(next) if next.aborted_ms.is_some() => Err(NodeError::Conflict(format!(
            "the CA rotation to {} is being aborted; rotate again once the abort has finished \
             (`smrmgr ca status`)",
            next.fingerprint
        ))),
        _ => Ok(()),
    }
}

impl Node {
    /// Aborts the rotation under way (an abort under way already is answered with its status);
    /// 409 when no rotation is under way, and while a node of an older version is a member
    /// (named): it would stop at the entry.
    pub async fn abort_ca_rotation(&self) -> Result<CaStatus, NodeError> {
        self.require_members_support(super::features::Feature::CaAbort, "aborting a CA rotation")
            .await?;
        let state = self.state(Consistency::Linearizable).await?;
        let record = state
            .ca
            .as_ref()
            .ok_or_else(|| NodeError::Unavailable("the cluster has no CA recorded".into()))?;
        let Some(next) = &record.next else {
            return Err(NodeError::Conflict(format!(
                "no CA rotation is under way (the cluster CA is {})",
                record.fingerprint
            )));
        };
        if next.aborted_ms.is_none() {
            let fingerprint = next.fingerprint.clone();
            match self
                .propose(
                    Op::AbortCaRotation {
                        fingerprint: fingerprint.clone(),
                    },
                    None,
                )
                .await?
            {
                CommandResult::Rejected { reason } => return Err(NodeError::Conflict(reason)),
                _ => tracing::info!(%fingerprint, "CA rotation aborted: back to the current CA"),
            }
        }
        self.ca_status().await
    }
}

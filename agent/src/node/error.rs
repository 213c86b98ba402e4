//! What [`Node`](super::Node) answers when an action fails. No HTTP here: `api::error` maps
//! each variant onto a status and error code, in one place (`impl From<NodeError> for ApiError`).

use api_types::types::ErrorBody;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Definitely not applied: no leader or quorum (clients retry).
    #[error("cluster unavailable: {0}")]
    Unavailable(String),
    /// A write that was proposed but whose fate this node cannot know; a retry with the same
    /// `op_id` is applied at most once and answers which.
    #[error("outcome unknown: {why}; retry with the same op_id ({op_id})")]
    OutcomeUnknown { op_id: String, why: String },
    /// The node's storage cannot take writes: refused before anything was proposed.
    #[error("insufficient storage: {0}")]
    InsufficientStorage(String),
    /// The request is well formed but the cluster refuses it as it stands.
    #[error("{0}")]
    Conflict(String),
    #[error("{0} not found")]
    NotFound(String),
    /// A join token or certificate that is refused.
    #[error("{0}")]
    Forbidden(String),
    /// A webhook whose signature is missing or wrong.
    #[error("{0}")]
    BadSignature(String),
    /// A request that cannot be valid (a bad node name, an unreadable CSR).
    #[error("{0}")]
    BadRequest(String),
    #[error("internal error: {0}")]
    Internal(String),
    /// An error answered by another node, to relay unchanged (`status` is its HTTP status).
    #[error("{}", .body.error.message)]
    Relayed { status: u16, body: ErrorBody },
}

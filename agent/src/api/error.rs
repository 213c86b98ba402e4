//! API errors: one enum, each variant with a stable code and an HTTP status chosen on purpose.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::types::{ErrorBody, ErrorInfo};
use crate::definitions::DefinitionError;
use crate::node::NodeError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    InvalidDefinition(#[from] DefinitionError),
    #[error("{0}")]
    BadRequest(String),
    #[error("request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("a client certificate signed by the cluster CA is required")]
    Unauthenticated,
    /// A webhook whose signature is missing or wrong.
    #[error("{0}")]
    BadSignature(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    Conflict(String),
    /// Definitely not applied: no leader or quorum (clients retry).
    #[error("cluster unavailable: {0}")]
    Unavailable(String),
    /// A write that was proposed but whose fate this node cannot know (not committed in time,
    /// the leader froze or changed after it was sent): it may or may not be applied. A retry with
    /// the same `op_id` is applied at most once and answers which.
    #[error("outcome unknown: {why}; retry with the same op_id ({op_id})")]
    OutcomeUnknown { op_id: String, why: String },
    /// The node's storage cannot take writes (disk full, read-only or failing data dir, etcd's
    /// NOSPACE alarm): refused before anything was proposed.
    #[error("insufficient storage: {0}")]
    InsufficientStorage(String),
    #[error("internal error: {0}")]
    Internal(String),
    /// An error relayed unchanged from another node.
    #[error("{}", .body.error.message)]
    Relayed { status: StatusCode, body: ErrorBody },
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidDefinition(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unauthenticated | ApiError::BadSignature(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::OutcomeUnknown { .. } => StatusCode::GATEWAY_TIMEOUT,
            ApiError::InsufficientStorage(_) => StatusCode::INSUFFICIENT_STORAGE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Relayed { status, .. } => *status,
        }
    }

    pub fn code(&self) -> &str {
        match self {
            ApiError::InvalidDefinition(_) => "invalid_definition",
            ApiError::BadRequest(_) => "bad_request",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::Unauthenticated => "unauthenticated",
            ApiError::BadSignature(_) => "bad_signature",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::Conflict(_) => "conflict",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::OutcomeUnknown { .. } => "outcome_unknown",
            ApiError::InsufficientStorage(_) => "insufficient_storage",
            ApiError::Internal(_) => "internal",
            ApiError::Relayed { body, .. } => &body.error.code,
        }
    }

    pub fn body(&self) -> ErrorBody {
        if let ApiError::Relayed { body, .. } = self {
            return body.clone();
        }
        let details = match self {
            ApiError::InvalidDefinition(e) => Some(serde_json::json!({
                "file": e.file,
                "line": e.line,
                "column": e.column,
                "field": e.path,
                "suggestion": e.suggestion,
            })),
            ApiError::OutcomeUnknown { op_id, .. } => Some(serde_json::json!({ "op_id": op_id })),
            _ => None,
        };
        ErrorBody {
            error: ErrorInfo {
                code: self.code().to_string(),
                message: self.to_string(),
                details,
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status().is_server_error() {
            tracing::warn!(code = self.code(), "{self}");
        }
        (self.status(), Json(self.body())).into_response()
    }
}

/// The one place where the node's answers become HTTP statuses and error codes.
impl From<NodeError> for ApiError {
    fn from(e: NodeError) -> Self {
        match e {
            NodeError::Unavailable(why) => ApiError::Unavailable(why),
            NodeError::OutcomeUnknown { op_id, why } => ApiError::OutcomeUnknown { op_id, why },
            NodeError::InsufficientStorage(why) => ApiError::InsufficientStorage(why),
            NodeError::Conflict(why) => ApiError::Conflict(why),
            NodeError::NotFound(what) => ApiError::NotFound(what),
            NodeError::Forbidden(why) => ApiError::Forbidden(why),
            NodeError::BadSignature(why) => ApiError::BadSignature(why),
            NodeError::BadRequest(why) => ApiError::BadRequest(why),
            NodeError::Internal(why) => ApiError::Internal(why),
            NodeError::Relayed { status, body } => ApiError::Relayed {
                // Every status this node relays was received as a valid one.
                status: StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
                body,
            },
        }
    }
}

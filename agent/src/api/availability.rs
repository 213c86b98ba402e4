//! `PUT /api/v1/nodes/{id}/availability`: cordon, drain or uncordon a node.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;

use super::error::ApiError;
use super::types::AvailabilityRequest;
use super::{AppState, parse_json, read_body};

pub(super) async fn set(
    State(node): AppState,
    Path(id): Path<String>,
    body: Body,
) -> Result<StatusCode, ApiError> {
    let id: u64 = id
        .parse()
        .map_err(|_| ApiError::BadRequest(format!("node id {id:?} is not a number")))?;
    let req: AvailabilityRequest = parse_json(&read_body(body).await?)?;
    node.set_availability(id, req.availability, req.op_id)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

//! `GET /api/v1/backup`: the cluster state as a backup file (`smrmgr backup`). Admin
//! certificates only: the file holds every secret in clear.

use axum::Extension;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::{AppState, ClientIdentity};
use crate::pki::Role;

pub(super) async fn backup(
    State(node): AppState,
    Extension(who): Extension<ClientIdentity>,
) -> Result<Response, ApiError> {
    let why = "a backup holds every secret: only admin certificates may take one";
    super::require_role(&who, Role::Admin, why)?;
    let bytes = node.backup().await?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        bytes,
    )
        .into_response())
}

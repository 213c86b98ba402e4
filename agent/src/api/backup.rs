//! `GET /api/v1/backup`: the cluster state as a backup file (`smrmgr backup`). Admin
//! certificates only: the file holds every secret in clear.

use axum::Extension;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::{AppState, ClientIdentity};
use crate::pki::{PeerIdentity, Role};

pub(super) async fn backup(
    State(node): AppState,
    Extension(who): Extension<ClientIdentity>,
) -> Result<Response, ApiError> {
    if !matches!(
        who.0,
        Some(PeerIdentity {
            role: Role::Admin,
            ..
        })
    ) {
        return Err(ApiError::Forbidden(
            "a backup holds every secret: only admin certificates may take one".into(),
        ));
    }
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

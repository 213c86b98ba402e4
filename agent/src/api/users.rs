//! `POST /api/v1/users/{name}/certificate`: an admin client certificate for a named user
//! (`smrctl context export --user NAME`); `GET /api/v1/users` and `POST /api/v1/users/revoke`
//! (`smrmgr user revoke`). Only admin certificates may ask.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Extension, Path, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use super::error::ApiError;
use super::types::{UserCertRequest, UserCertResponse, UserRevokeRequest};
use super::{AppState, ClientIdentity, parse_json, read_body};
use crate::node::Node;
use crate::pki::Role;
use crate::state::UserCert;

pub(super) fn router() -> Router<Arc<Node>> {
    Router::new()
        .route("/api/v1/users/{name}/certificate", post(sign))
        .route("/api/v1/users", get(list))
        .route("/api/v1/users/revoke", post(revoke))
        .route_layer(middleware::from_fn(require_admin))
}

/// Lets only clients with an admin certificate through.
async fn require_admin(
    Extension(who): Extension<ClientIdentity>,
    req: Request,
    next: Next,
) -> Response {
    let why = "only admin certificates may have certificates signed for users, list or revoke them";
    match super::require_role(&who, Role::Admin, why) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

async fn sign(
    State(node): AppState,
    Path(name): Path<String>,
    body: Body,
) -> Result<Json<UserCertResponse>, ApiError> {
    let req: UserCertRequest = parse_json(&read_body(body).await?)?;
    let (cert, ca_pem) = node.sign_user(&name, &req.csr).await?;
    Ok(Json(UserCertResponse { name, cert, ca_pem }))
}

/// `GET /api/v1/users`: the user certificates the cluster records.
async fn list(State(node): AppState) -> Result<Json<Vec<UserCert>>, ApiError> {
    Ok(Json(node.user_certs().await?))
}

/// `POST /api/v1/users/revoke`: revokes a user's certificates, or one by serial.
async fn revoke(State(node): AppState, body: Body) -> Result<Json<Vec<UserCert>>, ApiError> {
    let req: UserRevokeRequest = parse_json(&read_body(body).await?)?;
    Ok(Json(
        node.revoke_user(req.name.as_deref(), req.serial.as_deref())
            .await?,
    ))
}

//! Gitops routes: status of every `gitops` object, sync requests, and the push webhook.
//!
//! The webhook is the one write route without a client certificate (git hosts have none): it is
//! authenticated by the HMAC-SHA256 signature of its body (GitHub `X-Hub-Signature-256` or Gitea
//! `X-Gitea-Signature`) with the secret named by the object's `webhookSecretRef`.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};

use super::error::ApiError;
use super::{AppState, ReadParams, read_body};
use crate::definitions::{Kind, ObjectKey};
use crate::node::WebhookOutcome;

#[doc(hidden)] // transitional (issue 13): the view types moved to api-types.
pub use api_types::sync_views::{GitopsView, ManagedObject, SyncRequested};

fn gitops_key(group: String, name: String) -> ObjectKey {
    ObjectKey {
        kind: Kind::Gitops,
        group,
        name,
        prefix: None,
    }
}

pub(super) async fn list(
    State(node): AppState,
    Query(params): Query<ReadParams>,
) -> Result<Json<Vec<GitopsView>>, ApiError> {
    Ok(Json(node.gitops_list(params.consistency()?).await?))
}

pub(super) async fn describe(
    State(node): AppState,
    Path((group, name)): Path<(String, String)>,
    Query(params): Query<ReadParams>,
) -> Result<Json<GitopsView>, ApiError> {
    let key = gitops_key(group, name);
    Ok(Json(
        node.gitops_describe(&key, params.consistency()?).await?,
    ))
}

pub(super) async fn sync(
    State(node): AppState,
    Path((group, name)): Path<(String, String)>,
) -> Result<(StatusCode, Json<SyncRequested>), ApiError> {
    let request = node.request_sync(gitops_key(group, name)).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(SyncRequested {
            status: "sync requested".into(),
            request,
            message: String::new(),
        }),
    ))
}

/// Signature headers, GitHub's first.
const SIGNATURE_HEADERS: [&str; 3] = [
    "x-hub-signature-256",
    "x-gitea-signature",
    "x-gogs-signature",
];
const EVENT_HEADERS: [&str; 3] = ["x-github-event", "x-gitea-event", "x-gogs-event"];

fn first_header<'a>(headers: &'a HeaderMap, names: &[&str]) -> Option<&'a str> {
    names
        .iter()
        .find_map(|n| headers.get(*n).and_then(|v| v.to_str().ok()))
}

/// `POST /api/v1/gitops/{group}/{name}/webhook`: a push from the git host.
pub(super) async fn webhook(
    State(node): AppState,
    Path((group, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<SyncRequested>), ApiError> {
    let key = gitops_key(group, name);
    let body = read_body(body).await?;
    let outcome = node
        .gitops_webhook(
            key,
            first_header(&headers, &SIGNATURE_HEADERS),
            first_header(&headers, &EVENT_HEADERS),
            &body,
        )
        .await?;
    let (status, text, request, message) = match outcome {
        WebhookOutcome::Pong => (StatusCode::OK, "pong", 0, String::new()),
        WebhookOutcome::Ignored(why) => (StatusCode::ACCEPTED, "ignored", 0, why),
        WebhookOutcome::SyncRequested(request) => (
            StatusCode::ACCEPTED,
            "sync requested",
            request,
            String::new(),
        ),
    };
    Ok((
        status,
        Json(SyncRequested {
            status: text.into(),
            request,
            message,
        }),
    ))
}

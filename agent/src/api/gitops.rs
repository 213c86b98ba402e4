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
use crate::definitions::{Kind, ObjectKey, Spec};
use crate::node::Consistency;
use crate::state::{ClusterState, CommandResult, Op, StoredObject};

#[doc(hidden)] // transitional (issue 13): the view types moved to api-types.
pub use api_types::sync_views::{GitopsView, ManagedObject, SyncRequested};

fn view(state: &ClusterState, stored: &StoredObject, detail: bool) -> Option<GitopsView> {
    let spec = stored.object.spec.as_gitops()?;
    let key = stored.object.key();
    let status = state.gitops.get(&key).cloned().unwrap_or_default();
    let objects = if detail {
        state
            .owned_by(&key)
            .into_iter()
            .filter_map(|k| {
                let o = state.objects.get(&k)?;
                let drifted = status.drifted.contains(&k);
                Some(ManagedObject {
                    key: k,
                    generation: o.generation,
                    state: if drifted { "drifted" } else { "synced" }.into(),
                })
            })
            .collect()
    } else {
        Vec::new()
    };
    Some(GitopsView {
        group: key.group.clone(),
        name: key.name.clone(),
        repo: gitops::redact_url(&spec.repo_url),
        revision: spec.revision.clone(),
        directory: spec.directory_path.clone(),
        automatic_sync: spec.automatic_sync,
        interval_seconds: spec
            .pooling_interval
            .map(|i| i.get())
            .unwrap_or(crate::controller::gitops::DEFAULT_INTERVAL)
            .as_secs(),
        webhook: spec.webhook_secret_ref.is_some(),
        generation: stored.generation,
        status,
        objects,
    })
}

fn gitops_key(group: String, name: String) -> ObjectKey {
    ObjectKey {
        kind: Kind::Gitops,
        group,
        name,
    }
}

pub(super) async fn list(
    State(node): AppState,
    Query(params): Query<ReadParams>,
) -> Result<Json<Vec<GitopsView>>, ApiError> {
    let state = node.state(params.consistency()?).await?;
    Ok(Json(
        state
            .objects_of(Kind::Gitops)
            .filter_map(|o| view(&state, o, false))
            .collect(),
    ))
}

pub(super) async fn describe(
    State(node): AppState,
    Path((group, name)): Path<(String, String)>,
    Query(params): Query<ReadParams>,
) -> Result<Json<GitopsView>, ApiError> {
    let key = gitops_key(group, name);
    let state = node.state(params.consistency()?).await?;
    state
        .objects
        .get(&key)
        .and_then(|o| view(&state, o, true))
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(key.to_string()))
}

async fn request_sync(node: &crate::node::Node, key: ObjectKey) -> Result<u64, ApiError> {
    match node
        .propose(Op::GitopsRequestSync { gitops: key }, None)
        .await?
    {
        CommandResult::SyncRequested { request } => Ok(request),
        CommandResult::Rejected { reason } => Err(ApiError::NotFound(reason)),
        other => Err(ApiError::Internal(format!("unexpected result {other:?}"))),
    }
}

pub(super) async fn sync(
    State(node): AppState,
    Path((group, name)): Path<(String, String)>,
) -> Result<(StatusCode, Json<SyncRequested>), ApiError> {
    let request = request_sync(&node, gitops_key(group, name)).await?;
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

/// The webhook secret of a gitops object, or why there is none.
fn webhook_secret(state: &ClusterState, key: &ObjectKey) -> Result<String, ApiError> {
    let spec = state
        .objects
        .get(key)
        .and_then(|o| o.object.spec.as_gitops())
        .ok_or_else(|| ApiError::NotFound(key.to_string()))?;
    let r = spec.webhook_secret_ref.as_ref().ok_or_else(|| {
        ApiError::Forbidden(format!(
            "{key} has no webhook: set spec.webhookSecretRef to a secret holding the HMAC key"
        ))
    })?;
    let field = r.key.as_deref().unwrap_or("webhook");
    let secret_key = ObjectKey {
        kind: Kind::Secret,
        group: r.group.clone(),
        name: r.name.clone(),
    };
    match state.objects.get(&secret_key).map(|o| &o.object.spec) {
        Some(Spec::Secret(data)) => data
            .data
            .get(field)
            .filter(|v| !v.is_empty())
            .cloned()
            .ok_or_else(|| {
                ApiError::Forbidden(format!(
                    "{secret_key} has no key {field:?}: webhook disabled"
                ))
            }),
        _ => Err(ApiError::Forbidden(format!(
            "{secret_key} (webhookSecretRef of {key}) does not exist: webhook disabled"
        ))),
    }
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
    let state = node.state(Consistency::Stale).await?;
    // One answer for every refusal: the caller is not authenticated yet, so it must not learn
    // whether an object exists or has a webhook. The reason goes to the log.
    let verified = webhook_secret(&state, &key).and_then(|secret| {
        let signature = first_header(&headers, &SIGNATURE_HEADERS).ok_or_else(|| {
            ApiError::BadSignature(
                "missing signature: send X-Hub-Signature-256 (GitHub) or X-Gitea-Signature".into(),
            )
        })?;
        gitops::verify_signature(secret.as_bytes(), &body, signature)
            .map_err(|e| ApiError::BadSignature(e.to_string()))
    });
    if let Err(why) = verified {
        tracing::info!("webhook for {key} refused: {why}");
        return Err(ApiError::BadSignature(format!(
            "webhook refused: no valid signature for {key} (signed with the secret of its \
             webhookSecretRef, in X-Hub-Signature-256 or X-Gitea-Signature)"
        )));
    }
    let answer = |status: StatusCode, text: &str, request: u64, message: String| {
        (
            status,
            Json(SyncRequested {
                status: text.into(),
                request,
                message,
            }),
        )
    };
    match first_header(&headers, &EVENT_HEADERS) {
        Some("ping") => return Ok(answer(StatusCode::OK, "pong", 0, String::new())),
        Some("push") | None => {}
        Some(other) => {
            return Ok(answer(
                StatusCode::ACCEPTED,
                "ignored",
                0,
                format!("event {other:?} does not trigger a sync"),
            ));
        }
    }
    let push =
        gitops::parse_push(&body).map_err(|e| ApiError::BadRequest(format!("webhook: {e}")))?;
    let revision = state
        .objects
        .get(&key)
        .and_then(|o| o.object.spec.as_gitops())
        .and_then(|s| s.revision.clone())
        .filter(|r| !r.is_empty() && r != "HEAD");
    let tracked = match &revision {
        None => true,
        Some(r) => push.branch() == Some(r.as_str()) || push.tag() == Some(r.as_str()),
    };
    if !tracked {
        return Ok(answer(
            StatusCode::ACCEPTED,
            "ignored",
            0,
            format!(
                "push to {} is not revision {}",
                push.git_ref,
                revision.unwrap_or_default()
            ),
        ));
    }
    let request = request_sync(&node, key).await?;
    Ok(answer(
        StatusCode::ACCEPTED,
        "sync requested",
        request,
        String::new(),
    ))
}

/// A stored object as the API shows it: credentials (httpauth passwords, certkey keys and
/// passwords, secret values, `registryAuth` of containers and their init containers) replaced by
/// `***`, and `user:password@` dropped from repository URLs.
pub fn redacted(stored: &StoredObject) -> StoredObject {
    const HIDDEN: &str = "***";
    let hide = |v: &mut Option<String>| {
        if v.is_some() {
            *v = Some(HIDDEN.into());
        }
    };
    let mut out = stored.clone();
    match &mut out.object.spec {
        Spec::Httpauth(h) => h.password = HIDDEN.into(),
        Spec::Certkey(c) => {
            hide(&mut c.private_key);
            hide(&mut c.private_key_password);
            hide(&mut c.key_store_password);
        }
        Spec::Secret(s) => s.data.values_mut().for_each(|v| *v = HIDDEN.into()),
        Spec::Gitops(g) => g.repo_url = gitops::redact_url(&g.repo_url),
        Spec::Containers(c) => {
            let mut spec = Some(&mut **c);
            while let Some(c) = spec {
                hide(&mut c.registry_auth);
                spec = c.init_container.as_deref_mut();
            }
        }
        _ => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definitions::{CertKeySpec, DataSpec, GitopsSpec, HttpAuthSpec, Object};

    fn stored(object: Object) -> StoredObject {
        StoredObject {
            object,
            generation: 1,
            template_generation: 1,
            revision: 1,
            created_ms: 0,
            updated_ms: 0,
            owner: None,
        }
    }

    #[test]
    fn credentials_never_leave_in_api_answers() {
        let objects = [
            Object::new(
                "g",
                "a",
                Spec::Httpauth(HttpAuthSpec {
                    username: "u".into(),
                    password: "pw-1".into(),
                }),
            ),
            Object::new(
                "g",
                "b",
                Spec::Certkey(CertKeySpec {
                    private_key: Some("pw-2".into()),
                    private_key_password: Some("pw-3".into()),
                    ..Default::default()
                }),
            ),
            Object::new(
                "g",
                "c",
                Spec::Secret(DataSpec {
                    data: [("k".to_string(), "pw-4".to_string())].into(),
                }),
            ),
            Object::new(
                "g",
                "e",
                Spec::Containers(Box::new(crate::definitions::ContainersSpec {
                    registry_auth: Some("user:pw-6".into()),
                    init_container: Some(Box::new(crate::definitions::ContainersSpec {
                        registry_auth: Some("user:pw-7".into()),
                        ..Default::default()
                    })),
                    ..Default::default()
                })),
            ),
            Object::new(
                "g",
                "d",
                Spec::Gitops(GitopsSpec {
                    repo_url: "https://user:pw-5@git.example.com/r.git".into(),
                    ..Default::default()
                }),
            ),
        ];
        for object in objects {
            let shown = serde_json::to_string(&redacted(&stored(object))).unwrap();
            assert!(!shown.contains("pw-"), "{shown}");
        }
    }
}

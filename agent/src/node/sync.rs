//! Gitops objects as the API shows them, sync requests, and the push webhook's decision.

use super::{Consistency, Node, NodeError};
use crate::definitions::{Kind, ObjectKey, Spec};
use crate::state::{ClusterState, CommandResult, Op, StoredObject};
use api_types::sync_views::{GitopsView, ManagedObject};

/// What a verified webhook delivery leads to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WebhookOutcome {
    /// A `ping` event.
    Pong,
    /// An event or a push that does not trigger a sync, and why.
    Ignored(String),
    /// A push to the tracked revision: the sync request's number.
    SyncRequested(u64),
}

impl Node {
    /// Every `gitops` object with its sync status.
    pub async fn gitops_list(
        &self,
        consistency: Consistency,
    ) -> Result<Vec<GitopsView>, NodeError> {
        let state = self.state(consistency).await?;
        Ok(state
            .objects_of(Kind::Gitops)
            .filter_map(|o| view(&state, o, false))
            .collect())
    }

    /// One `gitops` object with its status and the objects it manages.
    pub async fn gitops_describe(
        &self,
        key: &ObjectKey,
        consistency: Consistency,
    ) -> Result<GitopsView, NodeError> {
        let state = self.state(consistency).await?;
        state
            .objects
            .get(key)
            .and_then(|o| view(&state, o, true))
            .ok_or_else(|| NodeError::NotFound(key.to_string()))
    }

    /// Asks for a sync of `key` now; the request's number.
    pub async fn request_sync(&self, key: ObjectKey) -> Result<u64, NodeError> {
        match self
            .propose(Op::GitopsRequestSync { gitops: key }, None)
            .await?
        {
            CommandResult::SyncRequested { request } => Ok(request),
            CommandResult::Rejected { reason } => Err(NodeError::NotFound(reason)),
            other => Err(NodeError::Internal(format!("unexpected result {other:?}"))),
        }
    }

    /// A push webhook for `key`: verifies `signature` (the HMAC of `body` with the secret of its
    /// `webhookSecretRef`), then requests a sync if `event` is a push to the tracked revision.
    /// Every refusal of the signature is the same [`NodeError::BadSignature`] (the caller is
    /// not authenticated yet, so it must not learn whether the object exists or has a webhook);
    /// the reason goes to the log.
    pub async fn gitops_webhook(
        &self,
        key: ObjectKey,
        signature: Option<&str>,
        event: Option<&str>,
        body: &[u8],
    ) -> Result<WebhookOutcome, NodeError> {
        let state = self.state(Consistency::Stale).await?;
        let verified = webhook_secret(&self.open_secrets(&state), &key).and_then(|secret| {
            let signature = signature.ok_or_else(|| {
                NodeError::BadSignature(
                    "missing signature: send X-Hub-Signature-256 (GitHub) or X-Gitea-Signature"
                        .into(),
                )
            })?;
            gitops::verify_signature(secret.as_bytes(), body, signature)
                .map_err(|e| NodeError::BadSignature(e.to_string()))
        });
        if let Err(why) = verified {
            tracing::info!("webhook for {key} refused: {why}");
            return Err(NodeError::BadSignature(format!(
                "webhook refused: no valid signature for {key} (signed with the secret of its \
                 webhookSecretRef, in X-Hub-Signature-256 or X-Gitea-Signature)"
            )));
        }
        match event {
            Some("ping") => return Ok(WebhookOutcome::Pong),
            Some("push") | None => {}
            Some(other) => {
                return Ok(WebhookOutcome::Ignored(format!(
                    "event {other:?} does not trigger a sync"
                )));
            }
        }
        let push =
            gitops::parse_push(body).map_err(|e| NodeError::BadRequest(format!("webhook: {e}")))?;
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
            return Ok(WebhookOutcome::Ignored(format!(
                "push to {} is not revision {}",
                push.git_ref,
                revision.unwrap_or_default()
            )));
        }
        Ok(WebhookOutcome::SyncRequested(self.request_sync(key).await?))
    }
}

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
            .unwrap_or(smr_core::repo_sync::DEFAULT_INTERVAL)
            .as_secs(),
        webhook: spec.webhook_secret_ref.is_some(),
        generation: stored.generation,
        status,
        objects,
    })
}

/// The webhook secret of a gitops object, or why there is none.
fn webhook_secret(state: &ClusterState, key: &ObjectKey) -> Result<String, NodeError> {
    let spec = state
        .objects
        .get(key)
        .and_then(|o| o.object.spec.as_gitops())
        .ok_or_else(|| NodeError::NotFound(key.to_string()))?;
    let r = spec.webhook_secret_ref.as_ref().ok_or_else(|| {
        NodeError::Forbidden(format!(
            "{key} has no webhook: set spec.webhookSecretRef to a secret holding the HMAC key"
        ))
    })?;
    let field = r.key.as_deref().unwrap_or("webhook");
    let secret_key = ObjectKey {
        kind: Kind::Secret,
        group: r.group.clone(),
        name: r.name.clone(),
        prefix: None,
    };
    match state.objects.get(&secret_key).map(|o| &o.object.spec) {
        Some(Spec::Secret(data)) => data
            .data
            .get(field)
            .filter(|v| !v.is_empty())
            .cloned()
            .ok_or_else(|| {
                NodeError::Forbidden(format!(
                    "{secret_key} has no key {field:?}: webhook disabled"
                ))
            }),
        _ => Err(NodeError::Forbidden(format!(
            "{secret_key} (webhookSecretRef of {key}) does not exist: webhook disabled"
        ))),
    }
}

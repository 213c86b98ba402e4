//! A typed client of the REST API, and the context file that tells it where and who to be.
//! Part of `api-types`: it links no server code (no axum, Docker or Raft).
//!
//! Used by `smrctl`, by `smrmgr` and by the end-to-end tests. Writes carry an `op_id`, so a write
//! retried after an `unavailable` answer (for example during a leader election), an
//! `outcome_unknown` answer or a lost answer is applied once; the client retries those with the
//! same `op_id` until [`RETRY_FOR`] runs out and reports the final result.

use std::path::Path;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::definitions::{Kind, Object, ObjectKey};
use crate::state::StoredObject;
use crate::sync_views::{GitopsView, SyncRequested};
use crate::types::*;
use pki::{self, Identity};

/// `?prefix=P` (or `&prefix=P`) for a custom object under a prefix of its own; empty otherwise.
fn prefix_query(key: &ObjectKey, sep: char) -> String {
    key.prefix
        .as_ref()
        .map_or(String::new(), |p| format!("{sep}prefix={p}"))
}

/// How long a request keeps retrying while the cluster answers `unavailable`.
pub const RETRY_FOR: Duration = Duration::from_secs(15);

/// Where the API is and the client certificate to present (an "admin context").
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Context {
    pub name: String,
    pub api_url: String,
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl Context {
    pub fn load(path: &Path) -> Result<Context, ClientError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ClientError::Context(format!("cannot read context {}: {e}", path.display()))
        })?;
        serde_json::from_str(&text).map_err(|e| {
            ClientError::Context(format!("context {} is not valid: {e}", path.display()))
        })
    }

    /// Writes the context readable by its owner only, atomically.
    pub fn save(&self, path: &Path) -> Result<(), ClientError> {
        let text =
            serde_json::to_string_pretty(self).map_err(|e| ClientError::Context(e.to_string()))?;
        write_private(path, text.as_bytes()).map_err(|e| {
            ClientError::Context(format!("cannot write context {}: {e}", path.display()))
        })
    }
}

/// Writes `bytes` to `path` with mode 0600 via a temporary file and a rename.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{message}")]
    Api {
        status: u16,
        code: String,
        message: String,
        details: Option<serde_json::Value>,
    },
    #[error("cannot reach the smr API at {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("{0}")]
    Context(String),
    #[error("unexpected answer from the API: {0}")]
    Decode(String),
}

impl ClientError {
    /// The process exit code for this error (documented in the README).
    pub fn exit_code(&self) -> i32 {
        match self {
            ClientError::Api { status, .. } => match *status {
                400 | 413 | 422 => 3,
                404 => 4,
                409 => 5,
                401 | 403 => 7,
                503 => 6,
                504 => 9,
                _ => 1,
            },
            ClientError::Connect { .. } => 6,
            ClientError::Context(_) => 7,
            ClientError::Decode(_) => 1,
        }
    }

    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { code, .. } => Some(code),
            _ => None,
        }
    }
}

#[derive(Clone)]
pub struct Client {
    base: String,
    http: reqwest::Client,
    /// How long a request is retried (503, and for replayable requests 504 and lost answers).
    retry_for: Duration,
    /// Time limit of one attempt (None: the HTTP client's).
    attempt_timeout: Option<Duration>,
}

enum Payload<'a> {
    None,
    Json(serde_json::Value),
    Yaml(&'a str),
}

/// Whether sending a request again can do harm.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Replay {
    /// Reads, and writes with an `op_id` (applied at most once): retried after `outcome_unknown`
    /// and lost answers as well.
    Safe,
    /// Retried only after `unavailable` (surely not applied).
    Unsafe,
}

impl Client {
    pub fn new(api_url: &str, http: reqwest::Client) -> Client {
        Client {
            base: api_url.trim_end_matches('/').to_string(),
            http,
            retry_for: RETRY_FOR,
            attempt_timeout: None,
        }
    }

    /// The same client with another retry budget and time limit per attempt (e.g. a writer that
    /// moves to another node when one does not answer within a second or two).
    pub fn with_retry(mut self, retry_for: Duration, attempt_timeout: Option<Duration>) -> Client {
        self.retry_for = retry_for;
        self.attempt_timeout = attempt_timeout;
        self
    }

    pub fn from_context(ctx: &Context) -> Result<Client, ClientError> {
        pki::install_crypto_provider();
        let identity = Identity {
            cert_pem: ctx.cert_pem.clone(),
            key_pem: ctx.key_pem.clone(),
            ca_pem: ctx.ca_pem.clone(),
        };
        let http = pki::reqwest_client(&ctx.ca_pem, Some(&identity), Duration::from_secs(30))
            .map_err(|e| ClientError::Context(format!("context {}: {e}", ctx.name)))?;
        Ok(Client::new(&ctx.api_url, http))
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    async fn request<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        payload: Payload<'_>,
    ) -> Result<T, ClientError> {
        let replay = if method == Method::GET {
            Replay::Safe
        } else {
            Replay::Unsafe
        };
        self.request_with(method, path, payload, replay).await
    }

    /// Sends a request, retrying (the very same request, so the same `op_id`) while the answer
    /// says it was not applied, or for a [`Replay::Safe`] one also while its fate is unknown.
    async fn request_with<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        payload: Payload<'_>,
        replay: Replay,
    ) -> Result<T, ClientError> {
        let url = format!("{}/api/v1/{path}", self.base);
        let mut retry = crate::retry::retry_until(
            Instant::now() + self.retry_for,
            Duration::from_millis(100),
            Duration::from_secs(1),
        );
        loop {
            let mut request = self.http.request(method.clone(), &url);
            if let Some(limit) = self.attempt_timeout {
                request = request.timeout(limit);
            }
            request = match &payload {
                Payload::None => request,
                Payload::Json(value) => request.json(value),
                Payload::Yaml(text) => request
                    .header(reqwest::header::CONTENT_TYPE, "application/yaml")
                    .body(text.to_string()),
            };
            let mut sent_unanswered = false;
            let error = match request.send().await {
                Ok(response) => {
                    let status = response.status();
                    if status.is_success() {
                        if status == StatusCode::NO_CONTENT {
                            return serde_json::from_value(serde_json::Value::Null)
                                .map_err(|e| ClientError::Decode(e.to_string()));
                        }
                        return response
                            .json()
                            .await
                            .map_err(|e| ClientError::Decode(e.to_string()));
                    }
                    api_error(response).await
                }
                Err(e) => {
                    // Sent but unanswered (not a failed connection): its fate is unknown.
                    sent_unanswered = !e.is_connect();
                    ClientError::Connect {
                        url: self.base.clone(),
                        reason: error_chain(&e),
                    }
                }
            };
            let retryable = match &error {
                ClientError::Api { status: 503, .. } => true,
                ClientError::Api { status: 504, .. } => replay == Replay::Safe,
                ClientError::Connect { .. } => sent_unanswered && replay == Replay::Safe,
                _ => false,
            };
            let pause = if retryable { retry.next_pause() } else { None };
            let Some(pause) = pause else {
                return Err(error);
            };
            tokio::time::sleep(pause).await;
        }
    }

    pub async fn health(&self) -> Result<HealthResponse, ClientError> {
        self.request(Method::GET, "health", Payload::None).await
    }

    pub async fn nodes(&self) -> Result<Vec<NodeView>, ClientError> {
        self.request(Method::GET, "nodes", Payload::None).await
    }

    pub async fn remove_node(&self, id: u64) -> Result<(), ClientError> {
        let op_id = crate::state::new_op_id();
        self.request_with::<Option<()>>(
            Method::DELETE,
            &format!("nodes/{id}?op_id={op_id}"),
            Payload::None,
            Replay::Safe,
        )
        .await
        .map(|_| ())
    }

    /// Cordons, drains or uncordons (`Active`) node `id`.
    pub async fn set_availability(
        &self,
        id: u64,
        availability: smr_core::scheduler::Availability,
    ) -> Result<(), ClientError> {
        let body = crate::types::AvailabilityRequest {
            availability,
            op_id: Some(crate::state::new_op_id()),
        };
        let body = serde_json::to_value(&body).map_err(|e| ClientError::Decode(e.to_string()))?;
        self.request_with::<Option<()>>(
            Method::PUT,
            &format!("nodes/{id}/availability"),
            Payload::Json(body),
            Replay::Safe,
        )
        .await
        .map(|_| ())
    }

    /// Makes node `id` replace its WireGuard key (`smrmgr rotate-key`).
    pub async fn rotate_key(&self, id: u64) -> Result<RotateKeyResponse, ClientError> {
        self.request(
            Method::POST,
            &format!("nodes/{id}/rotate-key"),
            Payload::Json(serde_json::Value::Null),
        )
        .await
    }

    /// Starts a CA rotation (`smrmgr ca rotate`); when one is under way already, its status.
    pub async fn ca_rotate(&self) -> Result<CaStatus, ClientError> {
        self.request(
            Method::POST,
            "ca/rotate",
            Payload::Json(serde_json::Value::Null),
        )
        .await
    }

    pub async fn ca_status(&self) -> Result<CaStatus, ClientError> {
        self.request(Method::GET, "ca/status", Payload::None).await
    }

    /// Aborts the CA rotation under way (`smrmgr ca abort`); answers the CA status.
    pub async fn ca_abort(&self) -> Result<CaStatus, ClientError> {
        self.request(
            Method::POST,
            "ca/abort",
            Payload::Json(serde_json::Value::Null),
        )
        .await
    }

    pub async fn token(&self, ttl: Option<Duration>) -> Result<TokenResponse, ClientError> {
        let body = serde_json::json!({ "ttl_seconds": ttl.map(|t| t.as_secs()) });
        self.request(Method::POST, "tokens", Payload::Json(body))
            .await
    }

    /// An admin client certificate for user `name` and the public key of `csr_pem` (this client
    /// must hold an admin certificate).
    pub async fn sign_user(
        &self,
        name: &str,
        csr_pem: &str,
    ) -> Result<crate::types::UserCertResponse, ClientError> {
        let body = serde_json::json!({ "csr": csr_pem });
        self.request(
            Method::POST,
            &format!("users/{name}/certificate"),
            Payload::Json(body),
        )
        .await
    }

    /// Revokes every certificate of user `name`, or the one with `serial` (`smrmgr user
    /// revoke`); answers the user certificates the cluster records then.
    pub async fn revoke_user(
        &self,
        req: &crate::types::UserRevokeRequest,
    ) -> Result<Vec<crate::state::UserCert>, ClientError> {
        self.request(
            Method::POST,
            "users/revoke",
            Payload::Json(serde_json::to_value(req).unwrap_or_default()),
        )
        .await
    }

    /// The user certificates the cluster records (signed, and revoked ones).
    pub async fn user_certs(&self) -> Result<Vec<crate::state::UserCert>, ClientError> {
        self.request(Method::GET, "users", Payload::None).await
    }

    /// A new context for user `user` on the cluster of `base` (its API URL): a fresh key made
    /// here and an admin certificate the cluster signs for it ([`Self::sign_user`]).
    pub async fn user_context(
        &self,
        base: &Context,
        user: &str,
        name: &str,
    ) -> Result<Context, ClientError> {
        let (key_pem, csr_pem) = pki::new_key_and_csr(pki::Role::Admin, user, &[])
            .map_err(|e| ClientError::Context(format!("cannot make a key for {user}: {e}")))?;
        let signed = self.sign_user(user, &csr_pem).await?;
        Ok(Context {
            name: name.to_string(),
            api_url: base.api_url.clone(),
            ca_pem: signed.ca_pem,
            cert_pem: signed.cert,
            key_pem,
        })
    }

    /// Applies objects atomically; `op_id` makes retries safe (one is chosen if `None`).
    pub async fn apply(
        &self,
        objects: &[Object],
        dry_run: bool,
        op_id: Option<String>,
    ) -> Result<ApplyResponse, ClientError> {
        let op_id = op_id.unwrap_or_else(crate::state::new_op_id);
        let body = serde_json::json!({ "objects": objects, "op_id": op_id });
        let path = if dry_run {
            "objects?dry_run=true"
        } else {
            "objects"
        };
        self.request_with(Method::POST, path, Payload::Json(body), Replay::Safe)
            .await
    }

    /// Applies YAML text as it is; the server parses and validates it.
    pub async fn apply_yaml(
        &self,
        yaml: &str,
        dry_run: bool,
    ) -> Result<ApplyResponse, ClientError> {
        let path = if dry_run {
            "objects?dry_run=true".to_string()
        } else {
            format!("objects?op_id={}", crate::state::new_op_id())
        };
        self.request_with(Method::POST, &path, Payload::Yaml(yaml), Replay::Safe)
            .await
    }

    /// Deletes objects; `op_id` makes retries safe (one is chosen if `None`).
    pub async fn delete_with(
        &self,
        keys: &[ObjectKey],
        op_id: Option<String>,
    ) -> Result<ApplyResponse, ClientError> {
        let op_id = op_id.unwrap_or_else(crate::state::new_op_id);
        let body = serde_json::json!({ "keys": keys, "op_id": op_id });
        self.request_with(
            Method::POST,
            "objects/delete",
            Payload::Json(body),
            Replay::Safe,
        )
        .await
    }

    pub async fn delete(&self, keys: &[ObjectKey]) -> Result<ApplyResponse, ClientError> {
        self.delete_with(keys, None).await
    }

    /// A rolling restart of a containers definition's replicas (a new template generation, the
    /// definition unchanged). Carries an `op_id`, so a retry after a lost answer restarts once.
    pub async fn restart(&self, key: &ObjectKey) -> Result<ApplyResponse, ClientError> {
        let op_id = crate::state::new_op_id();
        self.request_with(
            Method::POST,
            &format!(
                "objects/{}/{}/{}/restart?op_id={op_id}{}",
                key.kind,
                key.group,
                key.name,
                prefix_query(key, '&')
            ),
            Payload::None,
            Replay::Safe,
        )
        .await
    }

    pub async fn list(&self, kind: Option<Kind>) -> Result<Vec<StoredObject>, ClientError> {
        let path = match kind {
            Some(kind) => format!("objects/{kind}"),
            None => "objects".into(),
        };
        self.request(Method::GET, &path, Payload::None).await
    }

    pub async fn get(&self, key: &ObjectKey) -> Result<StoredObject, ClientError> {
        self.request(
            Method::GET,
            &format!(
                "objects/{}/{}/{}{}",
                key.kind,
                key.group,
                key.name,
                prefix_query(key, '?')
            ),
            Payload::None,
        )
        .await
    }

    pub async fn replicas(
        &self,
        object: Option<&ObjectKey>,
    ) -> Result<Vec<ReplicaView>, ClientError> {
        let path = match object {
            Some(key) => format!("replicas?object={key}"),
            None => "replicas".into(),
        };
        self.request(Method::GET, &path, Payload::None).await
    }

    pub async fn describe(&self, key: &ObjectKey) -> Result<DescribeView, ClientError> {
        self.request(
            Method::GET,
            &format!(
                "describe/{}/{}/{}{}",
                key.kind,
                key.group,
                key.name,
                prefix_query(key, '?')
            ),
            Payload::None,
        )
        .await
    }

    /// Events after revision `since`; waits up to `wait` for one when there are none.
    pub async fn events(
        &self,
        since: u64,
        subject: Option<&str>,
        wait: Duration,
    ) -> Result<Vec<crate::state::Event>, ClientError> {
        let mut path = format!("events?since={since}&wait={}", wait.as_secs());
        if let Some(subject) = subject {
            path.push_str(&format!("&subject={subject}"));
        }
        self.request(Method::GET, &path, Payload::None).await
    }

    pub async fn logs(
        &self,
        replica: &str,
        tail: Option<usize>,
    ) -> Result<LogsResponse, ClientError> {
        let tail = tail.map(|t| format!("?tail={t}")).unwrap_or_default();
        self.request(
            Method::GET,
            &format!("replicas/{replica}/logs{tail}"),
            Payload::None,
        )
        .await
    }

    pub async fn exec(
        &self,
        replica: &str,
        command: &[String],
    ) -> Result<ExecResponse, ClientError> {
        let body = serde_json::json!({ "command": command });
        self.request(
            Method::POST,
            &format!("replicas/{replica}/exec"),
            Payload::Json(body),
        )
        .await
    }

    pub async fn gitops_list(&self) -> Result<Vec<GitopsView>, ClientError> {
        self.request(Method::GET, "gitops", Payload::None).await
    }

    pub async fn gitops_get(&self, group: &str, name: &str) -> Result<GitopsView, ClientError> {
        self.request(
            Method::GET,
            &format!("gitops/{group}/{name}"),
            Payload::None,
        )
        .await
    }

    /// Requests a sync; the answer carries the request number to wait for.
    pub async fn gitops_sync(&self, group: &str, name: &str) -> Result<SyncRequested, ClientError> {
        self.request(
            Method::POST,
            &format!("gitops/{group}/{name}/sync"),
            Payload::None,
        )
        .await
    }

    /// Follows a replica's log: chunks as the container writes them, until it stops.
    pub async fn logs_follow(
        &self,
        replica: &str,
        tail: Option<usize>,
    ) -> Result<impl futures::Stream<Item = Result<bytes::Bytes, ClientError>>, ClientError> {
        use futures::StreamExt as _;
        let tail = tail.map(|t| format!("&tail={t}")).unwrap_or_default();
        let request = self.http.get(format!(
            "{}/api/v1/replicas/{replica}/logs?follow=true{tail}",
            self.base
        ));
        let response = self.open_stream(request).await?;
        Ok(response
            .bytes_stream()
            .map(|chunk| chunk.map_err(|e| ClientError::Decode(error_chain(&e)))))
    }

    /// Starts an interactive exec in a replica; the connection then carries the frames of
    /// [`crate::stream`]. `size` is the terminal's (columns, rows).
    pub async fn attach(
        &self,
        replica: &str,
        command: &[String],
        tty: bool,
        stdin: bool,
        size: Option<(u16, u16)>,
    ) -> Result<reqwest::Upgraded, ClientError> {
        use crate::stream::{EXEC_PROTOCOL, percent_encode};
        let command =
            serde_json::to_string(command).map_err(|e| ClientError::Decode(e.to_string()))?;
        let mut url = format!(
            "{}/api/v1/replicas/{replica}/attach?command={}&tty={tty}&stdin={stdin}",
            self.base,
            percent_encode(&command)
        );
        if let Some((cols, rows)) = size {
            url.push_str(&format!("&cols={cols}&rows={rows}"));
        }
        let request = self
            .http
            .get(url)
            .header(reqwest::header::CONNECTION, "upgrade")
            .header(reqwest::header::UPGRADE, EXEC_PROTOCOL);
        let response = self.open_stream(request).await?;
        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            return Err(ClientError::Decode(format!(
                "the API answered {} instead of switching protocols",
                response.status()
            )));
        }
        response.upgrade().await.map_err(|e| ClientError::Connect {
            url: self.base.clone(),
            reason: error_chain(&e),
        })
    }

    /// Sends a request whose answer is a long-lived stream (no overall timeout).
    async fn open_stream(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ClientError> {
        let response = request
            .timeout(Duration::from_secs(30 * 24 * 3600))
            .send()
            .await
            .map_err(|e| ClientError::Connect {
                url: self.base.clone(),
                reason: error_chain(&e),
            })?;
        let status = response.status();
        if status.is_success() || status == StatusCode::SWITCHING_PROTOCOLS {
            return Ok(response);
        }
        Err(api_error(response).await)
    }

    pub async fn dns(&self) -> Result<Vec<DnsRecordView>, ClientError> {
        self.request(Method::GET, "dns", Payload::None).await
    }

    /// Any GET, for tools and tests.
    pub async fn get_json(&self, path: &str) -> Result<serde_json::Value, ClientError> {
        self.request(Method::GET, path, Payload::None).await
    }

    /// `GET /api/v1/backup`: the cluster state as a backup file (admin certificates only),
    /// retried like any read while no leader answers.
    pub async fn backup(&self) -> Result<Vec<u8>, ClientError> {
        let url = format!("{}/api/v1/backup", self.base);
        let mut retry = crate::retry::retry_until(
            Instant::now() + self.retry_for,
            Duration::from_millis(100),
            Duration::from_secs(1),
        );
        loop {
            let mut request = self.http.get(&url);
            if let Some(limit) = self.attempt_timeout {
                request = request.timeout(limit);
            }
            let error = match request.send().await {
                Ok(response) if response.status().is_success() => {
                    return response
                        .bytes()
                        .await
                        .map(|b| b.to_vec())
                        .map_err(|e| ClientError::Decode(error_chain(&e)));
                }
                Ok(response) => api_error(response).await,
                Err(e) => ClientError::Connect {
                    url: self.base.clone(),
                    reason: error_chain(&e),
                },
            };
            let retryable = matches!(
                error,
                ClientError::Api {
                    status: 503 | 504,
                    ..
                }
            );
            match retry.next_pause() {
                Some(pause) if retryable => tokio::time::sleep(pause).await,
                _ => return Err(error),
            }
        }
    }
}

/// An error with its causes, e.g. "error sending request: ... : invalid peer certificate: UnknownIssuer".
/// The typed error of an unsuccessful API answer (`{error: {code, message, details}}`).
async fn api_error(response: reqwest::Response) -> ClientError {
    let status = response.status();
    match response.json::<ErrorBody>().await {
        Ok(body) => ClientError::Api {
            status: status.as_u16(),
            code: body.error.code,
            message: body.error.message,
            details: body.error.details,
        },
        Err(_) => ClientError::Api {
            status: status.as_u16(),
            code: "http".into(),
            message: format!("the API answered {status}"),
            details: None,
        },
    }
}

pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use axum::Json;
    use axum::http::StatusCode;
    use axum::routing::post;

    use super::*;

    /// A fake API on loopback: every request's body is recorded; the first `unknown` requests
    /// answer 504 outcome_unknown, the next ones 200.
    async fn fake(unknown: usize) -> (String, Arc<Mutex<Vec<serde_json::Value>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        let handler = move |Json(body): Json<serde_json::Value>| {
            let record = record.clone();
            async move {
                let n = {
                    let mut seen = record.lock().expect("lock");
                    seen.push(body);
                    seen.len()
                };
                if n <= unknown {
                    let error = ErrorBody {
                        error: ErrorInfo {
                            code: "outcome_unknown".into(),
                            message: "outcome unknown".into(),
                            details: None,
                        },
                    };
                    return (StatusCode::GATEWAY_TIMEOUT, Json(serde_json::json!(error)));
                }
                let answer = ApplyResponse {
                    revision: 7,
                    outcomes: Vec::new(),
                    dry_run: false,
                };
                (StatusCode::OK, Json(serde_json::json!(answer)))
            }
        };
        let app = axum::Router::new()
            .route("/api/v1/objects", post(handler.clone()))
            .route("/api/v1/tokens", post(handler));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (url, seen)
    }

    #[tokio::test]
    async fn unknown_outcomes_are_retried_with_the_same_op_id() {
        let (url, seen) = fake(2).await;
        let client = Client::new(&url, reqwest::Client::new());
        let answer = client.apply(&[], false, None).await.expect("applied");
        assert_eq!(answer.revision, 7);
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 3, "two unknown answers, then the result");
        let op_id = &seen[0]["op_id"];
        assert!(op_id.is_string());
        assert!(seen.iter().all(|b| &b["op_id"] == op_id), "{seen:?}");
    }

    #[tokio::test]
    async fn an_unknown_outcome_is_reported_when_the_deadline_passes() {
        let (url, seen) = fake(usize::MAX).await;
        let client =
            Client::new(&url, reqwest::Client::new()).with_retry(Duration::from_millis(300), None);
        let e = client.apply(&[], false, None).await.expect_err("unknown");
        assert_eq!(e.exit_code(), 9);
        assert_eq!(e.code(), Some("outcome_unknown"));
        assert!(seen.lock().unwrap().len() >= 2);
        // A write without an op_id (a join token) is not sent again after an unknown outcome.
        let (url, seen) = fake(1).await;
        let client = Client::new(&url, reqwest::Client::new());
        let e = client.token(None).await.expect_err("unknown");
        assert_eq!(e.exit_code(), 9);
        assert_eq!(seen.lock().unwrap().len(), 1);
    }
}

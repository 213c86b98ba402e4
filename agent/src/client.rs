//! A typed client of the REST API, and the context file that tells it where and who to be.
//!
//! Used by `smrctl`, by `smrmgr` and by the end-to-end tests. Writes carry an `op_id`, so a write
//! retried after an `unavailable` answer (for example during a leader election) is applied once.

use std::path::Path;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::api::gitops::{GitopsView, SyncRequested};
use crate::api::types::*;
use crate::definitions::{Kind, Object, ObjectKey};
use crate::pki::{self, Identity};
use crate::state::StoredObject;

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
}

enum Payload<'a> {
    None,
    Json(serde_json::Value),
    Yaml(&'a str),
}

impl Client {
    pub fn new(api_url: &str, http: reqwest::Client) -> Client {
        Client {
            base: api_url.trim_end_matches('/').to_string(),
            http,
        }
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
        let url = format!("{}/api/v1/{path}", self.base);
        let deadline = Instant::now() + RETRY_FOR;
        let mut pause = Duration::from_millis(100);
        loop {
            let mut request = self.http.request(method.clone(), &url);
            request = match &payload {
                Payload::None => request,
                Payload::Json(value) => request.json(value),
                Payload::Yaml(text) => request
                    .header(reqwest::header::CONTENT_TYPE, "application/yaml")
                    .body(text.to_string()),
            };
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
                Err(e) => ClientError::Connect {
                    url: self.base.clone(),
                    reason: error_chain(&e),
                },
            };
            let retry = matches!(&error, ClientError::Api { status: 503, .. });
            if !retry || Instant::now() + pause > deadline {
                return Err(error);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(1));
        }
    }

    pub async fn health(&self) -> Result<HealthResponse, ClientError> {
        self.request(Method::GET, "health", Payload::None).await
    }

    pub async fn nodes(&self) -> Result<Vec<NodeView>, ClientError> {
        self.request(Method::GET, "nodes", Payload::None).await
    }

    pub async fn remove_node(&self, id: u64) -> Result<(), ClientError> {
        self.request::<Option<()>>(Method::DELETE, &format!("nodes/{id}"), Payload::None)
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

    pub async fn token(&self, ttl: Option<Duration>) -> Result<TokenResponse, ClientError> {
        let body = serde_json::json!({ "ttl_seconds": ttl.map(|t| t.as_secs()) });
        self.request(Method::POST, "tokens", Payload::Json(body))
            .await
    }

    /// Applies objects atomically; `op_id` makes retries safe (one is chosen if `None`).
    pub async fn apply(
        &self,
        objects: &[Object],
        dry_run: bool,
        op_id: Option<String>,
    ) -> Result<ApplyResponse, ClientError> {
        let op_id = op_id.unwrap_or_else(crate::node::new_op_id);
        let body = serde_json::json!({ "objects": objects, "op_id": op_id });
        let path = if dry_run {
            "objects?dry_run=true"
        } else {
            "objects"
        };
        self.request(Method::POST, path, Payload::Json(body)).await
    }

    /// Applies YAML text as it is; the server parses and validates it.
    pub async fn apply_yaml(
        &self,
        yaml: &str,
        dry_run: bool,
    ) -> Result<ApplyResponse, ClientError> {
        let path = if dry_run {
            "objects?dry_run=true"
        } else {
            "objects"
        };
        self.request(Method::POST, path, Payload::Yaml(yaml)).await
    }

    pub async fn delete(&self, keys: &[ObjectKey]) -> Result<ApplyResponse, ClientError> {
        let body = serde_json::json!({ "keys": keys, "op_id": crate::node::new_op_id() });
        self.request(Method::POST, "objects/delete", Payload::Json(body))
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
            &format!("objects/{}/{}/{}", key.kind, key.group, key.name),
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
            &format!("describe/{}/{}/{}", key.kind, key.group, key.name),
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
    /// [`crate::api::stream`]. `size` is the terminal's (columns, rows).
    pub async fn attach(
        &self,
        replica: &str,
        command: &[String],
        tty: bool,
        stdin: bool,
        size: Option<(u16, u16)>,
    ) -> Result<reqwest::Upgraded, ClientError> {
        use crate::api::stream::{EXEC_PROTOCOL, percent_encode};
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

//! Long-lived replica streams: `smrctl logs -f` and `smrctl exec -it`.
//!
//! Both are answered by the node that runs the replica; any other node relays the bytes
//! (the same forwarding as the plain logs and exec routes, marked with `x-smr-forwarded`).
//!
//! - Following a log: `GET /api/v1/replicas/{name}/logs?follow=true` answers a `text/plain` body
//!   that grows as the container writes, until the container stops or the client goes.
//! - Interactive exec: `GET /api/v1/replicas/{name}/attach?command=<JSON array>&tty=&stdin=&cols=&rows=`
//!   with `Connection: upgrade` and `Upgrade: smr-exec`. After `101 Switching Protocols` the
//!   connection carries [frames](write_frame) both ways: the client sends stdin, resizes and the
//!   end of stdin; the node sends output and, last, the command's exit code.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt as _;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::error::ApiError;
use super::runtime_error;
use super::types::ErrorBody;
use crate::node::{Node, ReplicaHost};

#[doc(hidden)] // transitional (issue 13): the framing moved to api-types.
pub use api_types::stream::*;

/// No deadline for streams relayed between nodes (reqwest's client-wide timeout would cut them).
const STREAM_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30 * 24 * 3600);

/// `GET /api/v1/replicas/{name}/logs?follow=true`.
pub(super) async fn follow_logs(
    node: Arc<Node>,
    name: String,
    tail: Option<usize>,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let host = node
        .replica_host(&name, headers.contains_key("x-smr-forwarded"))
        .await?;
    let mut query = vec!["follow=true".to_string()];
    if let Some(tail) = tail {
        query.push(format!("tail={tail}"));
    }
    let (container, runtime) = match host {
        ReplicaHost::Here { container, runtime } => (container, runtime),
        ReplicaHost::Elsewhere { node: record } => {
            let url = format!(
                "https://{}/api/v1/replicas/{name}/logs?{}",
                record.api_addr(),
                query.join("&")
            );
            let response = node
                .peers
                .client()
                .get(&url)
                .header("x-smr-forwarded", node.name.as_str())
                .timeout(STREAM_TIMEOUT)
                .send()
                .await
                .map_err(|e| unanswered(&record.api_addr(), e))?;
            let response = relay_error(response).await?;
            return Ok(text_stream(Body::from_stream(response.bytes_stream())));
        }
    };
    let tail = tail.map(|t| t.to_string()).unwrap_or_else(|| "all".into());
    let options = bollard::query_parameters::LogsOptionsBuilder::new()
        .stdout(true)
        .stderr(true)
        .follow(true)
        .tail(&tail)
        .build();
    let docker = runtime.docker().clone();
    // A task owns the Docker stream and feeds the body; it ends when the client goes.
    let (mut tx, rx) = futures::channel::mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    tokio::spawn(async move {
        use futures::SinkExt as _;
        let mut logs = docker.logs(&container, Some(options));
        while let Some(chunk) = logs.next().await {
            let item = chunk
                .map(|c| c.into_bytes())
                .map_err(|e| std::io::Error::other(e.to_string()));
            let end = item.is_err();
            if tx.send(item).await.is_err() || end {
                break;
            }
        }
    });
    Ok(text_stream(Body::from_stream(rx)))
}

fn text_stream(body: Body) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

fn unanswered(addr: &str, e: reqwest::Error) -> ApiError {
    ApiError::Unavailable(format!(
        "node at {addr} did not answer: {}",
        crate::client::error_chain(&e)
    ))
}

/// A non-success answer of another node, relayed as it is.
async fn relay_error(response: reqwest::Response) -> Result<reqwest::Response, ApiError> {
    let status = response.status();
    if status.is_success() || status == StatusCode::SWITCHING_PROTOCOLS {
        return Ok(response);
    }
    Err(match response.json::<ErrorBody>().await {
        Ok(body) => ApiError::Relayed { status, body },
        Err(_) => ApiError::Unavailable(format!("another node answered {status}")),
    })
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AttachParams {
    /// The command, a JSON array of strings.
    command: String,
    #[serde(default)]
    tty: bool,
    #[serde(default)]
    stdin: bool,
    #[serde(default)]
    cols: Option<u16>,
    #[serde(default)]
    rows: Option<u16>,
}

impl AttachParams {
    fn query(&self) -> String {
        let mut pairs = vec![
            format!("command={}", percent_encode(&self.command)),
            format!("tty={}", self.tty),
            format!("stdin={}", self.stdin),
        ];
        if let Some(cols) = self.cols {
            pairs.push(format!("cols={cols}"));
        }
        if let Some(rows) = self.rows {
            pairs.push(format!("rows={rows}"));
        }
        pairs.join("&")
    }
}

fn switching() -> Response {
    let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static(EXEC_PROTOCOL));
    response
}

/// `GET /api/v1/replicas/{name}/attach` (upgrade to [`EXEC_PROTOCOL`]).
pub(super) async fn attach(
    node: Arc<Node>,
    name: String,
    params: AttachParams,
    request: Request,
) -> Result<Response, ApiError> {
    let asked = request
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(EXEC_PROTOCOL));
    if !asked {
        return Err(ApiError::BadRequest(format!(
            "this route needs `Connection: upgrade` and `Upgrade: {EXEC_PROTOCOL}`"
        )));
    }
    let command: Vec<String> = serde_json::from_str(&params.command)
        .map_err(|e| ApiError::BadRequest(format!("command must be a JSON array: {e}")))?;
    if command.is_empty() {
        return Err(ApiError::BadRequest("command is empty".into()));
    }
    let forwarded = request.headers().contains_key("x-smr-forwarded");
    let (container, runtime) = match node.replica_host(&name, forwarded).await? {
        ReplicaHost::Here { container, runtime } => (container, runtime),
        ReplicaHost::Elsewhere { node: record } => {
            let url = format!(
                "https://{}/api/v1/replicas/{name}/attach?{}",
                record.api_addr(),
                params.query()
            );
            let response = node
                .peers
                .client()
                .get(&url)
                .header("x-smr-forwarded", node.name.as_str())
                .header(header::CONNECTION, "upgrade")
                .header(header::UPGRADE, EXEC_PROTOCOL)
                .timeout(STREAM_TIMEOUT)
                .send()
                .await
                .map_err(|e| unanswered(&record.api_addr(), e))?;
            let response = relay_error(response).await?;
            if response.status() != StatusCode::SWITCHING_PROTOCOLS {
                return Err(ApiError::Unavailable(format!(
                    "node {} did not switch protocols ({})",
                    record.name,
                    response.status()
                )));
            }
            let mut upstream = response
                .upgrade()
                .await
                .map_err(|e| unanswered(&record.api_addr(), e))?;
            tokio::spawn(async move {
                match hyper::upgrade::on(request).await {
                    Ok(client) => {
                        let mut client = TokioIo::new(client);
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                    }
                    Err(e) => tracing::info!("exec relay: the client did not upgrade: {e}"),
                }
            });
            return Ok(switching());
        }
    };
    let docker = runtime.docker().clone();
    let exec = docker
        .create_exec(
            &container,
            bollard::models::ExecConfig {
                cmd: Some(command),
                attach_stdin: Some(params.stdin),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                tty: Some(params.tty),
                // [height, width], set before the command starts.
                console_size: match (params.tty, params.rows, params.cols) {
                    (true, Some(rows), Some(cols)) => Some(vec![rows as usize, cols as usize]),
                    _ => None,
                },
                ..Default::default()
            },
        )
        .await
        .map_err(|e| runtime_error(crate::runtime::docker_error(&container, e)))?;
    let started = docker
        .start_exec(
            &exec.id,
            Some(bollard::exec::StartExecOptions {
                detach: false,
                tty: params.tty,
                output_capacity: None,
            }),
        )
        .await
        .map_err(|e| runtime_error(crate::runtime::docker_error(&container, e)))?;
    let bollard::exec::StartExecResults::Attached { output, input } = started else {
        return Err(ApiError::Internal("exec started detached".into()));
    };
    if params.tty
        && let (Some(cols), Some(rows)) = (params.cols, params.rows)
    {
        let _ = docker
            .resize_exec(
                &exec.id,
                bollard::exec::ResizeExecOptions {
                    width: cols,
                    height: rows,
                },
            )
            .await;
    }
    tokio::spawn(async move {
        let client = match hyper::upgrade::on(request).await {
            Ok(client) => TokioIo::new(client),
            Err(e) => {
                tracing::info!("exec: the client did not upgrade: {e}");
                return;
            }
        };
        run_session(docker, exec.id, output, input, client, params.tty).await;
    });
    Ok(switching())
}

/// Pumps frames between the client and an attached exec until the command ends.
async fn run_session<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    docker: bollard::Docker,
    exec_id: String,
    mut output: std::pin::Pin<
        Box<
            dyn futures::Stream<
                    Item = Result<bollard::container::LogOutput, bollard::errors::Error>,
                > + Send,
        >,
    >,
    mut input: std::pin::Pin<Box<dyn AsyncWrite + Send>>,
    client: S,
    tty: bool,
) {
    let (mut from_client, mut to_client) = tokio::io::split(client);
    let resize_docker = docker.clone();
    let resize_id = exec_id.clone();
    // Client -> container: stdin, resizes, end of stdin. Ends with the client or the command.
    let inbound = tokio::spawn(async move {
        while let Ok(Some((kind, payload))) = read_frame(&mut from_client).await {
            match kind {
                FRAME_STDIN
                    if input.write_all(&payload).await.is_err() || input.flush().await.is_err() =>
                {
                    break;
                }
                FRAME_STDIN => {}
                FRAME_RESIZE if payload.len() == 4 => {
                    let cols = u16::from_be_bytes([payload[0], payload[1]]);
                    let rows = u16::from_be_bytes([payload[2], payload[3]]);
                    let _ = resize_docker
                        .resize_exec(
                            &resize_id,
                            bollard::exec::ResizeExecOptions {
                                width: cols,
                                height: rows,
                            },
                        )
                        .await;
                }
                // With a TTY, Docker ends the output when stdin closes: the end of stdin is
                // typed instead, as Ctrl-D.
                FRAME_STDIN_END if tty => {
                    let _ = input.write_all(&[4]).await;
                    let _ = input.flush().await;
                }
                FRAME_STDIN_END => {
                    let _ = input.shutdown().await;
                }
                _ => {}
            }
        }
    });
    let mut failed = None;
    while let Some(chunk) = output.next().await {
        match chunk {
            Ok(chunk) => {
                if write_frame(&mut to_client, FRAME_OUTPUT, &chunk.into_bytes())
                    .await
                    .is_err()
                {
                    inbound.abort();
                    return;
                }
            }
            Err(e) => {
                failed = Some(e.to_string());
                break;
            }
        }
    }
    inbound.abort();
    let last = match failed {
        Some(why) => (FRAME_ERROR, why.into_bytes()),
        None => match docker.inspect_exec(&exec_id).await {
            Ok(inspected) => (
                FRAME_EXIT,
                inspected.exit_code.unwrap_or(-1).to_be_bytes().to_vec(),
            ),
            Err(e) => (FRAME_ERROR, e.to_string().into_bytes()),
        },
    };
    let _ = write_frame(&mut to_client, last.0, &last.1).await;
    let _ = to_client.shutdown().await;
}

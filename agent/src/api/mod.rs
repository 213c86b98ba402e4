//! The REST API on port 1443: routes, authentication by client certificate, OpenAPI document.
//!
//! Handlers only parse and check a request into a typed action and call [`crate::node::Node`].
//! Every route but `GET /api/v1/ca`, `POST /api/v1/join` and the gitops webhook (authenticated by
//! its HMAC signature) needs a client certificate signed by the cluster CA; the `internal/*` routes
//! need a node certificate. Credentials stored in objects are never returned.

mod availability;
mod backup;
pub mod error;
pub mod serve;
pub mod stream;
pub mod sync_routes;
mod users;
#[doc(hidden)] // transitional (issue 13): the bodies moved to api-types.
pub use api_types::{plain_objects, types};

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;

use crate::definitions::{self, Kind, ObjectKey};
use crate::node::{Consistency, Node, ReplicaHost};
use crate::pki::{PeerIdentity, Role};
use crate::state::{CommandResult, StoredObject};
use error::ApiError;
use types::*;

/// Largest request body accepted, in bytes.
pub const BODY_LIMIT: usize = 8 * 1024 * 1024;

/// Longest lifetime of a join token (`ttl_seconds`), one year.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// Longest long poll (`GET /api/v1/events?wait=`), below the usual 15-30 s client timeouts.
pub const MAX_WAIT: Duration = Duration::from_secs(10);

/// The OpenAPI document, served at `/api/v1/openapi.json`; a test keeps it in sync with [`ROUTES`].
pub const OPENAPI: &str = include_str!("openapi.json");

/// Every route: (method, path). The router is built from the same table the OpenAPI test checks.
pub const ROUTES: &[(&str, &str)] = &[
    ("get", "/api/v1/ca"),
    ("post", "/api/v1/join"),
    ("get", "/api/v1/openapi.json"),
    ("get", "/api/v1/health"),
    ("get", "/api/v1/nodes"),
    ("delete", "/api/v1/nodes/{id}"),
    ("post", "/api/v1/nodes/{id}/rotate-key"),
    ("put", "/api/v1/nodes/{id}/availability"),
    ("post", "/api/v1/tokens"),
    ("get", "/api/v1/objects"),
    ("post", "/api/v1/objects"),
    ("post", "/api/v1/objects/delete"),
    ("get", "/api/v1/objects/{kind}"),
    ("get", "/api/v1/objects/{kind}/{group}/{name}"),
    ("delete", "/api/v1/objects/{kind}/{group}/{name}"),
    ("post", "/api/v1/objects/{kind}/{group}/{name}/restart"),
    ("get", "/api/v1/replicas"),
    ("get", "/api/v1/events"),
    ("get", "/api/v1/dns"),
    ("get", "/api/v1/replicas/{name}/logs"),
    ("post", "/api/v1/replicas/{name}/exec"),
    ("get", "/api/v1/replicas/{name}/attach"),
    ("get", "/api/v1/describe/{kind}/{group}/{name}"),
    ("get", "/api/v1/gitops"),
    ("get", "/api/v1/gitops/{group}/{name}"),
    ("post", "/api/v1/gitops/{group}/{name}/sync"),
    ("post", "/api/v1/gitops/{group}/{name}/webhook"),
    ("post", "/api/v1/internal/propose"),
    ("post", "/api/v1/internal/propose-batch"),
    ("get", "/api/v1/internal/read-index"),
    ("post", "/api/v1/internal/sign"),
    ("get", "/metrics"),
    ("get", "/api/v1/backup"),
    ("post", "/api/v1/users/{name}/certificate"),
    ("post", "/api/v1/internal/heartbeat"),
    ("get", "/api/v1/internal/state"),
    ("post", "/api/v1/ca/rotate"),
    ("get", "/api/v1/ca/status"),
    ("post", "/api/v1/internal/report"),
    ("get", "/api/v1/internal/cluster-key"),
    ("post", "/api/v1/ca/abort"),
    ("get", "/api/v1/users"),
    ("post", "/api/v1/users/revoke"),
];

/// The identity of the TLS client of a connection, if it presented a valid certificate.
#[derive(Clone, Debug, Default)]
pub struct ClientIdentity(pub Option<PeerIdentity>);

/// The serial number (lowercase hex) of the TLS client's certificate, if it presented one:
/// checked against the revoked user certificates ([`crate::state::user_certs`]).
#[derive(Clone, Debug, Default)]
pub struct ClientCertSerial(pub Option<String>);

pub fn router(node: Arc<Node>) -> Router {
    let internal = Router::new()
        .route("/api/v1/internal/propose", post(internal_propose))
        .route(
            "/api/v1/internal/propose-batch",
            post(internal_propose_batch),
        )
        .route("/api/v1/internal/read-index", get(internal_read_index))
        .route("/api/v1/internal/sign", post(internal_sign))
        .route("/api/v1/internal/heartbeat", post(internal_heartbeat))
        .route("/api/v1/internal/state", get(internal_state))
        .route("/api/v1/internal/report", post(internal_report))
        .route("/api/v1/internal/cluster-key", get(internal_cluster_key))
        .route_layer(middleware::from_fn(require_node));
    let authenticated = Router::new()
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/health", get(health))
        .route("/api/v1/nodes", get(list_nodes))
        .route("/api/v1/nodes/{id}", delete(remove_node))
        .route("/api/v1/nodes/{id}/rotate-key", post(rotate_key))
        .route(
            "/api/v1/nodes/{id}/availability",
            axum::routing::put(availability::set),
        )
        .route("/api/v1/tokens", post(new_token))
        .route("/api/v1/objects", get(list_all).post(apply))
        .route("/api/v1/objects/delete", post(delete_many))
        .route("/api/v1/objects/{kind}", get(list_kind))
        .route(
            "/api/v1/objects/{kind}/{group}/{name}",
            get(get_object).delete(delete_one),
        )
        .route(
            "/api/v1/objects/{kind}/{group}/{name}/restart",
            post(restart_one),
        )
        .route("/api/v1/replicas", get(list_replicas))
        .route("/api/v1/events", get(list_events))
        .route("/api/v1/dns", get(dns_records))
        .route("/api/v1/replicas/{name}/logs", get(replica_logs))
        .route("/api/v1/replicas/{name}/exec", post(replica_exec))
        .route("/api/v1/replicas/{name}/attach", get(replica_attach))
        .route("/api/v1/describe/{kind}/{group}/{name}", get(describe))
        .route("/api/v1/gitops", get(sync_routes::list))
        .route("/api/v1/gitops/{group}/{name}", get(sync_routes::describe))
        .route(
            "/api/v1/gitops/{group}/{name}/sync",
            post(sync_routes::sync),
        )
        .route("/metrics", get(crate::metrics::api_handler))
        .route("/api/v1/backup", get(backup::backup))
        .route("/api/v1/ca/rotate", post(ca_rotate))
        .route("/api/v1/ca/status", get(ca_status))
        .route("/api/v1/ca/abort", post(ca_abort))
        .merge(internal)
        .merge(users::router())
        .route_layer(middleware::from_fn_with_state(
            node.clone(),
            require_client_cert,
        ));
    Router::new()
        .route("/api/v1/ca", get(ca))
        .route("/api/v1/join", post(join))
        // Git hosts have no client certificate: the body's HMAC signature authenticates.
        .route(
            "/api/v1/gitops/{group}/{name}/webhook",
            post(sync_routes::webhook),
        )
        .merge(authenticated)
        .fallback(|| async { ApiError::NotFound("route".into()) })
        .layer(middleware::from_fn(crate::metrics::api_request))
        // Outermost first: a method a route does not serve is refused before authentication.
        .layer(middleware::from_fn(allowed_methods))
        .layer(middleware::map_response(json_errors))
        .with_state(node)
}

/// Answers 405 (with `Allow`) to a method that no route of the request's path serves, before
/// the authentication of that route is asked for.
async fn allowed_methods(req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let matching: Vec<&str> = ROUTES
        .iter()
        .filter(|(_, pattern)| route_matches(pattern, path))
        .map(|(method, _)| *method)
        .collect();
    let method = req.method().as_str().to_ascii_lowercase();
    let served = |m: &str| matching.contains(&m) || (m == "head" && matching.contains(&"get"));
    if matching.is_empty() || served(&method) {
        return next.run(req).await;
    }
    let mut allow: Vec<String> = matching.iter().map(|m| m.to_ascii_uppercase()).collect();
    allow.sort();
    allow.dedup();
    let allow = allow.join(", ");
    let error = ApiError::MethodNotAllowed(format!(
        "{} is not served on {path} (allowed: {allow})",
        req.method()
    ));
    let mut response = error.into_response();
    if let Ok(value) = header::HeaderValue::from_str(&allow) {
        response.headers_mut().insert(header::ALLOW, value);
    }
    response
}

/// Whether `path` matches a route pattern of [`ROUTES`] (`{name}` is one segment).
fn route_matches(pattern: &str, path: &str) -> bool {
    let (mut want, mut got) = (pattern.split('/'), path.split('/'));
    loop {
        match (want.next(), got.next()) {
            (None, None) => return true,
            (Some(w), Some(g)) if w.starts_with('{') || w == g => {}
            _ => return false,
        }
    }
}

/// Puts every error answer in the JSON envelope: axum's own rejections (a query string or path
/// that does not parse, a method not allowed) are plain text, with their status kept.
async fn json_errors(response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        text
    };
    let code = match status {
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        s if s.is_client_error() => "bad_request",
        _ => "internal",
    };
    let body = ErrorBody {
        error: ErrorInfo {
            code: code.into(),
            message,
            details: None,
        },
    };
    let mut out = (status, Json(body)).into_response();
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            out.headers_mut().insert(name.clone(), value.clone());
        }
    }
    out
}

/// Lets clients with a certificate of the cluster CA through, except an admin certificate that
/// was revoked (`smrmgr user revoke`: 403 naming it), as this node's applied state says.
async fn require_client_cert(
    State(node): AppState,
    Extension(who): Extension<ClientIdentity>,
    serial: Option<Extension<ClientCertSerial>>,
    req: Request,
    next: Next,
) -> Response {
    match who.0 {
        Some(PeerIdentity {
            role: Role::Admin,
            name,
        }) => {
            let serial = serial.and_then(|Extension(s)| s.0);
            if let Some(serial) = serial
                && let Ok(state) = node.state(Consistency::Stale).await
                && crate::state::user_certs::revoked(&state.user_certs, &serial).is_some()
            {
                return ApiError::Forbidden(format!(
                    "the certificate of {name:?} (serial {serial}) was revoked (`smrmgr user \
                     revoke`): ask an admin for a new one"
                ))
                .into_response();
            }
            next.run(req).await
        }
        Some(_) => next.run(req).await,
        None => ApiError::Unauthenticated.into_response(),
    }
}

/// Lets only clients with a node certificate through (node-to-node routes, the Raft port).
pub async fn require_node(
    Extension(who): Extension<ClientIdentity>,
    req: Request,
    next: Next,
) -> Response {
    let why = "only cluster nodes (node certificates) may call this route";
    match require_role(&who, Role::Node, why) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

/// Refuses (forbidden, saying `why`) a client whose certificate is not of `role`.
pub(crate) fn require_role(who: &ClientIdentity, role: Role, why: &str) -> Result<(), ApiError> {
    match &who.0 {
        Some(PeerIdentity { role: r, .. }) if *r == role => Ok(()),
        _ => Err(ApiError::Forbidden(why.into())),
    }
}

type AppState = State<Arc<Node>>;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadParams {
    /// `linearizable` (default) or `stale`.
    #[serde(default)]
    consistency: Option<String>,
    /// The prefix of a custom object (`traefik.io/v1`); absent: `simplecontainer.io/v1`.
    #[serde(default)]
    prefix: Option<String>,
}

impl ReadParams {
    fn consistency(&self) -> Result<Consistency, ApiError> {
        match self.consistency.as_deref() {
            None | Some("linearizable") => Ok(Consistency::Linearizable),
            Some("stale") => Ok(Consistency::Stale),
            Some(other) => Err(ApiError::BadRequest(format!(
                "consistency must be linearizable or stale, not {other:?}"
            ))),
        }
    }
}

/// How much of an oversized body is read and thrown away before answering 413, so that the
/// client finishes sending and reads the answer instead of finding the connection closed.
const DRAIN_LIMIT: usize = 64 * 1024 * 1024;

/// Reads a whole body up to [`BODY_LIMIT`].
async fn read_body(body: Body) -> Result<Bytes, ApiError> {
    use futures::StreamExt as _;
    let mut stream = body.into_data_stream();
    let mut data = Vec::new();
    let mut seen = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::BadRequest(format!("reading the request body: {e}")))?;
        seen += chunk.len();
        if seen <= BODY_LIMIT {
            data.extend_from_slice(&chunk);
        } else if seen > DRAIN_LIMIT {
            break;
        }
    }
    if seen > BODY_LIMIT {
        return Err(ApiError::PayloadTooLarge { limit: BODY_LIMIT });
    }
    Ok(Bytes::from(data))
}

fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| ApiError::BadRequest(format!("request body: {e}")))
}

async fn ca(State(node): AppState) -> Result<Response, ApiError> {
    let state = node.state(Consistency::Stale).await?;
    let ca = state
        .ca
        .as_ref()
        .ok_or_else(|| ApiError::Unavailable("the cluster CA is not recorded yet".into()))?;
    Ok((
        [(header::CONTENT_TYPE, "application/x-pem-file")],
        ca.cert_pem.clone(),
    )
        .into_response())
}

/// `POST /api/v1/ca/rotate` (admin certificates only): starts a CA rotation, or answers the
/// status of the one under way.
async fn ca_rotate(
    State(node): AppState,
    Extension(who): Extension<ClientIdentity>,
) -> Result<Json<CaStatus>, ApiError> {
    require_role(
        &who,
        Role::Admin,
        "only admin certificates may rotate the cluster CA",
    )?;
    Ok(Json(node.start_ca_rotation().await?))
}

/// `POST /api/v1/ca/abort` (admin certificates only): abandons the CA rotation under way.
async fn ca_abort(
    State(node): AppState,
    Extension(who): Extension<ClientIdentity>,
) -> Result<Json<CaStatus>, ApiError> {
    require_role(
        &who,
        Role::Admin,
        "only admin certificates may abort a CA rotation",
    )?;
    Ok(Json(node.abort_ca_rotation().await?))
}

/// `GET /api/v1/ca/status`: the CA, a rotation under way, the CA of each node's certificate.
async fn ca_status(State(node): AppState) -> Result<Json<CaStatus>, ApiError> {
    Ok(Json(node.ca_status().await?))
}

async fn join(State(node): AppState, body: Body) -> Result<Json<JoinResponse>, ApiError> {
    let req: JoinRequest = parse_json(&read_body(body).await?)?;
    Ok(Json(node.join(req).await?))
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn health(State(node): AppState) -> Result<Json<HealthResponse>, ApiError> {
    Ok(Json(node.health().await?))
}

async fn list_nodes(
    State(node): AppState,
    Query(params): Query<ReadParams>,
) -> Result<Json<Vec<NodeView>>, ApiError> {
    Ok(Json(node.nodes(params.consistency()?).await?))
}

/// `POST /api/v1/nodes/{id}/rotate-key`: node `id` makes a new WireGuard key, publishes it and
/// applies it; another node relays the request to it.
async fn rotate_key(
    State(node): AppState,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<RotateKeyResponse>, ApiError> {
    let id: u64 = id
        .parse()
        .map_err(|_| ApiError::BadRequest(format!("node id {id:?} is not a number")))?;
    let forwarded = headers.contains_key("x-smr-forwarded");
    Ok(Json(node.rotate_key(id, forwarded).await?))
}

async fn remove_node(
    State(node): AppState,
    Path(id): Path<String>,
    Query(params): Query<WriteParams>,
) -> Result<StatusCode, ApiError> {
    let id: u64 = id
        .parse()
        .map_err(|_| ApiError::BadRequest(format!("node id {id:?} is not a number")))?;
    node.remove_node(id, params.op_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn new_token(State(node): AppState, body: Body) -> Result<Json<TokenResponse>, ApiError> {
    let bytes = read_body(body).await?;
    let req: TokenRequest = if bytes.is_empty() {
        TokenRequest::default()
    } else {
        parse_json(&bytes)?
    };
    let ttl = Duration::from_secs(req.ttl_seconds.unwrap_or(24 * 3600));
    if ttl.is_zero() || ttl > MAX_TOKEN_TTL {
        return Err(ApiError::BadRequest(format!(
            "ttl_seconds must be between 1 and {} (one year), not {}",
            MAX_TOKEN_TTL.as_secs(),
            ttl.as_secs()
        )));
    }
    let (token, expires_ms) = node.new_join_token(ttl).await?;
    Ok(Json(TokenResponse {
        token: token.to_string(),
        expires_ms,
    }))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApplyParams {
    #[serde(default)]
    dry_run: bool,
    /// Idempotency key (for YAML bodies; a JSON body carries its own `op_id`).
    #[serde(default)]
    op_id: Option<String>,
}

/// The `op_id` query parameter of writes without a JSON body.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct WriteParams {
    #[serde(default)]
    op_id: Option<String>,
    /// The prefix of a custom object (`traefik.io/v1`); absent: `simplecontainer.io/v1`.
    #[serde(default)]
    prefix: Option<String>,
}

/// `POST /api/v1/objects`: JSON `{objects: [...]}` or YAML definitions (`Content-Type: application/yaml`).
async fn apply(
    State(node): AppState,
    Query(params): Query<ApplyParams>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<ApplyResponse>, ApiError> {
    let bytes = read_body(body).await?;
    let (objects, op_id) = if is_yaml(&headers) {
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| ApiError::BadRequest("request body is not UTF-8".into()))?;
        (definitions::parse_str("request body", text)?, params.op_id)
    } else {
        let req: ApplyRequest = parse_json(&bytes)?;
        for object in &req.objects {
            definitions::validate(object)?;
        }
        if params.op_id.is_some() && req.op_id.is_some() && params.op_id != req.op_id {
            return Err(ApiError::BadRequest(
                "op_id is given twice, differently: in the query and in the body".into(),
            ));
        }
        (req.objects, req.op_id.or(params.op_id))
    };
    if objects.is_empty() {
        return Err(ApiError::BadRequest(
            "nothing to apply: no definitions in the request".into(),
        ));
    }
    Ok(Json(node.apply(objects, op_id, params.dry_run).await?))
}

fn is_yaml(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("yaml"))
}

async fn delete_many(State(node): AppState, body: Body) -> Result<Json<ApplyResponse>, ApiError> {
    let req: DeleteRequest = parse_json(&read_body(body).await?)?;
    Ok(Json(node.delete(req.keys, req.op_id).await?))
}

fn parse_kind(kind: &str) -> Result<Kind, ApiError> {
    kind.parse()
        .map_err(|e: definitions::UnknownKind| ApiError::BadRequest(e.to_string()))
}

/// The key of `kind/group/name`, under `prefix` when one is given (`?prefix=traefik.io/v1`).
fn parse_key(
    kind: &str,
    group: String,
    name: String,
    prefix: Option<&str>,
) -> Result<ObjectKey, ApiError> {
    let key = ObjectKey::new(parse_kind(kind)?, group, name);
    match prefix {
        None => Ok(key),
        Some(prefix) => format!("{prefix}/{key}")
            .parse()
            .map_err(|e: definitions::KeyError| ApiError::BadRequest(e.to_string())),
    }
}

async fn list_all(
    State(node): AppState,
    Query(params): Query<ReadParams>,
) -> Result<Json<Vec<StoredObject>>, ApiError> {
    let state = node.state(params.consistency()?).await?;
    Ok(Json(
        state.objects.values().map(crate::views::redacted).collect(),
    ))
}

async fn list_kind(
    State(node): AppState,
    Path(kind): Path<String>,
    Query(params): Query<ReadParams>,
) -> Result<Json<Vec<StoredObject>>, ApiError> {
    let kind = parse_kind(&kind)?;
    let prefix = match params.prefix.as_deref() {
        None => None,
        Some(p) => Some(
            parse_key(kind.as_str(), "g".into(), "n".into(), Some(p))?
                .prefix()
                .to_string(),
        ),
    };
    let state = node.state(params.consistency()?).await?;
    Ok(Json(
        state
            .objects_of(kind)
            .filter(|o| prefix.as_ref().is_none_or(|p| *p == o.object.prefix))
            .map(crate::views::redacted)
            .collect(),
    ))
}

async fn get_object(
    State(node): AppState,
    Path((kind, group, name)): Path<(String, String, String)>,
    Query(params): Query<ReadParams>,
) -> Result<Json<StoredObject>, ApiError> {
    let key = parse_key(&kind, group, name, params.prefix.as_deref())?;
    let state = node.state(params.consistency()?).await?;
    state
        .objects
        .get(&key)
        .map(crate::views::redacted)
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(key.to_string()))
}

async fn delete_one(
    State(node): AppState,
    Path((kind, group, name)): Path<(String, String, String)>,
    Query(params): Query<WriteParams>,
) -> Result<Json<ApplyResponse>, ApiError> {
    let key = parse_key(&kind, group, name, params.prefix.as_deref())?;
    Ok(Json(node.delete_one(key, params.op_id).await?))
}

/// `POST /api/v1/objects/{kind}/{group}/{name}/restart`: a rolling restart of a containers
/// definition's replicas.
async fn restart_one(
    State(node): AppState,
    Path((kind, group, name)): Path<(String, String, String)>,
    Query(params): Query<WriteParams>,
) -> Result<Json<ApplyResponse>, ApiError> {
    let key = parse_key(&kind, group, name, params.prefix.as_deref())?;
    Ok(Json(node.restart(key, params.op_id).await?))
}

async fn internal_propose(
    State(node): AppState,
    body: Body,
) -> Result<Json<CommandResult>, ApiError> {
    let req: ProposeRequest = parse_json(&read_body(body).await?)?;
    Ok(Json(node.write_here(req.command).await?))
}

/// Commands a follower forwards together: each answered as [`internal_propose`] would answer it
/// alone.
async fn internal_propose_batch(
    State(node): AppState,
    body: Body,
) -> Result<Json<ProposeBatchResponse>, ApiError> {
    // A node playing the version before this route answers as that version did.
    if !crate::node::features::Feature::ProposeBatch.here() {
        return Err(ApiError::NotFound("route".into()));
    }
    let req: ProposeBatchRequest = parse_json(&read_body(body).await?)?;
    let answers = node
        .write_batch_here(req.commands)
        .await
        .into_iter()
        .map(|written| match written {
            Ok(result) => ProposeAnswer::Done(result),
            Err(e) => {
                let e = ApiError::from(e);
                ProposeAnswer::Failed {
                    status: e.status().as_u16(),
                    body: e.body(),
                }
            }
        })
        .collect();
    Ok(Json(ProposeBatchResponse { answers }))
}

async fn internal_read_index(State(node): AppState) -> Result<Json<ReadIndexResponse>, ApiError> {
    Ok(Json(ReadIndexResponse {
        index: node.read_index().await?,
    }))
}

async fn internal_sign(State(node): AppState, body: Body) -> Result<Json<SignResponse>, ApiError> {
    let req: SignRequest = parse_json(&read_body(body).await?)?;
    let cert = node.sign_here(req).await?;
    Ok(Json(SignResponse { cert }))
}

/// A node's replica report (issue 14), a delta or in full, proposed in one entry with the others
/// that arrive meanwhile.
async fn internal_report(
    State(node): AppState,
    Extension(who): Extension<ClientIdentity>,
    body: Body,
) -> Result<Json<ReportResponse>, ApiError> {
    let req: ReportRequest = parse_json(&read_body(body).await?)?;
    // The route layer let only node certificates through.
    let name = who.0.map(|p| p.name).unwrap_or_default();
    let reported = node.report_here(req.report, &name).await?;
    Ok(Json(ReportResponse {
        send_full: reported == crate::node::reports::Reported::SendFull,
    }))
}

/// The cluster key, for a member (named by its node certificate) that does not hold it: the
/// migration of a cluster created before the CA key was sealed in the state.
async fn internal_cluster_key(
    State(node): AppState,
    Extension(who): Extension<ClientIdentity>,
) -> Result<Json<ClusterKeyResponse>, ApiError> {
    // The route layer let only node certificates through.
    let name = who.0.map(|p| p.name).unwrap_or_default();
    Ok(Json(node.cluster_key_for(&name).await?))
}

/// A node's heartbeat to the leader (issue 14): recorded in the leader's memory, not the log.
async fn internal_heartbeat(
    State(node): AppState,
    Extension(who): Extension<ClientIdentity>,
    body: Body,
) -> Result<Json<HeartbeatResponse>, ApiError> {
    let req: HeartbeatRequest = parse_json(&read_body(body).await?)?;
    // The route layer let only node certificates through.
    let name = who.0.map(|p| p.name).unwrap_or_default();
    Ok(Json(node.heartbeat_here(req, &name).await?))
}

/// This node's applied state, whole (node certificates only: it holds secrets). Simulated
/// nodes (`crate::sim`) reconcile from it, having no store of their own.
async fn internal_state(State(node): AppState) -> Result<Response, ApiError> {
    let state = node.state(Consistency::Stale).await?;
    let body = serde_json::to_vec(&*state)
        .map_err(|e| ApiError::Internal(format!("serializing the state: {e}")))?;
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplicaParams {
    /// Only the replicas of this object (`KIND/GROUP/NAME`).
    #[serde(default)]
    object: Option<String>,
    #[serde(default)]
    consistency: Option<String>,
}

async fn list_replicas(
    State(node): AppState,
    Query(params): Query<ReplicaParams>,
) -> Result<Json<Vec<ReplicaView>>, ApiError> {
    let consistency = ReadParams {
        consistency: params.consistency,
        prefix: None,
    }
    .consistency()?;
    let filter = params
        .object
        .map(|o| {
            o.parse::<ObjectKey>()
                .map_err(|e| ApiError::BadRequest(e.to_string()))
        })
        .transpose()?;
    let state = node.state(consistency).await?;
    Ok(Json(crate::views::replicas(&state, filter.as_ref())))
}

/// Where replica `name` runs: its node and container, from the nodes' reports.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LogParams {
    /// Only the last this many lines.
    #[serde(default)]
    tail: Option<usize>,
    /// Keep the response open and stream new lines (`text/plain`) until the container stops.
    #[serde(default)]
    follow: bool,
}

/// `GET /api/v1/replicas/{name}/logs`: answered by the node that runs the replica.
async fn replica_logs(
    State(node): AppState,
    Path(name): Path<String>,
    Query(params): Query<LogParams>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if params.follow {
        return stream::follow_logs(node, name, params.tail, &headers).await;
    }
    let (container, runtime) = match node
        .replica_host(&name, headers.contains_key("x-smr-forwarded"))
        .await?
    {
        ReplicaHost::Here { container, runtime } => (container, runtime),
        ReplicaHost::Elsewhere { node: record } => {
            let tail = params
                .tail
                .map(|t| format!("?tail={t}"))
                .unwrap_or_default();
            return node
                .call::<(), LogsResponse>(
                    &record.api_addr(),
                    &format!("replicas/{name}/logs{tail}"),
                    None,
                )
                .await
                .map_err(ApiError::from)
                .map(|logs| Json(logs).into_response());
        }
    };
    let bytes = runtime
        .logs(&container, params.tail)
        .await
        .map_err(runtime_error)?;
    Ok(Json(LogsResponse {
        replica: name,
        node: node.id,
        logs: String::from_utf8_lossy(&bytes).into_owned(),
    })
    .into_response())
}

/// `GET /api/v1/replicas/{name}/attach`: an interactive exec (see [`stream`]).
async fn replica_attach(
    State(node): AppState,
    Path(name): Path<String>,
    Query(params): Query<stream::AttachParams>,
    request: Request,
) -> Result<Response, ApiError> {
    stream::attach(node, name, params, request).await
}

/// `POST /api/v1/replicas/{name}/exec`: runs a command in the replica, on its node.
async fn replica_exec(
    State(node): AppState,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<ExecResponse>, ApiError> {
    let req: ExecRequest = parse_json(&read_body(body).await?)?;
    if req.command.is_empty() {
        return Err(ApiError::BadRequest("command is empty".into()));
    }
    let (container, runtime) = match node
        .replica_host(&name, headers.contains_key("x-smr-forwarded"))
        .await?
    {
        ReplicaHost::Here { container, runtime } => (container, runtime),
        ReplicaHost::Elsewhere { node: record } => {
            return node
                .call::<_, ExecResponse>(
                    &record.api_addr(),
                    &format!("replicas/{name}/exec"),
                    Some(&req),
                )
                .await
                .map_err(ApiError::from)
                .map(Json);
        }
    };
    use crate::runtime::Runtime as _;
    let out = runtime
        .exec(&container, &req.command)
        .await
        .map_err(runtime_error)?;
    Ok(Json(ExecResponse {
        exit_code: out.exit_code,
        output: out.output,
    }))
}

fn runtime_error(e: crate::runtime::RuntimeError) -> ApiError {
    match e {
        crate::runtime::RuntimeError::NotFound(what) => ApiError::NotFound(what),
        crate::runtime::RuntimeError::Unreachable { .. } => ApiError::Unavailable(e.to_string()),
        other => ApiError::Internal(other.to_string()),
    }
}

/// The `*.private` records this node serves (computed from its applied state).
async fn dns_records(State(node): AppState) -> Result<Json<Vec<DnsRecordView>>, ApiError> {
    Ok(Json(node.dns_records().await?))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventParams {
    /// Only events after this revision.
    #[serde(default)]
    since: Option<u64>,
    /// Only events of this subject (`KIND/GROUP/NAME` or `node/NAME`).
    #[serde(default)]
    subject: Option<String>,
    /// Wait up to this many seconds for a newer event when there is none (long poll; at most
    /// [`MAX_WAIT`], a longer wait is cut to it).
    #[serde(default)]
    wait: Option<u64>,
}

async fn list_events(
    State(node): AppState,
    Query(params): Query<EventParams>,
) -> Result<Json<Vec<crate::state::Event>>, ApiError> {
    let since = params.since.unwrap_or(0);
    let wait = Duration::from_secs(params.wait.unwrap_or(0)).min(MAX_WAIT);
    let events = node.events(since, params.subject.as_deref(), wait).await?;
    Ok(Json(events))
}

async fn describe(
    State(node): AppState,
    Path((kind, group, name)): Path<(String, String, String)>,
    Query(params): Query<ReadParams>,
) -> Result<Json<DescribeView>, ApiError> {
    let key = parse_key(&kind, group, name, params.prefix.as_deref())?;
    Ok(Json(node.describe(&key, params.consistency()?).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openapi_lists_exactly_the_routes() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).expect("openapi.json parses");
        let paths = doc["paths"].as_object().expect("paths");
        let mut documented: Vec<(String, String)> = paths
            .iter()
            .flat_map(|(path, ops)| {
                ops.as_object()
                    .into_iter()
                    .flat_map(move |ops| ops.keys().map(move |m| (m.clone(), path.clone())))
            })
            .collect();
        documented.sort();
        let mut served: Vec<(String, String)> = ROUTES
            .iter()
            .map(|(m, p)| (m.to_string(), p.to_string()))
            .collect();
        served.sort();
        assert_eq!(documented, served, "openapi.json and ROUTES disagree");
    }
}

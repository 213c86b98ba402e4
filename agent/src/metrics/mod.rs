//! Prometheus metrics of a node: `--metrics-addr` (plain HTTP, default 127.0.0.1:9213) and
//! `GET /metrics` on the API (client certificate required).
//!
//! ```text
//!  events as they happen                      at each scrape (read, never kept)
//!  ---------------------                      ---------------------------------
//!  Store::write ---------> writes, proposal   Store::status  -> role, term, indexes
//!  reconcile pass -------> pass duration      applied state  -> replicas by node and phase,
//!  Docker calls ---------> errors             (stale read)      gitops status and last sync
//!  restarts -------------> restarts           overlay device -> peers, handshakes, bytes
//!  gitops fetches -------> results            dns::stats     -> queries by result
//!  API requests ---------> by route, status
//!         \___ one process-wide registry ___/   \___ snapshot::render (pure) ___/
//! ```
//! The counters live in one process-wide registry (one agent per process), bumped by one-line
//! hooks in the code that does the work. What the state or another crate already knows is read
//! at scrape time and rendered by [`snapshot::render`], a pure function. The format is
//! OpenMetrics text (what `prometheus-client` writes; Prometheus reads it natively), names with
//! the `smr_` prefix and base units (`_seconds`, `_bytes`, `_total`).

pub mod ca_rotation;
pub mod certificates;
pub mod runtime;
pub mod snapshot;

use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::node::Node;
use crate::state::CommandResult;
use crate::store::WriteError;

/// The default of `--metrics-addr`.
pub const DEFAULT_ADDR: &str = "127.0.0.1:9213";

/// Content type of a scrape answer.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

pub(crate) type Labels = Vec<(&'static str, String)>;
type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

/// The counters and histograms bumped as things happen.
struct Counters {
    registry: Registry,
    writes: Family<Labels, Counter>,
    proposal: Histogram,
    reconcile_pass: Histogram,
    docker_errors: Family<Labels, Counter>,
    restarts: Family<Labels, Counter>,
    gitops_fetches: Family<Labels, Counter>,
    api_requests: Family<Labels, Counter>,
    api_duration: HistogramFamily,
    heartbeats: Family<Labels, Counter>,
    report_batch: Histogram,
    entry_writes: Histogram,
    entry_commit: Histogram,
    forward_batch: Histogram,
}

/// 1 ms to about 33 s, doubling.
fn latency_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

static COUNTERS: LazyLock<Counters> = LazyLock::new(|| {
    let mut registry = Registry::with_prefix("smr");
    let writes = Family::<Labels, Counter>::default();
    registry.register(
        "store_writes",
        "Writes this node's store took, by result (applied, rejected, forward, unavailable, \
         unknown, insufficient_storage, fatal)",
        writes.clone(),
    );
    let proposal = latency_buckets();
    registry.register_with_unit(
        "store_proposal_duration",
        "Time from proposing a write to the store until it was applied (or gave up), for writes \
         this node proposed itself (as leader, or any node on etcd)",
        Unit::Seconds,
        proposal.clone(),
    );
    let reconcile_pass = latency_buckets();
    registry.register_with_unit(
        "reconcile_pass_duration",
        "Duration of one pass of the node reconciler (read state, list containers, act)",
        Unit::Seconds,
        reconcile_pass.clone(),
    );
    let docker_errors = Family::<Labels, Counter>::default();
    registry.register(
        "docker_errors",
        "Docker engine calls of the reconciler that failed, by operation and kind",
        docker_errors.clone(),
    );
    let restarts = Family::<Labels, Counter>::default();
    registry.register(
        "container_restarts",
        "Containers this node started again after they exited, by replica",
        restarts.clone(),
    );
    let gitops_fetches = Family::<Labels, Counter>::default();
    registry.register(
        "gitops_fetches",
        "Gitops fetch-and-parse attempts of this node (while it leads), by result (ok, error)",
        gitops_fetches.clone(),
    );
    let api_requests = Family::<Labels, Counter>::default();
    registry.register(
        "api_requests",
        "API requests answered, by route pattern, method and HTTP status code",
        api_requests.clone(),
    );
    let api_duration: HistogramFamily = Family::new_with_constructor(latency_buckets);
    registry.register_with_unit(
        "api_request_duration",
        "Time to the answer's headers, by route pattern",
        Unit::Seconds,
        api_duration.clone(),
    );
    let heartbeats = Family::<Labels, Counter>::default();
    registry.register(
        "heartbeats",
        "Node heartbeats (issue 14: kept in the leader's memory, not in the log), by event: sent \
         (answered by the leader or recorded by this node as leader), failed (not answered), \
         received (recorded by this node as leader, its own included)",
        heartbeats.clone(),
    );
    let report_batch = Histogram::new(exponential_buckets(1.0, 2.0, 12));
    registry.register(
        "report_batch_reports",
        "Replica reports per log entry this node proposed (issue 14: reports of many nodes that \
         arrive together go as one Op::Reports entry)",
        report_batch.clone(),
    );
    let entry_writes = Histogram::new(exponential_buckets(1.0, 2.0, 10));
    registry.register(
        "store_entry_writes",
        "Writes per Raft entry this node proposed (group commit: writes that queue while entries \
         are being committed go together)",
        entry_writes.clone(),
    );
    // 0.1 ms to about 13 s, doubling.
    let entry_commit = Histogram::new(exponential_buckets(0.0001, 2.0, 18));
    registry.register_with_unit(
        "store_entry_commit_duration",
        "Time from proposing one Raft entry until it was committed and applied (or gave up); a \
         write's store_proposal_duration is this plus its time in the queue",
        Unit::Seconds,
        entry_commit.clone(),
    );
    let forward_batch = Histogram::new(exponential_buckets(1.0, 2.0, 10));
    registry.register(
        "forward_batch_writes",
        "Writes per request this node forwarded to the leader (writes that queue while earlier \
         requests are on the way go together)",
        forward_batch.clone(),
    );
    Counters {
        registry,
        writes,
        proposal,
        reconcile_pass,
        docker_errors,
        restarts,
        gitops_fetches,
        api_requests,
        api_duration,
        heartbeats,
        report_batch,
        entry_writes,
        entry_commit,
        forward_batch,
    }
});

fn labels(pairs: &[(&'static str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (*k, v.to_string())).collect()
}

/// Hook of `Store::write`: one write attempt and how long it took.
pub fn store_write(result: &Result<CommandResult, WriteError>, took: Duration) {
    let (label, proposed) = match result {
        Ok(CommandResult::Rejected { .. }) => ("rejected", true),
        Ok(_) => ("applied", true),
        Err(WriteError::ForwardToLeader { .. }) => ("forward", false),
        Err(WriteError::Unavailable(_)) => ("unavailable", false),
        Err(WriteError::Unknown(_)) => ("unknown", true),
        Err(WriteError::InsufficientStorage(_)) => ("insufficient_storage", false),
        Err(WriteError::Fatal(_)) => ("fatal", false),
    };
    let c = &*COUNTERS;
    c.writes.get_or_create(&labels(&[("result", label)])).inc();
    if proposed {
        c.proposal.observe(took.as_secs_f64());
    }
}

/// Hook of the group commit: one Raft entry of `writes` writes took `took` to commit and apply.
pub fn store_entry(writes: usize, took: Duration) {
    let c = &*COUNTERS;
    c.entry_writes.observe(writes as f64);
    c.entry_commit.observe(took.as_secs_f64());
}

/// Hook of the forwarder: one request of `writes` writes sent to the leader.
pub fn forward_batch(writes: usize) {
    COUNTERS.forward_batch.observe(writes as f64);
}

/// Hook of the report batcher: one batch of `reports` replica reports proposed.
pub fn report_batch(reports: usize) {
    COUNTERS.report_batch.observe(reports as f64);
}

/// Hook of the reconciler: one pass took `took`.
pub fn reconcile_pass(took: Duration) {
    COUNTERS.reconcile_pass.observe(took.as_secs_f64());
}

/// Hook of the reconciler: the container of `replica` was started again after it exited.
pub fn container_restarted(replica: &str) {
    COUNTERS
        .restarts
        .get_or_create(&labels(&[("replica", replica)]))
        .inc();
}

/// Hook of the gitops loop: a fetch (and parse) ended, well or not.
pub fn gitops_fetched(ok: bool) {
    let result = if ok { "ok" } else { "error" };
    COUNTERS
        .gitops_fetches
        .get_or_create(&labels(&[("result", result)]))
        .inc();
}

/// Hook of the heartbeats: `event` is `sent`, `failed` or `received`.
pub fn heartbeat(event: &'static str) {
    COUNTERS
        .heartbeats
        .get_or_create(&labels(&[("event", event)]))
        .inc();
}

fn docker_error(op: &'static str, kind: &'static str) {
    COUNTERS
        .docker_errors
        .get_or_create(&labels(&[("op", op), ("kind", kind)]))
        .inc();
}

/// API middleware: counts every request by route pattern (not the path: no object names in
/// labels), method and status.
pub async fn api_request(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().as_str().to_string();
    let started = Instant::now();
    let response = next.run(req).await;
    let c = &*COUNTERS;
    let status = response.status().as_u16().to_string();
    c.api_requests
        .get_or_create(&vec![
            ("route", route.clone()),
            ("method", method),
            ("code", status),
        ])
        .inc();
    c.api_duration
        .get_or_create(&vec![("route", route)])
        .observe(started.elapsed().as_secs_f64());
    response
}

/// The whole exposition: the counters, then what a scrape reads now.
pub async fn render(node: &Node) -> String {
    let input = snapshot::Input::gather(node).await;
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = encode_registry(&mut out, &COUNTERS.registry);
    let _ = encode_registry(&mut out, &snapshot::render(&input));
    let _ = encode_registry(&mut out, &certificates::render(&certificates::gather(node)));
    let _ = encode_registry(
        &mut out,
        &ca_rotation::render(&ca_rotation::gather(node).await),
    );
    let _ = encode_eof(&mut out);
    out
}

fn answer(text: String) -> Response {
    (StatusCode::OK, [(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response()
}

/// `GET /metrics` on the API (behind the client certificate check).
pub async fn api_handler(State(node): State<Arc<Node>>) -> Response {
    answer(render(&node).await)
}

/// Parses `--metrics-addr`: `off`, or `IP:PORT`.
pub fn parse_addr(text: &str) -> Result<Option<SocketAddr>, String> {
    if text == "off" {
        return Ok(None);
    }
    text.parse().map(Some).map_err(|_| {
        format!("--metrics-addr {text:?}: expected IP:PORT (e.g. {DEFAULT_ADDR}) or off")
    })
}

/// Binds the metrics listener (before anything is written, like the API's).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, crate::daemon::DaemonError> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| crate::daemon::DaemonError::Listen {
            addr,
            reason: format!("{e} (--metrics-addr; `off` disables it)"),
        })
}

/// Serves `GET /metrics` in plain HTTP on `listener` until `stop`.
pub async fn serve(listener: TcpListener, node: Arc<Node>, mut stop: watch::Receiver<bool>) {
    let app = axum::Router::new()
        .route("/metrics", get(api_handler))
        .with_state(node);
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "metrics served at http://{addr}/metrics");
    }
    let stopped = async move { crate::shutdown::stopped(&mut stop).await };
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stopped)
        .await
    {
        tracing::warn!("metrics server: {e}");
    }
}

#[cfg(test)]
mod tests;

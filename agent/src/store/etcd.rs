//! The etcd store: an existing etcd cluster is the replicated, totally ordered command log, and
//! every agent applies that log to its own [`ClusterState`] (the same deterministic state machine
//! as the embedded store).
//!
//! ```text
//!  write(cmd) --Txn{put <prefix>log/<rand> = cmd, put <prefix>head}--> etcd revision R
//!       <-- result of ClusterState::apply at R <-- applier: watch <prefix>log/, apply in revision order
//!  read(linearizable): quorum Get <prefix>head -> its mod_revision H -> wait until applied >= H
//!  leader: etcd election <prefix>election on a lease (TTL 5 s); it writes the state of revision S
//!          as <prefix>snapshot-chunks/S/* (1 MiB each), then <prefix>snapshot {S, chunks, sha256},
//!          and deletes the log keys at or below S
//! ```
//! Every agent can write (no forwarding). Races between writers (two RegisterNode lease
//! allocations) are decided by the log order: the second command sees the first one's effect,
//! which is compare-and-swap. On start and after any watch failure the applier resyncs: the
//! snapshot and the log keys after it are read at one etcd revision, then the watch resumes after
//! it. Without etcd the agent keeps its last state, writes fail `Unavailable` and the status is
//! [`ServerState::Degraded`].

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions,
    Identity, KvClient, SortOrder, SortTarget, TlsOptions, Txn, TxnOp, WatchOptions,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::{oneshot, watch};

use super::{
    EtcdConfig, RaftPeer, ReadError, ServerState, StoreConfig, StoreError, StoreStatus, WriteError,
};
use crate::state::{ClusterState, Command, CommandResult, NodeId};

/// Timing of the etcd store.
#[derive(Clone, Debug)]
pub struct EtcdOptions {
    /// How long a write or a linearizable read waits before `Unavailable`.
    pub write_timeout: Duration,
    /// TTL of the leader's lease, in seconds: a dead leader is replaced after at most this.
    pub lease_ttl: i64,
    /// The leader writes a snapshot after this many log entries.
    pub snapshot_every: u64,
}

impl From<&StoreConfig> for EtcdOptions {
    fn from(c: &StoreConfig) -> Self {
        EtcdOptions {
            write_timeout: c.write_timeout,
            lease_ttl: 5,
            snapshot_every: c.snapshot_every.min(1000),
        }
    }
}

/// The state after applying every log entry up to `revision`.
#[derive(Deserialize)]
struct Snapshot {
    revision: u64,
    state: ClusterState,
}

/// `<prefix>snapshot`: where the snapshot of `revision` is. Its JSON is cut into `chunks` values
/// `<prefix>snapshot-chunks/<revision, 20 digits>/<index, 6 digits>` of at most
/// [`SNAPSHOT_CHUNK`] bytes each, because etcd refuses a request over its limit (1.5 MiB by
/// default) and a state can be larger. The chunks are written first, then this manifest in one
/// compare-and-swap, so a reader never finds a manifest without its chunks; older chunks go last.
#[derive(Serialize, Deserialize)]
struct SnapshotManifest {
    revision: u64,
    chunks: u32,
    bytes: u64,
    sha256: String,
}

/// The largest value of a snapshot chunk: well under etcd's default request limit.
const SNAPSHOT_CHUNK: usize = 1 << 20;

/// Log entries read per request when catching up. With etcd's default request limit (1.5 MiB,
/// so no entry is larger) a page stays under [`MAX_MESSAGE`].
const LOG_PAGE: i64 = 64;

/// The largest gRPC message the store decodes (tonic's default is 4 MiB).
const MAX_MESSAGE: usize = 128 << 20;

/// A [`Snapshot`] to write, borrowing the state instead of copying it.
#[derive(Serialize)]
struct SnapshotRef<'a> {
    revision: u64,
    state: &'a ClusterState,
}

/// Writers waiting for their command's result. A writer that arrives after the applier finds
/// the result in the state's dedup window (`ClusterState::recent_result`) instead.
#[derive(Default)]
struct Results {
    /// Writers waiting for a revision: the command's op_id and where to send its result.
    waiting: HashMap<u64, (String, oneshot::Sender<CommandResult>)>,
}

#[derive(Default)]
struct Election {
    /// This handle holds the election and its lease is fresh.
    elected: bool,
    leader: Option<NodeId>,
    lease: i64,
}

struct Inner {
    id: NodeId,
    client: Client,
    credentials: Option<crate::credentials::Credentials>,
    /// Logged in with `credentials` (always true without them).
    authenticated: AtomicBool,
    prefix: String,
    opts: EtcdOptions,
    /// The applied state and the etcd revision of the last applied log entry.
    state: RwLock<(Arc<ClusterState>, u64)>,
    applied_tx: watch::Sender<u64>,
    results: Mutex<Results>,
    /// The applier follows the log (its watch is up).
    watching: AtomicBool,
    /// The state was read from etcd at least once since start (before, it is unknown, not empty).
    synced: AtomicBool,
    election: Mutex<Election>,
    /// Set while etcd refuses writes for lack of space (its NOSPACE alarm): the reason.
    nospace: Mutex<Option<String>>,
    /// Revision of the newest snapshot seen or written.
    snapshot_rev: AtomicU64,
    snapshotting: AtomicBool,
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// A handle on the etcd store. Clones share it.
#[derive(Clone)]
pub struct EtcdStore {
    inner: Arc<Inner>,
}

/// etcd's answer to a write while its NOSPACE alarm is raised (gRPC RESOURCE_EXHAUSTED,
/// "etcdserver: mvcc: database space exceeded").
fn is_nospace(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s)
        if s.code() as i32 == 8 && s.message().contains("space exceeded"))
}

/// While etcd is out of space, tries a tiny write every 2 s: the store is degraded until one
/// goes through (an operator freed space and disarmed the alarm), with or without client writes.
async fn run_space_probe(inner: Arc<Inner>, mut stop: watch::Receiver<bool>) {
    let key = inner.key("space-probe");
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
        if lock(&inner.nospace).is_none() {
            continue;
        }
        let mut kv = inner.client.kv_client();
        let probe = tokio::time::timeout(
            inner.opts.write_timeout,
            kv.put(key.clone(), inner.id.to_string(), None),
        );
        if let Ok(Ok(_)) = probe.await {
            inner.space_back();
        }
    }
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> WriteError {
    WriteError::Unavailable(format!("etcd {what}: {e}"))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A failed log append: refused before etcd proposed it (no leader, not authenticated, not
/// connected) is `Unavailable`; anything else (a timeout, a connection lost after sending, a
/// leader change) may have committed, so its outcome is `Unknown`.
fn txn_error(e: etcd_client::Error) -> WriteError {
    let text = crate::client::error_chain(&e);
    // Failures of the connection itself (TCP, TLS handshake, or a request the HTTP/2 client
    // cancelled because the connection closed before sending it) carried no request.
    let not_connected = [
        "tcp connect error",
        "Connection refused",
        "fatal alert",
        "handshake",
        "Canceled",
    ]
    .iter()
    .any(|m| text.contains(m));
    let refused_up_front = not_connected
        || match &e {
            // PermissionDenied (7), Unauthenticated (16).
            etcd_client::Error::GRpcStatus(s) if matches!(s.code() as i32, 7 | 16) => true,
            // Unavailable (14) for want of a leader (`require_leader`): not proposed.
            etcd_client::Error::GRpcStatus(s) if s.code() as i32 == 14 => {
                s.message().contains("no leader")
            }
            etcd_client::Error::TransportError(_) => true,
            _ => false,
        };
    if refused_up_front {
        unavailable("write", text)
    } else {
        WriteError::Unknown(format!("etcd write: {text}"))
    }
}

/// Why the applier, the election or a snapshot failed (each is retried; the store is degraded
/// meanwhile).
#[derive(Debug, thiserror::Error)]
enum EtcdError {
    /// An etcd call failed.
    #[error("{what}: {source}")]
    Call {
        what: String,
        source: etcd_client::Error,
    },
    #[error("{what}: no answer within {limit:?}")]
    Timeout { what: String, limit: Duration },
    /// The log watch or the leader lease ended; the message says how.
    #[error("{0}")]
    Ended(String),
    /// A snapshot in etcd that is incomplete or damaged.
    #[error("{0}")]
    BadSnapshot(String),
    #[error("{what}: {source}")]
    Json {
        what: &'static str,
        source: serde_json::Error,
    },
    #[error("{0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Runs an etcd call with a deadline.
async fn timed<T, F>(limit: Duration, what: &str, call: F) -> Result<T, EtcdError>
where
    F: std::future::Future<Output = Result<T, etcd_client::Error>>,
{
    match tokio::time::timeout(limit, call).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(source)) => Err(EtcdError::Call {
            what: what.to_string(),
            source,
        }),
        Err(_) => Err(EtcdError::Timeout {
            what: what.to_string(),
            limit,
        }),
    }
}

impl EtcdStore {
    /// Connects to etcd (lazily: etcd may be down now) and starts the applier and the election.
    pub async fn open(
        config: &EtcdConfig,
        id: NodeId,
        opts: EtcdOptions,
    ) -> Result<EtcdStore, StoreError> {
        let mut connect = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
            .with_keep_alive_while_idle(true)
            .with_require_leader(true);
        let tls = config.ca_pem.is_some() || config.cert_pem.is_some();
        if tls {
            let mut options = TlsOptions::new();
            if let Some(ca) = &config.ca_pem {
                options = options.ca_certificate(Certificate::from_pem(ca));
            }
            match (&config.cert_pem, &config.key_pem) {
                (Some(cert), Some(key)) => {
                    options = options.identity(Identity::from_pem(cert, key));
                }
                (None, None) => {}
                _ => {
                    return Err(StoreError::Etcd(
                        "--etcd-cert and --etcd-key go together".into(),
                    ));
                }
            }
            connect = connect.with_tls(options);
        }
        let endpoints: Vec<String> = config
            .endpoints
            .iter()
            .map(|e| {
                let bare = e
                    .trim_start_matches("http://")
                    .trim_start_matches("https://");
                format!("{}://{bare}", if tls { "https" } else { "http" })
            })
            .collect();
        // Credentials are set after connecting (connecting with them would authenticate, and
        // so fail, while etcd is down); the client then renews its token when etcd expires it.
        let connect = connect.with_auto_token_refresh(config.credentials.is_some());
        let client = Client::connect(&endpoints, Some(connect))
            .await
            .map_err(|e| StoreError::Etcd(format!("connecting to {endpoints:?}: {e}")))?;
        let mut prefix = config.prefix.clone();
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        let (applied_tx, _) = watch::channel(0);
        let (stop, _) = watch::channel(false);
        let inner = Arc::new(Inner {
            id,
            client,
            credentials: config.credentials.clone(),
            authenticated: AtomicBool::new(config.credentials.is_none()),
            prefix,
            opts,
            state: RwLock::new((Arc::new(ClusterState::default()), 0)),
            applied_tx,
            results: Mutex::new(Results::default()),
            watching: AtomicBool::new(false),
            synced: AtomicBool::new(false),
            election: Mutex::new(Election::default()),
            nospace: Mutex::new(None),
            snapshot_rev: AtomicU64::new(0),
            snapshotting: AtomicBool::new(false),
            stop,
            tasks: Mutex::new(Vec::new()),
        });
        // A refused password is a configuration error, said at start; an unreachable etcd is
        // not (the applier keeps trying).
        if let Err(e) = inner.authenticate().await
            && e.to_string().contains("authentication failed")
        {
            return Err(StoreError::Etcd(e.to_string()));
        }
        let applier = tokio::spawn(run_applier(inner.clone(), inner.stop.subscribe()));
        let election = tokio::spawn(run_election(inner.clone(), inner.stop.subscribe()));
        let space = tokio::spawn(run_space_probe(inner.clone(), inner.stop.subscribe()));
        lock(&inner.tasks).extend([applier, election, space]);
        Ok(EtcdStore { inner })
    }

    /// Appends a command to the log and waits until this agent applied it.
    pub async fn write(&self, cmd: Command) -> Result<CommandResult, WriteError> {
        let inner = &self.inner;
        let deadline = Instant::now() + inner.opts.write_timeout;
        inner
            .authenticate()
            .await
            .map_err(|e| WriteError::Unavailable(e.to_string()))?;
        let value = serde_json::to_vec(&cmd).map_err(|e| WriteError::Fatal(e.to_string()))?;
        let key = format!(
            "{}log/{}",
            inner.prefix,
            hex::encode(rand::random::<[u8; 12]>())
        );
        let txn = Txn::new().and_then(vec![
            TxnOp::put(key, value, None),
            TxnOp::put(inner.key("head"), Vec::new(), None),
        ]);
        let mut kv = inner.client.kv_client();
        let response = match tokio::time::timeout(inner.opts.write_timeout, kv.txn(txn)).await {
            Ok(Ok(r)) => {
                inner.space_back();
                r
            }
            // etcd's backend is over its quota: it raised its NOSPACE alarm and refuses every
            // write until an operator compacts, defragments and disarms it. Nothing was written.
            Ok(Err(e)) if is_nospace(&e) => {
                let why = format!(
                    "etcd is out of space ({e}): compact and defragment etcd, then disarm its \
                     alarm (etcdctl alarm disarm)"
                );
                let mut nospace = lock(&inner.nospace);
                if nospace.is_none() {
                    tracing::error!("etcd store degraded: {why}");
                }
                *nospace = Some(why.clone());
                return Err(WriteError::InsufficientStorage(why));
            }
            // gRPC InvalidArgument (3) or FailedPrecondition (9): retrying cannot help.
            Ok(Err(etcd_client::Error::GRpcStatus(s))) if matches!(s.code() as i32, 3 | 9) => {
                return Err(WriteError::Fatal(format!(
                    "etcd refused the write: {}",
                    s.message()
                )));
            }
            Ok(Err(e)) => return Err(txn_error(e)),
            Err(_) => {
                return Err(WriteError::Unknown(format!(
                    "etcd did not answer the write within {:?}",
                    inner.opts.write_timeout
                )));
            }
        };
        let revision = response.header().map(|h| h.revision()).unwrap_or(0) as u64;
        let receiver = {
            let mut results = lock(&inner.results);
            if inner.applied() >= revision {
                // Already applied (or through a snapshot): the dedup window has the result.
                return inner.recent_result(&cmd.op_id).ok_or_else(|| {
                    WriteError::Unknown(format!(
                        "the result of revision {revision} is no longer known; retry with the same op_id"
                    ))
                });
            }
            let (tx, rx) = oneshot::channel();
            results.waiting.insert(revision, (cmd.op_id.clone(), tx));
            rx
        };
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, receiver).await {
            Ok(Ok(result)) => Ok(result),
            _ => {
                lock(&inner.results).waiting.remove(&revision);
                // In the log, so applied everywhere in time; its result is what is unknown.
                Err(WriteError::Unknown(format!(
                    "written to etcd at revision {revision} but not applied here within {:?}",
                    inner.opts.write_timeout
                )))
            }
        }
    }

    /// The log revision a linearizable read must have applied: `<prefix>head` read by quorum.
    pub async fn read_index(&self) -> Result<u64, ReadError> {
        // A read after this index must find the state caught up since start, not unknown.
        self.inner
            .wait_synced(Instant::now() + self.inner.opts.write_timeout)
            .await?;
        self.inner
            .authenticate()
            .await
            .map_err(|e| WriteError::Unavailable(e.to_string()))?;
        let mut kv = self.inner.client.kv_client();
        let response = timed(
            self.inner.opts.write_timeout,
            "read",
            kv.get(self.inner.key("head"), None),
        )
        .await
        .map_err(|e| WriteError::Unavailable(e.to_string()))?;
        Ok(response
            .kvs()
            .first()
            .map(|kv| kv.mod_revision() as u64)
            .unwrap_or(0))
    }

    pub async fn read(&self, linearizable: bool) -> Result<Arc<ClusterState>, ReadError> {
        // Until the first catch-up the state is unknown: an empty one would make the reconcilers
        // stop this node's containers.
        // (A part of the log applied is an older consistent state, like a lagging follower's.)
        if !self.inner.synced.load(Ordering::SeqCst) && self.inner.applied() == 0 {
            return Err(WriteError::Unavailable(
                "not yet synchronised with etcd since start".into(),
            ));
        }
        if linearizable {
            let index = self.read_index().await?;
            self.inner
                .wait_applied(index, Instant::now() + self.inner.opts.write_timeout)
                .await?;
        }
        Ok(self.inner.current().0)
    }

    /// Changes whenever log entries are applied (the value is the applied etcd revision).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.applied_tx.subscribe()
    }

    /// This agent's role alone: what [`EtcdStore::status`] says, without listing every node.
    pub fn server_state(&self) -> ServerState {
        Self::role(&self.inner, &lock(&self.inner.election))
    }

    fn role(inner: &Inner, election: &Election) -> ServerState {
        if !inner.watching.load(Ordering::SeqCst) {
            ServerState::Degraded
        } else if election.elected {
            ServerState::Leader
        } else {
            ServerState::Follower
        }
    }

    pub fn status(&self) -> StoreStatus {
        let inner = &self.inner;
        let (state, applied) = inner.current();
        let election = lock(&inner.election);
        let server_state = Self::role(inner, &election);
        let leader = if election.elected {
            Some(inner.id)
        } else {
            election.leader
        };
        StoreStatus {
            id: inner.id,
            state: server_state,
            leader,
            term: election.lease as u64,
            last_log_index: Some(applied),
            last_applied: Some(applied),
            // Every registered agent reads and writes etcd directly: all count as voters.
            voters: state.nodes.keys().copied().collect(),
            learners: BTreeSet::new(),
            members: state
                .nodes
                .iter()
                .map(|(id, n)| {
                    let peer = RaftPeer {
                        raft_addr: n.raft_addr(),
                        api_addr: n.api_addr(),
                        name: n.name.clone(),
                    };
                    (*id, peer)
                })
                .collect(),
            problem: lock(&inner.nospace).clone().or_else(|| {
                (server_state == ServerState::Degraded).then(|| "not connected to etcd".to_string())
            }),
        }
    }

    /// Stops the applier and the election, giving the leadership up at once (lease revoked).
    pub async fn shutdown(&self) {
        let _ = self.inner.stop.send(true);
        let tasks: Vec<_> = lock(&self.inner.tasks).drain(..).collect();
        for task in tasks {
            let _ = task.await;
        }
    }
}

impl Inner {
    /// A write went through: etcd has space (again).
    fn space_back(&self) {
        if lock(&self.nospace).take().is_some() {
            tracing::info!("etcd takes writes again: the store is no longer degraded");
        }
    }

    /// Logs in with the configured user once (the client renews the token from then on).
    async fn authenticate(&self) -> Result<(), EtcdError> {
        let Some(credentials) = &self.credentials else {
            return Ok(());
        };
        if self.authenticated.load(Ordering::SeqCst) {
            return Ok(());
        }
        let mut client = self.client.clone();
        let login = Some((credentials.user.clone(), credentials.password.clone()));
        timed(
            self.opts.write_timeout,
            &format!("etcd authentication as {:?}", credentials.user),
            client.update_user(login),
        )
        .await?;
        self.authenticated.store(true, Ordering::SeqCst);
        Ok(())
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    fn current(&self) -> (Arc<ClusterState>, u64) {
        let guard = self.state.read().unwrap_or_else(|e| e.into_inner());
        (guard.0.clone(), guard.1)
    }

    fn applied(&self) -> u64 {
        self.state.read().unwrap_or_else(|e| e.into_inner()).1
    }

    fn recent_result(&self, op_id: &str) -> Option<CommandResult> {
        self.current().0.recent_result(op_id).cloned()
    }

    async fn wait_synced(&self, deadline: Instant) -> Result<(), WriteError> {
        let mut changes = self.applied_tx.subscribe();
        while !self.synced.load(Ordering::SeqCst) {
            let left = deadline.saturating_duration_since(Instant::now());
            if tokio::time::timeout(left, changes.changed()).await.is_err() {
                return Err(WriteError::Unavailable(
                    "not yet synchronised with etcd since start".into(),
                ));
            }
        }
        Ok(())
    }

    async fn wait_applied(&self, index: u64, deadline: Instant) -> Result<(), WriteError> {
        let mut applied = self.applied_tx.subscribe();
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, applied.wait_for(|a| *a >= index)).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(WriteError::Unavailable(format!(
                "this agent did not apply the etcd log up to revision {index} in time"
            ))),
        }
    }

    /// Applies log entries (revision, command) in order, skipping those already applied.
    fn apply(&self, entries: Vec<(u64, Option<Command>)>) {
        if entries.is_empty() {
            return;
        }
        let mut outcomes = Vec::new();
        // Results first, then the state (the order `write` takes them in): a writer that sees
        // its revision applied also finds its result.
        let mut results = lock(&self.results);
        let applied = {
            let mut guard = self.state.write().unwrap_or_else(|e| e.into_inner());
            let (state, applied) = &mut *guard;
            if entries.iter().all(|(revision, _)| *revision <= *applied) {
                return;
            }
            let state = Arc::make_mut(state);
            for (revision, command) in entries {
                if revision <= *applied {
                    continue;
                }
                if let Some(command) = command {
                    outcomes.push((revision, state.apply(&command)));
                }
                *applied = revision;
            }
            *applied
        };
        for (revision, result) in outcomes {
            if let Some((_, tx)) = results.waiting.remove(&revision) {
                let _ = tx.send(result);
            }
        }
        drop(results);
        self.applied_tx.send_replace(applied);
    }

    /// Replaces the state with a newer snapshot; writers waiting on skipped revisions get their
    /// result from the dedup window.
    fn install(&self, snapshot: Snapshot) {
        {
            let mut guard = self.state.write().unwrap_or_else(|e| e.into_inner());
            if snapshot.revision <= guard.1 {
                return;
            }
            *guard = (Arc::new(snapshot.state), snapshot.revision);
        }
        let (state, applied) = self.current();
        let mut results = lock(&self.results);
        let skipped: Vec<u64> = results
            .waiting
            .keys()
            .copied()
            .filter(|r| *r <= applied)
            .collect();
        for revision in skipped {
            if let Some((op_id, tx)) = results.waiting.remove(&revision)
                && let Some(result) = state.recent_result(&op_id)
            {
                let _ = tx.send(result.clone());
            }
        }
        drop(results);
        self.snapshot_rev.fetch_max(applied, Ordering::SeqCst);
        self.applied_tx.send_replace(applied);
    }

    /// Catches up (snapshot + log at one revision), then follows the log until it fails.
    async fn sync_and_watch(&self, stop: &mut watch::Receiver<bool>) -> Result<(), EtcdError> {
        let limit = self.opts.write_timeout;
        self.authenticate().await?;
        let mut kv = self
            .client
            .kv_client()
            .max_decoding_message_size(MAX_MESSAGE);
        let response = timed(
            limit,
            "reading the snapshot",
            kv.get(self.key("snapshot"), None),
        )
        .await?;
        let at = response.header().map(|h| h.revision()).unwrap_or(0);
        if let Some(stored) = response.kvs().first() {
            let manifest = parse_manifest(stored.value())?;
            if manifest.revision > self.applied() {
                let snapshot = self.load_snapshot(&mut kv, &manifest, at).await?;
                self.snapshot_rev
                    .fetch_max(snapshot.revision, Ordering::SeqCst);
                self.install(snapshot);
            } else {
                self.snapshot_rev
                    .fetch_max(manifest.revision, Ordering::SeqCst);
            }
        }
        let log = self.key("log/");
        loop {
            let from = self.applied() as i64 + 1;
            let options = GetOptions::new()
                .with_prefix()
                .with_revision(at)
                .with_min_mod_revision(from)
                .with_sort(SortTarget::Mod, SortOrder::Ascend)
                .with_limit(LOG_PAGE);
            let page = timed(limit, "reading the log", kv.get(log.clone(), Some(options))).await?;
            let entries: Vec<(u64, Option<Command>)> = page
                .kvs()
                .iter()
                .map(|kv| (kv.mod_revision() as u64, decode(kv.key(), kv.value())))
                .collect();
            self.apply(entries);
            if !page.more() {
                break;
            }
        }
        self.synced.store(true, Ordering::SeqCst);
        self.applied_tx.send_modify(|_| {});
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(at + 1)
            .with_progress_notify();
        let mut watcher = self
            .client
            .watch_client()
            .max_decoding_message_size(MAX_MESSAGE);
        let mut stream =
            timed(limit, "watching the log", watcher.watch(log, Some(options))).await?;
        self.watching.store(true, Ordering::SeqCst);
        // Wake status readers: the store is no longer degraded.
        self.applied_tx.send_modify(|_| {});
        loop {
            let message = tokio::select! {
                _ = crate::shutdown::stopped(stop) => return Ok(()),
                m = stream.message() => m,
            };
            let response = match message {
                Ok(Some(r)) => r,
                Ok(None) => return Err(EtcdError::Ended("the log watch ended".into())),
                Err(source) => {
                    return Err(EtcdError::Call {
                        what: "the log watch failed".into(),
                        source,
                    });
                }
            };
            if response.canceled() || response.compact_revision() > 0 {
                return Err(EtcdError::Ended(format!(
                    "the log watch was cancelled (compacted at {}): {}",
                    response.compact_revision(),
                    response.cancel_reason()
                )));
            }
            let entries: Vec<(u64, Option<Command>)> = response
                .events()
                .iter()
                .filter(|e| e.event_type() == EventType::Put)
                .filter_map(|e| e.kv())
                .map(|kv| (kv.mod_revision() as u64, decode(kv.key(), kv.value())))
                .collect();
            self.apply(entries);
        }
    }

    /// Campaigns for the leadership on a fresh lease and holds it until the lease is lost.
    async fn campaign(self: &Arc<Self>, stop: &mut watch::Receiver<bool>) -> Result<(), EtcdError> {
        self.authenticate().await?;
        let limit = self.opts.write_timeout;
        let ttl = self.opts.lease_ttl;
        let mut leases = self.client.lease_client();
        let lease = timed(limit, "granting a lease", leases.grant(ttl, None))
            .await?
            .id();
        lock(&self.election).lease = lease;
        let result = self.hold(lease, stop).await;
        {
            let mut election = lock(&self.election);
            election.elected = false;
            election.lease = 0;
        }
        // Give the leadership up at once rather than when the lease expires.
        let _ = timed(Duration::from_secs(1), "revoking", leases.revoke(lease)).await;
        result
    }

    async fn hold(
        self: &Arc<Self>,
        lease: i64,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(), EtcdError> {
        let ttl = Duration::from_secs(self.opts.lease_ttl as u64);
        let mut leases = self.client.lease_client();
        let (mut keeper, mut renewals) = timed(
            self.opts.write_timeout,
            "keeping the lease alive",
            leases.keep_alive(lease),
        )
        .await?;
        let mut renewed = Instant::now();
        let name = self.key("election");
        let mut elections = self.client.election_client();
        let campaign = elections.campaign(name.clone(), self.id.to_string(), lease);
        tokio::pin!(campaign);
        let mut campaigning = true;
        let mut observer = self.client.election_client();
        let mut tick = tokio::time::interval(Duration::from_millis(1000));
        loop {
            tokio::select! {
                _ = crate::shutdown::stopped(stop) => return Ok(()),
                won = &mut campaign, if campaigning => {
                    won.map_err(|source| EtcdError::Call {
                        what: "campaign".into(),
                        source,
                    })?;
                    campaigning = false;
                    let mut election = lock(&self.election);
                    election.elected = true;
                    election.leader = Some(self.id);
                    tracing::info!(id = self.id, "elected leader through etcd");
                }
                renewal = renewals.message() => match renewal {
                    Ok(Some(r)) if r.ttl() > 0 => renewed = Instant::now(),
                    Ok(Some(_)) => return Err(EtcdError::Ended("the leader lease expired".into())),
                    Ok(None) => {
                        return Err(EtcdError::Ended(
                            "the lease keep-alive stream ended".into(),
                        ));
                    }
                    Err(source) => {
                        return Err(EtcdError::Call {
                            what: "lease keep-alive".into(),
                            source,
                        });
                    }
                },
                _ = tick.tick() => {
                    keeper
                        .keep_alive()
                        .await
                        .map_err(|source| EtcdError::Call {
                            what: "lease keep-alive".into(),
                            source,
                        })?;
                    if campaigning {
                        let leader = timed(Duration::from_secs(1), "leader", observer.leader(name.clone()))
                            .await
                            .ok()
                            .and_then(|r| r.kv().and_then(|kv| kv.value_str().ok()?.parse().ok()));
                        lock(&self.election).leader = leader;
                    } else if self.applied() >= self.snapshot_rev.load(Ordering::SeqCst) + self.opts.snapshot_every
                        && !self.snapshotting.swap(true, Ordering::SeqCst)
                    {
                        // In the background: this loop must keep renewing the lease.
                        let inner = self.clone();
                        tokio::spawn(async move {
                            let result = inner.write_snapshot().await;
                            inner.snapshotting.store(false, Ordering::SeqCst);
                            if let Err(e) = result {
                                tracing::warn!("writing the etcd snapshot: {e}");
                            }
                        });
                    }
                }
            }
            // Step down before etcd can expire the lease and elect someone else.
            if renewed.elapsed() > ttl * 2 / 3 {
                return Err(EtcdError::Ended(
                    "the leader lease was not renewed in time".into(),
                ));
            }
        }
    }

    /// `<prefix>snapshot-chunks/<revision>/`, or the chunk `index` in it.
    fn chunk_key(&self, revision: u64, index: Option<u32>) -> String {
        let dir = format!("{}snapshot-chunks/{revision:020}/", self.prefix);
        match index {
            Some(i) => format!("{dir}{i:06}"),
            None => dir,
        }
    }

    /// Reads the chunks of `manifest` as they were at etcd revision `at`, checks and decodes them.
    async fn load_snapshot(
        &self,
        kv: &mut KvClient,
        manifest: &SnapshotManifest,
        at: i64,
    ) -> Result<Snapshot, EtcdError> {
        let limit = self.opts.write_timeout;
        let mut body = Vec::with_capacity(manifest.bytes as usize);
        for index in 0..manifest.chunks {
            let key = self.chunk_key(manifest.revision, Some(index));
            let options = GetOptions::new().with_revision(at);
            let response = timed(
                limit,
                "reading the snapshot",
                kv.get(key.clone(), Some(options)),
            )
            .await?;
            let chunk = response.kvs().first().ok_or_else(|| {
                EtcdError::BadSnapshot(format!("the snapshot in etcd lacks its chunk {key}"))
            })?;
            body.extend_from_slice(chunk.value());
        }
        let digest = hex::encode(Sha256::digest(&body));
        if body.len() as u64 != manifest.bytes || digest != manifest.sha256 {
            return Err(EtcdError::BadSnapshot(format!(
                "the snapshot of revision {} in etcd is damaged ({} bytes, sha256 {digest}; its manifest says {} bytes, sha256 {})",
                manifest.revision,
                body.len(),
                manifest.bytes,
                manifest.sha256
            )));
        }
        tokio::task::spawn_blocking(move || serde_json::from_slice::<Snapshot>(&body))
            .await?
            .map_err(|source| EtcdError::Json {
                what: "the snapshot in etcd is unreadable",
                source,
            })
    }

    /// Leader: stores the applied state as a snapshot (chunks, then the `<prefix>snapshot`
    /// manifest) and deletes the log up to it and the older chunks.
    async fn write_snapshot(&self) -> Result<(), EtcdError> {
        let limit = self.opts.write_timeout;
        let (state, revision) = self.current();
        let mut kv = self.client.kv_client();
        let key = self.key("snapshot");
        let existing = timed(limit, "reading the snapshot", kv.get(key.clone(), None)).await?;
        let (existing_mod, existing_rev) = match existing.kvs().first() {
            Some(stored) => (
                stored.mod_revision(),
                parse_manifest(stored.value())?.revision,
            ),
            None => (0, 0),
        };
        if existing_rev < revision {
            // Serialised from the shared state, off the async threads.
            let body = tokio::task::spawn_blocking(move || {
                serde_json::to_vec(&SnapshotRef {
                    revision,
                    state: &state,
                })
            })
            .await?
            .map_err(|source| EtcdError::Json {
                what: "serialising the snapshot",
                source,
            })?;
            let manifest = SnapshotManifest {
                revision,
                chunks: body.chunks(SNAPSHOT_CHUNK).count() as u32,
                bytes: body.len() as u64,
                sha256: hex::encode(Sha256::digest(&body)),
            };
            for (index, chunk) in body.chunks(SNAPSHOT_CHUNK).enumerate() {
                let chunk_key = self.chunk_key(revision, Some(index as u32));
                timed(
                    limit,
                    "writing a snapshot chunk",
                    kv.put(chunk_key, chunk.to_vec(), None),
                )
                .await?;
            }
            let manifest = serde_json::to_vec(&manifest).map_err(|source| EtcdError::Json {
                what: "serialising the snapshot manifest",
                source,
            })?;
            let txn = Txn::new()
                .when(vec![Compare::mod_revision(
                    key.clone(),
                    CompareOp::Equal,
                    existing_mod,
                )])
                .and_then(vec![TxnOp::put(key, manifest, None)]);
            let response = timed(limit, "writing the snapshot", kv.txn(txn)).await?;
            if !response.succeeded() {
                // Another leader wrote one meanwhile: ours is nobody's.
                let options = DeleteOptions::new().with_prefix();
                timed(
                    limit,
                    "deleting unused snapshot chunks",
                    kv.delete(self.chunk_key(revision, None), Some(options)),
                )
                .await?;
                return Ok(());
            }
        }
        let upto = revision.max(existing_rev);
        self.snapshot_rev.fetch_max(upto, Ordering::SeqCst);
        // Chunks of older snapshots (their directories sort before the current one's).
        let options = DeleteOptions::new().with_range(self.chunk_key(upto, None));
        timed(
            limit,
            "deleting older snapshot chunks",
            kv.delete(self.key("snapshot-chunks/"), Some(options)),
        )
        .await?;
        // The log up to the snapshot is no longer needed to catch up.
        loop {
            let options = GetOptions::new()
                .with_prefix()
                .with_keys_only()
                .with_max_mod_revision(upto as i64)
                .with_limit(100);
            let page = timed(
                limit,
                "listing the log",
                kv.get(self.key("log/"), Some(options)),
            )
            .await?;
            if page.kvs().is_empty() {
                break;
            }
            let deletes: Vec<TxnOp> = page
                .kvs()
                .iter()
                .map(|k| TxnOp::delete(k.key().to_vec(), None))
                .collect();
            timed(
                limit,
                "trimming the log",
                kv.txn(Txn::new().and_then(deletes)),
            )
            .await?;
            if !page.more() {
                break;
            }
        }
        tracing::debug!(revision = upto, "etcd snapshot written, log trimmed");
        Ok(())
    }
}

fn parse_manifest(value: &[u8]) -> Result<SnapshotManifest, EtcdError> {
    serde_json::from_slice(value).map_err(|source| EtcdError::Json {
        what: "the snapshot manifest in etcd is unreadable",
        source,
    })
}

fn decode(key: &[u8], value: &[u8]) -> Option<Command> {
    match serde_json::from_slice(value) {
        Ok(command) => Some(command),
        Err(e) => {
            tracing::error!(key = %String::from_utf8_lossy(key), "skipping an unreadable log entry: {e}");
            None
        }
    }
}

async fn run_applier(inner: Arc<Inner>, mut stop: watch::Receiver<bool>) {
    let mut pause = Duration::from_millis(100);
    loop {
        let started = Instant::now();
        let result = inner.sync_and_watch(&mut stop).await;
        inner.watching.store(false, Ordering::SeqCst);
        inner.applied_tx.send_modify(|_| {});
        match result {
            Ok(()) => return,
            Err(e) => tracing::warn!("etcd store degraded: {e}; retrying"),
        }
        if started.elapsed() > Duration::from_secs(10) {
            pause = Duration::from_millis(100);
        }
        tokio::select! {
            _ = crate::shutdown::stopped(&mut stop) => return,
            _ = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(Duration::from_secs(2));
    }
}

async fn run_election(inner: Arc<Inner>, mut stop: watch::Receiver<bool>) {
    loop {
        match inner.campaign(&mut stop).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!("etcd leader election: {e}; campaigning again");
                inner.applied_tx.send_modify(|_| {});
            }
        }
        tokio::select! {
            _ = crate::shutdown::stopped(&mut stop) => return,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

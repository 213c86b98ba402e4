//! Conformance suite of the state-store interface ([`agent::store::Store`]), run against both
//! implementations: the embedded Raft store (3 in-process nodes, Raft RPCs over loopback HTTP)
//! and the etcd store (3 handles on a real 3-member etcd cluster on loopback, Debian's
//! `etcd-server`). The same case functions run on both; that is what shows they behave the same.
//!
//!     cargo test -p agent --test store_conformance
//!
//! Like the agent, the cases go through the leader where the Raft store wants it: a write or a
//! read index answered `ForwardToLeader` is retried on the named leader (what `Node` does over
//! the API); the etcd store answers on any handle.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent::node::{new_op_id, now_ms};
use agent::state::{
    ClusterState, Command, CommandResult, JoinTokenRecord, NetworkSettings, NodeRecord, Op,
};
use agent::store::{EtcdConfig, RaftPeer, ServerState, Store, StoreConfig, Transport, WriteError};
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use smr_tests::etcd::EtcdCluster;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

const DEADLINE: Duration = Duration::from_secs(20);

fn config() -> StoreConfig {
    StoreConfig {
        heartbeat: Duration::from_millis(100),
        election_timeout_min: Duration::from_millis(500),
        election_timeout_max: Duration::from_millis(1000),
        ..StoreConfig::default()
    }
}

fn command(op: Op) -> Command {
    Command {
        op_id: new_op_id(),
        at_ms: now_ms(),
        op,
    }
}

fn token_op(n: usize) -> Op {
    Op::AddJoinToken {
        token: JoinTokenRecord {
            secret_sha256: format!("t{n:05}"),
            expires_ms: now_ms() + 3_600_000,
        },
    }
}

fn node_op(name: &str) -> Op {
    Op::RegisterNode {
        node: NodeRecord {
            id: 0,
            name: name.into(),
            host: name.into(),
            domain: name.into(),
            ip: "127.0.0.1".into(),
            api_port: 1,
            raft_port: 2,
            labels: Default::default(),
            joined_ms: 0,
            schedulable: true,
            lease: None,
            vtep_mac: None,
            public_ip: None,
            wg_port: None,
            wg_public_key: None,
        },
    }
}

/// Serves `app` over plain HTTP until `stop`; then drops every open connection.
async fn serve_plain(listener: TcpListener, app: Router, mut stop: watch::Receiver<bool>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let service = TowerToHyperService::new(app.clone());
                connections.spawn(async move {
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        }
    }
    connections.abort_all();
    while connections.join_next().await.is_some() {}
}

struct RaftNode {
    port: u16,
    /// The port's socket, held from the start until the node first serves, so that no other
    /// connection on this busy host takes the port in between.
    reserved: Option<std::net::TcpListener>,
    server: Option<(watch::Sender<bool>, JoinHandle<()>)>,
}

enum Backend {
    Raft {
        dir: tempfile::TempDir,
        nodes: Vec<RaftNode>,
    },
    Etcd {
        cluster: Box<EtcdCluster>,
        config: EtcdConfig,
    },
}

/// Handles 1..=n on one backend (index i is node id i + 1).
struct Harness {
    backend: Backend,
    handles: Vec<Option<Store>>,
    config: StoreConfig,
}

fn peer(port: u16, id: u64) -> RaftPeer {
    RaftPeer {
        raft_addr: format!("127.0.0.1:{port}"),
        api_addr: format!("127.0.0.1:{port}"),
        name: format!("n{id}"),
    }
}

impl Harness {
    async fn raft(n: usize) -> Harness {
        let mut nodes = Vec::new();
        for _ in 0..n {
            let reserved = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let port = reserved.local_addr().unwrap().port();
            nodes.push(RaftNode {
                port,
                reserved: Some(reserved),
                server: None,
            });
        }
        let mut h = Harness {
            backend: Backend::Raft {
                dir: tempfile::tempdir().unwrap(),
                nodes,
            },
            handles: (0..n).map(|_| None).collect(),
            config: config(),
        };
        for i in 0..n {
            h.open(i).await;
        }
        let first = h.handle(0);
        let Backend::Raft { nodes, .. } = &h.backend else {
            unreachable!()
        };
        first.bootstrap(peer(nodes[0].port, 1)).await.unwrap();
        wait_for("node 1 to lead", || {
            first.status().state == ServerState::Leader
        })
        .await;
        for (i, node) in nodes.iter().enumerate().skip(1) {
            let id = i as u64 + 1;
            tokio::time::timeout(DEADLINE, first.add_member(id, peer(node.port, id)))
                .await
                .expect("add_member in time")
                .expect("add_member");
        }
        h
    }

    async fn etcd(n: usize) -> Harness {
        Harness::etcd_with(n, config()).await
    }

    async fn etcd_with(n: usize, store_config: StoreConfig) -> Harness {
        let cluster = tokio::task::spawn_blocking(|| EtcdCluster::start(3))
            .await
            .unwrap()
            .expect("a 3-member etcd cluster");
        let config = EtcdConfig {
            endpoints: cluster.endpoints(),
            prefix: format!("/conformance-{}/", new_op_id()),
            ..EtcdConfig::default()
        };
        let mut h = Harness {
            backend: Backend::Etcd {
                cluster: Box::new(cluster),
                config,
            },
            handles: (0..n).map(|_| None).collect(),
            config: store_config,
        };
        for i in 0..n {
            h.open(i).await;
        }
        h
    }

    /// etcd only: a client of the harness's etcd cluster, and the store's key prefix.
    async fn etcd_client(&self) -> (etcd_client::Client, String) {
        let Backend::Etcd { config, .. } = &self.backend else {
            panic!("not an etcd harness");
        };
        let client = etcd_client::Client::connect(&config.endpoints, None)
            .await
            .unwrap();
        (client, config.prefix.clone())
    }

    fn handle(&self, i: usize) -> Store {
        self.handles[i].clone().expect("handle is open")
    }

    fn open_handles(&self) -> Vec<(usize, Store)> {
        self.handles
            .iter()
            .enumerate()
            .filter_map(|(i, h)| h.clone().map(|h| (i, h)))
            .collect()
    }

    /// Opens (or reopens) handle `i` on its data (Raft: its directory and port).
    async fn open(&mut self, i: usize) {
        let id = i as u64 + 1;
        let store_config = self.config.clone();
        let store = match &mut self.backend {
            Backend::Raft { dir, nodes } => {
                let transport = Transport {
                    client: reqwest::Client::builder()
                        .timeout(Duration::from_secs(5))
                        .build()
                        .unwrap()
                        .into(),
                    scheme: "http".into(),
                };
                let path = dir.path().join(format!("n{id}"));
                let store = Store::open(&path, id, transport, store_config)
                    .await
                    .unwrap();
                let listener = match nodes[i].reserved.take() {
                    Some(reserved) => {
                        reserved.set_nonblocking(true).unwrap();
                        TcpListener::from_std(reserved).unwrap()
                    }
                    None => TcpListener::bind(("127.0.0.1", nodes[i].port))
                        .await
                        .unwrap(),
                };
                let (stop, stop_rx) = watch::channel(false);
                let task = tokio::spawn(serve_plain(listener, store.rpc_router(), stop_rx));
                nodes[i].server = Some((stop, task));
                store
            }
            Backend::Etcd { config: c, .. } => Store::open_etcd(c, id, store_config).await.unwrap(),
        };
        self.handles[i] = Some(store);
    }

    /// Shuts handle `i` down (Raft: its server too, as when the agent stops).
    async fn close(&mut self, i: usize) {
        if let Some(store) = self.handles[i].take() {
            store.shutdown().await;
        }
        if let Backend::Raft { nodes, .. } = &mut self.backend
            && let Some((stop, task)) = nodes[i].server.take()
        {
            let _ = stop.send(true);
            let _ = task.await;
        }
    }

    /// The open handles that consider themselves leader.
    fn leaders(&self) -> Vec<usize> {
        self.open_handles()
            .into_iter()
            .filter(|(_, h)| h.status().state == ServerState::Leader)
            .map(|(i, _)| i)
            .collect()
    }

    async fn one_leader(&self) -> usize {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let leaders = self.leaders();
            if leaders.len() == 1 {
                return leaders[0];
            }
            assert!(
                Instant::now() < deadline,
                "no single leader in time: {leaders:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Writes through handle `via`, following `ForwardToLeader` to the leader's handle.
    async fn write_via(&self, via: usize, cmd: Command) -> Result<CommandResult, WriteError> {
        let deadline = Instant::now() + DEADLINE;
        let mut target = via;
        loop {
            let result = self.handle(target).write(cmd.clone()).await;
            match &result {
                Err(WriteError::ForwardToLeader { leader_id, .. }) => {
                    if let Some(id) = leader_id
                        && self.handles[*id as usize - 1].is_some()
                    {
                        target = *id as usize - 1;
                    }
                }
                // Not applied, or not known yet: the same command (same op_id) again is applied
                // at most once and answers which.
                Err(WriteError::Unavailable(_) | WriteError::Unknown(_)) => {}
                _ => return result,
            }
            if Instant::now() > deadline {
                return result;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn write(&self, via: usize, op: Op) -> CommandResult {
        self.write_via(via, command(op)).await.expect("write")
    }

    /// A linearizable read on handle `reader`: the read index from whichever handle gives one
    /// (the leader on Raft), then this handle's state once it applied up to it.
    async fn read(&self, reader: usize) -> Arc<ClusterState> {
        let deadline = Instant::now() + DEADLINE;
        let index = 'found: loop {
            for (_, h) in self.open_handles() {
                if let Ok(index) = h.read_index().await {
                    break 'found index;
                }
            }
            assert!(Instant::now() < deadline, "no read index in time");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let store = self.handle(reader);
        let mut applied = store.subscribe();
        loop {
            // The subscription's value is the applied index (status() may lag behind it).
            if *applied.borrow_and_update() >= index {
                return store.read(false).await.unwrap();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "handle {reader} did not catch up to {index}"
            );
            let _ = tokio::time::timeout(left, applied.changed()).await;
        }
    }

    /// Kills one replica of the store that is not the leader handle: an etcd member (the first
    /// endpoint, where the handles start), or a Raft follower node.
    async fn kill_replica(&mut self) {
        let leader = self.one_leader().await;
        match &mut self.backend {
            Backend::Etcd { cluster, .. } => cluster.kill_member(0),
            Backend::Raft { .. } => {
                let follower = (0..self.handles.len()).find(|i| *i != leader).unwrap();
                self.close(follower).await;
            }
        }
    }

    async fn close_all(&mut self) {
        for i in 0..self.handles.len() {
            self.close(i).await;
        }
    }
}

/// How many keys start with `prefix`.
async fn count_keys(etcd: &mut etcd_client::Client, prefix: String) -> i64 {
    let options = etcd_client::GetOptions::new()
        .with_prefix()
        .with_count_only();
    etcd.get(prefix, Some(options)).await.unwrap().count()
}

async fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn tokens(state: &Arc<ClusterState>) -> Vec<String> {
    state
        .join_tokens
        .iter()
        .map(|t| t.secret_sha256.clone())
        .collect()
}

// ---- the cases, the same for both backends ----

/// Writes from one handle are visible, in order, to a linearizable read on another.
async fn ordered_writes(mut h: Harness) {
    for n in 0..20 {
        h.write(n % 3, token_op(n)).await;
    }
    let expected: Vec<String> = (0..20).map(|n| format!("t{n:05}")).collect();
    for reader in 0..3 {
        assert_eq!(tokens(&h.read(reader).await), expected, "reader {reader}");
    }
    // Read-your-writes right after each acknowledged write, on another handle.
    for n in 20..30 {
        h.write(0, token_op(n)).await;
        let seen = tokens(&h.read(2).await);
        assert_eq!(seen.last(), Some(&format!("t{n:05}")));
    }
    h.close_all().await;
}

/// A command written twice with the same op_id is applied once; the retry gets the same result.
async fn op_id_dedup(mut h: Harness) {
    let cmd = command(node_op("dup"));
    let first = h.write_via(0, cmd.clone()).await.unwrap();
    let revision = h.read(1).await.revision;
    let second = h.write_via(1, cmd.clone()).await.unwrap();
    let third = h.write_via(2, cmd).await.unwrap();
    assert_eq!(format!("{first:?}"), format!("{second:?}"));
    assert_eq!(format!("{first:?}"), format!("{third:?}"));
    let state = h.read(2).await;
    assert_eq!(
        state.revision, revision,
        "a repeat must not change the state"
    );
    assert_eq!(state.nodes.len(), 1);
    h.close_all().await;
}

/// Concurrent RegisterNode from two handles: distinct ids and distinct subnet leases
/// (the second allocation sees the first: compare-and-swap through the log order).
async fn concurrent_register(mut h: Harness) {
    h.write(
        0,
        Op::SetNetwork {
            network: NetworkSettings {
                cidr: "10.10.0.0/16".parse().unwrap(),
                subnet_len: 24,
                backend: "vxlan".into(),
            },
        },
    )
    .await;
    let mut tasks = Vec::new();
    for n in 0..10 {
        let store_via = n % 2;
        let cmd = command(node_op(&format!("node{n}")));
        let h = &h;
        tasks.push(async move { h.write_via(store_via + 1, cmd).await });
    }
    let results = futures::future::join_all(tasks).await;
    let mut ids = BTreeSet::new();
    for r in results {
        match r.unwrap() {
            CommandResult::NodeRegistered { id } => assert!(ids.insert(id), "id {id} twice"),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(ids.len(), 10);
    let state = h.read(0).await;
    let leases: BTreeSet<_> = state.nodes.values().map(|n| n.lease.unwrap()).collect();
    assert_eq!(leases.len(), 10, "leases must be distinct: {leases:?}");
    h.close_all().await;
}

/// subscribe() changes on every handle when a write is applied.
async fn subscribe_notifies(mut h: Harness) {
    let mut receivers: Vec<_> = (0..3).map(|i| h.handle(i).subscribe()).collect();
    for r in &mut receivers {
        r.borrow_and_update();
    }
    h.write(0, token_op(1)).await;
    for (i, r) in receivers.iter_mut().enumerate() {
        tokio::time::timeout(DEADLINE, r.changed())
            .await
            .unwrap_or_else(|_| panic!("handle {i} was not notified"))
            .unwrap();
    }
    h.close_all().await;
}

/// A handle shut down and reopened recovers the state (and what was written meanwhile).
async fn restart_recovers(mut h: Harness) {
    for n in 0..10 {
        h.write(0, token_op(n)).await;
    }
    let victim = 2;
    h.close(victim).await;
    for n in 10..15 {
        h.write(0, token_op(n)).await;
    }
    h.open(victim).await;
    let expected: Vec<String> = (0..15).map(|n| format!("t{n:05}")).collect();
    assert_eq!(tokens(&h.read(victim).await), expected);
    h.close_all().await;
}

/// Exactly one leader; when the leader's handle goes another takes over within 10 s, and the
/// store keeps accepting writes.
async fn leader_failover(mut h: Harness) {
    let leader = h.one_leader().await;
    // Stays single for a while.
    for _ in 0..10 {
        assert_eq!(h.leaders().len(), 1);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    h.write(leader, token_op(1)).await;
    let gone = Instant::now();
    h.close(leader).await;
    let deadline = gone + Duration::from_secs(10);
    loop {
        let leaders = h.leaders();
        if leaders.len() == 1 && leaders[0] != leader {
            break;
        }
        assert!(Instant::now() < deadline, "no new leader within 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("new leader after {:?}", gone.elapsed());
    let other = (0..3).find(|i| *i != leader).unwrap();
    h.write(other, token_op(2)).await;
    assert_eq!(tokens(&h.read(other).await), vec!["t00001", "t00002"]);
    h.close_all().await;
}

/// One replica of the store dies (etcd: the member the handles talk to first): every
/// remaining handle keeps writing and reading.
async fn replica_killed(mut h: Harness) {
    h.write(0, token_op(0)).await;
    h.kill_replica().await;
    let open: Vec<usize> = h.open_handles().into_iter().map(|(i, _)| i).collect();
    for (n, via) in open.iter().enumerate() {
        h.write(*via, token_op(n + 1)).await;
    }
    for reader in &open {
        assert_eq!(tokens(&h.read(*reader).await).len(), open.len() + 1);
    }
    h.close_all().await;
}

macro_rules! conformance {
    ($backend:ident, $make:expr) => {
        mod $backend {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn ordered_writes_visible_to_linearizable_reads() {
                ordered_writes($make).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn op_id_dedup_applies_once() {
                op_id_dedup($make).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn concurrent_register_gets_distinct_ids_and_leases() {
                concurrent_register($make).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn subscribe_notifies_every_handle() {
                subscribe_notifies($make).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn restarted_handle_recovers_state() {
                restart_recovers($make).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn one_leader_and_failover_within_10s() {
                leader_failover($make).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn replica_killed_keeps_working() {
                replica_killed($make).await;
            }
        }
    };
}

conformance!(raft, Harness::raft(3).await);
conformance!(etcd, Harness::etcd(3).await);

/// etcd only: without an etcd quorum the store reports degraded, refuses writes and keeps its
/// last state; once etcd is back it resumes, and nothing acknowledged before is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcd_outage_degrades_and_resumes() {
    let mut h = Harness::etcd(2).await;
    for n in 0..5 {
        h.write(n % 2, token_op(n)).await;
    }
    let before: Vec<String> = (0..5).map(|n| format!("t{n:05}")).collect();
    wait_for("both handles to apply", || {
        (0..2).all(|i| h.handle(i).status().last_applied >= h.handle(0).status().last_applied)
    })
    .await;
    {
        let Backend::Etcd { cluster, .. } = &mut h.backend else {
            unreachable!()
        };
        cluster.kill_member(1);
        cluster.kill_member(2);
    }
    // Not acknowledged: refused, or (the member may still have passed it on) of unknown fate,
    // which is why t00099 is not expected either way below.
    let refused = h.handle(0).write(command(token_op(99))).await;
    assert!(
        matches!(
            refused,
            Err(WriteError::Unavailable(_) | WriteError::Unknown(_))
        ),
        "a write without quorum must not be acknowledged, got {refused:?}"
    );
    wait_for("both handles to report degraded", || {
        (0..2).all(|i| h.handle(i).status().state == ServerState::Degraded)
    })
    .await;
    assert!(h.leaders().is_empty(), "no leader without etcd");
    for i in 0..2 {
        let kept = h.handle(i).read(false).await.unwrap();
        assert_eq!(tokens(&kept)[..5], before[..], "handle {i} keeps its state");
    }
    {
        let Backend::Etcd { cluster, .. } = &mut h.backend else {
            unreachable!()
        };
        cluster.start_member(1).unwrap();
        cluster.start_member(2).unwrap();
        for i in 0..3 {
            tokio::task::block_in_place(|| cluster.wait_healthy(i, DEADLINE)).unwrap();
        }
    }
    wait_for("the handles to resume", || {
        (0..2).all(|i| h.handle(i).status().state != ServerState::Degraded)
    })
    .await;
    h.one_leader().await;
    h.write(1, token_op(5)).await;
    for i in 0..2 {
        let seen: Vec<String> = tokens(&h.read(i).await)
            .into_iter()
            .filter(|t| t != "t00099")
            .collect();
        let expected: Vec<String> = (0..6).map(|n| format!("t{n:05}")).collect();
        assert_eq!(seen, expected, "handle {i}");
    }
    h.close_all().await;
}

/// etcd only: the leader snapshots the state into etcd and trims the log; a handle that was away
/// (and a new one) catch up from the snapshot plus the log after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcd_snapshot_trims_the_log_and_late_handles_catch_up() {
    let mut h = Harness::etcd_with(
        3,
        StoreConfig {
            snapshot_every: 10,
            ..config()
        },
    )
    .await;
    h.write(0, token_op(0)).await;
    h.close(2).await;
    for n in 1..60 {
        h.write(n % 2, token_op(n)).await;
    }
    let (mut etcd, prefix) = h.etcd_client().await;
    let deadline = Instant::now() + DEADLINE;
    loop {
        let snapshot = etcd.get(format!("{prefix}snapshot"), None).await.unwrap();
        let count = count_keys(&mut etcd, format!("{prefix}log/")).await;
        if !snapshot.kvs().is_empty() && count < 20 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no snapshot/trim: {count} log keys"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let expected: Vec<String> = (0..60).map(|n| format!("t{n:05}")).collect();
    // The handle that was away since the first write, and a brand-new one (id 4).
    h.open(2).await;
    assert_eq!(tokens(&h.read(2).await), expected);
    h.handles.push(None);
    h.open(3).await;
    assert_eq!(tokens(&h.read(3).await), expected);
    h.write(3, token_op(60)).await;
    assert_eq!(tokens(&h.read(0).await).len(), 61);
    h.close_all().await;
}

/// etcd only: a state larger than an etcd request (1.5 MiB by default) is snapshotted in chunks,
/// and a new handle catches up from them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcd_snapshot_larger_than_an_etcd_request_is_chunked() {
    let mut h = Harness::etcd_with(
        1,
        StoreConfig {
            snapshot_every: 4,
            ..config()
        },
    )
    .await;
    // 8 configurations of 300 KiB: about 2.4 MiB of state.
    let blob = |n: usize| format!("{n}").repeat(300 << 10);
    for n in 0..8 {
        let yaml = format!(
            "kind: configuration\nprefix: simplecontainer.io/v1\nmeta: {{group: big, name: c{n}}}\nspec:\n  data: {{blob: '{}'}}\n",
            blob(n)
        );
        let objects = agent::definitions::parse_str("big.yaml", &yaml).unwrap();
        h.write(
            0,
            Op::Apply {
                objects,
                owner: None,
            },
        )
        .await;
    }
    let (mut etcd, prefix) = h.etcd_client().await;
    // The snapshot covers all 8 writes: the log before it is gone, its chunks are all there
    // and only its own.
    let deadline = Instant::now() + DEADLINE;
    let manifest = loop {
        let snapshot = etcd.get(format!("{prefix}snapshot"), None).await.unwrap();
        let log = count_keys(&mut etcd, format!("{prefix}log/")).await;
        if let Some(kv) = snapshot.kvs().first()
            && log == 0
        {
            break serde_json::from_slice::<serde_json::Value>(kv.value()).unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "no snapshot/trim: {log} log keys"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let chunks = manifest["chunks"].as_i64().unwrap();
    assert!(chunks >= 3, "{manifest}");
    assert!(
        manifest["bytes"].as_i64().unwrap() > 1_572_864,
        "{manifest}"
    );
    let deadline = Instant::now() + DEADLINE;
    loop {
        let stored = count_keys(&mut etcd, format!("{prefix}snapshot-chunks/")).await;
        if stored == chunks {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{stored} chunks stored for a snapshot of {chunks}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A new handle starts from the snapshot alone.
    h.handles.push(None);
    h.open(1).await;
    let state = h.read(1).await;
    for n in 0..8 {
        let key: agent::definitions::ObjectKey = format!("configuration/big/c{n}").parse().unwrap();
        let data = state.objects[&key].object.spec.data().unwrap();
        assert!(data["blob"] == blob(n), "c{n} differs after the catch-up");
    }
    h.close_all().await;
}

/// etcd only: etcd's own authentication (`--etcd-user`, `--etcd-password-file`). The store logs
/// in, keeps working after etcd expired its token, and a wrong password is refused at open.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcd_with_a_user_and_password() {
    // Tokens expire after 2 s without use.
    let cluster = tokio::task::spawn_blocking(|| {
        EtcdCluster::start_with_args(
            1,
            std::net::Ipv4Addr::LOCALHOST,
            None,
            &["--auth-token", "simple", "--auth-token-ttl", "2"],
        )
    })
    .await
    .unwrap()
    .expect("an etcd");
    let prefix = "/authed/";
    smr_tests::etcd::enable_auth(&cluster.endpoints(), "smr", "s3cret", prefix)
        .await
        .unwrap();

    let with = |password: &str| EtcdConfig {
        endpoints: cluster.endpoints(),
        prefix: prefix.into(),
        credentials: Some(agent::credentials::Credentials {
            user: "smr".into(),
            password: password.into(),
        }),
        ..EtcdConfig::default()
    };
    let refused = Store::open_etcd(&with("wrong"), 2, config()).await;
    let Err(e) = refused else {
        panic!("a wrong password was accepted");
    };
    assert!(e.to_string().contains("authentication failed"), "{e}");
    assert!(!format!("{e} {:?}", with("wrong")).contains("wrong"), "{e}");

    let store = Store::open_etcd(&with("s3cret"), 1, config())
        .await
        .unwrap();
    for n in 0..3 {
        // The second and third writes come after etcd expired the token of the one before.
        if n > 0 {
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        let result = store.write(command(token_op(n))).await;
        assert!(
            matches!(result, Ok(CommandResult::Done { .. })),
            "write {n}: {result:?}"
        );
    }
    assert_eq!(
        tokens(&store.read(true).await.unwrap()),
        ["t00000", "t00001", "t00002"]
    );
    // The election (leases, the election API) works under authentication too.
    wait_for("the authenticated handle to lead", || {
        store.status().state == ServerState::Leader
    })
    .await;

    // Anonymous clients get nothing.
    let anonymous = Store::open_etcd(
        &EtcdConfig {
            credentials: None,
            ..with("")
        },
        3,
        StoreConfig {
            write_timeout: Duration::from_secs(2),
            ..config()
        },
    )
    .await
    .unwrap();
    let refused = anonymous.write(command(token_op(9))).await;
    assert!(refused.is_err(), "{refused:?}");
    anonymous.shutdown().await;
    store.shutdown().await;
}

/// etcd only: TLS to etcd with a client certificate (`--etcd-cacert/--etcd-cert/--etcd-key`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcd_over_tls_with_a_client_certificate() {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let dir = tempfile::tempdir().unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf = |sans: Vec<String>| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(sans)
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (server_pem, server_key) = leaf(vec!["127.0.0.1".into(), "localhost".into()]);
    let (client_pem, client_key) = leaf(vec!["smr-agent".into()]);
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let files = smr_tests::etcd::TlsFiles {
        ca: write("ca.pem", &ca_cert.pem()),
        cert: write("server.pem", &server_pem),
        key: write("server.key", &server_key),
    };
    let cluster = tokio::task::spawn_blocking(move || {
        EtcdCluster::start_with(1, std::net::Ipv4Addr::LOCALHOST, Some(files))
    })
    .await
    .unwrap()
    .expect("a TLS etcd");
    let base = EtcdConfig {
        endpoints: cluster.endpoints(),
        prefix: "/tls/".into(),
        ca_pem: Some(ca_cert.pem()),
        ..EtcdConfig::default()
    };
    let authenticated = EtcdConfig {
        cert_pem: Some(client_pem),
        key_pem: Some(client_key),
        ..base.clone()
    };
    let store = Store::open_etcd(&authenticated, 1, config()).await.unwrap();
    let deadline = Instant::now() + DEADLINE;
    let result = loop {
        match store.write(command(token_op(1))).await {
            Ok(r) => break r,
            Err(e) => assert!(Instant::now() < deadline, "no write over TLS: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        !matches!(result, CommandResult::Rejected { .. }),
        "{result:?}"
    );
    let state = store.read(true).await.unwrap();
    assert_eq!(tokens(&state), vec!["t00001"]);
    // Without a client certificate the same (running) etcd refuses: the write is unavailable.
    let anonymous = Store::open_etcd(
        &base,
        2,
        StoreConfig {
            write_timeout: Duration::from_secs(2),
            ..config()
        },
    )
    .await
    .unwrap();
    // The client cannot tell which: under TLS 1.3 etcd refuses the missing certificate after the
    // client's side of the handshake has finished, so the request is either cancelled before it
    // was sent (`Unavailable`) or lost on a closed connection (`Unknown`, as any write whose
    // connection broke after sending). Either way etcd never read it: nothing is written.
    let refused = anonymous.write(command(token_op(2))).await;
    assert!(
        matches!(
            refused,
            Err(WriteError::Unavailable(_) | WriteError::Unknown(_))
        ),
        "{refused:?}"
    );
    // A write through the authenticated store orders after anything etcd accepted before it.
    let after = store.write(command(token_op(3))).await.unwrap();
    assert!(
        !matches!(after, CommandResult::Rejected { .. }),
        "{after:?}"
    );
    let state = store.read(true).await.unwrap();
    assert_eq!(tokens(&state), vec!["t00001", "t00003"]);
    anonymous.shutdown().await;
    store.shutdown().await;
}

/// etcd only: etcd out of space (its NOSPACE alarm, here a 16 MiB quota filled by other keys)
/// refuses the store's writes as InsufficientStorage (HTTP 507), nothing written, and the store
/// reports why; once an operator frees space and disarms the alarm, writes resume by themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcd_out_of_space_refuses_writes_and_resumes() {
    let cluster = tokio::task::spawn_blocking(|| {
        EtcdCluster::start_with_args(
            1,
            std::net::Ipv4Addr::LOCALHOST,
            None,
            &["--quota-backend-bytes", "16777216"],
        )
    })
    .await
    .unwrap()
    .expect("an etcd");
    let config = EtcdConfig {
        endpoints: cluster.endpoints(),
        prefix: "/nospace/".into(),
        ..EtcdConfig::default()
    };
    let store = Store::open_etcd(&config, 1, self::config()).await.unwrap();
    wait_for("the store to sync", || {
        store.status().state != ServerState::Degraded
    })
    .await;
    store.write(command(token_op(0))).await.expect("a write");

    // Someone else's keys fill etcd to its quota.
    let mut etcd = etcd_client::Client::connect(&config.endpoints, None)
        .await
        .unwrap();
    let junk = vec![b'j'; 1 << 20];
    let mut full = false;
    for i in 0..64 {
        if let Err(e) = etcd.put(format!("/junk/{i}"), junk.clone(), None).await {
            assert!(e.to_string().contains("space exceeded"), "{e}");
            full = true;
            break;
        }
    }
    assert!(full, "etcd never ran out of space");
    let refused = store.write(command(token_op(1))).await;
    assert!(
        matches!(refused, Err(WriteError::InsufficientStorage(_))),
        "{refused:?}"
    );
    let problem = store.status().problem.expect("degraded while etcd is full");
    assert!(problem.contains("out of space"), "{problem}");

    // The operator's fix: delete, compact, defragment, disarm.
    let deleted = etcd
        .delete(
            "/junk/",
            Some(etcd_client::DeleteOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    let revision = deleted.header().unwrap().revision();
    etcd.compact(
        revision,
        Some(etcd_client::CompactionOptions::new().with_physical()),
    )
    .await
    .unwrap();
    etcd.defragment().await.unwrap();
    // `etcdctl alarm disarm`: each raised alarm, by the member that raised it.
    let alarms = etcd
        .alarm(
            etcd_client::AlarmAction::Get,
            etcd_client::AlarmType::None,
            None,
        )
        .await
        .unwrap();
    assert!(!alarms.alarms().is_empty(), "etcd raised no alarm");
    for alarm in alarms.alarms() {
        let mut options = etcd_client::AlarmOptions::new();
        options.with_member(alarm.member_id());
        etcd.alarm(
            etcd_client::AlarmAction::Deactivate,
            alarm.alarm(),
            Some(options),
        )
        .await
        .unwrap();
    }
    // No client write needed: the store sees by itself that etcd takes writes again.
    wait_for("the store to leave degraded", || {
        store.status().problem.is_none()
    })
    .await;
    store
        .write(command(token_op(2)))
        .await
        .expect("a write after the fix");
    let state = store.read(true).await.unwrap();
    assert_eq!(
        tokens(&state),
        vec!["t00000", "t00002"],
        "the refused write is absent"
    );
    store.shutdown().await;
}

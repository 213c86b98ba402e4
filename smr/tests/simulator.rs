//! Issue 14: the simulator. One real agent (the leader, control plane only) on loopback, and N
//! simulated nodes in this process (`agent::sim`) that join through its API, heartbeat, and run
//! what they are assigned through the real node reconciler on an engine in memory. Asserts
//! correctness, not time; prints the figures `bench/scale.sh` reports.
//!
//! Size: `SMR_SIM_NODES` (default 100) and `SMR_SIM_REPLICAS` (default 5,000, in objects of
//! `SMR_SIM_NODES` replicas each, spread uniform), `SMR_SIM_KILL` nodes killed (default 10).
//! `SMR_SIM_STORE=etcd`: the agent on a real etcd (one member) instead of its Raft log.
//! `SMR_SIM_APPLIES`: configuration objects applied one by one at that size (default 50).
//! `SMR_SIM_TRACE=1`: each round's timing on stderr, and when the log grows after the kill.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use agent::sim::{SimNode, SimOptions, fetch_state};
use agent::state::{ClusterState, NodeId};
use anyhow::{Context as _, bail};
use common::Cluster;
use smr_tests::etcd::EtcdCluster;

/// The simulated nodes run the agent's reconciler, which runs under jemalloc in smrmgr: so do they
/// here (with glibc's malloc, a fifth of the simulator's CPU went to malloc and free).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn object(i: usize, replicas: usize) -> String {
    format!(
        "kind: containers\nprefix: simplecontainer.io/v1\nmeta:\n  group: sim\n  name: app{i}\nspec:\n  image: sim/app\n  tag: \"1\"\n  replicas: {replicas}\n  spread:\n    spread: uniform\n"
    )
}

/// The nodes, their liveness switch, and the agent they talk to.
struct Sim {
    api: String,
    nodes: Vec<SimNode>,
    alive: Vec<Arc<AtomicBool>>,
    /// The state of the last round, and which nodes were alive then.
    seen: Option<Arc<ClusterState>>,
    was_alive: Vec<bool>,
}

impl Sim {
    fn alive_ids(&self) -> BTreeSet<NodeId> {
        self.nodes
            .iter()
            .zip(&self.alive)
            .filter(|(_, a)| a.load(Ordering::SeqCst))
            .map(|(n, _)| n.id)
            .collect()
    }

    /// Rounds until `done` holds of a state (then returns it) or `limit` passes. A round reads
    /// the agent's state and runs the reconcile passes of the live nodes it gives work
    /// ([`agent::sim::woken`], [`SimNode::needs_pass`]): on two threads, as the nodes are
    /// apart; the next round starts when they end, or soon when nobody had work.
    async fn drive(
        &mut self,
        what: &str,
        limit: Duration,
        mut done: impl FnMut(&Sim, &ClusterState) -> Result<(), String>,
    ) -> anyhow::Result<ClusterState> {
        let started = Instant::now();
        let deadline = started + limit;
        let http = self.nodes[0].http().clone();
        let trace = std::env::var_os("SMR_SIM_TRACE").is_some();
        loop {
            let round = Instant::now();
            let state = fetch_state(&http, &self.api).await?;
            let fetched = round.elapsed();
            let checked = done(self, &state);
            if trace {
                eprintln!(
                    "round {what}: at {:.2} s, fetch {:.2} s, check {:.2} s, revision {}: {}",
                    (round - started).as_secs_f64(),
                    fetched.as_secs_f64(),
                    (round.elapsed() - fetched).as_secs_f64(),
                    state.revision,
                    checked.as_ref().err().map_or("done", String::as_str)
                );
            }
            let why = match checked {
                Ok(()) => return Ok(state),
                Err(why) => why,
            };
            if Instant::now() > deadline {
                bail!("{what}: not reached in {limit:?}: {why}");
            }
            let state = Arc::new(state);
            let alive: Vec<bool> = self
                .alive
                .iter()
                .map(|a| a.load(Ordering::SeqCst))
                .collect();
            let woken = match &self.seen {
                Some(seen) => agent::sim::woken(seen, &state),
                None => None,
            };
            let now = agent::node::now_ms();
            let which: Vec<bool> = self
                .nodes
                .iter_mut()
                .enumerate()
                .map(|(i, node)| {
                    if alive[i] && !self.was_alive.get(i).copied().unwrap_or(true) {
                        node.woke_up();
                    }
                    alive[i]
                        && (woken.as_ref().is_none_or(|w| w.contains(&node.id))
                            || node.needs_pass(now))
                })
                .collect();
            self.was_alive = alive;
            self.seen = Some(state.clone());
            let count = which.iter().filter(|w| **w).count();
            if count == 0 {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            let passes = Instant::now();
            let sent = self.passes(which, state).await?;
            if trace {
                eprintln!(
                    "round {what}: {count} nodes passed in {:.2} s, {sent} reports",
                    passes.elapsed().as_secs_f64()
                );
            }
        }
    }

    /// The reconcile passes of the nodes `which` says, on two tasks; how many reports they sent.
    async fn passes(
        &mut self,
        which: Vec<bool>,
        state: Arc<ClusterState>,
    ) -> anyhow::Result<usize> {
        let mut first = std::mem::take(&mut self.nodes);
        let second = first.split_off(first.len() / 2);
        let mut which_first = which;
        let which_second = which_first.split_off(first.len());
        let tasks = [(first, which_first), (second, which_second)].map(|(mut nodes, which)| {
            let state = state.clone();
            tokio::spawn(async move {
                let passes = nodes
                    .iter_mut()
                    .zip(which)
                    .filter(|(_, pass)| *pass)
                    .map(|(node, _)| node.reconcile(&state));
                let results = futures::future::join_all(passes).await;
                (nodes, results)
            })
        });
        let mut sent = 0;
        for task in tasks {
            let (nodes, results) = task.await.context("a task of reconcile passes")?;
            self.nodes.extend(nodes);
            for result in results {
                match result {
                    Ok(n) => sent += n,
                    Err(e) => eprintln!("reconcile: {e}"),
                }
            }
        }
        Ok(sent)
    }
}

/// Every replica of every object placed on a node of `alive`, spread uniform (per object, the
/// counts of the nodes differ by at most one), and reported running and ready by its node; no
/// node of `alive` reports a replica it is not assigned.
/// The spread is judged over `spread_over` (nodes that came back hold nothing until new
/// replicas come: placement never moves a replica off a live node).
fn all_running(
    state: &ClusterState,
    objects: usize,
    per_object: usize,
    alive: &BTreeSet<NodeId>,
    spread_over: &BTreeSet<NodeId>,
) -> Result<(), String> {
    if !state.placement_errors.is_empty() {
        return Err(format!("placement errors: {:?}", state.placement_errors));
    }
    let mut placed: BTreeMap<NodeId, BTreeSet<(String, u32)>> = BTreeMap::new();
    for i in 0..objects {
        let key: agent::definitions::ObjectKey =
            format!("containers/sim/app{i}").parse().expect("key");
        let placement = state
            .placements
            .get(&key)
            .ok_or(format!("{key} not placed"))?;
        if placement.replicas.len() != per_object {
            return Err(format!("{key}: {} slots", placement.replicas.len()));
        }
        let mut counts: BTreeMap<NodeId, usize> = spread_over.iter().map(|id| (*id, 0)).collect();
        for (index, slot) in &placement.replicas {
            if !alive.contains(&slot.node) {
                return Err(format!("{key}/{index} on node {} (not alive)", slot.node));
            }
            if let Some(count) = counts.get_mut(&slot.node) {
                *count += 1;
            }
            placed
                .entry(slot.node)
                .or_default()
                .insert((key.to_string(), *index));
        }
        let (min, max) = (counts.values().min(), counts.values().max());
        if let (Some(min), Some(max)) = (min, max)
            && max - min > 1
        {
            return Err(format!("{key}: not uniform ({min} to {max} per node)"));
        }
    }
    for id in alive {
        let reported: BTreeSet<(String, u32)> = state
            .reports
            .get(id)
            .map(|r| {
                r.replicas
                    .iter()
                    .filter(|r| r.phase == "running" && r.ready)
                    .map(|r| (r.key.to_string(), r.index))
                    .collect()
            })
            .unwrap_or_default();
        let all: usize = state.reports.get(id).map_or(0, |r| r.replicas.len());
        let expected = placed.get(id).cloned().unwrap_or_default();
        if reported != expected || all != expected.len() {
            return Err(format!(
                "node {id} reports {} running of {} ({} in all)",
                reported.len(),
                expected.len(),
                all
            ));
        }
    }
    Ok(())
}

/// The replica records DNS must hold: per ready replica its two names, per object all of them.
fn expected_dns(
    state: &ClusterState,
    alive: &BTreeSet<NodeId>,
) -> BTreeMap<String, BTreeSet<String>> {
    let mut records: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for id in alive {
        for r in state
            .reports
            .get(id)
            .map(|r| r.replicas.as_slice())
            .unwrap_or_default()
        {
            let (Some(ip), true) = (&r.ip, r.ready) else {
                continue;
            };
            let (g, n, i) = (&r.key.group, &r.key.name, r.index);
            for name in [
                format!("cluster.{g}.{g}-{n}-{i}.private."),
                format!("cluster.{g}-{n}-{i}.private."),
                format!("cluster.{g}.{n}.private."),
            ] {
                records.entry(name).or_default().insert(ip.clone());
            }
        }
    }
    records
}

async fn dns_of_replicas(
    client: &agent::client::Client,
) -> anyhow::Result<BTreeMap<String, BTreeSet<String>>> {
    let records = client.get_json("dns").await?;
    let mut out = BTreeMap::new();
    for r in records.as_array().context("a list")? {
        let name = r["name"].as_str().context("name")?.to_string();
        if !name.starts_with("cluster.sim") {
            continue;
        }
        let ips: BTreeSet<String> = r["addresses"]
            .as_array()
            .context("addresses")?
            .iter()
            .filter_map(|a| a.as_str().map(str::to_string))
            .collect();
        out.insert(name, ips);
    }
    Ok(out)
}

/// A series of the agent's plain-HTTP metrics.
async fn metric(addr: &str, prefix: &str) -> anyhow::Result<f64> {
    series(&metrics_text(addr).await?, prefix).with_context(|| format!("{prefix} in the metrics"))
}

/// The agent's plain-HTTP metrics page.
async fn metrics_text(addr: &str) -> anyhow::Result<String> {
    Ok(reqwest::get(format!("http://{addr}/metrics"))
        .await?
        .text()
        .await?)
}

/// The value of the series `prefix` names in a metrics page.
fn series(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .and_then(|v| v.trim().parse().ok())
}

/// The CPU time the process has used so far (user and system), from /proc.
fn cpu_seconds(pid: nix::unistd::Pid) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // The fields after the command name (which may hold spaces): the state (field 3) first,
    // utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields
        .get(11..13)
        .map(|f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum())
        .unwrap_or(0.0);
    // In USER_HZ, 100 per second on Linux.
    ticks / 100.0
}

/// The `q` quantile (0 to 1) of `sorted` (ascending, not empty).
fn quantile(sorted: &[Duration], q: f64) -> Duration {
    let at = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[at.min(sorted.len() - 1)]
}

fn rss_kib(pid: nix::unistd::Pid) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_nodes_are_placed_run_reported_in_dns_and_rescheduled() -> anyhow::Result<()> {
    let n = env_or("SMR_SIM_NODES", 100);
    let replicas = env_or("SMR_SIM_REPLICAS", 5_000);
    let kill = env_or("SMR_SIM_KILL", 10).min(n.saturating_sub(1));
    let per_object = n;
    let objects = replicas.div_ceil(per_object);

    // `SMR_SIM_STORE=etcd`: the agent keeps the state in a real etcd (one member) instead of its
    // own Raft log.
    let etcd = match std::env::var("SMR_SIM_STORE").as_deref() {
        Ok("etcd") => Some(tokio::task::spawn_blocking(|| EtcdCluster::start(1)).await??),
        Ok("raft") | Err(_) => None,
        Ok(other) => bail!("SMR_SIM_STORE: {other} is not a store (raft or etcd)"),
    };
    let mut cluster = Cluster::new();
    cluster.start_extra = vec!["--node-timeout".into(), "5s".into()];
    if let Some(etcd) = &etcd {
        cluster.start_extra.extend([
            "--store".into(),
            etcd.url(),
            "--etcd-prefix".into(),
            "/smr-sim/".into(),
        ]);
    }
    cluster.start_first()?;
    let token = cluster.token(0)?;
    let ca = std::fs::read_to_string(cluster.nodes[0].data_dir.join("pki/ca.crt"))?;
    let api = cluster.nodes[0].api();
    let metrics = format!("{}:9213", cluster.nodes[0].ip);
    let pid = cluster.nodes[0].pid().context("the agent's pid")?;
    let files = cluster.dir.path().join("sim-files");

    let started = Instant::now();
    let mut nodes = Vec::with_capacity(n);
    for i in 1..=n {
        let ip = format!("10.200.{}.{}", i / 250, i % 250 + 1);
        let node = SimNode::join(
            &api,
            &ca,
            &token,
            &format!("sim-{i}"),
            &ip,
            files.join(i.to_string()),
            SimOptions::default(),
        )
        .await?;
        nodes.push(node);
    }
    println!(
        "{n} simulated nodes joined in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let alive: Vec<Arc<AtomicBool>> = (0..n).map(|_| Arc::new(AtomicBool::new(true))).collect();

    // Heartbeats of the live nodes, every second (the leader asks for 1 s at a 5 s timeout).
    let beats: Vec<_> = nodes
        .iter()
        .zip(&alive)
        .map(|(node, alive)| (node.http().clone(), node.id, alive.clone()))
        .collect();
    let beat_api = api.clone();
    let before = received(&metrics).await;
    // On a thread and runtime of their own: the reconcile passes of many nodes (CPU work in one
    // task) must not hold them up, or live nodes would look dead to the leader.
    let stop = Arc::new(AtomicBool::new(false));
    let heartbeats = std::thread::spawn({
        let stop = stop.clone();
        move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for the heartbeats");
            runtime.block_on(async move {
                while !stop.load(Ordering::SeqCst) {
                    let sends = beats
                        .iter()
                        .filter(|(_, _, a)| a.load(Ordering::SeqCst))
                        .map(|(http, id, _)| agent::sim::heartbeat(http, &beat_api, *id));
                    futures::future::join_all(sends).await;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            })
        }
    });
    let mut sim = Sim {
        api: api.clone(),
        nodes,
        alive,
        seen: None,
        was_alive: Vec::new(),
    };
    let result = match first_round(&metrics, before, n).await {
        Ok(()) => scenario(&mut sim, &cluster, objects, per_object, kill, &metrics, pid).await,
        Err(e) => Err(e),
    };
    stop.store(true, Ordering::SeqCst);
    let _ = tokio::task::spawn_blocking(move || heartbeats.join()).await;
    result
}

/// The heartbeats the agent received (0 before the first).
async fn received(metrics: &str) -> f64 {
    metric(metrics, "smr_heartbeats_total{event=\"received\"} ")
        .await
        .unwrap_or(0.0)
}

/// Waits until every node was heard from, or the placement would spread over the nodes heard
/// from so far (and, being stable, stay there). Rounds go one after the other, so `2n` more
/// received (the agent's own beats are far fewer) means the first round is complete.
async fn first_round(metrics: &str, before: f64, n: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while received(metrics).await < before + 2.0 * n as f64 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the first heartbeats do not arrive"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

async fn scenario(
    sim: &mut Sim,
    cluster: &Cluster,
    objects: usize,
    per_object: usize,
    kill: usize,
    metrics: &str,
    pid: nix::unistd::Pid,
) -> anyhow::Result<()> {
    let client = cluster.client(0);
    let yaml: Vec<String> = (0..objects).map(|i| object(i, per_object)).collect();
    let parsed = agent::definitions::parse_str("sim.yaml", &yaml.join("---\n"))?;
    let total = objects * per_object;
    // Deadlines grow with the size (bench/scale.sh runs far beyond the CI size): 3 ms per replica
    // beyond the default 5,000.
    let slack = Duration::from_millis(3 * total.saturating_sub(5_000) as u64);
    let cpu_before = cpu_seconds(pid);
    let applied = Instant::now();
    client.apply(&parsed, false, None).await?;

    // Placed, then all running.
    let everyone = sim.alive_ids();
    let mut placed_at = None;
    sim.drive(
        "all replicas running",
        Duration::from_secs(150) + slack,
        |_, state| {
            if placed_at.is_none() {
                let slots: usize = state.placements.values().map(|p| p.replicas.len()).sum();
                if slots == total {
                    placed_at = Some(applied.elapsed());
                }
            }
            all_running(state, objects, per_object, &everyone, &everyone)
        },
    )
    .await?;
    let running = applied.elapsed();
    let placed = placed_at.unwrap_or(running);
    println!(
        "{total} replicas on {} nodes: placed in {:.2} s ({:.0} placements/s), all running in {:.2} s; leader CPU {:.1} s ({:.0}% of a core)",
        everyone.len(),
        placed.as_secs_f64(),
        total as f64 / placed.as_secs_f64().max(0.001),
        running.as_secs_f64(),
        cpu_seconds(pid) - cpu_before,
        100.0 * (cpu_seconds(pid) - cpu_before) / running.as_secs_f64().max(0.001)
    );
    // DNS holds exactly the ready replicas.
    let state = sim
        .drive("DNS", Duration::from_secs(5), |_, _| Ok(()))
        .await?;
    assert_eq!(
        dns_of_replicas(&client).await?,
        expected_dns(&state, &everyone),
        "DNS holds exactly the ready replicas"
    );

    // Idle: the log does not grow while heartbeats go on.
    let index = metric(metrics, "smr_store_commit_index ").await?;
    let beats = metric(metrics, "smr_heartbeats_total{event=\"received\"} ").await?;
    let idle_from = Instant::now();
    let idle_cpu = cpu_seconds(pid);
    loop {
        let now = metric(metrics, "smr_heartbeats_total{event=\"received\"} ").await?;
        if now >= beats + 3.0 * everyone.len() as f64 {
            break;
        }
        anyhow::ensure!(
            idle_from.elapsed() < Duration::from_secs(30) + slack,
            "heartbeats do not arrive"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let grown = metric(metrics, "smr_store_commit_index ").await? - index;
    let idle = idle_from.elapsed().as_secs_f64();
    println!(
        "idle: {grown} log entries in {idle:.1} s ({:.2}/s) while {} heartbeats arrived; leader RSS {} MiB, CPU {:.0}% of a core",
        grown / idle,
        3 * everyone.len(),
        rss_kib(pid).unwrap_or(0) / 1024,
        100.0 * (cpu_seconds(pid) - idle_cpu) / idle
    );
    let batches = metric(metrics, "smr_report_batch_reports_count ").await?;
    let reports = metric(metrics, "smr_report_batch_reports_sum ").await?;
    println!(
        "reports: {reports} in {batches} log entries ({:.1} per entry)",
        reports / batches.max(1.0)
    );

    // One client applies configuration objects one after the other at this size (heartbeats
    // going on): the latency of each apply, acknowledged once committed and applied.
    let applies = env_or("SMR_SIM_APPLIES", 50);
    let mut took = Vec::with_capacity(applies);
    for i in 0..applies {
        let yaml = format!(
            "kind: configuration\nprefix: simplecontainer.io/v1\nmeta:\n  group: simcfg\n  name: c{i}\nspec:\n  data:\n    n: \"{i}\"\n"
        );
        let parsed = agent::definitions::parse_str("c.yaml", &yaml)?;
        let started = Instant::now();
        client.apply(&parsed, false, None).await?;
        took.push(started.elapsed());
    }
    took.sort();
    if !took.is_empty() {
        println!(
            "apply at this size: {applies} configuration objects one by one: p50 {:.1} ms, p99 {:.1} ms",
            quantile(&took, 0.5).as_secs_f64() * 1000.0,
            quantile(&took, 0.99).as_secs_f64() * 1000.0
        );
    }

    // `kill` nodes go silent: no heartbeat, no reconcile.
    let killed: Vec<usize> = (0..kill)
        .map(|k| k * sim.nodes.len() / kill.max(1))
        .collect();
    for &k in &killed {
        sim.alive[k].store(false, Ordering::SeqCst);
    }
    let survivors = sim.alive_ids();
    let dead: BTreeSet<NodeId> = killed.iter().map(|&k| sim.nodes[k].id).collect();
    let silent = Instant::now();
    let trace = std::env::var_os("SMR_SIM_TRACE").is_some();
    // SMR_SIM_TRACE: the leader's proposals and report batches, from one read of its metrics.
    let proposals = |m: String| async move {
        let text = metrics_text(&m).await.unwrap_or_default();
        let value = |prefix: &str| series(&text, prefix).unwrap_or(0.0);
        (
            value("smr_store_proposal_duration_seconds_sum "),
            value("smr_store_proposal_duration_seconds_count "),
            value("smr_report_batch_reports_count "),
            value("smr_report_batch_reports_sum "),
        )
    };
    let before_kill = if trace {
        proposals(metrics.to_string()).await
    } else {
        Default::default()
    };
    // SMR_SIM_TRACE: when the log grows after the kill (the first entry is the placement off
    // the silent nodes: nothing else is written while idle).
    let commits = trace.then(|| {
        let metrics = metrics.to_string();
        tokio::spawn(async move {
            let mut last = 0.0;
            loop {
                if let Ok(index) = metric(&metrics, "smr_store_commit_index ").await
                    && index != last
                {
                    eprintln!(
                        "commit index {index} at {:.2} s after the kill",
                        silent.elapsed().as_secs_f64()
                    );
                    last = index;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    });
    // When the leader had placed every replica off the silent nodes (seen by the simulator's
    // round), and how many rounds (a state read, the passes of the nodes with work) it took.
    let (mut placed_after, mut rounds) = (None, 0u32);
    sim.drive(
        "the killed nodes' replicas running elsewhere",
        Duration::from_secs(90) + slack,
        |_, state| {
            rounds += 1;
            let off_dead = || {
                state
                    .placements
                    .values()
                    .all(|p| p.replicas.values().all(|s| !dead.contains(&s.node)))
            };
            if placed_after.is_none() && off_dead() {
                placed_after = Some(silent.elapsed());
            }
            all_running(state, objects, per_object, &survivors, &survivors)
        },
    )
    .await?;
    let ran_after = silent.elapsed();
    if let Some(commits) = commits {
        commits.abort();
        let after = proposals(metrics.to_string()).await;
        let count = after.1 - before_kill.1;
        eprintln!(
            "after the kill: {count} proposals, {:.1} ms each on average; {} report batches of {} reports",
            1000.0 * (after.0 - before_kill.0) / count.max(1.0),
            after.2 - before_kill.2,
            after.3 - before_kill.3
        );
    }
    println!(
        "{kill} nodes killed: their replicas ran elsewhere after {:.1} s (node timeout 5 s); placed \
         elsewhere after {:.1} s; {rounds} simulator rounds (state reads), {:.2} s each",
        ran_after.as_secs_f64(),
        placed_after.unwrap_or(ran_after).as_secs_f64(),
        ran_after.as_secs_f64() / f64::from(rounds.max(1))
    );
    // While they are away, DNS names only the replicas that run on live nodes: the silent
    // nodes' last reports still say "ready", but their slots have moved.
    let http = sim.nodes[0].http().clone();
    let deadline = Instant::now() + Duration::from_secs(30) + slack;
    loop {
        let state = fetch_state(&http, &sim.api).await?;
        let (got, want) = (
            dns_of_replicas(&client).await?,
            expected_dns(&state, &survivors),
        );
        if got == want {
            break;
        }
        if Instant::now() > deadline {
            let stale: Vec<&String> = got.keys().filter(|k| got.get(*k) != want.get(*k)).collect();
            bail!(
                "DNS still differs from the live nodes' ready replicas for {} name(s), e.g. {:?}",
                stale.len(),
                stale.first()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // They return: their stale containers go, no replica runs twice.
    for &k in &killed {
        sim.alive[k].store(true, Ordering::SeqCst);
    }
    let state = sim
        .drive(
            "no duplicate once the nodes are back",
            Duration::from_secs(60) + slack,
            |sim, state| {
                all_running(state, objects, per_object, &everyone, &survivors)?;
                let mut names: Vec<String> = sim
                    .nodes
                    .iter()
                    .flat_map(|n| n.runtime().running())
                    .collect();
                let count = names.len();
                names.sort();
                names.dedup();
                if names.len() != count || count != total {
                    return Err(format!(
                        "{count} containers running, {} distinct, {total} wanted",
                        names.len()
                    ));
                }
                Ok(())
            },
        )
        .await?;
    assert_eq!(
        dns_of_replicas(&client).await?,
        expected_dns(&state, &everyone),
        "DNS holds exactly the ready replicas"
    );
    Ok(())
}

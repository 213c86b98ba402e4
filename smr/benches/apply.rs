//! Committed applies per second on a 3-node loopback cluster of real agents (mTLS), with 1 client
//! and with 64 concurrent clients, and their p50/p99 latency: first on the embedded Raft store
//! (redb fsync), then, same load in the same run, on the etcd store (3-member etcd on loopback).
//!
//!     cargo bench -p smr --bench apply            # SMR_BENCH_APPLIES=N to change the count
//!
//! `SMR_BENCH_BASELINE=PATH`: also run another build's smrmgr (e.g. main's) first, same run, rows
//! side by side. `SMR_BENCH_STORES=raft` (or `etcd`): only that store (default both).
//! `SMR_BENCH_KIND=configuration`: apply `configuration` objects, which nothing places, instead
//! of 1-replica `containers` objects (each of which the leader then places: a second write).
//!
//! Each load is followed by the CPU time it took, per process: the bench's own clients and each
//! agent, in seconds and as a share of the machine's cores (on a small machine the clients take a
//! large part of it: the agents' figures are what a cluster with its clients elsewhere would
//! spend). The requests are built before the clock starts: parsing them is not in the applies/s
//! or the latencies (it is in the clients' CPU time).
//!
//! Prints figures; asserts nothing about speed.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "common/node.rs"]
mod node;

use std::time::{Duration, Instant};

use agent::client::Client;
use agent::definitions;
use common::Cluster;

fn object(n: usize) -> Vec<definitions::Object> {
    if std::env::var("SMR_BENCH_KIND").as_deref() == Ok("configuration") {
        let yaml = format!(
            "kind: configuration\nprefix: simplecontainer.io/v1\nmeta:\n  group: bench\n  name: b{n}\nspec:\n  data:\n    n: \"{n}\"\n"
        );
        return definitions::parse_str("bench", &yaml).expect("valid definition");
    }
    let yaml = format!(
        "kind: containers\nprefix: simplecontainer.io/v1\nmeta:\n  group: bench\n  name: b{n}\nspec:\n  image: busybox\n  replicas: 1\n"
    );
    definitions::parse_str("bench", &yaml).expect("valid definition")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn run(
    clients: Vec<Client>,
    total: usize,
    offset: usize,
) -> anyhow::Result<(f64, Duration, Duration)> {
    let per = total / clients.len();
    let requests: Vec<Vec<Vec<definitions::Object>>> = (0..clients.len())
        .map(|c| (0..per).map(|n| object(offset + c * per + n)).collect())
        .collect();
    let started = Instant::now();
    let tasks = clients.into_iter().zip(requests).map(|(client, requests)| {
        tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(per);
            for objects in requests {
                let t = Instant::now();
                client.apply(&objects, false, None).await?;
                latencies.push(t.elapsed());
            }
            anyhow::Ok(latencies)
        })
    });
    let mut all = Vec::new();
    for result in futures::future::join_all(tasks).await {
        all.extend(result??);
    }
    let elapsed = started.elapsed();
    all.sort();
    Ok((
        all.len() as f64 / elapsed.as_secs_f64(),
        percentile(&all, 0.5),
        percentile(&all, 0.99),
    ))
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let total: usize = std::env::var("SMR_BENCH_APPLIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let stores: Vec<String> = std::env::var("SMR_BENCH_STORES")
        .unwrap_or_else(|_| "raft,etcd".into())
        .split(',')
        .map(|s| s.trim().to_string())
        .collect();
    if let Some(bad) = stores.iter().find(|s| *s != "raft" && *s != "etcd") {
        anyhow::bail!("SMR_BENCH_STORES: unknown store {bad:?} (raft, etcd)");
    }
    let builds = common::bench_builds();
    println!("{total} applies per run; 3 agents on loopback, mTLS API");
    println!(
        "{:<64} {:>12} {:>10} {:>10}",
        "build / store / load", "applies/s", "p50", "p99"
    );
    for store in &stores {
        for (build, bin) in &builds {
            let what = format!("{build}: {store}");
            if store == "raft" {
                // The embedded Raft store (redb log, durable commits).
                let mut cluster = Cluster::new();
                cluster.bin = bin.clone();
                cluster.start_first()?;
                cluster.join(0)?;
                cluster.join(0)?;
                cluster.wait_formed(&[0, 1, 2], 3).await?;
                bench(&cluster, &what, total).await?;
            } else {
                // The etcd store: the same agents on a 3-member etcd cluster (Debian
                // etcd-server) on loopback.
                let etcd = tokio::task::spawn_blocking(|| smr_tests::etcd::EtcdCluster::start(3))
                    .await??;
                let mut cluster = Cluster::new();
                cluster.bin = bin.clone();
                cluster.start_extra = vec!["--store".into(), etcd.url()];
                cluster.start_first()?;
                cluster.join(0)?;
                cluster.join(0)?;
                cluster.wait_formed(&[0, 1, 2], 3).await?;
                bench(&cluster, &what, total).await?;
                drop(cluster);
                drop(etcd);
            }
        }
    }
    println!(
        "reference (etcd docs, 8 vCPU): 1 client 583 writes/s at 1.6 ms; 1000 clients ~44k writes/s"
    );
    Ok(())
}

async fn bench(cluster: &Cluster, store: &str, total: usize) -> anyhow::Result<()> {
    let leader = cluster.index_of(cluster.client(0).health().await?.leader.unwrap_or(1));
    let metrics = format!("http://{}:9213/metrics", cluster.nodes[leader].ip);
    let cpu = Cpu::new(cluster, leader);
    let (before, at) = (Breakdown::read(&metrics).await, cpu.read());
    let single = run(vec![cluster.client(leader)], total / 4, 0).await?;
    print_row(&format!("{store}: 1 client (leader)"), single);
    let before = Breakdown::read(&metrics).await.print(before);
    let at = cpu.print(at, single, total / 4);
    let spread: Vec<Client> = (0..64).map(|i| cluster.client(i % 3)).collect();
    let many = run(spread, total, 1_000_000).await?;
    print_row(&format!("{store}: 64 clients (spread over 3 nodes)"), many);
    let before = Breakdown::read(&metrics).await.print(before);
    let at = cpu.print(at, many, total);
    let to_leader: Vec<Client> = (0..64).map(|_| cluster.client(leader)).collect();
    let many_leader = run(to_leader, total, 2_000_000).await?;
    print_row(&format!("{store}: 64 clients (leader)"), many_leader);
    Breakdown::read(&metrics).await.print(before);
    cpu.print(at, many_leader, total);
    Ok(())
}

/// CPU time (user + system, from /proc) of the bench's own process (its clients) and of each
/// agent, leader first.
struct Cpu {
    pids: Vec<(String, u32)>,
}

impl Cpu {
    fn new(cluster: &Cluster, leader: usize) -> Cpu {
        let mut pids = vec![("clients".to_string(), std::process::id())];
        let mut agents: Vec<usize> = (0..cluster.nodes.len()).collect();
        agents.sort_by_key(|&i| i != leader);
        for i in agents {
            let what = if i == leader { "leader" } else { "follower" };
            if let Some(pid) = cluster.nodes[i].pid() {
                pids.push((what.to_string(), pid.as_raw() as u32));
            }
        }
        Cpu { pids }
    }

    fn read(&self) -> Vec<f64> {
        self.pids
            .iter()
            .map(|(_, pid)| node::proc_figures(*pid).1)
            .collect()
    }

    /// Prints the CPU time each process took since `before` (a load of `writes` at `rate`/s);
    /// returns the new reading.
    fn print(
        &self,
        before: Vec<f64>,
        (rate, _, _): (f64, Duration, Duration),
        writes: usize,
    ) -> Vec<f64> {
        let now = self.read();
        let wall = writes as f64 / rate.max(f64::MIN_POSITIVE);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let spent: Vec<String> = self
            .pids
            .iter()
            .zip(now.iter().zip(&before))
            .map(|((what, _), (now, before))| {
                let seconds = now - before;
                format!(
                    "{what} {seconds:.2} s ({:.0}%)",
                    100.0 * seconds / (wall * cores)
                )
            })
            .collect();
        let agents: f64 = now.iter().zip(&before).skip(1).map(|(n, b)| n - b).sum();
        println!(
            "    cpu of {cores:.0} cores over {wall:.1} s: {}; agents {:.0} us per write",
            spent.join(", "),
            agents / writes.max(1) as f64 * 1e6
        );
        now
    }
}

/// The leader's own figures of where a write's time goes (its metrics, as sums and counts):
/// writes proposed and their time to applied, Raft entries and their time to applied, writes per
/// entry. Absent (all zero) where the build or the store does not have them.
#[derive(Clone, Copy, Default)]
struct Breakdown {
    writes: f64,
    write_seconds: f64,
    entries: f64,
    entry_seconds: f64,
    entry_writes: f64,
}

impl Breakdown {
    async fn read(url: &str) -> Breakdown {
        let Ok(text) = async { reqwest::get(url).await?.text().await }.await else {
            return Breakdown::default();
        };
        let value = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0.0)
        };
        Breakdown {
            writes: value("smr_store_proposal_duration_seconds_count"),
            write_seconds: value("smr_store_proposal_duration_seconds_sum"),
            entries: value("smr_store_entry_commit_duration_seconds_count"),
            entry_seconds: value("smr_store_entry_commit_duration_seconds_sum"),
            entry_writes: value("smr_store_entry_writes_sum"),
        }
    }

    /// Prints what happened since `before`; returns `self` as the next `before`.
    fn print(self, before: Breakdown) -> Breakdown {
        let writes = self.writes - before.writes;
        let entries = self.entries - before.entries;
        if writes > 0.0 && entries > 0.0 {
            println!(
                "    leader: {writes:.0} writes in {entries:.0} Raft entries ({:.1} per entry), \
                 a write {:.2} ms from proposal to applied, an entry {:.2} ms",
                (self.entry_writes - before.entry_writes) / entries,
                (self.write_seconds - before.write_seconds) / writes * 1e3,
                (self.entry_seconds - before.entry_seconds) / entries * 1e3,
            );
        }
        self
    }
}

fn print_row(what: &str, (rate, p50, p99): (f64, Duration, Duration)) {
    println!(
        "{what:<64} {rate:>12.0} {:>8.2}ms {:>8.2}ms",
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3
    );
}

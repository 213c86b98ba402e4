//! Cost of one write against the size of the state (issue 14), in the two setups:
//! - `loopback`: a one-node cluster on loopback with `--no-workloads` (the store and the API, no
//!   reconciler or container runtime);
//! - `workloads`: a one-node cluster on an emulated VM (its own dockerd, the busybox image built
//!   locally, `--backend vxlan`) with workloads on and 2 busybox replicas running, as the issue's
//!   table was measured (needs root and dockerd; otherwise the setup prints why it is skipped).
//!
//! Each is filled with small `configuration` objects (250 to a write) up to 500, 2,000, 10,000 and
//! 50,000 objects; at each size one client over one keep-alive mTLS connection applies 1,000
//! single ~200-byte `configuration` objects one per request (overwriting 100 probe keys, so the
//! state keeps its size) and the agent's resident memory is read (before the backup that sizes the
//! state).
//!
//!     cargo bench -p smr --bench state_size
//!     SMR_BENCH_SIZES=500,2000      the sizes (default 500,2000,10000,50000)
//!     SMR_BENCH_PROBES=N            single applies per size (default 1000)
//!     SMR_BENCH_SETUPS=loopback     the setups (default loopback,workloads)
//!     SMR_BENCH_BASELINE=PATH       also run an other build's smrmgr first (e.g. main's), same run
//!
//! Prints applies/s, p50, p99, RSS and the size of a backup of the state. Figures only;
//! nothing is asserted.

use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use agent::client::Client;
use agent::definitions::{self, Object};
use anyhow::Context as _;

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "common/node.rs"]
mod node;
use common::vms::{self, VmCluster};
use node::{Node, proc_figures};

/// Concurrent clients while filling.
const FILLERS: usize = 8;
/// Objects per write while filling.
const FILL_BATCH: usize = 250;
/// Probe keys overwritten by the measured applies.
const PROBE_KEYS: usize = 100;

/// A `configuration` object of about 200 bytes as YAML.
fn configuration_yaml(group: &str, name: &str, n: usize) -> String {
    format!(
        "kind: configuration\nprefix: simplecontainer.io/v1\nmeta:\n  group: {group}\n  name: {name}\nspec:\n  data:\n    value: \"{n}\"\n    note: a small configuration object of the state size benchmark\n"
    )
}

fn objects(yaml: &[String]) -> Vec<Object> {
    definitions::parse_str("bench", &yaml.join("---\n")).expect("valid definitions")
}

/// Fills the state from `from` to `to` objects, [`FILL_BATCH`] to a write.
async fn fill(client: &Client, from: usize, to: usize) -> anyhow::Result<()> {
    let next = Arc::new(AtomicUsize::new(from));
    let tasks = (0..FILLERS).map(|_| {
        let (client, next) = (client.clone(), next.clone());
        tokio::spawn(async move {
            loop {
                let start = next.fetch_add(FILL_BATCH, Ordering::Relaxed);
                if start >= to {
                    return anyhow::Ok(());
                }
                let yaml: Vec<String> = (start..(start + FILL_BATCH).min(to))
                    .map(|i| configuration_yaml("fill", &format!("o{i}"), i))
                    .collect();
                client.apply(&objects(&yaml), false, None).await?;
            }
        })
    });
    for result in futures::future::join_all(tasks).await {
        result??;
    }
    Ok(())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

struct Row {
    size: usize,
    rate: f64,
    p50: Duration,
    p99: Duration,
    rss: f64,
    state_mib: f64,
}

/// Fills the state of the agent `client` talks to through `sizes` and measures each size.
async fn measure(
    label: &str,
    client: &Client,
    pid: Option<u32>,
    sizes: &[usize],
    probes: usize,
) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    let mut filled = 0;
    for &size in sizes {
        fill(client, filled, size.saturating_sub(PROBE_KEYS))
            .await
            .with_context(|| format!("{label}: filling to {size} objects"))?;
        filled = filled.max(size.saturating_sub(PROBE_KEYS));
        let mut latencies = Vec::with_capacity(probes);
        let started = Instant::now();
        for n in 0..probes {
            let yaml = configuration_yaml("probe", &format!("p{}", n % PROBE_KEYS), n + size);
            let objects = objects(&[yaml]);
            let t = Instant::now();
            client.apply(&objects, false, None).await?;
            latencies.push(t.elapsed());
        }
        let rate = probes as f64 / started.elapsed().as_secs_f64();
        latencies.sort();
        // The agent's memory after the applies, read before the backup this bench takes to size
        // the state: serializing it costs about 2.5 times its size for a moment, which an
        // allocator hands back to the kernel at once (glibc, through munmap) or within about a
        // second (the agent's jemalloc).
        let rss = pid.map(|pid| proc_figures(pid).0).unwrap_or(0.0);
        let backup = client.backup().await.context("reading a backup")?;
        let state_mib = backup.len() as f64 / 1048576.0;
        rows.push(Row {
            size,
            rate,
            p50: percentile(&latencies, 0.5),
            p99: percentile(&latencies, 0.99),
            rss,
            state_mib,
        });
    }
    Ok(rows)
}

/// The `loopback` setup: a control-plane-only node (`--no-workloads`).
async fn loopback(
    label: &str,
    smrmgr: &Path,
    ip: Ipv4Addr,
    sizes: &[usize],
    probes: usize,
) -> anyhow::Result<Vec<Row>> {
    let dir = tempfile::tempdir()?;
    let node = Node {
        smrmgr: smrmgr.to_path_buf(),
        home: dir.path().to_path_buf(),
        data_dir: dir.path().join("data"),
        ip,
    };
    let result = async {
        node.create()?;
        let client = node.client()?;
        let rows = measure(label, &client, node.pid(), sizes, probes).await?;
        node.stop()?;
        anyhow::Ok(rows)
    }
    .await;
    if result.is_err() {
        node.kill();
    }
    result
}

/// The 2 busybox replicas of the `workloads` setup.
const BUSYBOX: &str = "kind: containers\nprefix: simplecontainer.io/v1\nmeta:\n  group: busybox\n  name: busybox\nspec:\n  image: smr/busybox\n  tag: local\n  replicas: 2\n  entrypoint: [\"sleep\"]\n  args: [\"3600\"]\n";

/// The `workloads` setup: one emulated VM with its own dockerd, workloads on, 2 busybox replicas
/// running. `None` when this machine cannot run VMs (said why). The testbed stops the agent and
/// tears the VM down (its dockerd and containers with it) when dropped.
async fn workloads(
    label: &str,
    smrmgr: &Path,
    sizes: &[usize],
    probes: usize,
) -> anyhow::Result<Option<Vec<Row>>> {
    let Some(mut cluster) = VmCluster::start(1)? else {
        return Ok(None);
    };
    cluster.smrmgr = smrmgr.to_path_buf();
    let result = async {
        cluster
            .start_agent(0, None, &["--backend", "vxlan"])
            .await?;
        let client = cluster.client(0);
        client
            .apply(
                &definitions::parse_str("busybox.yaml", BUSYBOX)?,
                false,
                None,
            )
            .await?;
        vms::all_ready(&client, 2, Duration::from_secs(120)).await?;
        let rows = measure(label, &client, cluster.agents[0], sizes, probes).await?;
        // The replicas must still be there: the figures are those of a node running them.
        vms::all_ready(&client, 2, Duration::from_secs(60)).await?;
        anyhow::Ok(rows)
    }
    .await;
    if result.is_err() {
        cluster.dump_logs();
    }
    let _ = cluster.stop_agent(0);
    result.map(Some)
}

fn print_rows(label: &str, rows: &[Row]) {
    for r in rows {
        println!(
            "{label:<12} {:>8} {:>10.0} {:>7.2}ms {:>7.2}ms {:>9.0} {:>11.1}",
            r.size,
            r.rate,
            r.p50.as_secs_f64() * 1e3,
            r.p99.as_secs_f64() * 1e3,
            r.rss,
            r.state_mib
        );
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let sizes: Vec<usize> = std::env::var("SMR_BENCH_SIZES")
        .unwrap_or_else(|_| "500,2000,10000,50000".into())
        .split(',')
        .map(|s| s.trim().parse().context("SMR_BENCH_SIZES: numbers"))
        .collect::<anyhow::Result<_>>()?;
    let probes: usize = std::env::var("SMR_BENCH_PROBES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let runs = common::bench_builds();
    let setups: Vec<String> = std::env::var("SMR_BENCH_SETUPS")
        .unwrap_or_else(|_| "loopback,workloads".into())
        .split(',')
        .map(|s| s.trim().to_string())
        .collect();
    if let Some(bad) = setups
        .iter()
        .find(|s| *s != "loopback" && *s != "workloads")
    {
        anyhow::bail!("SMR_BENCH_SETUPS: unknown setup {bad:?} (loopback, workloads)");
    }
    let third = (std::process::id() % 250) as u8 + 1;
    let header = || {
        println!(
            "{:<12} {:>8} {:>10} {:>9} {:>9} {:>9} {:>11}",
            "build", "objects", "applies/s", "p50", "p99", "RSS MiB", "backup MiB"
        )
    };
    if setups.iter().any(|s| s == "loopback") {
        println!(
            "loopback: one node on loopback (--no-workloads), 1 client, {probes} single ~200-byte configuration applies per size"
        );
        header();
        for (i, (label, smrmgr)) in runs.iter().enumerate() {
            let ip = Ipv4Addr::new(127, 95 + i as u8, third, 1);
            match loopback(label, smrmgr, ip, &sizes, probes).await {
                Ok(rows) => print_rows(label, &rows),
                Err(e) => println!("failed: {label} ({}): {e:#}", smrmgr.display()),
            }
        }
    }
    if setups.iter().any(|s| s == "workloads") {
        println!(
            "workloads: one node on an emulated VM (own dockerd, workloads on, 2 busybox replicas running), 1 client, {probes} single ~200-byte configuration applies per size"
        );
        header();
        for (label, smrmgr) in &runs {
            match workloads(label, smrmgr, &sizes, probes).await {
                Ok(Some(rows)) => print_rows(label, &rows),
                Ok(None) => break,
                Err(e) => println!("failed: {label} ({}): {e:#}", smrmgr.display()),
            }
        }
    }
    Ok(())
}

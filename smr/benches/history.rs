//! Restart time, data-dir size and memory of a node against the length of its history (issue 12):
//! a one-node cluster on loopback takes 50,000 writes that overwrite and delete a small live set
//! (history long, state small), is stopped and restarted from its data dir; then 50,000 small
//! objects that all stay (state large; applied 25 to a write, as `smrctl apply -f DIR` would),
//! stopped and restarted again.
//!
//!     cargo bench -p smr --bench history
//!     SMR_BENCH_WRITES=N        writes per phase (default 50000)
//!     SMR_BENCH_BASELINE=PATH   also run an other build's smrmgr first (e.g. main's), same run
//!     SMR_BENCH_KEEP=1          keep the data dirs (stopped nodes) and print where they are
//!
//! Per phase it prints: the writes' rate, the size of `raft/` (redb, the log's segments, the
//! snapshot) after the stop, the time from
//! `smrmgr start --data-dir` until the node answers with the pre-stop revision and a leader (and
//! the agent's CPU seconds by then), its resident memory then and just before the stop, and the
//! snapshots the agent logged. Figures only; nothing is asserted.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use agent::client::Client;
use agent::definitions::{self, Object};
use anyhow::{Context as _, bail};

#[path = "common/node.rs"]
mod node;
use node::{Node, proc_figures};

const CLIENTS: usize = 32;
const LIVE_SET: usize = 500;
/// Objects per write in the second phase.
const LIVE_BATCH: usize = 25;

fn configuration_yaml(group: &str, name: &str, n: usize) -> String {
    format!(
        "kind: configuration\nprefix: simplecontainer.io/v1\nmeta:\n  group: {group}\n  name: {name}\nspec:\n  data:\n    value: \"{n}\"\n    note: a small configuration object of the history benchmark\n"
    )
}

fn configuration(group: &str, name: &str, n: usize) -> Vec<Object> {
    definitions::parse_str("bench", &configuration_yaml(group, name, n)).expect("valid definition")
}

/// `total` writes from [`CLIENTS`] concurrent clients; `op(n)` makes write n.
async fn write_all(
    client: &Client,
    total: usize,
    op: impl Fn(usize) -> Write + Send + Sync + 'static,
) -> anyhow::Result<f64> {
    let next = Arc::new(AtomicUsize::new(0));
    let op = Arc::new(op);
    let started = Instant::now();
    let tasks = (0..CLIENTS).map(|_| {
        let (client, next, op) = (client.clone(), next.clone(), op.clone());
        tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    return anyhow::Ok(());
                }
                match op(n) {
                    Write::Apply(objects) => {
                        client.apply(&objects, false, None).await?;
                    }
                    Write::Delete(key) => {
                        client.delete(&[key]).await?;
                    }
                }
            }
        })
    });
    for result in futures::future::join_all(tasks).await {
        result??;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

enum Write {
    Apply(Vec<Object>),
    Delete(definitions::ObjectKey),
}

struct Figures {
    rate: f64,
    raft_mib: f64,
    rss_before_mib: f64,
    restart: Duration,
    restart_cpu: f64,
    rss_after_mib: f64,
    snapshots: usize,
}

/// Bytes of the files under `dir`.
fn dir_bytes(dir: &std::path::Path) -> std::io::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            dir_bytes(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

/// Stops the node, restarts it and waits until it serves `revision` with a leader.
async fn stop_and_restart(node: &Node, rate: f64) -> anyhow::Result<Figures> {
    let client = node.client()?;
    let revision = client.health().await?.revision;
    let pid = node.pid().context("no pid")?;
    let (rss_before_mib, _) = proc_figures(pid);
    node.stop()?;
    let raft_mib = dir_bytes(&node.data_dir.join("raft"))? as f64 / 1048576.0;
    let started = Instant::now();
    node.restart()?;
    let client = node.client()?;
    loop {
        if let Ok(h) = client.health().await
            && h.leader.is_some()
            && h.revision >= revision
        {
            break;
        }
        if started.elapsed() > Duration::from_secs(300) {
            bail!("the node did not come back within 300 s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let restart = started.elapsed();
    let pid = node.pid().context("no pid after restart")?;
    let (rss_after_mib, restart_cpu) = proc_figures(pid);
    let log = std::fs::read_to_string(node.data_dir.join("smr.log")).unwrap_or_default();
    let snapshots = log.lines().filter(|l| l.contains("snapshot built")).count();
    Ok(Figures {
        rate,
        raft_mib,
        rss_before_mib,
        restart,
        restart_cpu,
        rss_after_mib,
        snapshots,
    })
}

async fn scenario(
    label: &str,
    smrmgr: &Path,
    ip: Ipv4Addr,
    writes: usize,
) -> anyhow::Result<Vec<(String, Figures)>> {
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
        let mut out = Vec::new();

        // History long, state small: overwrites of LIVE_SET keys, every 10th write a delete.
        let rate = write_all(&client, writes, |n| {
            let name = format!("c{}", n % LIVE_SET);
            if n % 10 == 9 {
                Write::Delete(format!("configuration/churn/{name}").parse().expect("key"))
            } else {
                Write::Apply(configuration("churn", &name, n))
            }
        })
        .await
        .context("writing the history")?;
        out.push((
            format!("{label}: {writes} writes over {LIVE_SET} keys"),
            stop_and_restart(&node, rate).await?,
        ));

        // State large: new objects that stay, LIVE_BATCH to a write.
        let client = node.client()?;
        let rate = write_all(&client, writes / LIVE_BATCH, |n| {
            let yaml: Vec<String> = (n * LIVE_BATCH..(n + 1) * LIVE_BATCH)
                .map(|i| configuration_yaml("live", &format!("o{i}"), i))
                .collect();
            Write::Apply(definitions::parse_str("bench", &yaml.join("---\n")).expect("valid"))
        })
        .await
        .context("writing the live objects")?;
        out.push((
            format!("{label}: + {writes} live objects ({LIVE_BATCH}/write)"),
            stop_and_restart(&node, rate).await?,
        ));
        node.stop()?;
        anyhow::Ok(out)
    }
    .await;
    if result.is_err() {
        node.kill();
    }
    if std::env::var_os("SMR_BENCH_KEEP").is_some() {
        println!("{label}: data dir kept in {}", node.data_dir.display());
        let _ = dir.keep();
    }
    result
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let writes: usize = std::env::var("SMR_BENCH_WRITES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000);
    let mut runs: Vec<(String, PathBuf)> = Vec::new();
    if let Ok(baseline) = std::env::var("SMR_BENCH_BASELINE") {
        runs.push(("baseline".into(), PathBuf::from(baseline)));
    }
    runs.push((
        "this build".into(),
        PathBuf::from(env!("CARGO_BIN_EXE_smrmgr")),
    ));
    let third = (std::process::id() % 250) as u8 + 1;
    let mut rows = Vec::new();
    let mut failures = Vec::new();
    for (i, (label, smrmgr)) in runs.iter().enumerate() {
        let ip = Ipv4Addr::new(127, 90 + i as u8, third, 1);
        match scenario(label, smrmgr, ip, writes).await {
            Ok(figures) => rows.extend(figures),
            Err(e) => failures.push(format!("{label} ({}): {e:#}", smrmgr.display())),
        }
    }
    println!(
        "{:<44} {:>8} {:>10} {:>9} {:>9} {:>8} {:>9} {:>6}",
        "node history", "writes/s", "raft/ MiB", "RSS MiB", "restart", "CPU s", "RSS MiB", "snaps"
    );
    println!(
        "{:<44} {:>8} {:>10} {:>9} {:>9} {:>8} {:>9} {:>6}",
        "", "", "(stopped)", "(before)", "", "(agent)", "(after)", "logged"
    );
    for (what, f) in rows {
        println!(
            "{what:<44} {:>8.0} {:>10.1} {:>9.0} {:>8.2}s {:>8.2} {:>9.0} {:>6}",
            f.rate,
            f.raft_mib,
            f.rss_before_mib,
            f.restart.as_secs_f64(),
            f.restart_cpu,
            f.rss_after_mib,
            f.snapshots
        );
    }
    for failure in failures {
        println!("failed: {failure}");
    }
    Ok(())
}

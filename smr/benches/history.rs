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
//! Per phase it prints: the writes' rate, `raft/raft.redb` size after the stop, the time from
//! `smrmgr start --data-dir` until the node answers with the pre-stop revision and a leader (and
//! the agent's CPU seconds by then), its resident memory then and just before the stop, and the
//! snapshots the agent logged. Figures only; nothing is asserted.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use agent::client::{Client, Context};
use agent::definitions::{self, Object};
use anyhow::{Context as _, bail};

const CLIENTS: usize = 32;
const LIVE_SET: usize = 500;
/// Objects per write in the second phase.
const LIVE_BATCH: usize = 25;

struct Node {
    smrmgr: PathBuf,
    home: PathBuf,
    data_dir: PathBuf,
    ip: Ipv4Addr,
}

impl Node {
    fn smrmgr(&self) -> Command {
        let mut cmd = Command::new(&self.smrmgr);
        cmd.env("HOME", &self.home)
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("DOCKER_HOST")
            .env("SMR_LOG", "info,openraft=warn");
        cmd
    }

    fn run(&self, mut cmd: Command) -> anyhow::Result<()> {
        let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
        if !out.status.success() {
            bail!(
                "{cmd:?}: {}\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    fn create(&self) -> anyhow::Result<()> {
        let mut cmd = self.smrmgr();
        cmd.args([
            "start",
            "-a",
            "bench",
            "-d",
            "bench.example.com",
            "-n",
            "bench",
        ])
        .arg("--ip")
        .arg(self.ip.to_string())
        .arg("--data-dir")
        .arg(&self.data_dir)
        .args(["--backend", "none", "--no-workloads"])
        .arg("--metrics-addr")
        .arg(format!("{}:9213", self.ip));
        self.run(cmd)
    }

    fn restart(&self) -> anyhow::Result<()> {
        let mut cmd = self.smrmgr();
        cmd.arg("start").arg("--data-dir").arg(&self.data_dir);
        self.run(cmd)
    }

    fn stop(&self) -> anyhow::Result<()> {
        let mut cmd = self.smrmgr();
        cmd.arg("stop").arg("--data-dir").arg(&self.data_dir);
        self.run(cmd)
    }

    fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.data_dir.join("smr.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    fn client(&self) -> anyhow::Result<Client> {
        Ok(Client::from_context(&Context::load(
            &self.data_dir.join("admin.context"),
        )?)?)
    }

    fn kill(&self) {
        if let Some(pid) = self.pid() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// (resident MiB, CPU seconds) of a process, from /proc.
fn proc_figures(pid: u32) -> (f64, f64) {
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .unwrap_or(0.0)
        / 1024.0;
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    let cpu = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // Fields after the command name (which is in parentheses): utime is the 14th field.
            let rest = &s[s.rfind(')')? + 2..];
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let utime: f64 = fields.get(11)?.parse().ok()?;
            let stime: f64 = fields.get(12)?.parse().ok()?;
            Some((utime + stime) / ticks)
        })
        .unwrap_or(0.0);
    (rss, cpu)
}

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
    redb_mib: f64,
    rss_before_mib: f64,
    restart: Duration,
    restart_cpu: f64,
    rss_after_mib: f64,
    snapshots: usize,
}

/// Stops the node, restarts it and waits until it serves `revision` with a leader.
async fn stop_and_restart(node: &Node, rate: f64) -> anyhow::Result<Figures> {
    let client = node.client()?;
    let revision = client.health().await?.revision;
    let pid = node.pid().context("no pid")?;
    let (rss_before_mib, _) = proc_figures(pid);
    node.stop()?;
    let redb_mib =
        std::fs::metadata(node.data_dir.join("raft/raft.redb"))?.len() as f64 / 1048576.0;
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
        redb_mib,
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
        "node history", "writes/s", "redb MiB", "RSS MiB", "restart", "CPU s", "RSS MiB", "snaps"
    );
    println!(
        "{:<44} {:>8} {:>10} {:>9} {:>9} {:>8} {:>9} {:>6}",
        "", "", "(stopped)", "(before)", "", "(agent)", "(after)", "logged"
    );
    for (what, f) in rows {
        println!(
            "{what:<44} {:>8.0} {:>10.1} {:>9.0} {:>8.2}s {:>8.2} {:>9.0} {:>6}",
            f.rate,
            f.redb_mib,
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

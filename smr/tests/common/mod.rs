//! A cluster of real agent processes on loopback addresses, for the end-to-end tests and the
//! apply benchmark. Each node gets its own 127.x.y.z address and data directory; every process is
//! recorded by the pid in its data directory and killed by that pid when the cluster is dropped.
#![allow(dead_code)]

pub mod vms;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use agent::client::{Client, Context};
use anyhow::{Context as _, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// A cluster of `nodes` agents on the etcd store of a new one-member etcd (keys under
/// `prefix`), once they agree on a leader. Bind both, etcd first: the cluster is dropped (its
/// agents killed) before the etcd.
pub async fn on_etcd(
    nodes: usize,
    prefix: &str,
) -> anyhow::Result<(smr_tests::etcd::EtcdCluster, Cluster)> {
    let etcd = tokio::task::spawn_blocking(|| smr_tests::etcd::EtcdCluster::start(1)).await??;
    let mut cluster = Cluster::new();
    cluster.start_extra = vec![
        "--store".into(),
        etcd.url(),
        "--etcd-prefix".into(),
        prefix.into(),
    ];
    cluster.start_first()?;
    for _ in 1..nodes {
        cluster.join(0)?;
    }
    let running: Vec<usize> = (0..nodes).collect();
    cluster
        .agreed_leader(&running, Duration::from_secs(30))
        .await?;
    Ok((etcd, cluster))
}

/// The `password` of the secret `secret/app/{name}` in `state` (sealed or not).
pub fn secret_password(state: &agent::state::ClusterState, name: &str) -> String {
    let key: agent::definitions::ObjectKey = format!("secret/app/{name}").parse().unwrap();
    state
        .objects
        .get(&key)
        .expect("the secret")
        .object
        .spec
        .data()
        .unwrap()["password"]
        .clone()
}

/// The state as node `i` backs it up into `file` (`smrmgr backup`, a linearizable read).
pub fn backup(
    cluster: &Cluster,
    i: usize,
    file: &Path,
) -> anyhow::Result<agent::state::ClusterState> {
    let mut cmd = smrmgr(cluster.dir.path());
    cmd.arg("backup")
        .arg(file)
        .arg("--data-dir")
        .arg(&cluster.nodes[i].data_dir);
    run(cmd)?;
    Ok(smr_core::backup::decode(&std::fs::read(file)?)?.state)
}

/// `smrmgr ARGS --data-dir <node i>`: its output, whether it succeeded or not.
pub fn smrmgr_on(cluster: &Cluster, i: usize, args: &[&str]) -> Output {
    let mut cmd = smrmgr(cluster.dir.path());
    cmd.args(args)
        .arg("--data-dir")
        .arg(&cluster.nodes[i].data_dir);
    output(cmd)
}

/// What a command wrote: its stdout, then its stderr.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Applies the busybox object `group/name` ([`busybox`]) through `client`, again until it is
/// taken or 30 s have passed (a node may be between leaders or certificates).
pub async fn apply_busybox(client: &Client, group: &str, name: &str) -> anyhow::Result<()> {
    let objects = agent::definitions::parse_str("e", &busybox(group, name))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match client.apply(&objects, false, None).await {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() > deadline => return Err(e.into()),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

static NEXT_CLUSTER: AtomicU8 = AtomicU8::new(0);

pub struct Node {
    pub name: String,
    pub ip: Ipv4Addr,
    pub data_dir: PathBuf,
}

impl Node {
    pub fn api(&self) -> String {
        format!("{}:1443", self.ip)
    }
    pub fn context_path(&self) -> PathBuf {
        self.data_dir.join("admin.context")
    }
    pub fn pid(&self) -> Option<Pid> {
        let text = std::fs::read_to_string(self.data_dir.join("smr.pid")).ok()?;
        let pid = Pid::from_raw(text.trim().parse().ok()?);
        kill(pid, None).ok().map(|_| pid)
    }
    pub fn client(&self) -> anyhow::Result<Client> {
        Ok(Client::from_context(&Context::load(&self.context_path())?)?)
    }
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub nodes: Vec<Node>,
    /// 127.<a>.<b>.x: unique per cluster in this process and per process.
    net: (u8, u8),
    /// Extra `smrmgr start` arguments for new nodes (e.g. `--store etcd://...`).
    pub start_extra: Vec<String>,
    /// Extra environment of `smrmgr start` for new nodes (not of restarts).
    pub start_env: Vec<(String, String)>,
    /// The smrmgr binary the cluster's own commands run: this build's, or another build's in a
    /// bench that compares two (`SMR_BENCH_BASELINE`).
    pub bin: PathBuf,
}

pub fn smrmgr(home: &Path) -> Command {
    smrmgr_bin(Path::new(env!("CARGO_BIN_EXE_smrmgr")), home)
}

/// The smrmgr builds a bench compares, labelled: another build's first when
/// `SMR_BENCH_BASELINE` names its binary (e.g. main's), then this build's.
pub fn bench_builds() -> Vec<(String, PathBuf)> {
    let mut builds = Vec::new();
    if let Ok(baseline) = std::env::var("SMR_BENCH_BASELINE") {
        builds.push(("baseline".to_string(), PathBuf::from(baseline)));
    }
    builds.push((
        "this build".to_string(),
        PathBuf::from(env!("CARGO_BIN_EXE_smrmgr")),
    ));
    builds
}

/// [`smrmgr`] with another build's binary.
pub fn smrmgr_bin(bin: &Path, home: &Path) -> Command {
    let mut cmd = Command::new(bin);
    cmd.env("HOME", home)
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("DOCKER_HOST");
    cmd
}

/// The smrctl binary next to smrmgr. smrctl is its own package (issue 13), so cargo does not
/// build it for this package's tests; `cargo test --workspace` does (smrctl/tests/cli.rs).
pub fn smrctl_bin() -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_smrmgr")).with_file_name("smrctl");
    assert!(
        p.exists(),
        "{} missing: run `cargo build -p smrctl` (--release for benches) or `cargo test --workspace`",
        p.display()
    );
    p
}

pub fn smrctl(context: &Path) -> Command {
    let mut cmd = Command::new(smrctl_bin());
    cmd.arg("--context").arg(context);
    cmd
}

pub fn run(mut cmd: Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn output(mut cmd: Command) -> Output {
    cmd.output().expect("command runs")
}

/// Polls `check` until it returns Some or the deadline passes.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return Ok(value);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A one-replica busybox definition `group/name` (for the control-plane suites: never run).
pub fn busybox(group: &str, name: &str) -> String {
    format!(
        "kind: containers\nprefix: simplecontainer.io/v1\nmeta:\n  group: {group}\n  name: {name}\nspec:\n  image: busybox\n  tag: latest\n  replicas: 1\n"
    )
}

pub fn key(group: &str, name: &str) -> agent::definitions::ObjectKey {
    format!("containers/{group}/{name}").parse().expect("key")
}

/// This node's own applied state (a stale read) of `key`, if it holds it.
pub async fn stale_get(
    client: &Client,
    key: &agent::definitions::ObjectKey,
) -> Option<serde_json::Value> {
    client
        .get_json(&format!(
            "objects/{}/{}/{}?consistency=stale",
            key.kind, key.group, key.name
        ))
        .await
        .ok()
}

impl Cluster {
    /// An empty cluster description; nodes are started with [`Cluster::start_first`] and [`Cluster::join`].
    pub fn new() -> Cluster {
        let n = NEXT_CLUSTER.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        Cluster {
            dir: tempfile::tempdir().expect("tempdir"),
            nodes: Vec::new(),
            net: (100 + n, (pid % 250) as u8 + 1),
            start_extra: Vec::new(),
            start_env: Vec::new(),
            bin: PathBuf::from(env!("CARGO_BIN_EXE_smrmgr")),
        }
    }

    fn next_node(&mut self) -> Node {
        let i = self.nodes.len() as u8 + 1;
        let name = format!("smr-agent-{i}");
        let data_dir = self.dir.path().join(&name);
        Node {
            name,
            ip: Ipv4Addr::new(127, self.net.0, self.net.1, i),
            data_dir,
        }
    }

    fn start_args(&self, node: &Node) -> Command {
        let mut cmd = smrmgr_bin(&self.bin, self.dir.path());
        cmd.args([
            "start",
            "-a",
            &node.name,
            "-d",
            &format!("{}.example.com", node.name),
            "-n",
            &node.name,
        ])
        .arg("--ip")
        .arg(node.ip.to_string())
        .arg("--data-dir")
        .arg(&node.data_dir)
        // Control plane only: several agents share this host's network namespace and Docker.
        .args(["--backend", "none", "--no-workloads"])
        // Each agent on its own loopback address: the default 127.0.0.1:9213 is one port.
        .arg("--metrics-addr")
        .arg(format!("{}:9213", node.ip))
        .args(&self.start_extra)
        .envs(self.start_env.iter().map(|(k, v)| (k, v)))
        .env("SMR_LOG", "info,openraft=warn");
        cmd
    }

    pub fn start_first(&mut self) -> anyhow::Result<usize> {
        let node = self.next_node();
        run(self.start_args(&node))?;
        self.nodes.push(node);
        Ok(self.nodes.len() - 1)
    }

    pub fn token(&self, via: usize) -> anyhow::Result<String> {
        let mut cmd = smrmgr_bin(&self.bin, self.dir.path());
        cmd.args(["token", "--data-dir"])
            .arg(&self.nodes[via].data_dir);
        Ok(run(cmd)?.trim().to_string())
    }

    /// Starts a new node joining through node `via`.
    pub fn join(&mut self, via: usize) -> anyhow::Result<usize> {
        let token = self.token(via)?;
        let node = self.next_node();
        let mut cmd = self.start_args(&node);
        cmd.args(["-j", &self.nodes[via].api(), "--token", &token]);
        run(cmd)?;
        self.nodes.push(node);
        Ok(self.nodes.len() - 1)
    }

    /// Restarts a stopped node from its data dir.
    pub fn restart(&self, i: usize) -> anyhow::Result<()> {
        let mut cmd = smrmgr_bin(&self.bin, self.dir.path());
        cmd.arg("start")
            .arg("--data-dir")
            .arg(&self.nodes[i].data_dir);
        run(cmd).map(|_| ())
    }

    pub fn stop(&self, i: usize) -> anyhow::Result<()> {
        let mut cmd = smrmgr_bin(&self.bin, self.dir.path());
        cmd.args(["stop", "--data-dir"])
            .arg(&self.nodes[i].data_dir);
        run(cmd).map(|_| ())
    }

    /// SIGKILL, by the pid the node recorded; waits until it is gone.
    pub fn kill9(&self, i: usize) -> anyhow::Result<()> {
        self.kill9_all(&[i])
    }

    /// SIGKILL to the nodes `which` at once (every signal sent before waiting for any), by the
    /// pids they recorded; waits until they are gone.
    pub fn kill9_all(&self, which: &[usize]) -> anyhow::Result<()> {
        let mut pids = Vec::new();
        for &i in which {
            let Some(pid) = self.nodes[i].pid() else {
                bail!("node {i} is not running")
            };
            pids.push(pid);
        }
        for &pid in &pids {
            kill(pid, Signal::SIGKILL)?;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for pid in pids {
            while kill(pid, None).is_ok() {
                if Instant::now() > deadline {
                    bail!("pid {pid} survived SIGKILL");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }

    pub fn client(&self, i: usize) -> Client {
        self.nodes[i].client().expect("client from context")
    }

    /// The leader the `running` nodes name, if they all answer and name the same one.
    pub async fn agreed(&self, running: &[usize]) -> Option<u64> {
        let mut leader = None;
        for &i in running {
            let health = self.client(i).health().await.ok()?;
            let l = health.leader?;
            if leader.is_some_and(|x| x != l) {
                return None;
            }
            leader = Some(l);
        }
        leader
    }

    /// Waits until the `running` nodes agree on one leader.
    pub async fn agreed_leader(&self, running: &[usize], limit: Duration) -> anyhow::Result<u64> {
        eventually("the nodes to agree on a leader", limit, || {
            self.agreed(running)
        })
        .await
    }

    /// Three nodes (the others join through the first), formed: the cluster and its leader's index.
    pub async fn three() -> anyhow::Result<(Cluster, usize)> {
        let mut cluster = Cluster::new();
        cluster.start_first()?;
        cluster.join(0)?;
        cluster.join(0)?;
        let leader = cluster.wait_formed(&[0, 1, 2], 3).await?;
        let leader = cluster.index_of(leader);
        Ok((cluster, leader))
    }

    /// Waits until all `n` running nodes agree on one leader and (for 3+) have 3 voters.
    pub async fn wait_formed(&self, running: &[usize], voters: usize) -> anyhow::Result<u64> {
        eventually("the cluster to form", Duration::from_secs(60), || async {
            let leader = self.agreed(running).await?;
            let nodes = self.client(running[0]).nodes().await.ok()?;
            let count = nodes.iter().filter(|n| n.role == "voter").count();
            (count == voters).then_some(leader)
        })
        .await
    }

    /// Index of the node with Raft id `id` (ids follow join order from 1).
    pub fn index_of(&self, id: u64) -> usize {
        id as usize - 1
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &self.nodes {
            if let Some(pid) = node.pid() {
                let _ = kill(pid, Signal::SIGKILL);
            }
        }
    }
}

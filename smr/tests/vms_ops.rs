//! Day-2 operations on emulated VMs (issue 16): a real Prometheus scraping a 3-node cluster.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use agent::client::Client;
use agent::definitions;
use anyhow::Context as _;
use common::eventually;
use common::vms::{VmCluster, all_ready};

const IMAGE: &str = "smr/busybox";
const TAG: &str = "local";

fn busybox(replicas: u32) -> String {
    format!(
        "kind: containers\nprefix: simplecontainer.io/v1\nmeta:\n  group: busybox\n  name: busybox\nspec:\n  image: {IMAGE}\n  tag: {TAG}\n  replicas: {replicas}\n  entrypoint: [\"sleep\"]\n  args: [\"3600\"]\n"
    )
}

async fn apply(client: &Client, yaml: &str) -> anyhow::Result<()> {
    client
        .apply(&definitions::parse_str("test.yaml", yaml)?, false, None)
        .await?;
    Ok(())
}

/// Starts every VM's agent with its metrics on the VM's address (reachable from the host).
async fn start_with_metrics(cluster: &mut VmCluster, extra: &[&str]) -> anyhow::Result<()> {
    for i in 0..cluster.agents.len() {
        let addr = format!("{}:9213", cluster.vm(i).ip);
        let mut args = vec!["--metrics-addr", addr.as_str()];
        args.extend_from_slice(extra);
        cluster.start_agent(i, (i > 0).then_some(0), &args).await?;
    }
    Ok(())
}

/// A Prometheus server on loopback, killed by its pid when dropped (every exit path).
struct Prometheus {
    child: Child,
    url: String,
    log: PathBuf,
}

impl Prometheus {
    fn start(dir: &Path, targets: &[String]) -> anyhow::Result<Prometheus> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let config = dir.join("prometheus.yml");
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: smr\n    static_configs:\n      - targets: [{}]\n",
                targets.join(", ")
            ),
        )?;
        let log = dir.join("prometheus.log");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log)?)
            .stderr(std::fs::File::create(dir.join("prometheus.err"))?)
            .spawn()
            .context("starting prometheus (Debian package `prometheus`; tests/install-deps.sh)")?;
        Ok(Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log,
        })
    }

    /// The result vector of an instant query: (labels, value) per series.
    async fn query(&self, promql: &str) -> anyhow::Result<Vec<(serde_json::Value, f64)>> {
        let body: serde_json::Value = reqwest::Client::new()
            .get(format!(
                "{}/api/v1/query?query={}",
                self.url,
                encode(promql)
            ))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        anyhow::ensure!(body["status"] == "success", "{promql}: {body}");
        let result = body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        result
            .into_iter()
            .map(|r| {
                let value = r["value"][1]
                    .as_str()
                    .and_then(|v| v.parse::<f64>().ok())
                    .context("sample value")?;
                Ok((r["metric"].clone(), value))
            })
            .collect()
    }

    /// Polls `promql` until `check` accepts its result.
    async fn until(
        &self,
        promql: &str,
        check: impl Fn(&[(serde_json::Value, f64)]) -> bool,
    ) -> anyhow::Result<Vec<(serde_json::Value, f64)>> {
        eventually(promql, Duration::from_secs(60), || async {
            let result = self.query(promql).await.ok()?;
            check(&result).then_some(result)
        })
        .await
    }
}

/// Percent-encodes a query parameter value.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prometheus_scrapes_replica_and_raft_series_of_three_nodes() -> anyhow::Result<()> {
    let Some(mut cluster) = VmCluster::start(3)? else {
        return Ok(());
    };
    start_with_metrics(&mut cluster, &[]).await?;
    let client = cluster.client(0);
    let result = scrape(&cluster, &client).await;
    if result.is_err() {
        cluster.dump_logs();
    }
    result
}

async fn scrape(cluster: &VmCluster, client: &Client) -> anyhow::Result<()> {
    apply(client, &busybox(3)).await?;
    all_ready(client, 3, Duration::from_secs(90)).await?;

    let dir = tempfile::tempdir()?;
    let targets: Vec<String> = (0..3)
        .map(|i| format!("{}:9213", cluster.vm(i).ip))
        .collect();
    let prometheus = Prometheus::start(dir.path(), &targets)?;
    let checked = async {
        prometheus
            .until("up{job=\"smr\"}", |r| {
                r.len() == 3 && r.iter().all(|(_, v)| *v == 1.0)
            })
            .await?;
        // Raft: one leader, every node has applied entries in the same term.
        prometheus
            .until("smr_store_role{role=\"leader\"} == 1", |r| r.len() == 1)
            .await?;
        prometheus
            .until("smr_store_applied_index > 0", |r| r.len() == 3)
            .await?;
        let terms = prometheus.until("smr_store_term", |r| r.len() == 3).await?;
        anyhow::ensure!(
            terms.iter().all(|(_, t)| *t == terms[0].1 && *t >= 1.0),
            "terms differ: {terms:?}"
        );
        prometheus
            .until("smr_store_commit_index >= smr_store_applied_index", |r| {
                r.len() == 3
            })
            .await?;
        prometheus
            .until("smr_store_proposal_duration_seconds_count", |r| {
                r.iter().any(|(_, v)| *v > 0.0)
            })
            .await?;
        // Replicas: every node sees the 3 running replicas, one per node.
        let running = prometheus
            .until("max by (node) (smr_replicas{phase=\"running\"})", |r| {
                r.len() == 3 && r.iter().all(|(_, v)| *v == 1.0)
            })
            .await?;
        let mut nodes: Vec<String> = running
            .iter()
            .filter_map(|(m, _)| m["node"].as_str().map(str::to_string))
            .collect();
        nodes.sort();
        anyhow::ensure!(
            nodes == ["smr-agent-1", "smr-agent-2", "smr-agent-3"],
            "{nodes:?}"
        );
        prometheus
            .until("sum by (instance) (smr_replicas_ready)", |r| {
                r.len() == 3 && r.iter().all(|(_, v)| *v == 3.0)
            })
            .await?;
        prometheus
            .until("smr_reconcile_pass_duration_seconds_count > 0", |r| {
                r.len() == 3
            })
            .await?;
        prometheus
            .until(
                "smr_api_requests_total{route=\"/api/v1/objects\",method=\"POST\",code=\"200\"}",
                |r| !r.is_empty(),
            )
            .await?;
        anyhow::Ok(())
    }
    .await;
    if checked.is_err() {
        println!(
            "prometheus log:\n{}",
            std::fs::read_to_string(&prometheus.log).unwrap_or_default()
        );
    }
    checked?;

    // The same text on the API, with a client certificate only.
    let ctx = common::vms::api_context(cluster.vm(1))?;
    let identity = agent::pki::Identity::new(ctx.cert_pem, ctx.key_pem, ctx.ca_pem.clone())?;
    let url = format!("{}/metrics", ctx.api_url);
    let with_cert =
        agent::pki::reqwest_client(&ctx.ca_pem, Some(&identity), Duration::from_secs(10))?;
    let text = with_cert
        .get(&url)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    anyhow::ensure!(text.contains("smr_store_term "), "{text}");
    anyhow::ensure!(text.ends_with("# EOF\n"), "not OpenMetrics: {text}");
    let anonymous = agent::pki::reqwest_client(&ctx.ca_pem, None, Duration::from_secs(10))?;
    let status = anonymous.get(&url).send().await?.status();
    anyhow::ensure!(status == 401, "/metrics without a certificate: {status}");
    Ok(())
}

/// Running busybox replicas per VM, from each VM's own Docker engine.
fn running_per_vm(cluster: &VmCluster) -> anyhow::Result<Vec<usize>> {
    (0..cluster.agents.len())
        .map(|i| {
            let names = cluster.vm(i).docker_ok(&["ps", "--format", "{{.Names}}"])?;
            Ok(names
                .lines()
                .filter(|n| n.starts_with("busybox-busybox-"))
                .count())
        })
        .collect()
}

fn smrctl(cluster: &VmCluster, args: &[&str]) -> anyhow::Result<String> {
    let mut cmd = cluster.smrctl_on(0);
    cmd.args(args);
    common::run(cmd)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn drain_moves_replicas_new_before_old_and_cordon_holds_until_uncordon() -> anyhow::Result<()>
{
    let Some(mut cluster) = VmCluster::start(3)? else {
        return Ok(());
    };
    cluster.start_all(&[]).await?;
    let client = cluster.client(0);
    let result = drain(&cluster, &client).await;
    if result.is_err() {
        println!("replicas: {:#?}", client.replicas(None).await);
        cluster.dump_logs();
    }
    result
}

async fn drain(cluster: &VmCluster, client: &Client) -> anyhow::Result<()> {
    const REPLICAS: usize = 6;
    apply(client, &busybox(REPLICAS as u32)).await?;
    all_ready(client, REPLICAS, Duration::from_secs(120)).await?;
    let before = running_per_vm(cluster)?;
    anyhow::ensure!(before[1] == 2, "node 2 runs 2 replicas: {before:?}");

    // Cordon and uncordon by id: recorded and shown, nothing moves.
    let out = smrctl(cluster, &["cordon", "3"])?;
    anyhow::ensure!(out.contains("smr-agent-3: cordoned"), "{out}");
    let nodes = smrctl(cluster, &["nodes"])?;
    anyhow::ensure!(
        nodes
            .lines()
            .any(|l| l.contains("smr-agent-3") && l.contains("cordoned")),
        "{nodes}"
    );
    smrctl(cluster, &["uncordon", "smr-agent-3"])?;
    let missing = common::output({
        let mut cmd = cluster.smrctl_on(0);
        cmd.args(["drain", "no-such-node"]);
        cmd
    });
    anyhow::ensure!(missing.status.code() == Some(4), "{missing:?}");

    // Watch every engine while node 2 drains: the running replicas never drop below
    // REPLICAS (each new one is ready before the old one stops), and the API never shows fewer
    // than REPLICAS - 1 ready.
    let vms: Vec<_> = (0..3).map(|i| cluster.vm(i).clone()).collect();
    let mut cmd = cluster.smrctl_on(0);
    cmd.args(["drain", "smr-agent-2", "--timeout", "3m"]);
    let (out, floor) = common::vms::floor_while(vms, client, None, "busybox-", cmd).await?;
    println!("{out}");
    println!("drain: {floor:?}");
    anyhow::ensure!(out.contains("smr-agent-2: drained"), "{out}");
    anyhow::ensure!(floor.samples >= 5, "too few samples ({floor:?})");
    anyhow::ensure!(floor.running >= REPLICAS, "running dropped: {floor:?}");
    anyhow::ensure!(floor.ready + 1 >= REPLICAS, "ready dropped: {floor:?}");

    // The node is empty; its engine runs none.
    eventually(
        "node 2's engine to run no replica",
        Duration::from_secs(30),
        || async {
            let running = running_per_vm(cluster).ok()?;
            (running[1] == 0).then_some(())
        },
    )
    .await?;
    let replicas = all_ready(client, REPLICAS, Duration::from_secs(60)).await?;
    anyhow::ensure!(replicas.iter().all(|r| r.node != 2), "{replicas:?}");
    let node2 = client
        .nodes()
        .await?
        .into_iter()
        .find(|n| n.id == 2)
        .context("node 2")?;
    anyhow::ensure!(node2.replicas == 0, "{node2:?}");
    anyhow::ensure!(
        node2.availability == agent::scheduler::Availability::Draining,
        "{node2:?}"
    );

    // Nothing is placed there until uncordon: a scale up goes to the other nodes.
    apply(client, &busybox(9)).await?;
    let replicas = all_ready(client, 9, Duration::from_secs(120)).await?;
    anyhow::ensure!(replicas.iter().all(|r| r.node != 2), "{replicas:?}");
    smrctl(cluster, &["uncordon", "smr-agent-2"])?;
    apply(client, &busybox(12)).await?;
    let replicas = all_ready(client, 12, Duration::from_secs(120)).await?;
    let on_2 = replicas.iter().filter(|r| r.node == 2).count();
    anyhow::ensure!(
        on_2 == 3,
        "after uncordon node 2 takes the new replicas: {on_2}"
    );
    Ok(())
}

/// `id StartedAt` of each running busybox replica of VM `i`, by name.
fn containers(cluster: &VmCluster, i: usize) -> anyhow::Result<Vec<(String, String)>> {
    let vm = cluster.vm(i);
    let names = vm.docker_ok(&["ps", "--format", "{{.Names}}"])?;
    let mut out = Vec::new();
    for name in names.lines().filter(|n| n.starts_with("busybox-busybox-")) {
        let info = vm.docker_ok(&["inspect", "-f", "{{.Id}} {{.State.StartedAt}}", name])?;
        out.push((name.to_string(), info.trim().to_string()));
    }
    out.sort();
    Ok(out)
}

/// The reconcile passes node `i`'s agent made, from its `/metrics` on the API.
async fn reconcile_passes(cluster: &VmCluster, i: usize) -> Option<u64> {
    let ctx = common::vms::api_context(cluster.vm(i)).ok()?;
    let identity = agent::pki::Identity::new(ctx.cert_pem, ctx.key_pem, ctx.ca_pem.clone()).ok()?;
    let http =
        agent::pki::reqwest_client(&ctx.ca_pem, Some(&identity), Duration::from_secs(5)).ok()?;
    let text = http
        .get(format!("{}/metrics", ctx.api_url))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("smr_reconcile_pass_duration_seconds_count "))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_agent_replaced_by_a_new_build_and_restarted_keeps_its_containers() -> anyhow::Result<()>
{
    let Some(mut cluster) = VmCluster::start(2)? else {
        return Ok(());
    };
    cluster.start_all(&[]).await?;
    let client = cluster.client(0);
    let result = upgrade(&mut cluster, &client).await;
    if result.is_err() {
        cluster.dump_logs();
    }
    result
}

async fn upgrade(cluster: &mut VmCluster, client: &Client) -> anyhow::Result<()> {
    apply(client, &busybox(2)).await?;
    all_ready(client, 2, Duration::from_secs(120)).await?;
    let before = containers(cluster, 1)?;
    anyhow::ensure!(before.len() == 1, "VM 2 runs one replica: {before:?}");

    // The agent is stopped and its binary replaced (a copy of this build stands in for the new
    // one: a different file at another path); the container keeps running meanwhile.
    cluster.stop_agent(1)?;
    anyhow::ensure!(
        containers(cluster, 1)? == before,
        "stopping the agent touched containers"
    );
    let vm = cluster.vm(1).clone();
    let new_build = vm.dir.join("smrmgr-new");
    std::fs::copy(env!("CARGO_BIN_EXE_smrmgr"), &new_build)?;
    let mut cmd = vm.cmd(&new_build);
    cmd.env("HOME", &vm.dir)
        .env("SMR_LOG", "info,openraft=warn,hickory_server=warn")
        .args([
            "start",
            "--foreground",
            "--docker-host",
            &vm.docker_host,
            "--data-dir",
        ])
        .arg(common::vms::data_dir(&vm));
    let _ = std::fs::remove_file(common::vms::data_dir(&vm).join("admin.context"));
    let spawned = vm.spawn("agent-2-new-build", cmd)?;
    cluster.agents[1] = Some(spawned.pid);

    // Once the new agent has reconciled a few times, the same container runs, never restarted.
    eventually(
        "the new agent's reconciler to make 3 passes",
        Duration::from_secs(60),
        || async { reconcile_passes(cluster, 1).await.filter(|n| *n >= 3) },
    )
    .await?;
    let replicas = all_ready(client, 2, Duration::from_secs(60)).await?;
    anyhow::ensure!(
        containers(cluster, 1)? == before,
        "containers changed: {before:?}"
    );
    let on_2: Vec<_> = replicas.iter().filter(|r| r.node == 2).collect();
    anyhow::ensure!(
        on_2.len() == 1 && on_2[0].restarts == 0,
        "node 2 reports its replica: {on_2:?}"
    );
    anyhow::ensure!(
        on_2[0]
            .container_id
            .as_deref()
            .is_some_and(|id| before[0].1.starts_with(id)),
        "the reported container is the one from before: {on_2:?} vs {before:?}"
    );
    Ok(())
}

//! Gitops figures:
//! 1. sync time and agent memory for a repository of 1,000 definitions (one loopback agent,
//!    control plane only), and the time to follow a one-file change in that repository;
//! 2. time from `git push` to containers ready on 3 emulated VMs, with a webhook and with a
//!    5 s poll, beside a direct `smrctl apply` of the same definition.
//!
//!     cargo bench -p smr --bench gitops     # as root
//!
//! Prints figures; asserts nothing about speed.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../../gitops/tests/support/mod.rs"]
mod support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use agent::client::Client;
use agent::definitions;
use agent::state::GitopsState;
use common::vms::{VmCluster, data_dir};
use common::{Cluster, eventually};
use hmac::Mac;
use support::TestRepo;

const HOOK: &str = "bench-hook-secret";

fn containers(name: &str, replicas: usize, i: usize) -> String {
    format!(
        "kind: containers\nprefix: simplecontainer.io/v1\nmeta:\n  group: bench\n  name: {name}\n\
         spec:\n  image: smr/busybox\n  tag: local\n  replicas: {replicas}\n  \
         entrypoint: [\"sleep\", \"3600\"]\n  envs:\n    - INDEX={i}\n    - ROLE=bench\n  \
         ports:\n    - container: \"8080\"\n  labels:\n    app: bench\n"
    )
}

fn gitops(name: &str, url: &str, directory: &str, extra: &str) -> String {
    format!(
        "kind: gitops\nprefix: simplecontainer.io/v1\nmeta:\n  group: ops\n  name: {name}\n\
         spec:\n  repoURL: \"{url}\"\n  revision: main\n  directoryPath: {directory}\n  \
         automaticSync: true\n{extra}"
    )
}

fn memory_kib(pid: i32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

async fn wait_synced(client: &Client, name: &str, commit: &str) -> anyhow::Result<()> {
    eventually(
        &format!("{name} at {commit}"),
        Duration::from_secs(600),
        || async {
            let v = client.gitops_get("ops", name).await.ok()?;
            (v.status.synced_commit.as_deref() == Some(commit)
                && v.status.state == GitopsState::Synced)
                .then_some(())
        },
    )
    .await
}

async fn thousand_definitions() -> anyhow::Result<()> {
    const COUNT: usize = 1000;
    let mut cluster = Cluster::new();
    cluster.start_first()?;
    let client = cluster.client(0);
    let pid = cluster.nodes[0].pid().expect("agent pid").as_raw();
    let repo = TestRepo::new("thousand");
    for i in 0..COUNT {
        repo.write(
            &format!("defs/{:02}/{i:04}.yaml", i / 100),
            containers(&format!("d{i:04}"), 1, i),
        );
    }
    let commit = repo.commit("1000 definitions");
    let daemon = support::GitDaemon::start(&repo.base());
    let idle = memory_kib(pid, "VmRSS:");
    let started = Instant::now();
    client
        .apply(
            &definitions::parse_str(
                "g.yaml",
                &gitops("thousand", &daemon.url("thousand"), "defs", ""),
            )?,
            false,
            None,
        )
        .await?;
    wait_synced(&client, "thousand", &commit).await?;
    let first = started.elapsed();
    let after = memory_kib(pid, "VmRSS:");
    repo.write("defs/00/0000.yaml", containers("d0000", 2, 0));
    let next = repo.commit("one change");
    let started = Instant::now();
    client.gitops_sync("ops", "thousand").await?;
    wait_synced(&client, "thousand", &next).await?;
    let change = started.elapsed();
    let peak = memory_kib(pid, "VmHWM:");
    println!("repository of {COUNT} containers definitions (1000 files in 10 folders), 1 agent:");
    println!(
        "  first sync (fetch, parse, validate, apply): {:.2} s",
        first.as_secs_f64()
    );
    println!(
        "  one-file change, sync requested:           {:.2} s",
        change.as_secs_f64()
    );
    println!(
        "  agent RSS: {:.1} MiB idle -> {:.1} MiB after the sync, peak {:.1} MiB",
        idle as f64 / 1024.0,
        after as f64 / 1024.0,
        peak as f64 / 1024.0
    );
    Ok(())
}

/// `git daemon` on the testbed bridge address, so agents in the VMs reach it.
struct BridgeDaemon {
    child: std::process::Child,
    url: String,
}

impl Drop for BridgeDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn bridge_daemon(repo: &TestRepo, ip: std::net::Ipv4Addr) -> anyhow::Result<BridgeDaemon> {
    let port = support::free_port();
    let mut child = support::git_daemon_command()
        .args(["--export-all", "--reuseaddr"])
        .arg(format!("--listen={ip}"))
        .arg(format!("--port={port}"))
        .arg(format!("--base-path={}", repo.base().display()))
        .arg(repo.base())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect((ip, port)).is_err() {
        if Instant::now() > deadline || child.try_wait()?.is_some() {
            anyhow::bail!("git daemon did not listen on {ip}:{port}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(BridgeDaemon {
        child,
        url: format!("git://{ip}:{port}/{}.git", repo.name),
    })
}

async fn ready(client: &Client, name: &str, n: usize) -> anyhow::Result<()> {
    let key = format!("containers/bench/{name}").parse()?;
    eventually(
        &format!("{name} ready"),
        Duration::from_secs(300),
        || async {
            let r = client.replicas(Some(&key)).await.ok()?;
            (r.len() == n && r.iter().all(|r| r.ready)).then_some(())
        },
    )
    .await
}

fn sign(body: &[u8]) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(HOOK.as_bytes()).expect("key");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

fn seconds(samples: &[Duration]) -> String {
    let mut s: Vec<f64> = samples.iter().map(|d| d.as_secs_f64()).collect();
    s.sort_by(f64::total_cmp);
    format!(
        "median {:.2} s (min {:.2}, max {:.2}, n={})",
        s[s.len() / 2],
        s[0],
        s[s.len() - 1],
        s.len()
    )
}

async fn push_to_ready() -> anyhow::Result<()> {
    const ROUNDS: usize = 5;
    const REPLICAS: usize = 3;
    let Some(mut cluster) = VmCluster::start(3)? else {
        return Ok(());
    };
    cluster.start_all(&[]).await?;
    let client = cluster.client(0);
    let repo = TestRepo::new("live");
    repo.write("hook/.keep", "");
    repo.write("poll/.keep", "");
    repo.commit("empty");
    let daemon = bridge_daemon(&repo, cluster.testbed.bridge_ip())?;
    let setup = format!(
        "kind: secret\nprefix: simplecontainer.io/v1\nmeta:\n  group: ops\n  name: hook\n\
         spec:\n  data:\n    webhook: {HOOK}\n---\n{}---\n{}",
        gitops(
            "hooked",
            &daemon.url,
            "hook",
            "  poolingInterval: 1h\n  webhookSecretRef:\n    group: ops\n    name: hook\n"
        ),
        gitops("polled", &daemon.url, "poll", "  poolingInterval: 5s\n"),
    );
    client
        .apply(&definitions::parse_str("setup.yaml", &setup)?, false, None)
        .await?;
    // The image is in every VM; warm each daemon once so the first sample is not an outlier.
    let ca = std::fs::read(data_dir(cluster.vm(0)).join("pki/ca.crt"))?;
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca)?)
        .build()?;
    let hook_url = format!(
        "https://{}:1443/api/v1/gitops/ops/hooked/webhook",
        cluster.vm(0).ip
    );
    let mut direct = Vec::new();
    let mut hooked = Vec::new();
    let mut polled = Vec::new();
    for round in 0..ROUNDS {
        // Direct apply of the same shape, for comparison.
        let name = format!("a{round}");
        let started = Instant::now();
        client
            .apply(
                &definitions::parse_str("a.yaml", &containers(&name, REPLICAS, round))?,
                false,
                None,
            )
            .await?;
        ready(&client, &name, REPLICAS).await?;
        direct.push(started.elapsed());

        let name = format!("h{round}");
        repo.write(
            &format!("hook/{name}.yaml"),
            containers(&name, REPLICAS, round),
        );
        let commit = repo.commit(&name);
        let started = Instant::now();
        let body = serde_json::to_vec(&serde_json::json!({
            "ref": "refs/heads/main", "after": commit,
        }))?;
        let response = http
            .post(&hook_url)
            .header("x-github-event", "push")
            .header("x-hub-signature-256", sign(&body))
            .body(body)
            .send()
            .await?;
        anyhow::ensure!(
            response.status().as_u16() == 202,
            "webhook: {}",
            response.status()
        );
        ready(&client, &name, REPLICAS).await?;
        hooked.push(started.elapsed());

        let name = format!("p{round}");
        repo.write(
            &format!("poll/{name}.yaml"),
            containers(&name, REPLICAS, round),
        );
        repo.commit(&name);
        let started = Instant::now();
        ready(&client, &name, REPLICAS).await?;
        polled.push(started.elapsed());
    }
    println!("3 emulated VMs; a new containers definition with {REPLICAS} replicas per push:");
    println!("  smrctl apply -> ready (reference): {}", seconds(&direct));
    println!("  git push + webhook -> ready:       {}", seconds(&hooked));
    println!("  git push, 5 s poll -> ready:       {}", seconds(&polled));
    Ok(())
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    thousand_definitions().await?;
    push_to_ready().await?;
    Ok(())
}

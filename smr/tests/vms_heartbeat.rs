//! Issue 14 on emulated VMs (network namespaces, one dockerd each): liveness is out of the log.
//! Nodes heartbeat to the leader's memory; the log carries replica status changes only, so a
//! cluster where nothing changes commits nothing however many heartbeats go by.

mod common;

use std::time::{Duration, Instant};

use agent::client::Client;
use agent::definitions;
use anyhow::Context as _;
use common::vms::{VmCluster, all_ready, key};
use smr_tests::etcd::EtcdCluster;

const IMAGE: &str = "smr/busybox";
const TAG: &str = "local";

/// Heartbeats the leader must receive while the commit index stands still: 5 periods of 3 nodes.
const WINDOW_BEATS: u64 = 15;

fn busybox(replicas: u32) -> String {
    format!(
        "kind: containers\nprefix: simplecontainer.io/v1\nmeta:\n  group: busybox\n  name: busybox\nspec:\n  image: {IMAGE}\n  tag: {TAG}\n  replicas: {replicas}\n  entrypoint: [\"sleep\"]\n  args: [\"3600\"]\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_steady_state_cluster_adds_no_log_entries_from_heartbeats() -> anyhow::Result<()> {
    let Some(mut cluster) = VmCluster::start(3)? else {
        return Ok(());
    };
    // A 5 s node timeout: the leader asks for a heartbeat every second.
    cluster.start_all(&["--node-timeout", "5s"]).await?;
    let client = cluster.client(0);
    let result = steady(&cluster, &client).await;
    if result.is_err() {
        cluster.dump_logs();
    }
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_the_state_in_etcd_heartbeats_add_nothing_and_a_silent_node_loses_its_replicas()
-> anyhow::Result<()> {
    let Some(mut cluster) = VmCluster::start(3)? else {
        return Ok(());
    };
    if !smr_tests::etcd::available() {
        println!("skipped: no etcd binary");
        return Ok(());
    }
    let ip = cluster.testbed.bridge_ip();
    let etcd = tokio::task::spawn_blocking(move || EtcdCluster::start_on(1, ip)).await??;
    let url = etcd.url();
    let extra = [
        "--node-timeout",
        "5s",
        "--store",
        url.as_str(),
        "--etcd-prefix",
        "/smr-heartbeat/",
    ];
    let result = match cluster.start_all(&extra).await {
        Ok(()) => {
            let client = cluster.client(0);
            match steady(&cluster, &client).await {
                Ok(()) => silent_node(&mut cluster, &client).await,
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    };
    if result.is_err() {
        cluster.dump_logs();
    }
    result
}

/// The agent of a VM that does not lead stops: its replica runs elsewhere after the node
/// timeout; when it is back, no duplicate remains.
async fn silent_node(cluster: &mut VmCluster, client: &Client) -> anyhow::Result<()> {
    let leader = client.health().await?.leader.context("a leader")?;
    let silent = (1..=3u64)
        .find(|id| *id != leader && *id != 1)
        .expect("a node");
    let i = silent as usize - 1;
    let lost: Vec<String> = all_ready(client, 3, Duration::from_secs(10))
        .await?
        .into_iter()
        .filter(|r| r.node == silent)
        .map(|r| r.name)
        .collect();
    anyhow::ensure!(!lost.is_empty(), "node {silent} runs a replica");
    cluster.stop_agent(i)?;
    let moved = common::eventually(
        "the silent node's replica to run elsewhere",
        Duration::from_secs(60),
        || async {
            let replicas = client.replicas(Some(&key())).await.ok()?;
            (replicas.len() == 3 && replicas.iter().all(|r| r.ready && r.node != silent))
                .then_some(replicas)
        },
    )
    .await?;
    for name in &lost {
        assert!(moved.iter().any(|r| &r.name == name), "{name} rescheduled");
    }
    cluster.restart_agent(i).await?;
    common::eventually(
        "no duplicate once the node is back",
        Duration::from_secs(60),
        || async {
            let mut names = Vec::new();
            for vm in 0..3 {
                let out = cluster
                    .vm(vm)
                    .docker_ok(&["ps", "--format", "{{.Names}}"])
                    .ok()?;
                names.extend(
                    out.lines()
                        .filter(|n| n.starts_with("busybox-busybox-"))
                        .map(str::to_string),
                );
            }
            names.sort();
            (names.len() == 3 && names.windows(2).all(|w| w[0] != w[1])).then_some(())
        },
    )
    .await?;
    Ok(())
}

async fn steady(cluster: &VmCluster, client: &Client) -> anyhow::Result<()> {
    client
        .apply(&definitions::parse_str("t.yaml", &busybox(3))?, false, None)
        .await?;
    let replicas = all_ready(client, 3, Duration::from_secs(120)).await?;
    let nodes: std::collections::BTreeSet<u64> = replicas.iter().map(|r| r.node).collect();
    anyhow::ensure!(nodes.len() == 3, "one replica per VM: {replicas:?}");
    let leader = client.health().await?.leader.context("a leader")?;
    let l = leader as usize - 1;

    // Settled: the last writes of the start (reports of ready replicas) are committed once the
    // index holds still across one round of heartbeats. Without this change it never does: every
    // node proposes its report every 3 s.
    let deadline = Instant::now() + Duration::from_secs(60);
    let index = loop {
        let (index, beats) = (commit_index(cluster, l).await?, received(cluster, l).await?);
        wait_for_beats(cluster, l, beats + 3, deadline).await?;
        if commit_index(cluster, l).await? == index {
            break index;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the commit index never held still for one round of heartbeats"
        );
    };

    // The measured window: 15 heartbeats reach the leader, every node sends some, and the
    // commit index does not move.
    let sent_before = sent_by_all(cluster).await?;
    let beats = received(cluster, l).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    wait_for_beats(cluster, l, beats + WINDOW_BEATS, deadline).await?;
    let after = commit_index(cluster, l).await?;
    let sent_after = sent_by_all(cluster).await?;
    assert_eq!(
        client.health().await?.leader,
        Some(leader),
        "the leader did not change"
    );
    assert_eq!(
        after, index,
        "the commit index moved while nothing changed ({WINDOW_BEATS} heartbeats)"
    );
    for (i, (before, after)) in sent_before.iter().zip(&sent_after).enumerate() {
        assert!(after > before, "node {} sent heartbeats", i + 1);
    }
    // The replicas are still reported running and ready: nothing was declared dead.
    all_ready(client, 3, Duration::from_secs(5)).await?;
    Ok(())
}

async fn wait_for_beats(
    cluster: &VmCluster,
    i: usize,
    target: u64,
    deadline: Instant,
) -> anyhow::Result<()> {
    loop {
        if received(cluster, i).await? >= target {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the leader did not receive {target} heartbeats in time"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn commit_index(cluster: &VmCluster, i: usize) -> anyhow::Result<u64> {
    series(cluster, i, "smr_store_commit_index ")
        .await?
        .context("smr_store_commit_index")
}

async fn received(cluster: &VmCluster, i: usize) -> anyhow::Result<u64> {
    Ok(
        series(cluster, i, "smr_heartbeats_total{event=\"received\"} ")
            .await?
            .unwrap_or(0),
    )
}

async fn sent_by_all(cluster: &VmCluster) -> anyhow::Result<Vec<u64>> {
    let mut sent = Vec::new();
    for i in 0..cluster.agents.len() {
        let n = series(cluster, i, "smr_heartbeats_total{event=\"sent\"} ").await?;
        sent.push(n.unwrap_or(0));
    }
    Ok(sent)
}

/// The value of one series in node `i`'s `/metrics` on the API, if present.
async fn series(cluster: &VmCluster, i: usize, prefix: &str) -> anyhow::Result<Option<u64>> {
    let ctx = common::vms::api_context(cluster.vm(i))?;
    let identity = agent::pki::Identity::new(ctx.cert_pem, ctx.key_pem, ctx.ca_pem.clone())?;
    let http = agent::pki::reqwest_client(&ctx.ca_pem, Some(&identity), Duration::from_secs(5))?;
    let text = http
        .get(format!("{}/metrics", ctx.api_url))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix(prefix))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64))
}

/// A rolling upgrade: while a node of the version before delta reports runs (it would stop on
/// an `Op::Reports` log entry), an upgraded node reports in full, as that version does; once
/// every node is upgraded it batches delta reports.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reports_go_in_full_while_a_node_of_the_version_before_runs() -> anyhow::Result<()> {
    let Some(mut cluster) = VmCluster::start(2)? else {
        return Ok(());
    };
    let legacy = vec![(
        agent::node::reports::TEST_LEGACY_ENV.to_string(),
        "1".to_string(),
    )];
    cluster.env.insert(1, legacy);
    cluster.start_all(&[]).await?;
    let client = cluster.client(0);
    let result = rolling(&mut cluster, &client).await;
    if result.is_err() {
        cluster.dump_logs();
    }
    result
}

async fn rolling(cluster: &mut VmCluster, client: &Client) -> anyhow::Result<()> {
    const BATCHES: &str = "smr_report_batch_reports_count ";
    // VM 1's agent restarts (as after its upgrade) while VM 2 plays the older version.
    cluster.stop_agent(0)?;
    cluster.restart_agent(0).await?;
    client
        .apply(&definitions::parse_str("b.yaml", &busybox(4))?, false, None)
        .await?;
    let ready = all_ready(client, 4, Duration::from_secs(120)).await?;
    anyhow::ensure!(
        ready.iter().any(|r| r.node == 1) && ready.iter().any(|r| r.node == 2),
        "both nodes run replicas: {ready:?}"
    );
    let batched = series(cluster, 0, BATCHES).await?;
    anyhow::ensure!(
        batched == Some(0),
        "node 1 batched delta reports while node 2 could not read them: {batched:?}"
    );

    // VM 2 upgraded too, then VM 1 restarts: it now batches.
    cluster.env.remove(&1);
    cluster.stop_agent(1)?;
    cluster.restart_agent(1).await?;
    cluster.stop_agent(0)?;
    cluster.restart_agent(0).await?;
    common::eventually(
        "node 1 batching reports",
        Duration::from_secs(60),
        || async {
            let n = series(cluster, 0, BATCHES).await.ok()??;
            (n > 0).then_some(())
        },
    )
    .await?;
    all_ready(client, 4, Duration::from_secs(60)).await?;
    Ok(())
}

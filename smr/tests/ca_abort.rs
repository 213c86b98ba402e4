//! Day-2 CA operations on real agents on loopback (issue 16): a rotation is observed (metrics,
//! `smrmgr ca status` naming the node it waits for) and aborted back to the current CA with
//! `smrmgr ca abort`, on the embedded Raft store and on etcd; a node that never answers blocks a
//! rotation until it is removed.

mod common;

use std::time::Duration;

use agent::client::{Client, Context};
use anyhow::{Context as _, bail, ensure};
use common::{Cluster, apply_busybox, eventually, smrmgr_on, text};
use nix::sys::signal::{Signal, kill};

/// The plain-HTTP metrics of node `i`.
async fn metrics(cluster: &Cluster, i: usize) -> Option<String> {
    let url = format!("http://{}:9213/metrics", cluster.nodes[i].ip);
    reqwest::get(url).await.ok()?.text().await.ok()
}

/// The fingerprints of node `i`'s `pki/ca.crt` (the CAs it trusts).
fn trusted(cluster: &Cluster, i: usize) -> Vec<String> {
    std::fs::read_to_string(cluster.nodes[i].data_dir.join("pki/ca.crt"))
        .ok()
        .and_then(|pem| agent::pki::pem_fingerprints(&pem).ok())
        .unwrap_or_default()
}

/// The rotation started with the last node paused (SIGSTOP) is observed, then aborted; the last
/// node is resumed only after the abort, so the abort waits for it and names it. Afterwards
/// every node trusts and presents only the current CA, a client of before the rotation works on
/// every node, and a new rotation runs to its end.
async fn abort_scenario(cluster: &Cluster) -> anyhow::Result<()> {
    let n = cluster.nodes.len();
    let all: Vec<usize> = (0..n).collect();
    let last = n - 1;
    let last_name = cluster.nodes[last].name.clone();
    let old = cluster.client(0).ca_status().await?.fingerprint;
    // What a client of the current CA holds: node 0's admin context of before.
    let before = Context::load(&cluster.nodes[0].context_path())?;

    let paused = cluster.nodes[last].pid().context("the last node runs")?;
    kill(paused, Signal::SIGSTOP)?;
    let result = async {
        let out = smrmgr_on(cluster, 0, &["ca", "rotate", "--timeout", "6"]);
        let said = text(&out);
        ensure!(!out.status.success(), "{said}");
        ensure!(
            said.contains(&format!("nodes done: {}/{n}", n - 1))
                && said.contains(&format!("waiting for {last_name} (id {n}, unreachable)"))
                && said.contains("smrctl remove-node ID"),
            "{said}"
        );
        let status = cluster.client(0).ca_status().await?;
        let new = status.next.clone().context("a rotation runs")?;
        ensure!(status.waiting == vec![n as u64], "{status:?}");
        let out = smrmgr_on(cluster, 0, &["ca", "status"]);
        ensure!(
            text(&out).contains(&format!("waiting   for {last_name} (id {n}, unreachable)")),
            "{}",
            text(&out)
        );

        // The leader shows the rotation's progress; every node shows it runs.
        let leader = cluster
            .client(0)
            .health()
            .await?
            .leader
            .context("a leader")?;
        let leader = cluster.index_of(leader);
        let series = eventually(
            "the rotation in the leader's metrics",
            Duration::from_secs(10),
            || async {
                let text = metrics(cluster, leader).await?;
                (text.contains(&format!("smr_ca_rotation_nodes_done {}\n", n - 1))
                    && text.contains(&format!("smr_ca_rotation_nodes {n}\n")))
                .then_some(text)
            },
        )
        .await?;
        for line in [
            "smr_ca_rotation_in_progress 1\n",
            "smr_ca_rotation_aborting 0\n",
        ] {
            ensure!(series.contains(line), "{line:?} in {series}");
        }
        let other = (0..last)
            .find(|i| *i != leader)
            .context("a follower runs")?;
        let series = metrics(cluster, other).await.context("metrics")?;
        ensure!(
            series.contains("smr_ca_rotation_in_progress 1\n")
                && !series.contains("smr_ca_rotation_nodes_done"),
            "{series}"
        );

        // The abort: the running nodes renew from the current CA again; the paused one (still
        // on the current CA, but silent) holds the end, and is named.
        let out = smrmgr_on(cluster, 0, &["ca", "abort", "--timeout", "6"]);
        let said = text(&out);
        ensure!(!out.status.success(), "{said}");
        ensure!(
            said.contains(&format!("nodes back: {}/{n}", n - 1))
                && said.contains(&format!("waiting for {last_name} (id {n}, unreachable)")),
            "{said}"
        );
        let status = cluster.client(0).ca_status().await?;
        ensure!(
            status.aborted_ms.is_some()
                && status.next.as_deref() == Some(new.as_str())
                && status.waiting == vec![n as u64],
            "{status:?}"
        );
        for node in status.nodes.iter().filter(|s| s.id != n as u64) {
            ensure!(node.cert_ca.as_deref() == Some(old.as_str()), "{status:?}");
        }
        eventually(
            "the abort in the leader's metrics",
            Duration::from_secs(10),
            || async {
                metrics(cluster, leader)
                    .await?
                    .contains("smr_ca_rotation_aborting 1\n")
                    .then_some(())
            },
        )
        .await?;
        // A rotation cannot start while the abort runs.
        let out = smrmgr_on(cluster, 0, &["ca", "rotate", "--timeout", "5"]);
        ensure!(
            !out.status.success() && text(&out).contains("is being aborted"),
            "{}",
            text(&out)
        );
        anyhow::Ok(new)
    }
    .await;
    kill(paused, Signal::SIGCONT)?;
    let new = result?;

    eventually("the abort to end", Duration::from_secs(30), || async {
        let status = cluster.client(0).ca_status().await.ok()?;
        (status.next.is_none() && status.fingerprint == old).then_some(())
    })
    .await?;
    let status = cluster.client(0).ca_status().await?;
    ensure!(
        status.previous.is_none() && (status.done, status.total) == (n, n),
        "{status:?}"
    );
    for i in &all {
        eventually(
            &format!("node {i} to trust only the current CA"),
            Duration::from_secs(30),
            || {
                let ok = trusted(cluster, *i) == vec![old.clone()];
                async move { ok.then_some(()) }
            },
        )
        .await?;
        // The client of before the rotation works on every node; so does the node's own.
        let mut ctx = before.clone();
        ctx.api_url = format!("https://{}", cluster.nodes[*i].api());
        apply_busybox(
            &Client::from_context(&ctx)?,
            "aborted",
            &format!("before{i}"),
        )
        .await?;
        apply_busybox(&cluster.client(*i), "aborted", &format!("own{i}")).await?;
    }
    ensure!(!trusted(cluster, 0).contains(&new));
    // The first node's CA key file is the current CA's again: kept.
    let ca_key = cluster.nodes[0].data_dir.join("pki/ca.key");
    ensure!(ca_key.exists(), "{} was deleted", ca_key.display());
    let out = smrmgr_on(cluster, 0, &["ca", "abort"]);
    ensure!(
        !out.status.success() && text(&out).contains("no CA rotation is under way"),
        "{}",
        text(&out)
    );
    for i in &all {
        let series = metrics(cluster, *i).await.context("metrics")?;
        ensure!(
            series.contains("smr_ca_rotation_in_progress 0\n"),
            "{series}"
        );
    }

    // Nothing is left of the aborted rotation: a new one runs to its end.
    let out = smrmgr_on(cluster, 1, &["ca", "rotate", "--timeout", "60"]);
    ensure!(
        out.status.success() && text(&out).contains(&format!("done: {n}/{n} nodes")),
        "{}",
        text(&out)
    );
    let status = cluster.client(0).ca_status().await?;
    ensure!(
        status.fingerprint != old && status.fingerprint != new,
        "{status:?}"
    );
    // The first node's CA key file belonged to the CA rotated out: deleted.
    eventually(
        "the retired CA key file to go",
        Duration::from_secs(10),
        || {
            let gone = !ca_key.exists();
            async move { gone.then_some(()) }
        },
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rotation_is_observed_and_aborted_back_to_the_current_ca() -> anyhow::Result<()> {
    let mut cluster = Cluster::new();
    cluster.start_first()?;
    cluster.join(0)?;
    cluster.join(0)?;
    cluster.wait_formed(&[0, 1, 2], 3).await?;
    abort_scenario(&cluster).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rotation_is_aborted_on_the_etcd_store() -> anyhow::Result<()> {
    let (_etcd, cluster) = common::on_etcd(3, "/smr-abort/").await?;
    abort_scenario(&cluster).await
}

/// A node that will never answer (killed) holds a rotation: `ca status` names it; once it is
/// removed from the cluster the rotation ends by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rotation_waiting_for_a_lost_node_ends_once_it_is_removed() -> anyhow::Result<()> {
    let mut cluster = Cluster::new();
    cluster.start_first()?;
    cluster.join(0)?;
    cluster.join(0)?;
    cluster.wait_formed(&[0, 1, 2], 3).await?;
    let old = cluster.client(0).ca_status().await?.fingerprint;
    cluster.kill9(2)?;

    let out = smrmgr_on(&cluster, 0, &["ca", "rotate", "--timeout", "5"]);
    let said = text(&out);
    ensure!(
        !out.status.success()
            && said.contains("nodes done: 2/3")
            && said.contains("waiting for smr-agent-3 (id 3, unreachable)"),
        "{said}"
    );
    let status = cluster.client(1).ca_status().await?;
    ensure!(status.waiting == vec![3], "{status:?}");
    let new = status.next.clone().context("a rotation runs")?;

    // What `smrctl remove-node 3` asks.
    cluster.client(1).remove_node(3).await?;
    let status = eventually("the rotation to end", Duration::from_secs(30), || async {
        let status = cluster.client(0).ca_status().await.ok()?;
        status.next.is_none().then_some(status)
    })
    .await?;
    ensure!(
        status.fingerprint == new
            && status.previous.as_deref() == Some(old.as_str())
            && (status.done, status.total) == (2, 2)
            && status.waiting.is_empty(),
        "{status:?}"
    );
    for i in 0..2 {
        let mut last = Vec::new();
        let settled = eventually(
            &format!("node {i} to trust only the new CA"),
            Duration::from_secs(30),
            || {
                last = trusted(&cluster, i);
                let ok = last == vec![new.clone()];
                async move { ok.then_some(()) }
            },
        )
        .await;
        if settled.is_err() {
            bail!("node {i} trusts {last:?}");
        }
        apply_busybox(&cluster.client(i), "removed", &format!("via{i}")).await?;
    }
    Ok(())
}

//! Issue 14: the heartbeat route of real agents on loopback. Only the leader takes heartbeats,
//! only from node certificates, and a node heartbeats for itself only.

mod common;

use std::time::Duration;

use agent::pki::Identity;
use common::Cluster;

/// An HTTPS client presenting the certificate `name` (`node` or `admin`) of node `i`.
fn client_as(cluster: &Cluster, i: usize, name: &str) -> anyhow::Result<reqwest::Client> {
    let pki = cluster.nodes[i].data_dir.join("pki");
    let read = |f: &str| std::fs::read_to_string(pki.join(f));
    let ca = read("ca.crt")?;
    let identity = Identity::new(
        read(&format!("{name}.crt"))?,
        read(&format!("{name}.key"))?,
        ca.clone(),
    )?;
    Ok(agent::pki::reqwest_client(
        &ca,
        Some(&identity),
        Duration::from_secs(5),
    )?)
}

/// POSTs a heartbeat for node `id` to node `to`: the HTTP status and the body.
async fn beat(
    cluster: &Cluster,
    http: &reqwest::Client,
    to: usize,
    id: u64,
) -> anyhow::Result<(u16, serde_json::Value)> {
    let url = format!(
        "https://{}/api/v1/internal/heartbeat",
        cluster.nodes[to].api()
    );
    let answer = http
        .post(url)
        .json(&serde_json::json!({ "node": id }))
        .send()
        .await?;
    Ok((answer.status().as_u16(), answer.json().await?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_the_leader_takes_heartbeats_and_only_from_the_node_itself() -> anyhow::Result<()> {
    let mut cluster = Cluster::new();
    cluster.start_first()?;
    cluster.join(0)?;
    let leader = cluster.wait_formed(&[0, 1], 1).await?;
    let l = cluster.index_of(leader);
    let f = 1 - l;
    let follower_id = f as u64 + 1;
    let as_follower = client_as(&cluster, f, "node")?;

    // The follower's own heartbeat: recorded, and the leader asks for one every 3 s (a fifth of
    // the default 15 s node timeout).
    let (status, body) = beat(&cluster, &as_follower, l, follower_id).await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["period_ms"], 3000, "{body}");

    // For another node: refused, naming why.
    let (status, body) = beat(&cluster, &as_follower, l, leader).await?;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("cannot heartbeat for node")),
        "{body}"
    );
    // For a node that does not exist.
    let (status, body) = beat(&cluster, &as_follower, l, 99).await?;
    assert_eq!(status, 404, "{body}");

    // An admin certificate is not a node.
    let as_admin = client_as(&cluster, f, "admin")?;
    let (status, body) = beat(&cluster, &as_admin, l, follower_id).await?;
    assert_eq!(status, 403, "{body}");

    // A follower does not take heartbeats: they go to the leader.
    let as_leader = client_as(&cluster, l, "node")?;
    let (status, body) = beat(&cluster, &as_leader, f, leader).await?;
    assert_eq!(status, 503, "{body}");
    Ok(())
}

//! Issue 2 end to end: a cluster of real agent processes on loopback, mTLS on.

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent::client::{Client, ClientError};
use agent::definitions;
use agent::pki::{self, Identity};
use common::{Cluster, busybox, eventually, key, output, smrctl, smrmgr, stale_get};

/// Applies one object with a fixed op_id through the first node that accepts it.
async fn apply_via_any(
    clients: &[Client],
    start: usize,
    yaml: &str,
    op_id: &str,
) -> anyhow::Result<()> {
    let objects = definitions::parse_str("stream", yaml)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut i = start;
    loop {
        match clients[i % clients.len()]
            .apply(&objects, false, Some(op_id.to_string()))
            .await
        {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() > deadline => return Err(e.into()),
            Err(_) => i += 1,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_replicate_and_survive_leader_kill() -> anyhow::Result<()> {
    let mut cluster = Cluster::new();
    cluster.start_first()?;
    cluster.join(0)?;
    cluster.join(0)?;
    let leader = cluster.wait_formed(&[0, 1, 2], 3).await?;

    // A write through any node is visible on every node.
    for i in 0..3 {
        let objects = definitions::parse_str("w", &busybox("written", &format!("via{i}")))?;
        cluster.client(i).apply(&objects, false, None).await?;
    }
    for i in 0..3 {
        for j in 0..3 {
            let k = key("written", &format!("via{i}"));
            let client = cluster.client(j);
            eventually(&format!("{k} on node {j}"), Duration::from_secs(10), || {
                stale_get(&client, &k)
            })
            .await?;
        }
    }

    // A stream of applies; the leader is killed with SIGKILL in the middle of it.
    let clients: Arc<Vec<Client>> = Arc::new((0..3).map(|i| cluster.client(i)).collect());
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    const WRITES: usize = 200;
    let writer = {
        let (clients, acked) = (clients.clone(), acked.clone());
        tokio::spawn(async move {
            for n in 0..WRITES {
                let name = format!("s{n}");
                apply_via_any(
                    &clients,
                    n,
                    &busybox("stream", &name),
                    &format!("stream-op-{n}"),
                )
                .await?;
                acked.lock().expect("lock").push(name);
            }
            anyhow::Ok(())
        })
    };
    eventually(
        "50 acknowledged writes",
        Duration::from_secs(60),
        || async { (acked.lock().expect("lock").len() >= 50).then_some(()) },
    )
    .await?;
    let killed = cluster.index_of(leader);
    cluster.kill9(killed)?;
    writer.await??;
    let survivors: Vec<usize> = (0..3).filter(|&i| i != killed).collect();
    let new_leader = cluster.wait_formed(&survivors, 3).await?;
    assert_ne!(new_leader, leader, "a new leader was elected");

    cluster.restart(killed)?;
    cluster.wait_formed(&[0, 1, 2], 3).await?;
    let acked: BTreeSet<String> = acked.lock().expect("lock").iter().cloned().collect();
    assert_eq!(acked.len(), WRITES);
    for j in 0..3 {
        let client = cluster.client(j);
        let all = eventually(
            &format!("all writes on node {j}"),
            Duration::from_secs(30),
            || async {
                let list = client
                    .get_json("objects/containers?consistency=stale")
                    .await
                    .ok()?;
                let list = list.as_array()?.clone();
                let stream: Vec<_> = list
                    .iter()
                    .filter(|o| o["object"]["meta"]["group"] == "stream")
                    .cloned()
                    .collect();
                (stream.len() >= acked.len()).then_some(stream)
            },
        )
        .await?;
        let names: BTreeSet<String> = all
            .iter()
            .filter_map(|o| o["object"]["meta"]["name"].as_str().map(str::to_string))
            .collect();
        assert_eq!(
            names, acked,
            "node {j} holds exactly the acknowledged writes"
        );
        assert_eq!(all.len(), acked.len(), "no object twice on node {j}");
        for o in &all {
            assert_eq!(o["generation"], 1, "each write applied once: {o}");
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restart_of_all_nodes_keeps_state() -> anyhow::Result<()> {
    let mut cluster = Cluster::new();
    cluster.start_first()?;
    cluster.join(0)?;
    cluster.join(1)?;
    cluster.wait_formed(&[0, 1, 2], 3).await?;
    let mut yaml = String::new();
    for n in 0..20 {
        yaml.push_str(&busybox("keep", &format!("k{n}")));
        yaml.push_str("---\n");
    }
    cluster.client(1).apply_yaml(&yaml, false).await?;
    for i in 0..3 {
        cluster.stop(i)?;
    }
    for i in 0..3 {
        assert!(cluster.nodes[i].pid().is_none(), "node {i} stopped");
    }
    // A restart that names another backend is refused (exit 2, a conflict with the settings the
    // node was started with), not silently ignored.
    let mut cmd = smrmgr(cluster.dir.path());
    cmd.args(["start", "--backend", "vxlan", "--data-dir"])
        .arg(&cluster.nodes[0].data_dir);
    let out = output(cmd);
    assert_eq!(
        out.status.code(),
        Some(2),
        "restart with another backend: {out:?}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--backend vxlan conflicts with this node's none"),
        "{stderr}"
    );
    for i in 0..3 {
        cluster.restart(i)?;
    }
    cluster.wait_formed(&[0, 1, 2], 3).await?;
    for i in 0..3 {
        let list = cluster
            .client(i)
            .list(Some(definitions::Kind::Containers))
            .await?;
        assert_eq!(
            list.iter()
                .filter(|o| o.object.meta.group == "keep")
                .count(),
            20,
            "node {i} after restart"
        );
    }
    // Still writable, and node ids were kept.
    cluster
        .client(2)
        .apply_yaml(&busybox("keep", "after"), false)
        .await?;
    let nodes = cluster.client(0).nodes().await?;
    let ids: Vec<(u64, String)> = nodes.iter().map(|n| (n.id, n.name.clone())).collect();
    assert_eq!(
        ids,
        vec![
            (1, "smr-agent-1".into()),
            (2, "smr-agent-2".into()),
            (3, "smr-agent-3".into())
        ]
    );
    Ok(())
}

/// Issue 14: a node appends to its log's in-memory tail and its writer thread commits behind
/// (group commit across appends), telling Raft an entry is on disk only after that commit. Every node is killed with
/// SIGKILL at once while 16 clients write: every write acknowledged before the kill must be there
/// after the restart (a kill loses what redb did not commit durably).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_every_node_killed_at_once() -> anyhow::Result<()> {
    let (cluster, leader) = Cluster::three().await?;

    let acked = Arc::new(Mutex::new(BTreeSet::<String>::new()));
    let writers: Vec<_> = (0..16)
        .map(|w| {
            let (client, acked) = (cluster.client(leader), acked.clone());
            tokio::spawn(async move {
                for n in 0.. {
                    let name = format!("w{w}-{n}");
                    let yaml = format!(
                        "kind: configuration\nprefix: simplecontainer.io/v1\nmeta:\n  group: acked\n  name: {name}\nspec:\n  data:\n    n: \"{n}\"\n"
                    );
                    let objects = definitions::parse_str("acked", &yaml).expect("valid");
                    // Writes fail once the nodes are gone: the writer stops.
                    if client.apply(&objects, false, None).await.is_err() {
                        return;
                    }
                    acked.lock().expect("lock").insert(name);
                }
            })
        })
        .collect();
    eventually(
        "500 acknowledged writes",
        Duration::from_secs(60),
        || async { (acked.lock().expect("lock").len() >= 500).then_some(()) },
    )
    .await?;
    // What was acknowledged before the first SIGKILL goes out.
    let before_kill = acked.lock().expect("lock").clone();
    cluster.kill9_all(&[0, 1, 2])?;
    for writer in writers {
        writer.await?;
    }

    for i in 0..3 {
        cluster.restart(i)?;
    }
    cluster.wait_formed(&[0, 1, 2], 3).await?;
    for i in 0..3 {
        let client = cluster.client(i);
        let names = eventually(
            &format!("the acknowledged writes on node {i}"),
            Duration::from_secs(30),
            || async {
                let list = client
                    .get_json("objects/configuration?consistency=stale")
                    .await
                    .ok()?;
                let names: BTreeSet<String> = list
                    .as_array()?
                    .iter()
                    .filter(|o| o["object"]["meta"]["group"] == "acked")
                    .filter_map(|o| o["object"]["meta"]["name"].as_str().map(str::to_string))
                    .collect();
                (names.len() >= before_kill.len()).then_some(names)
            },
        )
        .await;
        let names = names.unwrap_or_default();
        let lost: Vec<&String> = before_kill.difference(&names).collect();
        assert!(
            lost.is_empty(),
            "node {i}: {} of {} acknowledged writes lost, e.g. {:?}",
            lost.len(),
            before_kill.len(),
            lost.iter().take(5).collect::<Vec<_>>()
        );
    }
    Ok(())
}

/// Tries to join `cluster` through its first node with `token`; the join must fail. Its stderr.
fn refused_join(cluster: &Cluster, token: &str) -> String {
    refused_join_with(cluster, token, &[])
}

fn refused_join_with(cluster: &Cluster, token: &str, extra: &[&str]) -> String {
    let mut cmd = smrmgr(cluster.dir.path());
    cmd.args([
        "start",
        "-a",
        "intruder",
        "--ip",
        "127.0.0.1",
        "--api-port",
        "0",
        "--raft-port",
        "0",
        "--metrics-addr",
        "off",
        "-j",
    ])
    .arg(cluster.nodes[0].api())
    .args(["--token", token, "--data-dir"])
    .arg(cluster.dir.path().join("intruder"))
    .args(extra);
    let out = output(cmd);
    assert!(
        !out.status.success(),
        "join with token {token:?} was accepted"
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// What the server at `addr` (ip:port) answers a TLS client on `config` once the handshake is
/// done, sending nothing: in TLS 1.3 the server judges the client's certificate after the
/// client's side of the handshake is over, so its verdict (an alert) is read here. An HTTP
/// client would send its request at once, and the server, closing on that unread request,
/// resets the connection: the client then sees the reset, with or without the alert.
fn tls_answer(config: Arc<rustls::ClientConfig>, addr: &str) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    let invalid = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, e);
    let ip = addr.rsplit_once(':').map_or(addr, |(ip, _)| ip).to_string();
    let name = rustls::pki_types::ServerName::try_from(ip).map_err(|e| invalid(e.to_string()))?;
    let mut conn =
        rustls::ClientConnection::new(config, name).map_err(|e| invalid(e.to_string()))?;
    let mut sock = std::net::TcpStream::connect(addr)?;
    sock.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut answer = Vec::new();
    rustls::Stream::new(&mut conn, &mut sock).read_to_end(&mut answer)?;
    Ok(answer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn joins_and_connections_without_the_right_credentials_are_refused() -> anyhow::Result<()> {
    let mut cluster = Cluster::new();
    cluster.start_first()?;
    let token = cluster.token(0)?;

    // Right CA fingerprint, wrong secret.
    let (fingerprint, _) = token
        .strip_prefix("SMRTKN-1-")
        .and_then(|t| t.split_once('-'))
        .expect("token shape");
    let forged = format!("SMRTKN-1-{fingerprint}-{}", "0".repeat(64));
    let stderr = refused_join(&cluster, &forged);
    assert!(stderr.contains("join token refused"), "{stderr}");

    // A token of another cluster: its CA is not the one this cluster presents.
    let mut other = Cluster::new();
    other.start_first()?;
    let stderr = refused_join(&cluster, &other.token(0)?);
    assert!(stderr.contains("does not match the join token"), "{stderr}");

    // Not a token at all.
    let stderr = refused_join(&cluster, "hello");
    assert!(stderr.contains("--token"), "{stderr}");

    // A valid token, but another overlay backend than the cluster's (fixed at its creation).
    let stderr = refused_join_with(&cluster, &token, &["--backend", "wireguard"]);
    assert!(
        stderr.contains("the cluster runs the none backend"),
        "{stderr}"
    );

    // No client certificate: the TLS session is allowed (for joins) but the API refuses.
    let ctx = agent::client::Context::load(&cluster.nodes[0].context_path())?;
    let anonymous = pki::reqwest_client(&ctx.ca_pem, None, Duration::from_secs(5))?;
    let response = anonymous
        .get(format!("https://{}/api/v1/nodes", cluster.nodes[0].api()))
        .send()
        .await?;
    assert_eq!(response.status(), 401);
    let body: serde_json::Value = response.json().await?;
    assert_eq!(body["error"]["code"], "unauthenticated");
    // ... and the Raft port refuses the handshake.
    let raft = anonymous
        .post(format!("https://{}:9212/raft/vote", cluster.nodes[0].ip))
        .body("{}")
        .send()
        .await;
    assert!(
        raft.is_err(),
        "raft port must require a client certificate: {raft:?}"
    );

    // A certificate from another cluster's CA: the handshake fails.
    let other_ctx = agent::client::Context::load(&other.nodes[0].context_path())?;
    let stranger = Identity {
        cert_pem: other_ctx.cert_pem,
        key_pem: other_ctx.key_pem,
        ca_pem: ctx.ca_pem.clone(),
    };
    let config = pki::client_config(&ctx.ca_pem, Some(&stranger))?;
    let api = cluster.nodes[0].api();
    let answer = tokio::task::spawn_blocking(move || tls_answer(config, &api)).await?;
    let error = answer.expect_err("a foreign client certificate must be refused");
    assert!(error.to_string().contains("alert"), "{error}");

    // An admin certificate may not call node-only routes.
    let admin = cluster.client(0);
    let err = admin
        .get_json("internal/read-index")
        .await
        .expect_err("admin on internal route");
    assert!(matches!(err, ClientError::Api { status: 403, .. }), "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invalid_definitions_are_refused_and_nothing_is_stored() -> anyhow::Result<()> {
    let mut cluster = Cluster::new();
    cluster.start_first()?;
    let context = cluster.nodes[0].context_path();
    let files = cluster.dir.path().join("defs");
    std::fs::create_dir_all(&files)?;
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "bad-yaml.yaml",
            "kind: containers\nmeta: [unclosed\n",
            &["bad-yaml.yaml"],
        ),
        (
            "unknown-field.yaml",
            "kind: containers\nprefix: simplecontainer.io/v1\nmeta:\n  group: g\n  name: n\n  label:\n    a: b\nspec:\n  image: busybox\n",
            &["unknown-field.yaml", ":6", "label", "labels"],
        ),
        (
            "invalid-name.yaml",
            "kind: containers\nprefix: simplecontainer.io/v1\nmeta:\n  group: g\n  name: Bad_Name\nspec:\n  image: busybox\n",
            &["invalid-name.yaml", "Bad_Name"],
        ),
        (
            "wrong-type.yaml",
            "kind: containers\nprefix: simplecontainer.io/v1\nmeta:\n  group: g\n  name: n\nspec:\n  image: busybox\n  replicas: many\n",
            &["wrong-type.yaml", ":8", "replicas"],
        ),
    ];
    for (file, text, expected) in cases {
        let path = files.join(file);
        std::fs::write(&path, text)?;
        let mut cmd = smrctl(&context);
        cmd.args(["apply", "-f"]).arg(&path);
        let out = output(cmd);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{file}: {stderr}");
        for needle in *expected {
            assert!(
                stderr.contains(needle),
                "{file}: expected {needle:?} in {stderr}"
            );
        }
    }
    // A directory with valid and invalid files: nothing of it is applied.
    std::fs::write(files.join("valid.yaml"), busybox("ok", "fine"))?;
    let mut cmd = smrctl(&context);
    cmd.args(["apply", "-f"]).arg(&files);
    assert_eq!(output(cmd).status.code(), Some(3));

    // The API validates too: YAML sent directly, with an error naming the field.
    let client = cluster.client(0);
    let err = client
        .apply_yaml("kind: containers\nprefix: simplecontainer.io/v1\nmeta:\n  group: g\n  name: Bad_Name\nspec:\n  image: x\n", false)
        .await
        .expect_err("invalid name refused");
    assert!(
        matches!(&err, ClientError::Api { status: 422, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("Bad_Name"), "{err}");

    // A 10 MB body is refused with a clear error.
    let big = format!("kind: containers\n# {}\n", "x".repeat(10 * 1024 * 1024));
    let err = client
        .apply_yaml(&big, false)
        .await
        .expect_err("10 MB refused");
    assert!(
        matches!(&err, ClientError::Api { status: 413, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("larger than"), "{err}");

    // Dry run validates and reports without storing.
    let dry = client.apply_yaml(&busybox("ok", "dry"), true).await?;
    assert!(dry.dry_run);

    assert!(client.list(None).await?.is_empty(), "nothing was stored");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fourth_node_is_a_learner_and_is_promoted_when_a_voter_leaves() -> anyhow::Result<()> {
    let mut cluster = Cluster::new();
    cluster.start_first()?;
    for via in [0, 0, 1] {
        cluster.join(via)?;
    }
    cluster.wait_formed(&[0, 1, 2, 3], 3).await?;
    let roles = |nodes: &[agent::api::types::NodeView]| -> Vec<(String, String)> {
        nodes
            .iter()
            .map(|n| (n.name.clone(), n.role.clone()))
            .collect()
    };
    let nodes = cluster.client(3).nodes().await?;
    assert_eq!(
        nodes.iter().filter(|n| n.role == "voter").count(),
        3,
        "{:?}",
        roles(&nodes)
    );
    assert_eq!(
        nodes.iter().filter(|n| n.role == "learner").count(),
        1,
        "{:?}",
        roles(&nodes)
    );
    assert!(nodes.iter().all(|n| n.health == "healthy"), "{nodes:?}");

    // A voter leaves: the learner becomes a voter; the node is gone from the registry.
    let mut leave = smrmgr(cluster.dir.path());
    leave
        .args(["leave", "--data-dir"])
        .arg(&cluster.nodes[1].data_dir);
    common::run(leave)?;
    assert!(
        cluster.nodes[1].pid().is_none(),
        "the leaving agent stopped"
    );
    let client = cluster.client(0);
    let nodes = eventually(
        "the learner to be promoted",
        Duration::from_secs(30),
        || async {
            let nodes = client.nodes().await.ok()?;
            (nodes.len() == 3 && nodes.iter().all(|n| n.role == "voter")).then_some(nodes)
        },
    )
    .await?;
    assert!(!nodes.iter().any(|n| n.name == "smr-agent-2"));
    // The cluster still takes writes with the new voter set.
    client.apply_yaml(&busybox("after", "leave"), false).await?;
    Ok(())
}

#[test]
fn a_node_timeout_out_of_range_is_refused_before_anything_starts() -> anyhow::Result<()> {
    let home = tempfile::tempdir()?;
    let data = home.path().join("data");
    for (value, why) in [("2s", "outside 5s..1h"), ("soon", "soon")] {
        let out = common::smrmgr(home.path())
            .args([
                "start",
                "-a",
                "n1",
                "--ip",
                "127.0.0.1",
                "--node-timeout",
                value,
            ])
            .arg("--data-dir")
            .arg(&data)
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains("--node-timeout") && stderr.contains(why),
            "{stderr}"
        );
        assert!(!data.exists(), "nothing is created for a refused start");
    }
    Ok(())
}

/// The count and sum of node `i`'s `smr_forward_batch_writes` histogram: requests it forwarded
/// with writes in them, and the writes.
async fn forwarded(cluster: &Cluster, i: usize) -> anyhow::Result<(f64, f64)> {
    let url = format!("http://{}:9213/metrics", cluster.nodes[i].ip);
    let text = reqwest::get(&url).await?.text().await?;
    let value = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    };
    Ok((
        value("smr_forward_batch_writes_count"),
        value("smr_forward_batch_writes_sum"),
    ))
}

/// `n` configuration objects applied at once through node `via`: each must be applied with a
/// revision of its own.
async fn apply_at_once(
    cluster: &Cluster,
    via: usize,
    round: usize,
    n: usize,
) -> anyhow::Result<()> {
    let client = cluster.client(via);
    let applies = (0..n).map(|k| {
        let client = client.clone();
        async move {
            let yaml = format!(
                "kind: configuration\nprefix: simplecontainer.io/v1\nmeta:\n  group: fwd\n  name: r{round}-{k}\nspec:\n  data:\n    k: \"{k}\"\n"
            );
            let objects = definitions::parse_str("fwd", &yaml)?;
            anyhow::Ok(client.apply(&objects, false, None).await?.revision)
        }
    });
    let revisions: BTreeSet<u64> = futures::future::try_join_all(applies)
        .await?
        .into_iter()
        .collect();
    anyhow::ensure!(
        revisions.len() == n,
        "{n} writes answered with {} revisions",
        revisions.len()
    );
    Ok(())
}

/// Issue 14: writes a follower forwards go to the leader several to a request, each with its
/// own answer; while a member does not announce the batch route (a rolling upgrade, played with
/// `SMR_TEST_LEGACY_FEATURES`), each goes alone, and batching starts once it is upgraded.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_a_follower_forwards_go_together_once_every_member_reads_them() -> anyhow::Result<()>
{
    let mut cluster = Cluster::new();
    cluster.start_first()?;
    // The old node joins first: the new one sees it among the members from its start.
    cluster.start_env = vec![("SMR_TEST_LEGACY_FEATURES".into(), "propose-batch".into())];
    let old = cluster.join(0)?;
    cluster.start_env.clear();
    let new = cluster.join(0)?;
    let leader = cluster.index_of(cluster.wait_formed(&[0, 1, 2], 3).await?);
    let follower = if leader == new { 0 } else { new };

    apply_at_once(&cluster, follower, 0, 32).await?;
    let (requests, writes) = forwarded(&cluster, follower).await?;
    anyhow::ensure!(
        requests == 0.0 && writes == 0.0,
        "batched while a member does not read batches: {requests} requests, {writes} writes"
    );

    // The node is upgraded; the follower asks the members again within 10 s.
    cluster.stop(old)?;
    cluster.restart(old)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut round = 1;
    loop {
        apply_at_once(&cluster, follower, round, 32).await?;
        let (requests, writes) = forwarded(&cluster, follower).await?;
        // Its own reports and heartbeats forward too: at least the 32 writes, in fewer requests.
        if writes >= 32.0 && requests * 2.0 <= writes {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "no batches after the upgrade: {requests} requests for {writes} writes"
        );
        round += 1;
    }
    Ok(())
}

//! Issue 12 end to end: every failure answered honestly, on real agent processes on loopback.
//! Writes whose fate is unknown say so (504 `outcome_unknown`) and a retry with the same op_id
//! resolves them; a write through a follower follows a new leader instead of waiting on a
//! frozen one; restarts use the settings the node was started with; the last node cannot be
//! removed; stale pid files do not block a start; `registryAuth` is never shown; every error is
//! in the JSON envelope.

mod common;

use std::time::{Duration, Instant};

use agent::client::{ClientError, Context};
use agent::definitions;
use agent::pki::{self, Identity};
use common::{Cluster, busybox, eventually, output, smrctl, smrmgr};
use nix::sys::signal::{Signal, kill};

/// A plain mTLS HTTP client with the admin certificate of `node`, and its API URL.
fn raw(node: &common::Node) -> anyhow::Result<(reqwest::Client, String)> {
    let ctx = Context::load(&node.context_path())?;
    let identity = Identity {
        cert_pem: ctx.cert_pem.clone(),
        key_pem: ctx.key_pem.clone(),
        ca_pem: ctx.ca_pem.clone(),
    };
    let client = pki::reqwest_client(&ctx.ca_pem, Some(&identity), Duration::from_secs(20))?;
    Ok((client, ctx.api_url))
}

/// Status and JSON body; fails when the body is not the error envelope.
async fn envelope(response: reqwest::Response) -> anyhow::Result<(u16, serde_json::Value)> {
    let status = response.status().as_u16();
    let text = response.text().await?;
    let body: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("status {status}: not JSON ({e}): {text:?}"))?;
    anyhow::ensure!(
        body["error"]["code"].is_string() && body["error"]["message"].is_string(),
        "status {status}: not the error envelope: {text}"
    );
    Ok((status, body))
}

/// One `POST /api/v1/objects` with `op_id`, not retried: the status and the body.
async fn apply_once(
    node: &common::Node,
    yaml: &str,
    op_id: &str,
    timeout: Duration,
) -> anyhow::Result<(u16, serde_json::Value)> {
    let (http, base) = raw(node)?;
    let objects = definitions::parse_str("w", yaml)?;
    let response = http
        .post(format!("{base}/api/v1/objects"))
        .json(&serde_json::json!({ "objects": objects, "op_id": op_id }))
        .timeout(timeout)
        .send()
        .await?;
    let status = response.status().as_u16();
    Ok((status, response.json().await?))
}

fn signal(cluster: &Cluster, i: usize, sig: Signal) -> anyhow::Result<()> {
    let pid = cluster.nodes[i]
        .pid()
        .ok_or_else(|| anyhow::anyhow!("node {i} runs no agent"))?;
    kill(pid, sig)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_follow_leadership_and_unknown_outcomes_are_said_and_resolved() -> anyhow::Result<()>
{
    let mut cluster = Cluster::new();
    cluster.start_first()?;
    cluster.join(0)?;
    cluster.join(0)?;
    let leader = cluster.wait_formed(&[0, 1, 2], 3).await?;

    // registryAuth is shown by no node, in no output.
    let secret_yaml = "kind: containers\nprefix: simplecontainer.io/v1\nmeta:\n  group: private\n  \
                       name: app\nspec:\n  image: registry.example.com/app\n  tag: \"1\"\n  \
                       registryAuth: \"robot:s3cr3t-pass\"\n  replicas: 1\n";
    cluster.client(0).apply_yaml(secret_yaml, false).await?;
    for i in 0..3 {
        let client = cluster.client(i);
        let key = "containers/private/app".parse()?;
        let shown = [
            serde_json::to_string(&client.get(&key).await?)?,
            serde_json::to_string(&client.list(None).await?)?,
            serde_json::to_string(&client.describe(&key).await?)?,
            serde_json::to_string(&client.events(0, None, Duration::ZERO).await?)?,
        ];
        let context = cluster.nodes[i].context_path();
        let mut cli = Vec::new();
        for args in [
            &["get", "containers/private/app", "-o", "yaml"][..],
            &["get", "containers/private/app", "-o", "json"],
            &["list", "-o", "yaml"],
            &["list", "containers", "-o", "json"],
            &["describe", "containers/private/app", "-o", "json"],
        ] {
            let mut cmd = smrctl(&context);
            cmd.args(args);
            let out = output(cmd);
            assert!(out.status.success(), "smrctl {args:?}: {out:?}");
            cli.push(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        for text in shown.iter().chain(&cli) {
            assert!(
                !text.contains("s3cr3t"),
                "node {i} shows registryAuth: {text}"
            );
        }
        assert!(cli[0].contains("registryAuth: '***'") || cli[0].contains("registryAuth: \"***\""));
    }

    // The leader freezes: a write through a follower goes to the new leader as soon as the
    // follower knows it (before: about 10 s on the frozen one, then 503, new leader or not).
    let frozen = cluster.index_of(leader);
    let follower = (frozen + 1) % 3;
    let watched = cluster.client(follower);
    signal(&cluster, frozen, Signal::SIGSTOP)?;
    let started = Instant::now();
    let learned = tokio::spawn(async move {
        loop {
            if let Ok(h) = watched.health().await
                && h.leader.is_some_and(|l| l != leader)
            {
                return Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let written = apply_once(
        &cluster.nodes[follower],
        &busybox("follow", "one"),
        "follow-op-1",
        Duration::from_secs(25),
    )
    .await;
    let done = Instant::now();
    let learned = tokio::time::timeout(Duration::from_secs(20), learned).await??;
    signal(&cluster, frozen, Signal::SIGCONT)?;
    let (status, body) = written?;
    println!(
        "write through a follower of a frozen leader: {status} after {:?}, {:?} after the \
         follower knew the new leader",
        done - started,
        done.saturating_duration_since(learned)
    );
    assert_eq!(status, 200, "{body}");
    assert!(
        done.saturating_duration_since(learned) < Duration::from_secs(2),
        "the write waited {:?} on a frozen leader after a new one was known",
        done.saturating_duration_since(learned)
    );
    let leader = cluster.wait_formed(&[0, 1, 2], 3).await?;

    // Both followers freeze: the leader appends the write but cannot commit it. It must not say
    // `unavailable` (it may yet be applied): 504 outcome_unknown, with the op_id.
    let l = cluster.index_of(leader);
    let others: Vec<usize> = (0..3).filter(|&i| i != l).collect();
    let objects = definitions::parse_str("w", &busybox("unknown", "one"))?;
    for &i in &others {
        signal(&cluster, i, Signal::SIGSTOP)?;
    }
    let answer = apply_once(
        &cluster.nodes[l],
        &busybox("unknown", "one"),
        "unknown-op-1",
        Duration::from_secs(25),
    )
    .await;
    for &i in &others {
        signal(&cluster, i, Signal::SIGCONT)?;
    }
    let (status, body) = answer?;
    assert_eq!(status, 504, "{body}");
    assert_eq!(body["error"]["code"], "outcome_unknown");
    assert_eq!(body["error"]["details"]["op_id"], "unknown-op-1");
    // The followers are back: the entry the leader kept commits. The retry with the same op_id
    // answers "applied" and applies nothing twice.
    let retried = cluster
        .client(l)
        .apply(&objects, false, Some("unknown-op-1".into()))
        .await?;
    assert_eq!(
        retried.outcomes[0].key.to_string(),
        "containers/unknown/one"
    );
    let again = cluster
        .client(others[0])
        .apply(&objects, false, Some("unknown-op-1".into()))
        .await?;
    assert_eq!(again.revision, retried.revision, "applied once");
    let list = cluster.client(l).get_json("objects/containers").await?;
    let copies = list
        .as_array()
        .into_iter()
        .flatten()
        .filter(|o| o["object"]["meta"]["group"] == "unknown")
        .count();
    assert_eq!(copies, 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_restarts_as_started_and_answers_every_error_in_the_envelope() -> anyhow::Result<()>
{
    let mut cluster = Cluster::new();
    cluster.start_extra = [
        "--api-port",
        "2443",
        "--raft-port",
        "10212",
        "--label",
        "zone=a",
    ]
    .map(String::from)
    .to_vec();
    cluster.start_first()?;
    let node = &cluster.nodes[0];
    let port = |n: &common::Node| -> anyhow::Result<String> {
        Ok(Context::load(&n.context_path())?.api_url)
    };
    assert!(port(node)?.ends_with(":2443"));

    // Restart with only --data-dir: the same ports and labels (before: 1443 and 9212).
    cluster.stop(0)?;
    let mut restart = smrmgr(cluster.dir.path());
    restart
        .args(["start", "--wait", "30", "--data-dir"])
        .arg(&node.data_dir);
    common::run(restart)?;
    assert!(port(node)?.ends_with(":2443"), "{}", port(node)?);
    let nodes = cluster.client(0).nodes().await?;
    assert_eq!(nodes[0].raft.rsplit(':').next(), Some("10212"));
    assert_eq!(nodes[0].labels.get("zone").map(String::as_str), Some("a"));

    // A flag that contradicts the node is refused (usage, exit 2); nothing is started.
    cluster.stop(0)?;
    let mut conflicting = smrmgr(cluster.dir.path());
    conflicting
        .args(["start", "--api-port", "1443", "--data-dir"])
        .arg(&node.data_dir);
    let out = output(conflicting);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--api-port 1443 conflicts with this node's 2443"),
        "{stderr}"
    );
    assert!(node.pid().is_none());

    // A pid file naming a live program that is not this agent is stale: the start proceeds.
    let mut other = std::process::Command::new("sleep").arg("60").spawn()?;
    std::fs::write(node.data_dir.join("smr.pid"), other.id().to_string())?;
    let mut start = smrmgr(cluster.dir.path());
    start
        .args(["start", "--wait", "30", "--label", "zone=b", "--data-dir"])
        .arg(&node.data_dir);
    let out = output(start);
    let _ = other.kill();
    let _ = other.wait();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("is serving"), "{stdout}{stderr}");
    assert!(stderr.contains("stale pid file"), "{stderr}");
    // A label given at restart is the node's label now.
    let client = cluster.client(0);
    eventually("the new label", Duration::from_secs(20), || async {
        let nodes = client.nodes().await.ok()?;
        (nodes[0].labels.get("zone").map(String::as_str) == Some("b")).then_some(())
    })
    .await?;

    // kill -9, then start: not "already running".
    cluster.kill9(0)?;
    let mut start = smrmgr(cluster.dir.path());
    start
        .args(["start", "--wait", "30", "--data-dir"])
        .arg(&node.data_dir);
    let stdout = common::run(start)?;
    assert!(stdout.contains("is serving"), "{stdout}");
    // ... and a start while it truly runs says so.
    let mut again = smrmgr(cluster.dir.path());
    again.args(["start", "--data-dir"]).arg(&node.data_dir);
    let stdout = common::run(again)?;
    assert!(stdout.contains("already running"), "{stdout}");

    // The last node cannot be removed (before: 204, then an empty cluster and a log loop).
    let client = cluster.client(0);
    let refused = client.remove_node(1).await.expect_err("last node removed");
    assert!(
        matches!(&refused, ClientError::Api { status: 409, message, .. } if message.contains("last node")),
        "{refused}"
    );
    assert_eq!(client.nodes().await?.len(), 1);

    // Errors are in the JSON envelope, the method check comes before authentication, token
    // lifetimes are bounded, long polls are capped, the webhook does not tell what exists.
    let (http, base) = raw(node)?;
    let api = |path: &str| format!("{base}/api/v1/{path}");
    let (status, body) = envelope(http.get(api("objects?bogus=1")).send().await?).await?;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("bad_request"))
    );
    let (status, _) = envelope(http.get(api("objects/containers/%FF/x")).send().await?).await?;
    assert_eq!(status, 400);
    let (status, body) = envelope(
        http.post(api("objects"))
            .header("content-type", "application/json")
            .body("{not json")
            .send()
            .await?,
    )
    .await?;
    assert_eq!(status, 400, "{body}");
    for path in ["internal/propose", "internal/read-index", "nodes"] {
        let response = http
            .request(reqwest::Method::TRACE, api(path))
            .send()
            .await?;
        let allow = response.headers().get("allow").cloned();
        let (status, body) = envelope(response).await?;
        assert_eq!(status, 405, "TRACE {path}: {body}");
        assert_eq!(body["error"]["code"], "method_not_allowed");
        assert!(allow.is_some(), "405 without Allow");
    }
    let anonymous = pki::reqwest_client(
        &Context::load(&node.context_path())?.ca_pem,
        None,
        Duration::from_secs(20),
    )?;
    let (status, _) = envelope(
        anonymous
            .request(reqwest::Method::TRACE, api("internal/propose"))
            .send()
            .await?,
    )
    .await?;
    assert_eq!(status, 405);
    let (status, body) = envelope(
        http.post(api("tokens"))
            .json(&serde_json::json!({ "ttl_seconds": u64::MAX }))
            .send()
            .await?,
    )
    .await?;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("ttl_seconds")
    );
    let started = Instant::now();
    let events = http
        .get(api("events?since=999999&wait=61"))
        .timeout(Duration::from_secs(15))
        .send()
        .await?;
    assert_eq!(events.status(), 200);
    assert!(
        started.elapsed() < Duration::from_secs(12),
        "{:?}",
        started.elapsed()
    );

    client
        .apply_yaml(
            "kind: secret\nprefix: simplecontainer.io/v1\nmeta: {group: ops, name: hook}\n\
             spec:\n  data:\n    webhook: hook-secret\n---\nkind: gitops\nprefix: \
             simplecontainer.io/v1\nmeta: {group: ops, name: app}\nspec:\n  repoURL: \
             git://127.0.0.1:1/none.git\n  automaticSync: false\n  webhookSecretRef: {group: \
             ops, name: hook}\n",
            false,
        )
        .await?;
    let mut answers = Vec::new();
    for name in ["app", "missing"] {
        let response = anonymous
            .post(api(&format!("gitops/ops/{name}/webhook")))
            .header("x-hub-signature-256", format!("sha256={}", "0".repeat(64)))
            .header("x-github-event", "push")
            .body("{}")
            .send()
            .await?;
        let (status, body) = envelope(response).await?;
        answers.push((status, body["error"]["code"].clone()));
    }
    assert_eq!(
        answers[0], answers[1],
        "webhook tells a missing object apart"
    );
    assert_eq!(answers[0].0, 401);
    Ok(())
}

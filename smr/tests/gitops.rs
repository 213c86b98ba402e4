//! Gitops end to end: real agent processes on loopback follow real git servers on loopback
//! (`git daemon`, smart HTTP with basic auth, a private sshd), deploy commits, prune, report
//! and correct drift, refuse invalid commits and hostile paths, answer signed webhooks, and
//! survive the leader being killed in the middle of a sync.

mod common;
#[path = "../../gitops/tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use agent::api::sync_routes::GitopsView;
use agent::client::Client;
use agent::definitions::ObjectKey;
use agent::state::GitopsState;
use anyhow::Context;
use common::{Cluster, eventually, output, run, smrctl};
use hmac::Mac;
use support::{GitDaemon, HttpGit, Sshd, TestRepo};

const DEADLINE: Duration = Duration::from_secs(30);

fn config_yaml(name: &str, value: &str) -> String {
    format!(
        "kind: configuration\nprefix: simplecontainer.io/v1\nmeta:\n  group: app\n  name: {name}\n\
         spec:\n  data:\n    value: \"{value}\"\n"
    )
}

fn key(text: &str) -> ObjectKey {
    text.parse().expect("object key")
}

/// Applies YAML through `smrctl apply -f`.
fn apply(cluster: &Cluster, yaml: &str) -> anyhow::Result<String> {
    let file = cluster
        .dir
        .path()
        .join(format!("{}.yaml", agent::node::new_op_id()));
    std::fs::write(&file, yaml)?;
    let mut cmd = smrctl(&cluster.nodes[0].context_path());
    cmd.arg("apply").arg("-f").arg(&file);
    run(cmd)
}

async fn status(client: &Client, name: &str) -> Option<GitopsView> {
    let (group, name) = name.split_once('/')?;
    client.gitops_get(group, name).await.ok()
}

/// Waits until gitops `name` has synced `commit`.
async fn synced(client: &Client, name: &str, commit: &str) -> anyhow::Result<GitopsView> {
    eventually(&format!("{name} to sync {commit}"), DEADLINE, || async {
        let v = status(client, name).await?;
        (v.status.synced_commit.as_deref() == Some(commit)
            && matches!(v.status.state, GitopsState::Synced))
        .then_some(v)
    })
    .await
}

async fn value_of(client: &Client, name: &str) -> Option<String> {
    let stored = client
        .get(&key(&format!("configuration/app/{name}")))
        .await
        .ok()?;
    stored.object.spec.data()?.get("value").cloned()
}

fn gitops_yaml(name: &str, url: &str, extra: &str) -> String {
    format!(
        "kind: gitops\nprefix: simplecontainer.io/v1\nmeta:\n  group: ops\n  name: {name}\n\
         spec:\n  repoURL: \"{url}\"\n  revision: main\n{extra}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn git_daemon_deploys_follows_pushes_prunes_and_handles_drift_bad_commits_and_hostile_paths()
-> anyhow::Result<()> {
    let mut cluster = Cluster::new();
    cluster.start_first()?;
    let client = cluster.client(0);
    let repo = TestRepo::new("defs");
    repo.write("README.md", "not a definition\n");
    repo.write("apps/a.yaml", config_yaml("a", "1"));
    repo.write(
        "apps/nested/b.yaml",
        format!("{}---\n{}", config_yaml("b", "1"), config_yaml("c", "1")),
    );
    // A pack beside it: Pack.yaml + definitions/.
    repo.write("pack/Pack.yaml", "name: tools\nversion: 1.0.0\n");
    repo.write("pack/definitions/p.yaml", config_yaml("packed", "1"));
    let c1 = repo.commit("first");
    let daemon = GitDaemon::start(&repo.base());
    // simplecontainer writes directoryPath with a leading slash.
    apply(
        &cluster,
        &gitops_yaml(
            "repo",
            &daemon.url("defs"),
            "  directoryPath: /apps\n  poolingInterval: 1s\n  automaticSync: true\n",
        ),
    )?;

    // Initial sync: every definition of the directory, owned by the gitops object.
    let view = synced(&client, "ops/repo", &c1).await?;
    assert!(view.status.last_sync_ms.is_some());
    for name in ["a", "b", "c"] {
        let stored = client
            .get(&key(&format!("configuration/app/{name}")))
            .await?;
        assert_eq!(stored.owner.as_deref(), Some("gitops/ops/repo"));
        assert_eq!(stored.generation, 1);
    }

    apply(
        &cluster,
        &gitops_yaml(
            "pack",
            &daemon.url("defs"),
            "  directoryPath: pack\n  automaticSync: true\n",
        ),
    )?;
    synced(&client, "ops/pack", &c1).await?;
    let packed = client.get(&key("configuration/app/packed")).await?;
    assert_eq!(packed.owner.as_deref(), Some("gitops/ops/pack"));

    // A pushed commit is deployed on the next poll; a file deleted in git is pruned.
    repo.write("apps/a.yaml", config_yaml("a", "2"));
    repo.remove("apps/nested/b.yaml");
    let c2 = repo.commit("second");
    synced(&client, "ops/repo", &c2).await?;
    assert_eq!(value_of(&client, "a").await.as_deref(), Some("2"));
    assert!(
        client.get(&key("configuration/app/b")).await.is_err(),
        "b pruned"
    );
    assert!(
        client.get(&key("configuration/app/c")).await.is_err(),
        "c pruned"
    );

    // Drift: a change by hand is put back (automaticSync), and says so in the events.
    apply(&cluster, &config_yaml("a", "by hand"))?;
    eventually("the hand change to be put back", DEADLINE, || async {
        (value_of(&client, "a").await.as_deref() == Some("2")).then_some(())
    })
    .await?;
    let events = client
        .events(0, Some("gitops/ops/repo"), Duration::ZERO)
        .await?;
    assert!(
        events.iter().any(|e| e.reason == "DriftCorrected"),
        "{events:?}"
    );

    // An invalid file: nothing of the commit is applied and the status names file, line, field.
    repo.write("apps/a.yaml", config_yaml("a", "3"));
    repo.write(
        "apps/bad.yaml",
        "kind: configuration\nmeta:\n  group: app\n  name: bad\n  label: {}\nspec: {}\n",
    );
    let c3 = repo.commit("broken");
    let view = eventually("the bad commit to be refused", DEADLINE, || async {
        let v = status(&client, "ops/repo").await?;
        (v.status.state == GitopsState::Error).then_some(v)
    })
    .await?;
    let message = &view.status.message;
    assert!(message.contains("bad.yaml:5:"), "{message}");
    assert!(message.contains("meta.label"), "{message}");
    assert!(message.contains("nothing of it applied"), "{message}");
    assert_eq!(view.status.synced_commit.as_deref(), Some(c2.as_str()));
    assert_eq!(view.status.head_commit.as_deref(), Some(c3.as_str()));
    // The error stands across later polls of the same broken head: nothing reports the last good
    // commit as synced in between (it did, a few milliseconds after each failed fetch).
    let errors = |text: String| {
        text.lines()
            .find_map(|l| l.strip_prefix("smr_gitops_fetches_total{result=\"error\"} "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let metrics = format!("http://{}:9213/metrics", cluster.nodes[0].ip);
    let failed_before = errors(reqwest::get(&metrics).await?.text().await?);
    eventually(
        "two more failed fetches of the broken head",
        DEADLINE,
        || async {
            let now = errors(reqwest::get(&metrics).await.ok()?.text().await.ok()?);
            (now >= failed_before + 2.0).then_some(())
        },
    )
    .await?;
    let view = status(&client, "ops/repo")
        .await
        .context("the gitops status")?;
    assert_eq!(view.status.state, GitopsState::Error, "{:?}", view.status);
    assert_eq!(view.status.head_commit.as_deref(), Some(c3.as_str()));
    assert_eq!(value_of(&client, "a").await.as_deref(), Some("2"));
    assert!(client.get(&key("configuration/app/bad")).await.is_err());
    // Fixed in the next commit: deployed.
    repo.remove("apps/bad.yaml");
    let c4 = repo.commit("fixed");
    synced(&client, "ops/repo", &c4).await?;
    assert_eq!(value_of(&client, "a").await.as_deref(), Some("3"));

    // smrctl shows it.
    let mut cmd = smrctl(&cluster.nodes[0].context_path());
    cmd.arg("gitops");
    let table = run(cmd)?;
    assert!(
        table.contains("ops/repo") && table.contains(&c4[..12]),
        "{table}"
    );
    assert!(table.contains("synced"), "{table}");
    let mut cmd = smrctl(&cluster.nodes[0].context_path());
    cmd.args(["gitops", "describe", "ops/repo"]);
    let details = run(cmd)?;
    assert!(details.contains("configuration/app/a"), "{details}");

    // Hostile paths: `..` is refused when applied; a symlink out of the repo fails the sync.
    let mut cmd = smrctl(&cluster.nodes[0].context_path());
    let file = cluster.dir.path().join("hostile.yaml");
    std::fs::write(
        &file,
        gitops_yaml(
            "hostile",
            &daemon.url("defs"),
            "  directoryPath: ../../etc\n",
        ),
    )?;
    cmd.arg("apply").arg("-f").arg(&file);
    let out = output(cmd);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("directoryPath"), "{stderr}");
    let links = TestRepo::new("links");
    links.write("deploy/ok.yaml", config_yaml("linked", "1"));
    links.symlink("deploy/passwd.yaml", "/etc/passwd");
    let linked = links.commit("symlink");
    let link_daemon = GitDaemon::start(&links.base());
    apply(
        &cluster,
        &gitops_yaml(
            "links",
            &link_daemon.url("links"),
            "  directoryPath: deploy\n  automaticSync: true\n",
        ),
    )?;
    let view = eventually("the symlink to be refused", DEADLINE, || async {
        let v = status(&client, "ops/links").await?;
        (v.status.state == GitopsState::Error).then_some(v)
    })
    .await?;
    assert!(
        view.status.message.contains("passwd.yaml"),
        "{}",
        view.status.message
    );
    assert!(
        view.status.message.contains("link"),
        "{}",
        view.status.message
    );
    assert_ne!(view.status.synced_commit.as_deref(), Some(linked.as_str()));
    assert!(client.get(&key("configuration/app/linked")).await.is_err());

    // Deleting the gitops object removes what it deployed.
    client.delete(&[key("gitops/ops/repo")]).await?;
    assert!(client.get(&key("configuration/app/a")).await.is_err());
    Ok(())
}

fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("key");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// Posts a push webhook like a git host would: TLS (trusting the cluster CA), no client certificate.
async fn post_webhook(
    ca_pem: &[u8],
    url: &str,
    signature: Option<(&str, String)>,
    body: &[u8],
) -> anyhow::Result<(u16, String)> {
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem)?)
        .build()?;
    let mut request = http
        .post(url)
        .header("content-type", "application/json")
        .header("x-gitea-event", "push")
        .body(body.to_vec());
    if let Some((header, value)) = signature {
        request = request.header(header, value);
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    Ok((status, response.text().await?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http_basic_auth_webhooks_manual_sync_and_ssh_keys_without_leaking_credentials()
-> anyhow::Result<()> {
    const PASSWORD: &str = "hunter2-very-secret";
    const HOOK: &str = "hook-secret-0123";
    let mut cluster = Cluster::new();
    cluster.start_first()?;
    let client = cluster.client(0);
    let repo = TestRepo::new("private");
    repo.write("a.yaml", config_yaml("web", "1"));
    let c1 = repo.commit("first");
    let http = HttpGit::start(&repo.base(), "deploy", PASSWORD).await;
    apply(
        &cluster,
        &format!(
            "kind: httpauth\nprefix: simplecontainer.io/v1\nmeta:\n  group: ops\n  name: cred\n\
             spec:\n  username: deploy\n  password: {PASSWORD}\n---\n\
             kind: secret\nprefix: simplecontainer.io/v1\nmeta:\n  group: ops\n  name: hook\n\
             spec:\n  data:\n    webhook: {HOOK}\n---\n{}",
            gitops_yaml(
                "web",
                &http.url("private"),
                "  poolingInterval: 1h\n  httpAuthRef:\n    group: ops\n    name: cred\n  \
                 webhookSecretRef:\n    group: ops\n    name: hook\n",
            )
        ),
    )?;

    // automaticSync is off: the commit is seen but not deployed until asked.
    let view = eventually("the repository to be read", DEADLINE, || async {
        let v = status(&client, "ops/web").await?;
        (v.status.state == GitopsState::OutOfSync).then_some(v)
    })
    .await?;
    assert_eq!(view.status.head_commit.as_deref(), Some(c1.as_str()));
    assert!(view.status.message.contains("smrctl gitops sync ops/web"));
    assert!(client.get(&key("configuration/app/web")).await.is_err());
    let mut cmd = smrctl(&cluster.nodes[0].context_path());
    cmd.args(["gitops", "sync", "ops/web"]);
    let said = run(cmd)?;
    assert!(
        said.contains("synced") && said.contains(&c1[..12]),
        "{said}"
    );
    assert_eq!(value_of(&client, "web").await.as_deref(), Some("1"));

    // A push, then webhooks: a bad signature is refused and records nothing; a good one syncs
    // at once (the poll interval is an hour).
    repo.write("a.yaml", config_yaml("web", "2"));
    let c2 = repo.commit("second");
    let body = serde_json::to_vec(&serde_json::json!({
        "ref": "refs/heads/main",
        "after": c2,
        "repository": {"clone_url": http.url("private")},
    }))?;
    let ca = std::fs::read(cluster.nodes[0].data_dir.join("pki/ca.crt"))?;
    let url = format!(
        "https://{}/api/v1/gitops/ops/web/webhook",
        cluster.nodes[0].api()
    );
    let before = status(&client, "ops/web").await.expect("status").status;
    let (code, text) = post_webhook(&ca, &url, None, &body).await?;
    assert_eq!(code, 401, "{text}");
    let (code, text) = post_webhook(
        &ca,
        &url,
        Some(("x-gitea-signature", sign("wrong", &body))),
        &body,
    )
    .await?;
    assert_eq!(code, 401, "{text}");
    assert!(text.contains("bad_signature"), "{text}");
    let after = status(&client, "ops/web").await.expect("status").status;
    assert_eq!(
        after.sync_requested, before.sync_requested,
        "refused webhooks record nothing"
    );
    let signature = format!("sha256={}", sign(HOOK, &body));
    let (code, text) =
        post_webhook(&ca, &url, Some(("x-hub-signature-256", signature)), &body).await?;
    assert_eq!(code, 202, "{text}");
    synced(&client, "ops/web", &c2).await?;
    assert_eq!(value_of(&client, "web").await.as_deref(), Some("2"));

    // SSH with a key from a certkey object.
    if let Some(sshd) = Sshd::start() {
        let ssh_repo = TestRepo::new("viassh");
        ssh_repo.write("s.yaml", config_yaml("ssh", "1"));
        let s1 = ssh_repo.commit("ssh");
        let indented: String = sshd
            .client_key
            .lines()
            .map(|l| format!("    {l}\n"))
            .collect();
        apply(
            &cluster,
            &format!(
                "kind: certkey\nprefix: simplecontainer.io/v1\nmeta:\n  group: ops\n  name: key\n\
                 spec:\n  privateKey: |\n{indented}---\n{}",
                gitops_yaml(
                    "ssh",
                    &sshd.url(&ssh_repo.bare()),
                    "  automaticSync: true\n  certKeyRef:\n    group: ops\n    name: key\n",
                )
            ),
        )?;
        synced(&client, "ops/ssh", &s1).await?;
        assert_eq!(value_of(&client, "ssh").await.as_deref(), Some("1"));
    } else {
        eprintln!("skipped the SSH part: /usr/sbin/sshd is not installed");
    }

    // Credentials appear in no API answer and in no log line.
    let cred = client.get(&key("httpauth/ops/cred")).await?;
    let shown = serde_json::to_string(&cred)?;
    assert!(!shown.contains(PASSWORD), "{shown}");
    let all = serde_json::to_string(&client.list(None).await?)?;
    assert!(
        !all.contains(PASSWORD) && !all.contains(HOOK),
        "credentials listed"
    );
    let mut cmd = smrctl(&cluster.nodes[0].context_path());
    cmd.args(["gitops", "-o", "json"]);
    let listed = run(cmd)?;
    assert!(!listed.contains(PASSWORD) && !listed.contains("BEGIN OPENSSH"));
    let log = read_logs(&cluster.nodes[0].data_dir);
    assert!(
        !log.contains(PASSWORD) && !log.contains(HOOK),
        "a credential reached the log"
    );
    Ok(())
}

fn read_logs(dir: &Path) -> String {
    let mut text = String::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.path().extension().is_some_and(|e| e == "log") {
            text.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
        }
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_killed_during_a_sync_is_replaced_and_the_sync_completes_once()
-> anyhow::Result<()> {
    const COUNT: usize = 300;
    let (cluster, leader) = Cluster::three().await?;
    let repo = TestRepo::new("many");
    for i in 0..COUNT {
        repo.write(
            &format!("d/{i:03}.yaml"),
            config_yaml(&format!("m{i:03}"), "1"),
        );
    }
    let commit = repo.commit("many");
    let daemon = GitDaemon::start(&repo.base());
    apply(
        &cluster,
        &gitops_yaml(
            "many",
            &daemon.url("many"),
            "  directoryPath: d\n  poolingInterval: 1s\n  automaticSync: true\n",
        ),
    )?;
    // Only the leader fetches, and it creates its clone cache when it starts: kill the node
    // whose cache appears (the leader may have changed since it was asked, on a loaded host).
    let fetching = eventually("the leader to start fetching", DEADLINE, || async {
        (0..3).find(|i| cluster.nodes[*i].data_dir.join("gitops").exists())
    })
    .await?;
    if fetching != leader {
        eprintln!("leadership moved from node {leader} to node {fetching} before the fetch");
    }
    let leader = fetching;
    cluster.kill9(leader)?;
    let survivors: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let client = cluster.client(survivors[0]);
    // Where the kill fell: before the sync's entry was committed (the new leader deploys it) or
    // after (the new leader finds nothing to do). Both must end with every object once.
    let early = eventually("a new leader", DEADLINE, || async {
        client.gitops_get("ops", "many").await.ok()
    })
    .await?;
    eprintln!(
        "leader killed {} the sync was committed",
        if early.status.synced_commit.is_some() {
            "after"
        } else {
            "before"
        }
    );
    synced(&client, "ops/many", &commit).await?;
    cluster.restart(leader)?;
    for i in 0..3 {
        let objects = cluster.client(i).list(None).await?;
        let owned: BTreeMap<String, u64> = objects
            .iter()
            .filter(|o| o.owner.as_deref() == Some("gitops/ops/many"))
            .map(|o| (o.object.key().to_string(), o.generation))
            .collect();
        assert_eq!(
            owned.len(),
            COUNT,
            "node {i}: every definition exactly once"
        );
        assert!(
            owned.values().all(|g| *g == 1),
            "node {i}: nothing was deployed twice"
        );
    }
    Ok(())
}

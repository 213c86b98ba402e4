//! Backup, restore and `--force-new-cluster` on emulated VMs (issue 16).
//!
//! - A backup taken on a follower of a 3-node cluster holds the write acknowledged just before
//!   it; damaged copies and a used data dir are refused with nothing created; the backup restored
//!   on a fourth VM is a new one-node cluster (new CA) with the same objects, secrets included,
//!   whose replicas run.
//! - Two of three nodes are destroyed (agents stopped, VMs cut off, containers gone): writes
//!   fail; the survivor restarted with `--force-new-cluster` is a one-node cluster with its
//!   state, two new VMs join it with a token, and replicas run on them.
//! - On the etcd store (loopback agents, a real etcd): a backup from the second agent, restored
//!   by a background `smrmgr restore` into a loopback Raft node; `--force-new-cluster` refused.
//! - On loopback (no Docker): a background `smrmgr start --force-new-cluster` after two of three
//!   agents are killed; a new agent then joins.

mod common;

use std::path::Path;
use std::time::Duration;

use agent::client::Client;
use agent::definitions;
use anyhow::Context as _;
use common::eventually;
use common::vms::{VmCluster, agent_name, all_ready, api_context, data_dir};

const IMAGE: &str = "smr/busybox";
const TAG: &str = "local";

fn busybox(replicas: u32) -> String {
    format!(
        "kind: containers\nprefix: simplecontainer.io/v1\nmeta:\n  group: busybox\n  name: busybox\nspec:\n  image: {IMAGE}\n  tag: {TAG}\n  replicas: {replicas}\n  spread:\n    spread: uniform\n  entrypoint: [\"sleep\"]\n  args: [\"3600\"]\n"
    )
}

/// Objects of several kinds: a configuration, a secret, credentials, a gitops object.
const OTHERS: &str = "\
kind: configuration
prefix: simplecontainer.io/v1
meta: {group: app, name: settings}
spec:
  data:
    level: debug
---
kind: secret
prefix: simplecontainer.io/v1
meta: {group: app, name: db}
spec:
  data:
    password: s3cr3t-backup-value
---
kind: httpauth
prefix: simplecontainer.io/v1
meta: {group: ops, name: git-cred}
spec:
  username: deploy
  password: git-password-value
---
kind: gitops
prefix: simplecontainer.io/v1
meta: {group: ops, name: app}
spec:
  repoURL: git://127.0.0.1:1/none.git
  automaticSync: false
  httpAuthRef: {group: ops, name: git-cred}
";

async fn apply(client: &Client, yaml: &str) -> anyhow::Result<()> {
    client
        .apply(&definitions::parse_str("test.yaml", yaml)?, false, None)
        .await?;
    Ok(())
}

/// The objects of a backup file, by key, as JSON (secrets in clear).
/// The objects of a backup, their secrets opened with its cluster's key `key_file`.
fn objects_of(file: &Path, key_file: &Path) -> anyhow::Result<Vec<(String, serde_json::Value)>> {
    let backup = smr_core::backup::decode(&std::fs::read(file)?)?;
    let key = agent::pki::ClusterKey::load(key_file)?;
    Ok(agent::secrets::opened(&key, &backup.state)
        .objects
        .iter()
        .map(|(k, o)| (k.to_string(), serde_json::to_value(&o.object).unwrap()))
        .collect())
}

/// `smrmgr ARGS` in VM `i`'s namespace, with its data dir unless `args` name one.
fn smrmgr_out(cluster: &VmCluster, i: usize, args: &[&str]) -> std::process::Output {
    let vm = cluster.vm(i);
    let mut cmd = vm.cmd(env!("CARGO_BIN_EXE_smrmgr"));
    cmd.env("HOME", &vm.dir).args(args);
    if !args.contains(&"--data-dir") {
        cmd.arg("--data-dir").arg(data_dir(vm));
    }
    common::output(cmd)
}

/// Waits until VM `i`'s agent serves (its admin context answers).
async fn serving(cluster: &VmCluster, i: usize) -> anyhow::Result<Client> {
    let vm = cluster.vm(i);
    common::vms::serving(
        vm,
        &format!("the agent on {} to serve", vm.name),
        Duration::from_secs(90),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_from_a_follower_restores_into_a_new_one_node_cluster() -> anyhow::Result<()> {
    let Some(mut cluster) = VmCluster::start(4)? else {
        return Ok(());
    };
    cluster.start_agent(0, None, &[]).await?;
    cluster.start_agent(1, Some(0), &[]).await?;
    cluster.start_agent(2, Some(0), &[]).await?;
    let result = backup_and_restore(&mut cluster).await;
    if result.is_err() {
        cluster.dump_logs();
    }
    result
}

async fn backup_and_restore(cluster: &mut VmCluster) -> anyhow::Result<()> {
    let client = cluster.client(0);
    apply(&client, &busybox(2)).await?;
    apply(&client, OTHERS).await?;
    all_ready(&client, 2, Duration::from_secs(120)).await?;

    // A follower, and a write through the leader just before the backup: the follower's backup
    // holds it (a linearizable read), whether or not the follower applied it yet.
    let follower = eventually("a follower", Duration::from_secs(30), || async {
        for i in [1, 2] {
            if cluster.client(i).health().await.ok()?.state == "follower" {
                return Some(i);
            }
        }
        None
    })
    .await?;
    let last = "kind: configuration\nprefix: simplecontainer.io/v1\nmeta: {group: app, name: last}\nspec:\n  data:\n    written: just-before-the-backup\n";
    apply(&cluster.client(0), last).await?;
    let file = cluster.vm(follower).dir.join("cluster.smr");
    let out = smrmgr_out(cluster, follower, &["backup", file.to_str().unwrap()]);
    anyhow::ensure!(out.status.success(), "backup: {out:?}");
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    println!("{said}");
    anyhow::ensure!(said.contains("6 object(s)"), "{said}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&file)?.permissions().mode() & 0o777;
    anyhow::ensure!(mode == 0o600, "backup file mode {mode:o}");
    let backup = smr_core::backup::decode(&std::fs::read(&file)?)?;
    let old_ca = backup.state.ca.clone().context("CA")?.fingerprint;
    anyhow::ensure!(backup.header.cluster_id == old_ca);
    anyhow::ensure!(backup.header.taken_by == agent_name(cluster.vm(follower)));
    let old_key = data_dir(cluster.vm(0)).join("pki/cluster.key");
    let objects = objects_of(&file, &old_key)?;
    let keys: Vec<&str> = objects.iter().map(|(k, _)| k.as_str()).collect();
    anyhow::ensure!(
        keys == [
            "containers/busybox/busybox",
            "configuration/app/last",
            "configuration/app/settings",
            "secret/app/db",
            "gitops/ops/app",
            "httpauth/ops/git-cred",
        ],
        "{keys:?}"
    );
    // The secret is in it sealed with the cluster key (in clear once opened, above).
    anyhow::ensure!(
        objects
            .iter()
            .any(|(_, o)| o.to_string().contains("s3cr3t-backup-value")),
        "{objects:?}"
    );
    let text = std::fs::read_to_string(&file)?;
    anyhow::ensure!(!text.contains("s3cr3t-backup-value") && text.contains("git-password-value"));
    // The route gives secrets to admin certificates only: a node certificate is refused.
    let pki_dir = data_dir(cluster.vm(follower)).join("pki");
    let node_cert = agent::pki::Identity::load(&pki_dir, "node")?;
    let as_node =
        agent::pki::reqwest_client(&node_cert.ca_pem, Some(&node_cert), Duration::from_secs(10))?;
    let status = as_node
        .get(format!(
            "{}/api/v1/backup",
            api_context(cluster.vm(follower))?.api_url
        ))
        .send()
        .await?
        .status();
    anyhow::ensure!(status == 403, "a backup with a node certificate: {status}");

    // Restore on VM 4: a damaged file or a used data dir is refused, and nothing is created.
    let vm = cluster.vm(3).clone();
    let restore_flags = |file: &Path, dir: &Path| -> Vec<String> {
        vec![
            "restore".into(),
            file.display().to_string(),
            "--backup-key-file".into(),
            old_key.display().to_string(),
            "-a".into(),
            "smr-restored".into(),
            "--ip".into(),
            vm.ip.to_string(),
            "--docker-host".into(),
            vm.docker_host.clone(),
            "--data-dir".into(),
            dir.display().to_string(),
        ]
    };
    let bytes = std::fs::read(&file)?;
    let truncated = vm.dir.join("truncated.smr");
    std::fs::write(&truncated, &bytes[..bytes.len() * 2 / 3])?;
    let corrupt = vm.dir.join("corrupt.smr");
    let mut flipped = bytes.clone();
    let at = text
        .find("git-password-value")
        .context("password in the file")?;
    flipped[at] = b'S';
    std::fs::write(&corrupt, &flipped)?;
    let newer = vm.dir.join("newer.smr");
    std::fs::write(
        &newer,
        text.replacen("\"format_version\":1", "\"format_version\":9", 1),
    )?;
    let fresh = data_dir(&vm);
    for (bad, says) in [
        (&truncated, "truncated"),
        (&corrupt, "corrupt"),
        (&newer, "format version 9"),
    ] {
        let args = restore_flags(bad, &fresh);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = smrmgr_out(cluster, 3, &args);
        let err = String::from_utf8_lossy(&out.stderr);
        anyhow::ensure!(
            !out.status.success() && err.contains(says),
            "restore of {}: {out:?}",
            bad.display()
        );
        anyhow::ensure!(
            !fresh.exists(),
            "{} created by a refused restore",
            fresh.display()
        );
    }
    // Without the key of the backup's cluster, its secrets cannot be restored: refused.
    let args = restore_flags(&file, &fresh);
    let args: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| *a != "--backup-key-file" && *a != old_key.to_str().unwrap())
        .collect();
    let out = smrmgr_out(cluster, 3, &args);
    anyhow::ensure!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("--backup-key-file FILE"),
        "{out:?}"
    );
    anyhow::ensure!(!fresh.exists(), "created by a refused restore");
    let used = vm.dir.join("used");
    std::fs::create_dir_all(&used)?;
    std::fs::write(used.join("node.json"), "{}")?;
    let args = restore_flags(&file, &used);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = smrmgr_out(cluster, 3, &args);
    let err = String::from_utf8_lossy(&out.stderr);
    anyhow::ensure!(
        !out.status.success() && err.contains("is not empty (it holds node.json)"),
        "{out:?}"
    );
    anyhow::ensure!(std::fs::read_dir(&used)?.count() == 1);

    // The real restore, run in the foreground under the testbed.
    let mut cmd = vm.cmd(env!("CARGO_BIN_EXE_smrmgr"));
    cmd.env("HOME", &vm.dir)
        .env("SMR_LOG", "info,openraft=warn,hickory_server=warn")
        .args(restore_flags(&file, &fresh))
        .arg("--foreground");
    let spawned = vm.spawn("restore", cmd)?;
    cluster.agents[3] = Some(spawned.pid);
    let restored = serving(cluster, 3).await?;

    // A new cluster of one node, with its own CA, holding the same objects.
    let nodes = restored.nodes().await?;
    let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
    anyhow::ensure!(names == ["smr-restored"], "{names:?}");
    let again = vm.dir.join("restored.smr");
    eventually("the restored objects", Duration::from_secs(30), || async {
        let out = smrmgr_out(cluster, 3, &["backup", again.to_str()?]);
        out.status.success().then_some(())?;
        (objects_of(&again, &fresh.join("pki/cluster.key")).ok()? == objects).then_some(())
    })
    .await?;
    let second = smr_core::backup::decode(&std::fs::read(&again)?)?;
    let new_fingerprint = second.state.ca.clone().context("CA")?.fingerprint;
    anyhow::ensure!(
        new_fingerprint != old_ca,
        "the restored cluster has a CA of its own"
    );
    anyhow::ensure!(second.state.revision > backup.state.revision);
    anyhow::ensure!(
        second.state.nodes.len() == 1 && second.state.reports.keys().all(|id| *id == 1),
        "no old node comes along: {:?}",
        second.state.nodes.keys().collect::<Vec<_>>()
    );
    // Its replicas run on its one node.
    let replicas = all_ready(&restored, 2, Duration::from_secs(120)).await?;
    anyhow::ensure!(replicas.iter().all(|r| r.node == 1), "{replicas:?}");
    // The old cluster's admin certificate is not one of the new cluster's.
    let mut old_ctx = api_context(cluster.vm(0))?;
    old_ctx.api_url = restored.base_url().to_string();
    anyhow::ensure!(
        Client::from_context(&old_ctx)?.health().await.is_err(),
        "the old cluster's credentials work on the restored one"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn force_new_cluster_after_losing_two_of_three_then_two_new_nodes_join() -> anyhow::Result<()>
{
    let Some(mut cluster) = VmCluster::start(5)? else {
        return Ok(());
    };
    cluster.start_agent(0, None, &[]).await?;
    cluster.start_agent(1, Some(0), &[]).await?;
    cluster.start_agent(2, Some(0), &[]).await?;
    let result = force(&mut cluster).await;
    if result.is_err() {
        cluster.dump_logs();
    }
    result
}

async fn force(cluster: &mut VmCluster) -> anyhow::Result<()> {
    let client = cluster.client(0);
    apply(&client, &busybox(3)).await?;
    apply(&client, OTHERS).await?;
    let before = all_ready(&client, 3, Duration::from_secs(120)).await?;
    anyhow::ensure!(
        before.iter().filter(|r| r.node == 1).count() == 1,
        "{before:?}"
    );
    eventually("3 voters", Duration::from_secs(30), || async {
        (client.health().await.ok()?.voters.len() == 3).then_some(())
    })
    .await?;

    // VMs 2 and 3 are destroyed: agents gone, cut off the network, containers gone.
    for i in [1, 2] {
        cluster.stop_agent(i)?;
        cluster.testbed.cut(cluster.vm(i))?;
        let vm = cluster.vm(i);
        let names = vm.docker_ok(&["ps", "-aq"])?;
        for id in names.lines() {
            vm.docker_ok(&["rm", "-f", id])?;
        }
    }
    // No quorum: a write is not taken.
    let quick = cluster
        .client(0)
        .with_retry(Duration::from_secs(3), Some(Duration::from_secs(3)));
    anyhow::ensure!(
        apply(&quick, &busybox(4)).await.is_err(),
        "a write was taken without quorum"
    );

    // Refused while the agent runs; then the survivor forces a new cluster.
    let out = smrmgr_out(cluster, 0, &["start", "--force-new-cluster"]);
    anyhow::ensure!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("stop it first"),
        "{out:?}"
    );
    cluster.stop_agent(0)?;
    let vm = cluster.vm(0).clone();
    let mut cmd = vm.cmd(env!("CARGO_BIN_EXE_smrmgr"));
    cmd.env("HOME", &vm.dir)
        .env("SMR_LOG", "info,openraft=warn,hickory_server=warn")
        .args([
            "start",
            "--force-new-cluster",
            "--foreground",
            "--docker-host",
            &vm.docker_host,
            "--data-dir",
        ])
        .arg(data_dir(&vm));
    let _ = std::fs::remove_file(data_dir(&vm).join("admin.context"));
    let spawned = vm.spawn("agent-1-forced", cmd)?;
    cluster.agents[0] = Some(spawned.pid);
    let client = serving(cluster, 0).await?;

    let health = eventually("a one-node leader", Duration::from_secs(30), || async {
        let h = client.health().await.ok()?;
        (h.state == "leader" && h.voters == [1]).then_some(h)
    })
    .await?;
    println!("after --force-new-cluster: {health:?}");
    let ids: Vec<u64> = client.nodes().await?.iter().map(|n| n.id).collect();
    anyhow::ensure!(ids == [1], "{ids:?}");
    let objects = client.list(None).await?;
    anyhow::ensure!(objects.len() == 5, "{objects:?}");
    // Writes are taken again, and the replicas of the lost nodes run on the survivor.
    apply(&client, &busybox(3)).await?;
    let replicas = all_ready(&client, 3, Duration::from_secs(120)).await?;
    anyhow::ensure!(replicas.iter().all(|r| r.node == 1), "{replicas:?}");
    let events = client.events(0, Some("cluster"), Duration::ZERO).await?;
    anyhow::ensure!(
        events
            .iter()
            .any(|e| e.reason == "ForcedNewCluster" && e.message.contains("smr-agent-2 (id 2)")),
        "{events:?}"
    );

    // Two new VMs join with a token minted on the survivor; replicas spread onto them.
    cluster.start_agent(3, Some(0), &[]).await?;
    cluster.start_agent(4, Some(0), &[]).await?;
    let ids = eventually("3 nodes, 3 voters", Duration::from_secs(60), || async {
        let h = client.health().await.ok()?;
        let ids: Vec<u64> = client.nodes().await.ok()?.iter().map(|n| n.id).collect();
        (h.voters.len() == 3 && ids.len() == 3).then_some(ids)
    })
    .await?;
    anyhow::ensure!(ids == [1, 4, 5], "new ids, never reused: {ids:?}");
    apply(&client, &busybox(6)).await?;
    let replicas = all_ready(&client, 6, Duration::from_secs(180)).await?;
    for id in [4, 5] {
        let on = replicas.iter().filter(|r| r.node == id).count();
        anyhow::ensure!(on >= 1, "new node {id} runs {on} replicas: {replicas:?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_on_the_etcd_store_restores_and_force_new_cluster_is_refused() -> anyhow::Result<()>
{
    if !smr_tests::etcd::available() {
        println!("skipped: no etcd binary (Debian package etcd-server)");
        return Ok(());
    }
    let etcd = tokio::task::spawn_blocking(|| smr_tests::etcd::EtcdCluster::start(1)).await??;
    let mut cluster = common::Cluster::new();
    cluster.start_extra = vec!["--store".into(), etcd.url()];
    cluster.start_first()?;
    cluster.join(0)?;
    let secret = "kind: secret\nprefix: simplecontainer.io/v1\nmeta: {group: app, name: db}\nspec:\n  data:\n    password: etcd-held-value\n";
    apply(&cluster.client(0), secret).await?;

    // Taken through the second agent: the write through the first one is in it.
    let file = cluster.dir.path().join("etcd.smr");
    let mut cmd = common::smrmgr(cluster.dir.path());
    cmd.args(["backup"])
        .arg(&file)
        .arg("--data-dir")
        .arg(&cluster.nodes[1].data_dir);
    println!("{}", common::run(cmd)?);
    let backup = smr_core::backup::decode(&std::fs::read(&file)?)?;
    anyhow::ensure!(
        backup.header.store == "etcd" && backup.header.term == 0,
        "{:?}",
        backup.header
    );
    // The secret is sealed in the backup and in etcd: its value is in neither, in clear or in
    // base64.
    let hidden = ["etcd-held-value".to_string(), {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode("etcd-held-value")
    }];
    let text = std::fs::read_to_string(&file)?;
    for h in &hidden {
        anyhow::ensure!(!text.contains(h.as_str()), "{h} in the backup");
    }
    let kvs = smr_tests::etcd::all_key_values(&etcd.endpoints()).await?;
    anyhow::ensure!(
        kvs.iter()
            .any(|(_, v)| String::from_utf8_lossy(v).contains(agent::pki::SEALED_VALUE_PREFIX)),
        "the sealed secret is in etcd ({} keys)",
        kvs.len()
    );
    for (k, v) in &kvs {
        let v = String::from_utf8_lossy(v);
        for h in &hidden {
            anyhow::ensure!(
                !v.contains(h.as_str()),
                "{h} in etcd under {}",
                String::from_utf8_lossy(k)
            );
        }
    }
    let old_key = cluster.nodes[0].data_dir.join("pki/cluster.key");
    let opened = agent::secrets::opened(&agent::pki::ClusterKey::load(&old_key)?, &backup.state);
    anyhow::ensure!(
        serde_json::to_string(&opened.objects)?.contains("etcd-held-value"),
        "the secret opens with the cluster key"
    );

    // --force-new-cluster is for the embedded store: refused, nothing moved.
    cluster.stop(0)?;
    let mut cmd = common::smrmgr(cluster.dir.path());
    cmd.args(["start", "--force-new-cluster", "--data-dir"])
        .arg(&cluster.nodes[0].data_dir);
    let out = common::output(cmd);
    anyhow::ensure!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("this node keeps its state in etcd"),
        "{out:?}"
    );
    anyhow::ensure!(!cluster.nodes[0].data_dir.join("seed.json").exists());

    // Restored (in the background, as an operator runs it) into a node on the embedded store.
    let ip = std::net::Ipv4Addr::new(127, 77, (std::process::id() % 250) as u8 + 1, 9);
    let node = common::Node {
        name: "restored".into(),
        ip,
        data_dir: cluster.dir.path().join("restored"),
    };
    let mut cmd = common::smrmgr(cluster.dir.path());
    cmd.arg("restore")
        .arg(&file)
        .arg("--backup-key-file")
        .arg(&old_key)
        .args(["-a", "restored", "--ip", &ip.to_string()])
        .args([
            "--backend",
            "none",
            "--no-workloads",
            "--metrics-addr",
            "off",
        ])
        .arg("--data-dir")
        .arg(&node.data_dir);
    let said = common::run(cmd)?;
    println!("{said}");
    let client = node.client()?;
    cluster.nodes.push(node);
    let key: definitions::ObjectKey = "secret/app/db".parse()?;
    eventually("the restored secret", Duration::from_secs(30), || async {
        client.get(&key).await.ok()
    })
    .await?;
    let nodes = client.nodes().await?;
    anyhow::ensure!(nodes.len() == 1 && nodes[0].name == "restored", "{nodes:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_background_force_new_cluster_on_loopback_takes_writes_and_a_new_node()
-> anyhow::Result<()> {
    let mut cluster = common::Cluster::new();
    cluster.start_first()?;
    cluster.join(0)?;
    cluster.join(0)?;
    cluster.wait_formed(&[0, 1, 2], 3).await?;
    let secret = "kind: secret\nprefix: simplecontainer.io/v1\nmeta: {group: app, name: db}\nspec:\n  data:\n    password: kept\n";
    apply(&cluster.client(0), secret).await?;
    cluster.kill9(1)?;
    cluster.kill9(2)?;
    cluster.stop(0)?;
    let mut cmd = common::smrmgr(cluster.dir.path());
    cmd.args(["start", "--force-new-cluster", "--data-dir"])
        .arg(&cluster.nodes[0].data_dir)
        .env("SMR_LOG", "info,openraft=warn");
    let said = common::run(cmd)?;
    println!("{said}");
    anyhow::ensure!(
        said.contains("removing smr-agent-2 (id 2), smr-agent-3 (id 3)"),
        "{said}"
    );
    let client = cluster.client(0);
    let health = eventually("a one-node leader", Duration::from_secs(30), || async {
        let h = client.health().await.ok()?;
        (h.state == "leader" && h.voters == [1]).then_some(h)
    })
    .await?;
    println!("{health:?}");
    anyhow::ensure!(!cluster.nodes[0].data_dir.join("seed.json").exists());
    client.get(&"secret/app/db".parse()?).await?;
    apply(&client, &busybox(1)).await?;
    // A restart without the flag is the forced cluster, as it is.
    cluster.stop(0)?;
    cluster.restart(0)?;
    let client = cluster.client(0);
    let joined = cluster.join(0)?;
    let ids = eventually("2 nodes, both members", Duration::from_secs(30), || async {
        let nodes = client.nodes().await.ok()?;
        let ids: Vec<u64> = nodes.iter().map(|n| n.id).collect();
        (nodes.len() == 2 && nodes.iter().all(|n| n.role != "joining")).then_some(ids)
    })
    .await?;
    anyhow::ensure!(ids == [1, 4], "{ids:?}");
    cluster
        .client(joined)
        .get(&"containers/busybox/busybox".parse()?)
        .await?;
    Ok(())
}

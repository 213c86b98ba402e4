//! The cluster CA on emulated VMs (issue 16): the CA survives the node that created the cluster,
//! and certificates are renewed before they expire while the cluster keeps working.
//!
//! Agents run with `--backend none --no-workloads` (no Docker needed): what is tested is the
//! control plane's TLS, joins and writes.

mod common;

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agent::definitions;
use anyhow::{Context as _, bail, ensure};
use common::eventually;
use common::vms::{
    VmCluster, agent_name, all_logs, api_context, apply_yaml as apply, data_dir, dial_ip,
    write_fresh,
};
use smr_tests::testbed::TestbedConfig;

const EXTRA: [&str; 3] = ["--backend", "none", "--no-workloads"];

fn config(name: &str, n: usize) -> TestbedConfig {
    TestbedConfig {
        docker: false,
        import_busybox: false,
        name_prefix: name.into(),
        ..TestbedConfig::new(n)
    }
}

fn configuration(name: &str, value: &str) -> String {
    common::vms::configuration("ca", name, value)
}

/// The body of a PEM text (its base64 lines), to look for in logs and answers.
fn pem_body(pem: &str) -> String {
    pem.lines().filter(|l| !l.starts_with("-----")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_node_joins_after_the_node_that_created_the_cluster_is_destroyed()
-> anyhow::Result<()> {
    let Some(mut cluster) = VmCluster::start_with(config("smrca", 4))? else {
        return Ok(());
    };
    let result = survive_first_node(&mut cluster).await;
    if result.is_err() {
        cluster.dump_logs();
    }
    result
}

async fn survive_first_node(cluster: &mut VmCluster) -> anyhow::Result<()> {
    cluster.start_agent(0, None, &EXTRA).await?;
    cluster.start_agent(1, Some(0), &EXTRA).await?;
    // VM 2 keeps its cluster key off its data dir.
    let off_disk = cluster.vm(2).dir.join("keys").join("cluster.key");
    let off_disk_arg = off_disk.display().to_string();
    let mut extra2 = EXTRA.to_vec();
    extra2.extend(["--cluster-key-file", off_disk_arg.as_str()]);
    cluster.start_agent(2, Some(0), &extra2).await?;
    let first_dir = data_dir(cluster.vm(0));
    let ca_key = std::fs::read_to_string(first_dir.join("pki/ca.key"))?;
    let cluster_key = std::fs::read_to_string(first_dir.join("pki/cluster.key"))?;
    let ca_pem = std::fs::read_to_string(first_dir.join("pki/ca.crt"))?;
    // Every node holds the cluster key (0600; VM 2 in its --cluster-key-file, not in its data
    // dir); only the first one a CA key file.
    for i in 0..3 {
        let dir = data_dir(cluster.vm(i)).join("pki");
        ensure!(
            dir.join("cluster.key").exists() == (i != 2),
            "node {i}: pki/cluster.key"
        );
        let key = if i == 2 {
            off_disk.clone()
        } else {
            dir.join("cluster.key")
        };
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key)
            .with_context(|| format!("{}", key.display()))?
            .permissions()
            .mode();
        ensure!(mode & 0o777 == 0o600, "{}: mode {mode:o}", key.display());
        ensure!(std::fs::read_to_string(&key)? == cluster_key);
        ensure!(dir.join("ca.key").exists() == (i == 0), "node {i}: ca.key");
    }
    let client1 = cluster.client(1);
    apply(&client1, &configuration("before", "1")).await?;

    // The node that created the cluster is lost: agent killed, data dir gone, removed.
    let pid = cluster.agents[0].take().context("agent 0 runs")?;
    cluster.vm(0).signal(pid, "KILL")?;
    cluster.vm(0).stop(pid, Duration::from_secs(5))?;
    std::fs::remove_dir_all(&first_dir)?;
    eventually("node 1 to be removed", Duration::from_secs(60), || {
        let client = cluster.client(1);
        async move { client.remove_node(1).await.ok() }
    })
    .await?;

    // A token minted on another node (`smrmgr token` on VM 1) lets a new VM join through it.
    cluster.start_agent(3, Some(1), &EXTRA).await?;
    let new_dir = data_dir(cluster.vm(3)).join("pki");
    ensure!(std::fs::read_to_string(new_dir.join("ca.crt"))? == ca_pem);
    ensure!(std::fs::read_to_string(new_dir.join("cluster.key"))? == cluster_key);
    ensure!(!new_dir.join("ca.key").exists());

    // The cluster works: three healthy members, the new one among the voters; writes through
    // the new node, read back linearizably through another.
    let client3 = cluster.client(3);
    let nodes = eventually("3 healthy voters", Duration::from_secs(60), || {
        let client = cluster.client(3);
        async move {
            let nodes = client.nodes().await.ok()?;
            (nodes.len() == 3
                && nodes
                    .iter()
                    .all(|n| n.health == "healthy" && n.role == "voter"))
            .then_some(nodes)
        }
    })
    .await?;
    let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
    ensure!(
        names.contains(&agent_name(cluster.vm(3)).as_str()),
        "{names:?}"
    );
    apply(&client3, &configuration("after", "2")).await?;
    let key: definitions::ObjectKey = "configuration/ca/after".parse()?;
    cluster.client(2).get(&key).await?;
    cluster
        .client(2)
        .get(&"configuration/ca/before".parse()?)
        .await?;
    // `nodes -o wide` has the expiry column.
    let out = cluster
        .smrctl_on(3)
        .args(["nodes", "-o", "wide"])
        .output()?;
    ensure!(out.status.success(), "{out:?}");
    let table = String::from_utf8_lossy(&out.stdout);
    ensure!(table.contains("CERT EXPIRES"), "{table}");

    // Neither the CA key nor the cluster key shows in a log, an API answer or `smrctl get`.
    let logs = all_logs(cluster);
    let ca_body = pem_body(&ca_key);
    let key_hex = cluster_key
        .trim()
        .trim_start_matches("SMRKEY-1-")
        .to_string();
    ensure!(!logs.contains(&ca_body[..40]), "the CA key is in a log");
    ensure!(!logs.contains(&key_hex), "the cluster key is in a log");
    for args in [
        vec!["nodes", "-o", "json"],
        vec!["get", "configuration/ca/after", "-o", "json"],
        vec!["list", "-o", "json"],
    ] {
        let out = cluster.smrctl_on(2).args(&args).output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        ensure!(out.status.success(), "smrctl {args:?}: {out:?}");
        ensure!(
            !text.contains(&ca_body[..40]) && !text.contains(&key_hex),
            "{args:?}"
        );
    }

    // VM 2 without its --cluster-key-file (kept in node.json) does not start, and says why;
    // with the file back it does.
    cluster.stop_agent(2)?;
    let aside = off_disk.with_extension("aside");
    std::fs::rename(&off_disk, &aside)?;
    let docker_host = cluster.vm(2).docker_host.clone();
    let mut cmd = cluster.smrmgr_on(2, &["start", "--foreground", "--docker-host", &docker_host]);
    let out = smr_tests::testbed::output_with_timeout(&mut cmd, Duration::from_secs(60))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success(),
        "started without its cluster key: {out:?}"
    );
    ensure!(
        stderr.contains("--cluster-key-file") && stderr.contains("no such file"),
        "{stderr}"
    );
    std::fs::rename(&aside, &off_disk)?;
    cluster.restart_agent(2).await?;
    ensure!(!data_dir(cluster.vm(2)).join("pki/cluster.key").exists());
    Ok(())
}

/// `notBefore` and `notAfter` of VM `i`'s node certificate on disk.
fn node_cert_validity(dir: &Path) -> anyhow::Result<(SystemTime, SystemTime, String)> {
    let pem = std::fs::read_to_string(dir.join("pki/node.crt"))?;
    let (nb, na) = agent::pki::validity(&pem)?;
    Ok((nb, na, pem))
}

/// Starts the agent of VM `i` with a short certificate lifetime, creating the cluster
/// (`join: None`) or joining through VM `join`, and waits until it serves.
async fn start_short_lived(
    cluster: &mut VmCluster,
    i: usize,
    join: Option<usize>,
    lifetime_s: u64,
) -> anyhow::Result<()> {
    let vm = cluster.vm(i).clone();
    let mut args: Vec<String> = [
        "start",
        "--foreground",
        "-a",
        &agent_name(&vm),
        "-d",
        &vm.name,
        "-n",
        &vm.name,
        "--ip",
        &vm.ip.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(EXTRA.iter().map(|s| s.to_string()));
    if let Some(j) = join {
        args.extend([
            "-j".to_string(),
            format!("{}:1443", dial_ip(cluster.vm(j))),
            "--token".to_string(),
            cluster.token(j)?,
        ]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut cmd = cluster.smrmgr_on(i, &args);
    cmd.env(agent::renewal::TEST_LIFETIME_ENV, lifetime_s.to_string());
    let spawned = vm.spawn(&format!("agent-{}", vm.index), cmd)?;
    cluster.agents[i] = Some(spawned.pid);
    common::vms::serving(
        &vm,
        &format!("agent on {} to serve", vm.name),
        Duration::from_secs(60),
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn short_lived_certificates_are_renewed_while_writes_continue() -> anyhow::Result<()> {
    let Some(mut cluster) = VmCluster::start_with(config("smrcr", 3))? else {
        return Ok(());
    };
    let result = renewals(&mut cluster).await;
    if result.is_err() {
        cluster.dump_logs();
    }
    result
}

async fn renewals(cluster: &mut VmCluster) -> anyhow::Result<()> {
    const LIFETIME_S: u64 = 60;
    start_short_lived(cluster, 0, None, LIFETIME_S).await?;
    start_short_lived(cluster, 1, Some(0), LIFETIME_S).await?;
    start_short_lived(cluster, 2, Some(0), LIFETIME_S).await?;
    let dirs: Vec<_> = (0..3).map(|i| data_dir(cluster.vm(i))).collect();
    let mut first = Vec::new();
    for dir in &dirs {
        let (nb, na, pem) = node_cert_validity(dir)?;
        let lifetime = na.duration_since(nb)?;
        ensure!(
            lifetime == Duration::from_secs(LIFETIME_S + LIFETIME_S / 10),
            "lifetime {lifetime:?}"
        );
        first.push((na, pem));
    }
    let last_expiry = first.iter().map(|(na, _)| *na).max().context("3 nodes")?;

    // Writes through every node in turn, each with a fresh client (a fresh TLS connection
    // with the admin certificate of the node's context as it is then) until well past the
    // last original expiry.
    let until = last_expiry + Duration::from_secs(20);
    let mut writes = 0;
    while SystemTime::now() < until {
        let i = writes % 3;
        if let Err(e) = write_fresh(&dirs[i], "ca", writes).await {
            bail!(
                "write {writes} through node {i} failed at {:?} after the start: {e:#}",
                SystemTime::now().duration_since(UNIX_EPOCH)?
            );
        }
        writes += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    ensure!(writes > 100, "only {writes} writes");

    // Every node presents a renewed certificate, valid now, past its first one's expiry, and
    // the cluster answers: three healthy nodes with their new expiry dates.
    let now = SystemTime::now();
    for (i, dir) in dirs.iter().enumerate() {
        let (nb, na, pem) = node_cert_validity(dir)?;
        ensure!(pem != first[i].1, "node {i} kept its first certificate");
        ensure!(
            na > first[i].0 && nb <= now && now < na,
            "node {i}: {nb:?}..{na:?}"
        );
        let admin = std::fs::read_to_string(dir.join("pki/admin.crt"))?;
        let (_, admin_na) = agent::pki::validity(&admin)?;
        ensure!(admin_na > now, "node {i}'s admin certificate expired");
    }
    let nodes = cluster.client(0).nodes().await?;
    ensure!(nodes.len() == 3, "{nodes:?}");
    for n in &nodes {
        ensure!(n.health == "healthy", "{n:?}");
        let at = n.cert_expires_ms.context("cert_expires_ms")?;
        let now_ms = now.duration_since(UNIX_EPOCH)?.as_millis() as u64;
        ensure!(at > now_ms, "{}: expires at {at}, now {now_ms}", n.name);
    }
    // The metric shows the certificate presented now.
    let ctx = api_context(cluster.vm(1))?;
    let identity = agent::pki::Identity::new(ctx.cert_pem, ctx.key_pem, ctx.ca_pem.clone())?;
    let http = agent::pki::reqwest_client(&ctx.ca_pem, Some(&identity), Duration::from_secs(10))?;
    // (Polled: a renewal may land between reading the metric and the file.)
    eventually(
        "the metric to match node.crt",
        Duration::from_secs(30),
        || {
            let http = http.clone();
            let url = format!("{}/metrics", ctx.api_url);
            let dir = dirs[1].clone();
            async move {
                let text = http.get(url).send().await.ok()?.text().await.ok()?;
                let (_, na, _) = node_cert_validity(&dir).ok()?;
                let want = format!(
                    "smr_certificate_expiry_timestamp_seconds{{certificate=\"node\"}} {}.0",
                    na.duration_since(UNIX_EPOCH).ok()?.as_secs()
                );
                text.contains(&want).then_some(())
            }
        },
    )
    .await?;
    let logs = all_logs(cluster);
    ensure!(
        logs.matches("renewed this node's certificates").count() >= 3,
        "fewer than 3 renewals logged"
    );
    Ok(())
}

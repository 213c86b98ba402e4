//! `smrmgr ca rotate` on emulated VMs (issue 16): the cluster CA is replaced through a
//! cross-signed transition while writes go through every node over new TLS connections, and no
//! write fails. Afterwards every node's certificate is of the new CA, the old CA is trusted no
//! longer, a token of before is refused, a new node joins with a fresh token and `smrctl` works
//! with the rotated `admin.context`.
//!
//! Agents run with `--backend none --no-workloads` (no Docker needed): what is tested is the
//! control plane's TLS, joins and writes.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use agent::client::Context;
use agent::pki::{self, Identity};
use anyhow::{Context as _, bail, ensure};
use common::vms::{VmCluster, data_dir, dial_ip, write_fresh};
use smr_tests::testbed::TestbedConfig;

const EXTRA: [&str; 3] = ["--backend", "none", "--no-workloads"];
const GROUP: &str = "rotate";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_ca_is_rotated_while_writes_go_through_every_node() -> anyhow::Result<()> {
    let config = TestbedConfig {
        docker: false,
        import_busybox: false,
        name_prefix: "smrrot".into(),
        ..TestbedConfig::new(4)
    };
    let Some(mut cluster) = VmCluster::start_with(config)? else {
        return Ok(());
    };
    let result = rotate(&mut cluster).await;
    if result.is_err() {
        cluster.dump_logs();
    }
    result
}

/// The fingerprints of the certificates of a PEM file.
fn fingerprints(path: &std::path::Path) -> anyhow::Result<Vec<String>> {
    let pem = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    Ok(pki::pem_fingerprints(&pem)?)
}

/// `<prefix>.crt`, `<prefix>.key` and `ca.crt` of a node's `pki/` as they are now, read only
/// (`Identity::load` would finish a replacement the running agent is making).
fn read_identity(pki_dir: &std::path::Path, prefix: &str) -> anyhow::Result<Identity> {
    let read = |name: String| std::fs::read_to_string(pki_dir.join(name));
    Ok(Identity::new(
        read(format!("{prefix}.crt"))?,
        read(format!("{prefix}.key"))?,
        read("ca.crt".into())?,
    )?)
}

/// Waits until the traffic counted `n` more writes in `done`.
async fn more_writes(done: &Arc<AtomicUsize>, n: usize) -> anyhow::Result<()> {
    let from = done.load(Ordering::Relaxed);
    let what = format!("{n} more writes");
    common::eventually(&what, Duration::from_secs(60), || {
        let count = done.load(Ordering::Relaxed);
        async move { (count >= from + n).then_some(()) }
    })
    .await
}

async fn rotate(cluster: &mut VmCluster) -> anyhow::Result<()> {
    cluster.start_agent(0, None, &EXTRA).await?;
    cluster.start_agent(1, Some(0), &EXTRA).await?;
    cluster.start_agent(2, Some(0), &EXTRA).await?;
    let dirs: Vec<_> = (0..3).map(|i| data_dir(cluster.vm(i))).collect();
    let old = fingerprints(&dirs[0].join("pki/ca.crt"))?;
    ensure!(old.len() == 1, "{old:?}");
    let old = old[0].clone();
    // What a client of the old CA holds: node 1's admin context of before.
    let old_admin = Context::load(&dirs[1].join("admin.context"))?;
    let token_before = cluster.token(0)?;

    // Writes through every node in turn, each with a fresh client (a fresh TLS connection with
    // the admin context of that node as it is then), until told to stop; the first failure
    // ends the traffic with its error.
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let traffic = {
        let (dirs, stop, done) = (dirs.clone(), stop.clone(), done.clone());
        tokio::spawn(async move {
            let mut writes = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let i = writes % 3;
                if let Err(e) = write_fresh(&dirs[i], GROUP, writes).await {
                    bail!("write {writes} through node {i} failed: {e:#}");
                }
                writes += 1;
                done.store(writes, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok(writes)
        })
    };
    more_writes(&done, 6).await?;
    let before_rotation = done.load(Ordering::Relaxed);

    // Node 2 lags: its agent is paused (SIGSTOP) before the rotation starts, and resumed once
    // the two others present certificates of the new CA. It still trusts only the old CA then:
    // it catches up with the cluster only because they present the cross-signed certificate
    // (without it, it would refuse their connections and the rotation could never finish).
    // Writes through it wait while it is paused; none may fail.
    let lagging = cluster.agents[2].context("agent 2 runs")?;
    cluster.vm(2).signal(lagging, "STOP")?;
    // The rotation, started on a node that did not create the cluster.
    let mut cmd = cluster.smrmgr_on(1, &["ca", "rotate", "--timeout", "90"]);
    let rotation = tokio::task::spawn_blocking(move || {
        smr_tests::testbed::output_with_timeout(&mut cmd, Duration::from_secs(150))
    });
    let paused = common::eventually(
        "nodes 0 and 1 to present certificates of the next CA",
        Duration::from_secs(60),
        || {
            let client = cluster.client(0);
            async move {
                let status = client.ca_status().await.ok()?;
                let next = status.next.clone()?;
                let done: Vec<u64> = status
                    .nodes
                    .iter()
                    .filter(|n| n.cert_ca.as_deref() == Some(next.as_str()))
                    .map(|n| n.id)
                    .collect();
                (done.len() == 2 && status.done == 2).then_some(status)
            }
        },
    )
    .await;
    // While the rotation waits for node 2, no join token is minted (a joiner would be refused).
    let token_during = cluster.token(0);
    cluster.vm(2).signal(lagging, "CONT")?;
    let paused = paused?;
    match token_during {
        Ok(token) => bail!("a token was minted during the rotation: {token}"),
        Err(e) => ensure!(
            format!("{e:#}").contains("a CA rotation (to ")
                && format!("{e:#}").contains("is under way"),
            "{e:#}"
        ),
    }
    ensure!(
        fingerprints(&dirs[2].join("pki/ca.crt"))? == vec![old.clone()],
        "the paused node changed its trust: {paused:?}"
    );
    let out = rotation.await??;
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    ensure!(out.status.success(), "smrmgr ca rotate: {out:?}");
    ensure!(
        stdout.contains("nodes done: 2/3") && stdout.contains("done: 3/3 nodes"),
        "{stdout}"
    );
    // Traffic goes on after the end (through every node, with their rotated contexts), then
    // must have had no failure.
    let after_rotation = done.load(Ordering::Relaxed);
    more_writes(&done, 6).await?;
    stop.store(true, Ordering::Relaxed);
    let writes = traffic.await??;
    println!(
        "writes: {before_rotation} before the rotation, {} during it, {} after it",
        after_rotation - before_rotation,
        writes - after_rotation
    );
    println!("no write failed; smrmgr ca rotate said:\n{stdout}");

    // Every node's certificate is of the new CA, which is the only CA it trusts.
    let status = cluster.client(0).ca_status().await?;
    let new = status.fingerprint.clone();
    ensure!(new != old && status.next.is_none(), "{status:?}");
    ensure!(
        status.previous.as_deref() == Some(old.as_str()),
        "{status:?}"
    );
    ensure!((status.done, status.total) == (3, 3), "{status:?}");
    for n in &status.nodes {
        ensure!(n.cert_ca.as_deref() == Some(new.as_str()), "{n:?}");
    }
    for (i, dir) in dirs.iter().enumerate() {
        // Each node drops the old CA and the cross certificate within a second of the finish
        // (its files are rewritten one after the other: polled until all are).
        let settled = |dir: &std::path::Path| -> anyhow::Result<bool> {
            let pki_dir = dir.join("pki");
            let node = read_identity(&pki_dir, "node")?;
            let admin = read_identity(&pki_dir, "admin")?;
            let ctx = Context::load(&dir.join("admin.context"))?;
            Ok(fingerprints(&pki_dir.join("ca.crt"))? == vec![new.clone()]
                && ctx.ca_pem == std::fs::read_to_string(pki_dir.join("ca.crt"))?
                && ctx.cert_pem == admin.cert_pem
                && node.leaf_ca_fingerprint()? == new
                && node.client_chain()?.len() == 1
                && admin.leaf_ca_fingerprint()? == new
                && admin.client_chain()?.len() == 1)
        };
        common::eventually(
            &format!("node {i} to trust and present only the new CA"),
            Duration::from_secs(30),
            || {
                let ok = matches!(settled(dir), Ok(true));
                async move { ok.then_some(()) }
            },
        )
        .await?;
    }

    // The old CA is trusted no longer: a client holding an old-CA certificate (and trusting
    // both CAs, so that only the server's check can refuse it) is refused by every node.
    let old_identity = Identity::new(
        old_admin.cert_pem.clone(),
        old_admin.key_pem.clone(),
        pki::join_pem(&[
            &old_admin.ca_pem,
            &std::fs::read_to_string(dirs[0].join("pki/ca.crt"))?,
        ]),
    )?;
    let http = pki::reqwest_client(
        &old_identity.ca_pem,
        Some(&old_identity),
        Duration::from_secs(10),
    )?;
    for i in 0..3 {
        let url = format!("https://{}:1443/api/v1/nodes", dial_ip(cluster.vm(i)));
        if let Ok(resp) = http.get(&url).send().await {
            bail!("node {i} answered an old-CA client: {}", resp.status());
        }
    }
    // A join token of before names the old CA: a joiner's TLS check refuses every node.
    let pinned_fp: pki::JoinToken = token_before.parse()?;
    ensure!(pinned_fp.ca_fingerprint == old);
    let pinned = pki::pinned_reqwest_client(&old, Duration::from_secs(10))?;
    let url = format!("https://{}:1443/api/v1/ca", dial_ip(cluster.vm(2)));
    match pinned.get(&url).send().await {
        Ok(resp) => bail!("a joiner of the old CA was answered: {}", resp.status()),
        Err(e) => {
            let chain = format!("{:?}", anyhow::Error::from(e));
            ensure!(chain.contains(pki::CA_MISMATCH), "{chain}");
        }
    }

    // A new node joins with a fresh token and gets the new CA.
    cluster.start_agent(3, Some(2), &EXTRA).await?;
    let joined = data_dir(cluster.vm(3));
    ensure!(fingerprints(&joined.join("pki/ca.crt"))? == vec![new.clone()]);
    write_fresh(&joined, GROUP, 200_000).await?;

    // smrctl with a rotated admin.context works: four healthy nodes.
    let out = cluster
        .smrctl_on(0)
        .args(["nodes", "-o", "json"])
        .output()?;
    ensure!(out.status.success(), "smrctl nodes: {out:?}");
    let nodes: Vec<agent::api::types::NodeView> = serde_json::from_slice(&out.stdout)?;
    ensure!(
        nodes.len() == 4 && nodes.iter().all(|n| n.health == "healthy"),
        "{nodes:?}"
    );
    let out = cluster.smrmgr_on(0, &["ca", "status"]).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(out.status.success(), "smrmgr ca status: {out:?}");
    ensure!(
        text.contains(&new) && text.matches("(current)").count() == 4,
        "{text}"
    );
    Ok(())
}

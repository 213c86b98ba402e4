//! `smrctl restart KIND/GROUP/NAME` on emulated VMs with real agents and Docker (issue 15): every
//! replica is replaced by a new container, one batch at a time, and the definition never has all
//! its replicas down at once.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use agent::client::Client;
use agent::definitions;
use common::vms::{VmCluster, all_ready, key};

const REPLICAS: usize = 4;

fn busybox() -> String {
    format!(
        "kind: containers\nprefix: simplecontainer.io/v1\nmeta:\n  group: busybox\n  name: busybox\nspec:\n  image: smr/busybox\n  tag: local\n  replicas: {REPLICAS}\n  entrypoint: [\"sleep\"]\n  args: [\"3600\"]\n  readiness:\n    - name: alive\n      command: [\"true\"]\n"
    )
}

/// Container id of each running busybox replica, over every VM's engine.
fn running(vms: &[smr_tests::testbed::Vm]) -> BTreeMap<String, String> {
    let mut ids = BTreeMap::new();
    for vm in vms {
        let Ok(out) = vm.docker_ok(&["ps", "--no-trunc", "--format", "{{.ID}} {{.Names}}"]) else {
            continue;
        };
        for line in out.lines() {
            if let Some((id, name)) = line.split_once(' ')
                && name.starts_with("busybox-busybox-")
            {
                ids.insert(id.to_string(), name.to_string());
            }
        }
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restart_replaces_every_replica_without_taking_all_down() -> anyhow::Result<()> {
    let Some(mut cluster) = VmCluster::start(2)? else {
        return Ok(());
    };
    cluster.start_all(&[]).await?;
    let client = cluster.client(0);
    let result = restart(&cluster, &client).await;
    if result.is_err() {
        println!("replicas: {:#?}", client.replicas(None).await);
        cluster.dump_logs();
    }
    result
}

async fn restart(cluster: &VmCluster, client: &Client) -> anyhow::Result<()> {
    client
        .apply(&definitions::parse_str("b.yaml", &busybox())?, false, None)
        .await?;
    let before = all_ready(client, REPLICAS, Duration::from_secs(120)).await?;
    let vms: Vec<_> = (0..2).map(|i| cluster.vm(i).clone()).collect();
    let old = running(&vms);
    anyhow::ensure!(old.len() == REPLICAS, "{old:?}");

    // Sample the engines and the API while the restart runs.
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (stop, client, vms) = (stop.clone(), client.clone(), vms.clone());
        tokio::spawn(async move {
            let (mut min_running, mut min_ready, mut samples) = (usize::MAX, usize::MAX, 0);
            while !stop.load(Ordering::SeqCst) {
                let vms2 = vms.clone();
                let now = tokio::task::spawn_blocking(move || running(&vms2))
                    .await
                    .unwrap_or_default();
                min_running = min_running.min(now.len());
                if let Ok(replicas) = client.replicas(Some(&key())).await {
                    min_ready = min_ready.min(replicas.iter().filter(|r| r.ready).count());
                }
                samples += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (min_running, min_ready, samples)
        })
    };
    let out = tokio::task::spawn_blocking({
        let mut cmd = cluster.smrctl_on(0);
        cmd.args(["restart", "containers/busybox/busybox", "--timeout", "3m"]);
        move || common::run(cmd)
    })
    .await?;
    stop.store(true, Ordering::SeqCst);
    let (min_running, min_ready, samples) = watcher.await?;
    let out = out?;
    println!("{out}");
    println!("restart: {samples} samples, min running {min_running}, min ready {min_ready}");
    anyhow::ensure!(
        out.contains("containers/busybox/busybox restart started"),
        "{out}"
    );
    anyhow::ensure!(samples >= 5, "too few samples ({samples})");
    anyhow::ensure!(min_running >= 1, "every replica was down at once");
    anyhow::ensure!(min_ready >= 1, "no replica was ready at one point");

    // Every replica is a new container, and the old ones are gone.
    let after = all_ready(client, REPLICAS, Duration::from_secs(60)).await?;
    let new = common::eventually(
        "only new containers running",
        Duration::from_secs(60),
        || {
            let now = running(&vms);
            let fresh = now.len() == REPLICAS && now.keys().all(|id| !old.contains_key(id));
            async move { fresh.then_some(now) }
        },
    )
    .await?;
    let generations_before: Vec<u64> = before.iter().map(|r| r.generation).collect();
    anyhow::ensure!(
        after
            .iter()
            .all(|r| !generations_before.is_empty() && r.generation > generations_before[0]),
        "generations: before {generations_before:?}, after {:?}",
        after.iter().map(|r| r.generation).collect::<Vec<_>>()
    );
    println!("replaced: {new:?}");
    Ok(())
}

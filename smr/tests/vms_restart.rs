//! `smrctl restart KIND/GROUP/NAME` on emulated VMs with real agents and Docker (issue 15): every
//! replica is replaced by a new container, one batch at a time, and the definition never has all
//! its replicas down at once.

mod common;

use std::time::Duration;

use agent::client::Client;
use agent::definitions;
use common::vms::{VmCluster, all_ready, floor_while, key, running_named};

const REPLICAS: usize = 4;
const PREFIX: &str = "busybox-busybox-";

fn busybox() -> String {
    format!(
        "kind: containers\nprefix: simplecontainer.io/v1\nmeta:\n  group: busybox\n  name: busybox\nspec:\n  image: smr/busybox\n  tag: local\n  replicas: {REPLICAS}\n  entrypoint: [\"sleep\"]\n  args: [\"3600\"]\n  readiness:\n    - name: alive\n      command: [\"true\"]\n"
    )
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
    let old = running_named(&vms, PREFIX);
    anyhow::ensure!(old.len() == REPLICAS, "{old:?}");

    // Sample the engines and the API while the restart runs.
    let mut cmd = cluster.smrctl_on(0);
    cmd.args(["restart", "containers/busybox/busybox", "--timeout", "3m"]);
    let (out, floor) = floor_while(vms.clone(), client, Some(key()), PREFIX, cmd).await?;
    println!("{out}");
    println!("restart: {floor:?}");
    anyhow::ensure!(
        out.contains("containers/busybox/busybox restart started"),
        "{out}"
    );
    anyhow::ensure!(floor.samples >= 5, "too few samples ({floor:?})");
    anyhow::ensure!(floor.running >= 1, "every replica was down at once");
    anyhow::ensure!(floor.ready >= 1, "no replica was ready at one point");

    // Every replica is a new container, and the old ones are gone.
    let after = all_ready(client, REPLICAS, Duration::from_secs(60)).await?;
    let new = common::eventually(
        "only new containers running",
        Duration::from_secs(60),
        || {
            let now = running_named(&vms, PREFIX);
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

//! Issue 7 on the testbed: a 2-VM smr cluster keeping its state in a 3-member etcd cluster (on
//! the testbed bridge address, which the VMs reach) runs the container and DNS scenarios.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use agent::api::types::ReplicaView;
use agent::definitions;
use common::vms::{VmCluster, all_ready};
use smr_tests::etcd::EtcdCluster;

const IMAGE: &str = "smr/busybox";
const TAG: &str = "local";

fn busybox(replicas: u32) -> String {
    format!(
        "kind: containers\nprefix: simplecontainer.io/v1\nmeta:\n  group: busybox\n  name: busybox\nspec:\n  image: {IMAGE}\n  tag: {TAG}\n  replicas: {replicas}\n  spread:\n    spread: uniform\n  entrypoint: [\"sleep\"]\n  args: [\"3600\"]\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn containers_and_dns_on_two_vms_with_the_state_in_etcd() -> anyhow::Result<()> {
    let Some(mut cluster) = VmCluster::start(2)? else {
        return Ok(());
    };
    let ip = cluster.testbed.bridge_ip();
    let etcd = tokio::task::spawn_blocking(move || EtcdCluster::start_on(3, ip)).await??;
    let url = etcd.url();
    let extra = ["--store", url.as_str(), "--etcd-prefix", "/smr-vms/"];
    let result = match cluster.start_all(&extra).await {
        Ok(()) => scenario(&cluster).await,
        Err(e) => Err(e),
    };
    if result.is_err() {
        cluster.dump_logs();
    }
    result
}

async fn scenario(cluster: &VmCluster) -> anyhow::Result<()> {
    let client = cluster.client(1);
    let health = client.health().await?;
    assert_eq!(
        health.voters.len(),
        2,
        "both agents are members: {health:?}"
    );
    client
        .apply(&definitions::parse_str("t.yaml", &busybox(2))?, false, None)
        .await?;
    let replicas = all_ready(&client, 2, Duration::from_secs(90)).await?;
    let nodes: BTreeMap<u64, &ReplicaView> = replicas.iter().map(|r| (r.node, r)).collect();
    assert_eq!(nodes.len(), 2, "uniform spread over 2 VMs: {replicas:?}");
    // Over the overlay by IP, and by name through the *.private DNS.
    for (from, to) in [(&replicas[0], &replicas[1]), (&replicas[1], &replicas[0])] {
        let vm = cluster.vm(from.node as usize - 1);
        let target = to.ip.as_deref().expect("replica ip");
        vm.docker_ok(&["exec", &from.name, "ping", "-c", "2", "-W", "2", target])?;
        let name = format!("cluster.busybox.{}.private", to.name);
        vm.docker_ok(&["exec", &from.name, "ping", "-c", "2", "-W", "2", &name])?;
        eprintln!("{} on {} reached {name} ({target})", from.name, vm.name);
    }
    Ok(())
}

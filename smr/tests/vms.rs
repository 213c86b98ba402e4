//! End to end on emulated VMs (network namespaces, one dockerd each): containers placed and run
//! by the cluster (issue 3), reaching each other over the overlay (issue 4) and by name (issue 5).

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use agent::api::types::ReplicaView;
use agent::client::Client;
use agent::definitions::{self, ObjectKey};
use common::eventually;
use common::vms::VmCluster;

const IMAGE: &str = "smr/busybox";
const TAG: &str = "local";

fn busybox(replicas: u32, tag: &str) -> String {
    format!(
        "kind: containers\nprefix: simplecontainer.io/v1\nmeta:\n  group: busybox\n  name: busybox\nspec:\n  image: {IMAGE}\n  tag: {tag}\n  replicas: {replicas}\n  entrypoint: [\"sleep\"]\n  args: [\"3600\"]\n"
    )
}

fn key() -> ObjectKey {
    "containers/busybox/busybox".parse().expect("key")
}

async fn apply(client: &Client, yaml: &str) -> anyhow::Result<()> {
    client.apply(&definitions::parse_str("test.yaml", yaml)?, false, None).await?;
    Ok(())
}

/// Waits until the object has exactly `n` replicas, all running and ready.
async fn all_ready(client: &Client, n: usize, timeout: Duration) -> anyhow::Result<Vec<ReplicaView>> {
    let key = key();
    eventually(&format!("{n} ready replicas"), timeout, || async {
        let replicas = client.replicas(Some(&key)).await.ok()?;
        (replicas.len() == n && replicas.iter().all(|r| r.ready && r.state == "running")).then_some(replicas)
    })
    .await
}

fn per_node(replicas: &[ReplicaView]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for r in replicas {
        *counts.entry(r.node_name.clone()).or_insert(0) += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_run_spread_and_reach_each_other_by_ip_and_by_name() -> anyhow::Result<()> {
    let Some(mut cluster) = VmCluster::start(3)? else { return Ok(()) };
    cluster.start_all(&[]).await?;
    let client = cluster.client(0);
    apply(&client, &busybox(5, TAG)).await?;
    let replicas = match all_ready(&client, 5, Duration::from_secs(90)).await {
        Ok(r) => r,
        Err(e) => {
            println!("replicas: {:#?}", client.replicas(None).await);
            cluster.dump_logs();
            return Err(e);
        }
    };

    // Spread uniformly: 2, 2, 1.
    let mut counts: Vec<usize> = per_node(&replicas).into_values().collect();
    counts.sort();
    assert_eq!(counts, vec![1, 2, 2], "{replicas:?}");

    // Names, hostnames and labels on the VMs' own Docker daemons.
    for r in &replicas {
        let vm = cluster.vm(r.node as usize - 1);
        let out = vm.docker_ok(&[
            "inspect",
            "-f",
            "{{.Name}} {{.Config.Hostname}} {{index .Config.Labels \"io.smr.managed\"}} {{index .Config.Labels \"io.smr.owner\"}}",
            &r.name,
        ])?;
        assert_eq!(out, format!("/{0} {0} true containers/busybox/busybox", r.name));
    }

    // Every pair pings by IP across VMs; the receiver sees the sender's own address (no NAT).
    let by_name: BTreeMap<&str, &ReplicaView> = replicas.iter().map(|r| (r.name.as_str(), r)).collect();
    let one = by_name["busybox-busybox-1"];
    let two = by_name["busybox-busybox-2"];
    assert_ne!(one.node, two.node, "replicas 1 and 2 run on different VMs");
    for (from, to) in [(one, two), (two, one)] {
        let vm = cluster.vm(from.node as usize - 1);
        let target = to.ip.as_deref().expect("ip");
        vm.docker_ok(&["exec", &from.name, "ping", "-c", "2", "-W", "2", target])?;
    }
    let receiver_vm = cluster.vm(two.node as usize - 1);
    let mut listener = receiver_vm
        .docker_cmd()
        .args(["exec", &two.name, "nc", "-l", "-p", "7000"])
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let sender_vm = cluster.vm(one.node as usize - 1);
    let two_ip = two.ip.clone().expect("ip");
    let sh = format!("hostname -i | nc -w 2 {two_ip} 7000");
    let sent = eventually("a TCP connection across VMs", Duration::from_secs(20), || {
        let ok = sender_vm.docker(&["exec", &one.name, "sh", "-c", &sh]).map(|o| o.status.success()).unwrap_or(false);
        async move { ok.then_some(()) }
    })
    .await;
    if sent.is_err() {
        let _ = listener.kill();
    }
    let received = listener.wait_with_output()?;
    sent?;
    assert_eq!(String::from_utf8_lossy(&received.stdout).trim(), one.ip.as_deref().unwrap_or_default());

    // By name: the seed scenario, both directions, and the headless name.
    for (from, to) in [(one, two), (two, one)] {
        let vm = cluster.vm(from.node as usize - 1);
        let name = format!("cluster.busybox.{}.private", to.name);
        vm.docker_ok(&["exec", &from.name, "ping", "-c", "3", "-W", "2", &name])?;
    }
    let vm = cluster.vm(one.node as usize - 1);
    let out = vm.docker_ok(&["exec", &one.name, "nslookup", "cluster.busybox.busybox.private"])?;
    for r in &replicas {
        assert!(out.contains(r.ip.as_deref().unwrap_or("?")), "headless name lists {}: {out}", r.name);
    }

    // A container reaches the outside of the cluster (the underlay bridge's host address)
    // through masquerading.
    let host = cluster.testbed.bridge_ip().to_string();
    vm.docker_ok(&["exec", &one.name, "ping", "-c", "2", "-W", "2", &host])?;
    Ok(())
}

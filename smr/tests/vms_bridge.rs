//! Bridge networks (`driver: bridge`, node-local, issue 15) and masquerading of overlay networks
//! on 3 emulated VMs (vxlan backend).
//!
//! - Two replicas on VM 1 on the bridge network `local` reach each other by IP and by name (its
//!   node's DNS answers `local.net.<name>.private`); a replica on VM 2 on a network of the same
//!   name and subnet neither resolves them (VM 2's DNS does not know them) nor reaches them; VM 3,
//!   which runs no replica of `local`, has no such Docker network.
//! - Deleting the used network is refused naming its users; once they are gone it is deleted and
//!   its Docker network is gone on every VM.
//! - A replica whose first network is the overlay network `front` reaches the testbed host's
//!   bridge address (outside the cluster), seen there from its VM's address (masqueraded); the
//!   masquerading chain goes with the network.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use agent::client::Client;
use agent::definitions::ObjectKey;
use common::eventually;
use common::vms::{
    VmCluster, addresses, apply_yaml, docker_networks, net_network, net_replica, pings,
    ready_replicas, resolve, run_scenario,
};

fn key(text: &str) -> ObjectKey {
    text.parse().expect("key")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bridge_networks_stay_on_their_node_and_overlay_networks_reach_out() -> anyhow::Result<()> {
    run_scenario(3, &["--backend", "vxlan"], async |cluster, client| {
        scenario(cluster, client).await
    })
    .await
}

async fn scenario(cluster: &VmCluster, client: &Client) -> anyhow::Result<()> {
    let yaml = [
        net_network("local", Some("bridge"), "172.30.0.0/24"),
        net_network("front", None, "10.20.0.0/16"),
        net_replica("a", 1, &["local"]),
        net_replica("b", 1, &["local"]),
        net_replica("c", 2, &["local"]),
        net_replica("f", 2, &["front"]),
    ]
    .join("---\n");
    apply_yaml(client, &yaml).await?;
    ready_replicas(client, None, 4, Duration::from_secs(120)).await?;

    // The bridge network exists where a replica joins it, with its subnet; not on VM 3.
    let a = addresses(cluster, 0, "net-a-1")?;
    let b = addresses(cluster, 0, "net-b-1")?;
    let c = addresses(cluster, 1, "net-c-1")?;
    let names = |m: &BTreeMap<String, String>| m.keys().cloned().collect::<Vec<_>>();
    assert_eq!(names(&a), vec!["smr.net.local"]);
    assert_eq!(names(&c), vec!["smr.net.local"]);
    for ip in [
        &a["smr.net.local"],
        &b["smr.net.local"],
        &c["smr.net.local"],
    ] {
        assert!(ip.starts_with("172.30.0."), "{a:?} {b:?} {c:?}");
    }
    assert!(docker_networks(cluster.vm(0)).contains("smr.net.local"));
    assert!(docker_networks(cluster.vm(1)).contains("smr.net.local"));
    assert!(!docker_networks(cluster.vm(2)).contains("smr.net.local"));

    // On VM 1: by IP, and by name through VM 1's DNS.
    eventually("a to reach b by IP", Duration::from_secs(30), || async {
        pings(cluster, 0, "net-a-1", &b["smr.net.local"]).then_some(())
    })
    .await?;
    eventually(
        "VM 1 to serve local.net.b",
        Duration::from_secs(30),
        || async {
            (resolve(cluster, 0, "local.net.b.private").ok()? == vec![b["smr.net.local"].clone()])
                .then_some(())
        },
    )
    .await?;
    assert_eq!(
        resolve(cluster, 0, "local.net.net-a-1.private")?,
        vec![a["smr.net.local"].clone()]
    );
    assert_eq!(
        resolve(cluster, 0, "local.net-b-1.private")?,
        vec![b["smr.net.local"].clone()]
    );
    assert!(pings(cluster, 0, "net-a-1", "local.net.net-b-1.private"));
    // VM 2's DNS answers its own replica's name only, VM 3's none of them; no `cluster.` name.
    eventually(
        "VM 2 to serve local.net.c",
        Duration::from_secs(30),
        || async {
            (resolve(cluster, 1, "local.net.c.private").ok()? == vec![c["smr.net.local"].clone()])
                .then_some(())
        },
    )
    .await?;
    assert!(resolve(cluster, 1, "local.net.a.private")?.is_empty());
    assert!(resolve(cluster, 2, "local.net.a.private")?.is_empty());
    assert!(resolve(cluster, 0, "local.net.c.private")?.is_empty());
    assert!(resolve(cluster, 0, "cluster.net.a.private")?.is_empty());
    let out = cluster
        .vm(1)
        .docker(&["exec", "net-c-1", "nslookup", "local.net.a.private"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !text
            .split("Name:")
            .nth(1)
            .unwrap_or_default()
            .contains("172.30."),
        "{text}"
    );
    // From VM 2, the address of a VM 1 replica that VM 2's own network does not hold is not
    // reached over it.
    let far = [&a["smr.net.local"], &b["smr.net.local"]]
        .into_iter()
        .find(|ip| **ip != c["smr.net.local"])
        .expect("a or b differs from c");
    assert!(!pings(cluster, 1, "net-c-1", far), "c reached {far}");

    // Masquerading: f's first network is front; it reaches the host's bridge address, which
    // sees VM 2's address, not f's.
    let f = addresses(cluster, 1, "net-f-1")?;
    assert!(f["smr.net.front"].starts_with("10.20.1."), "{f:?}");
    let host = cluster.testbed.bridge_ip().to_string();
    let vm2 = cluster.vm(1).ip.to_string();
    let capture = cluster.testbed.capture("masquerade")?;
    let reached = eventually("f to reach the host", Duration::from_secs(30), || async {
        pings(cluster, 1, "net-f-1", &host).then_some(())
    })
    .await;
    cluster.testbed.stop_capture(&capture)?;
    reached?;
    let from_vm = capture.count(&format!("icmp and src host {vm2} and dst host {host}"))?;
    let from_pool = capture.count("src net 10.20.0.0/16")?;
    assert!(from_vm > 0, "no echo request from {vm2}");
    assert_eq!(from_pool, 0, "packets from the pool crossed the bridge");
    for vm in [0, 1] {
        let rules = cluster
            .vm(vm)
            .run_ok("iptables", &["-t", "nat", "-S", "SMR-MASQ-NETS"])?;
        assert!(rules.contains("-j MASQUERADE"), "{rules}");
    }

    // Deleting the used bridge network is refused, naming its users.
    let err = client
        .delete(&[key("network/net/local")])
        .await
        .expect_err("local is in use")
        .to_string();
    assert!(
        err.contains(
            "network/net/local is used by containers/net/a, containers/net/b, containers/net/c"
        ),
        "{err}"
    );
    client.get(&key("network/net/local")).await?;

    // Without its users it goes, and its Docker network with it on every VM.
    client
        .delete(&[
            key("containers/net/a"),
            key("containers/net/b"),
            key("containers/net/c"),
        ])
        .await?;
    eventually("a, b and c to stop", Duration::from_secs(60), || async {
        let r = client.replicas(None).await.ok()?;
        (r.len() == 1).then_some(())
    })
    .await?;
    client.delete(&[key("network/net/local")]).await?;
    for vm in 0..3 {
        eventually(
            &format!("vm{} to drop network local", vm + 1),
            Duration::from_secs(60),
            || async { (!docker_networks(cluster.vm(vm)).contains("smr.net.local")).then_some(()) },
        )
        .await?;
    }

    // The overlay network gone, its masquerading chain goes too.
    client.delete(&[key("containers/net/f")]).await?;
    eventually("f to stop", Duration::from_secs(60), || async {
        let r = client.replicas(None).await.ok()?;
        r.is_empty().then_some(())
    })
    .await?;
    eventually("front to be deletable", Duration::from_secs(30), || async {
        client.delete(&[key("network/net/front")]).await.ok()
    })
    .await?;
    for vm in 0..3 {
        let v = cluster.vm(vm).clone();
        eventually(
            &format!("vm{} to drop SMR-MASQ-NETS", vm + 1),
            Duration::from_secs(60),
            || {
                let gone = !v
                    .run("iptables", &["-t", "nat", "-S", "SMR-MASQ-NETS"])
                    .map(|o| o.status.success())
                    .unwrap_or(true);
                async move { gone.then_some(()) }
            },
        )
        .await?;
    }
    Ok(())
}

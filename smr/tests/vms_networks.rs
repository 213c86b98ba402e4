//! Overlay networks (issue 15) on 3 emulated VMs (vxlan, then wireguard): networks `front` and `back`
//! beside `cluster`. A replica on `front` and `back` reaches both; one on `front` only cannot
//! reach one on `back` only (by IP, across VMs, both ways) nor a `cluster` one; names resolve per
//! network (real DNS queries to a node's server); deleting a used network is refused naming its
//! users; a deleted network leaves no Docker network, route or rule behind.

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
async fn overlay_networks_carry_isolate_resolve_and_go() -> anyhow::Result<()> {
    run_scenario(3, &["--backend", "vxlan"], async |cluster, client| {
        scenario(cluster, client).await
    })
    .await
}

/// The same on the wireguard backend (the default): the slices travel as the peers' allowed IPs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overlay_networks_on_wireguard() -> anyhow::Result<()> {
    run_scenario(3, &[], async |cluster, client| {
        scenario(cluster, client).await
    })
    .await
}

async fn scenario(cluster: &VmCluster, client: &Client) -> anyhow::Result<()> {
    let yaml = [
        net_network("front", Some("overlay"), "10.20.0.0/16"),
        net_network("back", Some("overlay"), "10.21.0.0/16"),
        net_replica("both", 1, &["front", "back"]),
        net_replica("fonly", 2, &["front"]),
        net_replica("bonly", 3, &["back"]),
        net_replica("conly", 3, &[]),
    ]
    .join("---\n");
    apply_yaml(client, &yaml).await?;
    ready_replicas(client, None, 4, Duration::from_secs(120)).await?;

    // Each replica is on the networks it asked for, on its node's slice of each pool.
    let both = addresses(cluster, 0, "net-both-1")?;
    let fonly = addresses(cluster, 1, "net-fonly-1")?;
    let bonly = addresses(cluster, 2, "net-bonly-1")?;
    let conly = addresses(cluster, 2, "net-conly-1")?;
    let names = |m: &BTreeMap<String, String>| m.keys().cloned().collect::<Vec<_>>();
    assert_eq!(names(&both), vec!["smr.net.back", "smr.net.front"]);
    assert_eq!(names(&fonly), vec!["smr.net.front"]);
    assert_eq!(names(&bonly), vec!["smr.net.back"]);
    assert_eq!(names(&conly), vec!["cluster"]);
    assert!(both["smr.net.front"].starts_with("10.20.0."), "{both:?}");
    assert!(both["smr.net.back"].starts_with("10.21.0."), "{both:?}");
    assert!(fonly["smr.net.front"].starts_with("10.20.1."), "{fonly:?}");
    assert!(bonly["smr.net.back"].starts_with("10.21.2."), "{bonly:?}");
    // The first network carries the default route.
    let route =
        cluster
            .vm(0)
            .docker_ok(&["exec", "net-both-1", "ip", "route", "show", "default"])?;
    assert!(route.contains("via 10.20.0.1"), "{route}");

    // On both networks: reaches both, across VMs (the isolation rules need the replicas'
    // reports, so the first pings may wait for a pass of the network loop).
    for (to, what) in [
        (&fonly["smr.net.front"], "front-only on vm2"),
        (&bonly["smr.net.back"], "back-only on vm3"),
    ] {
        eventually(
            &format!("net-both-1 to reach {what} ({to})"),
            Duration::from_secs(30),
            || async { pings(cluster, 0, "net-both-1", to).then_some(()) },
        )
        .await?;
    }
    eventually(
        "net-fonly-1 to reach net-both-1 on front",
        Duration::from_secs(30),
        || async { pings(cluster, 1, "net-fonly-1", &both["smr.net.front"]).then_some(()) },
    )
    .await?;
    // On one network only: nothing of the others, neither way.
    assert!(
        !pings(cluster, 1, "net-fonly-1", &bonly["smr.net.back"]),
        "front -> back"
    );
    assert!(
        !pings(cluster, 2, "net-bonly-1", &fonly["smr.net.front"]),
        "back -> front"
    );
    assert!(
        !pings(cluster, 1, "net-fonly-1", &both["smr.net.back"]),
        "front -> back of both"
    );
    assert!(
        !pings(cluster, 1, "net-fonly-1", &conly["cluster"]),
        "front -> cluster"
    );
    assert!(
        !pings(cluster, 2, "net-conly-1", &fonly["smr.net.front"]),
        "cluster -> front"
    );

    // Names per network, from every node's DNS server (each serves what the state says, once
    // its network loop has seen the reports).
    for vm in 0..3 {
        eventually(
            &format!("vm{} to serve back.net.both", vm + 1),
            Duration::from_secs(30),
            || async {
                (!resolve(cluster, vm, "back.net.both.private")
                    .ok()?
                    .is_empty())
                .then_some(())
            },
        )
        .await?;
    }
    for vm in 0..3 {
        let name = |n: &str| format!("{n}.private");
        assert_eq!(
            resolve(cluster, vm, &name("front.net.net-fonly-1"))?,
            vec![fonly["smr.net.front"].clone()]
        );
        assert_eq!(
            resolve(cluster, vm, &name("back.net-bonly-1"))?,
            vec![bonly["smr.net.back"].clone()]
        );
        assert_eq!(
            resolve(cluster, vm, &name("front.net.both"))?,
            vec![both["smr.net.front"].clone()]
        );
        assert_eq!(
            resolve(cluster, vm, &name("back.net.both"))?,
            vec![both["smr.net.back"].clone()]
        );
        assert_eq!(
            resolve(cluster, vm, &name("cluster.net.conly"))?,
            vec![conly["cluster"].clone()]
        );
        // Not on cluster, not on back: no such names.
        assert!(resolve(cluster, vm, &name("cluster.net.fonly"))?.is_empty());
        assert!(resolve(cluster, vm, &name("back.net.fonly"))?.is_empty());
    }
    // From inside a container on front only, through the node's server.
    let out =
        cluster
            .vm(1)
            .docker_ok(&["exec", "net-fonly-1", "nslookup", "front.net.both.private"])?;
    let answers = out.split("Name:").nth(1).unwrap_or_default();
    assert!(answers.contains(&both["smr.net.front"]), "{out}");

    // Deleting a used network is refused, naming its users; nothing is deleted.
    let err = client
        .delete(&[key("network/net/back")])
        .await
        .expect_err("back is in use")
        .to_string();
    assert!(
        err.contains("network/net/back is used by containers/net/bonly, containers/net/both"),
        "{err}"
    );
    client.get(&key("network/net/back")).await?;

    // Without its users it goes, and with it its Docker networks, routes and rules.
    client
        .delete(&[key("containers/net/both"), key("containers/net/bonly")])
        .await?;
    eventually(
        "both and bonly to stop",
        Duration::from_secs(60),
        || async {
            let r = client.replicas(None).await.ok()?;
            (r.len() == 2).then_some(())
        },
    )
    .await?;
    eventually("back to be deletable", Duration::from_secs(30), || async {
        client.delete(&[key("network/net/back")]).await.ok()
    })
    .await?;
    for vm in 0..3 {
        let v = cluster.vm(vm).clone();
        eventually(
            &format!("vm{} to drop network back", vm + 1),
            Duration::from_secs(60),
            || {
                let networks = docker_networks(&v);
                let routes = v.run_ok("ip", &["route", "show", "10.21.0.0/16"]);
                let rules = v.run_ok("iptables", &["-S", "SMR-NETS"]);
                async move {
                    let (routes, rules) = (routes.ok()?, rules.ok()?);
                    (networks.contains("smr.net.front")
                        && !networks.contains("smr.net.back")
                        && routes.trim().is_empty()
                        && rules.contains("10.20.0.0/16")
                        && !rules.contains("10.21."))
                    .then_some(())
                }
            },
        )
        .await?;
    }
    // The last network gone: the isolation chain goes too.
    client.delete(&[key("containers/net/fonly")]).await?;
    eventually("fonly to stop", Duration::from_secs(60), || async {
        let r = client.replicas(None).await.ok()?;
        (r.len() == 1).then_some(())
    })
    .await?;
    eventually("front to be deletable", Duration::from_secs(30), || async {
        client.delete(&[key("network/net/front")]).await.ok()
    })
    .await?;
    for vm in 0..3 {
        let v = cluster.vm(vm).clone();
        eventually(
            &format!("vm{} to drop its isolation chain", vm + 1),
            Duration::from_secs(60),
            || {
                let gone = !v
                    .run("iptables", &["-S", "SMR-NETS"])
                    .map(|o| o.status.success())
                    .unwrap_or(true);
                let networks = docker_networks(&v);
                async move { (gone && !networks.contains("smr.net.")).then_some(()) }
            },
        )
        .await?;
    }
    // The cluster network is as it was: conly still reaches a fresh cluster replica... and DNS.
    assert_eq!(
        resolve(cluster, 0, "cluster.net.conly.private")?,
        vec![conly["cluster"].clone()]
    );
    Ok(())
}

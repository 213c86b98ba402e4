//! End to end on emulated VMs (network namespaces, one dockerd each): containers placed and run
//! by the cluster (issue 3), reaching each other over the overlay (issue 4) and by name (issue 5).

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use agent::api::types::ReplicaView;
use agent::client::Client;
use agent::definitions::ObjectKey;
use common::eventually;
use common::vms::{VmCluster, all_ready, apply_yaml, key, run_scenario};

const IMAGE: &str = "smr/busybox";
const TAG: &str = "local";

fn busybox(replicas: u32, tag: &str) -> String {
    format!(
        "kind: containers\nprefix: simplecontainer.io/v1\nmeta:\n  group: busybox\n  name: busybox\nspec:\n  image: {IMAGE}\n  tag: {tag}\n  replicas: {replicas}\n  entrypoint: [\"sleep\"]\n  args: [\"3600\"]\n"
    )
}

/// One replica per VM pings one on every other VM, by IP.
fn ping_matrix(cluster: &VmCluster, replicas: &[ReplicaView]) -> anyhow::Result<()> {
    let mut one_per_node: BTreeMap<u64, &ReplicaView> = BTreeMap::new();
    for r in replicas {
        one_per_node.entry(r.node).or_insert(r);
    }
    for from in one_per_node.values() {
        for to in one_per_node.values().filter(|to| to.node != from.node) {
            let vm = cluster.vm(from.node as usize - 1);
            let target = to.ip.as_deref().expect("ip");
            vm.docker_ok(&["exec", &from.name, "ping", "-c", "2", "-W", "2", target])
                .map_err(|e| anyhow::anyhow!("{} -> {} ({target}): {e}", from.name, to.name))?;
        }
    }
    Ok(())
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
    let Some(mut cluster) = VmCluster::start(3)? else {
        return Ok(());
    };
    cluster.start_all(&[]).await?;
    let client = cluster.client(0);
    apply_yaml(&client, &busybox(5, TAG)).await?;
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
        assert_eq!(
            out,
            format!("/{0} {0} true containers/busybox/busybox", r.name)
        );
    }

    // Every pair pings by IP across VMs; the receiver sees the sender's own address (no NAT).
    let by_name: BTreeMap<&str, &ReplicaView> =
        replicas.iter().map(|r| (r.name.as_str(), r)).collect();
    let one = by_name["busybox-busybox-1"];
    let two = by_name["busybox-busybox-2"];
    assert_ne!(one.node, two.node, "replicas 1 and 2 run on different VMs");
    ping_matrix(&cluster, &replicas)?;
    let one_ip = one.ip.clone().unwrap_or_default();
    common::vms::tcp_send(&cluster, one, two, "hostname -i", &one_ip).await?;

    // smrctl exec runs in the replica on its VM, through any node, with the command's exit code.
    let mut exec = common::smrctl(&cluster.context(0));
    exec.args(["exec", &two.name, "--", "hostname"]);
    assert_eq!(common::run(exec)?.trim(), two.name);
    let mut exec = common::smrctl(&cluster.context(0));
    exec.args(["exec", &two.name, "--", "sh", "-c", "exit 4"]);
    assert_eq!(common::output(exec).status.code(), Some(4));

    // By name: the seed scenario, both directions, and the headless name.
    for (from, to) in [(one, two), (two, one)] {
        let vm = cluster.vm(from.node as usize - 1);
        let name = format!("cluster.busybox.{}.private", to.name);
        vm.docker_ok(&["exec", &from.name, "ping", "-c", "3", "-W", "2", &name])?;
    }
    let vm = cluster.vm(one.node as usize - 1);
    let out = vm.docker_ok(&[
        "exec",
        &one.name,
        "nslookup",
        "cluster.busybox.busybox.private",
    ])?;
    for r in &replicas {
        assert!(
            out.contains(r.ip.as_deref().unwrap_or("?")),
            "headless name lists {}: {out}",
            r.name
        );
    }

    // A container reaches the outside of the cluster (the underlay bridge's host address)
    // through masquerading.
    let host = cluster.testbed.bridge_ip().to_string();
    vm.docker_ok(&["exec", &one.name, "ping", "-c", "2", "-W", "2", &host])?;

    let result = pull_from_a_registry(&cluster, &client).await;
    if result.is_err() {
        println!("replicas: {:#?}", client.replicas(None).await);
        cluster.dump_logs();
    }
    result
}

/// The registry's user `smr` with the password `pull-secret` (bcrypt, as htpasswd writes it).
const REGISTRY_HTPASSWD: &str = "smr:$2b$04$BLxzJOpv5xdv3SM4YCijWemd60JBm7nItnK8OulPbhGb1I8P/Ns6m";
/// base64 of `smr:pull-secret`, as a Docker config.json keeps it.
const REGISTRY_AUTH: &str = "c21yOnB1bGwtc2VjcmV0";

/// A real registry (Debian's docker-registry, with htpasswd authentication) on VM 3: an image
/// no VM has is pulled on every node that runs a replica, once `registryAuth` gives the
/// credentials (looked up from a secret); without them the replicas say why they wait.
async fn pull_from_a_registry(cluster: &VmCluster, client: &Client) -> anyhow::Result<()> {
    let registry = cluster.vm(2);
    let addr = format!("{}:5000", registry.ip);
    let dir = registry.dir.join("registry");
    std::fs::create_dir_all(dir.join("data"))?;
    std::fs::write(dir.join("htpasswd"), format!("{REGISTRY_HTPASSWD}\n"))?;
    std::fs::write(
        dir.join("config.yml"),
        format!(
            "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\nauth:\n  htpasswd:\n    realm: smr-test\n    path: {}\n",
            dir.join("data").display(),
            dir.join("htpasswd").display()
        ),
    )?;
    let mut serve = registry.cmd("docker-registry");
    serve.arg("serve").arg(dir.join("config.yml"));
    registry.spawn("registry", serve)?;
    let ip = registry.ip;
    eventually(
        "the registry to listen",
        Duration::from_secs(30),
        || async move {
            tokio::net::TcpStream::connect((ip, 5000))
                .await
                .ok()
                .map(|_| ())
        },
    )
    .await?;

    // VM 1 pushes the test image with the credentials, then forgets it.
    let image = format!("{addr}/smr/pulled");
    let pusher = cluster.vm(0);
    let docker_config = tempfile::tempdir()?;
    std::fs::write(
        docker_config.path().join("config.json"),
        format!(r#"{{"auths":{{"{addr}":{{"auth":"{REGISTRY_AUTH}"}}}}}}"#),
    )?;
    pusher.docker_ok(&["tag", &format!("{IMAGE}:{TAG}"), &format!("{image}:v1")])?;
    let pushed = pusher
        .docker_cmd()
        .env("DOCKER_CONFIG", docker_config.path())
        .args(["push", &format!("{image}:v1")])
        .output()?;
    anyhow::ensure!(
        pushed.status.success(),
        "docker push: {}",
        String::from_utf8_lossy(&pushed.stderr)
    );
    pusher.docker_ok(&["rmi", &format!("{image}:v1")])?;

    let definition = |auth: &str| {
        format!(
            "kind: secret\nprefix: simplecontainer.io/v1\nmeta: {{group: reg, name: creds}}\nspec:\n  data: {{auth: {REGISTRY_AUTH}}}\n---\nkind: containers\nprefix: simplecontainer.io/v1\nmeta: {{group: reg, name: pulled}}\nspec:\n  image: {image}\n  tag: v1\n  replicas: 3\n  entrypoint: [sleep, \"3600\"]\n{auth}"
        )
    };
    let key: ObjectKey = "containers/reg/pulled".parse()?;
    // Without credentials the registry refuses: the replicas wait and say why.
    apply_yaml(client, &definition("")).await?;
    eventually(
        "the replicas to report the refused pull",
        Duration::from_secs(60),
        || async {
            let replicas = client.replicas(Some(&key)).await.ok()?;
            replicas
                .iter()
                .any(|r| {
                    r.message
                        .as_deref()
                        .is_some_and(|m| m.contains("could not be pulled") && m.contains(&image))
                })
                .then_some(())
        },
    )
    .await?;
    // With them, every node pulls it.
    let auth = "  registryAuth: (( lookup \"secret/reg/creds:auth\" ))\n";
    apply_yaml(client, &definition(auth)).await?;
    let pulled = eventually(
        "the pulled replicas to run",
        Duration::from_secs(90),
        || async {
            let replicas = client.replicas(Some(&key)).await.ok()?;
            (replicas.len() == 3 && replicas.iter().all(|r| r.ready)).then_some(replicas)
        },
    )
    .await?;
    let nodes: std::collections::BTreeSet<u64> = pulled.iter().map(|r| r.node).collect();
    assert_eq!(nodes.len(), 3, "one replica per VM: {pulled:?}");
    for r in &pulled {
        let vm = cluster.vm(r.node as usize - 1);
        let running = vm.docker_ok(&["inspect", "-f", "{{.Config.Image}}", &r.name])?;
        assert_eq!(running, format!("{image}:v1"));
    }
    // The password is nowhere in what the API shows.
    let shown = client.replicas(Some(&key)).await?;
    assert!(!format!("{shown:?}").contains("pull-secret"));
    client.delete(&[key, "secret/reg/creds".parse()?]).await?;
    Ok(())
}

/// `replica name -> container id` of the busybox replicas, as the VMs' Docker daemons list them.
fn containers_on_vms(cluster: &VmCluster) -> anyhow::Result<Vec<(usize, String, String)>> {
    let mut all = Vec::new();
    for (i, vm) in cluster.testbed.vms().iter().enumerate() {
        let out = vm.docker_ok(&[
            "ps",
            "-a",
            "--filter",
            "label=io.smr.managed=true",
            "--format",
            "{{.Names}} {{.ID}}",
        ])?;
        for line in out.lines() {
            if let Some((name, id)) = line.split_once(' ') {
                all.push((i, name.to_string(), id.to_string()));
            }
        }
    }
    Ok(all)
}

fn ids(replicas: &[ReplicaView]) -> BTreeMap<String, String> {
    replicas
        .iter()
        .map(|r| (r.name.clone(), r.container_id.clone().unwrap_or_default()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scale_roll_repair_restart_and_reschedule() -> anyhow::Result<()> {
    // Replicas of a silent node move after 8 s instead of the default 15 s.
    run_scenario(3, &["--node-timeout", "8s"], async |cluster, client| {
        lifecycle(cluster, client).await
    })
    .await
}

async fn lifecycle(cluster: &mut VmCluster, client: &Client) -> anyhow::Result<()> {
    apply_yaml(client, &busybox(5, TAG)).await?;
    all_ready(client, 5, Duration::from_secs(90)).await?;

    // Scale 5 -> 2 -> 4: the lowest indexes stay, untouched.
    apply_yaml(client, &busybox(2, TAG)).await?;
    let two = all_ready(client, 2, Duration::from_secs(60)).await?;
    let names: Vec<&str> = two.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, vec!["busybox-busybox-1", "busybox-busybox-2"]);
    eventually(
        "scaled-down containers removed",
        Duration::from_secs(30),
        || async { (containers_on_vms(cluster).ok()?.len() == 2).then_some(()) },
    )
    .await?;
    apply_yaml(client, &busybox(4, TAG)).await?;
    let four = all_ready(client, 4, Duration::from_secs(60)).await?;
    for (name, id) in ids(&two) {
        assert_eq!(
            ids(&four)[&name],
            id,
            "{name} kept its container when scaling"
        );
    }

    // Rolling update to another tag: never fewer than replicas - 1 ready.
    for vm in cluster.testbed.vms() {
        vm.docker_ok(&["tag", &format!("{IMAGE}:{TAG}"), &format!("{IMAGE}:v2")])?;
    }
    apply_yaml(client, &busybox(4, "v2")).await?;
    let key = key();
    let mut lowest_ready = usize::MAX;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let replicas = client.replicas(Some(&key)).await?;
        let ready = replicas.iter().filter(|r| r.ready).count();
        lowest_ready = lowest_ready.min(ready);
        if replicas.len() == 4 && replicas.iter().all(|r| r.ready && r.image.ends_with(":v2")) {
            break;
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the rollout to v2 did not finish: {replicas:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        lowest_ready >= 3,
        "never fewer than 3 of 4 ready during the rollout (saw {lowest_ready})"
    );
    let rolled = all_ready(client, 4, Duration::from_secs(10)).await?;
    for r in &rolled {
        let vm = cluster.vm(r.node as usize - 1);
        let image = vm.docker_ok(&["inspect", "-f", "{{.Config.Image}}", &r.name])?;
        assert_eq!(image, format!("{IMAGE}:v2"));
    }

    // `docker rm -f` of a replica is repaired.
    let victim = rolled[0].clone();
    cluster
        .vm(victim.node as usize - 1)
        .docker_ok(&["rm", "-f", &victim.name])?;
    eventually(
        "the removed replica to come back",
        Duration::from_secs(60),
        || async {
            let replicas = client.replicas(Some(&key)).await.ok()?;
            let back = replicas.iter().find(|r| r.name == victim.name)?;
            (back.ready && back.container_id != victim.container_id).then_some(())
        },
    )
    .await?;

    // A container that exits non-zero is restarted, with backoff, and shows it.
    let crasher = "kind: containers\nprefix: simplecontainer.io/v1\nmeta:\n  group: crash\n  name: crasher\nspec:\n  image: smr/busybox\n  tag: local\n  replicas: 1\n  entrypoint: [\"sh\", \"-c\", \"echo crashing; exit 3\"]\n";
    apply_yaml(client, crasher).await?;
    let crash_key: ObjectKey = "containers/crash/crasher".parse()?;
    let crashed = eventually(
        "the crashing replica to be restarted twice",
        Duration::from_secs(60),
        || async {
            let replicas = client.replicas(Some(&crash_key)).await.ok()?;
            replicas.into_iter().find(|r| r.restarts >= 2)
        },
    )
    .await?;
    assert!(!crashed.ready);
    assert!(
        ["crash-loop", "restarting", "exited"].contains(&crashed.state.as_str()),
        "{crashed:?}"
    );
    let events = client
        .events(0, Some("containers/crash/crasher"), Duration::ZERO)
        .await?;
    assert!(
        events
            .iter()
            .any(|e| e.reason == "CrashLoop" || e.reason == "BackOff"),
        "{events:?}"
    );
    // Its log is fetched from the node that runs it, through any node.
    let logs = cluster.client(2).logs(&crashed.name, Some(10)).await?;
    assert!(logs.logs.contains("crashing"), "{logs:?}");
    client.delete(&[crash_key]).await?;

    // An agent restart adopts its running containers: same container ids, nothing restarted.
    let before = ids(&all_ready(client, 4, Duration::from_secs(30)).await?);
    cluster.stop_agent(1)?;
    cluster.restart_agent(1).await?;
    let after = ids(&all_ready(client, 4, Duration::from_secs(60)).await?);
    assert_eq!(before, after, "containers kept across an agent restart");

    // A VM stops answering: its replicas run elsewhere; when it is back, no duplicates remain.
    let lost: Vec<String> = all_ready(client, 4, Duration::from_secs(10))
        .await?
        .iter()
        .filter(|r| r.node == 3)
        .map(|r| r.name.clone())
        .collect();
    cluster.stop_agent(2)?;
    cluster.testbed.cut(cluster.vm(2))?;
    let cut_at = std::time::Instant::now();
    let moved = eventually(
        "replicas of vm3 to run elsewhere",
        Duration::from_secs(90),
        || async {
            let replicas = client.replicas(Some(&key)).await.ok()?;
            (replicas.len() == 4 && replicas.iter().all(|r| r.ready && r.node != 3))
                .then_some(replicas)
        },
    )
    .await?;
    println!(
        "replicas of the silent VM ready elsewhere {:.1} s after it went silent (--node-timeout 8s)",
        cut_at.elapsed().as_secs_f64()
    );
    for name in &lost {
        assert!(moved.iter().any(|r| &r.name == name), "{name} rescheduled");
    }
    cluster.testbed.heal(cluster.vm(2))?;
    cluster.restart_agent(2).await?;
    eventually(
        "no duplicate replicas once vm3 is back",
        Duration::from_secs(60),
        || async {
            let all = containers_on_vms(cluster).ok()?;
            let mut names: Vec<&String> = all.iter().map(|(_, n, _)| n).collect();
            names.sort();
            let before = names.len();
            names.dedup();
            (before == names.len() && before == 4).then_some(())
        },
    )
    .await?;
    Ok(())
}

/// `ip`/`bridge` output of a VM's kernel state for the overlay device.
fn overlay_entries(vm: &smr_tests::testbed::Vm) -> anyhow::Result<(String, String, String)> {
    Ok((
        vm.run_ok("ip", &["neigh", "show", "dev", "smr.1"])?,
        vm.run_ok("bridge", &["fdb", "show", "dev", "smr.1"])?,
        vm.run_ok("ip", &["route", "show", "10.10.0.0/16"])?,
    ))
}

/// The vxlan backend (chosen explicitly: wireguard is the default): kernel entries follow nodes,
/// DNS follows replicas, and container traffic crosses the underlay in clear (the counterpart of
/// the wireguard capture check in `vms_wireguard.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overlay_and_dns_follow_nodes_and_replicas() -> anyhow::Result<()> {
    run_scenario(3, &["--backend", "vxlan"], async |cluster, client| {
        network_lifecycle(cluster, client).await
    })
    .await
}

async fn network_lifecycle(cluster: &mut VmCluster, client: &Client) -> anyhow::Result<()> {
    apply_yaml(client, &busybox(3, TAG)).await?;
    let replicas = all_ready(client, 3, Duration::from_secs(90)).await?;

    // VXLAN carries container traffic in clear over the underlay: a capture of the underlay
    // bridge sees UDP 8472 and the very bytes one container sends another.
    let (from, to) = (
        replicas
            .iter()
            .find(|r| r.node == 1)
            .expect("a replica on node 1"),
        replicas
            .iter()
            .find(|r| r.node == 2)
            .expect("a replica on node 2"),
    );
    let capture = cluster.testbed.capture("vxlan")?;
    let marker = common::vms::unique_marker("vxlan");
    common::vms::tcp_transfer(cluster, from, to, &marker).await?;
    let bytes = cluster.testbed.stop_capture(&capture)?;
    assert!(
        smr_tests::testbed::contains_bytes(&bytes, marker.as_bytes()),
        "the marker crosses the underlay in clear on vxlan"
    );
    assert!(
        capture.count("udp port 8472")? > 0,
        "no VXLAN packet captured"
    );

    // Every VM answers *.private on its cluster gateway, over UDP and TCP, from the VM itself.
    let nodes = client.nodes().await?;
    assert!(nodes.iter().all(|n| n.health == "healthy"));
    let gateways: Vec<String> = (0..3).map(|i| format!("10.10.{i}.1")).collect();
    let name = "cluster.busybox.busybox-busybox-3.private";
    let ip3 = replicas
        .iter()
        .find(|r| r.name == "busybox-busybox-3")
        .and_then(|r| r.ip.clone())
        .expect("ip");
    for (i, gw) in gateways.iter().enumerate() {
        let vm = cluster.vm(i);
        for transport in ["+notcp", "+tcp"] {
            let out = vm.run_ok("dig", &[&format!("@{gw}"), name, "A", "+short", transport])?;
            assert_eq!(out.trim(), ip3, "vm{} {transport}", i + 1);
        }
        let out = vm.run_ok(
            "dig",
            &[
                &format!("@{gw}"),
                "cluster.busybox.busybox-busybox-9.private",
                "A",
            ],
        )?;
        assert!(out.contains("NXDOMAIN"), "{out}");
    }
    // smrctl dns lists what a node serves.
    let records = client.dns().await?;
    assert!(
        records
            .iter()
            .any(|r| r.name == format!("{name}.") && r.addresses == vec![ip3.clone()]),
        "{records:?}"
    );

    // Scaling down removes the record on every node.
    apply_yaml(client, &busybox(2, TAG)).await?;
    for (i, gw) in gateways.iter().enumerate() {
        let vm = cluster.vm(i);
        eventually(
            &format!("the record of replica 3 to go on vm{}", i + 1),
            Duration::from_secs(30),
            || {
                let out = vm
                    .run_ok("dig", &[&format!("@{gw}"), name, "A"])
                    .unwrap_or_default();
                async move { out.contains("NXDOMAIN").then_some(()) }
            },
        )
        .await?;
    }

    // Deleting smr.1 by hand is repaired.
    let vm1 = cluster.vm(0).clone();
    vm1.run_ok("ip", &["link", "del", "smr.1"])?;
    eventually(
        "smr.1 to be recreated with its peers",
        Duration::from_secs(30),
        || {
            let entries = overlay_entries(&vm1)
                .map(|(n, f, _)| n.lines().count() == 2 && f.lines().count() == 2);
            async move { entries.unwrap_or(false).then_some(()) }
        },
    )
    .await?;

    // An agent restart does not churn the kernel entries.
    let before = overlay_entries(&vm1)?;
    cluster.stop_agent(0)?;
    cluster.restart_agent(0).await?;
    all_ready(client, 2, Duration::from_secs(60)).await?;
    assert_eq!(
        overlay_entries(&vm1)?,
        before,
        "no entry changed across an agent restart"
    );

    // A node leaves: its entries disappear on the others and its subnet is free again.
    let leaving = cluster.vm(2).clone();
    let mut leave = leaving.cmd(env!("CARGO_BIN_EXE_smrmgr"));
    leave
        .env("HOME", &leaving.dir)
        .args(["leave", "--data-dir"])
        .arg(common::vms::data_dir(&leaving));
    let out = leave.output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    cluster.agents[2] = None;
    for vm in [cluster.vm(0).clone(), cluster.vm(1).clone()] {
        eventually(
            &format!("{}'s entries for the leaver to go", vm.name),
            Duration::from_secs(30),
            || {
                let gone = overlay_entries(&vm).map(|(n, f, r)| {
                    n.lines().count() == 1 && f.lines().count() == 1 && !r.contains("10.10.2.0/24")
                });
                async move { gone.unwrap_or(false).then_some(()) }
            },
        )
        .await?;
    }
    let nodes = client.nodes().await?;
    assert_eq!(nodes.len(), 2);
    Ok(())
}

/// The seed scenario of the design: 2 VMs, group busybox, 2 replicas spread uniformly, each
/// pings the other by name; on the host-gw backend, so it also proves that backend end to end.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn seed_scenario_on_two_vms_with_host_gw() -> anyhow::Result<()> {
    let Some(mut cluster) = VmCluster::start(2)? else {
        return Ok(());
    };
    cluster
        .start_agent(0, None, &["--backend", "host-gw"])
        .await?;
    cluster.start_agent(1, Some(0), &[]).await?;
    let client = cluster.client(1);
    let seed = busybox(2, TAG).replace(
        "  replicas: 2\n",
        "  replicas: 2\n  spread:\n    spread: uniform\n",
    );
    apply_yaml(&client, &seed).await?;
    let replicas = all_ready(&client, 2, Duration::from_secs(90)).await?;
    assert_ne!(
        replicas[0].node, replicas[1].node,
        "uniform spread over 2 VMs"
    );
    let nodes = client.nodes().await?;
    assert!(
        nodes
            .iter()
            .all(|n| n.backend.as_deref() == Some("host-gw")),
        "{nodes:?}"
    );
    ping_matrix(&cluster, &replicas)?;
    for (from, to) in [(&replicas[0], &replicas[1]), (&replicas[1], &replicas[0])] {
        let vm = cluster.vm(from.node as usize - 1);
        let name = format!("cluster.busybox.{}.private", to.name);
        vm.docker_ok(&["exec", &from.name, "ping", "-c", "3", "-W", "2", &name])?;
    }
    Ok(())
}

const APP: &str = "kind: containers
prefix: simplecontainer.io/v1
meta:
  group: app
  name: db
spec:
  image: smr/busybox
  tag: local
  replicas: 2
  entrypoint: [\"sh\", \"-c\"]
  args: [\"sleep 4; mkdir -p /www; echo ok > /www/index.html; exec httpd -f -p 8080 -h /www\"]
  readiness:
    - name: http
      url: http://localhost:8080/index.html
      timeout: 2s
---
kind: configuration
prefix: simplecontainer.io/v1
meta:
  group: app
  name: settings
spec:
  data:
    greeting: hello
---
kind: secret
prefix: simplecontainer.io/v1
meta:
  group: app
  name: creds
spec:
  data:
    password: czNjcmV0
---
kind: resource
prefix: simplecontainer.io/v1
meta:
  group: app
  name: page
spec:
  data:
    page: \"<p>(( .greeting )) from (( .who ))</p>\"
---
kind: containers
prefix: simplecontainer.io/v1
meta:
  group: app
  name: web
spec:
  image: smr/busybox
  tag: local
  replicas: 2
  entrypoint: [\"sleep\", \"3600\"]
  configurations:
    - {group: app, name: settings}
  configuration:
    who: (( lookup \"secret/app/creds:password\" | base64decode ))
  envs:
    - GREETING=(( .greeting ))
    - WHO=(( .who ))
  resources:
    - {group: app, name: page, key: page, mountPoint: /etc/page.html}
  readiness:
    - name: page
      command: [\"test\", \"-f\", \"/etc/page.html\"]
  dependencies:
    - {group: app, name: db}
";

const FAILING: &str = "kind: containers
prefix: simplecontainer.io/v1
meta:
  group: fail
  name: crasher
spec:
  image: smr/busybox
  tag: local
  entrypoint: [\"sh\", \"-c\", \"echo crashing; exit 3\"]
---
kind: containers
prefix: simplecontainer.io/v1
meta:
  group: fail
  name: ghost
spec:
  image: smr/busybox
  tag: nope
  entrypoint: [\"sleep\", \"3600\"]
---
kind: containers
prefix: simplecontainer.io/v1
meta:
  group: fail
  name: badinit
spec:
  image: smr/busybox
  tag: local
  entrypoint: [\"sleep\", \"3600\"]
  initContainer:
    image: smr/busybox
    tag: local
    entrypoint: [\"sh\", \"-c\", \"echo init-broke; exit 4\"]
---
kind: containers
prefix: simplecontainer.io/v1
meta:
  group: fail
  name: late
spec:
  image: smr/busybox
  tag: local
  entrypoint: [\"sleep\", \"3600\"]
  dependencies:
    - {group: fail, name: ghost, timeout: 3s}
";

const SEEDED: &str = "kind: containers
prefix: simplecontainer.io/v1
meta:
  group: app
  name: seeded
spec:
  image: smr/busybox
  tag: local
  replicas: 2
  entrypoint: [\"sh\", \"-c\", \"test -f /data/seed || exit 9; cat /data/seed; exec sleep 3600\"]
  volumes:
    - {name: smr-test-seed, mountPoint: /data}
  initContainer:
    image: smr/busybox
    tag: local
    entrypoint: [\"sh\", \"-c\", \"sleep 2; echo seeded-by-$(hostname) > /data/seed\"]
    volumes:
      - {name: smr-test-seed, mountPoint: /data}
";

/// Milliseconds since the epoch of an RFC 3339 time Docker prints.
fn docker_time_ms(text: &str) -> anyhow::Result<u64> {
    let out = std::process::Command::new("date")
        .args(["-d", text.trim(), "+%s%3N"])
        .output()?;
    anyhow::ensure!(out.status.success(), "date -d {text}");
    Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
}

/// Replica name -> (VM index, Docker's `{{field}}` of its container).
fn inspect_replicas(
    cluster: &VmCluster,
    replicas: &[ReplicaView],
    field: &str,
) -> anyhow::Result<Vec<(String, String)>> {
    replicas
        .iter()
        .map(|r| {
            let vm = cluster.vm(r.node as usize - 1);
            Ok((
                r.name.clone(),
                vm.docker_ok(&["inspect", "-f", field, &r.name])?,
            ))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn apply_waits_for_readiness_and_dependencies_templates_logs_and_exec() -> anyhow::Result<()>
{
    run_scenario(3, &[], async |cluster, client| {
        app_lifecycle(cluster, client).await
    })
    .await
}

async fn app_lifecycle(cluster: &VmCluster, client: &Client) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("app.yaml"), APP)?;
    std::fs::write(dir.path().join("failing.yaml"), FAILING)?;

    // `smrctl apply` returns once both definitions are ready, printing progress lines (no
    // terminal here) on stderr; the dependent waited for its dependency.
    let mut apply = common::smrctl(&cluster.context(0));
    apply
        .args(["apply", "--timeout", "120s", "-f"])
        .arg(dir.path().join("app.yaml"));
    let out = common::output(apply);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    anyhow::ensure!(out.status.success(), "apply failed: {stdout}{stderr}");
    assert!(stdout.contains("containers/app/db: 2/2 ready"), "{stdout}");
    assert!(stdout.contains("containers/app/web: 2/2 ready"), "{stdout}");
    assert!(stderr.contains("containers/app/web: 0/2 ready"), "{stderr}");
    let db_key: ObjectKey = "containers/app/db".parse()?;
    let web_key: ObjectKey = "containers/app/web".parse()?;
    let db = client.replicas(Some(&db_key)).await?;
    let web = client.replicas(Some(&web_key)).await?;
    assert!(db.iter().chain(&web).all(|r| r.ready), "{db:?} {web:?}");

    // The readiness probe held db back: ready at least 3 s after its containers started.
    let events = client
        .events(0, Some("containers/app/db"), Duration::ZERO)
        .await?;
    let ready_at: BTreeMap<String, u64> = events
        .iter()
        .filter(|e| e.message.contains("(ready)"))
        .filter_map(|e| Some((e.replica.clone()?, e.at_ms)))
        .collect();
    assert_eq!(ready_at.len(), 2, "{events:?}");
    for (name, started) in inspect_replicas(cluster, &db, "{{.State.StartedAt}}")? {
        let started = docker_time_ms(&started)?;
        assert!(
            ready_at[&name] >= started + 3000,
            "{name} ready at {} but started at {started}",
            ready_at[&name]
        );
    }
    // The dependent's containers were created only after every db replica was ready.
    let db_ready = ready_at.values().copied().max().unwrap_or(0);
    for (name, created) in inspect_replicas(cluster, &web, "{{.Created}}")? {
        let created = docker_time_ms(&created)?;
        assert!(
            created >= db_ready,
            "{name} created at {created}, before db was ready at {db_ready}"
        );
    }

    // Templates: configuration, secret lookup with base64decode, resource file rendered too.
    let w = &web[0];
    let vm = cluster.vm(w.node as usize - 1);
    let out = vm.docker_ok(&[
        "exec",
        &w.name,
        "sh",
        "-c",
        "echo $GREETING $WHO; cat /etc/page.html",
    ])?;
    assert_eq!(out.trim(), "hello s3cret\n<p>hello from s3cret</p>");

    // Changing the configuration web reads rolls web, one replica at a time; db, which does
    // not read it, keeps its containers.
    let settings = "kind: configuration\nprefix: simplecontainer.io/v1\nmeta:\n  group: app\n  name: settings\nspec:\n  data:\n    greeting: bonjour\n";
    apply_yaml(client, settings).await?;
    let before = ids(&web);
    let lowest_ready = std::cell::Cell::new(usize::MAX);
    let rolled = eventually(
        "web to roll onto the new configuration",
        Duration::from_secs(90),
        || async {
            let now = client.replicas(Some(&web_key)).await.ok()?;
            lowest_ready.set(
                lowest_ready
                    .get()
                    .min(now.iter().filter(|r| r.ready).count()),
            );
            let replaced = now
                .iter()
                .all(|r| r.ready && before.get(&r.name) != r.container_id.as_ref());
            (now.len() == 2 && replaced).then_some(now)
        },
    )
    .await?;
    assert!(
        lowest_ready.get() >= 1,
        "both web replicas went down at once"
    );
    for r in &rolled {
        let out = cluster.vm(r.node as usize - 1).docker_ok(&[
            "exec",
            &r.name,
            "sh",
            "-c",
            "echo $GREETING; cat /etc/page.html",
        ])?;
        assert_eq!(
            out.trim(),
            "bonjour\n<p>bonjour from s3cret</p>",
            "{}",
            r.name
        );
    }
    assert_eq!(ids(&client.replicas(Some(&db_key)).await?), ids(&db));
    let web = rolled;

    // A rollout that cannot become ready: exit code 8 with the reasons (crash loop with the
    // log's end, missing image), once the timeout runs out.
    let mut apply = common::smrctl(&cluster.context(1));
    apply
        .args(["apply", "--timeout", "12s", "-f"])
        .arg(dir.path().join("failing.yaml"));
    let started = std::time::Instant::now();
    let out = common::output(apply);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(8), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(stderr.contains("not ready after 12s"), "{stderr}");
    assert!(stderr.contains("fail-crasher-1 on "), "{stderr}");
    assert!(stderr.contains("exited with code 3"), "{stderr}");
    assert!(stderr.contains("crashing"), "{stderr}");
    assert!(stderr.contains("smr/busybox:nope"), "{stderr}");
    assert!(
        stderr.contains("init container exited with code 4: init-broke"),
        "{stderr}"
    );
    // A dependency that is not ready within its timeout blocks the dependent, and says so.
    assert!(stderr.contains("(dependency timeout 3s)"), "{stderr}");
    // --no-wait returns at once.
    let mut apply = common::smrctl(&cluster.context(1));
    apply
        .args(["apply", "--no-wait", "-f"])
        .arg(dir.path().join("failing.yaml"));
    let started = std::time::Instant::now();
    let stdout = common::run(apply)?;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        stdout.contains("containers/fail/ghost unchanged"),
        "{stdout}"
    );
    client
        .delete(&[
            "containers/fail/crasher".parse()?,
            "containers/fail/ghost".parse()?,
            "containers/fail/badinit".parse()?,
            "containers/fail/late".parse()?,
        ])
        .await?;

    // An init container runs to completion before each replica starts, and is removed.
    // Applied on a terminal (script(1)): apply draws a progress bar until both are ready.
    std::fs::write(dir.path().join("seeded.yaml"), SEEDED)?;
    let line = format!(
        "{} --context {} apply --timeout 60s -f {}",
        common::smrctl_bin().display(),
        cluster.context(2).display(),
        dir.path().join("seeded.yaml").display()
    );
    let (out, ok) = on_terminal(&line)?;
    assert!(ok, "{out}");
    assert!(out.contains("containers/app/seeded: 2/2 ready"), "{out}");
    let seeded_key: ObjectKey = "containers/app/seeded".parse()?;
    let seeded = eventually("seeded replicas ready", Duration::from_secs(60), || async {
        let r = client.replicas(Some(&seeded_key)).await.ok()?;
        (r.len() == 2 && r.iter().all(|r| r.ready)).then_some(r)
    })
    .await?;
    for r in &seeded {
        assert_eq!(
            r.restarts, 0,
            "the main container never ran before its init: {r:?}"
        );
        let logs = client.logs(&r.name, None).await?;
        assert_eq!(logs.logs.trim(), format!("seeded-by-{}-init", r.name));
    }
    // None is left behind, including the failing one of fail/badinit once it was deleted.
    eventually("init containers removed", Duration::from_secs(20), || {
        let left: Vec<String> = cluster
            .testbed
            .vms()
            .iter()
            .filter_map(|vm| {
                vm.docker_ok(&["ps", "-aq", "--filter", "label=io.smr.init"])
                    .ok()
            })
            .collect();
        async move { left.iter().all(|l| l.is_empty()).then_some(()) }
    })
    .await?;
    client.delete(&[seeded_key]).await?;
    streams(cluster, client, &web).await
}

const TALKER: &str = "kind: containers
prefix: simplecontainer.io/v1
meta:
  group: app
  name: talker
spec:
  image: smr/busybox
  tag: local
  entrypoint: [\"sh\", \"-c\", \"for i in 1 2 3 4 5 6 7 8; do echo line-$i; sleep 1; done\"]
  restart:
    policy: never
";

/// The context of a node other than `node` (ids are 1-based VM indexes), to go through a relay.
fn other_context(cluster: &VmCluster, node: u64) -> std::path::PathBuf {
    cluster.context(node as usize % 3)
}

/// Runs `cmd` with `input` on stdin; (stdout, exit code).
fn run_with_input(mut cmd: std::process::Command, input: &str) -> anyhow::Result<(String, i32)> {
    use std::io::Write as _;
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !stderr.is_empty() {
        println!("stderr of {cmd:?}: {stderr}");
    }
    anyhow::ensure!(out.status.code().is_some(), "killed: {stdout}{stderr}");
    Ok((stdout, out.status.code().unwrap_or(-1)))
}

/// Runs a shell command line on a terminal of its own (script(1)); (output, success).
fn on_terminal(line: &str) -> anyhow::Result<(String, bool)> {
    // script's stdin stays open while it runs: at its end, script would hang up the terminal.
    let mut script = std::process::Command::new("script")
        .args(["-qec", line, "/dev/null"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let held = script.stdin.take();
    let finished = script.wait_with_output()?;
    drop(held);
    Ok((
        String::from_utf8_lossy(&finished.stdout).into_owned(),
        finished.status.success(),
    ))
}

/// `smrctl logs -f` streams as the container writes and ends with it; `smrctl exec -i/-it`
/// carries stdin, a TTY and the exit code, directly and through a relaying node.
async fn streams(cluster: &VmCluster, client: &Client, web: &[ReplicaView]) -> anyhow::Result<()> {
    apply_yaml(client, TALKER).await?;
    let talker_key: ObjectKey = "containers/app/talker".parse()?;
    let talker = eventually("the talker to run", Duration::from_secs(30), || async {
        let r = client.replicas(Some(&talker_key)).await.ok()?;
        r.into_iter().find(|r| r.state == "running")
    })
    .await?;
    let mut follow = common::smrctl(&other_context(cluster, talker.node));
    follow
        .args(["logs", "-f", &talker.name])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = follow.spawn()?;
    let stdout = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        use std::io::BufRead as _;
        std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .map(|line| (line, std::time::Instant::now()))
            .collect::<Vec<_>>()
    });
    let ended = eventually(
        "logs -f to end with the container",
        Duration::from_secs(30),
        || {
            let status = child.try_wait().ok().flatten();
            async move { status }
        },
    )
    .await;
    if ended.is_err() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let status = ended?;
    let lines = reader.join().expect("reader");
    let texts: Vec<&str> = lines.iter().map(|(l, _)| l.as_str()).collect();
    assert!(status.success(), "{status} {texts:?}");
    assert_eq!(texts.last().copied(), Some("line-8"), "{texts:?}");
    let spread = lines[lines.len() - 1].1 - lines[0].1;
    assert!(
        spread >= Duration::from_secs(3),
        "lines arrived as written, not at once ({spread:?}): {texts:?}"
    );
    client.delete(&[talker_key]).await?;

    let w = &web[0];
    // -i: stdin to a shell, through a node that does not run the replica.
    let mut exec = common::smrctl(&other_context(cluster, w.node));
    exec.args(["exec", "-i", &w.name, "--", "sh"]);
    let (out, code) = run_with_input(exec, "echo hi-$((1+2))\nexit 5\n")?;
    assert_eq!((out.trim(), code), ("hi-3", 5));
    // -it: a terminal in the container, on the replica's own node.
    let mut exec = common::smrctl(&cluster.context(w.node as usize - 1));
    exec.args([
        "exec",
        "-it",
        &w.name,
        "--",
        "sh",
        "-c",
        "tty; read x; echo got-$x; exit 7",
    ]);
    let (out, code) = run_with_input(exec, "abc\n")?;
    assert!(out.contains("/dev/pts/"), "{out}");
    assert!(out.contains("got-abc"), "{out}");
    assert_eq!(code, 7, "{out}");
    // On a real terminal (script(1) gives smrctl one): raw mode, and the size is passed on
    // (applied just after the command starts: bollard cannot give it to Docker's exec start).
    let line = format!(
        "stty cols 101 rows 31; {} --context {} exec -it {} -- sh -c 'sleep 1; stty size'",
        common::smrctl_bin().display(),
        other_context(cluster, w.node).display(),
        w.name
    );
    let (out, ok) = on_terminal(&line)?;
    assert!(ok, "{out}");
    assert!(out.contains("31 101"), "{out}");
    Ok(())
}

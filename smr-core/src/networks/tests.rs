use super::*;
use crate::definitions::parse_str;
use crate::state::{Command, CommandResult, NetworkSettings, NodeRecord, Op};

fn net(s: &str) -> Ipv4Net {
    s.parse().unwrap()
}

fn objects(yaml: &str) -> Vec<Object> {
    parse_str("test.yaml", yaml).unwrap()
}

fn network(group: &str, name: &str, pool: &str) -> String {
    format!(
        "kind: network\nprefix: simplecontainer.io/v1\nmeta:\n  group: {group}\n  name: {name}\nspec:\n  driver: overlay\n  IPV4AddressPool: {pool}\n"
    )
}

fn containers(group: &str, name: &str, networks: &[(&str, &str)]) -> String {
    let mut s = format!(
        "kind: containers\nprefix: simplecontainer.io/v1\nmeta:\n  group: {group}\n  name: {name}\nspec:\n  image: busybox\n  tag: latest\n  replicas: 1\n"
    );
    if !networks.is_empty() {
        s.push_str("  networks:\n");
        for (g, n) in networks {
            s.push_str(&format!("    - group: {g}\n      name: {n}\n"));
        }
    }
    s
}

fn node(name: &str) -> NodeRecord {
    NodeRecord {
        id: 0,
        name: name.into(),
        host: name.into(),
        domain: name.into(),
        ip: "127.0.0.1".into(),
        public_ip: None,
        api_port: 1443,
        raft_port: 9212,
        labels: Default::default(),
        joined_ms: 0,
        schedulable: true,
        lease: None,
        vtep_mac: None,
        wg_port: None,
        wg_public_key: None,
    }
}

fn run(s: &mut ClusterState, op: Op) -> CommandResult {
    s.apply(&Command {
        op_id: String::new(),
        at_ms: 1,
        op,
    })
}

/// A cluster on `backend` with three nodes (leases 10.10.0.0/24, .1.0/24, .2.0/24).
fn cluster(backend: &str) -> ClusterState {
    let mut s = ClusterState::default();
    run(
        &mut s,
        Op::SetNetwork {
            network: NetworkSettings {
                cidr: net("10.10.0.0/16"),
                subnet_len: 24,
                backend: backend.into(),
            },
        },
    );
    for n in ["n1", "n2", "n3"] {
        assert!(matches!(
            run(&mut s, Op::RegisterNode { node: node(n) }),
            CommandResult::NodeRegistered { .. }
        ));
    }
    s
}

/// A vxlan cluster (see [`cluster`]) holding `docs`.
fn cluster_with(docs: &[String]) -> ClusterState {
    let mut s = cluster("vxlan");
    apply(&mut s, &docs.join("---\n")).unwrap();
    s
}

/// Overlay networks `g/front` (10.20.0.0/16) and `g/back` (10.21.0.0/16).
fn front() -> String {
    network("g", "front", "10.20.0.0/16")
}

fn back() -> String {
    network("g", "back", "10.21.0.0/16")
}

/// The spec of the first `containers` definition of `yaml`.
fn containers_spec(yaml: &str) -> ContainersSpec {
    let Spec::Containers(c) = objects(yaml).remove(0).spec else {
        unreachable!()
    };
    *c
}

fn key(kind: Kind, group: &str, name: &str) -> ObjectKey {
    ObjectKey {
        kind,
        group: group.into(),
        name: name.into(),
        prefix: None,
    }
}

/// Applying `yaml` is refused (the reason is returned) and nothing is stored.
fn refused(s: &mut ClusterState, yaml: &str) -> String {
    let before = s.revision;
    let e = apply(s, yaml).unwrap_err();
    assert_eq!(s.revision, before, "nothing stored for {yaml}");
    e
}

fn apply(s: &mut ClusterState, yaml: &str) -> Result<(), String> {
    match run(
        s,
        Op::Apply {
            objects: objects(yaml),
            owner: None,
        },
    ) {
        CommandResult::Rejected { reason } => Err(reason),
        _ => Ok(()),
    }
}

fn delete(s: &mut ClusterState, keys: &[(Kind, &str, &str)]) -> Result<(), String> {
    let keys = keys.iter().map(|(kind, g, n)| key(*kind, g, n)).collect();
    match run(s, Op::Delete { keys }) {
        CommandResult::Rejected { reason } => Err(reason),
        _ => Ok(()),
    }
}

#[test]
fn slices_follow_the_leases() {
    let (pool, cidr) = (net("10.20.0.0/16"), net("10.10.0.0/16"));
    assert_eq!(slice_len(pool, cidr, 24), Some(24));
    assert_eq!(slice_len(net("10.20.0.0/20"), cidr, 24), Some(28));
    assert_eq!(slice_len(net("10.20.0.0/23"), cidr, 24), None);
    assert_eq!(
        node_subnet(pool, cidr, 24, net("10.10.0.0/24")),
        Some(net("10.20.0.0/24"))
    );
    assert_eq!(
        node_subnet(pool, cidr, 24, net("10.10.7.0/24")),
        Some(net("10.20.7.0/24"))
    );
    assert_eq!(
        node_subnet(net("10.20.0.0/20"), cidr, 24, net("10.10.3.0/24")),
        Some(net("10.20.0.48/28"))
    );
    // A /12 pool on a /16 cluster: /20 slices.
    assert_eq!(
        node_subnet(net("172.16.0.0/12"), cidr, 24, net("10.10.255.0/24")),
        Some(net("172.31.240.0/20"))
    );
    // A lease outside the cluster CIDR has no slice.
    assert_eq!(node_subnet(pool, cidr, 24, net("10.11.0.0/24")), None);
}

#[test]
fn every_node_gets_its_own_slice_of_every_network() {
    let s = cluster_with(&[front(), back()]);
    let mine: Vec<(String, String, String)> = node_networks(&s, 2)
        .into_iter()
        .map(|n| {
            (
                n.network.docker_name(),
                n.network.bridge(),
                n.subnet.to_string(),
            )
        })
        .collect();
    assert_eq!(
        mine,
        vec![
            (
                "smr.g.back".into(),
                "smrnfd02be44".into(),
                "10.21.1.0/24".into()
            ),
            (
                "smr.g.front".into(),
                "smrn3a2df40a".into(),
                "10.20.1.0/24".into()
            ),
        ]
    );
    assert_eq!(
        peer_routes(&s, 2),
        BTreeMap::from([
            (1, vec![net("10.21.0.0/24"), net("10.20.0.0/24")]),
            (3, vec![net("10.21.2.0/24"), net("10.20.2.0/24")]),
        ])
    );
}

#[test]
fn network_objects_are_checked_before_anything_is_stored() {
    let mut s = cluster("vxlan");
    assert_eq!(
        refused(
            &mut s,
            "kind: network\nprefix: simplecontainer.io/v1\nmeta: {group: g, name: n}\nspec: {driver: bridge}\n"
        ),
        "network/g/n: a bridge network needs ipv4AddressPool, its subnet on each node that runs a replica joining it (e.g. 172.30.0.0/24)"
    );
    assert_eq!(
        refused(
            &mut s,
            "kind: network\nprefix: simplecontainer.io/v1\nmeta: {group: g, name: n}\nspec: {driver: macvlan, IPV4AddressPool: 10.20.0.0/16}\n"
        ),
        "network/g/n: driver \"macvlan\" is not supported (supported: overlay, the default, and bridge)"
    );
    assert_eq!(
        refused(
            &mut s,
            "kind: network\nprefix: simplecontainer.io/v1\nmeta: {group: g, name: n}\nspec: {}\n"
        ),
        "network/g/n: an overlay network needs ipv4AddressPool (e.g. 10.20.0.0/16)"
    );
    assert_eq!(
        refused(&mut s, &network("g", "n", "10.20.0.0")),
        "network/g/n: ipv4AddressPool \"10.20.0.0\" is not an IPv4 network in CIDR form"
    );
    assert_eq!(
        refused(&mut s, &network("g", "cluster", "10.20.0.0/16")),
        "network/g/cluster: the name cluster is the default network's"
    );
    assert_eq!(
        refused(&mut s, &network("g", "n", "10.0.0.0/8")),
        "network/g/n: ipv4AddressPool 10.0.0.0/8 overlaps the cluster CIDR 10.10.0.0/16"
    );
    assert_eq!(
        refused(&mut s, &network("g", "n", "10.20.0.0/23")),
        "network/g/n: ipv4AddressPool 10.20.0.0/23 is too small: it must hold one subnet of at least 4 addresses per possible node (256), so at most /22"
    );
    assert_eq!(
        refused(
            &mut s,
            &format!(
                "{}---\n{}",
                network("g", "a", "10.20.0.0/16"),
                network("h", "b", "10.20.128.0/17")
            )
        ),
        "network/h/b: ipv4AddressPool 10.20.128.0/17 overlaps network/g/a (10.20.0.0/16)"
    );
    apply(&mut s, &network("g", "a", "10.20.0.0/16")).unwrap();
    // Applying it again unchanged is fine; another pool is not.
    apply(&mut s, &network("g", "a", "10.20.0.0/16")).unwrap();
    assert_eq!(
        refused(&mut s, &network("g", "a", "10.30.0.0/16")),
        "network/g/a: ipv4AddressPool cannot change from 10.20.0.0/16 to 10.30.0.0/16 (delete the network and apply it again)"
    );
    assert_eq!(
        refused(&mut s, &network("g", "b", "10.20.128.0/17")),
        "network/g/b: ipv4AddressPool 10.20.128.0/17 overlaps network/g/a (10.20.0.0/16)"
    );

    let mut none = cluster("none");
    assert_eq!(
        refused(&mut none, &network("g", "a", "10.20.0.0/16")),
        "network/g/a: overlay networks need an overlay backend (wireguard, vxlan or host-gw); this cluster runs none"
    );
    apply(
        &mut cluster("wireguard"),
        &network("g", "a", "10.20.0.0/16"),
    )
    .unwrap();
}

#[test]
fn containers_may_name_only_networks_that_exist() {
    let mut s = cluster("host-gw");
    assert_eq!(
        apply(&mut s, &containers("g", "web", &[("g", "front")])).unwrap_err(),
        "containers/g/web: networks[0] g/front: no such network (apply a network object g/front, or use {group: internal, name: cluster})"
    );
    assert_eq!(
        apply(&mut s, &containers("g", "web", &[("internal", "host")])).unwrap_err(),
        "containers/g/web: networks[0] internal/host: Docker's own host network cannot be joined through networks (use networkMode: host)"
    );
    assert_eq!(
        apply(
            &mut s,
            &containers(
                "g",
                "web",
                &[("internal", "cluster"), ("internal", "cluster")]
            )
        )
        .unwrap_err(),
        "containers/g/web: networks lists internal/cluster twice"
    );
    let host = containers("g", "web", &[("internal", "cluster")]) + "  network_mode: host\n";
    assert_eq!(
        apply(&mut s, &host).unwrap_err(),
        "containers/g/web: networks cannot be joined with networkMode host"
    );
    // simplecontainer's `network_mode: bridge` with networks: created on bridge, then connected.
    apply(
        &mut s,
        &(containers("g", "web", &[("internal", "cluster")]) + "  network_mode: bridge\n"),
    )
    .unwrap();
    // The network and its user in one batch, in either order.
    apply(
        &mut s,
        &format!(
            "{}---\n{}",
            containers("g", "web", &[("g", "front"), ("internal", "cluster")]),
            front()
        ),
    )
    .unwrap();
    apply(&mut s, &containers("g", "plain", &[])).unwrap();
}

#[test]
fn deleting_a_used_network_is_refused_naming_the_users() {
    let mut s = cluster_with(&[
        front(),
        back(),
        containers("g", "web", &[("g", "front"), ("g", "back")]),
        containers("h", "db", &[("g", "back")]),
    ]);
    let before = s.revision;
    assert_eq!(
        delete(&mut s, &[(Kind::Network, "g", "back")]).unwrap_err(),
        "network/g/back is used by containers/g/web, containers/h/db; delete or change them first"
    );
    // Refused as a whole: the other key of the same delete stays too.
    assert_eq!(
        delete(
            &mut s,
            &[
                (Kind::Containers, "g", "web"),
                (Kind::Network, "g", "front"),
                (Kind::Network, "g", "back")
            ]
        )
        .unwrap_err(),
        "network/g/back is used by containers/h/db; delete or change them first"
    );
    assert_eq!(s.revision, before);
    assert_eq!(overlay_networks(&s).len(), 2);
    // With its users in the same delete, it goes.
    delete(
        &mut s,
        &[
            (Kind::Network, "g", "back"),
            (Kind::Containers, "h", "db"),
            (Kind::Containers, "g", "web"),
        ],
    )
    .unwrap();
    delete(&mut s, &[(Kind::Network, "g", "front")]).unwrap();
    assert!(overlay_networks(&s).is_empty());
}

#[test]
fn replicas_join_their_networks_in_order_the_first_carries_the_default_route() {
    let s = cluster_with(&[front(), back()]);
    let nets = overlay_networks(&s);
    let joined = |yaml: &str| -> Vec<String> {
        attachments_among(&containers_spec(yaml), &nets, &[])
            .iter()
            .map(|a| format!("{} {}", a.docker_name(), a.dns_label()))
            .collect()
    };
    assert_eq!(joined(&containers("g", "x", &[])), vec!["cluster cluster"]);
    assert_eq!(
        joined(&containers(
            "g",
            "x",
            &[("g", "back"), ("internal", "cluster"), ("g", "front")]
        )),
        vec!["smr.g.back back", "cluster cluster", "smr.g.front front"]
    );
    assert_eq!(
        joined(&containers("g", "x", &[("g", "front")])),
        vec!["smr.g.front front"]
    );
}

#[test]
fn isolation_allows_each_replica_the_ranges_of_its_networks_only() {
    let mut s = cluster("vxlan");
    assert_eq!(allowed_ranges(&s, 1, &[]), Isolation::default());
    apply(
        &mut s,
        &[
            front(),
            back(),
            containers("g", "both", &[("g", "front"), ("g", "back")]),
            containers("g", "f", &[("g", "front")]),
            containers("g", "c", &[]),
        ]
        .join("---\n"),
    )
    .unwrap();
    let key = |name: &str| key(Kind::Containers, "g", name);
    let ip = |s: &str| -> Ipv4Addr { s.parse().unwrap() };
    let iso = allowed_ranges(
        &s,
        2,
        &[
            (key("both"), vec![ip("10.20.1.2"), ip("10.21.1.2")]),
            (key("f"), vec![ip("10.20.1.3")]),
            (key("c"), vec![ip("10.10.1.2")]),
            (key("gone"), vec![ip("10.10.1.9")]),
        ],
    );
    assert_eq!(
        iso,
        Isolation {
            ranges: vec![
                net("10.10.0.0/16"),
                net("10.21.0.0/16"),
                net("10.20.0.0/16")
            ],
            local: vec![
                net("10.10.1.0/24"),
                net("10.21.1.0/24"),
                net("10.20.1.0/24")
            ],
            allowed: vec![
                (ip("10.10.1.2"), net("10.10.0.0/16")),
                (ip("10.20.1.2"), net("10.20.0.0/16")),
                (ip("10.20.1.2"), net("10.21.0.0/16")),
                (ip("10.20.1.3"), net("10.20.0.0/16")),
                (ip("10.21.1.2"), net("10.20.0.0/16")),
                (ip("10.21.1.2"), net("10.21.0.0/16")),
            ],
        }
    );
}

#[test]
fn a_replica_is_created_on_its_first_network_and_connected_to_the_others() {
    use crate::container::labels;
    use crate::convert::{ReplicaContext, container_config};
    let s = cluster_with(&[
        front(),
        back(),
        containers(
            "g",
            "web",
            &[("g", "back"), ("internal", "cluster"), ("g", "front")],
        ),
        containers("g", "plain", &[]),
        bridge("g", "local", "172.30.0.0/24"),
        containers("g", "docker", &[("internal", "bridge"), ("g", "local")]),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let ctx = ReplicaContext {
        node: 1,
        network: Some(CLUSTER),
        dns: vec![],
        files_dir: dir.path(),
    };
    let config = |name: &str| {
        let stored = s.objects.get(&key(Kind::Containers, "g", name)).unwrap();
        container_config(&s, stored, 1, 1, &ctx).unwrap().0
    };
    let web = config("web");
    assert_eq!(web.network.as_deref(), Some("smr.g.back"));
    assert_eq!(web.extra_networks, vec!["cluster", "smr.g.front"]);
    assert_eq!(
        web.labels[labels::NETWORKS],
        "smr.g.back=10.21.0.0/16,cluster=10.10.0.0/16,smr.g.front=10.20.0.0/16"
    );
    // On Docker's own bridge first (its range is Docker's: a default route only), then on a
    // bridge network.
    let docker = config("docker");
    assert_eq!(docker.network.as_deref(), Some("bridge"));
    assert_eq!(docker.extra_networks, vec!["smr.g.local"]);
    assert_eq!(
        docker.labels[labels::NETWORKS],
        "bridge=,smr.g.local=172.30.0.0/24"
    );
    // On cluster only, as before: nothing extra, no label.
    let plain = config("plain");
    assert_eq!(plain.network.as_deref(), Some(CLUSTER));
    assert!(plain.extra_networks.is_empty());
    assert!(!plain.labels.contains_key(labels::NETWORKS));
    assert!(
        !serde_json::to_string(&plain)
            .unwrap()
            .contains("extra_networks"),
        "the hash of a container on one network is what it was"
    );
}

fn bridge(group: &str, name: &str, subnet: &str) -> String {
    format!(
        "kind: network\nprefix: simplecontainer.io/v1\nmeta:\n  group: {group}\n  name: {name}\nspec:\n  driver: bridge\n  ipv4addresspool: {subnet}\n"
    )
}

#[test]
fn bridge_networks_need_a_subnet_of_their_own_and_keep_their_driver() {
    let mut s = cluster("vxlan");
    assert_eq!(
        refused(&mut s, &bridge("g", "b", "10.10.5.0/24")),
        "network/g/b: ipv4AddressPool 10.10.5.0/24 overlaps the cluster CIDR 10.10.0.0/16"
    );
    assert_eq!(
        refused(&mut s, &bridge("g", "b", "172.30.0.0/31")),
        "network/g/b: ipv4AddressPool 172.30.0.0/31 is too small for a bridge network (at most /30)"
    );
    apply(&mut s, &front()).unwrap();
    assert_eq!(
        refused(&mut s, &bridge("g", "b", "10.20.3.0/24")),
        "network/g/b: ipv4AddressPool 10.20.3.0/24 overlaps network/g/front (10.20.0.0/16)"
    );
    // A bridge network needs no room per node: one /30 is enough, the same on every node.
    apply(&mut s, &bridge("g", "b", "172.30.0.0/30")).unwrap();
    assert_eq!(
        bridge_networks(&s),
        vec![BridgeNetwork {
            group: "g".into(),
            name: "b".into(),
            subnet: net("172.30.0.0/30"),
        }]
    );
    assert!(overlay_networks(&s).iter().all(|n| n.name != "b"));
    assert_eq!(
        refused(&mut s, &network("h", "o", "172.30.0.0/16")),
        "network/h/o: ipv4AddressPool 172.30.0.0/16 overlaps network/g/b (172.30.0.0/30)"
    );
    assert_eq!(
        refused(&mut s, &bridge("g", "b", "172.31.0.0/24")),
        "network/g/b: ipv4AddressPool cannot change from 172.30.0.0/30 to 172.31.0.0/24 (delete the network and apply it again)"
    );
    assert_eq!(
        refused(&mut s, &network("g", "b", "10.30.0.0/16")),
        "network/g/b: driver cannot change from bridge to overlay (delete the network and apply it again)"
    );
    assert_eq!(
        refused(&mut s, &bridge("g", "front", "10.20.0.0/16")),
        "network/g/front: driver cannot change from overlay to bridge (delete the network and apply it again)"
    );
    // Bridge networks need no overlay backend.
    apply(&mut cluster("none"), &bridge("g", "b", "172.30.0.0/24")).unwrap();
    // A used one cannot be deleted, naming its users.
    apply(&mut s, &containers("g", "web", &[("g", "b")])).unwrap();
    assert_eq!(
        delete(&mut s, &[(Kind::Network, "g", "b")]).unwrap_err(),
        "network/g/b is used by containers/g/web; delete or change them first"
    );
    delete(
        &mut s,
        &[(Kind::Network, "g", "b"), (Kind::Containers, "g", "web")],
    )
    .unwrap();
    assert_eq!(bridge_networks(&s), vec![]);
}

#[test]
fn replicas_join_bridge_networks_and_docker_s_own_bridge() {
    let mut s = cluster_with(&[front(), bridge("g", "local", "172.30.0.0/24")]);
    let yaml = containers(
        "g",
        "web",
        &[("g", "local"), ("internal", "bridge"), ("g", "front")],
    );
    apply(&mut s, &yaml).unwrap();
    let joined: Vec<(String, String, Option<Ipv4Net>)> = attachments(&containers_spec(&yaml), &s)
        .iter()
        .map(|a| {
            (
                a.docker_name(),
                a.dns_label().to_string(),
                a.range(Some(net("10.10.0.0/16"))),
            )
        })
        .collect();
    assert_eq!(
        joined,
        vec![
            (
                "smr.g.local".into(),
                "local".into(),
                Some(net("172.30.0.0/24"))
            ),
            ("bridge".into(), "bridge".into(), None),
            (
                "smr.g.front".into(),
                "front".into(),
                Some(net("10.20.0.0/16"))
            ),
        ]
    );
}

#[test]
fn bridge_subnets_are_isolated_and_masqueraded_like_slices() {
    let s = cluster_with(&[
        front(),
        bridge("g", "local", "172.30.0.0/24"),
        containers("g", "web", &[("g", "local"), ("internal", "cluster")]),
    ]);
    let me = *s.nodes.keys().next().unwrap();
    let key: ObjectKey = "containers/g/web".parse().unwrap();
    let iso = allowed_ranges(
        &s,
        me,
        &[(
            key,
            vec!["172.30.0.2".parse().unwrap(), "10.10.0.2".parse().unwrap()],
        )],
    );
    assert_eq!(
        iso.ranges,
        vec![
            net("10.10.0.0/16"),
            net("10.20.0.0/16"),
            net("172.30.0.0/24")
        ]
    );
    assert_eq!(
        iso.local,
        vec![
            net("10.10.0.0/24"),
            net("10.20.0.0/24"),
            net("172.30.0.0/24")
        ]
    );
    assert_eq!(
        iso.allowed,
        vec![
            ("10.10.0.2".parse().unwrap(), net("10.10.0.0/16")),
            ("10.10.0.2".parse().unwrap(), net("172.30.0.0/24")),
            ("172.30.0.2".parse().unwrap(), net("10.10.0.0/16")),
            ("172.30.0.2".parse().unwrap(), net("172.30.0.0/24")),
        ]
    );
    assert_eq!(
        iso.masquerade_sources(net("10.10.0.0/16")),
        vec![net("10.20.0.0/24"), net("172.30.0.0/24")]
    );
    // Only a bridge network: isolation all the same.
    let mut only = cluster("vxlan");
    apply(&mut only, &bridge("g", "local", "172.30.0.0/24")).unwrap();
    assert_eq!(
        allowed_ranges(&only, me, &[]).ranges,
        vec![net("10.10.0.0/16"), net("172.30.0.0/24")]
    );
}

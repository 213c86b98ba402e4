//! The bridge network half of a node's pass, asserted as exact action lists: a bridge network
//! created before the replicas that join it, a foreign same-named network left alone (the
//! replica blocked), removed once no replica here needs it and no container uses it.

use std::collections::{BTreeMap, BTreeSet};

use super::*;
use crate::container::{ContainerConfig, labels};
use crate::convert::restart_of;
use crate::definitions::{ContainersSpec, Kind, Meta, NetworkSpec, Object, Spec};
use crate::networks::bridge::{BridgeConfig, NetworkAction, NetworkInfo};
use crate::scheduler::{NodeId, Placement, ReplicaSlot, replica_name};
use crate::state::{ClusterState, StoredObject};

const NODE: NodeId = 1;
const T0: u64 = 1_000_000;

fn stored(kind: Kind, group: &str, name: &str, spec: Spec) -> StoredObject {
    StoredObject {
        object: Object {
            kind,
            prefix: "simplecontainer.io/v1".into(),
            meta: Meta {
                group: group.into(),
                name: name.into(),
                labels: Default::default(),
            },
            spec,
        },
        generation: 1,
        template_generation: 1,
        revision: 1,
        created_ms: 0,
        updated_ms: 0,
        owner: None,
    }
}

fn put_bridge(state: &mut ClusterState, name: &str, subnet: &str) {
    let spec = NetworkSpec {
        driver: Some("bridge".into()),
        ipv4_address_pool: Some(subnet.into()),
    };
    let s = stored(Kind::Network, "shop", name, Spec::Network(spec));
    state.objects.insert(s.object.key(), s);
}

/// `app/db` with one replica on this node on the Docker networks `networks` (the first is the
/// one it is created on).
fn put_app(state: &mut ClusterState) {
    let s = stored(
        Kind::Containers,
        "app",
        "db",
        Spec::Containers(Box::new(ContainersSpec {
            image: "db".into(),
            ..Default::default()
        })),
    );
    let key = s.object.key();
    state.objects.insert(key.clone(), s);
    let slot = ReplicaSlot {
        node: NODE,
        generation: 1,
        surge: false,
        previous: None,
    };
    state.placements.insert(
        key,
        Placement {
            replicas: BTreeMap::from([(1, slot)]),
        },
    );
}

/// Renders `app-db-1` on `cluster` and `smr.shop.back` (what convert makes of
/// `networks: [cluster, shop/back]`).
fn render(stored: &StoredObject, index: u32, generation: u64) -> Result<Rendered, String> {
    let key = stored.object.key();
    let name = replica_name(&key.group, &key.name, index);
    let labels = BTreeMap::from([
        (labels::MANAGED.to_string(), "true".to_string()),
        (labels::OWNER.to_string(), key.to_string()),
        (labels::REPLICA.to_string(), index.to_string()),
        (labels::GENERATION.to_string(), generation.to_string()),
        (labels::CONFIG_HASH.to_string(), "h".to_string()),
    ]);
    Ok(Rendered {
        container: ContainerConfig {
            name: name.clone(),
            hostname: name,
            image: "db".into(),
            labels,
            network: Some("cluster".into()),
            extra_networks: vec!["smr.shop.back".into()],
            ..Default::default()
        },
        init: None,
        files: Vec::new(),
    })
}

fn back() -> BridgeConfig {
    BridgeConfig {
        name: "smr.shop.back".into(),
        subnet: "172.30.0.0/24".parse().unwrap(),
        gateway: "172.30.0.1".parse().unwrap(),
        bridge: crate::networks::BridgeNetwork {
            group: "shop".into(),
            name: "back".into(),
            subnet: "172.30.0.0/24".parse().unwrap(),
        }
        .bridge(),
        labels: BTreeMap::from([
            (labels::MANAGED.to_string(), "true".to_string()),
            ("io.smr.bridge-network".to_string(), "shop/back".to_string()),
            ("io.smr.subnet".to_string(), "172.30.0.0/24".to_string()),
        ]),
    }
}

fn observed(config: &BridgeConfig, users: &[&str]) -> NetworkInfo {
    NetworkInfo {
        name: config.name.clone(),
        labels: config.labels.clone(),
        users: users.iter().map(|u| u.to_string()).collect(),
    }
}

type Shown = Option<(String, Option<String>)>;

fn pass(
    planner: &mut NodePlanner,
    state: &ClusterState,
    networks: Result<&[NetworkInfo], &str>,
) -> (Vec<NetworkAction>, Vec<String>, Shown) {
    let d = Desired {
        state,
        replicas: desired_replicas(state, NODE, restart_of, render),
    };
    let stopping = BTreeSet::new();
    let o = Observed {
        containers: &[],
        stopping: &stopping,
        now_ms: T0,
    };
    let network_actions = planner.plan_networks(&d, networks);
    let p = planner.plan(&d, &o);
    let report = planner
        .reports(&d, &o, &p)
        .into_iter()
        .find(|r| r.name == "app-db-1")
        .map(|r| (r.phase, r.message));
    let created = p
        .actions
        .iter()
        .flat_map(|a| match a {
            NodeAction::CreateBatch { replicas } => {
                replicas.iter().map(|(n, _)| n.clone()).collect()
            }
            NodeAction::Create { replica, .. } => vec![replica.clone()],
            _ => vec![],
        })
        .collect();
    (network_actions, created, report)
}

#[test]
fn a_bridge_network_is_created_before_the_replica_that_joins_it() {
    let mut state = ClusterState::default();
    put_bridge(&mut state, "back", "172.30.0.0/24");
    put_app(&mut state);
    let mut planner = NodePlanner::new(NODE, None);

    let (networks, created, report) = pass(&mut planner, &state, Ok(&[]));
    assert_eq!(networks, vec![NetworkAction::Create(back())]);
    assert_eq!(created, Vec::<String>::new());
    assert_eq!(
        report,
        Some((
            "pending".into(),
            Some("creating network smr.shop.back".into())
        ))
    );
    planner.record_network("smr.shop.back", Ok(()));

    // There: the replica is created, nothing is done to the network; `cluster` is not ours.
    let cluster = NetworkInfo {
        name: "cluster".into(),
        labels: BTreeMap::from([(labels::MANAGED.to_string(), "true".to_string())]),
        users: vec![],
    };
    let there = [observed(&back(), &[]), cluster];
    let (networks, created, _) = pass(&mut planner, &state, Ok(&there));
    assert_eq!(networks, vec![]);
    assert_eq!(created, vec!["app-db-1".to_string()]);
}

#[test]
fn a_failed_creation_blocks_the_replica_with_the_error_and_is_retried() {
    let mut state = ClusterState::default();
    put_bridge(&mut state, "back", "172.30.0.0/24");
    put_app(&mut state);
    let mut planner = NodePlanner::new(NODE, None);
    pass(&mut planner, &state, Ok(&[]));
    planner.record_network("smr.shop.back", Err("pool overlaps".into()));
    let (networks, created, report) = pass(&mut planner, &state, Ok(&[]));
    assert_eq!(networks, vec![NetworkAction::Create(back())]);
    assert_eq!(created, Vec::<String>::new());
    let (phase, message) = report.unwrap();
    assert!(phase.starts_with("blocked"), "{phase}");
    assert_eq!(
        message.as_deref(),
        Some("creating network smr.shop.back (last attempt: pool overlaps)")
    );
}

#[test]
fn a_network_smr_did_not_create_is_left_alone_and_blocks_the_replica() {
    let mut state = ClusterState::default();
    put_bridge(&mut state, "back", "172.30.0.0/24");
    put_app(&mut state);
    let foreign = [NetworkInfo {
        name: "smr.shop.back".into(),
        labels: BTreeMap::new(),
        users: vec![],
    }];
    let mut planner = NodePlanner::new(NODE, None);
    let (networks, created, report) = pass(&mut planner, &state, Ok(&foreign));
    assert_eq!(networks, vec![]);
    assert_eq!(created, Vec::<String>::new());
    let (phase, message) = report.unwrap();
    assert!(phase.starts_with("blocked"), "{phase}");
    assert_eq!(
        message.as_deref(),
        Some(
            "a Docker network named smr.shop.back exists on this node that smr did not create; \
             remove it (docker network rm smr.shop.back) or rename the network object"
        )
    );
}

#[test]
fn networks_that_cannot_be_listed_block_the_replicas_that_join_them() {
    let mut state = ClusterState::default();
    put_bridge(&mut state, "back", "172.30.0.0/24");
    put_app(&mut state);
    let mut planner = NodePlanner::new(NODE, None);
    let (networks, created, report) = pass(&mut planner, &state, Err("docker: timeout"));
    assert_eq!(networks, vec![]);
    assert_eq!(created, Vec::<String>::new());
    assert_eq!(
        report.unwrap().1.as_deref(),
        Some("cannot list networks: docker: timeout")
    );
}

#[test]
fn a_network_no_replica_here_needs_is_removed_once_unused() {
    let mut state = ClusterState::default();
    put_bridge(&mut state, "back", "172.30.0.0/24");
    put_bridge(&mut state, "other", "172.31.0.0/24");
    let mut planner = NodePlanner::new(NODE, None);
    let mut other = back();
    other.name = "smr.shop.other".into();
    other
        .labels
        .insert("io.smr.bridge-network".into(), "shop/other".into());
    // No replica here: a used one stays, an unused one goes (object or not).
    let seen = [observed(&back(), &["app-db-1"]), observed(&other, &[])];
    let (networks, _, _) = pass(&mut planner, &state, Ok(&seen));
    assert_eq!(
        networks,
        vec![NetworkAction::Remove {
            name: "smr.shop.other".into()
        }]
    );
    state.objects.clear();
    let seen = [observed(&back(), &[])];
    let (networks, _, _) = pass(&mut planner, &state, Ok(&seen));
    assert_eq!(
        networks,
        vec![NetworkAction::Remove {
            name: "smr.shop.back".into()
        }]
    );
}

#[test]
fn a_network_on_another_subnet_is_recreated_only_when_unused() {
    let mut state = ClusterState::default();
    put_bridge(&mut state, "back", "172.30.0.0/24");
    put_app(&mut state);
    let mut old = back();
    old.labels
        .insert("io.smr.subnet".into(), "172.29.0.0/24".into());
    let mut planner = NodePlanner::new(NODE, None);
    let (networks, created, report) = pass(&mut planner, &state, Ok(&[observed(&old, &["x"])]));
    assert_eq!(networks, vec![]);
    assert_eq!(created, Vec::<String>::new());
    let message = report.unwrap().1.unwrap();
    assert_eq!(
        message,
        "network smr.shop.back on this node is on another subnet than 172.30.0.0/24 and is used by x"
    );
    let (networks, created, _) = pass(&mut planner, &state, Ok(&[observed(&old, &[])]));
    assert_eq!(
        networks,
        vec![NetworkAction::Remove {
            name: "smr.shop.back".into()
        }]
    );
    assert_eq!(created, Vec::<String>::new());
}

#[test]
fn networks_are_listed_only_while_bridge_networks_exist_or_remain() {
    let mut state = ClusterState::default();
    let mut planner = NodePlanner::new(NODE, None);
    let wants = |planner: &NodePlanner, state: &ClusterState| {
        planner.wants_networks(&Desired {
            state,
            replicas: Vec::new(),
        })
    };
    // The first pass lists; one of smr's networks left on the engine keeps it listing.
    assert!(wants(&planner, &state));
    let (networks, _, _) = pass(&mut planner, &state, Ok(&[observed(&back(), &["x"])]));
    assert_eq!(networks, vec![]);
    assert!(wants(&planner, &state));
    // Nothing of smr's there and no object: no more listing...
    pass(&mut planner, &state, Ok(&[]));
    assert!(!wants(&planner, &state));
    // ...until a bridge network object appears.
    put_bridge(&mut state, "back", "172.30.0.0/24");
    assert!(wants(&planner, &state));
}

//! The bridge network half of a node's pass, asserted as exact action lists: a bridge network
//! created before the replicas that join it, a foreign same-named network left alone (the
//! replica blocked), removed once no replica here needs it and no container uses it.

use std::collections::BTreeMap;

use super::tests_resources::{NODE, Shown, created, put, put_app, replica_config};
use super::*;
use crate::container::{ContainerConfig, labels};
use crate::definitions::{ContainersSpec, Kind, NetworkSpec, Spec};
use crate::networks::bridge::{BridgeConfig, NetworkAction, NetworkInfo};
use crate::state::{ClusterState, StoredObject};

fn put_bridge(state: &mut ClusterState, name: &str, subnet: &str) {
    let spec = NetworkSpec {
        driver: Some("bridge".into()),
        ipv4_address_pool: Some(subnet.into()),
    };
    put(state, Kind::Network, "shop", name, Spec::Network(spec));
}

/// Renders `app-db-1` on `cluster` and `smr.shop.back` (what convert makes of
/// `networks: [cluster, shop/back]`).
fn render(stored: &StoredObject, index: u32, generation: u64) -> Result<Rendered, String> {
    Ok(Rendered {
        container: ContainerConfig {
            network: Some("cluster".into()),
            extra_networks: vec!["smr.shop.back".into()],
            ..replica_config(stored, index, generation)
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

/// `app/db`'s spec (its networks come from [`render`]).
fn app() -> ContainersSpec {
    ContainersSpec {
        image: "db".into(),
        ..Default::default()
    }
}

/// One pass: network actions, the replicas created and the report of `app-db-1`.
fn pass(
    planner: &mut NodePlanner,
    state: &ClusterState,
    networks: Result<&[NetworkInfo], &str>,
) -> (Vec<NetworkAction>, Vec<String>, Shown) {
    let (networks, actions, report) =
        super::tests_resources::pass(planner, state, render, &[], |planner, d| {
            planner.plan_networks(d, networks)
        });
    (networks, created(&actions), report)
}

#[test]
fn a_bridge_network_is_created_before_the_replica_that_joins_it() {
    let mut state = ClusterState::default();
    put_bridge(&mut state, "back", "172.30.0.0/24");
    put_app(&mut state, app());
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
    put_app(&mut state, app());
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
    put_app(&mut state, app());
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
    put_app(&mut state, app());
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
    put_app(&mut state, app());
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

//! The overlay networks (`network` objects, `driver: overlay`) on this node, one pass of the
//! network loop: a Docker bridge network per overlay network on this node's slice of its pool,
//! the routes to the other nodes' slices through the overlay backend, and smr's isolation chain.
//! What is wanted comes from `smr_core::networks` (pure); this module only executes it.
//!
//! ```text
//!  state --node_networks--> Docker networks smr.<group>.<name> (labelled; stale ones removed)
//!        --peer_routes----> Overlay::reconcile_pool (per pool; a gone pool: its routes removed)
//!        --allowed_ranges-> isolation::ensure_isolation (SMR-NETS), removed when no network is left
//!                          masq::ensure_networks_masquerade (SMR-MASQ-NETS), likewise
//! ```

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;

use bollard::Docker;
use bollard::models::{Ipam, IpamConfig, NetworkCreateRequest};
use bollard::query_parameters::ListNetworksOptionsBuilder;
use ipnet::Ipv4Net;

use crate::state::{ClusterState, NodeId};
use overlay::docker::MANAGED_LABEL;
use overlay::isolation::{IsolationSpec, ensure_isolation, remove_isolation};
use overlay::masq::{IptablesCmd, ensure_networks_masquerade};
use overlay::{Overlay, Peer};
use smr_core::networks::{self, NETWORK_LABEL, NodeNetwork, POOL_LABEL};

/// A Docker network smr made for an overlay network, as Docker shows it.
struct Existing {
    name: String,
    subnet: Option<Ipv4Net>,
    pool: Option<Ipv4Net>,
}

async fn existing(docker: &Docker) -> Result<Vec<Existing>, bollard::errors::Error> {
    let filters: HashMap<String, Vec<String>> =
        HashMap::from([("label".to_string(), vec![NETWORK_LABEL.to_string()])]);
    let options = ListNetworksOptionsBuilder::new().filters(&filters).build();
    Ok(docker
        .list_networks(Some(options))
        .await?
        .into_iter()
        .map(|n| {
            let labels = n.labels.unwrap_or_default();
            Existing {
                name: n.name.unwrap_or_default(),
                subnet: n
                    .ipam
                    .and_then(|i| i.config)
                    .unwrap_or_default()
                    .into_iter()
                    .find_map(|c| c.subnet?.parse().ok()),
                pool: labels.get(POOL_LABEL).and_then(|p| p.parse().ok()),
            }
        })
        .collect())
}

async fn create(
    docker: &Docker,
    want: &NodeNetwork,
    mtu: u32,
) -> Result<(), bollard::errors::Error> {
    let gateway = Ipv4Addr::from(u32::from(want.subnet.network()) + 1);
    let req = NetworkCreateRequest {
        name: want.network.docker_name(),
        driver: Some("bridge".into()),
        ipam: Some(Ipam {
            driver: Some("default".into()),
            config: Some(vec![IpamConfig {
                subnet: Some(want.subnet.to_string()),
                gateway: Some(gateway.to_string()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        options: Some(HashMap::from([
            ("com.docker.network.driver.mtu".to_string(), mtu.to_string()),
            (
                "com.docker.network.bridge.name".to_string(),
                want.network.bridge(),
            ),
        ])),
        labels: Some(HashMap::from([
            (MANAGED_LABEL.to_string(), "true".to_string()),
            (NETWORK_LABEL.to_string(), want.network.label()),
            (POOL_LABEL.to_string(), want.network.pool.to_string()),
        ])),
        ..Default::default()
    };
    docker.create_network(req).await.map(|_| ())
}

/// One pass. Failures are logged and retried on the next pass; nothing here is fatal.
pub async fn reconcile(
    state: &ClusterState,
    me: NodeId,
    overlay: &Overlay,
    peers: &[Peer],
    docker: &Docker,
    mtu: u32,
) {
    let wanted = networks::node_networks(state, me);
    let have = match existing(docker).await {
        Ok(have) => have,
        Err(e) => {
            tracing::warn!("listing overlay networks: {e}");
            return;
        }
    };
    // Docker networks.
    for want in &wanted {
        let name = want.network.docker_name();
        match have.iter().find(|h| h.name == name) {
            Some(h) if h.subnet == Some(want.subnet) => {}
            Some(h) => tracing::warn!(
                network = name,
                "a Docker network {name} exists on {:?}, not this node's slice {}; smr leaves it alone",
                h.subnet,
                want.subnet
            ),
            None => match create(docker, want, mtu).await {
                Ok(()) => {
                    tracing::info!(network = name, subnet = %want.subnet, "overlay network created")
                }
                Err(e) => tracing::warn!(network = name, "creating overlay network: {e}"),
            },
        }
    }
    // Routes to the other nodes' slices, per pool.
    let by_lease: BTreeMap<Ipv4Net, &Peer> = peers.iter().map(|p| (p.subnet.trunc(), p)).collect();
    let mut slices: BTreeMap<Ipv4Net, Vec<(Ipv4Net, Peer)>> = BTreeMap::new();
    for (id, peer_slices) in networks::peer_routes(state, me) {
        let Some(peer) = state
            .nodes
            .get(&id)
            .and_then(|n| n.lease)
            .and_then(|lease| by_lease.get(&lease.trunc()))
        else {
            continue;
        };
        for slice in peer_slices {
            if let Some(want) = wanted.iter().find(|w| w.network.pool.contains(&slice)) {
                slices
                    .entry(want.network.pool)
                    .or_default()
                    .push((slice, (*peer).clone()));
            }
        }
    }
    for want in &wanted {
        let routes = slices.remove(&want.network.pool).unwrap_or_default();
        match overlay
            .reconcile_pool(want.network.pool, want.subnet, &routes)
            .await
        {
            Ok(ops) if !ops.is_empty() => {
                let ops: Vec<String> = ops.iter().map(ToString::to_string).collect();
                tracing::info!(
                    network = want.network.docker_name(),
                    ?ops,
                    "pool routes reconciled"
                )
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(network = want.network.docker_name(), "pool routes: {e}"),
        }
    }
    // Networks that are gone: their routes, then their Docker network (Docker refuses while a
    // container still uses it; the next pass tries again).
    for gone in have
        .iter()
        .filter(|h| !wanted.iter().any(|w| w.network.docker_name() == h.name))
    {
        if let (Some(pool), Some(subnet)) = (gone.pool, gone.subnet)
            && let Err(e) = overlay.reconcile_pool(pool, subnet, &[]).await
        {
            tracing::warn!(network = gone.name, "removing pool routes: {e}");
            continue;
        }
        match docker.remove_network(&gone.name).await {
            Ok(()) => tracing::info!(network = gone.name, "overlay network removed"),
            Err(e) => tracing::warn!(network = gone.name, "removing overlay network: {e}"),
        }
    }
    // Isolation.
    let replica_ips: Vec<_> = state
        .reports
        .get(&me)
        .map(|r| {
            r.replicas
                .iter()
                .map(|r| {
                    let ips: Vec<Ipv4Addr> = r
                        .ips
                        .values()
                        .chain(r.ip.iter())
                        .filter_map(|ip| ip.parse().ok())
                        .collect();
                    (r.key.clone(), ips)
                })
                .collect()
        })
        .unwrap_or_default();
    let iso = networks::allowed_ranges(state, me, &replica_ips);
    let ipt = IptablesCmd::default();
    // Masquerading of what leaves the cluster from the networks beyond `cluster`.
    let sources = match &state.network {
        Some(settings) => iso.masquerade_sources(settings.cidr),
        None => Vec::new(),
    };
    match ensure_networks_masquerade(&ipt, &sources, &iso.ranges).await {
        Ok(true) => tracing::info!(?sources, "masquerading of networks updated"),
        Ok(false) => {}
        Err(e) => tracing::warn!("masquerading of networks: {e}"),
    }
    let result = if iso.ranges.is_empty() {
        remove_isolation(&ipt).await
    } else {
        ensure_isolation(
            &ipt,
            &IsolationSpec {
                ranges: iso.ranges,
                local: iso.local,
                allowed: iso.allowed,
            },
        )
        .await
    };
    match result {
        Ok(true) => tracing::info!("isolation rules updated"),
        Ok(false) => {}
        Err(e) => tracing::warn!("isolation rules: {e}"),
    }
}

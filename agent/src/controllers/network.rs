//! The node's network loop: the overlay (WireGuard, VXLAN or host-gw) from the peers' leases,
//! addresses and keys, the `cluster` Docker network on this node's lease, and the `*.private` DNS
//! server on its gateway, fed with the records of ready replicas and of nodes.
//!
//! Level-triggered like the other loops: on every state change and every few seconds the overlay
//! is reconciled against the peer list (which also repairs a deleted device), the Docker network
//! is checked, the DNS records are recomputed and swapped in, and (wireguard) this node's public
//! key and port are published when the registry holds others.
//!
//! ```text
//!  state --peers()--> Overlay::reconcile          (network loop)
//!                        ^   ^
//!  API: nodes -o wide ---+   +--- rotate-key: write key file, Op::SetNodeWireguard,
//!       (peer_stats)              Overlay::set_private_key   (through OverlaySlot)
//! ```

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

mod pools;

use crate::node::Node;
use crate::state::{ClusterState, Delta, Follower, NodeId, Op};
use overlay::docker::{BollardNetworks, ClusterNetworkSpec, ensure_cluster_network};
use overlay::wireguard::{WG_PORT, WgConfig, WgPeer};
use overlay::{Backend, Overlay, OverlayConfig, Peer};
use smr_core::backend::NetworkBackend;

/// What the network loop needs to know about this node.
#[derive(Clone, Debug)]
pub struct NetworkConfig {
    pub id: NodeId,
    pub underlay_ip: Ipv4Addr,
    pub iface: Option<String>,
    pub vtep_mac: [u8; 6],
    /// This node's WireGuard private key file and port.
    pub wg_key_path: PathBuf,
    pub wg_port: u16,
    pub docker: bollard::Docker,
    /// Where public names are forwarded (from the host's resolv.conf).
    pub upstreams: Vec<SocketAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("overlay: {0}")]
    Overlay(#[from] overlay::OverlayError),
    #[error("cluster network: {0}")]
    Docker(#[from] overlay::docker::DockerError),
    #[error("DNS: {0}")]
    Dns(#[from] dns::DnsError),
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Key(#[from] overlay::WgError),
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    // Exactly six parts of two hex digits: a malformed part fails the whole address.
    let bytes: Vec<u8> = text
        .split(':')
        .map(|b| {
            (b.len() == 2)
                .then(|| u8::from_str_radix(b, 16).ok())
                .flatten()
        })
        .collect::<Option<_>>()?;
    bytes.try_into().ok()
}

fn ipv4(text: &str) -> Option<Ipv4Addr> {
    match text.parse().ok()? {
        IpAddr::V4(ip) => Some(ip),
        IpAddr::V6(_) => None,
    }
}

/// The overlay peers: every other node with a lease and an IPv4 address, and for the vxlan
/// backend a VTEP MAC, for wireguard a public key. Nodes lacking what the backend needs are left
/// out.
///
/// WireGuard reaches a peer at its public address (`--public-ip`, else `--ip`) and WireGuard
/// port: two nodes in different clouds may have the same private address, their public ones
/// differ. vxlan and host-gw carry clear text over one private network, so they send to the
/// peer's own address (`--ip`), never across the public side of a NAT.
pub fn peers(state: &ClusterState, me: NodeId, backend: Backend) -> Vec<Peer> {
    // Each peer's slices of the overlay networks' pools (allowed IPs for wireguard).
    let mut slices = smr_core::networks::peer_routes(state, me);
    state
        .nodes
        .values()
        .filter(|n| n.id != me)
        .filter_map(|n| {
            let underlay = match backend {
                Backend::WireGuard => ipv4(n.dial_ip())?,
                Backend::Vxlan | Backend::HostGw => ipv4(&n.ip)?,
            };
            let vtep_mac = n.vtep_mac.as_deref().and_then(parse_mac);
            let wireguard = match backend {
                Backend::WireGuard => Some(WgPeer {
                    public_key: n.wg_public_key.as_deref()?.parse().ok()?,
                    endpoint: SocketAddrV4::new(underlay, n.wg_port.unwrap_or(WG_PORT)),
                }),
                Backend::Vxlan | Backend::HostGw => None,
            };
            Some(Peer {
                subnet: n.lease?,
                underlay,
                vtep_mac: match backend {
                    Backend::Vxlan => vtep_mac?,
                    _ => vtep_mac.unwrap_or_default(),
                },
                wireguard,
                extra_subnets: slices.remove(&n.id).unwrap_or_default(),
            })
        })
        .collect()
}

/// The gateway of this node's `cluster` network, where its DNS server listens.
pub fn gateway(lease: ipnet::Ipv4Net) -> Ipv4Addr {
    ClusterNetworkSpec::new(lease, 1450).gateway()
}

/// Runs until `stop`. Returns early (with an error) only on a misconfiguration that retrying
/// cannot fix; transient failures are logged and retried.
pub async fn run(
    node: Arc<Node>,
    config: NetworkConfig,
    mut stop: watch::Receiver<bool>,
) -> Result<(), NetworkError> {
    let result = run_overlay(&node, config, &mut stop).await;
    node.overlay.set(None);
    *node.overlay.wireguard.lock().await = None;
    result
}

async fn run_overlay(
    node: &Arc<Node>,
    config: NetworkConfig,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), NetworkError> {
    let mut changes = node.subscribe();
    // Wait for the cluster network settings and this node's lease.
    let (settings, lease) = loop {
        if let Ok(state) = node.state(crate::node::Consistency::Stale).await
            && let Some(settings) = state.network.clone()
            && let Some(me) = state.nodes.get(&config.id)
        {
            match me.lease {
                Some(lease) => break (settings, lease),
                None if settings.backend == NetworkBackend::None.as_str() => return Ok(()),
                None => return Err(NetworkError::Config("this node has no subnet lease".into())),
            }
        }
        tokio::select! {
            _ = crate::shutdown::stopped(stop) => return Ok(()),
            _ = changes.changed() => {},
        }
    };
    let backend: Backend = settings
        .backend
        .parse()
        .map_err(|e: overlay::UnknownBackend| NetworkError::Config(e.to_string()))?;
    let wireguard = match backend {
        Backend::WireGuard => Some(WgConfig {
            private_key: overlay::wireguard::load_or_create_key(&config.wg_key_path)?,
            listen_port: config.wg_port,
        }),
        Backend::Vxlan | Backend::HostGw => None,
    };
    let overlay = Arc::new(Overlay::new(OverlayConfig {
        backend,
        lease,
        cluster_cidr: settings.cidr,
        underlay_ip: config.underlay_ip,
        iface: config.iface.clone(),
        vtep_mac: config.vtep_mac,
        wireguard: wireguard.clone(),
    })?);
    overlay.setup().await?;
    if let Some(wg) = &wireguard {
        tracing::info!(
            implementation = overlay.wireguard_impl().unwrap_or("unknown"),
            port = wg.listen_port,
            public_key = %wg.private_key.public_key(),
            "WireGuard device up"
        );
    }
    *node.overlay.wireguard.lock().await = wireguard.map(|wg| (wg.private_key, wg.listen_port));
    node.overlay.set(Some(overlay.clone()));
    let mtu = overlay.mtu().await?;
    let spec = ClusterNetworkSpec::new(lease, mtu);
    let networks = BollardNetworks {
        docker: config.docker.clone(),
    };
    ensure_cluster_network(&networks, &spec).await?;
    let dns = dns::DnsServer::start(dns::DnsConfig {
        listen: vec![SocketAddr::new(spec.gateway().into(), 53)],
        upstreams: config.upstreams.clone(),
        ..dns::DnsConfig::default()
    })
    .await?;
    tracing::info!(%backend, %lease, mtu, gateway = %spec.gateway(), "overlay, cluster network and DNS ready");

    let mut tick = tokio::time::interval(Duration::from_secs(5));
    // Woken by a change, the loop works only when the change concerns nodes, the cluster
    // network or replica reports: a heartbeat or a definition write costs no netlink, Docker or
    // DNS work. Every tick is a full pass (the safety net).
    let mut follower = Follower::new();
    let mut resync = true;
    loop {
        if let Ok(state) = node.state(crate::node::Consistency::Stale).await
            && follower.next(&state, resync).needs(Delta::touches_network)
        {
            publish_wireguard(node, &state, config.id).await;
            let peers = peers(&state, config.id, backend);
            match overlay.reconcile(&peers).await {
                Ok(report) if !report.is_noop() => tracing::info!(?report, "overlay reconciled"),
                Ok(_) => {}
                Err(e) => tracing::warn!("overlay: {e}"),
            }
            pools::reconcile(&state, config.id, &overlay, &peers, &config.docker, mtu).await;
            let records = crate::views::dns_records_on(&state, config.id);
            if records != dns.records() {
                dns.set_records(records);
            }
        }
        if resync && let Err(e) = ensure_cluster_network(&networks, &spec).await {
            tracing::warn!("cluster network: {e}");
        }
        tokio::select! {
            _ = crate::shutdown::stopped(stop) => break,
            _ = changes.changed() => resync = false,
            _ = tick.tick() => resync = true,
        }
    }
    if let Err(e) = dns.shutdown().await {
        tracing::warn!("DNS shutdown: {e}");
    }
    Ok(())
}

/// Publishes this node's WireGuard public key and port when the registry holds others (a key
/// file made anew, a changed `--wg-port`). Skipped while a rotation runs; failures are retried
/// on the next pass.
async fn publish_wireguard(node: &Node, state: &ClusterState, me: NodeId) {
    let Ok(current) = node.overlay.wireguard.try_lock() else {
        return;
    };
    let (Some((key, port)), Some(record)) = (current.as_ref(), state.nodes.get(&me)) else {
        return;
    };
    let public_key = key.public_key().to_string();
    if record.wg_public_key.as_deref() == Some(public_key.as_str()) && record.wg_port == Some(*port)
    {
        return;
    }
    let op = Op::SetNodeWireguard {
        id: me,
        public_key: public_key.clone(),
        port: *port,
    };
    match node.propose(op, None).await {
        Ok(_) => tracing::info!(%public_key, port, "published this node's WireGuard key"),
        Err(e) => tracing::warn!("publishing this node's WireGuard key: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::NodeRecord;

    #[test]
    fn mac_addresses_parse_strictly() {
        assert_eq!(
            parse_mac("02:ab:00:10:ff:7e"),
            Some([0x02, 0xab, 0x00, 0x10, 0xff, 0x7e])
        );
        for bad in [
            "",
            "02:ab:00:10:ff",
            "02:ab:00:10:ff:7e:01",
            "zz:ab:00:10:ff:7e",
            "2:ab:0:10:ff:7e",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad:?}");
        }
    }

    fn record(id: NodeId, ip: &str, public_ip: Option<&str>, lease: &str) -> NodeRecord {
        NodeRecord {
            id,
            name: format!("n{id}"),
            host: String::new(),
            domain: String::new(),
            ip: ip.into(),
            public_ip: public_ip.map(str::to_string),
            api_port: 1443,
            raft_port: 9212,
            labels: Default::default(),
            joined_ms: 0,
            schedulable: true,
            lease: Some(lease.parse().unwrap()),
            vtep_mac: Some(format!("02:00:00:00:00:0{id}")),
            wg_port: Some(51820 + id as u16),
            wg_public_key: Some(
                overlay::wireguard::WgKey::generate()
                    .public_key()
                    .to_string(),
            ),
        }
    }

    fn state(nodes: Vec<NodeRecord>) -> ClusterState {
        ClusterState {
            nodes: nodes.into_iter().map(|n| (n.id, n)).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn wireguard_peers_are_dialled_at_public_addresses_even_with_equal_private_ones() {
        // Three clouds whose VMs all have the private address 10.1.0.11.
        let s = state(vec![
            record(1, "10.1.0.11", Some("203.0.113.10"), "10.10.0.0/24"),
            record(2, "10.1.0.11", Some("203.0.113.20"), "10.10.1.0/24"),
            record(3, "10.1.0.11", None, "10.10.2.0/24"),
        ]);
        let peers = peers(&s, 1, Backend::WireGuard);
        let seen: Vec<(String, String, String)> = peers
            .iter()
            .map(|p| {
                let wg = p.wireguard.expect("wireguard peer");
                (
                    p.subnet.to_string(),
                    p.underlay.to_string(),
                    wg.endpoint.to_string(),
                )
            })
            .collect();
        assert_eq!(
            seen,
            vec![
                (
                    "10.10.1.0/24".into(),
                    "203.0.113.20".into(),
                    "203.0.113.20:51822".into()
                ),
                (
                    "10.10.2.0/24".into(),
                    "10.1.0.11".into(),
                    "10.1.0.11:51823".into()
                ),
            ]
        );
        assert_eq!(
            peers[0].wireguard.unwrap().public_key.to_string(),
            s.nodes[&2].wg_public_key.clone().unwrap()
        );
    }

    #[test]
    fn peers_lacking_what_the_backend_needs_are_left_out() {
        let mut no_key = record(2, "10.0.0.2", None, "10.10.1.0/24");
        no_key.wg_public_key = None;
        let mut no_mac = record(3, "10.0.0.3", None, "10.10.2.0/24");
        no_mac.vtep_mac = None;
        let mut bad_key = record(4, "10.0.0.4", None, "10.10.3.0/24");
        bad_key.wg_public_key = Some("not a key".into());
        let mut v6 = record(5, "fd00::5", None, "10.10.4.0/24");
        v6.public_ip = None;
        let s = state(vec![
            record(1, "10.0.0.1", None, "10.10.0.0/24"),
            no_key,
            no_mac,
            bad_key,
            v6,
        ]);
        let subnets = |b| {
            peers(&s, 1, b)
                .iter()
                .map(|p| p.subnet.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(subnets(Backend::WireGuard), vec!["10.10.2.0/24"]);
        assert_eq!(
            subnets(Backend::Vxlan),
            vec!["10.10.1.0/24", "10.10.3.0/24"]
        );
        assert_eq!(
            subnets(Backend::HostGw),
            vec!["10.10.1.0/24", "10.10.2.0/24", "10.10.3.0/24"]
        );
        assert!(
            peers(&s, 1, Backend::Vxlan)
                .iter()
                .all(|p| p.wireguard.is_none())
        );
    }

    #[test]
    fn clear_text_backends_send_to_the_private_address() {
        let s = state(vec![
            record(1, "10.0.0.1", None, "10.10.0.0/24"),
            record(2, "10.0.0.2", Some("198.51.100.2"), "10.10.1.0/24"),
        ]);
        for backend in [Backend::Vxlan, Backend::HostGw] {
            let peers = peers(&s, 1, backend);
            assert_eq!(peers.len(), 1);
            assert_eq!(peers[0].underlay.to_string(), "10.0.0.2", "{backend}");
        }
        let wg = peers(&s, 1, Backend::WireGuard);
        assert_eq!(wg[0].underlay.to_string(), "198.51.100.2");
    }

    #[test]
    fn bridge_network_names_are_answered_by_the_replica_s_node_only() {
        use smr_core::definitions::{ContainersSpec, NetworkSpec, Object, Spec};
        use smr_core::state::{NodeReport, ReplicaReport};
        let mut s = state(vec![
            record(1, "10.0.0.1", None, "10.10.0.0/24"),
            record(2, "10.0.0.2", None, "10.10.1.0/24"),
        ]);
        let network = NetworkSpec {
            driver: Some("bridge".into()),
            ipv4_address_pool: Some("172.30.0.0/24".into()),
        };
        crate::fixtures::put(&mut s, Object::new("g", "local", Spec::Network(network)));
        let web = Object::new("g", "web", ContainersSpec::default());
        let key = crate::fixtures::put_placed(&mut s, web, 1, 1);
        let report = ReplicaReport {
            key,
            index: 1,
            name: "g-web-1".into(),
            container_id: None,
            phase: "running".into(),
            ready: true,
            ip: Some("172.30.0.2".into()),
            restarts: 0,
            generation: 1,
            image: "busybox".into(),
            started_ms: None,
            message: None,
            ips: [("smr.g.local".to_string(), "172.30.0.2".to_string())].into(),
        };
        s.reports.insert(
            1,
            NodeReport {
                seq: 1,
                at_ms: 0,
                replicas: vec![report],
            },
        );
        let on = |me| format!("{:?}", crate::views::dns_records_on(&s, me));
        assert!(on(1).contains("local.g.web.private"), "{}", on(1));
        assert!(on(1).contains("172.30.0.2"), "{}", on(1));
        // Not from the other node, not cluster-wide, and no `cluster.` name.
        assert!(!on(2).contains("172.30.0.2"), "{}", on(2));
        let everywhere = format!("{:?}", crate::views::dns_records(&s));
        assert!(!everywhere.contains("172.30.0.2"), "{everywhere}");
    }

    #[test]
    fn node_names_resolve_to_dial_addresses() {
        let s = state(vec![record(
            1,
            "10.1.0.11",
            Some("203.0.113.10"),
            "10.10.0.0/24",
        )]);
        let recs = crate::views::dns_records(&s);
        assert!(format!("{recs:?}").contains("203.0.113.10"), "{recs:?}");
        assert!(!format!("{recs:?}").contains("10.1.0.11"), "{recs:?}");
    }
}
